"""Inner Product Manipulation.

Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
Manipulation", UAI 2019 / PMLR 2020: every Byzantine worker sends ``-eps * mean(honest)``, so a
rule that lets it through makes the inner product of the aggregate with the true gradient
negative. ``eps = 0.1`` as in the epfml code (``utils.py``); the MoNNA code's ``empire`` uses
``eps = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.attacks.base import check_attack, repeat
from shoal.checks import check_number


@dataclass(frozen=True)
class InnerProductManipulation:
    """Inner product manipulation (IPM); build it with :func:`ipm`."""

    eps: float = 0.1

    def __post_init__(self) -> None:
        # inf sent inf rows; True was 1; "0.1" failed in the comparison.
        check_number(self.eps, "ipm: eps", positive=True)

    def __call__(self, honest_HD: torch.Tensor, f: int) -> torch.Tensor:
        check_attack(honest_HD, f, "ipm")
        return repeat(-self.eps * honest_HD.mean(dim=0), f)


def ipm(eps: float = 0.1) -> InnerProductManipulation:
    """Inner Product Manipulation (Xie et al.): ``f`` copies of ``-eps * mean(honest)``."""
    return InnerProductManipulation(eps=eps)
