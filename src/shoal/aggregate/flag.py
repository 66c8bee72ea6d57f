"""Flag Aggregator.

Almasi, Mishra, Vamanan, Ravi, "Flag Aggregator: Scalable Distributed
Training under Failures and Augmented Losses using Convex Optimization", ICLR 2024; official
code ``hamidralmasi/FlagAggregator`` (``aggregators/flag.py``, ``center_algorithms_torch.py``).

Each input is normalised, ``u_i = x_i / ||x_i||``. The flag median is the ``r``-dimensional
subspace ``Y`` (orthonormal ``[D, r]``) minimising

    F(Y) = sum_i sqrt(s_i + eps) + lam / (n (n-1)) * sum_{i != j} sqrt(s_ij + eps),
    s_i  = 1 - ||Y^T u_i||^2                  (sin^2 of the angle between u_i and Y)
    s_ij = ||u_i - u_j||^2 - ||Y^T (u_i - u_j)||^2   (what Y loses of a pair's difference)

found by IRLS (FlagIRLS): with weights ``a = (s + eps)^(-1/2)`` from the current ``Y``, the next
``Y`` is the top-``r`` eigenspace of ``sum_i a_i u_i u_i^T + lam/(n(n-1)) sum_{i!=j} a_ij d_ij
d_ij^T`` (``d_ij = u_i - u_j``). Each step is a majorize-minimize step of ``F`` (``sqrt`` is
concave), so ``F`` never increases. The output is the official code's
``(1/r) sum_i Y Y^T u_i``: built from *normalised* inputs, so the magnitude of the result reflects
agreement with ``Y`` (up to ``n / r``), not the inputs' norms.

Deviations from the official code, on purpose:

- IRLS is **iterated** until the objective's relative decrease is below ``tol``, or for
  ``max_iter`` steps; the code runs one step (``n_its = 1``), which leaves ``Y`` close to its
  random start. IRLS converges linearly, slowly where two subspaces fit almost equally well:
  100 steps can stop a few percent from the fixed point there (raise ``max_iter``).
- The start is the flag **mean** (top-``r`` eigenspace of ``sum_i u_i u_i^T``), deterministic and
  independent of the inbox order, not a seeded random ``Y``.
- The pair term (``lam > 0``) uses ``s_ij`` above, the squared norm of the part of the
  difference that ``Y`` does not preserve (our reading of the paper's "pairs that preserve the
  norm of the difference vector"); the code uses ``|1 - ||Y^T d_ij||^2|``, which is not a
  residual because ``d_ij`` is not a unit vector. ``lam / (n(n-1))`` multiplies the objective
  term, so it enters the IRLS weights linearly; the code scales the data column by it, which
  puts ``lam^2`` in the scatter matrix. The exact regularized form of the paper was not checked
  against its equations here.
- Everything after one ``[N, N]`` Gram matrix (float64) is done in the span of the inputs:
  O(N^2 D) once plus O(N^3) per IRLS step, instead of a thin SVD of a ``[D, N]`` (or, with
  ``lam > 0``, ``[D, N^2]``) matrix per step. Same subspace.
- No CSV files are written (the code writes to hard-coded paths).

Weights: **ignored** (the official rule is unweighted). Requirement: the inputs must span at
least ``r`` dimensions. Shapes: ``N`` inbox rows, ``D`` flat parameters, ``R`` = ``r``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.aggregate._common import as_matrix, canonical_order, gram
from shoal.checks import check_count, check_number

# Relative size below which an eigenvalue of the weighted scatter counts as zero.
_RANK_RTOL = 1e-12


@dataclass(frozen=True)
class FlagAggregator:
    """Flag-median subspace by IRLS, then ``(1/r) sum_i Y Y^T u_i`` (module docstring)."""

    r: int = 1
    lam: float = 0.0
    max_iter: int = 100
    tol: float = 1e-10
    eps: float = 1e-7
    linear: bool = False

    def __post_init__(self) -> None:
        check_count(self.r, "flag_aggregator: r")
        check_number(self.lam, "flag_aggregator: lam", positive=False)
        check_count(self.max_iter, "flag_aggregator: max_iter")
        check_number(self.tol, "flag_aggregator: tol", positive=False)  # was never checked
        check_number(self.eps, "flag_aggregator: eps", positive=True)

    def _solve(self, k_NN: torch.Tensor, g_NN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``r`` eigenspace of ``U^T K U`` as ``Y = U^T B``; returns ``(B_NR, P_RN = Y^T U^T)``.

        ``U^T K U`` has the same nonzero spectrum as ``K^1/2 G K^1/2``: with ``V, mu`` its top
        eigenpairs, ``Y = U^T K^1/2 V mu^-1/2`` is orthonormal (``Y^T Y = I``).
        """
        lam_k, q = torch.linalg.eigh(k_NN)
        k_half = (q * lam_k.clamp_min(0).sqrt()) @ q.T
        mu, v = torch.linalg.eigh(k_half @ g_NN @ k_half)
        mu, v = mu.flip(0)[: self.r], v.flip(1)[:, : self.r]
        if not bool(mu[-1] > _RANK_RTOL * mu[0].clamp_min(0)) or not bool(mu[0] > 0):
            raise ValueError(
                f"flag_aggregator: the inputs span fewer than r={self.r} dimensions; lower r"
            )
        b_NR = k_half @ v / mu.sqrt()
        return b_NR, b_NR.T @ g_NN

    def _reweight(self, p_RN: torch.Tensor, dsq_NN: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Objective at the current ``Y`` and the IRLS matrix ``K`` for the next step."""
        n = p_RN.shape[1]
        s_N = (1 - (p_RN**2).sum(dim=0)).clamp_min(0)
        a_N = (s_N + self.eps).rsqrt()
        objective = (s_N + self.eps).sqrt().sum()
        k_NN = torch.diag(a_N)
        if self.lam > 0 and n > 1:
            c = self.lam / (n * (n - 1))
            pp = p_RN.T @ p_RN
            kept = pp.diagonal()[:, None] + pp.diagonal()[None, :] - 2 * pp
            s_NN = (dsq_NN - kept).clamp_min(0)
            off = ~torch.eye(n, dtype=torch.bool, device=p_RN.device)
            objective = objective + c * (s_NN + self.eps).sqrt()[off].sum()
            c_NN = torch.where(off, c * (s_NN + self.eps).rsqrt(), torch.zeros_like(s_NN))
            # sum over ordered pairs of c_ij (e_i - e_j)(e_i - e_j)^T, C symmetric.
            k_NN = k_NN + 2 * (torch.diag(c_NN.sum(dim=1)) - c_NN)
        return float(objective), k_NN

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        x_ND, shape = as_matrix(inbox_ND, weights_N, "flag_aggregator")
        x_ND, weights_N = canonical_order(x_ND, weights_N)
        n = x_ND.shape[0]
        if self.r > n:
            raise ValueError(f"flag_aggregator: r={self.r} exceeds the inbox size n={n}")
        g = gram(x_ND)
        # 0 for a zero row (nothing to normalise), 1 / ||x_i|| for any other: a clamp at 1e-12
        # scaled a row of norm 1e-14 to a non-unit u_i and skewed the subspace and the output.
        norm_N = g.diagonal().sqrt()
        if not bool((norm_N > 0).any()):  # all zero: no subspace, and 0 as every rule gives
            return torch.zeros_like(x_ND[0]).reshape(shape)  # ("fewer than r=1 dims; lower r")
        inv_norm = torch.where(norm_N > 0, 1 / norm_N, torch.zeros_like(norm_N))
        g_NN = g * inv_norm[:, None] * inv_norm[None, :]  # Gram of the unit vectors u_i
        dsq_NN = (g_NN.diagonal()[:, None] + g_NN.diagonal()[None, :] - 2 * g_NN).clamp_min(0)

        b_NR, p_RN = self._solve(torch.eye(n, dtype=g.dtype, device=g.device), g_NN)
        objective, k_NN = self._reweight(p_RN, dsq_NN)
        for _ in range(self.max_iter):
            b_new, p_new = self._solve(k_NN, g_NN)
            obj_new, k_new = self._reweight(p_new, dsq_NN)
            if obj_new > objective:  # only rounding can do this; keep the better iterate
                break
            b_NR, p_RN = b_new, p_new
            converged = objective - obj_new <= self.tol * objective
            objective, k_NN = obj_new, k_new
            if converged:
                break
        # (1/r) sum_i Y Y^T u_i = U^T (B (P 1)) / r, mapped back to the raw rows x_i.
        coef_N = (b_NR @ p_RN.sum(dim=1)) / self.r * inv_norm
        return (coef_N.to(x_ND.dtype) @ x_ND).reshape(shape)


def flag_aggregator(
    r: int = 1, lam: float = 0.0, max_iter: int = 100, tol: float = 1e-10, eps: float = 1e-7
) -> FlagAggregator:
    """Flag Aggregator (Almasi et al., ICLR 2024) by iterated IRLS; ``lam`` > 0 adds
    the pairwise regularizer. See the module docstring for the deviations from the code."""
    return FlagAggregator(r=r, lam=lam, max_iter=max_iter, tol=tol, eps=eps)
