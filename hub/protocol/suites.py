"""Cipher suites (docs/protocol.md §3): which HPKE KEM wraps keys, which signatures are required.

Only pyca/cryptography primitives are composed here; nothing is invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hpke

from .errors import DecodeError


@dataclass(frozen=True)
class Suite:
    """One named combination of primitives; its id is inside every signed header."""

    id: str
    #: HPKE KEM used to wrap the content key for each recipient.
    kem: hpke.KEM
    #: Whether the ML-DSA-65 half of the signature is required (in addition to Ed25519).
    mldsa: bool
    #: Length of the HPKE ``enc`` for this KEM: wrapped keys are ``enc || AEAD(key)``.
    enc_len: int

    def hpke(self) -> hpke.Suite:
        return _HPKE[self.kem]


#: The HPKE suite of each KEM (stateless objects, built once).
_HPKE: Final = {kem: hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
                for kem in (hpke.KEM.MLKEM768_X25519, hpke.KEM.X25519)}

#: Default: ML-KEM-768 + X25519 hybrid KEM, Ed25519 + ML-DSA-65 signatures, both required.
HYBRID: Final = Suite("IH1-HYBRID", hpke.KEM.MLKEM768_X25519, True, 1120)
#: Classical comparison suite: X25519 KEM, Ed25519 only. Off in the example roster.
CLASSIC: Final = Suite("IH1-CLASSIC", hpke.KEM.X25519, False, 32)

SUITES: Final[dict[str, Suite]] = {s.id: s for s in (HYBRID, CLASSIC)}
DEFAULT_SUITE: Final = HYBRID

#: Length of an AES-256-GCM content key, and of the wrapped key's AEAD output.
CONTENT_KEY_LEN: Final[int] = 32
WRAPPED_KEY_OVERHEAD: Final[int] = 16


def get_suite(suite_id: object) -> Suite:
    if not isinstance(suite_id, str) or suite_id not in SUITES:
        raise DecodeError(f"unknown suite {suite_id!r} (known: {', '.join(SUITES)})")
    return SUITES[suite_id]
