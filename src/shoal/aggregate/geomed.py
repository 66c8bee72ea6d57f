"""Geometric median by the smoothed Weiszfeld algorithm (RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE Trans. Signal
Processing 2022 (RFA, Alg. 2): the weighted geometric median
``argmin_z sum_i alpha_i ||z - x_i||`` is approached by

    z <- sum_i beta_i x_i / sum_i beta_i,    beta_i = alpha_i / max(nu, ||z - x_i||)

where ``nu > 0`` smooths the objective near the data points (so no division by zero). We start
from the weighted mean, as RFA does, and stop after ``max_iter`` steps or once a step moves ``z``
by at most ``tol`` times the median distance from ``z`` to the inputs. RFA instead stops when
the objective improves by less than ``ftol`` times its value; a few far-away Byzantine inputs
make that objective huge, so the relative test fires while ``z`` is still far from the honest
points (seen in our tests). The median distance is a scale the honest majority sets. The epfml
reference starts from ``z = 0`` with ``T = 8``, ``nu = 0.1``; same fixed point.

Weights: **used** as RFA's ``alpha_i`` (non-negative, positive sum; pass equal weights for the
unweighted median). Requirement: ``f < n/2`` for robustness; it cannot be checked without ``f``.
Shapes: ``N`` inbox rows, ``D`` flat parameters. Cost: O(N D) per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.aggregate._common import as_matrix, positive_weights, row_norms
from shoal.checks import check_count, check_number


@dataclass(frozen=True)
class GeometricMedian:
    """Smoothed Weiszfeld iterations; see the module docstring."""

    nu: float = 1e-6
    max_iter: int = 100
    tol: float = 1e-6
    linear: bool = False

    def __post_init__(self) -> None:
        check_number(self.nu, "geometric_median: nu", positive=True)
        check_count(self.max_iter, "geometric_median: max_iter")
        check_number(self.tol, "geometric_median: tol", positive=False)

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        x_ND, shape = as_matrix(inbox_ND, weights_N, "geometric_median")
        alpha = positive_weights(weights_N, "geometric_median").to(x_ND.device, x_ND.dtype)
        alpha = alpha / alpha.sum()
        z = alpha @ x_ND
        for _ in range(self.max_iter):
            # row_norms, not .norm(): a float32 norm overflows on a huge but finite Byzantine
            # row, and inf distances made every beta 0 and z 0/0 = NaN. Distances beyond
            # float32 come back in float64; the normalised betas fit x's dtype again.
            dist = row_norms(x_ND, z)
            beta = alpha.to(dist.dtype) / dist.clamp_min(self.nu)
            z, previous = (beta / beta.sum()).to(x_ND.dtype) @ x_ND, z
            scale = row_norms(x_ND, z).median()
            if bool(row_norms(previous[None], z)[0] <= self.tol * scale):
                break
        return z.reshape(shape)


def geometric_median(nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-6) -> GeometricMedian:
    """Weighted geometric median by smoothed Weiszfeld (RFA, Pillutla et al. 2022)."""
    return GeometricMedian(nu=nu, max_iter=max_iter, tol=tol)
