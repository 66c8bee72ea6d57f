"""Coordinate-wise median and trimmed mean against NumPy, and the honest-range property."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shoal.aggregate import median, trimmed_mean


def trimmed_mean_ref(x: np.ndarray, f: int) -> np.ndarray:
    n, d = x.shape
    out = np.empty(d)
    for j in range(d):
        col = sorted(x[:, j])
        out[j] = np.mean(col[f : n - f])
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_median_matches_numpy(n: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, 7))
    got = median()(torch.from_numpy(x), torch.ones(n))
    np.testing.assert_allclose(got.numpy(), np.median(x, axis=0), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "f"), [(5, 0), (5, 2), (8, 3), (9, 1)])
def test_trimmed_mean_matches_reference(n: int, f: int) -> None:
    x = np.random.default_rng(10 * n + f).normal(size=(n, 6))
    got = trimmed_mean(f)(torch.from_numpy(x), torch.rand(n))
    np.testing.assert_allclose(got.numpy(), trimmed_mean_ref(x, f), rtol=1e-12, atol=1e-12)


def test_row_shape_is_kept_and_weights_ignored() -> None:
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    out = trimmed_mean(2)(x, torch.arange(1.0, 8.0))
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.reshape(-1), trimmed_mean(2)(x.reshape(7, -1), torch.ones(7)))


def test_requirements_raise() -> None:
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"trimmed_mean needs n >= 2f\+1, got n=6, f=3"):
        trimmed_mean(3)(x, torch.ones(6))
    with pytest.raises(ValueError, match=r"median needs n >= 2f\+1, got n=6, f=3"):
        median(3)(x, torch.ones(6))
    with pytest.raises(ValueError, match="f must be an integer >= 0"):
        trimmed_mean(-1)
    with pytest.raises(ValueError, match="NaN"):
        median()(torch.tensor([[0.0], [float("nan")]]), torch.ones(2))
    with pytest.raises(ValueError, match="weights"):
        median()(x, torch.ones(5))


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=40, deadline=None)
@given(
    f=st.integers(0, 3),
    extra=st.integers(1, 4),
    d=st.integers(1, 4),
    data=st.data(),
)
def test_honest_range_with_f_arbitrary_rows(f: int, extra: int, d: int, data) -> None:
    n = 2 * f + extra  # n >= 2f+1
    honest = data.draw(arrays(np.float64, (n - f, d), elements=st.floats(-10, 10, width=64)))
    byz = data.draw(arrays(np.float64, (f, d), elements=finite))
    x = np.concatenate([byz, honest])  # the Byzantine rows first: order must not matter
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    slack = 1e-9 * (1 + np.abs(honest).max())
    for agg in (median(f), trimmed_mean(f)):
        out = agg(torch.from_numpy(x), torch.ones(n)).numpy()
        assert np.all(out >= lo - slack) and np.all(out <= hi + slack), (agg, x, out)


def test_even_median_of_values_near_the_float_max_does_not_overflow() -> None:
    """The midpoint was ``(lo + hi) / 2``: inf for two float32 values of 3e38."""
    x = torch.tensor([[3e38, -3e38, 1.0, 3e38, 1e-45], [3.2e38, -3.2e38, 3.0, -3e38, 1e-45]])
    got = median()(torch.cat([x, x]), torch.ones(4))
    torch.testing.assert_close(got, torch.tensor([3.1e38, -3.1e38, 2.0, 0.0, 1e-45]))
    assert got[4] == torch.tensor(1e-45)  # a subnormal middle kept: halving first gives 0
