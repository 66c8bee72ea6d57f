"""What an honest node receives from its Byzantine in-neighbours.

The threat model and the attacks are described in
:mod:`shoal.parallel.algorithms.robust_gossip`: every update attack of :mod:`shoal.attacks`
acts on the displacements ``x_k - x_i`` of the receiver's honest neighbourhood, and
:class:`Dissensus` is He et al. (2022)'s attack on gossip. ALIE's ``z_max`` is computed from
the receiver's neighbourhood (its honest rows and Byzantine in-neighbours), what an attacker
forging per receiver would use; the ClippedGossip authors' code uses the global ``(n, f)``.
Mimic copies one of the receiver's honest in-neighbours (``target``-th in neighbour order),
not the receiver itself.

Shape suffixes: ``H`` honest rows (the receiver's own included), ``K`` honest in-neighbours,
``F`` Byzantine in-neighbours, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shoal.attacks import Attack, GaussianNoise, Mimic
from shoal.attacks.base import check_attack, repeat


@dataclass(frozen=True)
class Dissensus:
    """He et al. 2022's dissensus attack: every Byzantine neighbour ``j`` of ``i`` sends
    ``x_i - eps * sum_k W_ik (x_k - x_i) / sum_j W_ij`` (``k`` honest, ``j`` Byzantine
    in-neighbours), which cancels (``eps = 1``) or reverses (``eps > 1``) the honest pull of
    plain gossip. The default ``eps = 1.5`` is ours, not the paper's. As a plain
    :class:`~shoal.attacks.Attack` (uniform weights) it sends ``-eps * sum(honest) / f``."""

    eps: float = 1.5

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < float("inf")):
            raise ValueError(f"dissensus: eps must be a positive number, got {self.eps!r}")

    def __call__(self, honest_HD: torch.Tensor, f: int) -> torch.Tensor:
        check_attack(honest_HD, f, "dissensus")
        return repeat(-self.eps * honest_HD.sum(0) / max(f, 1), f)

    def weighted(
        self, diff_HD: torch.Tensor, w_H: torch.Tensor, w_byz: float, f: int
    ) -> torch.Tensor:
        """The paper's form: ``diff_HD`` honest neighbours' displacements, ``w_H`` their
        weights, ``w_byz`` the Byzantine neighbours' total weight."""
        pull_D = (w_H[:, None] * diff_HD).sum(0)
        return repeat(-self.eps * pull_D / w_byz, f)


def dissensus(eps: float = 1.5) -> Dissensus:
    """He et al. 2022's dissensus attack on gossip (see :class:`Dissensus`)."""
    return Dissensus(eps)


def _seeded(seed: int, step: int, node: int) -> torch.Generator:
    key = np.random.SeedSequence([seed, step, node]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(key))


def forge(
    attack: Attack,
    own_D: torch.Tensor,
    honest_KD: torch.Tensor,
    w_K: torch.Tensor,
    w_byz: float,
    f: int,
    step: int,
    receiver: int,
) -> torch.Tensor:
    """The ``f`` models a receiver gets from its Byzantine in-neighbours, ``[F, D]``
    (``honest_KD``: its honest in-neighbours' models, ``w_K`` their weights)."""
    diff_KD = honest_KD - own_D
    if isinstance(attack, Dissensus):
        return own_D + attack.weighted(diff_KD, w_K, w_byz, f)
    diff_HD = torch.cat([torch.zeros_like(own_D)[None], diff_KD])  # the receiver's own: 0
    if isinstance(attack, GaussianNoise):
        noise = attack(diff_HD, f, generator=_seeded(attack.seed, step, receiver))
        return own_D + noise
    if isinstance(attack, Mimic) and len(diff_KD):
        # Copy an honest in-neighbour: row 0 of diff_HD is the receiver's own model, and
        # mimic(0) sent each receiver that, a lazy node rather than a copy of an honest one.
        return own_D + attack(diff_KD, f)
    return own_D + attack(diff_HD, f)
