"""``shoal robustness``: a tiny grid on sklearn digits writes the table, heat map and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import shoal


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the command sets its own (--threads, default 1)


def test_tiny_grid_writes_table_heatmap_and_json(tmp_path: Path, capsys):
    out = tmp_path / "grid"
    code = shoal(
        "robustness",
        "--data", "digits",
        "--attacks", "sign_flip", "gaussian",
        "--aggregators", "mean,trimmed_mean",
        "--rounds", "3",
        "--out", out,
        "--quiet",
    )  # fmt: skip
    assert code == 0
    for name in ("robustness.json", "robustness.md", "robustness.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "robustness.md").read_text()
    assert "| attack | mean | trimmed mean |" in table
    assert "| clean |" in table and "| sign flip |" in table and "| gaussian |" in table
    report = json.loads((out / "robustness.json").read_text())
    grid = report["headline"]["grid"]
    assert list(grid) == ["clean", "sign flip", "gaussian"]
    assert all(list(row) == ["mean", "trimmed mean"] for row in grid.values())
    assert report["headline"]["clean_accuracy"] == grid["clean"]["mean"]
    assert 0 <= report["headline"]["clean_accuracy"] <= 1
    assert report["setup"]["style"] == "data_parallel" and report["setup"]["rounds"] == 3
    assert report["command"].startswith("shoal robustness --style data_parallel")
    assert "| clean |" in capsys.readouterr().out  # the table is printed too


@pytest.mark.parametrize(
    ("flag", "name", "listed"),
    [("--attacks", "signflip", "sign_flip"), ("--aggregators", "krumm", "multi_krum")],
)
def test_unknown_names_fail_in_one_line_listing_what_exists(capsys, flag, name, listed):
    assert shoal("robustness", "--data", "digits", flag, name) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown" in err and repr(name) in err and listed in err


def test_missing_mnist_files_say_what_to_do(capsys):
    assert shoal("robustness") == 2  # SHOAL_DATA is an empty folder in these tests
    err = capsys.readouterr().err
    assert "--data-dir" in err and "--data digits" in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--data", "digits", "--rounds", "0"], "--rounds and --threads must be >= 1"),
        (["--data", "digits", "--data-dir", "."], "--data-dir is for --data mnist"),
        (["--data-dir", "no/such/folder"], "no such folder"),
    ],
)
def test_options_are_not_ignored(capsys, args, says):
    """--rounds 0 used to run the default rounds, and --data-dir was dropped with digits."""
    assert shoal("robustness", *args) == 2
    assert says in capsys.readouterr().err


def test_a_grid_without_the_mean_still_has_its_clean_reference(tmp_path: Path, capsys):
    # The clean mean is what "where defenses fail" compares with; without a mean column the
    # report said "Clean accuracy of the plain mean: diverged%" and listed no failure.
    out = tmp_path / "grid"
    code = shoal(
        "robustness", "--data", "digits", "--attacks", "sign_flip",
        "--aggregators", "median", "--rounds", "2", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "robustness.json").read_text())
    assert 0 < report["headline"]["clean_accuracy"] <= 1
    assert list(report["headline"]["grid"]["clean"]) == ["median"]  # no mean column added
    table = (out / "robustness.md").read_text()
    assert "diverged" not in table
    assert "over the last 2 rounds" in table  # two rounds ran, not five


def test_an_interrupted_grid_goes_on_from_its_finished_cells(tmp_path: Path, capsys, monkeypatch):
    import shoal.robustness.grid as grid

    out = tmp_path / "grid"
    args = ("robustness", "--data", "digits", "--attacks", "sign_flip", "--rounds", "2")
    args += ("--aggregators", "mean,median", "--out", out, "--quiet")
    real, trained = grid.run_cell, []

    def interrupted_at_the_third(*a):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(1)
        return real(*a)

    monkeypatch.setattr(grid, "run_cell", interrupted_at_the_third)
    assert shoal(*args) == 130  # what Ctrl-C ends with
    err = capsys.readouterr().err
    assert f"the finished cells are kept in {out / 'robustness-cells.jsonl'}" in err
    assert not (out / "robustness.json").exists()
    trained.clear()
    monkeypatch.setattr(grid, "run_cell", lambda *a: trained.append(1) or real(*a))
    assert shoal(*args) == 0
    assert len(trained) == 2  # sign flip x mean and median; the clean row was kept
    assert "2 cell(s) taken from" in capsys.readouterr().err
    report = json.loads((out / "robustness.json").read_text())
    assert report["reused_cells"] == ["clean x mean", "clean x median"]
