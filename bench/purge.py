"""The hub's purge over a backlog: how long a pass takes, and how long it holds up commits.

Builds a hub database (the real SQLiteStorage) of N packets to the G7, all acknowledged by each
nation's subscription except FR's second one, "unused" (a node retired without `unsub`): every
packet is still owed to it, and no purge pass releases any. The first pass after a start looks at
each of them in full; later passes only check them for expiry, from an index. While a pass runs,
one packet is appended every 2 ms, as a publishing hub would; their commit latency is the cost a
purge puts on ACCEPTED. The baseline is the same appends with no purge running.

    .venv/bin/python bench/purge.py [--packets 100000]

Local files only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub.server.sqlite_store import PURGE_CHUNK, SQLiteStorage  # noqa: E402
from hub.server.storage import NewPacket  # noqa: E402

NATIONS = ("CA", "DE", "FR", "GB", "IT", "JP", "US")
ACCEPTED = 1_764_000_100


def item(j: int) -> NewPacket:
    return NewPacket(os.urandom(16), "IT", b"c" * 32, "alerts.x", NATIONS, ACCEPTED - 100, ACCEPTED + 10**8,
                     b"header-%d" % j, b"r" * 13_000)


async def appends_while(st: SQLiteStorage, start: int, work: asyncio.Future[int] | None, seconds: float) -> list[float]:
    """Commit latencies of one-packet appends every 2 ms, until ``work`` is done (or for ``seconds``)."""
    lat: list[float] = []
    k = start
    deadline = time.monotonic() + seconds
    while (work is not None and not work.done()) or (work is None and time.monotonic() < deadline):
        t = time.perf_counter()
        await st.append([item(k)], ACCEPTED)
        lat.append(time.perf_counter() - t)
        k += 1
        await asyncio.sleep(0.002)
    return lat


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def main_async(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="intelhub-purge-") as d:
        st = SQLiteStorage(Path(d) / "hub.db")
        try:
            for nation in NATIONS:
                await st.subscribe(nation, "main", (">",))
            await st.subscribe("FR", "unused", (">",))
            for i in range(0, n, 500):
                await st.append([item(j) for j in range(i, min(n, i + 500))], ACCEPTED)
            for nation in NATIONS:
                await st.ack(nation, "main", [], n - 1)
            base = await appends_while(st, n, None, 1.0)
            # The first pass after a start looks at every held packet in full; the later ones only
            # at those whose subscriptions changed, and new ones (the seven "main" subscriptions
            # acknowledge the packets appended meanwhile, as live nodes would).
            passes = []
            lat: list[float] = []
            for k in range(4):
                t = time.perf_counter()
                job = asyncio.ensure_future(st.purge(ACCEPTED + 100 + k, 0))
                top = n + 10_000 * (k + 1)
                lat += await appends_while(st, top, job, 0)
                assert await job == 0
                passes.append(time.perf_counter() - t)
                for nation in NATIONS:
                    await st.ack(nation, "main", [], st.size() - 1)
        finally:
            await st.close()
    print(f"hub purge over {n:,} packets owed to an unused subscription (chunks of {PURGE_CHUNK:,}):")
    print(f"  the first pass after a start takes {passes[0]:.2f} s (each held packet looked at in full)")
    print(f"  a later pass takes {statistics.median(passes[1:]):.3f} s (median of 3; the hub runs one a minute)")
    print(f"  one-packet commits during the passes: p50 {pct(lat, 50) * 1e3:.1f} ms, p99 {pct(lat, 99) * 1e3:.1f} ms, "
          f"max {max(lat) * 1e3:.1f} ms ({len(lat)} commits)")
    print(f"  the same commits with no purge:  p50 {pct(base, 50) * 1e3:.1f} ms, p99 {pct(base, 99) * 1e3:.1f} ms, "
          f"max {max(base) * 1e3:.1f} ms ({len(base)} commits)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=100_000)
    args = ap.parse_args()
    if not 1 <= args.packets <= 10_000_000:
        ap.error("--packets must be 1 to 10,000,000")
    asyncio.run(main_async(args.packets))


if __name__ == "__main__":
    main()
