"""Plots of runs and of partitions, written as PNG files.

Figures are built with matplotlib's object API (``Figure``), not ``pyplot``: no global state, no
GUI backend, safe to call from a library or a test. matplotlib is imported by the functions that
draw, not by this module: importing it takes ~0.6 s, which every ``shoal`` command paid (the
CLI imports this module) although only a few of them draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_label_histogram", "plot_runs"]

Rows = Sequence[Mapping[str, Any]]

# (metrics key, file stem, x-axis label, log-x); each is drawn when some run's rows have the
# key. Federated runs log ``round`` and ``cum_uplink_bytes`` (and ``sim_seconds`` with a
# network cost model: ``train(network=...)``, ``[network]`` in a config); data-parallel and
# gossip runs log ``step`` and ``bytes_sent`` (every worker's, cumulative).
_AXES = (
    ("round", "test_vs_rounds", "round", False),
    ("cum_uplink_bytes", "test_vs_uplink_bytes", "cumulative uplink (bytes, log scale)", True),
    ("sim_seconds", "test_vs_sim_time", "simulated time", False),
    ("step", "test_vs_steps", "step", False),
    ("bytes_sent", "test_vs_bytes_sent", "bytes sent by all workers (log scale)", True),
)


def _time_unit(runs: Mapping[str, Rows]) -> tuple[str, float]:
    """Seconds, minutes or hours, whichever keeps the longest run's axis readable."""
    longest = max((r.get("sim_seconds") or 0.0 for rows in runs.values() for r in rows), default=0)
    for unit, scale in (("h", 3600.0), ("min", 60.0)):
        if longest >= 3 * scale:
            return unit, scale
    return "s", 1.0


def _curve(
    rows: Rows, x_key: str, y_key: str, log_x: bool, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        x, y = r.get(x_key), r.get(y_key)
        if x is None or y is None or (log_x and x <= 0):
            continue  # not evaluated this round, or nothing sent yet (no place on a log axis)
        xs.append(float(x) / scale)
        ys.append(float(y))
    return xs, ys


def plot_runs(runs: Mapping[str, Rows], out_dir: str | Path, dpi: int = 120) -> list[Path]:
    """Test accuracy and test loss against rounds, cumulative uplink bytes and, when the
    metrics have ``sim_seconds``, simulated time; one line per run, labelled by its key.

    Returns the PNG paths written into ``out_dir``, and removes a figure of these names left
    there by earlier runs that these do not have (a simulated-time figure of other runs beside
    this call's); raises ``ValueError`` when no run has a row with test metrics to draw.
    """
    if not any(r.get("test_accuracy") is not None for rows in runs.values() for r in rows):
        raise ValueError(f"nothing to plot: no metrics row with test_accuracy in {', '.join(runs)}")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for x_key, stem, x_label, log_x in _AXES:
        if not any(x_key in r for rows in runs.values() for r in rows):
            continue
        scale = 1.0
        if x_key == "sim_seconds":
            unit, scale = _time_unit(runs)
            x_label = f"{x_label} ({unit})"
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        ax_acc, ax_loss = fig.subplots(1, 2)
        lines, labels = [], []
        for i, (label, rows) in enumerate(runs.items()):
            if not any(x_key in r for r in rows):
                continue  # e.g. a data-parallel run among federated ones: no rounds
            # A run keeps its colour in every figure, whichever runs a figure leaves out; past
            # ten runs the colours repeat with another line style (run 11 looked like run 1).
            style = {
                "label": label,
                "color": f"C{i % 10}",
                "linestyle": ("-", "--", ":", "-.")[i // 10 % 4],
            }
            xs, acc = _curve(rows, x_key, "test_accuracy", log_x, scale)
            marker = "." if len(xs) < 40 else ""
            lines += ax_acc.plot(xs, [100 * a for a in acc], marker=marker, **style)
            labels.append(label)
            xs, loss = _curve(rows, x_key, "test_loss", log_x, scale)
            ax_loss.plot(xs, loss, marker="." if len(xs) < 40 else "", **style)
        for ax, what, unit in (
            (ax_acc, "test accuracy", "%"),
            (ax_loss, "test loss", "cross-entropy"),
        ):
            ax.set_title(f"{what} vs {x_label.split(' (')[0]}")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"{what} ({unit})")
            ax.grid(True, which="both", alpha=0.3)
            if log_x:
                ax.set_xscale("log")
            elif x_key in ("round", "step"):  # no round 1.5 on a short run's axis
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Handles and labels given: matplotlib leaves out a label that starts with "_" (a run
        # folder "_baseline"), and its line looked like another run's.
        ax_acc.legend(lines, labels, loc="lower right", fontsize="small")
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)
    for _, stem, _, _ in _AXES:  # one an earlier call drew of other runs, not of these
        if out / f"{stem}.png" not in written:
            (out / f"{stem}.png").unlink(missing_ok=True)
    return written


def plot_label_histogram(
    hist: np.ndarray, path: str | Path, title: str = "", dpi: int = 120, who: str = "client"
) -> Path:
    """A heat map of a ``[clients, classes]`` label histogram: clients along x, classes along y,
    brighter = more samples, from 0 (so that a class a client lacks looks empty whatever the
    other counts are). ``who`` names the x axis: ``"worker"`` for a data-parallel partition."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    hist = np.asarray(hist)
    num_clients, num_classes = hist.shape
    width = min(max(6.0, 0.08 * num_clients + 2.5), 20.0)
    height = min(max(3.0, 0.25 * num_classes + 1.5), 12.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        hist.T, aspect="auto", cmap="viridis", interpolation="nearest", origin="lower", vmin=0
    )
    # Whole samples on the scale (counts of 0 and 1 showed 0.2, 0.4, ...).
    ticks = MaxNLocator(integer=True)
    fig.colorbar(image, ax=ax, label="samples", fraction=0.05, pad=0.01, ticks=ticks)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no client 0.5
    ax.set_xlabel(who)
    ax.set_ylabel("class")
    if num_classes <= 30:
        ax.set_yticks(range(num_classes))
    ax.set_title(title or f"label distribution: {num_clients} clients x {num_classes} classes")
    path = Path(path)
    if not path.suffix:  # what matplotlib writes then, so that the path returned is the file
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
