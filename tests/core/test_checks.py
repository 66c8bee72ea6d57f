"""Counts given to factories: a numpy integer works as the same int does (a count computed with
numpy, e.g. ``np.arange`` in a sweep, is one), and a float count is refused when the object is
built, naming the argument, not mid-round in ``range()`` or a slice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from shoal import ClientSampler
from shoal.aggregate import (
    bucketing,
    centered_clip,
    flag_aggregator,
    geometric_median,
    mean,
    multi_krum,
)
from shoal.compress import count_sketch, powersgd, qsgd, top_k
from shoal.parallel import local_sgd

X = torch.randn(8, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
W = torch.ones(8)


def _aggregate(make: Callable[[Any], Any]) -> Callable[[Any], torch.Tensor]:
    return lambda n: make(n)(X, W)


def _compress(make: Callable[[Any], Any]) -> Callable[[Any], torch.Tensor]:
    def run(n: Any) -> torch.Tensor:
        c = make(n)
        x = X.reshape(-1).float()
        payload, _ = c.compress(x, c.init(x))
        return c.decompress(payload)

    return run


CASES = {
    "bucketing s": _aggregate(lambda n: bucketing(mean(), s=n)),
    "multi_krum m": _aggregate(lambda n: multi_krum(1, m=n)),
    "flag_aggregator r": _aggregate(lambda n: flag_aggregator(r=n)),
    "flag_aggregator max_iter": _aggregate(lambda n: flag_aggregator(max_iter=n)),
    "centered_clip num_iters": _aggregate(lambda n: centered_clip(tau=0.5, num_iters=n)),
    "geometric_median max_iter": _aggregate(lambda n: geometric_median(max_iter=n)),
    "top_k k": _compress(lambda n: top_k(k=n)),
    "qsgd levels": _compress(lambda n: qsgd(levels=n)),
    "count_sketch depth": _compress(lambda n: count_sketch(width=64, depth=n)),
    "powersgd rank": _compress(lambda n: powersgd([(8, 12)], rank=n)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_numpy_count_gives_what_the_int_gives(case: str) -> None:
    run = CASES[case]
    torch.testing.assert_close(run(np.int64(3)), run(3), rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_float_count_is_refused_when_built(case: str) -> None:
    # flag_aggregator(r=2.5) and centered_clip(num_iters=2.5) were built, then failed in their
    # first call with "slice indices must be integers" / "'float' object cannot be interpreted
    # as an integer"; multi_krum(m=2.5) likewise.
    name = case.split()[-1]
    with pytest.raises(ValueError, match=rf"{name} must be an integer >= 1, got 2\.5"):
        CASES[case](2.5)


def test_periods_and_sampling_counts() -> None:
    assert local_sgd(lr=0.1, period=np.int64(4)).period == 4
    with pytest.raises(
        ValueError, match=r"period \(the averaging period H\) must be an integer >= 1, got 2\.5"
    ):
        local_sgd(lr=0.1, period=2.5)
    with pytest.raises(ValueError, match=r"clients_per_round must be an integer >= 1, got 2\.5"):
        ClientSampler(2.5)
