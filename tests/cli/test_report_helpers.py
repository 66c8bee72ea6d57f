"""``shoal.report`` helpers by hand: byte units, legend labels and what the figures draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from shoal.report import human_bytes, plot_label_histogram, plot_runs, read_metrics, run_labels


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),  # 2^10 bytes is one KiB, not "1024 B"
        (1536, "1.5 KiB"),
        (1024**2, "1.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**4, "5120.0 GiB"),  # GiB is the largest unit
        (1023.99, "1.0 KiB"),  # the unit is chosen after rounding, never "1024 B"
        (1024**2 - 1, "1.0 MiB"),
    ],
)
def test_human_bytes_uses_binary_units(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_run_labels_add_parents_only_until_they_differ(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "fedavg", tmp_path / "y" / "fedprox"
    assert run_labels([a, b]) == ["fedavg", "fedprox"]
    c, d = tmp_path / "x" / "run", tmp_path / "y" / "run"
    assert run_labels([c, d]) == ["x/run", "y/run"]


def _drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}

    def record(fig: Figure, path: Path, **kw: object) -> None:
        figures[Path(path).stem] = fig

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def test_accuracy_is_drawn_in_percent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _drawn(monkeypatch)
    rows = [{"round": 1, "test_accuracy": 0.25, "test_loss": 2.0},
            {"round": 2, "test_accuracy": 0.5, "test_loss": 1.5}]  # fmt: skip
    plot_runs({"a": rows}, tmp_path)
    acc, loss = figures["test_vs_rounds"].axes[:2]
    assert np.asarray(acc.get_lines()[0].get_ydata()).tolist() == [25.0, 50.0]
    assert np.asarray(loss.get_lines()[0].get_ydata()).tolist() == [2.0, 1.5]


@pytest.mark.parametrize(("longest", "unit"), [(179.0, "s"), (180.0, "min"), (10_800.0, "h")])
def test_sim_time_unit_switches_at_three_of_the_next_unit(
    longest: float, unit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _drawn(monkeypatch)
    rows = [{"round": 1, "sim_seconds": longest, "test_accuracy": 0.5, "test_loss": 1.0}]
    plot_runs({"a": rows}, tmp_path)
    ax = figures["test_vs_sim_time"].axes[0]
    assert ax.get_xlabel() == f"simulated time ({unit})"
    scale = {"s": 1.0, "min": 60.0, "h": 3600.0}[unit]
    assert np.asarray(ax.get_lines()[0].get_xdata()).tolist() == [longest / scale]


def test_label_heat_map_counts_from_zero_over_whole_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An IID split over 4 workers: its smallest count (21) is not an empty cell, and there is
    # no worker 0.5.
    figures = _drawn(monkeypatch)
    hist = np.array([[38, 34], [32, 38], [34, 21], [38, 42]])
    plot_label_histogram(hist, tmp_path / "h.png", who="worker")
    ax = figures["h"].axes[0]
    assert ax.get_images()[0].get_clim() == (0, 42)
    assert ax.get_xlabel() == "worker"
    ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 3.5]
    assert ticks == [0, 1, 2, 3]
    # Counts of 0 and 1: the colour bar showed 0.2, 0.4, ... samples.
    plot_label_histogram(np.eye(3, dtype=int), tmp_path / "eye.png")
    scale = figures["eye"].axes[1]
    assert all(t == int(t) for t in scale.get_yticks())


def test_read_metrics_takes_the_file_too_and_refuses_rows_that_are_not_objects(
    tmp_path: Path,
) -> None:
    # The metrics.jsonl path itself was "no metrics.jsonl"; a line of valid JSON that is not a
    # row ([1, 2]) raised an AttributeError in the plot.
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1, "test_accuracy": 0.5}\n')
    assert read_metrics(path) == read_metrics(tmp_path) == [{"round": 1, "test_accuracy": 0.5}]
    path.write_text('{"round": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object of metrics"):
        read_metrics(tmp_path)


def test_simulated_seconds_read_well_short_and_long() -> None:
    from shoal.report import seconds

    # ".1f" showed a short run as 0.0 s; ".4g" a long one as 1.235e+04 s.
    assert [seconds(s) for s in (0.01234, 4.567, 12345.6)] == ["0.0123 s", "4.57 s", "12,345.6 s"]
