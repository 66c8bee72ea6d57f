"""Synchronous data-parallel SGD with momentum: gradients averaged by all-reduce.

The baseline every data-parallel system implements (PyTorch DDP; Goyal et al., "Accurate,
Large Minibatch SGD: Training ImageNet in 1 Hour", 2017): every worker computes its minibatch
gradient, the gradients are averaged across workers, and every worker applies the same
``torch.optim.SGD`` step (momentum, Nesterov, weight decay, dampening 0), so the replicas
stay identical. With one worker it is ``torch.optim.SGD``.

With a ``compressor`` each worker compresses its own gradient with its own compressor state
(error feedback's residual lives there: Seide et al. 2014, Karimireddy et al. 2019):

- homomorphic compressors (identity, random-k with a shared seed, count sketch; Jang, Na,
  Yoon 2017) are summed *in compressed form* by an all-reduce of the payloads' floating-point
  entries, then decompressed once: ``mean = decompress(sum_i C(g_i)) / N``;
- the others (top-k, QSGD, sign, ...) are all-gathered as payloads, and every worker
  decompresses each and averages them in worker order: ``mean = sum_i decompress(C(g_i)) / N``.

Deviation, named: PowerSGD is homomorphic only through its two-round ``project`` / ``complete``
protocol (Vogels et al. 2019), which this method does not run; its one-round ``compress``
payloads are all-gathered instead.

Shape suffixes: ``W`` local workers, ``N`` all workers, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shoal.compress.base import Compressor, add_all, is_homomorphic
from shoal.compress.low_rank import PowerSGD
from shoal.parallel.base import (
    GradFn,
    OwnModel,
    State,
    check_fraction,
    check_positive,
    sgd_direction,
)
from shoal.parallel.comm import Comm


def _summable(compressor: Compressor) -> bool:
    """Homomorphic, and in one round (see the module docstring on PowerSGD)."""
    inner: Any = compressor
    while inner is not None:
        if isinstance(inner, PowerSGD):
            return False
        inner = getattr(inner, "inner", None)
    return is_homomorphic(compressor)


def check_optimizer(who: str, lr: float, momentum: float, weight_decay: float) -> None:
    check_positive(f"{who}: lr", lr)
    check_fraction(f"{who}: momentum", momentum)
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"{who}: weight_decay must be >= 0, got {weight_decay!r}")


def compressed_mean(
    compressor: Compressor, rows_WD: torch.Tensor, states: list[Any], comm: Comm
) -> tuple[torch.Tensor, list[Any]]:
    """The mean over all workers of ``rows_WD`` sent compressed; each worker's new state."""
    payloads, new_states = [], []
    for row_D, s in zip(rows_WD, states):
        payload, s = compressor.compress(row_D, s)
        payloads.append(payload)
        new_states.append(s)
    if _summable(compressor):
        total_D = compressor.decompress(comm.all_reduce_payloads(payloads)).to(rows_WD.dtype)
    else:
        inbox = comm.all_gather_payloads(payloads)
        total_D = add_all([compressor.decompress(p).to(rows_WD.dtype) for p in inbox])
    mean_D = total_D / comm.world_size
    return mean_D.expand_as(rows_WD), new_states


@dataclass(frozen=True)
class SyncSGD(OwnModel):
    """All-reduce SGD; see the module docstring."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    compressor: Compressor | None = None
    name: str = "sync_sgd"

    def __post_init__(self) -> None:
        check_optimizer("sync_sgd", self.lr, self.momentum, self.weight_decay)
        if self.nesterov and not self.momentum:
            raise ValueError("sync_sgd: nesterov=True needs momentum > 0")
        if self.compressor is not None and not isinstance(self.compressor, Compressor):
            raise TypeError(
                "sync_sgd: compressor must implement init/compress/decompress/nbytes "
                f"(shoal.compress), got {type(self.compressor).__name__}"
            )

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        state: State = {}
        if self.momentum:
            state["momentum_WD"] = torch.zeros_like(params_WD)
        if self.compressor is not None:
            state["compressor"] = [self.compressor.init(row) for row in params_WD]
        return state

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        grads_WD = grad_fn(params_WD)
        state = dict(state)
        if self.compressor is None:
            mean_WD = comm.all_reduce_mean(grads_WD)
        else:
            mean_WD, state["compressor"] = compressed_mean(
                self.compressor, grads_WD, state["compressor"], comm
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
) -> SyncSGD:
    """All-reduce SGD (``torch.optim.SGD`` semantics), optionally with compressed gradients."""
    return SyncSGD(lr, momentum, weight_decay, nesterov, compressor)
