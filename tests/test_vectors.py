"""Public test vectors for the primitives intelhub composes (files in tests/vectors/).

RFC 8032 Ed25519 through our SigningPublicKey path's primitive, and the
draft-ietf-hpke-pq hybrid KEM (0x647a) that suite IH1-HYBRID uses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from hub.protocol.suites import HYBRID

VECTORS = Path(__file__).parent / "vectors"
ED = json.loads((VECTORS / "ed25519_rfc8032.json").read_text())["vectors"]
PQ = json.loads((VECTORS / "hpke_pq_draft_mlkem768.json").read_text())["vectors"]


@pytest.mark.parametrize("v", ED, ids=lambda v: v["name"])
def test_rfc8032_ed25519(v: dict[str, Any]) -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["secret_key"]))
    pub = key.public_key()
    msg = bytes.fromhex(v["message"])
    assert pub.public_bytes_raw().hex() == v["public_key"]
    assert key.sign(msg).hex() == v["signature"]  # deterministic signing
    pub.verify(bytes.fromhex(v["signature"]), msg)
    with pytest.raises(InvalidSignature):  # S + L: malleated, RFC 8032 §5.1.7 requires rejection
        pub.verify(bytes.fromhex(v["derived_negative_S_plus_L"]), msg)
    with pytest.raises(InvalidSignature):
        pub.verify(bytes.fromhex(v["signature"]), msg + b"\x00")


@pytest.mark.parametrize("v", [v for v in PQ if int(v["kem_id"]) == 0x647A], ids=lambda v: f"kdf{v['kdf_id']}")
def test_hybrid_kem_is_draft_hpke_pq_0x647a(v: dict[str, Any]) -> None:
    """Our HYBRID suite's KEM decapsulates the draft's vectors (single-shot API, empty aad)."""
    assert HYBRID.kem == hpke.KEM.MLKEM768_X25519 and HYBRID.enc_len == 1120
    seed = hashlib.shake_256(bytes.fromhex(v["skRm"])).digest(96)
    sk = hpke.MLKEM768X25519PrivateKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(seed[:64]),
                                       x25519.X25519PrivateKey.from_private_bytes(seed[64:]))
    kdf = {1: hpke.KDF.HKDF_SHA256, 0x10: hpke.KDF.SHAKE128, 0x11: hpke.KDF.SHAKE256}[int(v["kdf_id"])]
    aead = {1: hpke.AEAD.AES_128_GCM, 2: hpke.AEAD.AES_256_GCM, 3: hpke.AEAD.CHACHA20_POLY1305}[int(v["aead_id"])]
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, kdf, aead)
    d = v["derived_empty_aad_seq0"]
    pt = suite.decrypt(bytes.fromhex(d["single_shot_input_hex"]), sk, info=bytes.fromhex(v["info"]))
    assert pt == bytes.fromhex(d["pt"])
    assert bytes.fromhex(d["single_shot_input_hex"])[:1120] == bytes.fromhex(v["enc"])
