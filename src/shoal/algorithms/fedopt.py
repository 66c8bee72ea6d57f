"""Server optimizers: FedAvgM, FedAdagrad, FedAdam and FedYogi.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2); FedAvgM is the
server-momentum baseline they compare against (Hsu, Qi and Brown, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification", 2019).

Clients run FedAvg's local SGD and upload ``delta_k = y_k - x``. The server treats the mean
``Delta`` of the deltas as a pseudo-gradient step (it already points downhill) and applies its
own optimizer with learning rate ``eta = server_lr``::

    FedAvgM     m <- beta * m + Delta                              x <- x + eta * m
    FedAdagrad  m <- b1 * m + (1 - b1) * Delta    v <- v + Delta^2
    FedAdam     (same m)                          v <- b2 * v + (1 - b2) * Delta^2
    FedYogi     (same m)                          v <- v - (1 - b2) * Delta^2 * sign(v - Delta^2)
                                                  x <- x + eta * m / (sqrt(v) + tau)

FedAvgM with ``beta = 0`` and ``eta = 1`` is FedAvg bit for bit (``0 * m + Delta`` and
``1 * m`` are exact in floating point).

Defaults follow the authors' code (google-research/federated,
``optimization/docs/hyperparameters.md``): Keras defaults ``b1 = 0.9``, ``b2 = 0.999`` for
FedAdam and FedYogi, ``tau = 1e-3`` recommended, accumulators starting at 0, FedAvgM momentum
0.9. Keras' Adagrad has no momentum, so FedAdagrad defaults to ``b1 = 0``.

``bias_correction=False`` is Algorithm 2 as printed. ``True`` is what that code ran (Keras Adam
and its Yogi): the step size becomes ``eta * sqrt(1 - b2^t) / (1 - b1^t)`` at server round
``t`` with ``tau`` left unscaled (the "epsilon hat" form of Kingma & Ba, Section 2). For
FedAdagrad ``v`` is a sum, not an average, so only the momentum's ``1 / (1 - b1^t)`` applies.

Deviations: Algorithm 2 averages the deltas with a plain mean over the sampled clients; here
the mean uses the run's aggregation weights (``n_k`` by default, ``weighting="uniform"`` for
the paper's). Algorithm 2 starts ``v`` at ``v_{-1} >= tau^2``; the authors' code, and this
one, at 0. A step is then up to 2x larger where ``|Delta|`` is not well above
``tau / sqrt(1 - b2)`` (~32 ``tau`` at ``b2 = 0.999``), and the offset fades only as ``b2^t``:
FedAdam with ``|Delta| = tau`` steps 1.9x, 1.5x and 1.2x the paper's at rounds 1, 100 and
500, at ``10 tau`` 1.6x, 1.04x and 1.01x. FedAdagrad's ``v`` is a sum, so there its
``tau^2`` offset never fades.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from shoal.algorithms.base import StatelessClient, check_lr
from shoal.checks import check_flag, is_real
from shoal.types import Message, ServerState


def _check_decay(name: str, value: float) -> None:
    if not (is_real(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class FedAvgM(StatelessClient):
    """FedAvg with server momentum; build it with :func:`fedavgm`."""

    lr: float
    server_lr: float = 1.0
    momentum: float = 0.9
    name: str = "fedavgm"

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)
        check_lr("server_lr", self.server_lr)
        _check_decay("momentum", self.momentum)

    @staticmethod
    def server_init(params_D: torch.Tensor) -> ServerState:
        return {"m": torch.zeros_like(params_D)}

    def server_update(
        self,
        params_D: torch.Tensor,
        server: ServerState,
        mean_msg: Message,
        num_sampled: int,
        num_clients: int,
        weight_share: float,
    ) -> tuple[torch.Tensor, ServerState]:
        m_D = self.momentum * server["m"] + mean_msg["delta"]
        return params_D + self.server_lr * m_D, {"m": m_D}


def _adaptive_init(params_D: torch.Tensor) -> ServerState:
    zeros = torch.zeros_like(params_D)
    return {
        "m": zeros,
        "v": zeros.clone(),
        "t": torch.zeros((), dtype=torch.int64, device=params_D.device),
    }


def _adaptive_step(
    params_D: torch.Tensor,
    server: ServerState,
    delta_D: torch.Tensor,
    v_D: torch.Tensor,
    *,
    server_lr: float,
    beta1: float,
    beta2: float | None,
    tau: float,
    bias_correction: bool,
) -> tuple[torch.Tensor, ServerState]:
    """The part of Algorithm 2 shared by the three methods, given the new ``v``.

    ``beta2`` is ``None`` when ``v`` is a running sum (Adagrad) and has no bias to correct.
    """
    m_D = beta1 * server["m"] + (1.0 - beta1) * delta_D
    t = server["t"] + 1
    eta = server_lr
    if bias_correction:
        step = int(t)
        eta = eta / (1.0 - beta1**step)
        if beta2 is not None:
            eta = eta * math.sqrt(1.0 - beta2**step)
    params_D = params_D + eta * m_D / (v_D.sqrt() + tau)
    return params_D, {"m": m_D, "v": v_D, "t": t}


def _check_adaptive(
    lr: float, server_lr: float, beta1: float, beta2: float, tau: float, bias_correction: bool
) -> None:
    check_lr("lr", lr)
    check_lr("server_lr", server_lr)
    _check_decay("beta1", beta1)
    _check_decay("beta2", beta2)
    # tau > 0 keeps the first steps finite where Delta (hence v) is exactly zero.
    check_lr("tau", tau)
    # Only a bool: any non-empty string, "false" too, would have switched the correction on.
    check_flag(bias_correction, "bias_correction")


class _AdaptiveServer(StatelessClient, ABC):
    """What FedAdagrad, FedAdam and FedYogi share; they differ only in ``second_moment``."""

    server_lr: float
    beta1: float
    tau: float
    bias_correction: bool

    @staticmethod
    def server_init(params_D: torch.Tensor) -> ServerState:
        return _adaptive_init(params_D)

    @abstractmethod
    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """The new second-moment estimate from the old one and ``Delta**2``."""

    def server_update(
        self,
        params_D: torch.Tensor,
        server: ServerState,
        mean_msg: Message,
        num_sampled: int,
        num_clients: int,
        weight_share: float,
    ) -> tuple[torch.Tensor, ServerState]:
        delta = mean_msg["delta"]
        return _adaptive_step(
            params_D,
            server,
            delta,
            self.second_moment(server["v"], delta * delta),
            server_lr=self.server_lr,
            beta1=self.beta1,
            beta2=getattr(self, "beta2", None),
            tau=self.tau,
            bias_correction=self.bias_correction,
        )


@dataclass(frozen=True)
class FedAdagrad(_AdaptiveServer):
    """FedAvg with an Adagrad server step; build it with :func:`fedadagrad`."""

    lr: float
    server_lr: float
    beta1: float = 0.0
    tau: float = 1e-3
    bias_correction: bool = False
    name: str = "fedadagrad"

    def __post_init__(self) -> None:
        _check_adaptive(self.lr, self.server_lr, self.beta1, 0.0, self.tau, self.bias_correction)

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v + d2


@dataclass(frozen=True)
class FedAdam(_AdaptiveServer):
    """FedAvg with an Adam server step; build it with :func:`fedadam`."""

    lr: float
    server_lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    tau: float = 1e-3
    bias_correction: bool = False
    name: str = "fedadam"

    def __post_init__(self) -> None:
        _check_adaptive(
            self.lr, self.server_lr, self.beta1, self.beta2, self.tau, self.bias_correction
        )

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1.0 - self.beta2) * d2


@dataclass(frozen=True)
class FedYogi(_AdaptiveServer):
    """FedAvg with a Yogi server step; build it with :func:`fedyogi`."""

    lr: float
    server_lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    tau: float = 1e-3
    bias_correction: bool = False
    name: str = "fedyogi"

    def __post_init__(self) -> None:
        _check_adaptive(
            self.lr, self.server_lr, self.beta1, self.beta2, self.tau, self.bias_correction
        )

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        # Yogi moves v towards Delta^2 by an additive (1 - b2) * Delta^2, never multiplicatively.
        return v - (1.0 - self.beta2) * d2 * torch.sign(v - d2)


def fedavgm(lr: float, server_lr: float = 1.0, momentum: float = 0.9) -> FedAvgM:
    """FedAvg with server momentum: ``m <- momentum * m + Delta``, ``x <- x + server_lr * m``."""
    return FedAvgM(lr=lr, server_lr=server_lr, momentum=momentum)


def fedadagrad(
    lr: float,
    server_lr: float,
    beta1: float = 0.0,
    tau: float = 1e-3,
    bias_correction: bool = False,
) -> FedAdagrad:
    """FedAdagrad (Reddi et al. 2021, Algorithm 2); client ``lr``, server ``server_lr``."""
    return FedAdagrad(lr, server_lr, beta1, tau, bias_correction)


def fedadam(
    lr: float,
    server_lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    tau: float = 1e-3,
    bias_correction: bool = False,
) -> FedAdam:
    """FedAdam (Reddi et al. 2021, Algorithm 2); client ``lr``, server ``server_lr``."""
    return FedAdam(lr, server_lr, beta1, beta2, tau, bias_correction)


def fedyogi(
    lr: float,
    server_lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    tau: float = 1e-3,
    bias_correction: bool = False,
) -> FedYogi:
    """FedYogi (Reddi et al. 2021, Algorithm 2); client ``lr``, server ``server_lr``."""
    return FedYogi(lr, server_lr, beta1, beta2, tau, bias_correction)
