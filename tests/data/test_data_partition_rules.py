"""Partitioners against the parts of their definitions the other tests leave open.

Sources as in ``shoal.data.partition``: McMahan et al. 2017 (IID, shards), NIID-Bench
(Xtra-Computing/NIID-Bench ``utils.py::partition_data``: ``noniid-labeldir``, ``#C=k``,
``iid-diff-quantity``) and Hsu et al. 2019.
"""

from __future__ import annotations

import numpy as np
import pytest

from shoal.data import (
    Dirichlet,
    classes_per_client,
    dirichlet,
    hsu_dirichlet,
    iid,
    label_histogram,
    quantity_skew,
    shards,
)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def is_block(idx: np.ndarray) -> bool:
    """Whether ``idx`` is a run of consecutive integers (in any order)."""
    s = np.sort(idx)
    return bool(len(s) == 0 or s[-1] - s[0] == len(s) - 1)


def runs(seq: np.ndarray) -> int:
    """Number of maximal runs of equal consecutive values."""
    return int(len(seq) > 0) + int((seq[1:] != seq[:-1]).sum())


def assert_closed_get_nothing(hist: np.ndarray, closed: np.ndarray) -> None:
    """Closed clients (``p_j = 0``) get no sample of the class, except that the last client may
    get one: ``int(cumsum(p) * n_k)`` truncates, and the last piece ``idx_k[cuts[-1]:]`` takes
    the remainder when ``cumsum(p)[-2]`` rounds to just below 1 (as in NIID-Bench)."""
    assert (hist[:-1][closed[:-1]] == 0).all()
    assert (hist[-1][closed[-1]] <= 1).all()


def test_iid_mixes_sorted_labels() -> None:
    # IID = a uniformly random split: with the labels sorted, each of 10 clients still gets
    # about 10 of each of the 10 classes (not one whole class each, as contiguous blocks would).
    labels = np.repeat(np.arange(10), 100)
    parts = iid()(labels, 10, rng(0))
    hist = label_histogram(labels, parts, 10)
    assert (hist > 0).sum(axis=1).min() == 10
    assert not any(is_block(p) for p in parts)


@pytest.mark.parametrize("seed", range(6))
def test_dirichlet_closes_clients_that_hold_n_over_w(seed: int) -> None:
    # NIID-Bench: p_j = p_j * (len(idx_batch[j]) < N / n_parties), classes in np.unique order.
    # So once a client holds >= N / W samples it gets nothing of any later class.
    labels = np.repeat(np.arange(10), 40)  # N = 400, W = 4: N / W = 100 = 2.5 classes
    parts = dirichlet(0.1, min_size=1)(labels, 4, rng(seed))
    hist = label_histogram(labels, parts, 10)
    before = np.cumsum(hist, axis=1) - hist  # samples held before each class was dealt
    closed = before >= 400 / 4
    assert closed.any(), "no client reached N / W: the case does not exercise the cap"
    assert_closed_get_nothing(hist, closed)


def test_dirichlet_closes_a_client_at_exactly_n_over_w() -> None:
    # Classes of exactly N / W samples and a tiny alpha: each class goes (almost) whole to one
    # client, which then holds exactly N / W and must be closed for the later classes.
    labels = np.repeat(np.arange(6), 50)  # N = 300, W = 6: N / W = 50
    seen_exact = False
    for seed in range(10):
        parts = dirichlet(0.01, min_size=1)(labels, 6, rng(seed))
        hist = label_histogram(labels, parts, 6)
        before = np.cumsum(hist, axis=1) - hist
        seen_exact |= bool((before == 50).any())
        assert_closed_get_nothing(hist, before >= 50)
    assert seen_exact


def test_dirichlet_accepts_a_smallest_client_of_exactly_min_size() -> None:
    # N = 20, W = 2, min_size = 10: only an exact 10/10 split is acceptable, and a near-uniform
    # p (alpha = 1000) cuts at int(p_0 * 20) = 10 in about half of the draws.
    parts = Dirichlet(1000.0, min_size=10)(np.zeros(20, dtype=np.int64), 2, rng(0))
    assert sorted(len(p) for p in parts) == [10, 10]


def niid_bench_labeldir(labels, w, alpha, min_size, rng):  # type: ignore[no-untyped-def]
    """NIID-Bench's ``noniid-labeldir`` loop, literally (with our draws: one generator, the
    classes in ``np.unique`` order, the clients' indices shuffled at the end)."""
    n = len(labels)
    while True:
        idx_batch = [[] for _ in range(w)]
        for k in np.unique(labels):
            idx_k = rng.permutation(np.where(labels == k)[0])
            p = rng.dirichlet(np.repeat(alpha, w))
            p = np.array([q * (len(b) < n / w) for q, b in zip(p, idx_batch)])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx_k)).astype(int)[:-1]
            idx_batch = [b + s.tolist() for b, s in zip(idx_batch, np.split(idx_k, cuts))]
        if min(len(b) for b in idx_batch) >= min_size:
            return [rng.permutation(np.array(b, dtype=np.int64)) for b in idx_batch]


@pytest.mark.parametrize(("alpha", "w", "min_size"), [(0.5, 10, 10), (0.3, 20, 40), (5.0, 7, 1)])
def test_dirichlet_equals_niid_bench_draw_for_draw(alpha: float, w: int, min_size: int) -> None:
    # (0.3, 20, 40) rejects four draws before one is kept: the kept one must be the same.
    labels = rng(7).integers(0, 10, size=1500)
    ours = Dirichlet(alpha, min_size=min_size)(labels, w, rng(3))
    theirs = niid_bench_labeldir(labels, w, alpha, min_size, rng(3))
    assert [p.tolist() for p in ours] == [p.tolist() for p in theirs]


def test_dirichlet_shuffles_each_class_before_cutting() -> None:
    # NIID-Bench shuffles idx_k before splitting it, so a client's share of one class is a
    # random subset, not the first or last indices of that class.
    labels = np.zeros(400, dtype=np.int64)
    parts = dirichlet(100.0, min_size=10)(labels, 2, rng(0))
    assert not any(is_block(p) for p in parts)


def test_classes_per_client_shuffles_each_class_before_splitting() -> None:
    labels = np.zeros(400, dtype=np.int64)
    parts = classes_per_client(1)(labels, 2, rng(0))  # both clients own the only class
    assert [len(p) for p in parts] == [200, 200]
    assert not any(is_block(p) for p in parts)


@pytest.mark.parametrize(
    "part",
    [shards(2), dirichlet(0.5), classes_per_client(2), hsu_dirichlet(0.5)],
    ids=["shards", "dirichlet", "classes_per_client", "hsu_dirichlet"],
)
def test_clients_do_not_see_their_data_grouped_by_class(part) -> None:
    labels = np.repeat(np.arange(10), 100)
    checked = 0
    for p in part(labels, 10, rng(3)):
        seq = labels[p]
        counts = np.sort(np.bincount(seq))[::-1]
        if len(counts) >= 2 and counts[1] >= 5:
            # grouped by class: exactly one run per class; shuffled: more
            assert runs(seq) > int((counts > 0).sum())
            checked += 1
    assert checked >= 3


def test_quantity_skew_smaller_beta_means_more_unequal_sizes() -> None:
    labels = np.zeros(10_000, dtype=np.int64)

    def spread(beta: float) -> float:
        cv = []
        for s in range(5):
            sizes = np.array([len(p) for p in quantity_skew(beta, min_size=1)(labels, 10, rng(s))])
            cv.append(sizes.std() / sizes.mean())
        return float(np.mean(cv))

    # q ~ Dir_10(beta): coefficient of variation of q_j is sqrt((W - 1) / (W beta + 1))
    assert spread(1000.0) < 0.05
    assert spread(0.3) > 1.0


@pytest.mark.parametrize("seed", range(5))
def test_quantity_skew_redraws_until_the_smallest_client_has_min_size(seed: int) -> None:
    # beta = 1 over 10 clients: about 92% of draws have a q_j below 50 / 2000
    labels = np.zeros(2000, dtype=np.int64)
    parts = quantity_skew(1.0, min_size=50)(labels, 10, rng(seed))
    # q_min * N >= min_size; flooring the cumulative cuts can take at most one sample off
    assert min(len(p) for p in parts) >= 49


def test_hsu_dirichlet_uses_the_class_prior() -> None:
    # Hsu et al.: q ~ Dir(alpha * prior); a large alpha puts q at the global class frequencies
    # (here 80% / 20%), so each client's labels follow the prior, not a uniform mix.
    labels = np.array([0] * 1600 + [1] * 400)
    parts = hsu_dirichlet(1000.0, samples_per_client=100)(labels, 10, rng(0))
    frac0 = label_histogram(labels, parts, 2)[:, 0] / 100
    assert np.abs(frac0 - 0.8).max() < 0.15
