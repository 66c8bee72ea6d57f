"""Mimic.

Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing",
ICLR 2022, Sec. 3 / App.: all Byzantine workers copy one honest worker, over-representing its
(non-iid) data without ever looking like an outlier.

``target=i`` copies the ``i``-th honest update of the round (the MoNNA reference code's
``mimic.py`` copies worker 0, its workers being fixed). In a federated round that is the
``i``-th honest message of the server's inbox, which every runtime orders alike
(:func:`shoal.runtime.base.inbox_order`: most local steps first, then the sampling order), so
with client sampling the client copied changes from round to round. ``target=None`` picks,
each round, the honest worker most extreme along the top principal direction of the honest
updates, ``argmax_i |<z, x_i - mean>|``. The paper estimates ``z`` over a warm-up phase of
several rounds (``mimic_heuristic.py`` in the MoNNA code); here it is estimated from the
current round alone, which needs no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.attacks.base import check_attack, repeat
from shoal.checks import is_integer


def most_extreme(honest_HD: torch.Tensor) -> int:
    """Index of the honest row farthest from the mean along the top principal direction."""
    x = honest_HD.reshape(honest_HD.shape[0], -1).to(torch.float64)
    centered = x - x.mean(dim=0)
    # The top right-singular vector z of the centered rows; |<z, c_i>| = |u_i| * s_1.
    _, vecs = torch.linalg.eigh(centered @ centered.T)
    return int(vecs[:, -1].abs().argmax())


@dataclass(frozen=True)
class Mimic:
    """The mimic attack (copy one honest client); build it with :func:`mimic`."""

    target: int | None = 0

    def __post_init__(self) -> None:
        # True indexed as 1 and gave rows of another shape; 1.5 failed in the first round.
        if self.target is not None and not is_integer(self.target):
            raise ValueError(f"mimic: target must be an integer or None, got {self.target!r}")

    def __call__(self, honest_HD: torch.Tensor, f: int) -> torch.Tensor:
        check_attack(honest_HD, f, "mimic")
        h = honest_HD.shape[0]
        if self.target is None:
            i = most_extreme(honest_HD)
        elif -h <= self.target < h:
            i = self.target
        else:
            raise ValueError(f"mimic: target={self.target} but there are {h} honest updates")
        return repeat(honest_HD[i], f)


def mimic(target: int | None = 0) -> Mimic:
    """Byzantine workers copy the ``target``-th honest update (``None``: the most extreme)."""
    return Mimic(target=target)
