"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020
(Algorithm 2; the local objective is Eq. (2), ``h_k(w; w^t) = F_k(w) + mu/2 ||w - w^t||^2``).

Each local step is a gradient step on the proximal objective::

    w <- w - lr * (grad F_k(w) + mu * (w - w^t))      (the correction is mu * (w - w^t))

exactly as ``flearn/optimizer/pgd.py`` of the official code does; the server is FedAvg's
(``x <- x + sum_k p_k delta_k``, weights ``n_k`` over the clients that report).

FedProx's other half, *keeping the partial work of stragglers* instead of dropping them, is
not an algorithm matter: it is :class:`shoal.schedule.Stragglers` (``drop=False`` for FedProx,
``drop=True`` for the paper's FedAvg baseline). So FedProx with ``mu = 0`` and stragglers kept
is already different from that baseline, as in the paper.

Deviation: the paper allows any ``gamma``-inexact local solver; like the official code, we run
the configured number of SGD steps (:class:`shoal.algorithms.base.LocalWork`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shoal.algorithms.base import StatelessClient, apply_mean_delta, check_lr
from shoal.checks import is_real
from shoal.types import ClientState, Message


@dataclass(frozen=True)
class FedProx(StatelessClient):
    """FedProx's proximal local steps; build it with :func:`fedprox`."""

    lr: float
    mu: float
    name: str = "fedprox"

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)
        if not (is_real(self.mu) and 0.0 <= self.mu < math.inf):
            raise ValueError(
                f"mu must be a finite number >= 0 (0 gives plain local SGD), got {self.mu!r}"
            )

    # StatelessClient's default is a staticmethod; this one needs ``self.mu``.
    def correction(  # type: ignore[override]
        self, params_WD: torch.Tensor, down: Message, client: ClientState
    ) -> torch.Tensor | None:
        if self.mu == 0.0:
            return None  # plain local SGD: spare the runtime a full-size pass per step
        # down["params"] is the round's global model w^t, [D], broadcast over the W rows.
        return self.mu * (params_WD - down["params"])

    server_update = staticmethod(apply_mean_delta)


def fedprox(lr: float, mu: float) -> FedProx:
    """FedProx with client learning rate ``lr`` and proximal coefficient ``mu >= 0``.

    The paper tunes ``mu`` over ``{0.001, 0.01, 0.1, 0.5, 1}`` (``mu = 1`` on Synthetic).
    """
    return FedProx(lr=lr, mu=mu)
