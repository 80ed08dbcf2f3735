"""The demo's audit step: every stored packet verified from public material only."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hub.keyfiles import load_trust_dir
from hub.protocol import envelope
from hub.protocol.errors import IntelhubError

KEYS = Path(__file__).resolve().parents[1] / "keys" / "example"


def audit_stores(run_dir: Path, nations: Sequence[str], say: Callable[[str], None] = print) -> int:
    """Verify both signature halves and the signer chain of every packet in every node store."""
    from clients.node.store import NodeStore

    trust = load_trust_dir(KEYS)  # roster and certificates: no private key is read
    failures = 0
    now = int(time.time())
    for n in nations:
        st = NodeStore(run_dir / n / "store.db")
        ok = bad = 0
        try:
            for _, raw in st.raw_packets():
                try:
                    envelope.verify(raw, trust, now)
                    ok += 1
                except IntelhubError as exc:
                    bad += 1
                    say(f"  FAIL {n}: {exc}")
        finally:
            st.close()
        failures += bad
        say(f"  {n}: {ok} packet(s) verified (Ed25519 + ML-DSA-65, certificate chain to {n}'s roster)"
            + (f", {bad} FAILED" if bad else ""))
    return failures
