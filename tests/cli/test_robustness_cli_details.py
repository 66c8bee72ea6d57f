"""``shoal robustness`` hands the grid what its options say: the grid itself is replaced by a
stand-in that records its arguments, so every option is checked without training. Expected
values come from the help text (``--quick``: 2 attacks x 3 aggregators, 5 rounds) and the
styles' documented settings (centered clipping's radius 0.25 for FedAvg, 1.0 data-parallel)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import shoal

import shoal.cli.robustness as cli_robustness


class _Stop(Exception):
    """Raised by the stand-in grid once it has recorded its arguments."""


@pytest.fixture
def grid(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {}

    def run_grid(work: Any, style: Any, rounds: int, attacks: Any, aggs: Any, **kw: Any) -> None:
        seen.update(style=style.name, rounds=rounds, attacks=attacks, aggs=aggs, **kw)
        seen["threads"] = torch.get_num_threads()
        raise _Stop

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # so that --threads 3 shows whether the command set it
    monkeypatch.setattr(cli_robustness, "load_workload", lambda data, data_dir: data)
    monkeypatch.setattr(cli_robustness, "run_grid", run_grid)
    yield seen
    torch.set_num_threads(before)


def _run(*args: str) -> None:
    with pytest.raises(_Stop):
        shoal("robustness", "--data", "digits", *args)


def test_quick_is_two_attacks_three_aggregators_five_rounds(grid: dict[str, Any]) -> None:
    _run("--quick")
    assert list(grid["attacks"]) == ["sign_flip", "alie"]
    assert list(grid["aggs"]) == ["mean", "trimmed_mean", "cclip"]
    assert grid["rounds"] == 5 and grid["progress"] is True


def test_quick_keeps_the_rows_and_columns_asked_for(grid: dict[str, Any]) -> None:
    _run("--quick", "--attacks", "ipm", "--aggregators", "median,krum", "--rounds", "2")
    assert list(grid["attacks"]) == ["ipm"]
    assert list(grid["aggs"]) == ["median", "krum"]
    assert grid["rounds"] == 2


def test_default_columns_are_the_styles_grid(grid: dict[str, Any]) -> None:
    _run("--attacks", "ipm")
    assert list(grid["aggs"]) == [
        "mean", "median", "trimmed_mean", "multi_krum", "geometric_median", "cclip",
        "bucketing_tm", "nnm_tm",
    ]  # fmt: skip
    assert grid["style"] == "data_parallel" and grid["rounds"] == 40


@pytest.mark.parametrize(("style", "tau"), [("fedavg", 0.25), ("data_parallel", 1.0)])
def test_centered_clipping_gets_the_styles_radius(
    grid: dict[str, Any], style: str, tau: float
) -> None:
    _run("--style", style, "--aggregators", "cclip")
    assert grid["aggs"]["cclip"].make().agg.tau == tau
    assert f"tau={tau}" in grid["aggs"]["cclip"].setting


def test_names_split_on_commas_and_drop_empty_ones(grid: dict[str, Any]) -> None:
    _run("--attacks", "sign_flip,", ",alie", "clean", "--aggregators", "mean,,median")
    # clean may be named: it is the grid's first row anyway (run_grid adds it).
    assert [a for a in grid["attacks"] if a != "clean"] == ["sign_flip", "alie"]
    assert list(grid["aggs"]) == ["mean", "median"]


def test_threads_quiet_and_the_command_as_retyped(grid: dict[str, Any]) -> None:
    _run("--style", "fedavg", "--attacks", "sign_flip,alie", "--rounds", "7", "--quick",
         "--threads", "3", "--quiet")  # fmt: skip
    assert grid["threads"] == 3 and grid["progress"] is False
    assert grid["command"] == (
        "shoal robustness --style fedavg --attacks sign_flip alie --rounds 7 --data digits --quick"
    )


def test_the_command_leaves_out_defaults_and_folders(grid: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    with pytest.raises(_Stop):
        shoal("robustness", "--data-dir", tmp_path / "idx", "--aggregators", "mean")
    assert grid["command"] == "shoal robustness --style data_parallel --aggregators mean"


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (["--attacks", ""], "attack"),  # ran the clean row alone
        (["--aggregators", ","], "aggregator"),  # ran the style's 8 columns
        (["--quick", "--aggregators", ""], "aggregator"),  # ran the quick columns
    ],
)
def test_an_option_naming_nothing_is_refused_not_read_as_the_default(
    grid: dict[str, Any], capsys: pytest.CaptureFixture[str], args: list[str], kind: str
) -> None:
    """``--aggregators "$UNSET"`` names no column: one line listing the names, no grid."""
    assert shoal("robustness", "--data", "digits", *args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"no {kind} named; choose from: " in err
    assert not grid  # the grid never ran


@pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="needs /proc, where no folder can be made"
)
def test_an_out_folder_that_cannot_be_made_is_refused_before_the_grid(
    grid: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # It trained every cell, then failed to write the results (exit 1, nothing kept).
    assert shoal("robustness", "--data", "digits", "--out", "/proc/shoal-grid") == 2
    assert "--out /proc/shoal-grid: cannot make the folder" in capsys.readouterr().err
    assert not grid  # the grid never ran
