"""Format stability: packets made by earlier code keep decoding, verifying and opening."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.keyfiles import load_trust
from hub.protocol import envelope
from hub.protocol.federation import G7, create_federation
from hub.protocol.suites import CLASSIC, HYBRID

GOLDEN = Path(__file__).parent / "vectors" / "golden"
EXPECTED: dict[str, Any] = json.loads((GOLDEN / "expected.json").read_text())
SEED, NOW = b"intelhub-golden-v1", 1_764_000_000


@pytest.fixture(scope="module")
def trust():  # type: ignore[no-untyped-def]
    return load_trust(GOLDEN / "roster.txt", sorted(GOLDEN.glob("*.cert")))


@pytest.fixture(scope="module")
def fr_kem():  # type: ignore[no-untyped-def]
    # Deterministic test keys: the recipient's private key is re-derived, never stored.
    return create_federation(G7, now=NOW, seed=SEED, name="intelhub-golden", suites=(HYBRID.id, CLASSIC.id)).members["FR"].node_kem


def test_every_content_type_and_suite_is_covered() -> None:
    kinds = {name.split("-")[0] for name in EXPECTED}
    assert kinds == {"alert", "freeze", "amend", "withdraw", "receipt"}
    assert len(EXPECTED) == 10


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_packet_verifies_and_opens(name: str, trust, fr_kem) -> None:  # type: ignore[no-untyped-def]
    raw = (GOLDEN / name).read_bytes()
    expected = EXPECTED[name]
    v = envelope.verify(raw, trust, NOW)
    assert v.header.to_json() == expected["header"]
    assert v.signer.name == "IT/it-officer"
    o = envelope.open_packet(raw, nation="FR", kem=fr_kem, trust=trust, now=NOW)
    assert o.content == expected["content"]
    # Years later, the same packet still verifies (validity is judged at signing time).
    envelope.verify(raw, trust, NOW + 20 * 365 * 86400)
