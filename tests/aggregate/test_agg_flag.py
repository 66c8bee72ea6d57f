"""Flag Aggregator: against an IRLS in parameter space, and on a 1-D honest subspace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.aggregate import FlagAggregator, flag_aggregator


def flag_ref(x, r, lam, max_iter, tol, eps):
    """FlagIRLS written out in D-space with explicit D x D scatter matrices."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(u)

    def top(scatter):
        _, vecs = np.linalg.eigh(scatter)
        return vecs[:, ::-1][:, :r]

    def reweight(y):
        objective, scatter = 0.0, np.zeros((u.shape[1], u.shape[1]))
        for ui in u:
            s = max(1 - np.sum((y.T @ ui) ** 2), 0)
            objective += np.sqrt(s + eps)
            scatter += np.outer(ui, ui) / np.sqrt(s + eps)
        if lam > 0:
            c = lam / (n * (n - 1))
            for i in range(n):
                for j in range(n):
                    if i != j:
                        d = u[i] - u[j]
                        s = max(d @ d - np.sum((y.T @ d) ** 2), 0)
                        objective += c * np.sqrt(s + eps)
                        scatter += c * np.outer(d, d) / np.sqrt(s + eps)
        return objective, scatter

    y = top(u.T @ u)
    objective, scatter = reweight(y)
    for _ in range(max_iter):
        y_new = top(scatter)
        obj_new, scatter_new = reweight(y_new)
        if obj_new > objective:
            break
        y, converged = y_new, objective - obj_new <= tol * objective
        objective, scatter = obj_new, scatter_new
        if converged:
            break
    return y @ y.T @ u.sum(axis=0) / r


@pytest.mark.parametrize(
    ("n", "d", "r", "lam", "max_iter"),
    [(9, 6, 1, 0.0, 100), (7, 12, 2, 0.0, 100), (8, 5, 2, 0.5, 100), (6, 10, 1, 2.0, 1)],
)
def test_matches_parameter_space_irls(n, d, r, lam, max_iter) -> None:
    x = np.random.default_rng(n * d + r).normal(size=(n, d)) * 3
    agg = flag_aggregator(r=r, lam=lam, max_iter=max_iter)
    got = agg(torch.from_numpy(x), torch.ones(n))
    want = flag_ref(x, r, lam, max_iter, agg.tol, agg.eps)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-7, atol=1e-9)


def test_one_dimensional_honest_subspace_is_found() -> None:
    rng = np.random.default_rng(0)
    d = 20
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    honest = rng.uniform(0.5, 3.0, size=(7, 1)) * direction  # spans one line
    byz = rng.normal(size=(3, d)) * 5
    x = torch.from_numpy(np.concatenate([byz, honest]))
    for agg in (flag_aggregator(eps=1e-12), flag_aggregator(lam=0.5, eps=1e-12)):
        out = agg(x, torch.ones(10)).numpy()
        along = out @ direction
        assert along > 0
        assert np.linalg.norm(out - along * direction) <= 1e-5 * np.linalg.norm(out)


def test_iterating_lowers_the_objective_compared_with_one_step() -> None:
    # One IRLS step (the official code) vs. convergence: the converged subspace fits the
    # honest line better.
    rng = np.random.default_rng(3)
    direction = rng.normal(size=8)
    direction /= np.linalg.norm(direction)
    honest = rng.uniform(1, 2, size=(6, 1)) * direction + 0.01 * rng.normal(size=(6, 8))
    x = torch.from_numpy(np.concatenate([rng.normal(size=(4, 8)) * 3, honest]))
    one = flag_aggregator(max_iter=1)(x, torch.ones(10)).numpy()
    full = flag_aggregator()(x, torch.ones(10)).numpy()

    def off_line(v):
        return np.linalg.norm(v - (v @ direction) * direction) / np.linalg.norm(v)

    assert off_line(full) <= off_line(one) + 1e-12


def test_requirements_raise() -> None:
    with pytest.raises(ValueError, match="span fewer than r=2"):
        flag_aggregator(r=2)(torch.ones(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="exceeds the inbox"):
        flag_aggregator(r=5)(torch.randn(4, 6), torch.ones(4))
    with pytest.raises(ValueError, match="lam"):
        FlagAggregator(lam=-1.0)


@pytest.mark.parametrize("scale", [1e-14, 1e-30, 1e30])
def test_rows_of_any_norm_are_normalised(scale) -> None:
    """The rule sees only the unit vectors u_i = x_i / ||x_i||, so scaling rows changes
    nothing. The inverse norm was clamped at 1e12: a row of norm 1e-14 became a u_i of norm
    0.01, and the subspace and output moved."""
    x = torch.randn(7, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    agg = flag_aggregator(r=2)
    want = agg(x, torch.ones(7))
    y = x.clone()
    y[[1, 4]] *= scale
    torch.testing.assert_close(agg(y, torch.ones(7)), want, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(agg(x * scale, torch.ones(7)), want, rtol=1e-6, atol=1e-9)
