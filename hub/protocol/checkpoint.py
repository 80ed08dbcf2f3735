"""Signed tree heads (C2SP tlog-checkpoint) and witness cosignatures (tlog-cosignature). No I/O.

A checkpoint is a signed note (see note.py) whose text is::

    intelhub.example/log            origin: the log's identity, a C2SP key name
    1048576                         tree size, decimal, no leading zeros
    3q2+7w5Tz0tH2xTlrZ3X2Xh1R0o=    root hash, standard base64 of 32 bytes
    time 1764395258                 intelhub extension line: POSIX seconds

The ``time`` extension line is intelhub's and is required; no other extension
line is accepted (C2SP allows opaque ones; intelhub has no use for them, and
rejecting them keeps one encoding per tree head). The origin follows the key-name
rules (no spaces, no ``+``, at most 255 bytes) so the hub's key name can equal it.
Times, sizes and indices are at most 2**63-1.

Cosignatures (C2SP tlog-cosignature) are extra signature lines a witness (a
national node) adds after checking consistency with what it saw before:

* Ed25519, type 0x04, per the spec: signature = u64 big-endian timestamp ||
  Ed25519(``"cosignature/v1\\ntime <t>\\n" || checkpoint text``).
* ML-DSA-65, intelhub type ``0xff "intelhub/cosignature/ml-dsa-65"``: signature =
  u64 timestamp || ML-DSA-65 over C2SP's ML-DSA-44 ``cosigned_message`` struct
  (``"subtree/v1\\n\\0"``, u8-length cosigner name, u64 time, u8-length origin,
  u64 start = 0, u64 end = size, 32-byte root), with ML-DSA context
  ``"intelhub/cosignature/ml-dsa-65"``. As in the spec's ML-DSA form, it commits to
  the cosigner's name and not to extension lines.

A hybrid witness key needs both lines to verify, with the same timestamp.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .errors import ConfigError, LogError
from .merkle import HASH_SIZE
from .note import (
    ED25519_SIG_BYTES,
    MLDSA65_SIG_BYTES,
    TYPE_COSIGNATURE_MLDSA65,
    CosignatureVerifier,
    Cosigner,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    as_list,
    b64decode_strict,
    check_name,
    open_note,
    sign_note,
    split_note,
    verify_signature,
)

#: Largest time, size or index in a checkpoint, promise or cosignature.
MAX_UINT: Final[int] = (1 << 63) - 1
#: ML-DSA context of intelhub's ML-DSA-65 cosignatures.
MLDSA65_COSIGNATURE_CONTEXT: Final[bytes] = TYPE_COSIGNATURE_MLDSA65[1:]
COSIGNATURE_V1_HEADER: Final[str] = "cosignature/v1\n"
SUBTREE_V1_LABEL: Final[bytes] = b"subtree/v1\n\x00"

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def check_uint(value: object, what: str) -> int:
    """An int in [0, 2**63-1] (bool rejected: ``True`` is a bug, not 1)."""
    if type(value) is not int or not 0 <= value <= MAX_UINT:
        raise LogError(f"{what} must be an int in [0, 2**63-1], got {value!r}")
    return value


def parse_decimal(text: str, what: str) -> int:
    """Canonical ASCII decimal: no sign, no leading zeros, no Unicode digits, <= 2**63-1."""
    if not _DECIMAL.fullmatch(text):
        raise LogError(f"{what} {text[:32]!r} is not a canonical decimal")
    return check_uint(int(text), what)


def parse_hash(text: str, what: str) -> bytes:
    """Standard base64 of exactly 32 bytes."""
    raw = b64decode_strict(text, what)
    if len(raw) != HASH_SIZE:
        raise LogError(f"{what} is {len(raw)} bytes, not {HASH_SIZE}")
    return raw


def split_lines(text: str, count: int, what: str) -> list[str]:
    """Exactly ``count`` non-empty lines, the last ending in a newline."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise LogError(f"{what} must be text ending with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != count:
        raise LogError(f"{what} has {len(lines)} lines, expected {count}")
    for n, line in enumerate(lines, 1):
        if not line:
            raise LogError(f"{what} line {n} is empty")
    return lines


def parse_keyword(line: str, keyword: str, what: str) -> int:
    """A ``<keyword> <decimal>`` line."""
    prefix = keyword + " "
    if not line.startswith(prefix):
        raise LogError(f"{what}: expected a '{keyword} <decimal>' line, got {line[:40]!r}")
    return parse_decimal(line[len(prefix) :], f"{what} {keyword}")


def check_hub_verifiers(
    verifiers: NoteVerifier | Sequence[NoteVerifier], hybrid: bool
) -> list[NoteVerifier]:
    """The hub's verifiers as a list; with ``hybrid``, each must hold both key types."""
    vs = as_list(verifiers, NoteVerifier, "hub verifiers")
    for v in vs:
        if hybrid and not v.hybrid:
            raise ConfigError(f"hub key {v.name} must have both Ed25519 and ML-DSA-65 keys")
    return vs


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log ``origin`` had ``size`` leaves with ``root`` at ``time`` (POSIX s)."""

    origin: str
    size: int
    root: bytes
    time: int

    def __post_init__(self) -> None:
        check_name(self.origin, "origin")
        check_uint(self.size, "tree size")
        check_uint(self.time, "time")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise LogError(f"root hash must be {HASH_SIZE} bytes")

    def body(self) -> str:
        """The checkpoint note text (what the hub and Ed25519 witnesses sign)."""
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\ntime {self.time}\n"


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse a checkpoint text strictly; :meth:`Checkpoint.body` of the result equals ``text``."""
    origin, size, root, time = split_lines(text, 4, "checkpoint")
    return Checkpoint(
        origin=check_name(origin, "checkpoint origin"),
        size=parse_decimal(size, "checkpoint tree size"),
        root=parse_hash(root, "checkpoint root hash"),
        time=parse_keyword(time, "time", "checkpoint"),
    )


def sign_checkpoint(checkpoint: Checkpoint, signers: NoteSigner | Sequence[NoteSigner]) -> str:
    """The checkpoint as a signed note (hybrid hub: an Ed25519 and an ML-DSA-65 line)."""
    return sign_note(checkpoint.body(), signers)


def open_checkpoint(
    note: str | bytes,
    verifiers: NoteVerifier | Sequence[NoteVerifier],
    origin: str,
    *,
    hybrid: bool = True,
) -> Checkpoint:
    """Verify a checkpoint signed by any one of the hub's keys (several during rotation).

    Signatures are checked before the text is parsed; witness lines are ignored.
    """
    text, _ = open_note(note, check_hub_verifiers(verifiers, hybrid), required=1)
    checkpoint = parse_checkpoint_body(text)
    if checkpoint.origin != origin:
        raise LogError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint


def _ed25519_message(body: str, time: int) -> bytes:
    return f"{COSIGNATURE_V1_HEADER}time {time}\n{body}".encode()


def _mldsa_message(name: str, checkpoint: Checkpoint, time: int) -> bytes:
    cosigner, origin = name.encode(), checkpoint.origin.encode()
    return b"".join(
        [
            SUBTREE_V1_LABEL,
            bytes([len(cosigner)]),
            cosigner,
            time.to_bytes(8, "big"),
            bytes([len(origin)]),
            origin,
            (0).to_bytes(8, "big"),
            checkpoint.size.to_bytes(8, "big"),
            checkpoint.root,
        ]
    )


def cosign_checkpoint(checkpoint: Checkpoint, cosigner: Cosigner, time: int) -> str:
    """A witness's cosignature lines for ``checkpoint`` at ``time``.

    Call only after checking the checkpoint's hub signature and its consistency
    with the largest tree this witness has seen. Append the result to the note
    with :func:`hub.protocol.note.add_signatures`.
    """
    if not isinstance(checkpoint, Checkpoint) or not isinstance(cosigner, Cosigner):
        raise LogError("cosign_checkpoint needs a Checkpoint and a Cosigner")
    stamp = check_uint(time, "cosignature time").to_bytes(8, "big")
    ids = {kind: kid for kind, kid, _ in cosigner.verifier().keys()}
    lines = []
    if cosigner.ed25519_key is not None:
        sig = cosigner.ed25519_key.sign(_ed25519_message(checkpoint.body(), time))
        lines.append(NoteSignature(cosigner.name, ids["ed25519"], stamp + sig).line())
    if cosigner.mldsa_key is not None:
        msg = _mldsa_message(cosigner.name, checkpoint, time)
        sig = cosigner.mldsa_key.sign(msg, MLDSA65_COSIGNATURE_CONTEXT)
        lines.append(NoteSignature(cosigner.name, ids["ml-dsa-65"], stamp + sig).line())
    return "".join(lines)


def verify_cosignature(note: str | bytes, verifier: CosignatureVerifier) -> int:
    """Verify one witness's cosignature on a checkpoint note; return its timestamp.

    Every key the verifier holds must have a line that verifies, all with the same
    timestamp. The hub's own signature is not checked here: use
    :func:`open_checkpoint` too. Whether a timestamp is too far in the future is
    the caller's policy (time is never read here).
    """
    if not isinstance(verifier, CosignatureVerifier):
        raise LogError("verify_cosignature needs a CosignatureVerifier")
    text, sigs = split_note(note)
    checkpoint = parse_checkpoint_body(text)
    by_id = {(s.name, s.key_id): s.signature for s in sigs}
    times = set()
    for kind, kid, key in verifier.keys():
        blob = by_id.get((verifier.name, kid))
        if blob is None:
            raise LogError(f"no {kind} cosignature by {verifier.name}")
        size = ED25519_SIG_BYTES if kind == "ed25519" else MLDSA65_SIG_BYTES
        if len(blob) != 8 + size:
            raise LogError(f"{kind} cosignature by {verifier.name} has the wrong length")
        time = check_uint(int.from_bytes(blob[:8], "big"), "cosignature time")
        if kind == "ed25519":
            msg = _ed25519_message(text, time)
        else:
            msg = _mldsa_message(verifier.name, checkpoint, time)
        if not verify_signature(key, blob[8:], msg, MLDSA65_COSIGNATURE_CONTEXT):
            raise LogError(f"{kind} cosignature by {verifier.name} does not verify")
        times.add(time)
    if len(times) != 1:
        raise LogError(f"cosignature lines of {verifier.name} carry different timestamps")
    return times.pop()
