"""Fuzz every decoder for a set time; report executions, outcomes and findings.

Runs the targets of tests/test_fuzz.py -- the same strategies (real packets, certificates,
notes, key files and configurations, structurally mutated, plus random input) and the same
contract checks as ``make test`` -- with random seeds and a budget in seconds instead of
examples. A *finding* is an exception a decoder's contract does not allow, a hang (over one
second of CPU for one input) or a broken invariant (a changed packet that verifies, a decoded
value that re-encodes differently, ...). For each distinct finding (exception type and the
project line that raised it) the first few inputs are kept in ``bench/.cache/fuzz-findings/``:

    <target>-<n>.bin        the input (packet, frame, note, TOML text, ...)
    <target>-<n>.txt        the traceback and the whole case
    <target>-<n>.case.json  the case in the form tests/fuzz_corpus/<target>/ replays

Engines: ``hypothesis`` (default) draws cases in-process; ``atheris`` (if installed) drives
the same strategies from libFuzzer with coverage feedback, one process per target.

Run: .venv/bin/python bench/fuzz.py [--seconds 60] [--target NAME ...] [--engine hypothesis|atheris]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FINDINGS_DIR: Final = ROOT / "bench" / ".cache" / "fuzz-findings"
#: A call still running after this many seconds is interrupted and recorded as a hang.
WATCHDOG_SECONDS: Final[float] = 10.0
#: Hypothesis runs in chunks of this many examples, each with a fresh seed (bounds its memory).
CHUNK: Final[int] = 5000
#: Inputs kept per distinct finding.
KEEP: Final[int] = 3
#: Cheap random variants checked after each drawn case (drawing one costs milliseconds).
HAVOC: Final[int] = 16
_PROJECT: Final = (str(ROOT / "hub"), str(ROOT / "clients"))


class TimeUp(BaseException):
    """The target's time is over (a BaseException, so hypothesis lets it through)."""


class Hang(Exception):
    """Raised by the watchdog in a call that did not return."""


def _watchdog(signum: int, frame: FrameType | None) -> None:
    raise Hang(f"no answer after {WATCHDOG_SECONDS:.0f} s")


@dataclass
class Stats:
    target: str
    seconds: float = 0.0
    execs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    #: signature -> [occurrences, first message, files kept]
    findings: dict[str, list[Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "seconds": self.seconds, "execs": self.execs,
                "outcomes": dict(self.outcomes), "findings": self.findings}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stats:
        return cls(d["target"], d["seconds"], d["execs"], Counter(d["outcomes"]), d["findings"])


def signature(exc: BaseException) -> str:
    """What makes two findings the same bug: the root exception's type and the project line
    that raised it (for a broken invariant, the check that noticed it)."""
    root = exc.__cause__ or exc
    frames = [f for f in traceback.extract_tb(root.__traceback__) if f.name not in ("_require", "_call")]
    own = [f for f in frames if f.filename.startswith(_PROJECT)] or frames
    where = f"{os.path.relpath(own[-1].filename, ROOT)}:{own[-1].lineno}" if own else "?"
    kind = getattr(exc, "kind", None)
    if kind == "hang":
        return f"hang (over 1 s of CPU) at {where}"
    if kind == "invariant":
        return f"broken invariant at {where}"  # one check per line
    return f"{type(root).__name__} at {where}"


class Havoc:
    """Random edits of a drawn case, as AFL's havoc stage: byte or character flips, inserted
    dictionary tokens, deleted and duplicated runs; for a configuration document, a leaf
    swapped for an edge value. Each costs microseconds, where drawing a case costs milliseconds."""

    def __init__(self, fuzz: ModuleType, rng: random.Random) -> None:
        self.fuzz, self.rng = fuzz, rng
        self.byte_tokens = list(fuzz.MSGPACK_TOKENS) + [t.encode("utf-8", "surrogatepass") for t in fuzz.TEXT_TOKENS]
        self.text_tokens = list(fuzz.TEXT_TOKENS)
        self.leaf_values = [*fuzz.STRING_TOKENS, *fuzz.EDGE_INTS[:-4], *fuzz.EDGE_FLOATS, True, "", [], {}]

    def variant(self, case: Any) -> Any:
        if isinstance(case, tuple):
            return (self.variant(case[0]), *case[1:])
        if isinstance(case, bytes):
            return self._edit(bytearray(case), self.byte_tokens, lambda: bytes([self.rng.randrange(256)]), bytes)
        if isinstance(case, str):
            return self._edit(list(case), self.text_tokens, lambda: chr(self.rng.choice((10, 32, 48, 65, 0x2014,
                                                                                        self.rng.randrange(0x3000)))),
                              "".join)
        if isinstance(case, dict):
            return self._leaf(case)
        return case

    def _edit(self, buf: Any, tokens: list[Any], unit: Any, join: Any) -> Any:
        r = self.rng
        for _ in range(r.randint(1, 4)):
            i = r.randint(0, len(buf))
            op = r.randrange(6)
            if op == 0 and buf:
                buf[min(i, len(buf) - 1)] = unit()[0] if isinstance(buf, bytearray) else unit()
            elif op == 1:
                buf[i:i] = tokens[r.randrange(len(tokens))]
            elif op == 2:
                del buf[i : i + r.randint(1, 16)]
            elif op == 3:
                buf[i:i] = buf[i : i + r.randint(1, 16)]
            elif op == 4:
                del buf[i:]
            else:
                j = r.randint(0, len(buf))
                buf[i:i], = [buf[j : j + r.randint(1, 8)]] if buf else [[]]
        return join(buf)

    def _leaf(self, doc: dict[str, Any]) -> Any:
        """``doc`` with one leaf replaced."""
        def walk(node: Any) -> Any:
            if isinstance(node, dict) and node:
                key = self.rng.choice(list(node))
                return {**node, key: walk(node[key])}
            if isinstance(node, list) and node:
                i = self.rng.randrange(len(node))
                return node[:i] + [walk(node[i])] + node[i + 1 :]
            value = self.rng.choice(self.leaf_values)
            if isinstance(node, str) and isinstance(value, str) and self.rng.random() < 0.5:
                i = self.rng.randint(0, len(node))
                return node[:i] + value + node[i:]
            return value
        return walk(doc) if doc else doc


class Runner:
    """Runs cases of one target, counting outcomes and keeping the inputs of findings."""

    def __init__(self, fuzz: ModuleType, name: str, corpus: Any, havoc: int = HAVOC, seed: int | None = None) -> None:
        self.fuzz, self.target, self.corpus = fuzz, fuzz.TARGETS[name], corpus
        self.stats = Stats(name)
        self.deadline = float("inf")
        self.havoc, self.mutator = havoc, Havoc(fuzz, random.Random(seed))

    def run(self, case: Any) -> None:
        """Check the drawn case, then :attr:`havoc` random variants of it."""
        self.run_one(case)
        normalise = self.target.normalise or (lambda x: x)
        for _ in range(self.havoc):
            variant = normalise(self.mutator.variant(case))
            if variant is not None:
                self.run_one(variant)

    def run_one(self, case: Any) -> None:
        if time.monotonic() >= self.deadline:
            raise TimeUp
        self.stats.execs += 1
        signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
        try:
            self.stats.outcomes[self.target.check(self.corpus, case)] += 1
        except Exception as exc:  # noqa: BLE001 - every exception here is a finding to record
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.record(case, exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def record(self, case: Any, exc: Exception) -> None:
        sig = signature(exc)
        self.stats.outcomes["finding"] += 1
        entry = self.stats.findings.setdefault(sig, [0, f"{type(exc).__name__}: {str(exc)[:300]}", []])
        entry[0] += 1
        if len(entry[2]) >= KEEP:
            return
        FINDINGS_DIR.mkdir(parents=True, exist_ok=True)
        n = 1 + max([int(p.stem.rsplit("-", 1)[1]) for p in FINDINGS_DIR.glob(f"{self.stats.target}-*.bin")],
                    default=0)
        base = FINDINGS_DIR / f"{self.stats.target}-{n}"
        base.with_suffix(".bin").write_bytes(self.fuzz.input_bytes(case))
        tb = "".join(traceback.format_exception(exc))
        base.with_suffix(".txt").write_text(f"target: {self.stats.target} ({self.target.decoder})\nfinding: {sig}\n\n"
                                            f"{tb}\ncase:\n{case!r}\n", "utf-8", errors="backslashreplace")
        case_doc = {"target": self.stats.target, "finding": sig, "case": self.fuzz.dump_case(case)}
        Path(f"{base}.case.json").write_text(json.dumps(case_doc, indent=1) + "\n", "utf-8", errors="backslashreplace")
        entry[2].append(base.with_suffix(".bin").name)


def load(instrument: bool = False) -> tuple[ModuleType, Any]:
    """Import the targets and build the corpus (a seeded federation, files in a temporary
    directory that the caller removes: ``corpus.workdir``)."""
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["hub", "clients"]):
            import tests.test_fuzz as fuzz
    else:
        import tests.test_fuzz as fuzz
    workdir = Path(tempfile.mkdtemp(prefix="intelhub-fuzz-"))
    return fuzz, fuzz.build_corpus(fuzz.make_federation(), workdir)


def fuzz_hypothesis(runner: Runner, seconds: float, rng: random.Random) -> None:
    from hypothesis import HealthCheck, Phase, given, seed, settings

    strategy = runner.target.strategy(runner.corpus)
    start = time.monotonic()
    runner.deadline = start + seconds
    try:
        while time.monotonic() < runner.deadline:
            test = given(strategy)(runner.run)
            test = settings(max_examples=CHUNK, deadline=None, database=None, phases=[Phase.generate],
                            suppress_health_check=list(HealthCheck))(test)
            seed(rng.getrandbits(64))(test)()
    except TimeUp:
        pass
    runner.stats.seconds = time.monotonic() - start


def atheris_child(name: str, seconds: float, stats_path: Path, havoc: int) -> None:
    """Run one target under libFuzzer; write the stats when time is up (libFuzzer never returns)."""
    import atheris
    from hypothesis import HealthCheck, given, settings

    fuzz, corpus = load(instrument=True)
    runner = Runner(fuzz, name, corpus, havoc)
    start = time.monotonic()
    runner.deadline = start + seconds

    def done() -> None:
        runner.stats.seconds = time.monotonic() - start
        stats_path.write_text(json.dumps(runner.stats.to_json()))
        shutil.rmtree(corpus.workdir, ignore_errors=True)

    def body(case: Any) -> None:
        try:
            runner.run(case)
        except TimeUp:
            done()
            os._exit(0)

    test = settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))(
        given(runner.target.strategy(corpus))(body))
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds) + 30}", "-timeout=20", "-rss_limit_mb=4096",
                   "-print_final_stats=0"], test.hypothesis.fuzz_one_input)
    atheris.Fuzz()


def fuzz_atheris(name: str, seconds: float, havoc: int) -> Stats:
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.json"
        cmd = [sys.executable, __file__, "--engine", "atheris", "--child", name, "--seconds", str(seconds),
               "--stats-file", str(stats_path), "--havoc", str(havoc)]
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 120)
        if not stats_path.exists():
            return Stats(name, seconds, 0, Counter(), {f"{name} fuzzer process died": [1, "no stats written", []]})
        return Stats.from_json(json.loads(stats_path.read_text()))


def report(stats: list[Stats], engine: str) -> None:
    print(f"\nintelhub fuzzing ({engine}): {sum(s.execs for s in stats)} executions in "
          f"{sum(s.seconds for s in stats):.0f} s\n")
    print(f"{'target':<16} {'executions':>10} {'execs/s':>9} {'findings':>8}  outcomes")
    for s in stats:
        rate = s.execs / s.seconds if s.seconds else 0.0
        total = sum(s.outcomes.values()) or 1
        shown = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in s.outcomes.most_common(4))
        print(f"{s.target:<16} {s.execs:>10} {rate:>9.0f} {len(s.findings):>8}  {shown}")
    found = [(s.target, sig, entry) for s in stats for sig, entry in s.findings.items()]
    if not found:
        print("\nno findings")
        return
    print(f"\n{len(found)} distinct findings (inputs in {os.path.relpath(FINDINGS_DIR, ROOT)}/):")
    for name, sig, (count, message, files) in found:
        print(f"  {name}: {sig}  x{count}  {', '.join(files)}\n      {message[:160]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="total time, split evenly across the targets")
    ap.add_argument("--target", action="append", help="fuzz only this target (repeatable); see --list")
    ap.add_argument("--engine", choices=("hypothesis", "atheris"), default="hypothesis")
    ap.add_argument("--seed", type=int, help="seed the run (default: random)")
    ap.add_argument("--havoc", type=int, default=HAVOC, help="random variants checked per drawn case (default %(default)s)")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--stats-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _watchdog)
    if args.child:
        atheris_child(args.child, args.seconds, args.stats_file, args.havoc)
        return
    if args.engine == "atheris" and importlib.util.find_spec("atheris") is None:
        ap.error("atheris is not installed (.venv/bin/pip install atheris), use --engine hypothesis")
    fuzz, corpus = load()
    try:
        run(args, fuzz, corpus)
    finally:
        shutil.rmtree(corpus.workdir, ignore_errors=True)


def run(args: argparse.Namespace, fuzz: ModuleType, corpus: Any) -> None:
    names = args.target or list(fuzz.TARGETS)
    if args.list:
        for name in fuzz.TARGETS.values():
            print(f"{name.name:<16} {name.decoder}")
        return
    unknown = sorted(set(names) - set(fuzz.TARGETS))
    if unknown:
        sys.exit(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(fuzz.TARGETS)}")
    rng = random.Random(args.seed)
    each = args.seconds / len(names)
    print(f"fuzzing {len(names)} target(s), {each:.1f} s each, engine {args.engine}, seed {args.seed}")
    results = []
    for name in names:
        if args.engine == "atheris":
            stats = fuzz_atheris(name, each, args.havoc)
        else:
            runner = Runner(fuzz, name, corpus, args.havoc, rng.getrandbits(64))
            fuzz_hypothesis(runner, each, rng)
            stats = runner.stats
        print(f"  {name}: {stats.execs} executions, {len(stats.findings)} findings", flush=True)
        results.append(stats)
    report(results, args.engine)


if __name__ == "__main__":
    main()
