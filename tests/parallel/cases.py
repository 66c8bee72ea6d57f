"""A tiny problem and the algorithm cases that simulation and gloo processes both run.

Functions here are imported by the spawned worker processes, so everything they need is
built from plain arguments (names, sizes), never passed as objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.compress import error_feedback, powersgd, qsgd, random_k, threshold, top_k
from shoal.cost import CostModel, Heterogeneity, Network, alpha_beta
from shoal.data.types import ArrayDataset, FederatedDataset
from shoal.parallel import (
    Comm,
    ParallelConfig,
    ParallelResult,
    dgc,
    dpsgd,
    local_sgd,
    sgp,
    sync_sgd,
    train_parallel,
)
from shoal.parallel.base import Buckets
from shoal.topology import one_peer_exponential, ring

DIM, CLASSES = 6, 3


def tiny_data(n_train: int = 160, n_test: int = 40, seed: int = 0) -> FederatedDataset:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, CLASSES, generator=g)
    x = torch.randn(n_train + n_test, DIM, generator=g)
    y = (x @ w).argmax(1)
    return FederatedDataset(
        "tiny",
        ArrayDataset(x[:n_train], y[:n_train], CLASSES),
        ArrayDataset(x[n_train:], y[n_train:], CLASSES),
    )


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, CLASSES))


TINY_SHAPES = (
    torch.Size([8, DIM]),
    torch.Size([8]),
    torch.Size([CLASSES, 8]),
    torch.Size([CLASSES]),
)


def shards(num_workers: int, n: int = 160, seed: int = 0) -> list[np.ndarray]:
    """Unequal shards, some smaller than a batch (so batches are padded and masked)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(5, n - 5), size=num_workers - 1, replace=False))
    return list(np.split(rng.permutation(n), cuts))


CASES: dict[str, Callable[[int], Any]] = {
    "sync_sgd": lambda n: sync_sgd(0.2, momentum=0.9, nesterov=True, weight_decay=1e-3),
    # Three gradient buckets all-reduced during the backward pass (of 108, 32 and 192 bytes).
    "sync_sgd_buckets": lambda n: sync_sgd(0.2, momentum=0.9, bucket_cap_mb=32 / 2**20),
    "sync_sgd_topk_ef": lambda n: sync_sgd(
        0.2, momentum=0.9, compressor=error_feedback(top_k(ratio=0.2))
    ),
    "sync_sgd_random_k": lambda n: sync_sgd(0.2, compressor=random_k(0.3)),
    "sync_sgd_threshold": lambda n: sync_sgd(0.2, compressor=error_feedback(threshold(0.05))),
    "sync_sgd_qsgd": lambda n: sync_sgd(0.2, compressor=qsgd(4, bucket_size=16)),
    # PowerSGD's two-round all-reduce (P, then Q and the dense blocks).
    "sync_sgd_powersgd": lambda n: sync_sgd(
        0.2,
        momentum=0.9,
        compressor=error_feedback(powersgd(TINY_SHAPES, rank=1)),
        reduce="two_round",
    ),
    # DGC's sampled threshold after a one-epoch warm-up (density 1/4, then 0.2), clipped.
    "dgc": lambda n: dgc(
        0.2,
        TINY_SHAPES,
        density=0.2,
        sample_ratio=0.5,
        warmup_epochs=1,
        epoch_steps=2,
        clip_norm=2.0,
    ),  # fmt: skip
    "local_sgd": lambda n: local_sgd(0.2, period=2, momentum=0.5),
    "local_sgd_topk_ef": lambda n: local_sgd(
        0.2, period=2, momentum=0.5, compressor=error_feedback(top_k(ratio=0.2))
    ),
    "dpsgd_ring": lambda n: dpsgd(0.2, ring(n)),
    "dpsgd_ring_lian": lambda n: dpsgd(0.2, ring(n), "lian", momentum=0.5),
    "sgp": lambda n: sgp(0.2, momentum=0.5),
    "sgp_overlap": lambda n: sgp(0.2, one_peer_exponential(n), overlap=True),
}
"""Name -> ``factory(num_workers)``; every case runs a few steps in every runtime."""

STEPS = 5

NETWORK = CostModel(
    Network("test", alpha_beta(1e-3, 1e6), alpha_beta(2e-3, 4e6)),
    seconds_per_sample=1e-4,
    heterogeneity=Heterogeneity(speed_sigma=0.3, bandwidth_sigma=0.5, seed=1),
    codec_seconds_per_element=1e-7,
)
"""Every case's simulated time: per-worker speeds and bandwidths, so which worker and which
link is the slowest matters, and distributed runs must charge what the simulation does
(compressing included)."""


def config(**overrides: Any) -> ParallelConfig:
    base: dict[str, Any] = {
        "steps": STEPS,
        "batch_size": 16,
        "eval_every": 2,
        "progress": False,
        "device": "cpu",
        "seed": 3,
    }
    return ParallelConfig(**{**base, **overrides})


def run_case(name: str, comm: Comm, **overrides: Any) -> ParallelResult:
    n = comm.world_size
    out_dir = overrides.pop("out_dir", None)
    resume = overrides.pop("resume", False)
    network = overrides.pop("network", NETWORK)
    return train_parallel(
        tiny_model(),
        tiny_data(),
        shards(n),
        CASES[name](n),
        config(**overrides),
        comm,
        out_dir=out_dir,
        resume=resume,
        network=network,
    )


class ZeroGrad:
    """A gradient closure for pure-communication tests: every gradient is zero."""

    loss_W = None

    def __call__(self, at_WD: torch.Tensor, buckets: Buckets | None = None) -> torch.Tensor:
        grads_WD = torch.zeros_like(at_WD)
        if buckets is not None:  # no backward pass: the whole gradient is one bucket
            buckets.ready(grads_WD, 0, grads_WD.shape[1])
        return grads_WD


class Quadratic:
    """``grad_w(x) = x - target_w``: worker ``w`` minimises ``||x - target_w||^2 / 2``."""

    loss_W = None

    def __init__(self, target_WD: torch.Tensor) -> None:
        self.target_WD = target_WD

    def __call__(self, at_WD: torch.Tensor, buckets: Buckets | None = None) -> torch.Tensor:
        return at_WD - self.target_WD


def push_sum_start(n: int, dim: int = 5) -> torch.Tensor:
    """Distinct starting rows ``x_w`` for push-sum tests, ``[n, dim]`` in float64."""
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * 10


def push_sum(comm: Comm, steps: int) -> dict[str, list[torch.Tensor]]:
    """Run SGP with zero gradients (pure push-sum) on the one-peer exponential graph; the
    de-biased ``z``, numerators ``x`` and weights ``w`` of the local workers after each step."""
    alg = sgp(1.0, one_peer_exponential(comm.world_size))
    x_WD = push_sum_start(comm.world_size)[list(comm.workers)]
    state = alg.init(x_WD, comm)
    out: dict[str, list[torch.Tensor]] = {"z": [], "x": [], "w": []}
    for t in range(steps):
        x_WD, state = alg.step(x_WD, ZeroGrad(), state, comm, t)
        out["z"].append(alg.model(x_WD, state))
        out["x"].append(x_WD)
        out["w"].append(state["weight_W1"])
    return out


def mixed_payload(rank: int) -> dict[str, torch.Tensor]:
    """Sparse payloads of one 40,000-vector whose layouts differ by rank: even ranks keep ~32%
    (blocked indices with ``counts``), odd ranks 3 entries (flat int32 indices)."""
    x = torch.randn(40_000, generator=torch.Generator().manual_seed(rank))
    compressor = threshold(1.0) if rank % 2 == 0 else top_k(k=3)
    return compressor.compress(x, None)[0]


def gather_sequence(rank: int) -> list[dict[str, torch.Tensor]]:
    """Messages gathered one after another: the first, the same again (it fits the capacity
    the first gather set), a much larger one on even ranks (it does not), a tiny one."""
    big = threshold(0.5).compress(torch.randn(80_000), None)[0] if rank % 2 == 0 else None
    tiny = top_k(k=2).compress(torch.arange(10.0) * (rank + 1), None)[0]
    return [mixed_payload(rank), mixed_payload(rank), big or mixed_payload(rank), tiny]


def dist_worker(names: list[str], out_dir: str, stragglers: bool) -> dict[str, Any]:
    """Everything the distributed tests check, in one process start-up (which is what costs):
    every case, a stopped-and-resumed case, push-sum and, with ``stragglers``, SGP with worker
    1 five times slower and asynchronous EASGD (the last rank the server) likewise."""
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env

    ctx = init_from_env()
    got: dict[str, Any] = {}
    for name in names:
        comm = DistComm(ctx)
        r = run_case(name, comm)
        got[name] = {"params": r.params_WD[0], "rows": r.metrics, "bytes": comm.bytes_sent}
    # Stop after 3 steps, then extend to STEPS from the checkpoint: Overlap SGP's messages in
    # flight are part of it.
    run_case("sgp_overlap", DistComm(ctx), steps=3, out_dir=out_dir)
    r = run_case("sgp_overlap", DistComm(ctx), out_dir=out_dir, resume=True)
    got["sgp_overlap_resumed"] = {"params": r.params_WD[0], "rows": r.metrics}
    got["push_sum"] = push_sum(DistComm(ctx), 2)
    comm = DistComm(ctx)
    got["mixed_gather"] = comm.all_gather_payloads([mixed_payload(ctx.rank)])
    got["mixed_gather_exchanges"] = list(comm.exchanges)
    torch.manual_seed(ctx.rank)  # gather_sequence's large message differs by rank
    got["gather_sequence"], got["gather_capacity"] = [], []
    for message in gather_sequence(ctx.rank):
        got["gather_sequence"].append(comm.all_gather_payloads([message]))
        got["gather_capacity"].append(comm._capacity)
    got["nan_one_worker"] = nan_on_one_worker(ctx)
    if stragglers:
        got.update(straggling(ctx, slow=1, factor=5.0))
    return got


def nan_on_one_worker(ctx: Any) -> str:
    """What stops a run whose worker 1 alone meets NaN features under error_feedback(fp16):
    the compressor's own check stopped that process alone, and the others died in their next
    collective with gloo's "connection closed by peer" instead of the divergence message."""
    from shoal.compress import fp16
    from shoal.parallel import DistComm

    data, parts = tiny_data(), shards(ctx.world_size)
    data.train.x[parts[1][:3], 0] = float("nan")
    alg = sync_sgd(0.2, compressor=error_feedback(fp16()))
    try:
        train_parallel(tiny_model(), data, parts, alg, config(steps=6), DistComm(ctx))
    except FloatingPointError as e:
        return str(e)
    return "finished"


STRAGGLER_STEPS = 30


def straggling(ctx: Any, slow: int, factor: float) -> dict[str, Any]:
    from shoal.parallel import DistComm, easgd

    cfg = config(steps=STRAGGLER_STEPS, eval_every=10, slowdown={slow: factor})
    data, n = tiny_data(), ctx.world_size
    sgp_run = train_parallel(tiny_model(), data, shards(n), sgp(0.2), cfg, DistComm(ctx))
    comm = DistComm(ctx)
    easgd_run = train_parallel(tiny_model(), data, shards(n - 1), easgd(0.2, tau=2), cfg, comm)
    # Asynchronous EASGD stopping at a target accuracy: the server tells every worker.
    cfg = config(steps=300, eval_every=5, target_accuracy=0.6)
    target_run = train_parallel(tiny_model(), data, shards(n - 1), easgd(0.2), cfg, DistComm(ctx))
    return {
        "target_easgd": target_run.summary,
        "target_easgd_rows": target_run.metrics,
        "straggler_sgp": sgp_run.metrics,
        "straggler_easgd": easgd_run.metrics,
        "straggler_easgd_params": easgd_run.params,
        "straggler_easgd_bytes": comm.bytes_sent,
    }
