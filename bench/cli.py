"""CLI start-up: wall time of `intelhub --help` and `intelhub alert publish --dry-run` (goal <= 0.5 s).

The dry run does everything a real publish does except the network: start Python,
load the roster and certificates, read the officer's key, validate the content,
seal it to six nations with the hybrid suite, and print what the hub would see.
Median of N runs, in the same run as a bare `python -c pass` (the floor of any CLI).

    .venv/bin/python bench/cli.py [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "keys" / "example"


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    py = sys.executable
    base = wall([py, "-c", "pass"], args.runs)
    help_t = wall([py, "-m", "clients", "--help"], args.runs)
    dry = wall([py, "-m", "clients", "alert", "publish", "--name", "Mohammed Al-Rashid", "--alias", "محمد الراشد",
                "--identifier", "crypto_wallet:TRX:TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj", "--nationality", "LY",
                "--to", "all", "--dry-run", "--key", str(KEYS / "IT" / "officer.key"),
                "--cert", str(KEYS / "IT" / "officer.cert"), "--trust", str(KEYS)], args.runs)
    print(f"intelhub CLI start-up, median of {args.runs} runs")
    print(f"  python -c pass (floor)                    {base * 1e3:6.0f} ms")
    print(f"  intelhub --help                           {help_t * 1e3:6.0f} ms")
    print(f"  intelhub alert publish --dry-run (to 6)   {dry * 1e3:6.0f} ms   (goal <= 500 ms)")


if __name__ == "__main__":
    main()
