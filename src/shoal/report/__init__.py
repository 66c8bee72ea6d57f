"""Reporting: metrics files read back, plots of runs and partitions, human-readable sizes."""

from shoal.report.metrics import human_bytes, read_metrics, run_labels, seconds
from shoal.report.plots import plot_label_histogram, plot_runs

__all__ = [
    "human_bytes",
    "plot_label_histogram",
    "plot_runs",
    "read_metrics",
    "run_labels",
    "seconds",
]
