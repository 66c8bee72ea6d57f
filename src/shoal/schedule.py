"""Who trains in a round, and on which minibatches: client sampling, local work, stragglers.

All randomness is drawn from generators keyed by ``(seed, round, ...)``: a round's sample and
batches depend on nothing else, so a resumed run, the looped runtime and the vectorized
runtime see exactly the same clients and batches in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.algorithms.base import LocalWork
from shoal.checks import check_count, check_flag, is_real, stragglers_keep

# Stream ids keep the generators of different purposes independent.
_SAMPLE, _STRAGGLE, _BATCHES, _EPOCHS = 0, 1, 2, 3


def round_rng(seed: int, round_idx: int, *stream: int) -> np.random.Generator:
    """A generator that depends only on the run seed, the round and a stream id."""
    return np.random.default_rng([seed, round_idx, *stream])


@dataclass(frozen=True)
class ClientSampler:
    """Sample ``clients_per_round`` clients, uniformly or weighted by size ``n_k``.

    Weighted draws with replacement pick each client with probability ``n_k / n``; without
    replacement they are successive draws proportional to ``n_k`` among the clients not yet
    drawn (``numpy``'s ``choice``), whose inclusion probabilities are *not* proportional to
    ``n_k`` (small clients are included more often). ``replace=False`` is FedAvg's sampling
    (McMahan et al. 2017; FedProx's code samples the same way). ``replace=True,
    weighted=True`` is scheme I of Li et al., "On the Convergence of FedAvg on Non-IID Data"
    (ICLR 2020), which pairs with uniform aggregation weights. With replacement a client can be
    drawn twice in a round: both copies train from the same state on the same minibatches (one
    local run counted twice, as in that paper's analysis, where every device trains and the
    sample picks whose models are averaged), and its stored algorithm state is the one written
    last. Its compressor state is chained instead: the second copy compresses with the state the
    first left (an error-feedback residual sent once, not twice), so the two messages differ;
    each copy is charged its download.
    """

    clients_per_round: int
    replace: bool = False
    weighted: bool = False

    def __post_init__(self) -> None:
        check_count(self.clients_per_round, "clients_per_round")
        check_flag(self.replace, "ClientSampler: replace")  # "no" sampled with replacement
        check_flag(self.weighted, "ClientSampler: weighted")

    def check(self, num_clients: int) -> None:
        if not self.replace and self.clients_per_round > num_clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} exceeds the {num_clients} clients; "
                "lower it or sample with replacement"
            )

    def __call__(self, sizes: np.ndarray, seed: int, round_idx: int) -> np.ndarray:
        self.check(len(sizes))
        rng = round_rng(seed, round_idx, _SAMPLE)
        p = sizes / sizes.sum() if self.weighted else None
        chosen = rng.choice(len(sizes), size=self.clients_per_round, replace=self.replace, p=p)
        return np.asarray(chosen, dtype=np.int64)


@dataclass(frozen=True)
class Stragglers:
    """FedProx's straggler model (Li et al., MLSys 2020; ``flearn/trainers/fedprox.py``).

    Of the ``m`` sampled clients, ``round(m * (1 - fraction))`` chosen at random do the full
    local work; the rest are stragglers that run ``randint(1, E)`` epochs, i.e. 1 to E-1 (with
    E = 1 there is nothing less to do, so they run the one epoch), whatever
    ``LocalWork.min_epochs`` says (it draws the others' epochs, from a stream of its own: the
    same clients straggle with and without it). With ``drop=True`` the stragglers are dropped
    instead (the FedAvg baseline in ``flearn/trainers/fedavg.py``).
    """

    fraction: float = 0.0
    drop: bool = False

    def __post_init__(self) -> None:
        if not (is_real(self.fraction) and 0.0 <= self.fraction <= 1.0):  # True was 1.0
            raise ValueError(f"straggler fraction must be in [0, 1], got {self.fraction!r}")
        check_flag(self.drop, "Stragglers: drop")  # "False" dropped them

    def epochs(self, num_sampled: int, work: LocalWork, seed: int, round_idx: int) -> np.ndarray:
        """Epochs per sampled client; 0 means dropped."""
        epochs: np.ndarray = np.full(num_sampled, work.epochs, dtype=np.int64)
        rng = round_rng(seed, round_idx, _STRAGGLE)
        if work.min_epochs is not None:  # its own stream: it changed who straggled
            draws = round_rng(seed, round_idx, _EPOCHS)
            epochs = draws.integers(work.min_epochs, work.epochs + 1, size=num_sampled)
        if self.fraction == 0.0:
            return epochs
        num_active = stragglers_keep(num_sampled, self.fraction)
        slow = rng.permutation(num_sampled)[num_active:]
        if self.drop:
            epochs[slow] = 0
        elif work.epochs > 1:
            epochs[slow] = rng.integers(1, work.epochs, size=len(slow))
        return epochs


@dataclass(frozen=True)
class Plan:
    """One client's local work for a round: ``T`` minibatches of row indices, padded to ``B``.

    ``mask_TB`` is 1 for real rows and 0 for padding, so a short last batch is averaged over
    its real rows only, as ``DataLoader(drop_last=False)`` does.
    """

    index_TB: np.ndarray
    mask_TB: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.index_TB.shape[0])


def make_plan(
    indices: np.ndarray, work: LocalWork, epochs: int, seed: int, round_idx: int, client: int
) -> Plan:
    """Shuffle the client's rows each epoch and cut them into minibatches."""
    rng = round_rng(seed, round_idx, _BATCHES, client)
    n = len(indices)
    bs = n if work.batch_size is None else min(work.batch_size, n)
    batches: list[np.ndarray] = []
    if work.steps is not None:
        # A fixed number of steps: walk through fresh permutations until enough batches exist.
        while len(batches) < work.steps:
            perm = indices[rng.permutation(n)]
            batches.extend(perm[i : i + bs] for i in range(0, n, bs))
        batches = batches[: work.steps]
    else:
        for _ in range(epochs):
            perm = indices[rng.permutation(n)]
            batches.extend(perm[i : i + bs] for i in range(0, n, bs))
    index = np.zeros((len(batches), bs), dtype=np.int64)
    mask = np.zeros((len(batches), bs), dtype=np.float32)
    for t, b in enumerate(batches):
        # Padding repeats the batch's first row (masked out): row 0 of the dataset, which the
        # client may not hold, made the whole batch NaN when its loss was inf (0 * inf).
        index[t, : len(b)], index[t, len(b) :] = b, b[:1]
        mask[t, : len(b)] = 1.0
    return Plan(index, mask)
