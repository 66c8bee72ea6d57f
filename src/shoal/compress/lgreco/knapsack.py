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
    choices of equal size, the one with the least (discretised) error wins.
    """
    err, size = _check_table("errors", errors), _check_table("sizes", sizes)
    if len(err) != len(size) or any(e.size != s.size for e, s in zip(err, size)):
        raise ValueError("knapsack: errors and sizes must have the same shape (layers x levels)")
    if not (is_real(budget) and 0 < budget < math.inf):
        raise ValueError(f"knapsack: budget must be a positive number, got {budget!r}")
    check_count(buckets, "knapsack: buckets")
    # Rounding up: sum(units) <= buckets implies sum(errors) <= budget.
    units = [np.ceil(e * (buckets / budget)) for e in err]
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
