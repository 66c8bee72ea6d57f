"""L-GreCo: the budget and the candidates (alpha, the uniform fallback, the candidate ranks).

Reference (Alimohammadi et al., ``LGrCo/L-GreCo``): candidate ranks ``[floor(gamma r0),
ceil(beta r0)]`` with gamma = 0.5, beta = 2; budget ``E_max = alpha * sum_l e_l(r0)``; the
choice minimises the total size with total error within the budget, so at alpha = 1 it never
costs more than the uniform setting (which meets the budget by definition).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from compress_helpers import gen

from shoal.compress.lgreco import LGreCo, lgreco_powersgd, lgreco_top_k
from shoal.compress.sparsify import TopK


def cheapest_within(errors, sizes, budget) -> float:
    """Least total size over every combination with total error <= budget."""
    return min(
        sum(s[c] for s, c in zip(sizes, combo))
        for combo in itertools.product(*(range(len(e)) for e in errors))
        if sum(e[c] for e, c in zip(errors, combo)) <= budget
    )


def test_never_costs_more_than_uniform_when_rounding_makes_uniform_look_infeasible() -> None:
    """Three layers whose uniform error is 1/3 each: the budget is 1, but in 10,000 buckets
    each rounds up to 3,334 units (10,002 in all), so the DP alone would pay for a denser
    level on one layer. The uniform choice fits the real budget and is the cheapest."""
    shapes = [(10, 10)] * 3
    lg = LGreCo(
        shapes,
        lambda r, _: TopK(ratio=r),
        (0.1, 0.5),
        0.1,
        error_fn=lambda block, shape, levels: [1 / 3, 0.0],
    )
    alloc = lg.allocate(torch.randn(300, generator=gen(0)))
    errors = [[1 / 3, 0.0]] * 3
    assert alloc.nbytes == cheapest_within(errors, alloc.layer_nbytes, alloc.budget)
    assert alloc.nbytes <= alloc.uniform_nbytes
    assert alloc.levels == (0.1, 0.1, 0.1)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_alpha_scales_the_budget(alpha: float) -> None:
    shapes = [(32, 16), (16,), (64, 8)]
    x = torch.randn(512 + 16 + 512, generator=gen(1))
    x[:512] *= 3.0  # layers of different scale: the DP has something to trade
    lg = lgreco_top_k(shapes, ratio=0.1, choices=(0.05, 0.1, 0.2, 0.5), alpha=alpha)
    alloc = lg.allocate(x)
    assert alloc.budget == pytest.approx(alpha * alloc.uniform_error)
    assert alloc.error <= alloc.budget
    optimum = cheapest_within(alloc.layer_errors, alloc.layer_nbytes, alloc.budget)
    assert optimum <= alloc.nbytes  # the DP is the optimum up to its rounding up of errors
    if alpha > 1:
        assert alloc.nbytes < alloc.uniform_nbytes  # a looser budget buys fewer bytes


def test_a_budget_no_choice_meets_takes_the_least_error_level_per_layer() -> None:
    """alpha = 0.5 under errors that cannot drop below 0.6 of uniform's: the documented
    fallback, each layer's least-error level, and an error above the budget for all to see."""
    lg = LGreCo(
        [(10, 10)] * 2,
        lambda r, _: TopK(ratio=r),
        (0.1, 0.2, 0.5),
        0.1,
        alpha=0.5,
        error_fn=lambda block, shape, levels: [1.0, 0.8, 0.6],
    )
    alloc = lg.allocate(torch.randn(200, generator=gen(2)))
    assert alloc.levels == (0.5, 0.5)
    assert alloc.error == pytest.approx(1.2) and alloc.budget == pytest.approx(1.0)


def test_a_zero_budget_takes_each_layers_cheapest_lossless_level() -> None:
    """A zero gradient: every density loses nothing, so the uniform error and the budget are
    0; the knapsack needs a positive budget and uniform (162 bytes) was kept, where the
    sparsest density (48 bytes a layer) costs nothing either."""
    lg = lgreco_top_k([(30, 30), (20, 20)])
    alloc = lg.allocate(torch.zeros(1300))
    assert alloc.budget == 0.0 and alloc.error == 0.0
    assert alloc.nbytes == cheapest_within(alloc.layer_errors, alloc.layer_nbytes, 0.0)
    assert alloc.nbytes == 96 < alloc.uniform_nbytes == 162
    # Layer 1 is lossless only at the uniform density 0.5 (an error table by hand): it keeps
    # 0.5, and layer 0, lossless at both, takes the sparser 0.1.
    lg = LGreCo(
        [(10, 10)] * 2,
        lambda r, _: TopK(ratio=r),
        (0.1, 0.5),
        0.5,
        error_fn=lambda block, shape, levels: [0.0, 0.0] if not block.any() else [1.0, 0.0],
    )
    alloc = lg.allocate(torch.cat([torch.zeros(100), torch.ones(100)]))
    assert alloc.budget == 0.0
    assert alloc.levels == (0.1, 0.5)
    assert alloc.nbytes == cheapest_within(alloc.layer_errors, alloc.layer_nbytes, 0.0)
    assert alloc.nbytes < alloc.uniform_nbytes


def test_a_long_list_of_choices_is_not_printed_whole() -> None:
    with pytest.raises(
        ValueError, match=r"got 256 \(0\.001, 0\.002, 0\.003, 0\.004, 0\.005, \.\.\.\)$"
    ):
        lgreco_top_k([(3, 3)], choices=tuple(i / 1000 for i in range(1, 257)))


@pytest.mark.parametrize("rank", [1, 2, 3, 4, 5, 8])
def test_powersgd_candidate_ranks_span_half_to_twice_the_rank(rank: int) -> None:
    expected = tuple(range(max(1, math.floor(0.5 * rank)), math.ceil(2 * rank) + 1))
    assert lgreco_powersgd([(16, 16)], rank=rank).levels == expected
