"""Benchmark of the transparency log: tree, proofs, checkpoint and promise signatures, the hub's append.

Usage: ``.venv/bin/python bench/log.py [--leaves 1000000] [--proofs 1000] [--hub-cpu-us 1800]``.
Bounded: under 30 s at the defaults. Goals: proofs <= 1 ms; the hub's per-packet log work on
its event loop (leaf hash + in-order append) under 5 % of the hub's CPU per packet, which
bench/relay.py reports (pass it as --hub-cpu-us); promise signatures amortised by batching.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey

from hub.protocol.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from hub.protocol.keys import SigningKey
from hub.protocol.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from hub.protocol.note import NoteSigner, sign_note
from hub.protocol.promise import Promise, sign_promise
from hub.server.log import PROMISE_SPACING, HubLog, batch_promise_body
from hub.protocol.logformat import leaf_data


def line(label: str, value: str) -> None:
    print(f"{label:<44} {value}")


def stats_us(samples_ns: list[int]) -> str:
    us = sorted(s / 1000 for s in samples_ns)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    return f"median {statistics.median(us):8.1f} µs   p99 {p99:8.1f} µs"


def timed(fn: Callable[[], object], runs: int) -> list[int]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=1000)
    parser.add_argument("--signatures", type=int, default=200)
    parser.add_argument("--hub-cpu-us", type=float, default=1800.0,
                        help="the hub's CPU per packet from bench/relay.py, in µs (default: ~1.5-2 ms)")
    args = parser.parse_args()
    n, rng = args.leaves, random.Random(9162)
    leaves = [os.urandom(32) for _ in range(n)]
    version = sys.version.split()[0]
    print(f"intelhub log benchmark: {n:,} leaves, {args.proofs} proofs, Python {version}")

    tree = MerkleTree()
    t0 = time.perf_counter()
    for h in leaves:
        tree.append(h)
    dt = time.perf_counter() - t0
    line("append", f"{n / dt:12,.0f} leaves/s   ({dt:.2f} s total)")

    t0 = time.perf_counter()
    rebuilt = MerkleTree.from_leaf_hashes(leaves)
    dt = time.perf_counter() - t0
    line("rebuild from stored leaf hashes", f"{dt * 1000:12,.0f} ms   ({n / dt:,.0f} leaves/s)")
    if rebuilt.root() != tree.root():
        raise SystemExit("rebuilt root differs")
    line("root at full size", stats_us(timed(tree.root, args.proofs)))

    root = tree.root()
    gen, ver = [], []
    for _ in range(args.proofs):
        i = rng.randrange(n)
        t0 = time.perf_counter_ns()
        proof = tree.inclusion_proof(i, n)
        t1 = time.perf_counter_ns()
        verify_inclusion(leaves[i], i, n, proof, root)
        ver.append(time.perf_counter_ns() - t1)
        gen.append(t1 - t0)
    line(f"inclusion proof, generate ({len(proof)} hashes)", stats_us(gen))
    line("inclusion proof, verify", stats_us(ver))

    gen, ver = [], []
    for _ in range(args.proofs):
        old = rng.randrange(1, n)
        t0 = time.perf_counter_ns()
        proof = tree.consistency_proof(old, n)
        t1 = time.perf_counter_ns()
        old_root = tree.root(old)
        t2 = time.perf_counter_ns()
        verify_consistency(old, n, old_root, root, proof)
        ver.append(time.perf_counter_ns() - t2)
        gen.append(t1 - t0)
    line("consistency proof, generate", stats_us(gen))
    line("consistency proof, verify", stats_us(ver))

    ed, ml = Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate()
    hub = NoteSigner("intelhub.example/log", ed, ml)
    cp = Checkpoint("intelhub.example/log", n, root, 1764395258)
    body = cp.body().encode()
    runs = args.signatures
    line("checkpoint sign, Ed25519 only", stats_us(timed(lambda: ed.sign(body), runs)))
    line("checkpoint sign, ML-DSA-65 only", stats_us(timed(lambda: ml.sign(body), runs)))
    line("checkpoint sign, hybrid note", stats_us(timed(lambda: sign_checkpoint(cp, hub), runs)))
    note, verifier = sign_checkpoint(cp, hub), hub.verifier()
    open_once = lambda: open_checkpoint(note, verifier, "intelhub.example/log")  # noqa: E731
    line("checkpoint open, hybrid note", stats_us(timed(open_once, runs)))
    line("signed checkpoint size", f"{len(note.encode()):12,} bytes")
    hub_log_bench(args, n, leaves)


def hub_log_bench(args: argparse.Namespace, n: int, leaves: list[bytes]) -> None:
    """What the hub does per accepted packet, on its event loop and on its signing thread."""
    from types import SimpleNamespace

    key = SigningKey.generate()
    roster = SimpleNamespace(hub_name="hub")
    relay = SimpleNamespace(storage=SimpleNamespace(leaf_hashes=lambda: leaves, blobs=lambda kind: [],
                                                    size=lambda: n),
                            trust=SimpleNamespace(roster=roster),
                            metrics=SimpleNamespace(log_size=SimpleNamespace(set=lambda v: None)))
    t0 = time.perf_counter()
    hl = HubLog(relay, key)
    line("HubLog start: tree rebuilt from leaf hashes", f"{(time.perf_counter() - t0) * 1000:12,.0f} ms")
    header = os.urandom(700)  # a signed header to seven nations is about this size
    m = min(200_000, n)
    order = list(range(n, n + m))
    for i in range(0, m - 1, 2):  # completions out of order, as concurrent publishes finish
        order[i], order[i + 1] = order[i + 1], order[i]
    t0 = time.perf_counter()
    for index in order:
        hl.add_leaf(index, leaf_hash(leaf_data(header, 1764395258)))
    per_leaf = (time.perf_counter() - t0) / m
    line("hub append (leaf hash + in-order append)", f"{1 / per_leaf:12,.0f} leaves/s   ({per_leaf * 1e6:.1f} µs/leaf)")
    share = per_leaf * 1e6 / args.hub_cpu_us
    line(f"  share of the hub's {args.hub_cpu_us:,.0f} µs per packet", f"{share * 100:12.2f} %   (goal < 5 %)")
    size = hl.tree.size
    hl._remember(Checkpoint("hub/log", size, hl.tree.root(size), 1764395258), "")  # as if just signed
    rng = random.Random(7)
    samples = timed(lambda: hl.delivery_proof(rng.randrange(size), 1764395258), args.proofs)
    line("delivery proof (path to the latest checkpoint)", stats_us(samples))
    signer = NoteSigner("hub/log", key.ed25519, key.mldsa65)
    runs = max(20, args.signatures // 4)
    single = statistics.median(timed(lambda: sign_promise(Promise("hub/log", 7, leaves[0], 1, 60), signer), runs))
    line("promise, one leaf (hybrid)", f"{single / 1000:12,.0f} µs per packet")
    for size in (8, 64):
        entries = [(i, 1764395258, leaves[i]) for i in range(size)]
        cost = statistics.median(timed(lambda: sign_note(batch_promise_body("hub/log", 1, 60, entries), signer), runs))
        line(f"promise, batch of {size}", f"{cost / 1000 / size:12,.0f} µs per packet")
    cap = 1 / PROMISE_SPACING
    for rate in (100, 500, 2000):
        per_packet = single / 1000 * min(rate, cap) / rate
        line(f"  promise signing at {rate:,} packets/s", f"{per_packet:12,.0f} µs per packet   "
             f"({per_packet / args.hub_cpu_us * 100:.0f} % of the hub's CPU per packet; on the signing thread)")


if __name__ == "__main__":
    main()
