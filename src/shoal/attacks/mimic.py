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

    def check_rounds(self, clients_per_round: int, num_byzantine: int, replace: bool) -> None:
        """Refuse a ``target`` past the honest updates of some attacked round of a federated
        run: it failed in the first such round, after the earlier ones had trained. A round of
        ``m`` clients holds as few as ``m - min(num_byzantine, m)`` honest ones (``1`` when
        drawn with replacement, which can draw a Byzantine client ``m - 1`` times); stragglers
        dropped can leave fewer, which the round then names."""
        if self.target is None:
            return
        most_bad = clients_per_round - 1 if replace else min(num_byzantine, clients_per_round)
        fewest = max(1, clients_per_round - most_bad)
        if not -fewest <= self.target < fewest:
            raise ValueError(
                f"mimic(target={self.target}) copies the target-th honest update of a round, "
                f"and a round of {clients_per_round} clients can hold {fewest} honest "
                f"update(s) when it samples Byzantine ones: use a target below {fewest}, or "
                "mimic(None)"
            )

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
