"""L-GreCo's solver: one candidate per layer, least total size, total error within a budget.

A multiple-choice knapsack solved by dynamic programming over discretised errors (Alimohammadi
et al., MLSys 2024, Sec. 3; ``LGrCo/L-GreCo``'s "DP adjuster"). Errors are counted in
``buckets`` units of ``budget / buckets``, rounded *up*, so every choice returned meets the real
budget; ``DP[l][b] = min_c DP[l-1][b - e_l(c)] + s_l(c)``, ``O(L C buckets)``, then backtracked.

Shape suffixes: ``L`` layers, ``C`` candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from shoal.checks import check_count, is_real

MAX_BUCKETS = 10**6
"""The most ``buckets`` the DP takes: its back-pointer table holds ``L (buckets + 1)`` int64
(8 MB per layer at this bound; ``10**9`` asked for 7.45 GiB per layer). Past ~10^4 the
rounding loss, at most ``L`` buckets of ``budget / buckets``, is already negligible."""


def check_buckets(buckets: int, who: str) -> None:
    """``buckets``: an integer from 1 to :data:`MAX_BUCKETS`."""
    check_count(buckets, f"{who}: buckets")
    if buckets > MAX_BUCKETS:
        raise ValueError(f"{who}: buckets must be at most {MAX_BUCKETS}, got {buckets!r}")


def _check_table(name: str, table: Sequence[Sequence[float]]) -> list[np.ndarray]:
    rows = [np.asarray(row, dtype=np.float64) for row in table]
    if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
        raise ValueError(f"knapsack: {name} must be a non-empty list of non-empty lists")
    if any(not np.isfinite(r).all() or (r < 0).any() for r in rows):
        raise ValueError(f"knapsack: {name} must be finite and >= 0")
    return rows


def knapsack(
    errors: Sequence[Sequence[float]],
    sizes: Sequence[Sequence[float]],
    budget: float,
    buckets: int = 10_000,
) -> tuple[int, ...] | None:
    """One candidate per layer minimizing total size with total error ``<= budget``.

    ``errors[l][c]`` and ``sizes[l][c]`` describe candidate ``c`` of layer ``l``. Returns the
    chosen candidate indices, or ``None`` when no choice fits the discretised budget. Among
    choices of equal size, the one with the least (discretised) error wins. ``buckets`` is at
    most :data:`MAX_BUCKETS`; any positive ``budget`` works, a subnormal one too.
    """
    err, size = _check_table("errors", errors), _check_table("sizes", sizes)
    if len(err) != len(size) or any(e.size != s.size for e, s in zip(err, size)):
        raise ValueError("knapsack: errors and sizes must have the same shape (layers x levels)")
    if not (is_real(budget) and 0 < budget < math.inf):
        raise ValueError(f"knapsack: budget must be a positive number, got {budget!r}")
    check_buckets(buckets, "knapsack")
    # Rounding up: sum(units) <= buckets implies sum(errors) <= budget. Divided by the budget
    # first: buckets / budget overflowed to inf for a tiny budget (1e-320), and 0 * inf is NaN.
    # e / budget may still overflow, to inf units: a candidate over the budget, as it should.
    with np.errstate(over="ignore"):
        units = [np.ceil(e / budget * buckets) for e in err]
    best = np.full(buckets + 1, np.inf)  # best[b]: least size with error exactly b units
    best[0] = 0.0
    back = np.full((len(err), buckets + 1), -1, dtype=np.int64)
    for layer, (w_C, s_C) in enumerate(zip(units, size)):
        new = np.full(buckets + 1, np.inf)
        for c, (w, s) in enumerate(zip(w_C, s_C)):
            if w > buckets:
                continue
            w = int(w)
            cand = best[: buckets + 1 - w] + s
            better = cand < new[w:]
            new[w:][better] = cand[better]
            back[layer, w:][better] = c
        best = new
    if not np.isfinite(best).any():
        return None
    b = int(np.argmin(best))  # first minimum: the least error among the cheapest
    choice = []
    for layer in range(len(err) - 1, -1, -1):
        c = int(back[layer, b])
        choice.append(c)
        b -= int(units[layer][c])
    return tuple(reversed(choice))
