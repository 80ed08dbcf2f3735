"""Key pairs: hybrid signing keys, HPKE recipient keys, and their files (docs/protocol.md §4).

A signing identity is an Ed25519 key and an ML-DSA-65 key; a recipient identity is
an ML-KEM-768 + X25519 hybrid HPKE key (suite IH1-HYBRID) and a separate X25519 key
(suite IH1-CLASSIC) so that no key serves two protocols. Every signature signs the
same bytes, :func:`signing_input`, so an auditor can check the Ed25519 half with
openssl alone.

Private key files hold one PKCS#8 PEM block per component, each preceded by an
``intelhub-key: <label>`` line. They are encrypted with a passphrase; the only
unencrypted files accepted are those marked EXAMPLE ONLY.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

import base64
import binascii
import os

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from .errors import InvalidPacket, KeyFileError, ValidationError
from .suites import CLASSIC, HYBRID, Suite

ED25519_PUB_LEN: Final[int] = 32
MLDSA65_PUB_LEN: Final[int] = 1952
ED25519_SIG_LEN: Final[int] = 64
MLDSA65_SIG_LEN: Final[int] = 3309
HYBRID_KEM_PUB_LEN: Final[int] = 1184 + 32
CLASSIC_KEM_PUB_LEN: Final[int] = 32

EXAMPLE_MARKER: Final[str] = "EXAMPLE ONLY"


def signing_input(purpose: str, body: bytes) -> bytes:
    """The exact bytes every signature covers: ``"intelhub/v1/<purpose>\\n" || body``."""
    return b"intelhub/v1/" + purpose.encode("ascii") + b"\n" + body


def fingerprint(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _bin(d: dict[str, Any], key: str, length: int, path: str) -> bytes:
    value = d.get(key)
    if type(value) is not bytes or len(value) != length:
        raise ValidationError(f"{path}.{key}", f"must be {length} bytes")
    return value


def _exact_keys(d: object, keys: set[str], path: str) -> dict[str, Any]:
    if type(d) is not dict:
        raise ValidationError(path, "must be a map")
    if set(d) != keys:
        extra, missing = set(d) - keys, keys - set(d)
        what = f"unknown field {sorted(extra)[0]!r}" if extra else f"missing field {sorted(missing)[0]!r}"
        raise ValidationError(path, what)
    return d


_BOTH_HALVES: Final = frozenset({"ed25519", "mldsa65"})
_ED25519_ONLY: Final = frozenset({"ed25519"})


@dataclass(frozen=True)
class SigningPublicKey:
    """Public half of a hybrid signing identity."""

    ed25519: bytes
    mldsa65: bytes
    _ed: Any = field(default=None, compare=False, repr=False)
    _ml: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Parsed key objects are cached: verification is the hub's hot path.
        if self._ed is None:
            object.__setattr__(self, "_ed", ed25519.Ed25519PublicKey.from_public_bytes(self.ed25519))
            object.__setattr__(self, "_ml", mldsa.MLDSA65PublicKey.from_public_bytes(self.mldsa65))

    @classmethod
    def from_wire(cls, d: object, path: str = "key") -> SigningPublicKey:
        d = _exact_keys(d, {"ed25519", "mldsa65"}, path)
        ed = _bin(d, "ed25519", ED25519_PUB_LEN, path)
        ml = _bin(d, "mldsa65", MLDSA65_PUB_LEN, path)
        try:
            ed_obj = ed25519.Ed25519PublicKey.from_public_bytes(ed)
            ml_obj = mldsa.MLDSA65PublicKey.from_public_bytes(ml)
        except ValueError:
            raise ValidationError(path, "not a valid public key") from None
        return cls(ed, ml, ed_obj, ml_obj)

    def to_wire(self) -> dict[str, bytes]:
        return {"ed25519": self.ed25519, "mldsa65": self.mldsa65}

    @property
    def key_id(self) -> bytes:
        return fingerprint(self.ed25519 + self.mldsa65)

    def verify(self, message: bytes, sig: object, *, mldsa_required: bool = True) -> None:
        """Check a signature map; raise the opaque :class:`InvalidPacket` on any failure.

        With ``mldsa_required`` the map must hold exactly both halves; without it,
        exactly the Ed25519 half (a stray ML-DSA half is not silently ignored).
        """
        if type(sig) is not dict or sig.keys() != (_BOTH_HALVES if mldsa_required else _ED25519_ONLY):
            raise InvalidPacket()
        ed_sig, ml_sig = sig.get("ed25519"), sig.get("mldsa65")
        if type(ed_sig) is not bytes or len(ed_sig) != ED25519_SIG_LEN:
            raise InvalidPacket()
        try:
            self._ed.verify(ed_sig, message)
            if mldsa_required:
                if type(ml_sig) is not bytes or len(ml_sig) != MLDSA65_SIG_LEN:
                    raise InvalidPacket()
                self._ml.verify(ml_sig, message)
        except InvalidSignature:
            raise InvalidPacket() from None


@dataclass(frozen=True)
class SigningKey:
    """A hybrid signing identity (Ed25519 + ML-DSA-65)."""

    ed25519: ed25519.Ed25519PrivateKey
    mldsa65: mldsa.MLDSA65PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Deterministic keys for test vectors only (``seed`` is secret material)."""
        ed = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"ed25519" + seed).digest())
        ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(hashlib.sha256(b"mldsa65" + seed).digest())
        return cls(ed, ml)

    def public(self) -> SigningPublicKey:
        ed = self.ed25519.public_key()
        ml = self.mldsa65.public_key()
        return SigningPublicKey(ed.public_bytes_raw(), ml.public_bytes_raw(), ed, ml)

    def sign(self, message: bytes, *, mldsa: bool = True) -> dict[str, bytes]:
        sig = {"ed25519": self.ed25519.sign(message)}
        if mldsa:
            sig["mldsa65"] = self.mldsa65.sign(message)
        return sig


@dataclass(frozen=True)
class KemPublicKey:
    """A recipient's HPKE public keys, one per suite."""

    hybrid: bytes
    classic: bytes
    _objs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, d: object, path: str = "kem") -> KemPublicKey:
        d = _exact_keys(d, {HYBRID.id, CLASSIC.id}, path)
        hy = _bin(d, HYBRID.id, HYBRID_KEM_PUB_LEN, path)
        cl = _bin(d, CLASSIC.id, CLASSIC_KEM_PUB_LEN, path)
        try:
            x_hy = x25519.X25519PublicKey.from_public_bytes(hy[1184:])
            objs = {
                HYBRID.id: hpke.MLKEM768X25519PublicKey(mlkem.MLKEM768PublicKey.from_public_bytes(hy[:1184]), x_hy),
                CLASSIC.id: x25519.X25519PublicKey.from_public_bytes(cl),
            }
        except ValueError:
            raise ValidationError(path, "not a valid HPKE public key") from None
        return cls(hy, cl, objs)

    def to_wire(self) -> dict[str, bytes]:
        return {HYBRID.id: self.hybrid, CLASSIC.id: self.classic}

    def for_suite(self, suite: Suite) -> Any:
        return self._objs[suite.id]


@dataclass(frozen=True)
class KemKey:
    """A recipient's HPKE private keys (hybrid and classical, never the same key)."""

    mlkem768: mlkem.MLKEM768PrivateKey
    hybrid_x25519: x25519.X25519PrivateKey
    classic_x25519: x25519.X25519PrivateKey

    @classmethod
    def generate(cls) -> KemKey:
        return cls(
            mlkem.MLKEM768PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
        )

    @classmethod
    def from_seed(cls, seed: bytes) -> KemKey:
        """Deterministic keys for test vectors only."""
        h = hashlib.shake_256(b"kem" + seed).digest(64 + 32 + 32)
        return cls(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(h[:64]),
            x25519.X25519PrivateKey.from_private_bytes(h[64:96]),
            x25519.X25519PrivateKey.from_private_bytes(h[96:]),
        )

    def public(self) -> KemPublicKey:
        hy = self.mlkem768.public_key().public_bytes_raw() + self.hybrid_x25519.public_key().public_bytes_raw()
        cl = self.classic_x25519.public_key().public_bytes_raw()
        return KemPublicKey.from_wire({HYBRID.id: hy, CLASSIC.id: cl})

    def for_suite(self, suite: Suite) -> Any:
        return self._hybrid if suite.id == HYBRID.id else self.classic_x25519

    @cached_property  # one wrapper per key, not one per packet opened
    def _hybrid(self) -> Any:
        return hpke.MLKEM768X25519PrivateKey(self.mlkem768, self.hybrid_x25519)


# ---------------------------------------------------------------------------
# Private key files

_LABEL = "intelhub-key: "
_TYPES: Final[dict[str, type]] = {
    "sign.ed25519": ed25519.Ed25519PrivateKey,
    "sign.mldsa65": mldsa.MLDSA65PrivateKey,
    "kem.hybrid.mlkem768": mlkem.MLKEM768PrivateKey,
    "kem.hybrid.x25519": x25519.X25519PrivateKey,
    "kem.classic.x25519": x25519.X25519PrivateKey,
}


@dataclass(frozen=True)
class PrivateKeys:
    """What one private key file holds: a signing key, a recipient key, or both (a node)."""

    signing: SigningKey | None = None
    kem: KemKey | None = None

    def components(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.signing:
            out["sign.ed25519"] = self.signing.ed25519
            out["sign.mldsa65"] = self.signing.mldsa65
        if self.kem:
            out["kem.hybrid.mlkem768"] = self.kem.mlkem768
            out["kem.hybrid.x25519"] = self.kem.hybrid_x25519
            out["kem.classic.x25519"] = self.kem.classic_x25519
        return out

    def to_file_text(self, passphrase: bytes | None, comments: tuple[str, ...] = ()) -> str:
        """PEM text; ``passphrase=None`` is allowed only with an EXAMPLE ONLY comment."""
        if passphrase is None and not any(EXAMPLE_MARKER in c for c in comments):
            raise KeyFileError("refusing to write an unencrypted private key that is not marked EXAMPLE ONLY")
        parts = [f"# {c}\n" for c in comments]
        enc: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if passphrase:
            # PKCS#8's own PBKDF2 is cheap to brute-force (2048 rounds); the PKCS#8 password is
            # therefore a scrypt stretch of the passphrase, with the parameters on a line of the file.
            salt = os.urandom(16)
            parts.append(f"{_KDF_LABEL}scrypt {SCRYPT_LOG_N} {SCRYPT_R} {SCRYPT_P} {base64.b64encode(salt).decode()}\n")
            enc = serialization.BestAvailableEncryption(_stretch(passphrase, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P))
        for label, key in self.components().items():
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
            parts.append(f"{_LABEL}{label}\n{pem.decode()}")
        return "".join(parts)


def _split_blocks(text: str, source: str) -> tuple[bool, list[tuple[str, bytes]], str | None]:
    example = False
    kdf: str | None = None
    blocks: list[tuple[str, bytes]] = []
    label: str | None = None
    buf: list[str] | None = None
    for line in text.splitlines():
        if buf is not None:
            buf.append(line)
            if line.startswith("-----END "):
                if label is None:
                    raise KeyFileError(f"{source}: PEM block without an '{_LABEL}<label>' line before it")
                blocks.append((label, ("\n".join(buf) + "\n").encode()))
                label, buf = None, None
        elif line.startswith("#"):
            example = example or EXAMPLE_MARKER in line
        elif line.startswith(_KDF_LABEL):
            kdf = line
        elif line.startswith(_LABEL):
            label = line[len(_LABEL) :].strip()
            if label not in _TYPES:
                raise KeyFileError(f"{source}: unknown key label {label!r} (known: {', '.join(_TYPES)})")
        elif line.startswith("-----BEGIN "):
            buf = [line]
        elif line.strip():
            raise KeyFileError(f"{source}: unexpected line {line[:40]!r}")
    if buf is not None:
        raise KeyFileError(f"{source}: PEM block not terminated (file truncated?)")
    return example, blocks, kdf


#: scrypt parameters for new key files (about 0.1 s and 32 MiB to try one passphrase).
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 15, 8, 1
_KDF_LABEL: Final = "intelhub-kdf: "


def _stretch(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return base64.b64encode(Scrypt(salt=salt, length=32, n=1 << log_n, r=r, p=p).derive(passphrase))


def _parse_kdf(line: str, source: str) -> tuple[bytes, int, int, int]:
    parts = line[len(_KDF_LABEL):].split()
    try:
        if len(parts) != 5 or parts[0] != "scrypt":
            raise ValueError
        log_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error):
        raise KeyFileError(f"{source}: bad '{_KDF_LABEL.strip()}' line (expected: scrypt LOG_N R P SALT)") from None
    # Bounded, so a hostile file cannot make loading take hours or exhaust memory.
    if not (10 <= log_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4 and 8 <= len(salt) <= 64):
        raise KeyFileError(f"{source}: scrypt parameters out of the accepted range")
    return salt, log_n, r, p


#: Most PBKDF2 rounds accepted when reading: the count comes from the file, so a hostile file could
#: otherwise make loading take hours (or crash the KDF with a count over 2**32).
MAX_KDF_ROUNDS: Final[int] = 10_000_000


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos``: (tag, start of value, end of value). Only what PKCS#8 needs."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _check_kdf_rounds(pem: bytes, what: str) -> None:
    """Refuse a PBES2/PBKDF2 iteration count above MAX_KDF_ROUNDS before any key derivation."""
    try:
        body = b"".join(pem.strip().splitlines()[1:-1])
        der = base64.b64decode(body, validate=True)
        # EncryptedPrivateKeyInfo{ AlgorithmIdentifier{ PBES2, PBES2-params{ KDF{ PBKDF2, params{salt, count ...
        _, p, _ = _der(der, 0)              # outer SEQUENCE
        _, p, _ = _der(der, p)              # encryptionAlgorithm SEQUENCE
        _, o, oe = _der(der, p)             # algorithm OID
        _, p, _ = _der(der, oe)             # PBES2-params SEQUENCE
        _, p, _ = _der(der, p)              # keyDerivationFunc SEQUENCE
        _, o, oe = _der(der, p)             # KDF OID
        _, p, _ = _der(der, oe)             # PBKDF2-params SEQUENCE
        _, s0, se = _der(der, p)            # salt
        tag, c0, ce = _der(der, se)         # iterationCount
    except (ValueError, binascii.Error):
        raise KeyFileError(f"{what}: not a PKCS#8 encrypted key this version can read") from None
    if tag != 0x02 or ce - c0 > 8:
        raise KeyFileError(f"{what}: unexpected key-derivation parameters")
    rounds = int.from_bytes(der[c0:ce], "big")
    if rounds > MAX_KDF_ROUNDS:
        raise KeyFileError(f"{what}: key derivation asks for {rounds} rounds (over {MAX_KDF_ROUNDS}); refusing")


def parse_private_keys(text: str, passphrase: bytes | None, source: str = "key file") -> PrivateKeys:
    """Parse a private key file's text, decrypting each block with ``passphrase``."""
    path = source
    example, blocks, kdf = _split_blocks(text, str(path))
    if not blocks:
        raise KeyFileError(f"{path}: no private keys in file")
    password = passphrase
    if kdf is not None and passphrase:
        password = _stretch(passphrase, *_parse_kdf(kdf, path))
    found: dict[str, Any] = {}
    for label, pem in blocks:
        encrypted = b"ENCRYPTED PRIVATE KEY" in pem
        if not encrypted and not example:
            raise KeyFileError(
                f"{path}: private key {label} is not encrypted; only files marked {EXAMPLE_MARKER} may be "
                "(re-create it with a passphrase)"
            )
        if encrypted and not passphrase:
            raise KeyFileError(f"{path}: key is encrypted; give the passphrase (prompt or $INTELHUB_PASSPHRASE)")
        if encrypted:
            _check_kdf_rounds(pem, f"{path}: {label}")
        try:
            key = serialization.load_pem_private_key(pem, password=password if encrypted else None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyFileError(f"{path}: cannot decrypt {label} (wrong passphrase or damaged file)") from None
        if not isinstance(key, _TYPES[label]):
            raise KeyFileError(f"{path}: {label} holds a {type(key).__name__}, not the expected key type")
        if label in found:
            raise KeyFileError(f"{path}: {label} appears twice")
        found[label] = key
    signing = kem = None
    sign_labels = {"sign.ed25519", "sign.mldsa65"}
    kem_labels = {"kem.hybrid.mlkem768", "kem.hybrid.x25519", "kem.classic.x25519"}
    if found.keys() & sign_labels:
        if not sign_labels <= found.keys():
            raise KeyFileError(f"{path}: a signing key needs both sign.ed25519 and sign.mldsa65")
        signing = SigningKey(found["sign.ed25519"], found["sign.mldsa65"])
    if found.keys() & kem_labels:
        if not kem_labels <= found.keys():
            raise KeyFileError(f"{path}: a recipient key needs {', '.join(sorted(kem_labels))}")
        kem = KemKey(found["kem.hybrid.mlkem768"], found["kem.hybrid.x25519"], found["kem.classic.x25519"])
    return PrivateKeys(signing, kem)
