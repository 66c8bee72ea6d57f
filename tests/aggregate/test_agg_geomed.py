"""Geometric median (smoothed Weiszfeld) against NumPy, and its optimality condition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.aggregate import geometric_median


def weiszfeld_ref(x, alpha, nu, max_iter, tol):
    alpha = alpha / alpha.sum()
    z = alpha @ x
    for _ in range(max_iter):
        beta = np.array([a / max(nu, np.linalg.norm(z - xi)) for a, xi in zip(alpha, x)])
        z, prev = beta @ x / beta.sum(), z
        # torch.median of an even count is the lower middle value
        scale = sorted(np.linalg.norm(z - xi) for xi in x)[(len(x) - 1) // 2]
        if np.linalg.norm(z - prev) <= tol * scale:
            break
    return z


@pytest.mark.parametrize("max_iter", [1, 4, 50])
def test_matches_reference(max_iter: int) -> None:
    rng = np.random.default_rng(max_iter)
    x, alpha = rng.normal(size=(9, 6)), rng.uniform(0.5, 2, size=9)
    agg = geometric_median(nu=0.1, max_iter=max_iter, tol=1e-8)
    got = agg(torch.from_numpy(x), torch.from_numpy(alpha))
    want = weiszfeld_ref(x, alpha, 0.1, max_iter, 1e-8)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_reaches_the_weiszfeld_fixed_point() -> None:
    rng = np.random.default_rng(1)
    x, alpha = rng.normal(size=(11, 5)), rng.uniform(0.5, 2, size=11)
    z = geometric_median(nu=1e-12, max_iter=5000, tol=0.0)(
        torch.from_numpy(x), torch.from_numpy(alpha)
    ).numpy()
    # Gradient of sum_i alpha_i ||z - x_i|| vanishes at the minimizer.
    grad = sum(a * (z - xi) / np.linalg.norm(z - xi) for a, xi in zip(alpha, x))
    assert np.linalg.norm(grad) < 1e-8 * alpha.sum()


def test_robust_to_a_minority_of_far_points() -> None:
    # A seeded draw: with the global generator the draw depended on the tests run before, and
    # about 1 draw in 70 has its median near an honest point, where Weiszfeld's 100 default
    # iterations stop up to 3e-4 short of the fixed point.
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(7, 3, dtype=torch.float64, generator=g) * 0.1
    x = torch.cat([honest, torch.full((3, 3), 1e6, dtype=torch.float64)])
    z = geometric_median()(x, torch.ones(10))
    assert float(z.norm()) < 0.5
    tight = geometric_median(nu=1e-12, max_iter=5000, tol=0.0)(x, torch.ones(10))
    assert float((z - tight).norm()) < 1e-4


def test_bad_weights_and_options_raise() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        geometric_median()(torch.randn(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="nu"):
        geometric_median(nu=0.0)


def test_huge_finite_float32_rows_do_not_turn_the_median_into_nan() -> None:
    # One Byzantine row of 1e19s is finite in float32, but a float32 norm of a 1000-d
    # difference from it overflows: every distance was inf, every beta 0, and z 0/0 = NaN.
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(9, 1000, generator=g)
    x = torch.cat([honest, torch.full((1, 1000), 1e19)])
    z = geometric_median()(x, torch.ones(10))
    assert z.dtype == torch.float32 and bool(torch.isfinite(z).all())
    # The same inbox in float64, whose norms do not overflow at 1e19.
    torch.testing.assert_close(z.double(), geometric_median()(x.double(), torch.ones(10)))


def test_distances_beyond_float32_do_not_turn_the_median_into_nan() -> None:
    """A row of 3e38s pulls the starting mean so far that every distance (~1e39) exceeds the
    float32 range: even the float64 fallback rounded them all to inf, and z was NaN."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25, 10_000, generator=g) * 0.01
    x[0] = 3e38
    z = geometric_median()(x, torch.ones(25))
    assert z.dtype == torch.float32
    want = geometric_median()(x.double(), torch.ones(25, dtype=torch.float64))
    torch.testing.assert_close(z.double(), want, rtol=0, atol=1e-6)
