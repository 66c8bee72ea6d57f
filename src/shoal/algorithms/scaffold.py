"""SCAFFOLD: Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020 (Algorithm 1 with control-variate update option II).

State: a server control variate ``c`` and one per client, ``c_k``, all starting at zero (a
client's is created on its first participation). A round, with ``x`` the global model::

    download      x and c                                   (2x the model down)
    local step    y <- y - lr * (g_k(y) - c_k + c)
    after K steps c_k+ = c_k - c + (x - y) / (K * lr)        (option II)
    upload        delta_y = y - x,  delta_c = c_k+ - c_k     (2x the model up); c_k <- c_k+
    server        x <- x + lr_global * mean(delta_y)
                  c <- c + share * mean(delta_c),  share = sum_S w_k / sum_all w_k

``K`` is the number of local steps *that client* took (``steps_W1``), so clients doing unequal
work (epochs over unequal datasets, stragglers) each get a consistent ``c_k+``.

Deviation: the paper averages ``delta_y`` and ``delta_c`` with a plain mean over the sampled
set ``S`` and scales by ``|S| / N``; here "mean" is whatever the run aggregates with
(``TrainConfig.weighting``: ``w_k = n_k`` by default, ``"uniform"`` for the paper's plain
mean, where ``share = |S| / N``), and ``share`` is the sampled clients' part of the whole
population's weight. So ``c = sum_k w_k c_k / sum_k w_k`` over all clients (the never-sampled
ones at zero) under any participation, the mean the model updates are averaged with (with
``|S| / N`` under ``n_k`` weights ``c`` was neither mean: 45% off on a small partial run).
Control variates cover the trainable parameters only (the flat vector), as in the paper.

A lossy uplink (a compressor on ``delta_c``): the server's ``c`` grows by what it decodes, so
each client keeps as its ``c_k`` the old one plus the decoded ``delta_c`` (the runtime's
``tracks``), not the exact ``c_k+``; otherwise the two sides drift apart and the corrections
``c - c_k`` stop summing to zero (with top-k 10% and no error feedback the drift outgrew
``c``). Option II's ``delta_c = mean_t g_t - c_k`` is then EF21's step (Richtarik et al.,
NeurIPS 2021): it carries whatever earlier messages dropped, so ``delta_c`` is sent without
error feedback; ``delta_y`` keeps the run's error feedback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch

from shoal.algorithms.base import check_lr
from shoal.types import ClientState, Message, ServerState


@dataclass(frozen=True)
class Scaffold:
    """SCAFFOLD (option II) with control variates; build it with :func:`scaffold`."""

    lr: float
    server_lr: float = 1.0
    name: str = "scaffold"
    # The client's c_k is the sum of the delta_c the server decoded (see the module docstring).
    tracks: ClassVar[Mapping[str, str]] = MappingProxyType({"delta_c": "c"})

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)
        check_lr("server_lr", self.server_lr)

    def server_init(self, params_D: torch.Tensor) -> ServerState:
        return {"c": torch.zeros_like(params_D)}

    def client_init(self, params_D: torch.Tensor) -> ClientState:
        return {"c": torch.zeros_like(params_D)}

    def download(self, params_D: torch.Tensor, server: ServerState) -> Message:
        return {"params": params_D, "c": server["c"]}

    def correction(
        self, params_WD: torch.Tensor, down: Message, client: ClientState
    ) -> torch.Tensor | None:
        # The local step is y <- y - lr * (g - c_k + c); the runtime adds the gradient itself.
        return down["c"] - client["c"]

    def upload(
        self, params_WD: torch.Tensor, down: Message, client: ClientState, steps_W1: torch.Tensor
    ) -> tuple[Message, ClientState]:
        x_D, c_D, c_WD = down["params"], down["c"], client["c"]
        # (x - y) / (K lr) = mean_t g_t - c_k + c, so option II makes c_k+ the mean local
        # gradient along this round's trajectory, at no extra gradient evaluation.
        c_new_WD = c_WD - c_D + (x_D - params_WD) / (steps_W1 * self.lr)
        msg = {"delta": params_WD - x_D, "delta_c": c_new_WD - c_WD}
        return msg, {"c": c_new_WD}

    def server_update(
        self,
        params_D: torch.Tensor,
        server: ServerState,
        mean_msg: Message,
        num_sampled: int,
        num_clients: int,
        weight_share: float,
    ) -> tuple[torch.Tensor, ServerState]:
        params_D = params_D + self.server_lr * mean_msg["delta"]
        c_D = server["c"] + weight_share * mean_msg["delta_c"]
        return params_D, {"c": c_D}


def scaffold(lr: float, server_lr: float = 1.0) -> Scaffold:
    """SCAFFOLD (option II) with client learning rate ``lr`` and global step ``server_lr``.

    The paper's experiments use ``server_lr = 1``.
    """
    return Scaffold(lr=lr, server_lr=server_lr)
