"""Benchmark of the transparency-log primitives: tree, proofs, checkpoint signatures.

Usage: ``.venv/bin/python bench/log.py [--leaves 1000000] [--proofs 1000]``.
Bounded: under 15 s at the defaults (about 7 s on the dev box). Goal: proofs <= 1 ms.
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
from hub.protocol.merkle import MerkleTree, verify_consistency, verify_inclusion
from hub.protocol.note import NoteSigner


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


if __name__ == "__main__":
    main()
