"""benchmarks/scale.py pairs the looped and vectorized runs of one repeat only: a repeat whose
vectorized run failed was paired with the previous repeat's vectorized run, so that run's
ratio counted twice and the paired runs were no longer adjacent in time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # noqa: E402


def test_a_failed_run_pairs_with_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_worker(args: object, k: int, mode: str) -> dict | str:
        calls.append(mode)
        repeat = calls.count(mode)
        if mode == "vectorized" and repeat == 2:
            return "RuntimeError: out of memory"
        steady = {"looped": 3.0, "vectorized": 1.0 if repeat == 1 else 2.0}[mode]
        return {
            "steady_round_seconds": steady,
            "peak_rss_mb": 100.0,
            "samples_per_round": 400.0,
            "final_accuracy": 0.5,
        }

    monkeypatch.setattr(scale, "run_worker", fake_worker)
    monkeypatch.setattr(scale, "matmul_gflops", lambda threads, device: 100.0)
    out = tmp_path / "scale.json"
    argv = ["scale.py", "--clients", "10", "--repeats", "3", "--device", "cpu", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    scale.main()
    res = json.loads(out.read_text())
    assert res["vectorized_vs_looped_per_repeat"]["10"] == [3.0, 1.5]  # repeats 1 and 3
    assert len(res["results"]["10"]["vectorized"]["repeats"]) == 2


def test_every_run_failed_exits_nonzero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a null headline was written and the script ended 0, as a finished measurement."""
    monkeypatch.setattr(scale, "run_worker", lambda args, k, mode: "RuntimeError: out of memory")
    monkeypatch.setattr(scale, "matmul_gflops", lambda threads, device: 100.0)
    out = tmp_path / "scale.json"
    argv = ["scale.py", "--clients", "10", "--repeats", "1", "--device", "cpu", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        scale.main()
    assert "every run failed" in str(e.value.code)
    assert not out.exists()
