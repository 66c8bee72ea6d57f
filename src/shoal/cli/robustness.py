"""``shoal robustness``: the attack x aggregator grid, as a table, a heat map and JSON.

``shoal robustness --data-dir path/to/mnist5k`` runs the data-parallel grid (25 clients,
5 Byzantine, worker momentum; see :mod:`shoal.robustness.grid`) and writes
``robustness.md``, ``robustness.png`` and ``robustness.json`` into ``--out``
(``runs/robustness``). ``--style fedavg`` runs the FedAvg-style grid; ``--attacks`` and
``--aggregators`` pick rows and columns by name (the clean row is always there);
``--data digits`` uses scikit-learn's bundled digits instead of IDX files. Each finished cell
is kept in ``robustness-cells.jsonl`` there as it ends, and the same command run again (after
Ctrl-C, a kill or an error) takes those cells instead of training them again.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

import torch

from shoal.cli import UsageError, folder_arg, say
from shoal.data import default_cache_dir
from shoal.data.download import check_cached
from shoal.files import run_lock
from shoal.robustness import STYLES, load_workload, presets, render, run_grid

CELLS = "robustness-cells.jsonl"
"""Each finished cell, as it ends (:mod:`shoal.robustness.finished`): a killed grid goes on."""


def add_parser(sub: Any) -> None:
    attacks = ", ".join(a for a in presets.attacks() if a != "clean")
    aggs = ", ".join(presets.aggregators(1.0))
    p = sub.add_parser(
        "robustness",
        help="run the Byzantine attack x aggregator grid (table, heat map, JSON)",
        description="Final test accuracy of every attack x aggregator with 5 of 25 clients "
        "Byzantine (MLP, Dirichlet alpha=1). Attacks: " + attacks + ". Aggregators: " + aggs + ".",
    )
    p.add_argument(
        "--style",
        choices=list(STYLES),
        default="data_parallel",
        help="the training of the grid (default: data_parallel)",
    )
    p.add_argument("--attacks", nargs="+", metavar="NAME", help="rows (default: all six)")
    p.add_argument(
        "--aggregators", nargs="+", metavar="NAME", help="columns (default: the style's grid)"
    )
    p.add_argument("--rounds", type=int, help="rounds per cell (default: the style's)")
    p.add_argument(
        "--data", choices=("mnist", "digits"), default="mnist", help="IDX files or sklearn digits"
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="MNIST-format IDX files (default: the mnist cache)"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="runs/robustness",
        help="output folder (default: runs/robustness)",
    )
    p.add_argument("--quick", action="store_true", help="2 attacks x 3 aggregators, 5 rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_robustness)


def _names(values: list[str] | None) -> list[str] | None:
    """``--attacks a b`` and ``--attacks a,b`` both work."""
    if values is None:
        return None
    return [n for v in values for n in v.split(",") if n]


def _command(args: argparse.Namespace) -> str:
    """The command as a person would retype it (folders left out: they are this machine's)."""
    parts = ["shoal", "robustness", "--style", args.style]
    for flag in ("attacks", "aggregators"):
        if getattr(args, flag):
            parts += [f"--{flag}", *(_names(getattr(args, flag)) or [])]
    if args.rounds is not None:
        parts += ["--rounds", str(args.rounds)]
    if args.data != "mnist":
        parts += ["--data", args.data]
    if args.quick:
        parts.append("--quick")
    return shlex.join(parts)


def cmd_robustness(args: argparse.Namespace) -> int:
    style = STYLES[args.style]
    try:
        attack_names = _names(args.attacks)
        agg_names = _names(args.aggregators)
        # An option that names nothing (`--aggregators "$UNSET"`) is an error for pick, not
        # the default: `or` ran the style's 8 columns, or the clean row alone for --attacks.
        if args.quick:
            attack_names = list(presets.QUICK_ATTACKS) if attack_names is None else attack_names
            agg_names = list(presets.QUICK_AGGREGATORS) if agg_names is None else agg_names
        attacks = presets.pick("attack", presets.attacks(), attack_names)
        attacks.pop("clean", None)  # always the first row
        aggs = presets.pick(
            "aggregator",
            presets.aggregators(style.tau),
            list(style.columns) if agg_names is None else agg_names,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    rounds = (5 if args.quick else style.rounds) if args.rounds is None else args.rounds
    if rounds < 1 or args.threads < 1:
        raise UsageError("--rounds and --threads must be >= 1")
    data_dir = args.data_dir
    if args.data == "digits" and data_dir is not None:
        raise UsageError("--data-dir is for --data mnist (digits come with scikit-learn)")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")
    if args.data == "mnist" and data_dir is None:
        data_dir = default_cache_dir() / "mnist"
        if not data_dir.is_dir() or not any(data_dir.iterdir()):
            raise UsageError(
                f"no MNIST files in {data_dir}: pass --data-dir (e.g. the mnist5k folder), "
                "run `shoal data fetch mnist`, or use --data digits"
            )
        try:
            check_cached("mnist", data_dir)
        except ValueError as e:
            raise UsageError(str(e)) from None
    out = folder_arg(args.out)  # before the grid: minutes of training
    # Made now, not by the write after the last cell: a folder that cannot be made (or written)
    # lost the whole grid.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot make the folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {args.out}: not writable")
    torch.set_num_threads(args.threads)
    work = load_workload(args.data, data_dir)
    kept = out / CELLS
    with run_lock(out):  # two grids appending to one cells file would interleave their lines
        try:
            report = run_grid(
                work,
                style,
                rounds,
                attacks,
                aggs,
                command=_command(args),
                progress=not args.quiet,
                finished=kept,
            )
        except BaseException:
            if kept.is_file():  # killed, or an error in one cell: the others are not lost
                say(f"shoal: the finished cells are kept in {kept}; the same command goes on")
            raise
        paths = render.write(
            report,
            json_path=out / "robustness.json",
            md_path=out / "robustness.md",
            png_path=out / "robustness.png",
        )
    if report["reused_cells"]:
        n = len(report["reused_cells"])
        say(f"shoal: {n} cell(s) taken from {kept} (delete it to train them again)")
    print(render.markdown(report).split("\n## Mean test accuracy")[0].rstrip())
    for p in paths:
        print(p)
    return 0
