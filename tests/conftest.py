"""Shared fixtures: a deterministic test federation (both suites allowed) and sample content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.protocol.federation import G7, Federation, create_federation
from hub.protocol.suites import CLASSIC, HYBRID
from hub.protocol.trust import Trust

#: The fixed clock of the protocol tests (2025-11-24T16:00:00Z).
NOW = 1_764_000_000


@pytest.fixture(scope="session")
def fed() -> Federation:
    return create_federation(G7, now=NOW, seed=b"intelhub-tests", name="intelhub-test",
                             suites=(HYBRID.id, CLASSIC.id))


@pytest.fixture(scope="session")
def fed_dir(fed: Federation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test federation written out (keys marked EXAMPLE ONLY), for hubs and nodes to load."""
    from hub.keyfiles import write_federation

    d = tmp_path_factory.mktemp("federation")
    write_federation(fed, d, None, example=True)
    return d


@pytest.fixture()
def trust(fed: Federation) -> Trust:
    return fed.trust()


def sample_alert() -> dict[str, Any]:
    return {
        "type": "alert",
        "title": "Organiser of the Zuwara-Lampedusa crossing",
        "category": "migrant_smuggling",
        "severity": "high",
        "summary": "Organises boat departures; payments via USDT.",
        "entities": [
            {
                "id": "e1",
                "schema": "Person",
                "names": ["Mohammed Al-Rashid"],
                "aliases": ["محمد الراشد"],
                "nationality": ["LY"],
                "identifiers": [{"type": "passport", "value": "X1234567", "country": "LY"}],
            },
            {
                "id": "e2",
                "schema": "CryptoWallet",
                "names": ["Organiser's TRON wallet"],
                "identifiers": [{"type": "crypto_wallet", "value": "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE", "chain": "TRX"}],
            },
        ],
        "links": [{"from": "e1", "to": "e2", "type": "owner"}],
        "handling": {"tlp": "AMBER", "codes": ["H2"], "source": "B", "information": "2"},
    }
