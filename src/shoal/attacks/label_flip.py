"""Label flipping: a Byzantine client trains on ``y -> C - 1 - y``.

A data attack, not an update attack: the Byzantine client runs the honest algorithm on its own
data with every label ``y`` replaced by ``C - 1 - y`` (``9 - y`` on MNIST/CIFAR-10, as in the
epfml and MoNNA code; Allen-Zhu et al. 2021 and Karimireddy et al. 2021 use it). Apply it to the
labels of the Byzantine clients' shards before training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.checks import check_count
from shoal.data.types import check_labels


def flip_labels(y_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes - 1 - y``; checks that every label is an integer in ``[0, num_classes)``."""
    check_count(num_classes, "label_flip: num_classes", least=2)
    if y_B.is_floating_point() or y_B.is_complex() or y_B.dtype == torch.bool:
        raise TypeError(f"label_flip: labels must be an integer tensor, got {y_B.dtype}")
    check_labels(y_B.reshape(-1), num_classes, "label_flip: labels", "; check num_classes")
    return num_classes - 1 - y_B


@dataclass(frozen=True)
class LabelFlip:
    """Label flipping of the Byzantine clients' data; build it with :func:`label_flip`."""

    num_classes: int = 10

    def __post_init__(self) -> None:
        # 2.5 made float labels, "10" a TypeError in the first round.
        check_count(self.num_classes, "label_flip: num_classes", least=2)

    def __call__(self, y_B: torch.Tensor) -> torch.Tensor:
        return flip_labels(y_B, self.num_classes)


def label_flip(num_classes: int = 10) -> LabelFlip:
    """The label transform ``y -> num_classes - 1 - y`` for a Byzantine client's data."""
    return LabelFlip(num_classes=num_classes)
