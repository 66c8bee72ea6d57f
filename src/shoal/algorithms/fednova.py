"""FedNova: Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020 (Section 4; official code ``distoptim/FedNova.py``).

With unequal local work, FedAvg weights a client by how many steps it took and so minimizes
a surrogate objective ``sum_i p_i tau_i F_i / sum_i p_i tau_i``, not ``sum_i p_i F_i``. FedNova
normalizes each update by its client's work before averaging. For plain local SGD the
normalizer is ``a_i = ||a_i||_1 = tau_i``, the client's number of steps::

    upload   d_i = (y_i - x) / tau_i   and   tau_i          (one extra scalar)
    server   tau_eff = sum_i p_i tau_i
             x <- x + tau_eff * sum_i p_i d_i

Both sums are the weighted means the runtime delivers (``p_i = n_i / sum n`` over the clients
that report, by default). Heterogeneous local work comes from
``LocalWork(min_epochs=...)``, unequal dataset sizes, or :class:`shoal.schedule.Stragglers`.

Deviations: only plain local SGD is covered (the code's momentum and proximal normalizers
``a_i`` are not implemented), and the optional server momentum (``gmf``) is omitted. The paper
states ``p_i`` over all clients under full participation; with client sampling we use the
weights over the sampled set.

Under error feedback the residual is kept in the message's units, per local step (``d_i``),
and whatever a later round sends of it is scaled by that round's ``tau_eff``. Over rounds the
applied updates add up to the computed ones when ``tau_eff`` stays the same (many clients per
round average it out, however each client's ``tau_i`` varies); with few clients and changing
work they do not: one client taking 10 steps and then 1 has a dropped ``-3`` (``-0.3`` per
step) arrive as ``-0.3``. A residual in model units would be exact in that case and off by
``tau_i'/tau_i`` in the many-client one, FedNova's setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from shoal.algorithms.base import StatelessClient, check_lr
from shoal.types import ClientState, Message, ServerState


@dataclass(frozen=True)
class FedNova(StatelessClient):
    """FedNova's normalized averaging; build it with :func:`fednova`."""

    lr: float
    name: str = "fednova"
    statistics: ClassVar[frozenset[str]] = frozenset({"tau"})  # sent as it is, never attacked

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)

    @staticmethod
    def upload(
        params_WD: torch.Tensor, down: Message, client: ClientState, steps_W1: torch.Tensor
    ) -> tuple[Message, ClientState]:
        # steps_W1 >= 1: a client that took no step is a dropped straggler and never uploads.
        normalized = (params_WD - down["params"]) / steps_W1
        return {"normalized_delta": normalized, "tau": steps_W1}, client

    def server_update(
        self,
        params_D: torch.Tensor,
        server: ServerState,
        mean_msg: Message,
        num_sampled: int,
        num_clients: int,
        weight_share: float,
    ) -> tuple[torch.Tensor, ServerState]:
        tau_eff = mean_msg["tau"]  # [1]: sum_i p_i tau_i
        return params_D + tau_eff * mean_msg["normalized_delta"], server


def fednova(lr: float) -> FedNova:
    """FedNova for plain local SGD with client learning rate ``lr``."""
    return FedNova(lr=lr)
