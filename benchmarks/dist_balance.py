"""Which rank trains which client: ``k mod world`` against the LPT rule, in ``DistRuntime``.

A distributed federated round lasts as long as its busiest rank. ``DistRuntime`` trains
stateless rounds' clients (FedAvg here) by Graham's longest-processing-time rule over their
local steps; clients with state stay on rank ``k mod world``. Two figures, on workload W
(mnist5k's 4,000 training images over 100 clients, Dirichlet alpha = 0.5, seed 0; 10
clients per round, one local epoch of batch 10, lr 0.05, 20 rounds):

1. Load: for 2, 4 and 8 ranks, the busiest rank's local steps over the fair share
   ``max(total / world, longest client)``, averaged over ``--load-rounds`` rounds of W's
   client sampling (the same clients and plans the training draws). Counted, not timed.
2. Time: W's 20 rounds of FedAvg on 2 gloo processes (``spawn_local``, one thread each), the
   MLP and the CNN, in four variants: ``k mod world`` or LPT, and the test set scored by
   rank 0 alone (as before) or shared out between the ranks (as now); ``--repeats`` rounds
   of all four in rotating order, the median wall time of rank 0's ``train`` call, and each
   variant's speedup over the previous runtime (``mod_rank0_eval``). The models may differ
   only by the order of float sums (over 20 rounds of the CNN that drifts to ~1e-3, the
   same as DistRuntime against SimRuntime).

    python benchmarks/dist_balance.py --json benchmarks/results/dist_balance.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

import _args
import _workload as wl

ROUNDS = 20
PER_ROUND = 10


def load_ratios(sizes: np.ndarray, worlds: list[int], rounds: int) -> dict[str, Any]:
    """Busiest rank's steps over the fair share, per world size, under both rules."""
    from shoal.runtime.dist import lpt
    from shoal.schedule import ClientSampler

    sampler = ClientSampler(PER_ROUND)
    out: dict[str, Any] = {}
    for world in worlds:
        ratios: dict[str, list[float]] = {"mod": [], "lpt": []}
        for r in range(rounds):
            clients = sampler(sizes, wl.SCHEDULE_SEED, r)
            steps = np.ceil(sizes[clients] / wl.BATCH_SIZE)
            fair = max(steps.sum() / world, steps.max())
            for rule, ranks in (("mod", clients % world), ("lpt", lpt(list(steps), world))):
                ratios[rule].append(float(np.bincount(ranks, steps, world).max() / fair))
        out[str(world)] = {rule: float(np.mean(v)) for rule, v in ratios.items()}
    return out


VARIANTS = {
    # name: (LPT for stateless rounds, every rank scores a slice of the test set)
    "mod_rank0_eval": (False, False),  # the previous DistRuntime
    "mod_shared_eval": (False, True),
    "lpt_rank0_eval": (True, False),
    "lpt_shared_eval": (True, True),  # DistRuntime now
}


def _rank_run(model_name: str, data_dir: str, variant: str) -> dict[str, Any]:
    from shoal.algorithms import LocalWork, fedavg
    from shoal.evaluate import predict
    from shoal.runtime.dist import DistRuntime
    from shoal.runtime.sim import SimRuntime
    from shoal.schedule import ClientSampler
    from shoal.train import TrainConfig, train

    class RankZeroEval(DistRuntime):
        """The previous evaluation: rank 0 scores every test row while the others go on to
        the next round (and wait for rank 0 in its first collective)."""

        def predict(self, model, spec, params_D, x, y, loss_fn, batch_size):  # type: ignore[no-untyped-def]
            if self.is_main:
                return predict(model, spec, params_D, x, y, loss_fn, batch_size)
            return torch.zeros(len(y)), torch.zeros(len(y), dtype=torch.bool)

    balance, shared_eval = VARIANTS[variant]
    data, clients = wl.load(data_dir)
    cfg = TrainConfig(
        rounds=ROUNDS,
        sampler=ClientSampler(PER_ROUND),
        work=LocalWork(epochs=wl.EPOCHS, batch_size=wl.BATCH_SIZE),
        progress=False,
        seed=wl.SCHEDULE_SEED,
        device="cpu",
        client_eval=False,  # W's evaluation: the test set, every round
    )
    runtime = (DistRuntime if shared_eval else RankZeroEval)(SimRuntime(), balance=balance)
    t0 = time.perf_counter()
    res = train(wl.initial_model(model_name), data, clients, fedavg(wl.LR), cfg, runtime=runtime)
    return {
        "seconds": time.perf_counter() - t0,
        "params": res.params,
        "accuracy": res.summary["final_test_accuracy"],
    }


def timed(model_name: str, data_dir: str, repeats: int) -> dict[str, Any]:
    from shoal.runtime.spawn import spawn_local

    names = list(VARIANTS)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    for i in range(repeats):
        for v in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
            rank0 = spawn_local(_rank_run, 2, model_name, data_dir, v)[0]
            runs[v].append(rank0)
            print(f"  {model_name} {v}: {rank0['seconds']:.2f} s", flush=True)
    ref = runs["mod_rank0_eval"][0]["params"]
    med = {v: statistics.median(r["seconds"] for r in rows) for v, rows in runs.items()}
    return {
        "seconds": {v: [r["seconds"] for r in rows] for v, rows in runs.items()},
        "median_seconds": med,
        "speedup_vs_mod_rank0_eval": {v: med["mod_rank0_eval"] / m for v, m in med.items()},
        "final_accuracy": {v: rows[0]["accuracy"] for v, rows in runs.items()},
        "max_param_difference_vs_mod_rank0_eval": {
            v: float((rows[0]["params"] - ref).abs().max()) for v, rows in runs.items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(wl.DEFAULT_DATA_DIR))
    p.add_argument("--load-rounds", type=_args.positive_int, default=1000)
    p.add_argument("--repeats", type=_args.positive_int, default=5)
    p.add_argument("--models", default="mlp,cnn", help="timed models; '' for the load count only")
    p.add_argument("--json", type=_args.json_path, metavar="PATH", help="write every figure here")
    args = p.parse_args()
    models = [m for m in args.models.split(",") if m]
    if unknown := [m for m in models if m not in ("mlp", "cnn")]:
        p.error(f"--models: unknown model(s) {unknown}; choose from mlp, cnn")
    _args.check_mnist5k(p, args.data_dir)
    torch.set_num_threads(1)
    _, clients = wl.load(args.data_dir)
    sizes = np.array([len(c) for c in clients])
    print(
        f"Workload W: {len(sizes)} clients ({sizes.min()}-{sizes.max()} samples), "
        f"{PER_ROUND} per round, batch {wl.BATCH_SIZE}: local steps = ceil(size / batch)"
    )
    load = load_ratios(sizes, [2, 4, 8], args.load_rounds)
    print(f"\nBusiest rank's steps / fair share, mean over {args.load_rounds} rounds:")
    print("| ranks | k mod world | LPT | ratio |\n|---:|---:|---:|---:|")
    for world, v in load.items():
        print(f"| {world} | {v['mod']:.2f}x | {v['lpt']:.2f}x | {v['mod'] / v['lpt']:.2f}x |")
    timing: dict[str, Any] = {}
    for name in models:
        print(f"\nW-{name.upper()}, {ROUNDS} rounds of FedAvg on 2 gloo processes:")
        timing[name] = t = timed(name, args.data_dir, args.repeats)
        print("| variant | median s | speedup | final acc % | max param diff |")
        print("|---|---:|---:|---:|---:|")
        for v in VARIANTS:
            print(
                f"| {v} | {t['median_seconds'][v]:.2f} | "
                f"{t['speedup_vs_mod_rank0_eval'][v]:.2f}x | {100 * t['final_accuracy'][v]:.1f} | "
                f"{t['max_param_difference_vs_mod_rank0_eval'][v]:.1e} |"
            )
    headline: dict[str, float] = {
        f"busiest_rank_share_{rule}_{w}ranks": round(v[rule], 3)
        for w, v in load.items()
        for rule in ("mod", "lpt")
    }
    for name, t in timing.items():
        for v in ("lpt_rank0_eval", "mod_shared_eval", "lpt_shared_eval"):
            headline[f"w_{name}_2proc_speedup_{v}"] = round(t["speedup_vs_mod_rank0_eval"][v], 3)
    report = {
        "workload": "W: mnist5k, 100 clients, Dirichlet 0.5, 10 per round, 1 epoch, batch 10",
        "load_rounds": args.load_rounds,
        "load": load,
        "timing": timing,
        "headline": headline,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
