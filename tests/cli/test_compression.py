"""The ``[compression]`` section: compressed uploads from a config, and its one-line mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, sets, shoal, write_config

from shoal.cli.build import build
from shoal.cli.registry import CATALOG, COMPRESSORS
from shoal.compress import Cast, ErrorFeedback, PowerSGD, TopK
from shoal.config import ConfigError, load, resolve
from shoal.report import read_metrics

REPO = Path(__file__).resolve().parents[2]
TOPK_EXAMPLE = REPO / "examples" / "topk_ef_mnist5k.toml"
TOPK_EF = ["compression.name=top_k", "compression.ratio=0.05", "compression.error_feedback=true"]


def test_default_is_identity() -> None:
    cfg = resolve({}, CATALOG)
    assert cfg.values["compression"] == {
        "name": "identity",
        "error_feedback": False,
        "downlink": "identity",
    }
    assert cfg.options("compression") == {}


def test_every_compressor_name_resolves_with_its_own_options() -> None:
    required = {"random_k": 0.1, "threshold": 0.01, "dgc_top_k": 0.01, "qsgd": 4}
    keys = {"random_k": "ratio", "threshold": "tau", "dgc_top_k": "ratio", "qsgd": "levels"}
    for name in COMPRESSORS:
        given: dict = {"name": name}
        if name in required:
            given[keys[name]] = required[name]
        if name == "count_sketch":
            given["width"] = 100
        cfg = resolve({"compression": given}, CATALOG)
        assert cfg["compression.name"] == name
    opts = resolve({"compression": {"name": "powersgd", "rank": 2}}, CATALOG).options("compression")
    assert opts == {  # no shapes: the model's
        "rank": 2,
        "min_compression_rate": 2.0,
        "power_iterations": 1,
        "warm_start": True,
    }


def test_top_k_with_error_feedback_sends_fewer_bytes(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path, rounds=2)
    assert shoal("run", cfg_path, "--out", "dense", "--quiet") == 0
    assert shoal("run", cfg_path, "--out", "topk", "--quiet", *sets(TOPK_EF)) == 0
    dense, topk = read_metrics(tmp_path / "dense"), read_metrics(tmp_path / "topk")
    for d, t in zip(dense, topk, strict=True):
        assert 0 < t["uplink_bytes"] < d["uplink_bytes"] / 5, (t, d)
    assert topk[-1]["cum_uplink_bytes"] == sum(r["uplink_bytes"] for r in topk)
    written = resolve(load(tmp_path / "topk" / "config.toml"), CATALOG)  # resumable as written
    expected = {"name": "top_k", "error_feedback": True, "downlink": "identity", "ratio": 0.05}
    assert written.values["compression"] == expected


def test_build_wraps_and_fills_in_the_model_shapes(tmp_path: Path) -> None:
    raw = load(write_config(tmp_path))
    exp = build(resolve(raw | {"compression": {"name": "top_k", "ratio": 0.1}}, CATALOG))
    assert isinstance(exp.compressor, TopK) and exp.compressor.ratio == 0.1
    ef_fp16 = {"name": "fp16", "error_feedback": True}
    exp = build(resolve(raw | {"compression": ef_fp16}, CATALOG))
    assert isinstance(exp.compressor, ErrorFeedback) and isinstance(exp.compressor.inner, Cast)
    ef_psgd = {"name": "powersgd", "rank": 2, "error_feedback": True}
    exp = build(resolve(raw | {"compression": ef_psgd}, CATALOG))
    assert isinstance(exp.compressor, ErrorFeedback)
    inner = exp.compressor.inner
    assert isinstance(inner, PowerSGD) and inner.rank == 2
    assert inner.shapes == tuple(p.shape for p in exp.model.parameters())


def test_stochastic_compressors_follow_the_run_seed_unless_pinned(tmp_path: Path) -> None:
    # A factory default (seed 0) would give runs of different seeds the same rounding, masks
    # and PowerSGD queries: only the run's seed varied what a seed study varies.
    raw = load(write_config(tmp_path))
    qsgd = {"name": "qsgd", "levels": 4, "downlink": "random_k", "downlink_ratio": 0.1}

    def seeds(top: dict, compression: dict) -> tuple[int, int]:
        exp = build(resolve(raw | top | {"compression": compression}, CATALOG))
        return exp.compressor.seed, exp.downlink.seed

    assert seeds({"seed": 3}, qsgd) == (3, 3)
    assert seeds({"seed": 4}, qsgd) == (4, 4)
    pinned = qsgd | {"seed": 11, "downlink_seed": 12}
    assert seeds({"seed": 4}, pinned) == (11, 12)
    written = resolve(raw | {"compression": pinned}, CATALOG).options("compression")
    assert written["seed"] == 11


def test_powersgd_run_counts_its_payloads(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path, rounds=1)
    psgd = ["compression.name=powersgd", "compression.rank=1"]
    assert shoal("run", cfg_path, "--out", "dense", "--quiet") == 0
    assert shoal("run", cfg_path, "--out", "psgd", "--quiet", *sets(psgd)) == 0
    dense, psgd_rows = read_metrics(tmp_path / "dense"), read_metrics(tmp_path / "psgd")
    assert psgd_rows[0]["uplink_bytes"] < dense[0]["uplink_bytes"]


ERRORS = [
    (["compression.name=topk"], ["compression.name", '"top_k"', '"powersgd"']),
    (["compression.name=top_k", "compression.ratio=1.5"], ["compression.ratio", "(0, 1]"]),
    (["compression.name=random_k", "compression.ratio=0"], ["compression.ratio", "(0, 1]"]),
    (["compression.name=top_k", "compression.ratio=high"], ["compression.ratio", "a number"]),
    (["compression.name=qsgd"], ["compression.levels", "required"]),
    (["compression.name=qsgd", "compression.levels=0"], ["compression.levels", ">= 1"]),
    (["compression.name=fp16", "compression.ratio=0.1"], ["compression.ratio", "name"]),
    (["compression.name=powersgd", "compression.shapes=[[2, 2]]"], ["compression.shapes"]),
    (["compression.error_feedback=1"], ["compression.error_feedback", "true or false"]),
    # Accepted before, and sync_sgd then left its bucketed all-reduce for the compressed path.
    (["compression.error_feedback=true"], ["compression.error_feedback", "nothing to feed back"]),
    # Capped to the model's size: every value with its index, more bytes than dense (silently).
    (["compression.name=top_k", "compression.k=100000"], ["compression.k = 100000", "more"]),
    (["compression.downlink=top_k", "compression.downlink_k=100000"], ["downlink_k = 100000"]),
    # It named the uplink's compressor ("for compression "identity"").
    (
        [
            "compression.downlink=top_k",
            "compression.downlink_ratio=0.1",
            "compression.downlink_x=1",
        ],
        ["'compression.downlink_x' for compression.downlink = \"top_k\""],
    ),
    # top_k's own message named Python arguments ("give exactly one of ratio= or k=").
    (
        ["compression.name=top_k", "compression.ratio=0.1", "compression.k=5"],
        ["compression.ratio and compression.k, got 2", "--unset one of"],
    ),
    (["compression.downlink=top_k"], ["compression.downlink_ratio and compression.downlink_k"]),
]


@pytest.mark.parametrize(("assignments", "words"), ERRORS)
def test_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, assignments: list[str], words: list[str]
) -> None:
    cfg_path = write_config(tmp_path)
    assert shoal("run", cfg_path, "--out", "r", "--quiet", *sets(assignments)) == 2
    assert_one_line_error(tmp_path, capsys.readouterr().err, words)


def test_unknown_name_is_a_config_error_before_any_work() -> None:
    with pytest.raises(ConfigError, match="compression.name") as info:
        resolve({"compression": {"name": "sign"}}, CATALOG)
    assert "\n" not in str(info.value)


def test_topk_example_resolves_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    raw = load(TOPK_EXAMPLE)
    cfg = resolve(raw | {"data": {**raw["data"], "dir": ""}}, CATALOG)  # data.dir: cwd-relative
    expected = {"name": "top_k", "error_feedback": True, "downlink": "identity", "ratio": 0.01}
    assert cfg.values["compression"] == expected
    if not (REPO / raw["data"]["dir"]).is_dir():
        pytest.skip("the shared MNIST subset is not next to this checkout")
    monkeypatch.chdir(REPO)  # data.dir is relative to the current directory
    small = sets(["partition.num_clients=20", "num_threads=1", "rounds=1"])
    assert shoal("run", TOPK_EXAMPLE, *small, "--out", tmp_path / "run", "--quiet") == 0
    assert "error_feedback(top_k(ratio=0.01))" in capsys.readouterr().out
