"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (Algorithm 1).

Each sampled client starts from the global model ``x``, runs local minibatch SGD, and uploads
``delta_k = y_k - x``; the server sets ``x <- x + sum_k p_k delta_k`` with ``p_k = n_k / sum n``
over the sampled clients (the aggregation weights are the runtime's business). This equals the
paper's ``x <- sum_k p_k y_k`` in exact arithmetic; the delta form is what compressors, robust
aggregators and server optimizers (FedOpt) act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.algorithms.base import StatelessClient, apply_mean_delta, check_lr


@dataclass(frozen=True)
class FedAvg(StatelessClient):
    """FedAvg's client and server rules; build it with :func:`fedavg`."""

    lr: float
    name: str = "fedavg"

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)

    server_update = staticmethod(apply_mean_delta)


def fedavg(lr: float) -> FedAvg:
    """FedAvg with client learning rate ``lr`` (local work is set by :class:`LocalWork`)."""
    return FedAvg(lr=lr)
