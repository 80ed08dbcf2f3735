"""C2SP signed notes: Go sumdb / C2SP known answers, hybrid signatures, strict parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey

from hub.protocol.errors import LogError
from hub.protocol.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    TYPE_MLDSA65,
    CosignatureVerifier,
    Cosigner,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    key_id,
    open_note,
    sign_note,
    split_note,
)

KATS = json.loads((Path(__file__).parent / "vectors" / "signed_note_ed25519.json").read_text())

SEED = bytes(range(32))
HUB = NoteSigner(
    "intelhub.example/log",
    Ed25519PrivateKey.from_private_bytes(SEED),
    MLDSA65PrivateKey.from_seed_bytes(SEED),
)
OTHER = NoteSigner("other.example/key", Ed25519PrivateKey.from_private_bytes(bytes(32)))
TEXT = "intelhub.example/log\n42\n"


@pytest.mark.parametrize("case", KATS["cases"], ids=[c["name"] for c in KATS["cases"]])
def test_signed_note_kat(case: dict[str, Any]) -> None:
    verifier = NoteVerifier.from_vkey(case["vkey"])
    assert verifier.name == case["name"]
    assert verifier.vkeys() == [case["vkey"]]
    assert verifier.ed25519_key is not None
    assert verifier.ed25519_key.public_bytes_raw().hex() == case["public_key_hex"]
    ((_, kid, _),) = verifier.keys()
    assert kid == key_id(case["name"], b"\x01", bytes.fromhex(case["public_key_hex"]))
    assert case["vkey"].split("+")[1] == f"{kid:08x}"
    # Verify, and parse the signature line exactly.
    assert open_note(case["note"], verifier) == (case["text"], [case["name"]])
    text, (sig,) = split_note(case["note"])
    assert text == case["text"] and sig.line() == case["sigline"]
    assert sig.signature.hex() == case["signature_hex"]
    # Tampering with the text breaks the signature.
    tampered = case["note"].replace(case["text"][:4], case["text"][:3] + "X", 1)
    with pytest.raises(LogError, match=f"ed25519 signature of {case['name']} does not verify"):
        open_note(tampered, verifier)
    # Deterministic Ed25519 signing reproduces the signature line byte for byte.
    if "seed_hex" in case:
        signer = NoteSigner(
            case["name"], Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["seed_hex"]))
        )
        assert sign_note(case["text"], signer) == case["note"]
        assert signer.verifier().vkeys() == [case["vkey"]]
        # The Go "skey" encodes the same seed: PRIVATE+KEY+<name>+<id>+base64(0x01 || seed).
        skey_blob = base64.b64decode(case["skey"].split("+", 4)[4])
        assert skey_blob == b"\x01" + bytes.fromhex(case["seed_hex"])


def test_hybrid_note_needs_both_signatures() -> None:
    note = sign_note(TEXT, HUB)
    text, sigs = split_note(note)
    assert text == TEXT and len(sigs) == 2
    assert [len(s.signature) for s in sigs] == [64, 3309]
    assert open_note(note, HUB.verifier()) == (TEXT, ["intelhub.example/log"])
    ed_line, ml_line = sigs[0].line(), sigs[1].line()
    for kept, missing in ((ed_line, "ml-dsa-65"), (ml_line, "ed25519")):
        with pytest.raises(LogError, match=rf"0 of 1 required signers; missing .*\({missing}\)"):
            open_note(TEXT + "\n" + kept, HUB.verifier())


def test_classical_verifier_ignores_the_post_quantum_line() -> None:
    # An ordinary C2SP verifier knows only the Ed25519 key: the ML-DSA line is unknown, ignored.
    assert HUB.ed25519_key is not None
    classic = NoteVerifier(HUB.name, HUB.ed25519_key.public_key())
    assert open_note(sign_note(TEXT, HUB), classic) == (TEXT, [HUB.name])


def test_vkeys_round_trip_and_pq_key_id() -> None:
    ed_vkey, ml_vkey = HUB.verifier().vkeys()
    v = NoteVerifier.from_vkeys(ml_vkey, ed_vkey)
    assert v.hybrid and v.vkeys() == [ed_vkey, ml_vkey]
    blob = base64.b64decode(ml_vkey.split("+", 2)[2])
    assert blob.startswith(b"\xffintelhub/signed-note/ml-dsa-65") and blob[:31] == TYPE_MLDSA65
    assert ml_vkey.split("+")[1] == f"{key_id(HUB.name, TYPE_MLDSA65, blob[31:]):08x}"
    assert open_note(sign_note(TEXT, HUB), v)[1] == [HUB.name]


def test_unknown_signatures_are_ignored_but_bad_known_ones_reject() -> None:
    note = sign_note(TEXT, [HUB, OTHER])
    assert open_note(note, HUB.verifier()) == (TEXT, [HUB.name])
    assert open_note(note, [HUB.verifier(), OTHER.verifier()])[1] == [HUB.name, OTHER.name]
    # Same name, unknown key ID: ignored (C2SP); known (name, ID) with a bad signature: rejected.
    _, sigs = split_note(note)
    impostor = NoteSignature(HUB.name, sigs[0].key_id ^ 1, sigs[0].signature).line()
    assert open_note(add_signatures(note, impostor), HUB.verifier())[0] == TEXT
    forged = NoteSignature(OTHER.name, sigs[2].key_id, bytes(64)).line()
    with pytest.raises(LogError, match="ed25519 signature of other.example/key does not verify"):
        open_note(sign_note(TEXT, HUB) + forged, [HUB.verifier(), OTHER.verifier()], required=1)


def test_required_counts_satisfied_verifiers() -> None:
    note = sign_note(TEXT, HUB)
    both = [HUB.verifier(), OTHER.verifier()]
    with pytest.raises(LogError, match="1 of 2 required signers; missing other.example/key"):
        open_note(note, both)
    assert open_note(note, both, required=1)[1] == [HUB.name]  # e.g. during key rotation
    with pytest.raises(LogError, match="required must be between 1 and 2"):
        open_note(note, both, required=3)
    with pytest.raises(LogError, match="verifiers must be one or more NoteVerifier"):
        open_note(note, [])


def test_cosigner_keys_use_the_cosignature_types() -> None:
    witness = Cosigner(
        "fr.example/witness", Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate()
    )
    ed_vkey, ml_vkey = witness.verifier().vkeys()
    assert base64.b64decode(ed_vkey.split("+", 2)[2])[:1] == b"\x04"
    assert CosignatureVerifier.from_vkeys(ed_vkey, ml_vkey).hybrid
    with pytest.raises(LogError, match="vkey type 0x04 is not accepted here"):
        NoteVerifier.from_vkey(ed_vkey)
    with pytest.raises(LogError, match="vkey type 0x01 is not accepted here"):
        CosignatureVerifier.from_vkey(HUB.verifier().vkeys()[0])


def test_signer_repr_hides_keys() -> None:
    assert repr(HUB) == "NoteSigner('intelhub.example/log', ed25519+ml-dsa-65)"


GOOD = sign_note(TEXT, OTHER)
LINE = GOOD.split("\n\n", 1)[1]
NAME, B64 = LINE[2:-1].split(" ")


@pytest.mark.parametrize(
    "note,message",
    [
        (TEXT + LINE, "no blank line before its signatures"),
        (GOOD + "\n", "note ends with a blank line"),
        (TEXT + "\n\n" + LINE, "note text must not end with a blank line"),
        ("\n\n" + LINE, "note text must be non-empty"),
        (GOOD.replace("42", "4\r2"), r"control character '\\r'"),
        (GOOD.replace("42", "4\t2"), r"control character '\\t'"),
        (GOOD[:-1], "signature lines must end with a newline"),
        (TEXT + "\n", "note ends with a blank line"),
        (TEXT + "\n" + LINE.replace("\u2014", "-"), "line 1 does not start with an em dash"),
        (TEXT + "\n" + LINE.replace(" ", "  ", 1), r"line 1 is not '\u2014 <name> <base64>'"),
        (TEXT + "\n" + LINE[:-1] + " x\n", r"line 1 is not '\u2014 <name> <base64>'"),
        (TEXT + f"\n\u2014 {NAME} {B64[:-2]}\n", "signature line 1 is not valid base64"),
        (TEXT + f"\n\u2014 {NAME} {B64[:-2]}x=\n", "signature line 1 is not canonical base64"),
        (TEXT + f"\n\u2014 {NAME} AAAAAA==\n", "shorter than a key ID and a signature"),
        (TEXT + f"\n\u2014 a+b {B64}\n", "key name 'a\\+b' contains a space, '\\+'"),
        (GOOD + LINE, f"signature line 2 repeats key {NAME}"),
        (
            TEXT + "\n" + "".join(f"\u2014 k{i} {B64}\n" for i in range(MAX_SIGNATURES + 1)),
            f"more than {MAX_SIGNATURES} signature lines",
        ),
        ("x" * (MAX_NOTE_BYTES - len(TEXT)) + GOOD, f"longer than {MAX_NOTE_BYTES} bytes"),
        (GOOD.encode()[:-30] + b"\xff" + GOOD.encode()[-29:], "not valid UTF-8"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 60 and "\n" not in v else "",
)
def test_strict_note_parsing(note: str | bytes, message: str) -> None:
    with pytest.raises(LogError, match=message):
        open_note(note, OTHER.verifier())


@pytest.mark.parametrize(
    "text,message",
    [
        ("no newline", "must be non-empty and end with a newline"),
        ("\n", "must be non-empty and end with a newline"),
        ("two blank\n\n", "must not end with a blank line"),
        ("bell \x07\n", r"control character '\\x07'"),
        ("lone \udc80 surrogate\n", "not valid Unicode"),
        ("x" * 20000 + "\n", "longer than 16384 bytes"),
        (b"bytes\n", "note text must be a string"),
    ],
)
def test_sign_note_rejects_bad_text(text: Any, message: str) -> None:
    with pytest.raises(LogError, match=message):
        sign_note(text, OTHER)


@pytest.mark.parametrize(
    "vkey,message",
    [
        ("nokey", "vkey must be"),
        ("a b+01234567+AQ==", "contains a space"),
        ("name+0123456+AQ==", "8 lowercase hex digits"),
        ("name+0123456G+AQ==", "8 lowercase hex digits"),
        ("name+01234567+AQ=", "not valid base64"),
        ("name+01234567+Ag==", "vkey type 0x02 is not accepted here"),
        (f"name+{key_id('name', bytes([1]), b'k'):08x}+AWs=", "vkey public key is malformed"),
        ("name+00000000+AWs=", "key ID 00000000 does not match its key"),
    ],
)
def test_vkey_parsing_is_strict(vkey: str, message: str) -> None:
    with pytest.raises(LogError, match=message):
        NoteVerifier.from_vkey(vkey)


def test_vkeys_of_different_names_do_not_combine() -> None:
    with pytest.raises(LogError, match="vkeys name different signers"):
        NoteVerifier.from_vkeys(HUB.verifier().vkeys()[0], OTHER.verifier().vkeys()[0])
    with pytest.raises(LogError, match="not accepted here, or repeated"):
        NoteVerifier.from_vkeys(*[OTHER.verifier().vkeys()[0]] * 2)


def test_add_signatures_is_strict() -> None:
    note = sign_note(TEXT, HUB)
    other_line = split_note(sign_note(TEXT, OTHER))[1][0].line()
    both = add_signatures(note, other_line)
    assert open_note(both, [HUB.verifier(), OTHER.verifier()])[1] == [HUB.name, OTHER.name]
    with pytest.raises(LogError, match="repeats key"):
        add_signatures(both, other_line)
    with pytest.raises(LogError, match="does not start with an em dash"):
        add_signatures(note, "garbage\n")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "has space", "ed25519_key": Ed25519PrivateKey.generate()}, "contains a space"),
        ({"name": "", "ed25519_key": Ed25519PrivateKey.generate()}, "non-empty string"),
        ({"name": "x" * 256, "ed25519_key": Ed25519PrivateKey.generate()}, "longer than 255"),
        ({"name": "nokey"}, "signer nokey has no key"),
        (
            {"name": "n", "ed25519_key": MLDSA65PrivateKey.generate()},
            "keys must be Ed25519PrivateKey and MLDSA65PrivateKey",
        ),
    ],
)
def test_signer_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LogError, match=message):
        NoteSigner(**kwargs)
