"""Byzantine robustness: final test accuracy for every attack x aggregator on mnist5k.

The grid itself lives in :mod:`shoal.robustness` (one implementation, also behind
``shoal robustness``); its docstrings describe the workload, the two styles and every
hyper-parameter. This script runs it on mnist5k and writes the published files:

    # FedAvg style: 6 attacks x 10 aggregators, 25 rounds (~12 min on 2 cores)
    python benchmarks/robustness.py --json benchmarks/results/robustness.json
    # data-parallel style (worker momentum): 6 attacks x 8 aggregators, 40 rounds (~9 min)
    python benchmarks/robustness.py --style data_parallel \\
        --json benchmarks/results/robustness_dp.json
    python benchmarks/robustness.py --quick                              # ~20 s

A full run writes ``benchmarks/results/robustness{,_dp}.md`` and
``docs/img/robustness{,_dp}.png`` too (``--md``/``--png`` to change; ``--quick`` or other
``--rounds`` write them only when asked); ``--render JSON`` redraws them without training
(those of the style the JSON holds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _args  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist5k"
SUFFIX = {"fedavg": "", "data_parallel": "_dp"}


def shown(path: str | Path) -> str:
    """A path as a command line in the repo would spell it; never this machine's absolute one."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else p.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--style", choices=list(SUFFIX), help="fedavg (default) or data_parallel")
    ap.add_argument("--rounds", type=int, help="rounds (default: 25 fedavg, 40 data_parallel)")
    ap.add_argument("--quick", action="store_true", help="clean + 2 attacks x 3 aggregators")
    ap.add_argument("--threads", type=_args.positive_int, default=1)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    ap.add_argument("--md", help="markdown table (default, full run: results/robustness*.md)")
    ap.add_argument("--png", help="heat map (default, full run: docs/img/robustness*.png)")
    ap.add_argument(
        "--render",
        # Its JSON has no "benchmark" field: known by what the table and heat map read.
        type=_args.json_of("robustness", keys=("command", "setup", "aggregators", "results")),
        metavar="JSON",
        help="no training: redraw --md/--png from JSON",
    )
    args = ap.parse_args()
    if args.rounds is not None and args.rounds < 1:  # 0 ran the default rounds, silently
        ap.error(f"--rounds must be >= 1, got {args.rounds}")

    import torch

    from shoal.robustness import STYLES, load_workload, presets, render, run_grid

    report = json.loads(Path(args.render).read_text()) if args.render else None
    if report is not None:
        # The JSON says which grid it holds: the default files follow it, not --style's
        # default (--render robustness_dp.json overwrote the FedAvg grid's md and png).
        made = report["setup"].get("style", "fedavg")  # reports from before styles: FedAvg
        if args.style not in (None, made):
            ap.error(f"--style {args.style}, but {args.render} holds the {made} grid")
        args.style = made
    args.style = args.style or "fedavg"
    style = STYLES[args.style]
    stem = "robustness" + SUFFIX[args.style]
    # Only a full run (or --render) writes the published files by default; not --rounds 3.
    full = not args.quick and args.rounds in (None, style.rounds)
    md = args.md or (str(REPO / "benchmarks" / "results" / f"{stem}.md") if full else None)
    png = args.png or (str(REPO / "docs" / "img" / f"{stem}.png") if full else None)
    if report is None:
        torch.set_num_threads(args.threads)
        attacks = presets.attacks()
        attacks.pop("clean")
        columns = list(presets.QUICK_AGGREGATORS if args.quick else style.columns)
        if args.quick:
            attacks = {k: attacks[k] for k in presets.QUICK_ATTACKS}
        command = "python benchmarks/robustness.py"
        command += f" --style {args.style}" if args.style != "fedavg" else ""
        command += " --quick" if args.quick else ""
        command += f" --rounds {args.rounds}" if args.rounds is not None else ""
        command += f" --json {shown(args.json)}" if args.json else ""
        work = load_workload("mnist", args.data_dir)
        rounds = args.rounds if args.rounds is not None else 5 if args.quick else style.rounds
        aggregators = presets.pick("aggregator", presets.aggregators(style.tau), columns)
        print(f"Byzantine grid, {style.title}: {work.description}; {rounds} rounds")
        report = run_grid(
            work, style, rounds, attacks, aggregators, command=command, log_cells=True
        )
        print("\n" + render.markdown(report))
    render.write(report, json_path=None if args.render else args.json, md_path=md, png_path=png)
    print("headline:", json.dumps(report["headline"]))


if __name__ == "__main__":
    main()
