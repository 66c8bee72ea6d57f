"""benchmarks/_measure.py times a run to its exit, not to the next memory sample: the wall
times of vs_flower.py came in steps of the 0.5 s sampling period (Shoal's W-MLP runs all
measured 2.03 s), so a 2 s run could be charged up to 0.5 s it never ran."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _measure  # noqa: E402


def test_the_wall_time_ends_at_the_exit_not_at_the_next_sample(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(0.2)"]
    m = _measure.run(cmd, env=dict(os.environ), log=tmp_path / "log", timeout=30, interval=2.0)
    assert m.returncode == 0
    assert 0.2 <= m.wall_s < 1.5  # was 2.0 s or more: the first sample's sleep
    assert m.maxrss_mib > 0 and m.max_processes >= 1


def test_a_run_past_its_timeout_is_killed_and_reported_as_such(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(30)"]
    m = _measure.run(cmd, env=dict(os.environ), log=tmp_path / "log", timeout=0.5, interval=0.2)
    assert m.returncode is None and 0.5 <= m.wall_s < 5
