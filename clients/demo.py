"""``make demo``: the intelhub demo (see README.md)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__)
    ap.add_argument("--offline", action="store_true", help="only the packet-format part, no hub")
    args = ap.parse_args(argv)
    from .demo_offline import run_offline

    print("intelhub demo - example federation in keys/example (EXAMPLE ONLY keys)")
    print("\n== 1. The packet format, offline ==")
    failures = run_offline()
    if failures:
        print(f"\n{failures} check(s) failed", file=sys.stderr)
        return 1
    if args.offline:
        return 0
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
