"""Smoke tests of benchmarks/shaped_network.py on loopback (no namespaces, no root needed).

Two workers train the MLP for a few steps, every configuration of a phase in one set of
processes (``--one-launch``), so that the driver, the worker and the JSON stay in working
order. The real measurement needs root and network namespaces (see the script's docstring).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "shaped_network.py"
DATA = ROOT.parent / "shared" / "data" / "mnist5k"
HEADLINE = {
    "best_speedup_vs_ddp_100mbit",
    "best_config_100mbit",
    "dense_vs_ddp_time_ratio",
    "dense_overlap_vs_ddp_time_ratio",
    "dense_overlap_vs_ddp_time_ratio_1gbit",
    "dgc_vs_ddp_time_ratio",
    "dgc_vs_ddp_time_ratio_1gbit",
}


def _shoal_parallel() -> bool:
    try:
        from shoal.parallel import train_parallel  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(
        not (DATA / "train-images-idx3-ubyte.gz").exists(), reason="mnist5k is not available"
    ),
    pytest.mark.skipif(
        not _shoal_parallel(), reason="shoal.parallel (train_parallel) is not available"
    ),
]


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, str(SCRIPT), "--no-netns", "--one-launch", "--workers", "2",
        "--model", "mlp", "--data-dir", str(DATA), "--json", str(out), *args,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=180, cwd=tmp_path)
    text = out.read_text()
    assert str(ROOT) not in text and str(DATA) not in text  # no machine paths
    return json.loads(text)


def test_every_configuration_trains(tmp_path: Path) -> None:
    res = _run(tmp_path, "--max-steps", "6", "--eval-every", "3", "--target", "0.3")
    assert set(res["headline"]) == HEADLINE
    assert {r["config"] for r in res["runs"]} == {
        "ddp", "dense", "dense_overlap", "topk_ef", "powersgd", "dpsgd_ring", "sgp",
        "local_sgd", "local_sgd_topk", "local_sgd_powersgd",
    }  # fmt: skip
    for run in res["runs"]:
        assert "error" not in run, run
        assert run["train_seconds"] > 0 and run["curve"], run["config"]
        assert run["steps"] in (3, 6)
        if run["config"] != "ddp":
            assert run["compute_seconds_per_worker"][0] > 0
            # local SGD (H=8) has not communicated yet after 6 steps
            local = run["config"].startswith("local_sgd")
            assert run["payload_bytes_per_worker"] > 0 or local
    # Same initial weights and minibatches: DDP and dense Shoal SGD see the same accuracy.
    by = {r["config"]: r for r in res["runs"]}
    for dense in ("dense", "dense_overlap"):
        assert by["ddp"]["curve"][0]["accuracy"] == pytest.approx(
            by[dense]["curve"][0]["accuracy"], abs=0.01
        )
    assert res["summary"]["none"]["ddp"]["speedup_vs_ddp"] in (None, 1.0)


def test_dgc_reports_its_steps_after_the_warm_up(tmp_path: Path) -> None:
    # Batches of 1,000 of a worker's 2,000 images: 2-step epochs, so a 4-epoch warm-up of 8.
    res = _run(
        tmp_path, "--configs", "dgc", "--max-steps", "12", "--eval-every", "2",
        "--batch-size", "1000", "--target", "0.99",
    )  # fmt: skip
    (run,) = res["runs"]
    assert "error" not in run, run
    assert run["warmup_steps"] == 8 and run["steps"] == 12
    after = res["summary"]["none"]["dgc"]["seconds_per_step_after_warmup"]
    curve = {p["step"]: p["train_seconds"] for p in run["curve"]}
    assert after == pytest.approx((curve[12] - curve[8]) / 4)


@pytest.mark.slow
def test_straggler_throughput(tmp_path: Path) -> None:
    res = _run(
        tmp_path, "--configs", "none", "--straggler", "--straggler-steps", "4",
        "--straggler-configs", "ddp,dense,easgd",
    )  # fmt: skip
    rows = res["straggler"]["configs"]
    assert set(rows) == {"ddp", "dense", "easgd"}
    for r in rows.values():
        for label in ("no_straggler", "straggler"):
            assert "error" not in r[label], r[label]
            assert r[label]["samples_per_second"] > 0
    assert rows["easgd"]["straggler"]["steps_per_worker"] == [4, 4]
