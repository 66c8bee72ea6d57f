"""Robust gossip on mnist5k: honest nodes' accuracy per attack x gossip rule (simulation).

Workload: mnist5k (4,000 train / 1,000 test images), MLP 784-200-200-10 (init seed 0),
16 nodes on a 4x4 torus (Metropolis weights 1/5), data from ``dirichlet(1.0)`` with
``np.random.default_rng(0)``, nodes 0 and 10 Byzantine (their neighbourhoods do not overlap,
so every honest node has at most one Byzantine in-neighbour: the ``b = f = 1`` the rules
assume). :func:`shoal.parallel.robust_gossip`, 120 steps of batch 32, lr 0.1, local
momentum 0.9 (``torch.optim.SGD`` convention), in :class:`~shoal.parallel.SimComm`.

Rules: plain gossip (D-PSGD), ClippedGossip clipping the farthest neighbour (``b=1``),
trimmed mean ``b=1`` and MoNNA's nearest-neighbour averaging ``f=1`` over
{own} U {4 neighbours}. Attacks, forged per receiver from its honest neighbourhood (see
:mod:`shoal.parallel.algorithms.robust_gossip`): sign flip, Gaussian ``sigma=1`` around the
receiver, ALIE with ``z=1`` (the epfml code's ``z_max``, ``shoal.attacks.alie_z``, is 0 in a
5-node neighbourhood, which would send the honest mean; the MoNNA code line-searches its
factor instead), and He et al.'s dissensus ``eps=1.5``.

Reported per cell: the mean test accuracy of the 14 honest nodes' own models (of all 16 in
the clean row, where none is Byzantine), and the worst honest node.

    python benchmarks/robust_gossip.py --json benchmarks/results/robust_gossip.json  # ~18 min
    python benchmarks/robust_gossip.py --steps 20 --quick                            # ~1.5 min

The full run (every attack, 120 steps) writes ``benchmarks/results/robust_gossip.md`` too
(``--md`` to change); any other run writes a table only when asked.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import _args

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist5k"
DEFAULT_MD = REPO / "benchmarks" / "results" / "robust_gossip.md"
STEPS = 120
BYZANTINE = frozenset({0, 10})
LR, MOMENTUM, BATCH = 0.1, 0.9, 32


def shown(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else p.name


def grid(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from tqdm import tqdm

    from shoal.attacks import Byzantine, alie, gaussian, sign_flip
    from shoal.data import dirichlet, load_mnist_family
    from shoal.functional import cross_entropy, init_params
    from shoal.models import mlp
    from shoal.parallel import (
        ParallelConfig,
        SimComm,
        clipped_gossip,
        dissensus,
        nna_gossip,
        plain_gossip,
        robust_gossip,
        train_parallel,
        trimmed_gossip,
    )
    from shoal.parallel.records import evaluate
    from shoal.topology import torus

    torch.set_num_threads(args.threads)
    data = load_mnist_family(args.data_dir)
    topology = torus(4, 4)
    n = topology.num_nodes
    shards = dirichlet(1.0)(data.train.y.numpy(), n, np.random.default_rng(0))
    model, p0 = init_params(mlp, 0)
    rules = {
        "plain gossip": plain_gossip(),
        "ClippedGossip b=1": clipped_gossip(b=1),
        "trimmed mean b=1": trimmed_gossip(1),
        "NNA f=1": nna_gossip(1),
    }
    attacks = {
        "clean": None,
        "sign flip": sign_flip(),
        "gaussian": gaussian(1.0, seed=0),
        "ALIE z=1": alie(1.0),
        "dissensus": dissensus(1.5),
    }
    if args.quick:
        attacks = {k: attacks[k] for k in ("clean", "gaussian", "dissensus")}
    cfg = ParallelConfig(args.steps, batch_size=BATCH, eval_every=args.steps, progress=False)
    results: dict[str, dict[str, dict[str, float]]] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(attacks) * len(rules), unit="cell")
    for a_name, attack in attacks.items():
        byz = None if attack is None else Byzantine(BYZANTINE, attack)
        for r_name, rule in rules.items():
            bar.set_description(f"{a_name} x {r_name}")
            t0 = time.perf_counter()
            alg = robust_gossip(LR, topology, rule, momentum=MOMENTUM, byzantine=byz)
            res = train_parallel(model, data, shards, alg, cfg, SimComm(n), init=p0)
            honest = [i for i in range(n) if attack is None or i not in BYZANTINE]
            accs = [
                evaluate(model, res.spec, res.params_WD[i], data.test.x, data.test.y,
                         cross_entropy, 1000)[1]
                for i in honest
            ]  # fmt: skip
            results.setdefault(a_name, {})[r_name] = {
                "mean_honest": float(np.mean(accs)),
                "worst_honest": float(np.min(accs)),
                "seconds": time.perf_counter() - t0,
            }
            bar.update()
            bar.write(
                f"{a_name:<10} x {r_name:<18} honest mean {100 * np.mean(accs):5.1f}  "
                f"worst {100 * np.min(accs):5.1f}  {time.perf_counter() - t0:5.1f}s"
            )
    bar.close()
    command = f"python benchmarks/robust_gossip.py --steps {args.steps}"
    command += " --quick" if args.quick else ""
    command += f" --json {shown(args.json)}" if args.json else ""
    return {
        "command": command,
        "setup": {
            "data": f"mnist5k ({len(data.train)} train / {len(data.test)} test images)",
            "model": f"MLP 784-200-200-10 ({p0.numel():,} parameters)",
            "nodes": f"{n} nodes on a 4x4 torus, Dirichlet alpha=1 (rng 0), "
            f"Byzantine nodes {sorted(BYZANTINE)}",
            "training": f"robust_gossip, {args.steps} steps, batch {BATCH}, lr {LR}, "
            f"momentum {MOMENTUM}, SimComm",
            "threads": args.threads,
        },
        "results": results,
        "total_seconds": time.perf_counter() - start,
        "headline": {
            "mean_honest": {
                a: {r: c["mean_honest"] for r, c in row.items()} for a, row in results.items()
            },
            "worst_honest": {
                a: {r: c["worst_honest"] for r, c in row.items()} for a, row in results.items()
            },
        },
    }


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    rules = list(next(iter(res.values())))
    s = report["setup"]
    lines = [
        "# Robust gossip: honest nodes' test accuracy (%) per attack x rule",
        "",
        f"Generated by `{report['command']}` (`benchmarks/robust_gossip.py`; its docstring has "
        "the details). One seed.",
        "",
        f"**Workload:** {s['data']}, {s['model']}, {s['nodes']}; {s['training']}.",
        "",
    ]
    for key, title in (
        ("mean_honest", "Mean over honest nodes"),
        ("worst_honest", "Worst honest node"),
    ):
        lines += [f"## {title}", "", "| attack | " + " | ".join(rules) + " |"]
        lines.append("|---|" + "---:|" * len(rules))
        for attack, row in res.items():
            lines.append(
                f"| {attack} | " + " | ".join(f"{100 * row[r][key]:.1f}" for r in rules) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=_args.positive_int, default=STEPS)
    ap.add_argument("--quick", action="store_true", help="clean, gaussian and dissensus only")
    ap.add_argument("--threads", type=_args.positive_int, default=1)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    ap.add_argument("--md", help=f"markdown table (default, full run: {DEFAULT_MD.name})")
    args = ap.parse_args()
    # Only the full run (every attack, the default steps) writes the committed table by default.
    full = not args.quick and args.steps == STEPS
    report = grid(args)
    text = markdown(report)
    print("\n" + text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    md = args.md or (str(DEFAULT_MD) if full else None)
    if md:
        Path(md).write_text(text)


if __name__ == "__main__":
    main()
