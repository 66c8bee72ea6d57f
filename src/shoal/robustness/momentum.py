"""Worker momentum: the data-parallel setting of the Byzantine-robustness literature.

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021,
Alg. 2 (and MoNNA, Farhadkhani et al. 2023, in its server form): every round each worker
computes one minibatch gradient ``g_i`` at the global model, updates its own momentum
``m_i <- beta m_i + (1 - beta) g_i`` and sends it; the server sets ``x <- x - lr * Agg(m)``.
Momentum is taken **before** aggregation, on the worker, so the aggregator compares
averages of about ``1 / (1 - beta)`` gradients instead of single noisy ones: that variance
reduction is what the paper shows robust rules need. (Server-side momentum, FedAvgM on the
aggregate, leaves every aggregator input a single gradient.)

As a federated :class:`~shoal.algorithms.base.Algorithm`: one local SGD step of ``lr``
(``work_override``), the gradient read back as ``(x - y) / lr``, and the message
``delta = -lr * m_i`` (parameter units, like FedAvg's deltas, so robust rules, attacks and
radii see what moves the model). Each client's momentum is its client state.

Shape suffixes: ``W`` clients of a chunk, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.algorithms.base import LocalWork, apply_mean_delta, check_lr
from shoal.types import ClientState, Message, ServerState


@dataclass(frozen=True)
class WorkerMomentum:
    """Worker momentum as a federated algorithm; build it with :func:`worker_momentum`."""

    lr: float
    momentum: float = 0.9
    batch_size: int = 32
    name: str = "worker_momentum"

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    @property
    def work_override(self) -> LocalWork:
        """Exactly one minibatch gradient per client per round."""
        return LocalWork(epochs=1, batch_size=self.batch_size, steps=1)

    def server_init(self, params_D: torch.Tensor) -> ServerState:
        return {}

    def client_init(self, params_D: torch.Tensor) -> ClientState:
        return {"momentum": torch.zeros_like(params_D)}

    def download(self, params_D: torch.Tensor, server: ServerState) -> Message:
        return {"params": params_D}

    def correction(
        self, params_WD: torch.Tensor, down: Message, client: ClientState
    ) -> torch.Tensor | None:
        return None

    def upload(
        self, params_WD: torch.Tensor, down: Message, client: ClientState, steps_W1: torch.Tensor
    ) -> tuple[Message, ClientState]:
        # g = (x - y) / lr, read back from the one local step, folded into the update:
        # m <- beta m + ((1 - beta) / lr) (x - y).
        step_WD = down["params"] - params_WD
        m_WD = torch.add(
            client["momentum"] * self.momentum, step_WD, alpha=(1 - self.momentum) / self.lr
        )
        return {"delta": m_WD.mul(-self.lr)}, {"momentum": m_WD}

    server_update = staticmethod(apply_mean_delta)


def worker_momentum(lr: float, momentum: float = 0.9, batch_size: int = 32) -> WorkerMomentum:
    """One gradient step per round with worker-side momentum (Karimireddy et al. 2021)."""
    return WorkerMomentum(lr, momentum, batch_size)
