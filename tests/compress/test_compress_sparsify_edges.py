"""Sparsifiers: edges of the rules (DGC's bounds and sample offset, block counts).

The DGC expectations are worked out by hand from ``synxlin/deep-gradient-compression``'s rule
(``dgc/compression.py``, ``configs/dgc/__init__.py``): threshold = the smallest of the top
``ceil(ratio * num_samples)`` of ``|x[start::stride]|``; more than ``1.3 k`` candidates -> exact
top-k among them; fewer than ``0.8 k`` -> ``threshold *= 0.8`` (at most 10 times); the start is
``torch.randint(0, stride)``, drawn afresh every call.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from compress_helpers import gen

from shoal.compress import lgreco_qsgd, powersgd, random_k, threshold, top_k
from shoal.compress.sparsify import (
    BLOCK,
    DGCPlan,
    DGCTopK,
    dgc_plan,
    dgc_select,
    dgc_top_k,
    sparse_decompress,
)

D, RATIO = 10_000, 0.01  # k = 100; a 49-stride sample of 204 entries, top 3 set the threshold
PLAN = DGCPlan(num_selects=100, num_samples=204, top_k_samples=3, sample_stride=49)
SAMPLED = torch.arange(0, D, 49)  # what start = 0 samples
OTHER = torch.arange(D)[torch.arange(D) % 49 != 0]  # never sampled from start 0


def test_the_constructed_plan() -> None:
    assert dgc_plan(D, RATIO, 0.01) == PLAN


def test_dgc_select_trims_an_overshoot_between_1_3k_and_1_5k_with_its_default_bounds() -> None:
    """3 samples at 1.0 set the threshold to 1.0; 137 unsampled entries in (1.1, 2.0) pass it:
    140 > 1.3 k = 130 candidates, so the reference keeps the exact top 100 of them."""
    imp = torch.zeros(D)
    imp[SAMPLED[:3]] = 1.0
    imp[OTHER[:137]] = torch.linspace(1.1, 2.0, 137)
    index, thr = dgc_select(imp, PLAN, start=0)
    assert float(thr) == 1.0
    # The 100 largest, in ascending order (a message is then encoded without a sort).
    assert index.tolist() == OTHER[37:137].tolist()


@pytest.mark.parametrize(("at_threshold", "expected"), [(77, 80), (76, 99)])
def test_dgc_stops_lowering_at_exactly_0_8k(at_threshold: int, expected: int) -> None:
    """With 3 + 77 = 80 = 0.8 k candidates the reference breaks (``80 < 0.8 * 100`` is false)
    and sends those 80; with 79 it lowers the threshold to 0.8, where 20 more entries (0.9)
    join: 99."""
    imp = torch.zeros(D)
    imp[SAMPLED[:3]] = 1.0
    imp[OTHER[:at_threshold]] = 1.5
    imp[OTHER[200:220]] = 0.9
    index, thr = dgc_select(imp, PLAN, start=0)
    assert index.numel() == expected
    assert float(thr) == pytest.approx(1.0 if expected == 80 else 0.8)


def test_dgc_defaults_are_the_references() -> None:
    """``configs/dgc/__init__.py``: bounds 1.3 / 0.8, 10 adaptation iterations, 1% samples;
    the class (what ``shoal.algorithms.dgc`` builds) and the factory must agree on them."""
    for c in (DGCTopK(RATIO), dgc_top_k(RATIO)):
        assert (c.upper_bound, c.lower_bound, c.max_adaptation_iters, c.sample_ratio) == (
            1.3,
            0.8,
            10,
            0.01,
        )


def test_dgc_class_with_default_bounds_sends_at_least_0_8k() -> None:
    """On Gaussian vectors the sampled threshold often lets through fewer than 0.8 k entries;
    the 0.8 rule must then lower it (ten reductions of 0.8 reach any Gaussian tail here)."""
    k = 100
    for seed in range(12):
        x = torch.randn(D, generator=gen(seed))
        c = DGCTopK(RATIO)
        state = c.init(x, seed=seed)
        for _ in range(3):
            payload, state = c.compress(x, state)
            assert 0.8 * k <= payload["values"].numel() <= 1.3 * k


def test_dgc_sample_offset_is_drawn_afresh_each_call() -> None:
    """Every 49th entry from 0 is an outlier (50 of them, 100.0); the rest is in (-1, 1).
    From start 0 the sample sees the outliers, the threshold is 100 and ten reductions
    (to 10.7) still leave 50 < 0.8 k candidates: 50 entries sent. From any other start (48 in
    49) the threshold is ~1 and at least 0.8 k entries go out. A fixed offset of 0 would send
    50 every time."""
    x = torch.rand(D, generator=gen(1)) * 2 - 1
    x[SAMPLED[:50]] = 100.0
    c = dgc_top_k(RATIO, seed=3)
    state = c.init(x)
    counts = []
    for _ in range(20):
        payload, state = c.compress(x, state)
        counts.append(payload["values"].numel())
    assert set(counts) <= {50} | set(range(80, 131))
    assert sum(n >= 80 for n in counts) >= 15  # expected 20 * 48 / 49


def test_blocked_encoding_counts_every_block_even_trailing_empty_ones() -> None:
    """The documented layout: ``counts`` [B] with B = ceil(d / BLOCK), here [5000, 0, 0, 0]."""
    d = 3 * BLOCK + 10
    x = torch.zeros(d)
    x[:5000] = torch.rand(5000, generator=gen(2)) + 1.0  # every kept entry in block 0
    payload, _ = top_k(k=5000).compress(x, None)
    assert "counts" in payload  # 2-byte offsets beat 4-byte flat indices here
    assert payload["counts"].tolist() == [5000, 0, 0, 0]
    assert torch.equal(sparse_decompress(payload), x)


@pytest.mark.parametrize("d", [1000, 100_000])
def test_dgc_at_ratio_one_sends_every_entry(d: int) -> None:
    """The threshold estimated on a sample (its smallest magnitude) left ~10% of the entries
    out at ratio 1 (896 of 1,000 sent), which the 0.8k lower bound accepted."""
    x = torch.randn(d, generator=gen(31))
    c = dgc_top_k(1.0)
    assert torch.equal(c.decompress(c.compress(x, c.init(x))[0]), x)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: random_k(0.1, unbiased="no"), "unbiased must be true or false"),
        (lambda: threshold(True), "tau must be a finite number >= 0, got True"),
        (lambda: dgc_top_k(0.01, sample_ratio=True), r"sample_ratio must be in \(0, 1\]"),
        (lambda: dgc_top_k(0.01, upper_bound="2"), "upper_bound must be a finite number >= 1"),
        (lambda: dgc_top_k(0.01, upper_bound=math.inf), "upper_bound must be a finite"),
        (lambda: dgc_top_k(0.01, lower_bound=None), r"lower_bound must be in \(0, 1\]"),
        (lambda: powersgd([(4, 4)], min_compression_rate=math.inf), "min_compression_rate"),
        (lambda: powersgd([(4, 4)], min_compression_rate=True), "min_compression_rate"),
        (lambda: lgreco_qsgd([(4, 4)], levels=True), "budget's setting must be a number"),
    ],
)
def test_arguments_of_the_wrong_type_are_refused(build, match) -> None:
    # "no" is true to Python (an unbiased random_k), True is 1 (tau = 1, every entry sampled).
    with pytest.raises((TypeError, ValueError), match=match):
        build()


def test_a_numpy_threshold_is_a_number() -> None:
    # np.float32(0.5) was refused while np.float64(0.5) was taken.
    assert threshold(np.float32(0.5)).tau == np.float32(0.5)
