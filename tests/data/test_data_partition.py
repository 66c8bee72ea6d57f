"""Partitioners against their published definitions (see shoal.data.partition's sources)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shoal.data import (
    Partition,
    classes_per_client,
    dirichlet,
    hsu_dirichlet,
    iid,
    label_histogram,
    natural,
    quantity_skew,
    shards,
)

FAST = settings(max_examples=40, deadline=None)


@st.composite
def labelled(draw, min_n: int = 20, max_n: int = 400, max_classes: int = 10):
    n = draw(st.integers(min_n, max_n))
    k = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(seed).integers(0, k, n)
    return labels, draw(st.integers(0, 2**32 - 1))


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_disjoint(parts: list[np.ndarray], n: int, covering: bool = True) -> None:
    allidx = np.concatenate(parts)
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert len(np.unique(allidx)) == len(allidx), "clients overlap"
    assert allidx.min(initial=0) >= 0 and allidx.max(initial=0) < n
    if covering:
        assert len(allidx) == n, "clients do not cover the data"


def entropy(hist: np.ndarray) -> np.ndarray:
    p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)


@FAST
@given(labelled(), st.integers(1, 10))
def test_iid_covers_and_balances(data, num_clients: int) -> None:
    labels, seed = data
    parts = iid()(labels, num_clients, rng(seed))
    assert len(parts) == num_clients
    assert_disjoint(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2  # the cuts round


@FAST
@given(labelled(min_n=100), st.integers(1, 8), st.floats(0.3, 10.0))
def test_dirichlet_covers_and_respects_min_size(data, num_clients: int, alpha: float) -> None:
    labels, seed = data
    parts = dirichlet(alpha, min_size=5)(labels, num_clients, rng(seed))
    assert_disjoint(parts, len(labels))
    assert min(len(p) for p in parts) >= 5


@FAST
@given(labelled(min_n=50), st.integers(1, 5), st.floats(0.05, 5.0))
def test_hsu_dirichlet_gives_fixed_sizes_without_overlap(data, num_clients, alpha) -> None:
    labels, seed = data
    m = len(labels) // num_clients
    parts = hsu_dirichlet(alpha)(labels, num_clients, rng(seed))
    assert [len(p) for p in parts] == [m] * num_clients
    assert_disjoint(parts, len(labels), covering=m * num_clients == len(labels))


def test_hsu_dirichlet_redistributes_when_a_class_runs_dry() -> None:
    labels = np.array([0] * 95 + [1] * 5)
    parts = hsu_dirichlet(0.1, samples_per_client=50)(labels, 2, rng(0))
    assert_disjoint(parts, 100)  # 2 x 50 = everything, though class 1 has only 5 samples


@pytest.mark.parametrize("alpha", [1e-6, 5e-324])
def test_hsu_dirichlet_tiny_alpha_gives_one_class_per_client(alpha) -> None:
    # 5e-324 * prior underflows to a zero Dirichlet draw, which was read as uniform (IID)
    labels = np.repeat(np.arange(10), 100)
    parts = hsu_dirichlet(alpha, samples_per_client=50)(labels, 8, rng(0))
    assert all(len(np.unique(labels[p])) == 1 for p in parts)


def _largest_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_hsu_dirichlet_is_never_less_skewed_at_a_smaller_alpha() -> None:
    """Where a client's classes ran dry, q underflowed to zero on the others (72% of draws at
    alpha = 1e-3) and the rest was drawn evenly over them: alpha = 1e-3 gave a largest-class
    share of 0.675, below alpha = 0.5's 0.698. The limit alpha -> 0 is one class per client."""
    labels = rng(1).permutation(np.repeat(np.arange(10), 400))
    shares = {
        a: np.mean([_largest_share(labels, hsu_dirichlet(a)(labels, 10, rng(s))) for s in range(8)])
        for a in (0.5, 0.1, 1e-3, 1e-6)
    }
    assert shares[0.5] < shares[0.1] <= shares[1e-3] + 0.02 and shares[1e-3] > 0.9
    assert shares[1e-6] > 0.9


@pytest.mark.parametrize("alpha", [2e307, 1e308])
def test_a_huge_alpha_is_the_iid_limit_not_one_class_per_client(alpha) -> None:
    # Dir(alpha) over 10 clients overflows to an all-zero draw, which was read as alpha -> 0.
    labels = rng(0).permutation(np.repeat(np.arange(10), 40))
    parts = dirichlet(alpha)(labels, 10, rng(0))
    # Nearly even (the cuts round, and a client at its share takes no more, as at 1e300).
    assert all(len(np.unique(labels[p])) >= 8 for p in parts)
    sizes = [len(p) for p in quantity_skew(alpha)(labels, 10, rng(0))]
    assert max(sizes) - min(sizes) <= 2  # the cuts round


@FAST
@given(
    st.integers(2, 10),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 20),
    st.integers(0, 10**6),
)
def test_shards_definition(num_classes, m, s, size, seed) -> None:
    # classes of m shards each, so shards never straddle two labels
    assume((num_classes * m) % s == 0)
    num_clients = num_classes * m // s
    labels = rng(seed).permutation(np.repeat(np.arange(num_classes), m * size))
    parts = shards(s)(labels, num_clients, rng(seed + 1))
    assert [len(p) for p in parts] == [s * size] * num_clients
    assert_disjoint(parts, len(labels))
    assert all(len(np.unique(labels[p])) <= s for p in parts)


def test_shards_drop_the_remainder_only() -> None:
    labels = np.repeat(np.arange(10), 61)  # 610 samples, 20 shards of 30
    parts = shards(2)(labels, 10, rng(0))
    assert [len(p) for p in parts] == [60] * 10
    assert_disjoint(parts, 610, covering=False)
    assert len(np.concatenate(parts)) == 600


@FAST
@given(labelled(min_n=60), st.integers(1, 12), st.integers(1, 10))
def test_classes_per_client_definition(data, num_clients, k) -> None:
    labels, seed = data
    classes = np.unique(labels)
    assume(k <= len(classes) and num_clients <= len(labels))
    parts = classes_per_client(k)(labels, num_clients, rng(seed))
    assert all(len(np.unique(labels[p])) <= k for p in parts)
    assert_disjoint(parts, len(labels), covering=num_clients >= len(classes))
    # client i always owns class i mod K: it holds some of it unless that class is tiny
    for i, p in enumerate(parts):
        c = classes[i % len(classes)]
        if (labels == c).sum() >= num_clients:
            assert c in labels[p]


def test_classes_per_client_splits_classes_equally_among_owners() -> None:
    labels = np.repeat(np.arange(4), 100)
    parts = classes_per_client(4)(labels, 4, rng(0))
    assert (label_histogram(labels, parts, 4) == 25).all()


def test_quantity_skew_keeps_the_global_label_distribution() -> None:
    labels = rng(0).integers(0, 5, 20_000)
    parts = quantity_skew(1.0, min_size=100)(labels, 6, rng(1))
    assert_disjoint(parts, len(labels))
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 99 and sizes.max() > 2 * sizes.min()  # unequal sizes...
    hist = label_histogram(labels, parts, 5)
    glob = np.bincount(labels) / len(labels)
    for h in hist[sizes >= 1000]:  # ...but each big client looks like the whole
        assert 0.5 * np.abs(h / h.sum() - glob).sum() < 0.06


def test_smaller_alpha_means_more_label_skew() -> None:
    labels = np.repeat(np.arange(10), 300)

    def mean_entropy(part: Partition) -> float:
        hists = [label_histogram(labels, part(labels, 20, rng(s)), 10) for s in range(3)]
        return float(np.mean([entropy(h).mean() for h in hists]))

    for make in (dirichlet, hsu_dirichlet):
        h = {a: mean_entropy(make(a)) for a in (0.1, 1.0, 100.0)}
        assert h[0.1] < h[1.0] < h[100.0]
        assert h[100.0] > 0.95 * np.log(10)  # nearly uniform


PARTITIONS = [
    iid(),
    dirichlet(0.5),
    hsu_dirichlet(0.5),
    shards(2),
    classes_per_client(2),
    quantity_skew(0.5),
]


@pytest.mark.parametrize("part", PARTITIONS, ids=lambda p: type(p).__name__)
def test_seed_reproduces_and_other_seed_changes(part) -> None:
    labels = np.repeat(np.arange(10), 100)
    a, b, c = (part(labels, 10, rng(s)) for s in (7, 7, 8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_natural_returns_the_users() -> None:
    users = [np.array([3, 1]), np.array([0]), np.array([2, 4])]
    parts = natural(users)(np.zeros(5, dtype=np.int64), 3, rng(0))
    assert [p.tolist() for p in parts] == [[3, 1], [0], [2, 4]]
    with pytest.raises(ValueError, match="num_clients must equal"):
        natural(users)(np.zeros(5, dtype=np.int64), 4, rng(0))


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: shards(2.0), "shards_per_client"),
        (lambda: classes_per_client(2.5), "k"),
        (lambda: hsu_dirichlet(0.5, 400.5), "samples_per_client"),
        (lambda: dirichlet(0.5, min_size=1.5), "min_size"),
        (lambda: quantity_skew(0.5, min_size=-1), "min_size"),
    ],
)
def test_counts_must_be_integers(make, name) -> None:
    # shards(2.0) failed in numpy with "axis 0 is out of bounds", classes_per_client(2.0) with
    # a TypeError, hsu_dirichlet(0.5, 400.5) said the count "exceeds the samples".
    with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
        make()


@pytest.mark.parametrize("part", PARTITIONS, ids=lambda p: type(p).__name__)
def test_num_clients_and_rng_are_checked(part: Partition) -> None:
    # dirichlet(0.5)(y, 5.0, rng) failed in numpy with a TypeError, iid() took 3.0 and True
    # (one client), and an int seed for rng ended in "'int' object has no attribute ...".
    labels = np.repeat(np.arange(4), 50)
    for count in (5.0, True):
        with pytest.raises(ValueError, match="num_clients must be an integer >= 1"):
            part(labels, count, rng(0))
    with pytest.raises(TypeError, match="rng must be a np.random.Generator"):
        part(labels, 5, 0)


def test_errors_say_what_is_wrong() -> None:
    labels = np.repeat(np.arange(3), 10)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0, got 0"):
        dirichlet(0)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0, got -1"):
        hsu_dirichlet(-1)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        quantity_skew(0.0)
    # inf made every draw NaN (an even split, silently); "0.5" failed in a comparison.
    for bad in (float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            dirichlet(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            quantity_skew(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_clients"):
        iid()(labels, 0, rng(0))
    with pytest.raises(ValueError, match="num_clients"):
        iid()(labels, 31, rng(0))
    with pytest.raises(ValueError, match="shards"):
        shards(2)(labels, 16, rng(0))
    with pytest.raises(ValueError, match="k=4 exceeds the 3 classes"):
        classes_per_client(4)(labels, 2, rng(0))
    with pytest.raises(ValueError, match="exceeds the 30 samples"):
        dirichlet(1.0, min_size=10)(labels, 4, rng(0))
    with pytest.raises(ValueError, match="labels must be a 1-D integer"):
        iid()(np.zeros(5), 2, rng(0))


def test_dirichlet_gives_up_with_a_clear_message() -> None:
    from shoal.data import Dirichlet

    one_class = np.zeros(20, dtype=np.int64)  # needs an exact 10/10 split of one class
    with pytest.raises(ValueError, match="infeasible"):
        Dirichlet(0.01, min_size=10, max_tries=5)(one_class, 2, rng(0))


def test_a_vanishing_alpha_gives_each_class_to_one_client() -> None:
    """Dir(alpha -> 0) puts a class's mass on one client. When the draw put it on a client
    already full, every open share underflowed to 0 and the class was split evenly among the
    open clients: alpha = 1e-6 came out less skewed than 1e-3 (0.84 of a class on its largest
    owner against 0.98)."""
    labels = np.repeat(np.arange(10), 600)
    for seed in range(5):
        parts = dirichlet(1e-6, min_size=0)(labels, 20, rng(seed))
        hist = np.stack([np.bincount(labels[p], minlength=10) for p in parts])
        assert (hist.max(axis=0) == 600).all()  # each class whole on one client


def test_feature_noise_and_synthetic_refuse_what_they_cannot_use() -> None:
    # sigma = NaN filled the features with NaN; iid="no" built the IID variant.
    from shoal.data import feature_noise, synthetic

    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got nan"):
        feature_noise(torch.as_tensor(x), [np.arange(4)], float("nan"), rng(0))
    with pytest.raises(TypeError, match="iid must be true or false"):
        synthetic(1, 1, iid="no")  # type: ignore[arg-type]
