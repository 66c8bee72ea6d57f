"""Bucketing and nearest-neighbour mixing: references and their own properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.aggregate import bucketing, krum, mean, median, multi_krum, nnm, trimmed_mean
from shoal.aggregate.base import NonFiniteInbox, TooFewInputs


def test_bucketing_matches_manual_buckets() -> None:
    n, s = 11, 3
    x = torch.randn(n, 4, dtype=torch.float64)
    w = torch.rand(n, dtype=torch.float64) + 0.5
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7)).numpy()
    xs, ws = x.numpy(), w.numpy()
    means = []
    for b in range(0, n, s):
        idx = perm[b : b + s]
        means.append((ws[idx] @ xs[idx]) / ws[idx].sum())
    want = np.median(np.array(means), axis=0)
    got = bucketing(median(), s=s)(x, w, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


@pytest.mark.parametrize(("n", "s"), [(10, 2), (11, 3), (5, 8), (7, 1)])
def test_bucketing_the_mean_is_the_mean(n: int, s: int) -> None:
    x = torch.randn(n, 3, dtype=torch.float64)
    w = torch.rand(n, dtype=torch.float64) + 0.1
    torch.testing.assert_close(bucketing(mean(), s=s, seed=3)(x, w), mean()(x, w))


def test_bucketing_is_seeded_and_draws_fresh_buckets_each_call() -> None:
    x, w = torch.randn(12, 5, dtype=torch.float64), torch.ones(12)
    a, b = bucketing(median(), s=2, seed=1), bucketing(median(), s=2, seed=1)
    first = [a(x, w) for _ in range(3)]
    second = [b(x, w) for _ in range(3)]
    for u, v in zip(first, second):
        assert torch.equal(u, v)  # same seed, same stream
    assert not torch.equal(first[0], first[1])  # a new permutation every round
    c = bucketing(median(), s=2, seed=2)
    assert not torch.equal(c(x, w), first[0])


def test_bucket_size_one_is_the_inner_rule() -> None:
    x, w = torch.randn(9, 4, dtype=torch.float64), torch.ones(9)
    torch.testing.assert_close(bucketing(krum(2), s=1)(x, w), krum(2)(x, w))


def test_bucketing_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="bucket size"):
        bucketing(mean(), s=0)
    with pytest.raises(ValueError, match="positive"):
        bucketing(mean())(torch.randn(3, 2), torch.tensor([1.0, 0.0, 1.0]))
    # The inner rule sees buckets: "krum needs n >= 2f+3, got n=3" of 5 inputs said nothing
    # of why n was 3.
    # Still TooFewInputs (a plain ValueError lost the round the runtime adds to it).
    with pytest.raises(TooFewInputs, match=r"5 inputs in buckets of s=2 are 3 inputs .* got n=3"):
        bucketing(krum(1))(torch.randn(5, 2), torch.ones(5))
    with pytest.raises(NonFiniteInbox):  # a grid records this as a diverged cell
        bucketing(median())(torch.tensor([[1.0], [float("nan")], [2.0]]), torch.ones(3))
    # Another size error of the inner rule keeps the buckets' explanation too.
    with pytest.raises(ValueError, match=r"8 inputs in buckets of s=2 are 4 inputs .* m=6"):
        bucketing(multi_krum(0, m=6))(torch.randn(8, 2), torch.ones(8))


def nnm_ref(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    out = np.empty_like(x)
    for i in range(n):
        d2 = [np.sum((x[i] - x[j]) ** 2) for j in range(n)]
        near = sorted(range(n), key=d2.__getitem__)[: n - f]
        assert i in near
        out[i] = x[near].mean(axis=0)
    return out


@pytest.mark.parametrize(("n", "f"), [(5, 0), (7, 3), (10, 2)])
def test_nnm_matches_reference(n: int, f: int) -> None:
    x = np.random.default_rng(n + f).normal(size=(n, 4))
    mixed = nnm_ref(x, f)
    got = nnm(trimmed_mean(f), f)(torch.from_numpy(x), torch.ones(n))
    np.testing.assert_allclose(got.numpy(), np.sort(mixed, axis=0)[f : n - f].mean(0), rtol=1e-12)
    agg = nnm(mean(), f)
    np.testing.assert_allclose(agg.mix(torch.from_numpy(x)).numpy(), mixed, rtol=1e-12)


def test_nnm_with_no_byzantine_is_the_mean() -> None:
    x = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(nnm(median(), 0)(x, torch.ones(6)), x.mean(dim=0))


def test_nnm_requirement() -> None:
    with pytest.raises(ValueError, match=r"nnm needs n >= 2f\+1, got n=6, f=3"):
        nnm(mean(), 3)(torch.randn(6, 2), torch.ones(6))
