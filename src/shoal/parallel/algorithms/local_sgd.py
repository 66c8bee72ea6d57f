"""Local SGD: independent SGD steps, models averaged every ``H`` steps.

Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019; Lin, Stich, Patel,
Jaggi, "Don't Use Large Mini-Batches, Use Local SGD", ICLR 2020. Every worker takes
``torch.optim.SGD`` steps on its own minibatches (momentum buffers stay local, as in Lin et
al.'s code), and after every ``H``-th step (steps ``H, 2H, ...``) all models are replaced by
their average with an all-reduce. ``H = 1`` is synchronous SGD with model averaging, which
for plain SGD equals gradient averaging.

Shape suffixes: ``W`` local workers, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.parallel.algorithms.sync_sgd import check_optimizer
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
    name: str = "local_sgd"

    def __post_init__(self) -> None:
        check_optimizer("local_sgd", self.lr, self.momentum, self.weight_decay)
        check_period("local_sgd: the averaging period H", self.period)
        if self.nesterov and not self.momentum:
            raise ValueError("local_sgd: nesterov=True needs momentum > 0")

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        return {"momentum_WD": torch.zeros_like(params_WD)} if self.momentum else {}

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
        if (step + 1) % self.period == 0:
            params_WD = comm.all_reduce_mean(params_WD)
        return params_WD, ({"momentum_WD": m_WD} if m_WD is not None else state)


def local_sgd(
    lr: float,
    period: int,
    momentum: float = 0.0,
    *,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> LocalSGD:
    """Local SGD averaging the models every ``period`` (H) steps."""
    return LocalSGD(lr, period, momentum, weight_decay, nesterov)
