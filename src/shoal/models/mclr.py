"""Multinomial logistic regression ("mclr").

The convex baseline of FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous
Networks", MLSys (arXiv:1812.06127), used there on MNIST and on the Synthetic(alpha, beta) data
(60 features, 10 classes: 610 parameters).

Shapes: ``B`` batch; the input is ``[B, ...]`` and is flattened to ``[B, in_features]``.
"""

from __future__ import annotations

from torch import nn

from shoal.checks import check_count
from shoal.models.split import BodyHead

__all__ = ["mclr"]


def mclr(in_features: int, num_classes: int) -> BodyHead:
    """Softmax regression: body = ``Flatten`` (no parameters), head = ``Linear``.

    Returns logits ``[B, num_classes]``; pair it with ``cross_entropy``.
    """
    check_count(in_features, "mclr: in_features")  # 5.0 failed inside torch
    check_count(num_classes, "mclr: num_classes")
    return BodyHead(nn.Flatten(), nn.Linear(in_features, num_classes))
