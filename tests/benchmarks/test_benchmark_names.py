"""Benchmarks refuse a name they do not know, before measuring anything, in one line after
the usage: aggregate.py's ``--only`` (a KeyError traceback after the bandwidth measurement) and
scale.py's ``--modes`` (any other name ran the vectorized mode under that name, and the
headline came out empty)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "option", "value", "names", "small"),
    [
        ("aggregate.py", "--only", "mean,krum", "Krum", ["--dim", "1000"]),  # case-sensitive
        ("scale.py", "--modes", "vectorised", "vectorized", ["--clients", "10", "--repeats", "1"]),
    ],
)
def test_an_unknown_name_is_a_usage_error_naming_the_choices(
    tmp_path: Path, script: str, option: str, value: str, names: str, small: list[str]
) -> None:
    out = tmp_path / "result.json"
    script_path = ROOT / "benchmarks" / script
    cmd = [sys.executable, str(script_path), option, value, *small, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{option}: unknown" in last and repr(value.split(",")[-1]) in last and names in last
    assert not out.exists()


def test_aggregate_only_runs_the_named_rules(tmp_path: Path) -> None:
    out = tmp_path / "aggregate.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "aggregate.py"), "--dim", "1000",
           "--only", "mean,Krum", "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=tmp_path)
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"mean", "Krum"}
    assert res["headline"]["krum_vs_mean"] > 0
