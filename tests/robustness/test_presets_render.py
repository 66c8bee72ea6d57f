"""The robustness grid's presets do what their settings say (f = 5 of 25, IPM eps 0.1, label
flip y -> 9 - y, ...), and its markdown table and heat map put every number under its own
attack and aggregator, from a report written out by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from shoal.robustness import presets, render


def _make(preset: presets.Preset) -> Any:
    """A fresh instance of an attack or aggregator preset."""
    assert preset.make is not None
    return preset.make()


def test_trimmed_mean_preset_cuts_five_from_each_side_of_25() -> None:
    """25 values: five far below, five far above, 15 in the middle; f = 5 leaves the middle."""
    middle = torch.arange(15, dtype=torch.float64)
    x = torch.cat([middle, torch.full((5,), -1e3), torch.full((5,), 1e3)]).unsqueeze(1)
    out = _make(presets.aggregators(1.0)["trimmed_mean"])(x, torch.ones(25))
    torch.testing.assert_close(out, middle.mean().reshape(1))


def test_multi_krum_preset_averages_the_n_minus_f_closest() -> None:
    """20 honest values 0..19 (/100) and 5 outliers: multi-Krum (m = n - f = 20) returns the
    honest mean; Krum returns one honest value."""
    honest = torch.arange(20, dtype=torch.float64) / 100
    x = torch.cat([honest, 100.0 + torch.arange(5.0, dtype=torch.float64)]).unsqueeze(1)
    aggs = presets.aggregators(1.0)
    got = _make(aggs["multi_krum"])(x, torch.ones(25))
    torch.testing.assert_close(got, honest.mean().reshape(1))
    single = _make(aggs["krum"])(x, torch.ones(25))
    assert float(single) in honest.tolist()


def test_attack_presets_are_their_settings() -> None:
    attacks = presets.attacks()
    assert attacks["clean"].make is None
    honest = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    ipm = _make(attacks["ipm"])(honest, 3)  # eps 0.1: -0.1 * mean
    torch.testing.assert_close(ipm, torch.tensor([[-0.2, -0.4]] * 3))
    flip = _make(attacks["sign_flip"])(honest, 2)  # scale 1: -mean
    torch.testing.assert_close(flip, torch.tensor([[-2.0, -4.0]] * 2))
    labels = torch.arange(10)
    assert _make(attacks["label_flip"])(labels).tolist() == list(range(9, -1, -1))


def test_aggregator_presets_keep_their_documented_hyper_parameters() -> None:
    """``bucket+TM``: s = 2 then trimmed mean f = 5; ``NNM+TM``: NNM f = 5 then trimmed mean
    f = 5; CClip: the radius given, 3 iterations."""
    aggs = presets.aggregators(0.25)
    bucket = _make(aggs["bucketing_tm"])
    assert (bucket.s, bucket.agg.f) == (2, 5)
    nnm = _make(aggs["nnm_tm"])
    assert nnm.f == 5 and type(nnm.agg).__name__ == "TrimmedMean" and nnm.agg.f == 5
    clip = _make(aggs["cclip"]).agg
    assert (clip.tau, clip.num_iters) == (0.25, 3)
    assert _make(presets.aggregators(1.0)["cclip"]).agg.tau == 1.0


def test_labels_are_unique_so_no_two_rows_or_columns_merge() -> None:
    """The grid keys its results by label: two presets with one label would share a cell."""
    for known in (presets.attacks(), presets.aggregators(1.0)):
        labels = [p.label for p in known.values()]
        assert len(set(labels)) == len(labels)


def test_pick_keeps_the_order_given_without_repeats() -> None:
    known = presets.attacks()
    assert list(presets.pick("attack", known, ["ipm", "sign_flip", "ipm"])) == ["ipm", "sign_flip"]
    assert list(presets.pick("attack", known, None)) == list(known)
    with pytest.raises(ValueError, match="unknown attack 'nope'; choose from: clean, sign_flip"):
        presets.pick("attack", known, ["nope"])


def _report(style: str | None = "fedavg") -> dict[str, Any]:
    """A 3 x 2 grid written by hand; the sign-flip row lists its cells in the other order."""
    setup = {"data": "digits (sklearn)", "model": "MLP", "clients": "25 clients",
             "training": "SGD", "rounds": 3, "threads": 1}  # fmt: skip
    if style is not None:
        setup["style"] = style
    return {
        "command": "shoal robustness --style fedavg",
        "setup": setup,
        "aggregators": {"mean": "uniform weights", "trimmed mean": "f=5 cut from each side"},
        "attacks": {"clean": "none", "sign flip": "SignFlip(scale=1.0)", "ALIE": "ALIE(z=None)"},
        "mean_under_attack": ["The mean", "collapses."],
        "results": {
            "clean": {
                "mean": {"final": 0.9, "last5_mean": 0.88},
                "trimmed mean": {"final": 0.89, "last5_mean": 0.87},
            },
            "sign flip": {
                "trimmed mean": {"final": 0.84, "last5_mean": 0.8},
                "mean": {"final": None, "last5_mean": None},
            },
            "ALIE": {
                "mean": {"final": 0.86, "last5_mean": 0.85},
                "trimmed mean": {"final": 0.5, "last5_mean": 0.55},
            },
        },
        "headline": {"clean_accuracy": 0.9},
    }


def _table(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 2
    end = lines.index("", start)
    return lines[start:end]


def test_markdown_tables_put_each_cell_under_its_column() -> None:
    text = render.markdown(_report())
    assert _table(text, "Final test accuracy") == [
        "| attack | mean | trimmed mean |",
        "|---|---:|---:|",
        "| clean | 90.0 | 89.0 |",
        "| sign flip | diverged | 84.0 |",
        "| ALIE | 86.0 | 50.0 |",
    ]
    assert _table(text, "Mean test accuracy over the last 3 rounds")[2:] == [
        "| clean | 88.0 | 87.0 |",
        "| sign flip | diverged | 80.0 |",
        "| ALIE | 85.0 | 55.0 |",
    ]
    assert "**Workload, FedAvg style:**" in text
    # The intro said "the last 5 rounds" of a 3-round run, and a fixed "1-2 points" of noise
    # (|final - last mean| here: 2, 2, 4, 1, 5 points; the diverged cell has none).
    assert (
        "lies a median 2.0 and up to 5.0 points from its own mean over the last 3 rounds;" in text
    )


def test_markdown_lists_failures_more_than_5_points_below_clean_and_divergence() -> None:
    """Clean 90%: 84% and a diverged cell fail; 86% (4 points below) does not."""
    lines = render.markdown(_report()).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Where defenses fail"))
    fails = lines[start + 2 : lines.index("", start + 2)]
    assert sorted(fails) == [
        "- mean under sign flip: diverged",  # was "diverged%"
        "- trimmed mean under ALIE: 50.0%",
        "- trimmed mean under sign flip: 84.0%",
    ]
    # The clean mean diverged: the heading said "the clean mean's diverged%", the list "none".
    report = _report()
    report["headline"]["clean_accuracy"] = None
    text = render.markdown(report)
    assert "**diverged**." in text and "%%" not in text and "diverged%" not in text
    assert "the clean mean diverged too" in text
    assert "- mean under sign flip: diverged" in text.splitlines()


def test_markdown_settings_tables_and_old_reports() -> None:
    text = render.markdown(_report())
    assert "| mean | uniform weights |\n| trimmed mean | f=5 cut from each side |" in text
    assert (
        "| attack | setting |\n|---|---|\n| clean | none |\n| sign flip | SignFlip(scale=1.0) |"
        in text
    )
    # A report from before styles existed is a FedAvg-style one.
    assert "**Workload, FedAvg style:**" in render.markdown(_report(style=None))
    assert "**Workload, data-parallel style:**" in render.markdown(_report("data_parallel"))


def test_heatmap_cells_and_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Column ``j``, row ``i`` shows ``results[row i][col j]`` (``div.`` when diverged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Any] = []
    subplots = plt.subplots

    def spy(*args: Any, **kwargs: Any) -> Any:
        made.append(subplots(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(plt, "subplots", spy)
    render.heatmap(_report(), tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    (_, ax) = made[0]
    cells = {tuple(round(v) for v in t.get_position()): t.get_text() for t in ax.texts}
    assert cells == {
        (0, 0): "90.0", (1, 0): "89.0",
        (0, 1): "div.", (1, 1): "84.0",
        (0, 2): "86.0", (1, 2): "50.0",
    }  # fmt: skip
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mean", "trimmed mean"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["clean", "sign flip", "ALIE"]


def test_label_flip_preset_follows_the_datas_classes() -> None:
    # label_flip(10) was fixed: 5-class data crashed inside the loss, 12-class data blamed
    # the labels.
    from shoal.attacks import label_flip

    five = presets.attacks(5)["label_flip"]
    assert five.make is not None and five.make() == label_flip(5)
    assert five.setting == "y -> 4 - y"
    assert presets.attacks()["label_flip"].setting == "y -> 9 - y"
