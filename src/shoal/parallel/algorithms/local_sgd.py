"""Local SGD: independent SGD steps, models averaged every ``H`` steps.

Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019; Lin, Stich, Patel,
Jaggi, "Don't Use Large Mini-Batches, Use Local SGD", ICLR 2020. Every worker takes
``torch.optim.SGD`` steps on its own minibatches (momentum buffers stay local, as in Lin et
al.'s code), and after every ``H``-th step (steps ``H, 2H, ...``) all models are replaced by
their average with an all-reduce. ``H = 1`` is synchronous SGD with model averaging, which
for plain SGD equals gradient averaging.

With a ``compressor`` the averaging step is Qsparse-local-SGD's (Basu, Data, Karakus,
Diggavi, "Qsparse-local-SGD: Distributed SGD with Quantization, Sparsification, and Local
Computations", NeurIPS 2019, Algorithm 1, synchronous case): every worker compresses the change
of its model since the last synchronisation, ``x_i - x_sync``, with error feedback kept in its
compressor state (wrap the compressor in :func:`shoal.compress.error_feedback`), the compressed
changes are averaged exactly as :func:`~shoal.parallel.sync_sgd` averages compressed gradients
(summed in compressed form when homomorphic, else all-gathered; or PowerSGD's two-round
all-reduce with ``reduce="two_round"``), and every worker restarts from
``x_sync + mean`` — so the replicas are identical again after each synchronisation. The
memory lives in the compressor wrapper, which adds it to the change before compressing: the
paper's Algorithm 1 (matched to 1e-16 by a literal re-implementation).

Shape suffixes: ``W`` local workers, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.compress.base import Compressor
from shoal.parallel.algorithms.sync_sgd import (
    check_compressor,
    check_optimizer,
    check_reduce,
    compressed_mean,
    compressor_states,
)
from shoal.parallel.base import GradFn, OwnModel, State, check_period, sgd_direction
from shoal.parallel.comm import Comm


@dataclass(frozen=True)
class LocalSGD(OwnModel):
    """Periodic model averaging; ``period`` is the paper's ``H``."""

    lr: float
    period: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    compressor: Compressor | None = None
    reduce: str = "auto"
    name: str = "local_sgd"

    def __post_init__(self) -> None:
        check_optimizer("local_sgd", self.lr, self.momentum, self.weight_decay, self.nesterov)
        check_period("local_sgd: period (the averaging period H)", self.period)
        check_compressor("local_sgd", self.compressor)
        check_reduce("local_sgd", self.reduce, self.compressor)

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        state: State = {"momentum_WD": torch.zeros_like(params_WD)} if self.momentum else {}
        if self.compressor is not None:
            state.update(compressor_states(self.compressor, params_WD, comm, self.reduce))
            state["anchor_WD"] = params_WD.clone()  # x_sync: identical rows on every worker
        return state

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        direction_WD, m_WD = sgd_direction(
            grad_fn(params_WD),
            params_WD,
            state.get("momentum_WD"),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        params_WD = params_WD - self.lr * direction_WD
        state = dict(state)
        if m_WD is not None:
            state["momentum_WD"] = m_WD
        if (step + 1) % self.period == 0:
            if self.compressor is None:
                params_WD = comm.all_reduce_mean(params_WD)
            else:
                anchor_WD = state["anchor_WD"]
                mean_WD, state["compressor"] = compressed_mean(
                    self.compressor,
                    params_WD - anchor_WD,
                    state["compressor"],
                    comm,
                    state["reduce"],
                )
                params_WD = anchor_WD + mean_WD
                state["anchor_WD"] = params_WD
        return params_WD, state


def local_sgd(
    lr: float,
    period: int,
    momentum: float = 0.0,
    *,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    compressor: Compressor | None = None,
    reduce: str = "auto",
) -> LocalSGD:
    """Local SGD averaging the models every ``period`` (H) steps; with a ``compressor``,
    Qsparse-local-SGD (compressed model changes, see the module docstring; ``reduce`` as in
    :func:`shoal.parallel.sync_sgd`)."""
    return LocalSGD(lr, period, momentum, weight_decay, nesterov, compressor, reduce)
