"""What a hybrid signature check costs a thread, alone and beside other work: why the relay's
verify threads cost more CPU per packet than the floor's check measured on its own.

Prints the thread CPU time of one check (median of many) in a thread:
  - alone (as the relay benchmark's floor measures it);
  - beside a second thread doing the same checks (both release the GIL inside);
  - beside a thread running Python (as the hub's event loop does);
  - beside a process running Python (another core busy, no GIL shared);
  - after sleeping 5 ms before each check (a thread woken for each packet).

    .venv/bin/python bench/gil.py [--checks 400]

Uses the relay benchmark's cached packets; runs in this process and one child; talks to no one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay import KEYS, sealed_packets  # noqa: E402

from hub.keyfiles import load_trust_dir  # noqa: E402
from hub.protocol import envelope  # noqa: E402
from hub.protocol.keys import signing_input  # noqa: E402


def checks(n: int) -> list[Callable[[], None]]:
    trust = load_trust_dir(KEYS)
    out: list[Callable[[], None]] = []
    for raw in sealed_packets(max(n, 64))[:n]:
        p = envelope.parse_packet(raw)
        key, msg = trust.certs[p.header.sender_cert].signing, signing_input("packet", p.header.raw)
        out.append(partial(key.verify, msg, p.sig))
    return out


def timed(work: list[Callable[[], None]], out: list[float], pause: float = 0.0) -> None:
    samples = []
    for check in work:
        if pause:
            time.sleep(pause)
        t = time.thread_time()
        check()
        samples.append(time.thread_time() - t)
    out.append(statistics.median(samples))


def spin(stop: threading.Event | None, seconds: float = 0.0) -> None:
    """Python bytecode and nothing else, until told or for ``seconds``."""
    deadline = time.monotonic() + seconds
    x = 0
    while (stop is not None and not stop.is_set()) or (stop is None and time.monotonic() < deadline):
        for i in range(1000):
            x += i


def run(work: list[Callable[[], None]], beside: str) -> float:
    out: list[float] = []
    stop = threading.Event()
    others: list[threading.Thread] = []
    child = None
    if beside == "checks":
        others = [threading.Thread(target=timed, args=(work, []))]
    elif beside == "python thread":
        others = [threading.Thread(target=spin, args=(stop,))]
    elif beside == "python process":
        child = multiprocessing.Process(target=spin, args=(None, 60.0))
        child.start()
        time.sleep(0.2)
    for t in others:
        t.start()
    timed(work, out, pause=0.005 if beside == "a 5 ms sleep" else 0.0)
    stop.set()
    for t in others:
        t.join()
    if child is not None:
        child.terminate()
        child.join()
    return out[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=400, help="signature checks per measurement")
    args = ap.parse_args()
    work = checks(args.checks)
    print(f"hybrid signature check (Ed25519 + ML-DSA-65), thread CPU µs, median of {len(work)}; two rounds")
    for _ in range(2):
        alone = run(work, "nothing")
        row = [f"alone {alone * 1e6:.0f}"]
        for beside in ("checks", "python thread", "python process", "a 5 ms sleep"):
            t = run(work, beside)
            row.append(f"beside {beside} {t * 1e6:.0f} ({t / alone:.1f}x)")
        print("  " + ";  ".join(row))


if __name__ == "__main__":
    main()
