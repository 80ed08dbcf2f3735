"""A packet's signature as plain files, for a check that does not depend on intelhub (docs/audit.md §3).

Writes the exact signed bytes (``"intelhub/v1/packet\\n" || header``), each signature half,
and the signer's public keys as standard PEM; likewise for the signer's certificate and its
nation's root key, so ``openssl pkeyutl -verify`` alone checks both links of the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey

from hub.keyfiles import write_atomic
from hub.protocol import envelope
from hub.protocol.errors import UntrustedSigner
from hub.protocol.keys import signing_input
from hub.protocol.trust import Trust

_PEM: Final = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

README: Final[str] = """\
Packet {id}, signed by {signer} (suite {suite}); exported by `intelhub audit export-signature`.

Check the packet's Ed25519 signature with OpenSSL alone (3.0 or later):

    openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in signed.bin -sigfile sig.bin

and that the signer's certificate is signed by the {nation} root key:

    openssl pkeyutl -verify -pubin -inkey root-pub.pem -rawin -in cert-signed.bin -sigfile cert-sig.bin

Files:
  signed.bin        the exact bytes signed: "intelhub/v1/packet\\n" followed by the packet header
  sig.bin           the Ed25519 signature (64 bytes)
  pub.pem           the signer's Ed25519 public key, from certificate {cert}
  mldsa65.sig       the ML-DSA-65 signature (empty context), when the suite has one
  mldsa65-pub.pem   the signer's ML-DSA-65 public key (OpenSSL 3.5 or later verifies it the same way)
  cert-signed.bin   "intelhub/v1/cert\\n" followed by the certificate's signed body
  cert-sig.bin      the {nation} root's Ed25519 signature on it
  root-pub.pem      the {nation} root's Ed25519 public key, as listed in the roster ({roster})
  header.json       the signed header, readable
"""


def _pem(key: Ed25519PublicKey | MLDSA65PublicKey) -> bytes:
    return key.public_bytes(*_PEM)


def export_signature(raw: bytes, trust: Trust, out: Path) -> list[Path]:
    """Write the signature material of one packet into directory ``out``; returns the files written."""
    import json

    packet = envelope.parse_packet(raw)
    h = packet.header
    cert = trust.certs.get(h.sender_cert)
    if cert is None:
        raise UntrustedSigner(f"the signer's certificate {h.sender_cert.hex()[:16]} is not in the key directory")
    root = trust.roster.nations[cert.nation].root
    files: dict[str, bytes] = {
        "signed.bin": signing_input("packet", h.raw),
        "sig.bin": packet.sig.get("ed25519", b""),
        "pub.pem": _pem(Ed25519PublicKey.from_public_bytes(cert.signing.ed25519)),
        "cert-signed.bin": signing_input("cert", cert.tbs),
        "cert-sig.bin": cert.sig["ed25519"],
        "root-pub.pem": _pem(Ed25519PublicKey.from_public_bytes(root.ed25519)),
        "header.json": json.dumps(h.to_json(), indent=2).encode(),
    }
    if "mldsa65" in packet.sig:
        files["mldsa65.sig"] = packet.sig["mldsa65"]
        files["mldsa65-pub.pem"] = _pem(MLDSA65PublicKey.from_public_bytes(cert.signing.mldsa65))
    files["README.txt"] = README.format(id=h.packet_id, signer=cert.name, suite=h.suite.id, nation=cert.nation,
                                        cert=cert.fp.hex(), roster=trust.roster.fp.hex()).encode()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        write_atomic(out / name, data)
        written.append(out / name)
    return written
