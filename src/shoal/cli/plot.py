"""``shoal plot DIR [DIR ...]``: test accuracy and loss of runs, overlaid, as PNG files."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from shoal.cli import UsageError, folder_arg
from shoal.report import plot_runs, read_metrics, run_labels
from shoal.train import METRICS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plot",
        help="plot test accuracy and loss of one or more runs",
        description="Plot test accuracy and test loss against rounds, cumulative uplink bytes "
        "and (when the metrics have it) simulated time; for data-parallel and gossip runs "
        "against steps and bytes sent; several runs are overlaid.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders (with metrics.jsonl)")
    p.add_argument(
        "--out",
        metavar="PNG_DIR",
        help="where to write the PNGs (default: the run folder for one run, else ./plots)",
    )
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    # A run's metrics.jsonl names its run (read_metrics takes either).
    dirs = [p.parent if p.name == METRICS and p.is_file() else p for p in map(Path, args.dirs)]
    out = folder_arg(args.out) if args.out is not None else None
    seen: dict[Path, Path] = {}
    for d in dirs:
        if not d.is_dir():
            raise UsageError(f"{d}: no such run folder")
        if (same := seen.setdefault(d.resolve(), d)) is not d:  # one line drawn, two labels
            raise UsageError(f"{d} and {same} are the same run; name it once")
    try:
        runs = {label: read_metrics(d) for label, d in zip(run_labels(dirs), dirs)}
    except FileNotFoundError as e:  # a folder that is not a run's
        raise UsageError(str(e)) from None
    out = out or (dirs[0] if len(dirs) == 1 else Path("plots"))
    drawn = {k: any(r.get("test_accuracy") is not None for r in rows) for k, rows in runs.items()}
    for label in [k for k, has in drawn.items() if not has and any(drawn.values())]:
        # an overlay would lack it without a word (none drawn: plot_runs says so)
        warnings.warn(f"{label}: no evaluated round (yet); it has no line", stacklevel=2)
    steps = {k: any("step" in r for r in rows) for k, rows in runs.items()}
    if len(set(steps.values())) > 1:  # each kind of run has its own figures
        parallel = ", ".join(k for k, s in steps.items() if s)
        warnings.warn(
            f"{parallel}: data-parallel run(s), drawn against steps and bytes sent, apart from "
            "the federated runs' rounds and uplink figures",
            stacklevel=2,
        )
    timed = {k: any("sim_seconds" in r for r in rows) for k, rows in runs.items()}
    for label in [k for k, has in timed.items() if not has and drawn[k] and any(timed.values())]:
        warnings.warn(
            f"{label}: no simulated time (a run without [network]); not in test_vs_sim_time.png",
            stacklevel=2,
        )
    try:
        pngs = plot_runs(runs, out)
    except ValueError as e:  # e.g. a run killed before its first evaluation
        raise UsageError(str(e)) from None
    for png in pngs:
        print(png)
    return 0
