"""C2SP signed notes (https://c2sp.org/signed-note), with intelhub's hybrid signatures. No I/O.

A signed note is UTF-8 text ending in a newline, one blank line, then signature
lines ``— <key name> <base64(key ID || signature)>``. The key ID is
``SHA-256(name || 0x0A || signature type || public key)[:4]``, big-endian.

Signature types: ``0x01`` Ed25519 over the text (C2SP); ``0x04`` Ed25519 witness
cosignature (c2sp.org/tlog-cosignature); ``0xff "intelhub/signed-note/ml-dsa-65"``
ML-DSA-65 over the text with that identifier as ML-DSA context; and
``0xff "intelhub/cosignature/ml-dsa-65"`` ML-DSA-65 cosignature (checkpoint.py).
The last two are intelhub-specific.

C2SP assigns no ML-DSA-65 type, so intelhub uses the ``0xff`` escape followed by
an identifier, as the spec recommends for unassigned types. Ordinary signed-note
verifiers ignore these lines (unknown name/ID pair); intelhub's hybrid suite signs
every note with both an Ed25519 and an ML-DSA-65 line under the same key name,
and :func:`open_note` requires *every* key a verifier holds to have a line that
verifies, so stripping the post-quantum line is a failure, not a downgrade.

Parsing is stricter than the spec requires: notes over :data:`MAX_NOTE_BYTES`,
more than :data:`MAX_SIGNATURES` lines, a text ending in a blank line,
non-canonical base64 and duplicate (name, key ID) lines are rejected.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from hashlib import sha256
from typing import ClassVar, Final, Literal, Self, TypeAlias, TypeVar, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey, MLDSA65PublicKey

from .errors import LogError

#: Largest note accepted, text and signatures (32 ML-DSA-65 lines fit).
MAX_NOTE_BYTES: Final[int] = 256 * 1024
#: Largest note text; intelhub's texts (checkpoints, promises) are a few hundred bytes.
MAX_TEXT_BYTES: Final[int] = 16 * 1024
#: Most signature lines in one note (C2SP: verifiers MUST accept at least 16).
MAX_SIGNATURES: Final[int] = 32
#: Longest key name, in UTF-8 bytes (cosigned messages carry it in a u8 length).
MAX_NAME_BYTES: Final[int] = 255

SIG_PREFIX: Final[str] = "\u2014 "
TYPE_ED25519: Final[bytes] = b"\x01"
TYPE_COSIGNATURE_ED25519: Final[bytes] = b"\x04"
TYPE_MLDSA65: Final[bytes] = b"\xff" + b"intelhub/signed-note/ml-dsa-65"
TYPE_COSIGNATURE_MLDSA65: Final[bytes] = b"\xff" + b"intelhub/cosignature/ml-dsa-65"
#: ML-DSA context for note signatures: separates them from anything else the key signs.
MLDSA65_NOTE_CONTEXT: Final[bytes] = TYPE_MLDSA65[1:]

ED25519_SIG_BYTES: Final[int] = 64
MLDSA65_SIG_BYTES: Final[int] = 3309

KeyKind: TypeAlias = Literal["ed25519", "ml-dsa-65"]
PublicKey: TypeAlias = Ed25519PublicKey | MLDSA65PublicKey

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_ID = re.compile(r"[0-9a-f]{8}")


def check_name(name: object, what: str = "key name") -> str:
    """A C2SP key name: non-empty, no Unicode space, no ``+``, no control character."""
    if not isinstance(name, str) or not name:
        raise LogError(f"{what} must be a non-empty string")
    if "+" in name or any(c.isspace() or c < " " or "\x7f" <= c <= "\x9f" for c in name):
        raise LogError(f"{what} {name!r} contains a space, '+' or a control character")
    try:
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise LogError(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    except UnicodeEncodeError:
        raise LogError(f"{what} is not valid Unicode") from None
    return name


def b64decode_strict(text: str, what: str) -> bytes:
    """Standard padded base64 (RFC 4648 §4), canonical: the only encoding of its bytes."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise LogError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise LogError(f"{what} is not canonical base64")
    return raw


def key_id(name: str, sig_type: bytes, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = sha256(name.encode("utf-8") + b"\n" + sig_type + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def check_text(text: object) -> bytes:
    """Validate a note text and return its UTF-8 bytes (what is signed)."""
    if not isinstance(text, str):
        raise LogError("note text must be a string")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise LogError("note text is not valid Unicode") from None
    if len(data) > MAX_TEXT_BYTES:
        raise LogError(f"note text is longer than {MAX_TEXT_BYTES} bytes")
    if not text.endswith("\n") or text == "\n":
        raise LogError("note text must be non-empty and end with a newline")
    if text.endswith("\n\n"):
        # Legal in C2SP but ambiguous to a human reader of the note; never produced here.
        raise LogError("note text must not end with a blank line")
    m = _CONTROL.search(text)
    if m:
        raise LogError(f"note text contains control character {m.group()!r}")
    return data


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line: who (name, key ID) and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        """The signature line, newline included."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


def parse_signature_lines(block: str) -> list[NoteSignature]:
    """Parse a block of signature lines (each ending in a newline), strictly."""
    if not block:
        raise LogError("note has no signature lines")
    if not block.endswith("\n"):
        raise LogError("signature lines must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise LogError(f"note has more than {MAX_SIGNATURES} signature lines")
    sigs: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for n, line in enumerate(lines, 1):
        if not line.startswith(SIG_PREFIX):
            raise LogError(f"signature line {n} does not start with an em dash and a space")
        parts = line[len(SIG_PREFIX) :].split(" ")
        if len(parts) != 2:
            raise LogError(f"signature line {n} is not '\u2014 <name> <base64>'")
        name = check_name(parts[0], f"signature line {n} key name")
        blob = b64decode_strict(parts[1], f"signature line {n}")
        if len(blob) < 5:
            raise LogError(f"signature line {n} is shorter than a key ID and a signature")
        sig = NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])
        if (name, sig.key_id) in seen:
            raise LogError(f"signature line {n} repeats key {name}+{sig.key_id:08x}")
        seen.add((name, sig.key_id))
        sigs.append(sig)
    return sigs


def split_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, verifying nothing."""
    if isinstance(note, (bytes, bytearray)):
        if len(note) > MAX_NOTE_BYTES:
            raise LogError(f"note is longer than {MAX_NOTE_BYTES} bytes")
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise LogError("note is not valid UTF-8") from None
    elif not isinstance(note, str):
        raise LogError("note must be str or bytes")
    if len(note) > MAX_NOTE_BYTES or len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise LogError(f"note is longer than {MAX_NOTE_BYTES} bytes")
    m = _CONTROL.search(note)
    if m:
        raise LogError(f"note contains control character {m.group()!r}")
    if note.endswith("\n\n"):
        raise LogError("note ends with a blank line")
    # The last blank line separates text from signatures (the text may contain blank lines).
    split = note.rfind("\n\n")
    if split < 0:
        raise LogError("note has no blank line before its signatures")
    text = note[: split + 1]
    check_text(text)
    return text, parse_signature_lines(note[split + 2 :])


def _check_keys(owner: object, ed: object, ed_cls: type, ml: object, ml_cls: type) -> None:
    if ed is None and ml is None:
        raise LogError(f"{owner} has no key")
    if not isinstance(ed, (ed_cls, type(None))) or not isinstance(ml, (ml_cls, type(None))):
        raise LogError(f"{owner}: keys must be {ed_cls.__name__} and {ml_cls.__name__}")


def verify_signature(key: PublicKey, sig: bytes, data: bytes, context: bytes) -> bool:
    """Ed25519 (``context`` unused: RFC 8032 pure) or ML-DSA-65 verification, never raising."""
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(sig, data)
        else:
            key.verify(sig, data, context)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, eq=False)
class _PublicKeys:
    """A named signer's public keys, at most one per algorithm; all of them are required."""

    _ED_TYPE: ClassVar[bytes]
    _ML_TYPE: ClassVar[bytes]

    name: str
    ed25519_key: Ed25519PublicKey | None = None
    mldsa_key: MLDSA65PublicKey | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        owner = f"verifier {self.name}"
        _check_keys(owner, self.ed25519_key, Ed25519PublicKey, self.mldsa_key, MLDSA65PublicKey)

    @property
    def hybrid(self) -> bool:
        """True when both an Ed25519 and an ML-DSA-65 key are configured."""
        return self.ed25519_key is not None and self.mldsa_key is not None

    @cached_property
    def _entries(self) -> tuple[tuple[KeyKind, int, bytes, PublicKey], ...]:
        out: list[tuple[KeyKind, int, bytes, PublicKey]] = []
        for kind, sig_type, key in (
            ("ed25519", self._ED_TYPE, self.ed25519_key),
            ("ml-dsa-65", self._ML_TYPE, self.mldsa_key),
        ):
            if key is not None:
                kid = key_id(self.name, sig_type, key.public_bytes_raw())
                out.append((cast(KeyKind, kind), kid, sig_type, key))
        return tuple(out)

    def keys(self) -> list[tuple[KeyKind, int, PublicKey]]:
        """(kind, key ID, public key) for each configured key, Ed25519 first."""
        return [(kind, kid, key) for kind, kid, _, key in self._entries]

    def vkeys(self) -> list[str]:
        """The C2SP verifier-key texts ``<name>+<hex key ID>+<base64(type || key)>``."""
        return [
            f"{self.name}+{kid:08x}+{base64.b64encode(t + key.public_bytes_raw()).decode()}"
            for _, kid, t, key in self._entries
        ]

    @classmethod
    def from_vkeys(cls, *vkeys: str) -> Self:
        """Parse one or two vkeys (an Ed25519 and/or an ML-DSA-65 key) of the same name."""
        if not vkeys:
            raise LogError("no vkey given")
        name = ""
        ed: Ed25519PublicKey | None = None
        ml: MLDSA65PublicKey | None = None
        for vkey in vkeys:
            if not isinstance(vkey, str) or vkey.count("+") < 2:
                raise LogError("vkey must be '<name>+<hex key ID>+<base64 key>'")
            vname, hex_id, b64 = vkey.split("+", 2)
            check_name(vname, "vkey name")
            if name and vname != name:
                raise LogError(f"vkeys name different signers: {name}, {vname}")
            name = vname
            if not _HEX_ID.fullmatch(hex_id):
                raise LogError("vkey key ID must be 8 lowercase hex digits")
            blob = b64decode_strict(b64, "vkey key")
            if blob[:1] == cls._ED_TYPE and ed is None:
                sig_type = cls._ED_TYPE
            elif blob.startswith(cls._ML_TYPE) and ml is None:
                sig_type = cls._ML_TYPE
            else:
                raise LogError(f"vkey type 0x{blob[:1].hex()} is not accepted here, or repeated")
            raw = blob[len(sig_type) :]
            if key_id(vname, sig_type, raw) != int(hex_id, 16):
                raise LogError(f"vkey key ID {hex_id} does not match its key")
            try:
                if sig_type == cls._ED_TYPE:
                    ed = Ed25519PublicKey.from_public_bytes(raw)
                else:
                    ml = MLDSA65PublicKey.from_public_bytes(raw)
            except ValueError as e:
                raise LogError(f"vkey public key is malformed: {e}") from None
        return cls(name, ed, ml)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse one vkey: a verifier holding a single key."""
        return cls.from_vkeys(vkey)


class NoteVerifier(_PublicKeys):
    """Verifies ordinary note signatures (Ed25519 type 0x01, ML-DSA-65 intelhub type)."""

    _ED_TYPE = TYPE_ED25519
    _ML_TYPE = TYPE_MLDSA65


class CosignatureVerifier(_PublicKeys):
    """Verifies witness cosignatures (Ed25519 type 0x04, ML-DSA-65 intelhub type)."""

    _ED_TYPE = TYPE_COSIGNATURE_ED25519
    _ML_TYPE = TYPE_COSIGNATURE_MLDSA65


@dataclass(frozen=True, eq=False, repr=False)
class _PrivateKeys:
    """A key name and its private keys; the repr never shows key material."""

    name: str
    ed25519_key: Ed25519PrivateKey | None = None
    mldsa_key: MLDSA65PrivateKey | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        owner = f"signer {self.name}"
        _check_keys(owner, self.ed25519_key, Ed25519PrivateKey, self.mldsa_key, MLDSA65PrivateKey)

    def __repr__(self) -> str:
        algs = [a for a, k in (("ed25519", self.ed25519_key), ("ml-dsa-65", self.mldsa_key)) if k]
        return f"{type(self).__name__}({self.name!r}, {'+'.join(algs)})"

    def _public(self) -> tuple[Ed25519PublicKey | None, MLDSA65PublicKey | None]:
        ed = self.ed25519_key.public_key() if self.ed25519_key is not None else None
        ml = self.mldsa_key.public_key() if self.mldsa_key is not None else None
        return ed, ml


class NoteSigner(_PrivateKeys):
    """Signs notes: an Ed25519 line and/or an ML-DSA-65 line under :attr:`name`."""

    @cached_property
    def _verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, *self._public())

    def verifier(self) -> NoteVerifier:
        """The matching verifier (public keys only)."""
        return self._verifier

    def sign_text(self, data: bytes) -> list[NoteSignature]:
        """Signature lines over the note text bytes, Ed25519 first."""
        ids = {kind: kid for kind, kid, _ in self._verifier.keys()}
        out = []
        if self.ed25519_key is not None:
            out.append(NoteSignature(self.name, ids["ed25519"], self.ed25519_key.sign(data)))
        if self.mldsa_key is not None:
            sig = self.mldsa_key.sign(data, MLDSA65_NOTE_CONTEXT)
            out.append(NoteSignature(self.name, ids["ml-dsa-65"], sig))
        return out


class Cosigner(_PrivateKeys):
    """A witness's keys for cosigning checkpoints (see checkpoint.cosign_checkpoint)."""

    @cached_property
    def _verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, *self._public())

    def verifier(self) -> CosignatureVerifier:
        """The matching cosignature verifier (public keys only)."""
        return self._verifier


_T = TypeVar("_T")


def as_list(items: _T | Sequence[_T], cls: type[_T], what: str) -> list[_T]:
    """One item or a non-empty sequence of items of ``cls``, as a list."""
    seq: list[object] = [items] if isinstance(items, cls) else list(items)  # type: ignore[arg-type]
    if not seq or not all(isinstance(x, cls) for x in seq):
        raise LogError(f"{what} must be one or more {cls.__name__}")
    return cast(list[_T], seq)


def sign_note(text: str, signers: NoteSigner | Sequence[NoteSigner]) -> str:
    """Sign ``text`` (ending in a newline) with every key of every signer."""
    data = check_text(text)
    sigs = [s for signer in as_list(signers, NoteSigner, "signers") for s in signer.sign_text(data)]
    return _assemble(text, sigs)


def _assemble(text: str, sigs: list[NoteSignature]) -> str:
    block = "".join(s.line() for s in sigs)
    parse_signature_lines(block)  # enforces the line count and distinct (name, key ID)
    note = text + "\n" + block
    if len(note.encode("utf-8")) > MAX_NOTE_BYTES:
        raise LogError(f"signed note would be longer than {MAX_NOTE_BYTES} bytes")
    return note


def open_note(
    note: str | bytes,
    verifiers: NoteVerifier | Sequence[NoteVerifier],
    *,
    required: int | None = None,
) -> tuple[str, list[str]]:
    """Verify a signed note; return its text and the names of the verifiers satisfied.

    A verifier is satisfied when every key it holds has a signature line that
    verifies (hybrid: both Ed25519 and ML-DSA-65). At least ``required``
    verifiers (default: all) must be satisfied. Lines of unknown keys are
    ignored, as C2SP requires; a line of a known key that fails to verify
    rejects the whole note.
    """
    text, sigs = split_note(note)
    vs = as_list(verifiers, NoteVerifier, "verifiers")
    need = len(vs) if required is None else required
    if type(need) is not int or not 1 <= need <= len(vs):
        raise LogError(f"required must be between 1 and {len(vs)}")
    known: dict[tuple[str, int], list[tuple[int, KeyKind, PublicKey]]] = {}
    for i, v in enumerate(vs):
        for kind, kid, key in v.keys():
            known.setdefault((v.name, kid), []).append((i, kind, key))
    data = text.encode("utf-8")
    done: list[set[KeyKind]] = [set() for _ in vs]
    for sig in sigs:
        for i, kind, key in known.get((sig.name, sig.key_id), []):
            if not verify_signature(key, sig.signature, data, MLDSA65_NOTE_CONTEXT):
                raise LogError(f"{kind} signature of {sig.name} does not verify")
            done[i].add(kind)
    satisfied = [i for i, v in enumerate(vs) if done[i] == {k for k, _, _ in v.keys()}]
    if len(satisfied) < need:
        missing = [
            f"{v.name} ({', '.join(sorted({k for k, _, _ in v.keys()} - done[i]))})"
            for i, v in enumerate(vs)
            if i not in satisfied
        ]
        raise LogError(
            f"note has {len(satisfied)} of {need} required signers; missing {'; '.join(missing)}"
        )
    names = list(dict.fromkeys(vs[i].name for i in satisfied))
    return text, names


def add_signatures(note: str, lines: str) -> str:
    """Append signature lines (e.g. a witness's cosignature) to a signed note, strictly."""
    text, sigs = split_note(note)
    return _assemble(text, sigs + parse_signature_lines(lines))
