"""Checkpoints (C2SP tlog-checkpoint), witness cosignatures and promises of inclusion."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from hub.protocol.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    open_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
    verify_cosignature,
)
from hub.protocol.errors import ConfigError, LogError
from hub.protocol.merkle import MerkleTree, leaf_hash
from hub.protocol.note import (
    Cosigner,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    open_note,
    sign_note,
    split_note,
)
from hub.protocol.promise import (
    Promise,
    check_promise_kept,
    parse_promise_body,
    sign_promise,
    verify_promise,
)

ORIGIN = "intelhub.example/log"
HUB = NoteSigner(ORIGIN, Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate())
NEW_HUB = NoteSigner(ORIGIN, Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate())
WITNESS = Cosigner(
    "fr.intelhub.example/witness", Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate()
)
TREE = MerkleTree.from_leaf_hashes([leaf_hash(b"%d" % i) for i in range(10)])
CP = Checkpoint(ORIGIN, 10, TREE.root(), 1764395258)
ROOT64 = base64.b64encode(TREE.root()).decode()
BODY = f"{ORIGIN}\n10\n{ROOT64}\ntime 1764395258\n"


# -- checkpoint text -----------------------------------------------------------------------


def test_checkpoint_body_is_exact() -> None:
    assert CP.body() == BODY
    assert parse_checkpoint_body(BODY) == CP


@given(
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+"),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 2**63 - 1),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**63 - 1),
)
def test_checkpoint_round_trips(origin: str, size: int, root: bytes, time: int) -> None:
    cp = Checkpoint(origin, size, root, time)
    assert parse_checkpoint_body(cp.body()) == cp


@pytest.mark.parametrize(
    "text,message",
    [
        (BODY[:-1], "must be text ending with a newline"),
        (BODY.replace("\n10\n", "\n010\n"), "tree size '010' is not a canonical decimal"),
        (BODY.replace("\n10\n", "\n+10\n"), "tree size '\\+10' is not a canonical decimal"),
        (BODY.replace("\n10\n", "\n10 \n"), "tree size '10 ' is not a canonical decimal"),
        (BODY.replace("\n10\n", "\n\u0661\u0660\n"), "is not a canonical decimal"),
        (BODY.replace("\n10\n", "\n9223372036854775808\n"), "tree size must be an int in"),
        (BODY.replace("\n10\n", "\n99999999999999999999\n"), "is not a canonical decimal"),
        (BODY.replace(ROOT64, "A" * 42 + "B="), "root hash is not canonical base64"),
        (BODY.replace(ROOT64, ROOT64[:-1]), "root hash is not valid base64"),
        (BODY.replace(ROOT64, base64.b64encode(bytes(31)).decode()), "root hash is 31 bytes"),
        (BODY.replace("time 1764395258", "time 01764395258"), "time '01764395258' is not a canon"),
        (BODY.replace("time 1764395258", "Time 1764395258"), "expected a 'time <decimal>' line"),
        (BODY.replace("time 1764395258", "time  1764395258"), "time ' 1764395258' is not a canon"),
        (BODY.replace("time 1764395258\n", ""), "checkpoint has 3 lines, expected 4"),
        (BODY + "extension\n", "checkpoint has 5 lines, expected 4"),
        (BODY.replace(ORIGIN, "two words"), "origin 'two words' contains a space"),
        (BODY.replace(ORIGIN, "\u00a0"), "contains a space"),
        (BODY.replace(ORIGIN, ""), "checkpoint line 1 is empty"),
        (BODY.replace(ORIGIN, "a+b"), "contains a space, '\\+'"),
    ],
    ids=lambda v: v if "\n" not in v else "",
)
def test_strict_checkpoint_parsing(text: str, message: str) -> None:
    with pytest.raises(LogError, match=message):
        parse_checkpoint_body(text)


def test_checkpoint_fields_are_validated() -> None:
    with pytest.raises(LogError, match="root hash must be 32 bytes"):
        Checkpoint(ORIGIN, 1, b"x" * 12, 0)
    with pytest.raises(LogError, match="tree size must be an int"):
        Checkpoint(ORIGIN, -1, bytes(32), 0)
    with pytest.raises(LogError, match="time must be an int"):
        Checkpoint(ORIGIN, 1, bytes(32), True)


# -- signed checkpoints --------------------------------------------------------------------


def test_sign_and_open_checkpoint() -> None:
    note = sign_checkpoint(CP, HUB)
    assert note.startswith(BODY + "\n\u2014 " + ORIGIN + " ")
    assert open_checkpoint(note, HUB.verifier(), ORIGIN) == CP
    assert open_checkpoint(note.encode(), [NEW_HUB.verifier(), HUB.verifier()], ORIGIN) == CP


def test_open_checkpoint_failures() -> None:
    note = sign_checkpoint(CP, HUB)
    with pytest.raises(LogError, match="checkpoint is for log 'intelhub.example/log', expected"):
        open_checkpoint(note, HUB.verifier(), "other.example/log")
    with pytest.raises(LogError, match=r"missing intelhub.example/log \(ed25519, ml-dsa-65\)"):
        open_checkpoint(note, NEW_HUB.verifier(), ORIGIN)
    ed_only = note.split("\n\u2014 ")[0] + "\n\u2014 " + note.split("\n\u2014 ")[1] + "\n"
    with pytest.raises(LogError, match=r"missing intelhub.example/log \(ml-dsa-65\)"):
        open_checkpoint(ed_only, HUB.verifier(), ORIGIN)
    assert HUB.ed25519_key is not None
    with pytest.raises(ConfigError, match="must have both Ed25519 and ML-DSA-65 keys"):
        open_checkpoint(note, NoteVerifier(ORIGIN, HUB.ed25519_key.public_key()), ORIGIN)
    classic = NoteVerifier(ORIGIN, HUB.ed25519_key.public_key())
    assert open_checkpoint(note, classic, ORIGIN, hybrid=False) == CP
    # Signatures are checked before the body is parsed: a bad body signed by the hub is
    # still reported as a bad body, an unsigned one as unsigned.
    bad = sign_note(BODY.replace("\n10\n", "\n010\n"), HUB)
    with pytest.raises(LogError, match="not a canonical decimal"):
        open_checkpoint(bad, HUB.verifier(), ORIGIN)


# -- cosignatures --------------------------------------------------------------------------


def test_cosignature_round_trip_and_wire_format() -> None:
    note = sign_checkpoint(CP, HUB)
    lines = cosign_checkpoint(CP, WITNESS, 1764395300)
    cosigned = add_signatures(note, lines)
    assert verify_cosignature(cosigned, WITNESS.verifier()) == 1764395300
    assert open_checkpoint(cosigned, HUB.verifier(), ORIGIN) == CP  # hub check ignores witnesses
    _, sigs = split_note(cosigned)
    ed, ml = sigs[2], sigs[3]
    # Ed25519 (C2SP tlog-cosignature): u64 time || Ed25519("cosignature/v1\ntime <t>\n" || body).
    assert ed.signature[:8] == struct.pack(">Q", 1764395300) and len(ed.signature) == 72
    assert WITNESS.ed25519_key is not None and WITNESS.mldsa_key is not None
    WITNESS.ed25519_key.public_key().verify(
        ed.signature[8:], b"cosignature/v1\ntime 1764395300\n" + BODY.encode()
    )
    # ML-DSA-65 (intelhub type): C2SP's ML-DSA-44 cosigned_message struct, context = identifier.
    name, origin = WITNESS.name.encode(), ORIGIN.encode()
    msg = (
        b"subtree/v1\n\x00"
        + bytes([len(name)])
        + name
        + struct.pack(">Q", 1764395300)
        + bytes([len(origin)])
        + origin
        + struct.pack(">QQ", 0, 10)
        + TREE.root()
    )
    WITNESS.mldsa_key.public_key().verify(ml.signature[8:], msg, b"intelhub/cosignature/ml-dsa-65")


def test_cosignature_failures() -> None:
    note = sign_checkpoint(CP, HUB)
    cosigned = add_signatures(note, cosign_checkpoint(CP, WITNESS, 1764395300))
    other = Cosigner("de.intelhub.example/witness", Ed25519PrivateKey.generate())
    with pytest.raises(LogError, match="no ed25519 cosignature by de.intelhub.example/witness"):
        verify_cosignature(cosigned, other.verifier())
    # Only the Ed25519 line: a hybrid witness key is not satisfied.
    ed_line = cosign_checkpoint(CP, WITNESS, 1764395300).split("\n")[0] + "\n"
    with pytest.raises(LogError, match="no ml-dsa-65 cosignature by fr.intelhub.example/witness"):
        verify_cosignature(add_signatures(note, ed_line), WITNESS.verifier())
    # A cosignature of another tree head does not carry over.
    cp2 = Checkpoint(ORIGIN, 11, bytes(32), CP.time)
    moved = add_signatures(sign_checkpoint(cp2, HUB), cosign_checkpoint(CP, WITNESS, 1764395300))
    with pytest.raises(
        LogError, match="ed25519 cosignature by fr.intelhub.example/witness does not"
    ):
        verify_cosignature(moved, WITNESS.verifier())
    # Changing the timestamp breaks the signature; mixing timestamps is refused.
    _, sigs = split_note(cosigned)
    ed = sigs[2]
    later = NoteSignature(ed.name, ed.key_id, struct.pack(">Q", 1764395301) + ed.signature[8:])
    with pytest.raises(LogError, match="does not verify"):
        verify_cosignature(add_signatures(note, later.line() + sigs[3].line()), WITNESS.verifier())
    mixed = cosign_checkpoint(CP, WITNESS, 1).split("\n")[0] + "\n" + sigs[3].line()
    with pytest.raises(LogError, match="carry different timestamps"):
        verify_cosignature(add_signatures(note, mixed), WITNESS.verifier())
    short = NoteSignature(ed.name, ed.key_id, ed.signature[:70]).line()
    with pytest.raises(LogError, match="has the wrong length"):
        verify_cosignature(add_signatures(note, short + sigs[3].line()), WITNESS.verifier())
    with pytest.raises(LogError, match="cosignature time must be an int"):
        cosign_checkpoint(CP, WITNESS, -1)


def test_ed25519_only_witness() -> None:
    witness = Cosigner("it.intelhub.example/witness", Ed25519PrivateKey.generate())
    lines = cosign_checkpoint(CP, witness, 7)
    assert lines.count("\n") == 1
    assert (
        verify_cosignature(add_signatures(sign_checkpoint(CP, HUB), lines), witness.verifier()) == 7
    )


# -- promises ------------------------------------------------------------------------------

LEAF = TREE.leaf(9)
PROMISE = Promise(ORIGIN, 9, LEAF, 1764395258, 60)
PROMISE_BODY = (
    f"intelhub promise v1\n{ORIGIN}\n9\n{base64.b64encode(LEAF).decode()}\n"
    "time 1764395258\nmmd 60\n"
)


def test_promise_round_trip() -> None:
    assert PROMISE.body() == PROMISE_BODY
    assert parse_promise_body(PROMISE_BODY) == PROMISE
    assert PROMISE.deadline == 1764395318
    note = sign_promise(PROMISE, HUB)
    assert verify_promise(note, HUB.verifier(), ORIGIN, leaf_hash=LEAF, max_mmd=60) == PROMISE
    assert open_note(note, HUB.verifier())[0] == PROMISE_BODY


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"origin": "other.example/log"}, "promise is for log 'intelhub.example/log', expected"),
        ({"leaf_hash": bytes(32)}, "promise is for a different leaf hash"),
        ({"max_mmd": 59}, "promise merge delay 60s exceeds the agreed 59s"),
    ],
)
def test_verify_promise_checks_expectations(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"origin": ORIGIN, **kwargs}
    with pytest.raises(LogError, match=message):
        verify_promise(sign_promise(PROMISE, HUB), HUB.verifier(), **args)


def test_promise_needs_both_hub_signatures_and_is_not_a_checkpoint() -> None:
    note = sign_promise(PROMISE, HUB)
    ml_only = PROMISE_BODY + "\n" + split_note(note)[1][1].line()
    with pytest.raises(LogError, match=r"missing intelhub.example/log \(ed25519\)"):
        verify_promise(ml_only, HUB.verifier(), ORIGIN)
    with pytest.raises(LogError, match="checkpoint has 6 lines"):
        open_checkpoint(note, HUB.verifier(), ORIGIN)
    with pytest.raises(LogError, match="promise has 4 lines, expected 6"):
        verify_promise(sign_checkpoint(CP, HUB), HUB.verifier(), ORIGIN)


@pytest.mark.parametrize(
    "text,message",
    [
        (PROMISE_BODY.replace("intelhub promise v1", "intelhub promise v2"), "must start with"),
        (PROMISE_BODY.replace("\n9\n", "\n09\n"), "leaf index '09' is not a canonical decimal"),
        (PROMISE_BODY.replace("mmd 60", "mmd -60"), "mmd '-60' is not a canonical decimal"),
        (PROMISE_BODY.replace("mmd 60\n", ""), "promise has 5 lines, expected 6"),
        (PROMISE_BODY.replace("time ", "mmd "), "expected a 'time <decimal>' line"),
        (PROMISE_BODY.replace(base64.b64encode(LEAF).decode(), "AAAA"), "leaf hash is 3 bytes"),
    ],
    ids=lambda v: v if "\n" not in v else "",
)
def test_strict_promise_parsing(text: str, message: str) -> None:
    with pytest.raises(LogError, match=message):
        parse_promise_body(text)


def test_check_promise_kept() -> None:
    assert check_promise_kept(PROMISE, CP, TREE.inclusion_proof(9, 10)) is True
    small = Checkpoint(ORIGIN, 9, TREE.root(9), PROMISE.deadline - 1)
    assert check_promise_kept(PROMISE, small, []) is False  # not yet due
    late = Checkpoint(ORIGIN, 9, TREE.root(9), PROMISE.deadline)
    with pytest.raises(LogError, match="promise broken: leaf 9 missing from a tree of size 9"):
        check_promise_kept(PROMISE, late, [])
    with pytest.raises(LogError, match="inclusion proof does not lead to the root hash"):
        check_promise_kept(PROMISE, CP, TREE.inclusion_proof(8, 10))
    with pytest.raises(LogError, match="different logs"):
        check_promise_kept(PROMISE, Checkpoint("x", 10, CP.root, CP.time), [])
