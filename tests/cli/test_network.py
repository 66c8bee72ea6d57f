"""``[network]`` and ``[compression] downlink``: simulated time and compressed broadcasts from a
config, plotted against simulated time, and their one-line mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, sets, shoal, write_config

from shoal.cli.build import build
from shoal.cli.registry import CATALOG
from shoal.compress import Identity, TopK
from shoal.config import load, resolve
from shoal.cost import cellular_4g
from shoal.report import read_metrics


def test_a_profile_resolves_to_its_own_values_and_builds_a_cost_model(tmp_path: Path) -> None:
    assert resolve({}, CATALOG).values["network"] == {"profile": "none"}
    cfg = resolve({"network": {"profile": "4g", "speed_sigma": 0.5}}, CATALOG)
    net = cfg.values["network"]
    assert (net["latency_ms"], net["uplink_mbit_s"], net["downlink_mbit_s"]) == (30.0, 5.0, 20.0)
    raw = load(write_config(tmp_path))
    exp = build(resolve(raw | {"network": {"profile": "4g", "uplink_mbit_s": 1}}, CATALOG))
    assert exp.network is not None
    assert exp.network.network.downlink == cellular_4g().downlink
    assert exp.network.network.uplink.bandwidth_Bps == 1e6 / 8
    assert isinstance(exp.downlink, Identity)
    assert build(resolve(raw, CATALOG)).network is None


def test_run_logs_simulated_time_plots_it_and_compresses_the_downlink(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path, rounds=2)
    assert shoal("run", cfg_path, "--out", "dense", "--quiet") == 0
    slow = ["network.profile=4g", "compression.downlink=top_k", "compression.downlink_ratio=0.1"]
    assert shoal("run", cfg_path, "--out", "slow", "--quiet", *sets(slow)) == 0
    dense, rows = read_metrics(tmp_path / "dense"), read_metrics(tmp_path / "slow")
    assert "sim_seconds" not in dense[0]
    assert rows[-1]["sim_seconds"] == pytest.approx(sum(r["round_sim_seconds"] for r in rows))
    # 5 of 20 clients per round: a client sampled twice in a row gets the sparse payload, the
    # rest the dense model, so round 2 costs at most what round 1 did.
    assert rows[1]["downlink_bytes"] <= dense[1]["downlink_bytes"]
    written = resolve(load(tmp_path / "slow" / "config.toml"), CATALOG)  # resumable as written
    assert written["compression.downlink_ratio"] == 0.1
    assert isinstance(build(written).downlink, TopK)
    assert shoal("plot", "dense", "slow", "--out", "pngs") == 0
    assert (tmp_path / "pngs" / "test_vs_sim_time.png").is_file()


ERRORS = [
    (["network.profile=5g"], ["network.profile", '"4g"', '"datacenter"']),
    (["network.profile=4g", "network.latency_ms=-1"], ["network.latency_ms", ">= 0"]),
    (["network.profile=wifi", "network.uplink_mbit_s=0"], ["network.uplink_mbit_s", "> 0"]),
    (["network.profile=4g", "network.speed_sigma=wide"], ["network.speed_sigma", "a number"]),
    (["network.profile=4g", "network.speed_sigma=200"], ["network.speed_sigma", "[0, 10]"]),
    (
        ["network.profile=4g", "network.straggler_probability=2"],
        ["network.straggler_probability", "[0, 1]"],
    ),
    (["network.profile=4g", "network.straggler_slowdown=0.5"], ["network.straggler_slowdown"]),
    (["network.latency_ms=5"], ["network.latency_ms", "profile"]),  # no profile: no such key
    (["compression.downlink=topk"], ["compression.downlink", '"top_k"']),
    (["compression.downlink_ratio=0.1"], ["compression.downlink_ratio"]),
    (
        ["compression.downlink=top_k", "compression.downlink_ratio=2"],
        ["compression.downlink_ratio", "(0, 1]"],
    ),
    (["compression.downlink=qsgd"], ["compression.downlink_levels", "required"]),
]


@pytest.mark.parametrize(("assignments", "words"), ERRORS)
def test_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, assignments: list[str], words: list[str]
) -> None:
    cfg_path = write_config(tmp_path)
    assert shoal("run", cfg_path, "--out", "r", "--quiet", *sets(assignments)) == 2
    assert_one_line_error(tmp_path, capsys.readouterr().err, words)
