"""Partitioners: split a labelled dataset's indices among clients.

A :data:`Partition` is ``(labels_N, num_clients, rng) -> [indices per client]``; it sees only the
labels, returns one int64 index array per client, and draws all randomness from the given
``np.random.Generator``, so the same seed gives the same split. Clients are disjoint and cover
the data unless the scheme's definition drops samples (``shards`` drops the remainder,
``classes_per_client`` the classes nobody owns, ``hsu_dirichlet`` everything beyond
``num_clients * samples_per_client``).

Sources: McMahan et al. 2017 (IID, shards); Yurochkin et al. 2019 / IBM FedMA
``utils.py::partition_data('hetero-dir')`` and Li et al. 2022 NIID-Bench
(Xtra-Computing/NIID-Bench ``utils.py``) for Dirichlet label skew, ``#C=k`` and quantity skew;
Hsu et al. 2019 for per-client Dirichlet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from shoal.checks import check_count, check_number

Partition = Callable[[np.ndarray, int, np.random.Generator], list[np.ndarray]]


def _check(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a np.random.Generator (np.random.default_rng(seed)), got {rng!r}"
        )
    check_count(num_clients, "num_clients")  # 3.0 was accepted, True made one client
    if num_clients > len(labels):
        raise ValueError(
            f"num_clients must be in [1, number of samples = {len(labels)}], got {num_clients}"
        )
    return labels


def _fits(name: str, per_client: int, num_clients: int, n: int) -> None:
    """``per_client`` samples for each of ``num_clients`` must fit in the ``n`` samples."""
    if per_client * num_clients > n:
        raise ValueError(f"{name}={per_client} x num_clients={num_clients} exceeds the {n} samples")


def _dirichlet(rng: np.random.Generator, alpha: float, prior: np.ndarray) -> np.ndarray:
    """``Dir(alpha * prior)``, or its limit where numpy's draw degenerates to all zeros: a
    concentration whose sum overflows (alpha ~ 1e307 over a few clients) is the even split of
    alpha -> inf, and one whose every gamma draw underflows (alpha ~ 1e-323) is one coordinate,
    drawn by the prior, as alpha -> 0. The zeros were read as the other limit: a huge alpha
    gave each class to one client, a tiny one an even split."""
    q = rng.dirichlet(alpha * prior)
    if q.sum() > 0:
        return q
    if alpha > 1.0:
        return np.full(len(prior), 1.0 / len(prior))
    one = np.zeros(len(prior))
    one[rng.choice(len(prior), p=prior / prior.sum())] = 1.0
    return one


def _finish(parts: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle each client's indices (so no client sees its data grouped by class)."""
    return [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]


@dataclass(frozen=True)
class IID:
    """Uniformly random split into near-equal parts (sizes differ by at most one)."""

    def __call__(
        self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        labels = _check(labels, num_clients, rng)
        return _finish(np.array_split(rng.permutation(len(labels)), num_clients), rng)


@dataclass(frozen=True)
class Dirichlet:
    """Per-class Dirichlet label skew (FedMA ``hetero-dir``; NIID-Bench ``noniid-labeldir``).

    For each class ``k``: shuffle its indices, draw ``p ~ Dir_W(alpha)``, zero ``p_j`` for clients
    already holding ``>= N / W`` samples, renormalise, and cut at ``cumsum(p) * n_k`` (cut points
    truncated to integers, as in NIID-Bench's code: so the last client can still get one sample
    of a class when its ``p_j`` was zeroed). The whole draw is repeated until the smallest
    client has ``>= min_size`` samples; each client's indices are shuffled at the end. If every
    remaining ``p_j`` underflows to zero (only for tiny ``alpha``, where the draw put all its mass
    on a client already full; the original would divide by zero) the class goes to one client
    still below ``N / W``, drawn uniformly: the limit of the renormalised draw as ``alpha -> 0``.
    (An even split there made ``alpha = 1e-6`` less skewed than ``1e-3``.)
    """

    alpha: float
    min_size: int = 10
    max_tries: int = 1000

    def __post_init__(self) -> None:
        check_number(self.alpha, "alpha", positive=True)
        check_count(self.min_size, "min_size", least=0)
        check_count(self.max_tries, "max_tries")

    def __call__(
        self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        labels = _check(labels, num_clients, rng)
        n = len(labels)
        _fits("min_size", self.min_size, num_clients, n)
        # Each class's indices are found once, not once per draw: with many draws (a large
        # min_size) the scans dominated. A permutation's draws depend only on its length.
        by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
        for _ in range(self.max_tries):
            # The pieces are cut only once a draw is kept (a rejected draw costs no slicing).
            cut: list[tuple[np.ndarray, np.ndarray]] = []
            sizes = np.zeros(num_clients, dtype=np.int64)
            for members in by_class:
                idx_k = rng.permutation(members)
                p = _dirichlet(rng, float(self.alpha), np.ones(num_clients))
                open_ = sizes < n / num_clients
                p = p * open_
                if p.sum() > 0:
                    p = p / p.sum()
                else:
                    p = np.zeros(num_clients)
                    p[rng.choice(np.flatnonzero(open_))] = 1.0
                cuts = (np.cumsum(p) * len(idx_k)).astype(np.int64)[:-1]
                sizes += np.diff(cuts, prepend=0, append=len(idx_k))
                cut.append((idx_k, cuts))
            if sizes.min() >= self.min_size:
                parts = zip(*(np.split(idx_k, cuts) for idx_k, cuts in cut))
                return _finish([np.concatenate(pieces) for pieces in parts], rng)
        raise ValueError(
            f"dirichlet(alpha={self.alpha}, min_size={self.min_size}) found no split of {n} "
            f"samples over {num_clients} clients in {self.max_tries} draws; this alpha / min_size "
            "/ num_clients combination is infeasible or too unlikely -- raise alpha or lower "
            "min_size or num_clients"
        )


@dataclass(frozen=True)
class HsuDirichlet:
    """Per-client Dirichlet label skew (Hsu, Qi & Brown 2019, arXiv:1909.06335).

    Each client draws class proportions ``q ~ Dir(alpha * prior)``, ``prior`` being the global
    class frequencies, then ``samples_per_client`` samples (default ``N // W``) are drawn from
    ``q`` without replacement, clients one after another. When a class pool runs dry its share
    is redistributed: the shortfall is redrawn from ``q`` restricted to classes that still have
    samples; where ``q`` is zero on all of them (underflow, at a small ``alpha``), from a new
    ``Dir(alpha * prior)`` over them, which is the law of ``q`` restricted and renormalized. An
    ``alpha`` so small that a draw underflows entirely takes its limit: one class, drawn by the
    prior. Samples beyond ``W * samples_per_client`` are left out.
    """

    alpha: float
    samples_per_client: int | None = None

    def __post_init__(self) -> None:
        check_number(self.alpha, "alpha", positive=True)
        if self.samples_per_client is not None:
            check_count(self.samples_per_client, "samples_per_client")

    def __call__(
        self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        labels = _check(labels, num_clients, rng)
        n = len(labels)
        m = self.samples_per_client or n // num_clients
        _fits("samples_per_client", m, num_clients, n)
        classes, counts = np.unique(labels, return_counts=True)
        pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
        used = np.zeros(len(classes), dtype=np.int64)
        out = []
        for _ in range(num_clients):
            q = _dirichlet(rng, float(self.alpha), counts / n)
            taken, need = [], m
            while need > 0:
                left = counts - used
                w = q * (left > 0)
                if w.sum() == 0:
                    # q is zero on every class with samples left: at a small alpha its tiny
                    # entries underflowed (72% of draws at 1e-3), and an even split over those
                    # classes made alpha = 1e-3 less skewed than 0.5. q restricted to them and
                    # renormalized is Dir(alpha * their prior): draw that (or its limit).
                    q = np.zeros(len(classes))
                    q[left > 0] = _dirichlet(rng, float(self.alpha), counts[left > 0] / n)
                    w = q
                w = w / w.sum()
                take = np.minimum(rng.multinomial(need, w), left)
                for c in np.flatnonzero(take):
                    taken.append(pools[c][used[c] : used[c] + take[c]])
                    used[c] += take[c]
                need -= int(take.sum())
            out.append(np.concatenate(taken))
        return _finish(out, rng)


@dataclass(frozen=True)
class Shards:
    """McMahan et al. 2017 pathological split: sort by label, cut ``W * shards_per_client``
    equal shards, deal them at random.

    Each client gets exactly ``shards_per_client * (N // (W * shards_per_client))`` samples; the
    last ``N mod (W * shards_per_client)`` samples (of the largest labels) are dropped. A shard
    straddles two labels when class sizes are not multiples of the shard size.
    """

    shards_per_client: int = 2

    def __post_init__(self) -> None:
        check_count(self.shards_per_client, "shards_per_client")

    def __call__(
        self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        labels = _check(labels, num_clients, rng)
        num_shards = num_clients * self.shards_per_client
        size = len(labels) // num_shards
        if size == 0:
            raise ValueError(
                f"{num_shards} shards ({num_clients} clients x {self.shards_per_client}) need at "
                f"least {num_shards} samples, got {len(labels)}"
            )
        order = np.argsort(labels, kind="stable")
        shard_ids = rng.permutation(num_shards).reshape(num_clients, self.shards_per_client)
        parts = [
            np.concatenate([order[s * size : (s + 1) * size] for s in row]) for row in shard_ids
        ]
        return _finish(parts, rng)


@dataclass(frozen=True)
class ClassesPerClient:
    """NIID-Bench ``#C=k`` (``noniid-#label<k>``): each client owns ``k`` classes.

    Client ``i`` owns class ``i mod K`` plus ``k - 1`` other distinct classes at random; each
    class is split into equal parts among its owners. Classes nobody owns (possible when
    ``W < K``) are dropped.
    """

    k: int

    def __post_init__(self) -> None:
        check_count(self.k, "k")

    def __call__(
        self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        labels = _check(labels, num_clients, rng)
        classes = np.unique(labels)
        num_classes = len(classes)
        if self.k > num_classes:
            raise ValueError(f"k={self.k} exceeds the {num_classes} classes present")
        owned = []
        for i in range(num_clients):
            others = np.delete(np.arange(num_classes), i % num_classes)
            owned.append({i % num_classes, *rng.choice(others, self.k - 1, replace=False)})
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in range(num_classes):
            owners = [i for i in range(num_clients) if c in owned[i]]
            if not owners:
                continue
            idx = rng.permutation(np.flatnonzero(labels == classes[c]))
            for i, piece in zip(owners, np.array_split(idx, len(owners))):
                parts[i].append(piece)
        return _finish([np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts], rng)


@dataclass(frozen=True)
class QuantitySkew:
    """NIID-Bench ``iid-diff-quantity``: IID labels, Dirichlet sizes.

    ``q ~ Dir_W(beta)`` is redrawn until ``min(q) * N >= min_size``; a random permutation is cut
    at ``cumsum(q) * N``.
    """

    beta: float
    min_size: int = 10
    max_tries: int = 1000

    def __post_init__(self) -> None:
        check_number(self.beta, "beta", positive=True)
        check_count(self.min_size, "min_size", least=0)
        check_count(self.max_tries, "max_tries")

    def __call__(
        self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        labels = _check(labels, num_clients, rng)
        n = len(labels)
        _fits("min_size", self.min_size, num_clients, n)
        perm = rng.permutation(n)
        for _ in range(self.max_tries):
            q = _dirichlet(rng, float(self.beta), np.ones(num_clients))
            if q.min() * n >= self.min_size:
                cuts = (np.cumsum(q) * n).astype(np.int64)[:-1]
                return _finish(np.split(perm, cuts), rng)
        raise ValueError(
            f"quantity_skew(beta={self.beta}, min_size={self.min_size}) found no sizes for "
            f"{num_clients} clients and {n} samples in {self.max_tries} draws; raise beta or "
            "lower min_size or num_clients"
        )


@dataclass(frozen=True, eq=False)
class Natural:
    """The data's own users (LEAF writers, Synthetic users), returned unchanged."""

    user_indices: tuple[np.ndarray, ...] = field(default=())

    def __call__(
        self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        labels = _check(labels, num_clients, rng)
        if num_clients != len(self.user_indices):
            raise ValueError(
                f"the natural split has {len(self.user_indices)} users; num_clients must equal "
                f"that, got {num_clients}"
            )
        return [np.asarray(u, dtype=np.int64).copy() for u in self.user_indices]


def iid() -> IID:
    """Uniform random split (McMahan et al. 2017)."""
    return IID()


def dirichlet(alpha: float, min_size: int = 10) -> Dirichlet:
    """Per-class Dirichlet label skew; smaller ``alpha`` is more skewed. See :class:`Dirichlet`.

    ``min_size`` 10 is NIID-Bench's rule; a config's ``partition.min_size`` defaults to 1
    (10 is infeasible for small datasets over many clients), so the two split differently.
    """
    return Dirichlet(alpha, min_size)


def hsu_dirichlet(alpha: float, samples_per_client: int | None = None) -> HsuDirichlet:
    """Per-client Dirichlet label skew (Hsu et al. 2019). See :class:`HsuDirichlet`."""
    return HsuDirichlet(alpha, samples_per_client)


def shards(shards_per_client: int = 2) -> Shards:
    """McMahan's pathological sort-and-shard split. See :class:`Shards`."""
    return Shards(shards_per_client)


def classes_per_client(k: int) -> ClassesPerClient:
    """NIID-Bench ``#C=k``. See :class:`ClassesPerClient`."""
    return ClassesPerClient(k)


def quantity_skew(beta: float, min_size: int = 10) -> QuantitySkew:
    """NIID-Bench quantity skew. See :class:`QuantitySkew`. A config's ``partition.min_size``
    defaults to 1, not 10 (see :func:`dirichlet`)."""
    return QuantitySkew(beta, min_size)


def natural(user_indices: Sequence[np.ndarray]) -> Natural:
    """The data's natural per-user split (e.g. ``FederatedDataset.natural_clients``)."""
    return Natural(tuple(np.asarray(u, dtype=np.int64) for u in user_indices))
