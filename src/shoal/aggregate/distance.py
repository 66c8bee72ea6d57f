"""Krum and Multi-Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017. Each input ``i`` gets the score

    s(i) = sum of ||x_i - x_j||^2 over the n - f - 2 inputs j != i closest to x_i

(**squared** distances, as in the paper and the epfml implementation; the FlagAggregator repo's
``krum.py`` uses plain distances). Krum returns the input with the lowest score; Multi-Krum
averages the ``m`` lowest. Requirement: ``n >= 2f + 3``.

Ties in the score are broken by the sum of squared distances to *all* other inputs, and only
then by position in a canonical order of the rows (``canonical_permutation``), so the result
does not depend on the order the messages arrived in. Exact ties are structural in Bulyan's
last picks (one or zero neighbours) and common for Krum on integer-valued inputs
(sign-compressed updates: -1 and 1 tie on both keys among -3, -1, 1, 3).

Weights: **ignored** (Multi-Krum averages the selected inputs uniformly, as in the paper).
Cost: O(N^2 D) for the Gram matrix, float64. Shapes: ``N`` inbox rows, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.aggregate._common import (
    as_matrix,
    canonical_permutation,
    check_f,
    require,
    sq_distances,
)
from shoal.checks import check_count


def krum_scores(
    sqd_NN: torch.Tensor, num_neighbors: int, alive_N: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score_N, tie_break_N)`` from squared distances, restricted to the ``alive`` inputs.

    ``score``: sum over the ``num_neighbors`` closest other alive inputs; ``tie_break``: sum
    over all other alive inputs. Rows that are not alive score ``inf``.
    """
    d = sqd_NN.clone()
    d.fill_diagonal_(float("inf"))
    if alive_N is not None:
        d[:, ~alive_N] = float("inf")
    k = max(num_neighbors, 0)
    score = torch.topk(d, k, dim=1, largest=False).values.sum(dim=1)
    tie_break = torch.where(torch.isinf(d), torch.zeros_like(d), d).sum(dim=1)
    if alive_N is not None:
        score = score.masked_fill(~alive_N, float("inf"))
    return score, tie_break


def lexicographic_order(primary_N: torch.Tensor, secondary_N: torch.Tensor) -> torch.Tensor:
    """Indices sorted by ``primary``, ties by ``secondary``, remaining ties by position."""
    by_secondary = torch.argsort(secondary_N, stable=True)
    return by_secondary[torch.argsort(primary_N[by_secondary], stable=True)]


def krum_select(x_ND: torch.Tensor, f: int, m: int) -> torch.Tensor:
    """Indices of the ``m`` inputs with the lowest Krum scores, best first."""
    score, tie_break = krum_scores(sq_distances(x_ND), x_ND.shape[0] - f - 2)
    # Exact ties on both keys go by the rows' canonical order, not their position in the inbox.
    order = canonical_permutation(x_ND)
    return order[lexicographic_order(score[order], tie_break[order])][:m]


@dataclass(frozen=True)
class Krum:
    """Multi-Krum averaging the ``m`` best-scored inputs; ``m = 1`` is Krum.

    ``m = None`` means ``n - f`` (the number of honest inputs), resolved per call.
    """

    f: int
    m: int | None = 1
    linear: bool = False

    def __post_init__(self) -> None:
        check_f(self.f, self._who)
        if self.m is not None:
            check_count(self.m, f"{self._who}: m")

    @property
    def _who(self) -> str:
        """The rule's name in messages: a multi-Krum refusal named "krum"."""
        return "krum" if self.m == 1 else "multi_krum"

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        x_ND, shape = as_matrix(inbox_ND, weights_N, self._who)
        n = x_ND.shape[0]
        require(n >= 2 * self.f + 3, self._who, "n >= 2f+3", n, self.f)
        m = n - self.f if self.m is None else self.m
        if m > n:
            raise ValueError(f"multi_krum: m={m} exceeds the inbox size n={n}; lower m")
        chosen = krum_select(x_ND, self.f, m)
        return x_ND[chosen].mean(dim=0).reshape(shape)


def krum(f: int) -> Krum:
    """Krum (Blanchard et al. 2017): the input closest to its ``n-f-2`` neighbours."""
    return Krum(f=f, m=1)


def multi_krum(f: int, m: int | None = None) -> Krum:
    """Multi-Krum: the mean of the ``m`` best Krum scores (default ``m = n - f``)."""
    return Krum(f=f, m=m)
