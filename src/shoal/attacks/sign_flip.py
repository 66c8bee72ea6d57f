"""Sign flipping.

Allen-Zhu, Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex Stochastic Gradient
Descent", ICLR 2021; the epfml code's "bit flipping" (a Byzantine worker sends ``-g`` for its own
gradient ``g``). Omniscient form, as in the MoNNA reference code (``attacks/signflipping.py``):
every Byzantine worker sends ``-scale * mean(honest)``, i.e. the flipped gradient of a typical
worker. ``scale = 1`` is the papers' attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shoal.attacks.base import check_attack, repeat
from shoal.checks import is_real


@dataclass(frozen=True)
class SignFlip:
    """Sign flipping of the honest mean; build it with :func:`sign_flip`."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        # NaN sent NaN rows (the run then "diverged"); a string failed at the first round.
        if not (is_real(self.scale) and math.isfinite(self.scale)):
            raise ValueError(f"sign_flip: scale must be a finite number, got {self.scale!r}")

    def __call__(self, honest_HD: torch.Tensor, f: int) -> torch.Tensor:
        check_attack(honest_HD, f, "sign_flip")
        return repeat(-self.scale * honest_HD.mean(dim=0), f)


def sign_flip(scale: float = 1.0) -> SignFlip:
    """Byzantine workers send ``-scale * mean(honest)``."""
    return SignFlip(scale=scale)
