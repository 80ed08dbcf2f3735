"""Soak: the whole federation (hub + seven `intelhub node run` processes) under a steady offered load.

    .venv/bin/python bench/soak.py [--minutes 5] [--rate 40] [--window 30] [--hybrid-share 1.0]

Seals ``rate x minutes x 60`` packets first (alerts, freezes, amendments and withdrawals on several
topics, mostly to 1-3 nations; hybrid suite by default, as in production) in worker processes, so
sealing does not compete with the federation. Then offers them at ``--rate`` packets/s through each
sender nation's own session (5 % over HTTP), while three nodes send signed receipts back
(tests/reliability/harness.py ``federation_specs``: one node with a window of 2, one with two
overlapping subscriptions, one dropping by filter, one feeding a JSONL sink).

Reported per window: packets accepted/s and stored/s (one per recipient node), publish->ACCEPTED
and publish->stored p50/p99 (stored = the packet is visible in the recipient's store, polled every
50 ms), hub and node CPU and resident memory. At the end: memory growth from the end of the first
window (flagged above 20 %), and loss and duplicates: every node's store against what the hub's log
routed to it, and ``intelhub audit completeness`` for every node. Exits 1 on any loss, duplicate,
crash or incomplete audit (and, with ``--strict-memory``, on flagged growth).

Talks only to 127.0.0.1; everything lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.harness import (  # noqa: E402
    Cluster, Planned, Publisher, audit_all, converge, federation_specs, final_report, plan_stream, seal_stream,
    wait_checkpoint, write_test_federation,
)

TICK = os.sysconf("SC_CLK_TCK")
GROWTH_FLAG = 0.20


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


class StoreWatch:
    """Polls every node's store (read-only, every ``every`` s, on a thread) for newly committed packets
    and records when each became visible: the 'stored' end of publish->stored."""

    def __init__(self, stores: dict[str, Path], every: float = 0.05) -> None:
        self.stores, self.every = stores, every
        self.seen: list[tuple[float, str, str]] = []  # (monotonic, nation, packet id)
        self.last = {n: 0 for n in stores}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        conns: dict[str, sqlite3.Connection] = {}
        while not self._stop.is_set():
            for n, path in self.stores.items():
                try:
                    if n not in conns:
                        if not path.exists():
                            continue
                        conns[n] = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
                    rows = conns[n].execute("SELECT seq, packet_id FROM packets WHERE seq > ? ORDER BY seq",
                                            (self.last[n],)).fetchall()
                except sqlite3.OperationalError:
                    continue  # the store is still being created
                now = time.monotonic()
                for seq, pid in rows:
                    self.seen.append((now, n, pid))
                if rows:
                    self.last[n] = rows[-1][0]
            self._stop.wait(self.every)
        for c in conns.values():
            c.close()


async def offer(publisher: Publisher, stream: list[tuple[Planned, bytes]], rate: float, sent: dict[str, float],
                accepted: list[tuple[float, float]], deadline: float) -> None:
    """Publish packet k at t0 + k / rate (at most 256 in flight); record send and ACCEPTED times."""
    sem = asyncio.Semaphore(256)
    t0 = time.monotonic()
    tasks = []

    async def one(p: Planned, raw: bytes) -> None:
        try:
            t = time.monotonic()
            sent[p.pid] = t
            await publisher.publish(p, raw, deadline)
            accepted.append((time.monotonic(), time.monotonic() - t))
        finally:
            sem.release()

    for k, (p, raw) in enumerate(stream):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
        await sem.acquire()
        tasks.append(asyncio.create_task(one(p, raw)))
    await asyncio.gather(*tasks)


def histogram_quantiles(metrics: str, name: str, qs: tuple[float, ...] = (0.5, 0.99)) -> tuple[list[float], float]:
    """Quantiles (bucket upper bounds) and mean of a Prometheus histogram in the hub's /metrics text."""
    buckets, total, count = [], 0.0, 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_sum "):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count "):
            count = float(line.rsplit(" ", 1)[1])
    out = [next((le for le, c in buckets if c >= q * count), float("nan")) for q in qs]
    return out, total / count if count else float("nan")


async def hub_metrics(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/metrics") as r:
            return await r.text()


def mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


async def soak(args: argparse.Namespace, work: Path) -> int:
    t_begin = time.monotonic()
    n = int(args.rate * args.minutes * 60)
    fed_dir = write_test_federation(work / "federation")
    plan = plan_stream(n, seed=args.seed, hybrid_share=args.hybrid_share)
    t = time.monotonic()
    raws = await asyncio.to_thread(seal_stream, fed_dir, plan)
    print(f"sealed {n} packets ({sum(p.suite.endswith('HYBRID') for p in plan)} hybrid) in {time.monotonic() - t:.1f} s "
          f"on {os.cpu_count()} cores", flush=True)
    stream = list(zip(plan, raws))
    limits = {"max_clock_skew": int(args.minutes * 60) + 3600, "publish_rate": 100000, "publish_burst": 100000}
    specs = federation_specs()
    cluster = Cluster(fed_dir, work, specs, limits)
    sent: dict[str, float] = {}
    accepted: list[tuple[float, float]] = []
    watch = StoreWatch({c: cluster.dirs[c] / "store.db" for c in specs})
    publisher = None
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        url = await asyncio.to_thread(cluster.start_hub)
        cluster.start_nodes()
        publisher = Publisher(fed_dir, url, timeout=30.0)
        await publisher.start()
        await asyncio.sleep(3)  # nodes authenticated and subscribed
        watch.start()
        monitor = asyncio.create_task(cluster.monitor())
        pids = {"hub": cluster.hub.proc.pid, **{c: cluster.node_pid(c) for c in specs}}  # type: ignore[union-attr]
        rss0 = cluster.rss()
        t0 = time.monotonic()
        offering = asyncio.create_task(offer(publisher, stream, args.rate, sent, accepted,
                                             t0 + args.minutes * 60 + 300))
        print(f"offering {args.rate:g} packets/s for {args.minutes:g} min; windows of {args.window:g} s\n"
              f"{'t (s)':>6} {'acc/s':>6} {'stored/s':>8} {'ACC p50':>8} {'p99 ms':>7} {'stored p50':>10} {'p99 ms':>7} "
              f"{'hub cpu':>7} {'nodes cpu':>9} {'me cpu':>6} {'load':>5} {'hub MiB':>7} {'nodes MiB':>9}", flush=True)
        cpu_prev = {k: cpu_seconds(p) for k, p in pids.items()}
        me_prev = cpu_seconds(os.getpid())
        w_start = t0
        while not offering.done() or w_start == t0:
            await asyncio.wait({offering}, timeout=max(0.0, w_start + args.window - time.monotonic()))
            w_end = time.monotonic()
            if w_end - w_start < 1:
                break
            acc = [lat for at, lat in accepted if w_start <= at < w_end]
            stored = [(at - sent[pid]) for at, _, pid in watch.seen if w_start <= at < w_end and pid in sent]
            cpu = {k: cpu_seconds(p) for k, p in pids.items()}
            me = cpu_seconds(os.getpid())
            span = w_end - w_start
            rss = cluster.rss()
            s: dict[str, Any] = {"t": w_end - t0, "acc": len(acc) / span, "stored": len(stored) / span,
                 "acc_p50": pct(acc, 50), "acc_p99": pct(acc, 99), "st_p50": pct(stored, 50), "st_p99": pct(stored, 99),
                 "hub_cpu": (cpu["hub"] - cpu_prev["hub"]) / span,
                 "nodes_cpu": sum(cpu[c] - cpu_prev[c] for c in specs) / span, "me_cpu": (me - me_prev) / span,
                 "load": os.getloadavg()[0], "hub_rss": rss.get("hub", 0), "nodes_rss": sum(rss.get(c, 0) for c in specs), "rss": rss}
            samples.append(s)
            print(f"{s['t']:6.0f} {s['acc']:6.1f} {s['stored']:8.1f} {s['acc_p50'] * 1e3:8.1f} {s['acc_p99'] * 1e3:7.1f} "
                  f"{s['st_p50'] * 1e3:10.0f} {s['st_p99'] * 1e3:7.0f} {s['hub_cpu']:7.2f} {s['nodes_cpu']:9.2f} "
                  f"{s['me_cpu']:6.2f} {s['load']:5.1f} {mib(s['hub_rss']):>7} {mib(s['nodes_rss']):>9}", flush=True)
            cpu_prev, me_prev, w_start = cpu, me, w_end
        await offering
        offered_for = time.monotonic() - t0
        rss_end = cluster.rss()
        metrics = await hub_metrics(cluster.url)
        t = time.monotonic()
        await converge(cluster, args.drain)
        drained = time.monotonic() - t
        watch.stop()
        monitor.cancel()
        cluster.stop_nodes()
        report = final_report(cluster, plan)
        await wait_checkpoint(cluster.url)
        audits = await audit_all(cluster)
    finally:
        watch.stop()
        if publisher is not None:
            await publisher.close()
        await asyncio.to_thread(cluster.close)

    # -- the summary ---------------------------------------------------------------------------
    stats = publisher.stats
    print(f"\noffered {n} packets in {offered_for:.0f} s ({n / offered_for:.1f}/s); accepted {len(stats.index)}; "
          f"answers {dict(stats.answers)}; log {report.log_size} packets with receipts; drained {drained:.1f} s after "
          f"the last publish")
    by_node: dict[str, list[float]] = defaultdict(list)
    for at, c, pid in watch.seen:
        if pid in sent:
            by_node[c].append(at - sent[pid])
    all_acc = [lat for _, lat in accepted]
    all_st = [x for xs in by_node.values() for x in xs]
    print(f"whole run: publish->ACCEPTED p50 {pct(all_acc, 50) * 1e3:.1f} ms p99 {pct(all_acc, 99) * 1e3:.1f} ms; "
          f"publish->stored p50 {pct(all_st, 50) * 1e3:.0f} ms p99 {pct(all_st, 99) * 1e3:.0f} ms "
          f"(store polled every 50 ms)")
    (a50, a99), amean = histogram_quantiles(metrics, "intelhub_accept_latency_seconds")
    (c50, c99), cmean = histogram_quantiles(metrics, "intelhub_commit_seconds")
    _, bmean = histogram_quantiles(metrics, "intelhub_commit_batch_size")
    print(f"inside the hub (its /metrics, bucket bounds): receipt->ACCEPTED p50 <= {a50 * 1e3:g} ms, p99 <= {a99 * 1e3:g} ms, "
          f"mean {amean * 1e3:.1f} ms; group commit p50 <= {c50 * 1e3:g} ms, p99 <= {c99 * 1e3:g} ms, "
          f"mean {cmean * 1e3:.1f} ms, {bmean:.1f} operations per commit")
    loads = ", ".join(f"{x['load']:.1f}" for x in samples)
    print(f"machine load average (1 min, every process on it) per window: {loads}")
    for c in specs:
        xs = by_node[c]
        print(f"  {c} (window {specs[c].window:>2}): {len(xs):6} stream packets stored, p50 {pct(xs, 50) * 1e3:6.0f} ms, "
              f"p99 {pct(xs, 99) * 1e3:6.0f} ms")
    warm = samples[0]["rss"] if samples else rss0
    mid = samples[len(samples) // 2]["rss"] if samples else rss0
    print("resident memory (MiB): before the load -> after the first window -> half-way -> at the end; growth from the "
          "first window (flagged above 20 %), and over the second half")
    flagged = []
    for k in ["hub", *specs]:
        before, first, half, end = rss0.get(k, 0), warm.get(k, 0), mid.get(k, 0), rss_end.get(k, 0)
        growth = (end - first) / first if first else float("nan")
        late = (end - half) / half if half else float("nan")
        flag = growth > GROWTH_FLAG
        if flag:
            flagged.append(k)
        print(f"  {k:>3}: {mib(before):>5} -> {mib(first):>5} -> {mib(half):>5} -> {mib(end):>5}  {growth:+6.1%}  "
              f"second half {late:+6.1%}"
              + ("  FLAGGED (> 20 %)" if flag else ""))
    losses = sum(r.missing for r in report.nodes)
    dups = sum(r.duplicates for r in report.nodes)
    print(f"loss and duplicates: {losses} missing, {dups} duplicates, "
          f"{sum(r.unexpected for r in report.nodes)} not addressed, {sum(r.quarantined for r in report.nodes)} quarantined "
          f"over {sum(r.expected for r in report.nodes)} node deliveries; receipts {report.receipts}; sink {report.sink}")
    for r in report.nodes:
        a = audits[r.nation]
        ok = a["complete"] and a["received"] == r.expected and not a["in_flight"]
        print(f"  {r.nation}: expected {r.expected}, stored {r.stored}, missing {r.missing}, duplicates {r.duplicates}; "
              f"audit complete {a['complete']}, received {a['received']}, missing {len(a['missing'])}")
        if not ok:
            failures.append(f"{r.nation}: audit {a}")
    failures += report.problems + cluster.crashes + stats.conflicts
    if set(p.pid for p in plan) - stats.index.keys():
        failures.append("packets never accepted")
    if args.strict_memory and flagged:
        failures.append(f"memory growth above {GROWTH_FLAG:.0%}: {', '.join(flagged)}")
    print(f"total {time.monotonic() - t_begin:.0f} s: " + ("OK" if not failures else "FAILED\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the offered load")
    ap.add_argument("--rate", type=float, default=40.0,
                    help="offered packets/s (default 40: about 60 %% of the 65-70/s this 2-core machine sustained when saturated)")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per reported window")
    ap.add_argument("--hybrid-share", type=float, default=1.0, help="share of packets sealed with the hybrid suite")
    ap.add_argument("--drain", type=float, default=180.0, help="seconds allowed to deliver everything after the load")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--strict-memory", action="store_true", help="exit 1 when memory grew more than 20 %%")
    ap.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it (logs, stores)")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        code = asyncio.run(soak(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="intelhub-soak-") as d:
            code = asyncio.run(soak(args, Path(d)))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
