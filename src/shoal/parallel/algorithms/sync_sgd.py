"""Synchronous data-parallel SGD with momentum: gradients averaged by all-reduce.

The baseline every data-parallel system implements (PyTorch DDP; Goyal et al., "Accurate,
Large Minibatch SGD: Training ImageNet in 1 Hour", 2017): every worker computes its minibatch
gradient, the gradients are averaged across workers, and every worker applies the same
``torch.optim.SGD`` step (momentum, Nesterov, weight decay, dampening 0), so the replicas
stay identical. With one worker it is ``torch.optim.SGD``.

Dense gradients are all-reduced in buckets *during* the backward pass, as PyTorch DDP does (Li
et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020,
Sec. 3.2.3): parameter tensors in reverse order, a bucket closed at ``bucket_cap_mb`` MiB (the
first at 1 MiB, DDP's defaults; torch 2.13's DDP gives the first bucket ``bucket_cap_mb`` too
when it is set explicitly, and uses one bucket in its first iteration), and each bucket's
all-reduce started as soon as the backward pass has produced it
(:class:`shoal.parallel.base.Buckets`), so it travels while the gradients of the earlier
layers are computed; the step waits for all of them before the update.
``overlap=False`` all-reduces the whole gradient after the backward pass instead. The
mean is the same either way (an all-reduce sums each entry over the workers on its own).

With a ``compressor`` each worker compresses its own gradient with its own compressor state
(error feedback's residual lives there: Seide et al. 2014, Karimireddy et al. 2019; a
stochastic compressor gets a seed per worker, unless its messages are summed compressed):

- homomorphic compressors (identity, random-k with a shared seed, count sketch; Jang, Na,
  Yoon 2017) are summed *in compressed form* by an all-reduce of the payloads' floating-point
  entries, then decompressed once: ``mean = decompress(sum_i C(g_i)) / N``;
- with ``reduce="two_round"``, PowerSGD (Vogels, Karimireddy, Jaggi 2019, Algorithm 1) runs
  its own two-round all-reduce:
  ``P = sum_i M_i Q`` (all-reduce), ``P <- orthogonalize(P)``, ``Q_i = M_i^T P``, ``sum_i Q_i``
  (all-reduce), ``mean = P (sum_i Q_i)^T / N``, and the summed Q is every worker's next warm
  start; with error feedback a worker keeps its own error ``M_i - P Q_i^T`` (Algorithm 2 read
  literally; the paper's code and torch's ``powerSGD_hook`` keep ``M_i - P Qbar^T`` with the
  averaged Q: the residuals differ per worker, their sum and so every update are the same).
  The orthogonalized P is the same on every worker and is not sent again;
- the others (top-k, QSGD, sign, ...) are all-gathered as payloads, and every worker
  decompresses each and averages them in worker order: ``mean = sum_i decompress(C(g_i)) / N``
  (:func:`shoal.compress.decompress_sum`: sparse messages are scatter-added into one buffer,
  bit for bit the same sum, and PowerSGD's factors multiplied once, stacked).

Which path a compressor takes is decided once, at ``init``. With ``reduce="auto"`` (the
default) the payloads are summed in compressed form only if adding their floating-point
entries (what the all-reduce does) decompresses to what the compressor's own ``sum_payloads``
gives (a probe), and gathered otherwise; PowerSGD's one-round payloads fail the probe, so each
worker compresses with its own P and the sum has rank ``N r`` (the all-gather moves ``N``
payloads to every worker). ``reduce="two_round"`` runs the paper's all-reduce for compressors
that offer it (:func:`shoal.compress.is_two_round`: PowerSGD with one power iteration): the
bytes a worker receives stay those of one payload however many workers there are, but the mean
is approximated at rank ``r`` and a step takes two collectives. On 4 workers of the CNN
(``benchmarks/shaped_network.py``) the gathered form reached 95% in fewer steps (80 against
100) and shorter ones, hence the default. ``reduce="all_gather"`` gathers every compressor's
payloads. Gathered payloads draw their randomness per worker: random-k's masks are then
independent per worker (summed in compressed form they are shared), and PowerSGD's first
queries differ.

Shape suffixes: ``W`` local workers, ``N`` all workers, ``D`` flat parameters.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from shoal.checks import check_flag, is_real
from shoal.compress._common import init_with_seed, mix
from shoal.compress.base import (
    Compressor,
    Payload,
    configured_seed,
    decompress_sum,
    is_homomorphic,
    is_two_round,
)
from shoal.parallel.base import (
    Buckets,
    GradFn,
    State,
    check_fraction,
    check_positive,
    sgd_direction,
)
from shoal.parallel.comm import Comm, Reducing
from shoal.parallel.messages import sum_floats

FIRST_BUCKET_BYTES = 2**20  # DDP's first bucket: small, so communication starts early


def summable(compressor: Compressor, like_D: torch.Tensor) -> bool:
    """Whether an all-reduce of the payloads' floating-point entries is the compressor's own
    ``sum_payloads`` (probed on two fixed random vectors, so every process decides alike)."""
    if not is_homomorphic(compressor):
        return False
    g = torch.Generator().manual_seed(0)
    a_D, b_D = torch.randn(2, like_D.numel(), generator=g).to(like_D.device, like_D.dtype)
    state = compressor.init(a_D)
    payloads = [compressor.compress(a_D, state)[0], compressor.compress(b_D, state)[0]]
    try:
        own_D = compressor.decompress(compressor.sum_payloads(payloads))  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # e.g. PowerSGD's one-round payloads do not add up
        return False
    return bool(torch.allclose(compressor.decompress(sum_floats(payloads)), own_D, atol=1e-5))


def check_optimizer(
    who: str, lr: float, momentum: float, weight_decay: float, nesterov: bool = False
) -> None:
    check_positive(f"{who}: lr", lr)
    check_fraction(f"{who}: momentum", momentum)
    if not (is_real(weight_decay) and 0 <= weight_decay < math.inf):
        raise ValueError(f"{who}: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    check_flag(nesterov, f"{who}: nesterov")
    if nesterov and not momentum:
        raise ValueError(f"{who}: nesterov=True needs momentum > 0")


REDUCE = ("auto", "all_gather", "two_round")
BUCKET_CAP_MB = 25.0  # DDP's default


def check_reduce(who: str, reduce: str, compressor: Compressor | None) -> None:
    if reduce not in REDUCE:
        raise ValueError(f"{who}: reduce must be one of {', '.join(REDUCE)}, got {reduce!r}")
    if reduce == "two_round" and not is_two_round(compressor):
        name = getattr(compressor, "name", None) or "no compressor"
        raise ValueError(
            f"{who}: reduce='two_round' needs a compressor with PowerSGD's two-round "
            f"all-reduce (powersgd with power_iterations=1, or error_feedback of it), got {name}"
        )
    if reduce == "all_gather" and compressor is None:
        warnings.warn(
            f"{who}: reduce='all_gather' says how compressed payloads travel; without a "
            "compressor the dense values are all-reduced, so it changes nothing",
            stacklevel=5,  # the caller of the algorithm's factory
        )


def reduction(compressor: Compressor, like_D: torch.Tensor, reduce: str) -> str:
    """How the payloads travel: ``"two_round"`` (PowerSGD's all-reduce), ``"sum"`` (one
    all-reduce) or ``"gather"`` (see the module docstring)."""
    if reduce == "two_round":  # (check_reduce has refused other compressors)
        return "two_round"
    if reduce == "all_gather":
        return "gather"
    return "sum" if summable(compressor, like_D) else "gather"


def compressor_states(
    compressor: Compressor, params_WD: torch.Tensor, comm: Comm, reduce: str = "auto"
) -> State:
    """Each local worker's compressor state, and how the payloads travel."""
    path = reduction(compressor, params_WD[0], reduce)
    # Reduced payloads need the same random choices on every worker (random-k's shared seed,
    # PowerSGD's query); gathered ones are each worker's own (QSGD's rounding, and random-k's
    # mask: independent per worker on this path). Their seeds mix in the compressor's, once it
    # is set (the default 0 keeps the streams of the published runs).
    seed = configured_seed(compressor) or 0

    def own_seed(w: int) -> int | None:
        if path != "gather":
            return None  # the configured one, on every worker
        return mix(w, 0x5EED, seed) if seed else mix(w, 0x5EED)

    states = [
        init_with_seed(compressor, row, own_seed(w)) for w, row in zip(comm.workers, params_WD)
    ]
    return {"compressor": states, "reduce": path}


def check_compressor(who: str, compressor: object) -> None:
    if compressor is not None and not isinstance(compressor, Compressor):
        raise TypeError(
            f"{who}: compressor must implement init/compress/decompress/nbytes "
            f"(shoal.compress), got {type(compressor).__name__}"
        )


def compressed_mean(
    compressor: Compressor, rows_WD: torch.Tensor, states: list[Any], comm: Comm, path: str
) -> tuple[torch.Tensor, list[Any]]:
    """The mean over all workers of ``rows_WD`` sent compressed; each worker's new state."""
    d = rows_WD.shape[1]  # the entries each worker compresses (the cost model's codec work)
    if path == "two_round":
        total, new_states = _two_rounds(compressor, rows_WD, states, comm)
        total_D = compressor.decompress(total).to(rows_WD.dtype)
        return (total_D / comm.world_size).expand_as(rows_WD), new_states
    payloads, new_states = [], []
    for row_D, s in zip(rows_WD, states):
        payload, s = compressor.compress(row_D, s)
        payloads.append(payload)
        new_states.append(s)
    if path == "sum":
        total = comm.all_reduce_payloads(payloads, codec_elements=d)
        total_D = compressor.decompress(total).to(rows_WD.dtype)
    else:
        inbox = comm.all_gather_payloads(payloads, codec_elements=d)
        total_D = decompress_sum(compressor, inbox, rows_WD.dtype)
    mean_D = total_D / comm.world_size
    return mean_D.expand_as(rows_WD), new_states


def _two_rounds(
    compressor: Any, rows_WD: torch.Tensor, states: list[Any], comm: Comm
) -> tuple[Payload, list[Any]]:
    """PowerSGD's all-reduce: the summed message ``{P, sum_i Q_i, sum_i dense_i}``."""
    d = rows_WD.shape[1]
    round1 = [compressor.project(row_D, s) for row_D, s in zip(rows_WD, states)]
    summed = comm.all_reduce_payloads(round1, codec_elements=d)
    done = [compressor.complete(row_D, summed, s) for row_D, s in zip(rows_WD, states)]
    # Round 1's entries (P, now orthogonalized) are the same on every worker: not sent again.
    own = [{k: v for k, v in payload.items() if k not in summed} for payload, _ in done]
    total = {**done[0][0], **comm.all_reduce_payloads(own)}
    return total, [compressor.with_query(s, total) for _, s in done]


@dataclass(frozen=True)
class SyncSGD:
    """All-reduce SGD; see the module docstring."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    compressor: Compressor | None = None
    overlap: bool = True
    bucket_cap_mb: float = BUCKET_CAP_MB
    reduce: str = "auto"
    name: str = "sync_sgd"

    def __post_init__(self) -> None:
        check_optimizer("sync_sgd", self.lr, self.momentum, self.weight_decay, self.nesterov)
        check_compressor("sync_sgd", self.compressor)
        check_flag(self.overlap, "sync_sgd: overlap")
        check_positive("sync_sgd: bucket_cap_mb", self.bucket_cap_mb)
        check_reduce("sync_sgd", self.reduce, self.compressor)
        # Buckets belong to the dense all-reduce, reduce to compressed payloads: say so when a
        # setting for one path is given to the other, rather than ignore it.
        if self.compressor is not None and (
            not self.overlap or self.bucket_cap_mb != BUCKET_CAP_MB
        ):
            warnings.warn(
                "sync_sgd: overlap and bucket_cap_mb shape the dense all-reduce's buckets; "
                "with a compressor the gradient is compressed whole after the backward pass, "
                "so they change nothing",
                stacklevel=4,
            )

    def _mean_gradient(self, params_WD: torch.Tensor, grad_fn: GradFn, comm: Comm) -> torch.Tensor:
        """The workers' mean dense gradient (see the module docstring)."""
        if not self.overlap:
            return comm.all_reduce_mean(grad_fn(params_WD))
        in_flight: list[Reducing] = []

        def start(grads_WD: torch.Tensor, lo: int, hi: int) -> None:
            in_flight.append(comm.start_all_reduce_mean_(grads_WD[:, lo:hi]))

        cap = int(self.bucket_cap_mb * 2**20)
        grads_WD = grad_fn(params_WD, Buckets(start, cap, min(cap, FIRST_BUCKET_BYTES)))
        for pending in in_flight:
            pending.wait()
        return grads_WD

    @staticmethod
    def model(params_WD: torch.Tensor, state: State) -> torch.Tensor:
        """One replica: every worker applies the same averaged update to the same start,
        so all hold the same model and scoring it needs no collective."""
        return params_WD[0]

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        state: State = {}
        if self.momentum:
            state["momentum_WD"] = torch.zeros_like(params_WD)
        if self.compressor is not None:
            state.update(compressor_states(self.compressor, params_WD, comm, self.reduce))
        return state

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        state = dict(state)
        if self.compressor is None:
            mean_WD = self._mean_gradient(params_WD, grad_fn, comm)
        else:
            mean_WD, state["compressor"] = compressed_mean(
                self.compressor, grad_fn(params_WD), state["compressor"], comm, state["reduce"]
            )
        direction_WD, m_WD = sgd_direction(
            mean_WD,
            params_WD,
            state.get("momentum_WD"),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        if m_WD is not None:
            state["momentum_WD"] = m_WD
        return params_WD - self.lr * direction_WD, state


def sync_sgd(
    lr: float,
    momentum: float = 0.0,
    *,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    compressor: Compressor | None = None,
    overlap: bool = True,
    bucket_cap_mb: float = BUCKET_CAP_MB,
    reduce: str = "auto",
) -> SyncSGD:
    """All-reduce SGD (``torch.optim.SGD`` semantics), optionally with compressed gradients;
    dense ones are all-reduced in ``bucket_cap_mb`` MiB buckets during the backward pass
    (``overlap=False``: after it); ``reduce`` says how compressed payloads travel (``"auto"``,
    ``"all_gather"``, ``"two_round"``: see the module docstring)."""
    return SyncSGD(lr, momentum, weight_decay, nesterov, compressor, overlap, bucket_cap_mb, reduce)
