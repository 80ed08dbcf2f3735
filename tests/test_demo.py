"""The main job runs in CI: `make demo`'s scenario, start to finish, with real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_scenario_and_cleans_up(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "clients.demo", "--dir", str(tmp_path / "demo")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6.", "== 7.", "== 8.", "== Summary =="):
        assert step in out
    assert "cannot open it" in out and "bit flipped fails" in out          # offline: non-recipient, tampering
    assert "Mohammed Al-Rashid" in out and "transliterated from Arabic" in out  # search across scripts
    assert "lifted" in out and "processed" in out                           # the freeze amendment, receipts
    assert out.count(", 0 missing") == 7 and "FAILED" not in out            # audit + completeness, every nation
    assert out.rstrip().endswith("all checks passed")
    # Every process it started is gone.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "demo") not in ps
