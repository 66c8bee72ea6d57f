"""A cell that diverges is a result of the grid, whichever rule it runs: with a learning rate
far too large, the mean's global model goes NaN/inf (recorded as diverged), while robust rules
refused the NaN/inf updates of the honest clients a step earlier with a ValueError that ended
the whole grid and lost every finished cell."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shoal.robustness import STYLES, load_workload, presets, run_grid, worker_momentum


def test_a_robust_rule_refusing_nan_updates_is_a_diverged_cell_not_a_crash() -> None:
    work = load_workload("digits", None)
    style = dataclasses.replace(
        STYLES["data_parallel"], make_algorithm=lambda: worker_momentum(1e6, batch_size=32)
    )
    aggs = presets.pick("aggregator", presets.aggregators(style.tau), ["mean", "median"])
    report = run_grid(work, style, 4, {}, aggs, command="test", progress=False)
    assert report["headline"]["grid"] == {"clean": {"mean": None, "median": None}}
    cells = report["results"]["clean"]
    assert "global model has NaN/inf" in cells["mean"]["diverged"]
    assert "median: the inbox holds NaN or inf" in cells["median"]["diverged"]
    assert all(len(c["curve"]) < 4 and c["last5_mean"] is None for c in cells.values())


class _Refuses:
    """A rule that fails for a reason other than NaN/inf (a plain ValueError): a mistake, which
    must surface."""

    linear = False

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        raise ValueError("refuses: not a result")


def test_other_value_errors_still_end_the_grid() -> None:
    work = load_workload("digits", None)
    aggs = {"refuses": presets.Preset("refuses", _Refuses, "raises")}
    with pytest.raises(ValueError, match="refuses: not a result"):
        run_grid(work, STYLES["data_parallel"], 1, {}, aggs, command="test", progress=False)
