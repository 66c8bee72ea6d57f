"""Runs shared by the DistRuntime conformance test and the processes it spawns.

Each case trains the same small federated problem; a spawned rank runs it on
:class:`~shoal.runtime.dist.DistRuntime`, the test runs it on ``SimRuntime`` and compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.helpers import tiny_data, tiny_model, unequal_clients
from shoal.aggregate import bucketing, median, trimmed_mean
from shoal.algorithms import (
    LocalWork,
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fednova,
    fedprox,
    fedsgd,
    fedyogi,
    scaffold,
)
from shoal.attacks import byzantine, mimic, sign_flip
from shoal.compress import error_feedback, threshold, top_k
from shoal.runtime.dist import DistRuntime
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler, Stragglers
from shoal.train import TrainConfig, train

NUM_CLIENTS, PER_ROUND, ROUNDS = 10, 5, 3


def cases() -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every synchronous algorithm, plus a robust rule under attack and a stateful compressor."""
    algs = [
        fedavg(0.1),
        fedsgd(0.1),
        fedprox(0.1, mu=0.5),
        scaffold(0.1, server_lr=0.8),
        fedavgm(0.1, server_lr=0.9, momentum=0.9),
        fedadagrad(0.1, server_lr=0.05),
        fedadam(0.1, server_lr=0.01),
        fedyogi(0.1, server_lr=0.01),
        fednova(0.1),
    ]
    out: dict[str, tuple[Any, dict[str, Any]]] = {a.name: (a, {}) for a in algs}
    out["fedavg+trimmed_mean+sign_flip"] = (
        fedavg(0.1),
        {"aggregator": trimmed_mean(1), "byzantine": byzantine(2, NUM_CLIENTS, sign_flip(), 0)},
    )
    out["fedavg+top_k+ef"] = (fedavg(0.1), {"compressor": error_feedback(top_k(0.2))})
    # Byzantine clients send their crafted rows through the compressor, on every rank alike.
    out["fedavg+threshold+median+sign_flip"] = (
        fedavg(0.1),
        {
            "aggregator": median(),
            "byzantine": byzantine(2, NUM_CLIENTS, sign_flip()),
            "compressor": threshold(0.05),
        },
    )
    # Rules that depend on the inbox's order (a random bucketing, copying the first honest
    # update): every runtime fills the inbox in one order, or these differed.
    out["fedavg+bucketing+mimic"] = (
        fedavg(0.1),
        {"aggregator": bucketing(trimmed_mean(1)), "byzantine": byzantine(2, NUM_CLIENTS, mimic())},
    )
    return out


def run(name: str, runtime: Any, rounds: int = ROUNDS, **kw: Any) -> Any:
    alg, extra = cases()[name]
    data = tiny_data()
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(PER_ROUND),
        work=LocalWork(epochs=2, batch_size=8, min_epochs=1),
        stragglers=Stragglers(0.2),
        progress=False,
        device="cpu",
        client_eval=False,
    )
    clients = unequal_clients(len(data.train), NUM_CLIENTS)
    return train(tiny_model(), data, clients, alg, cfg, runtime=runtime, **extra, **kw)


def worker(names: list[str], out_dir: str) -> dict[str, Any]:
    """One rank: every case on DistRuntime, then a checkpointed SCAFFOLD run resumed twice
    (the second resume reads a checkpoint that a resumed run wrote)."""
    runtime = DistRuntime(SimRuntime(vectorize=True))
    got = {n: run(n, runtime).params for n in names}
    out = Path(out_dir)
    run("scaffold", runtime, rounds=2, out_dir=out)
    run("scaffold", runtime, rounds=3, out_dir=out, resume=True)
    resumed = run("scaffold", runtime, rounds=4, out_dir=out, resume=True)
    got["scaffold-resumed"] = resumed.params
    got["metrics"] = resumed.metrics if runtime.is_main else None
    return got
