"""``make demo``: the intelhub demo (see README.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__)
    ap.add_argument("--offline", action="store_true", help="only the packet-format part, no hub")
    ap.add_argument("--keep-running", action="store_true",
                    help="leave the hub and the seven nodes running for manual use (Ctrl-C stops them)")
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[1] / "run" / "demo",
                    help="where the demo writes configs, stores and logs (default run/demo)")
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
    from .demo_network import run_network

    failures = run_network(args.dir, keep_running=args.keep_running)
    if failures:
        print(f"\n{failures} check(s) failed", file=sys.stderr)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
