"""A Little Is Enough.

Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
Learning", NeurIPS 2019, Alg. 3: every Byzantine worker sends ``mu - z * sigma``, with ``mu`` and
``sigma`` the coordinate-wise mean and standard deviation of the honest updates. By default
``z`` is the epfml code's ``z_max`` (``codes/attacks/alittle.py``):

    s = floor(n/2 + 1) - f,    z_max = Phi^-1((n - f - s) / (n - f))

(``n`` workers in all, ``f`` of them Byzantine, ``Phi`` the standard normal CDF): the shift for
which ``s`` of the ``n - f`` honest workers are expected to lie farther from the mean than the
attackers. Alg. 3 of the paper takes the largest ``z`` with ``Phi(z) < (n - s) / n``, a larger
shift (0.47 instead of 0.25 at n = 25, f = 5); pass ``z=`` for it. The MoNNA code's ``little``
attack uses neither: it line-searches the factor against the aggregator. ``sigma`` is the
unbiased (``n - 1``) estimate, as in both codes. Where ``z_max`` is undefined (a Byzantine
majority among the round's sampled clients, or in a small gossip neighbourhood) or ``sigma``
is (one honest update), the attackers send the honest mean, with a warning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import torch

from shoal.attacks.base import check_attack, repeat
from shoal.checks import is_real


def alie_z(n: int, f: int) -> float:
    """``z_max`` for ``n`` workers of which ``f`` are Byzantine, as the epfml code computes it
    (``codes/attacks/alittle.py``): ``Phi^-1((n - f - s) / (n - f))``,
    ``s = floor(n/2 + 1) - f``. Baruch et al.'s Algorithm 3 itself uses
    ``Phi^-1((n - s) / n)`` (0.47 instead of 0.25 at n = 25, f = 5); pass ``z=`` for that."""
    s = math.floor(n / 2 + 1) - f
    p = (n - f - s) / (n - f) if n > f else float("nan")
    if not 0 < p < 1:
        raise ValueError(
            f"alie: z_max = Phi^-1((n-f-s)/(n-f)) is undefined for n={n}, f={f} "
            f"(s={s}); it needs n >= 3 and f < floor(n/2 + 1), or pass z= explicitly"
        )
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class ALittleIsEnough:
    """A Little Is Enough (ALIE); build it with :func:`alie`."""

    z: float | None = None
    """Shift in honest standard deviations; ``None``: ``alie_z(n, f)`` (epfml's ``z_max``)."""

    def __post_init__(self) -> None:
        if self.z is not None and not (is_real(self.z) and math.isfinite(self.z)):
            raise ValueError(f"alie: z must be a finite number or None, got {self.z!r}")

    def __call__(self, honest_HD: torch.Tensor, f: int) -> torch.Tensor:
        check_attack(honest_HD, f, "alie")
        if f == 0:
            return honest_HD[:0].clone()
        h, z = honest_HD.shape[0], self.z
        # A round of sampled clients (or a gossip neighbourhood) can hold a Byzantine
        # majority or a single honest update, where z_max or sigma is undefined: the
        # attackers then send the honest mean rather than stopping the run.
        if z is None:
            try:
                z = alie_z(h + f, f)
            except ValueError as e:
                warnings.warn(f"{e}; the attackers send the honest mean (z = 0)", stacklevel=2)
                z = 0.0
        mu = honest_HD.mean(dim=0)
        if h < 2:
            if z:
                warnings.warn(
                    "alie: one honest update has no standard deviation; the attackers send it",
                    stacklevel=2,
                )
            return repeat(mu, f)
        sigma = honest_HD.std(dim=0, correction=1)
        return repeat(mu - z * sigma, f)


def alie(z: float | None = None) -> ALittleIsEnough:
    """A Little Is Enough (Baruch et al. 2019): ``f`` copies of ``mean - z * std``."""
    return ALittleIsEnough(z=z)
