"""Which rank trains which client in DistRuntime: LPT for stateless rounds, else k mod world."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from shoal.algorithms import fedavg, fedprox, scaffold
from shoal.compress import error_feedback, identity, qsgd, top_k
from shoal.runtime.dist import DistRuntime, lpt
from shoal.runtime.procgroup import DistContext


def test_lpt_on_grahams_example():
    # Longest first, each to the least-loaded rank: 5|4, then 3 joins 4, 3 joins 5, 3 joins 7.
    ranks = lpt([5, 4, 3, 3, 3], 2)
    assert ranks.tolist() == [0, 1, 1, 0, 1]
    assert np.bincount(ranks, [5, 4, 3, 3, 3]).max() == 10  # the best split (5+4 | 3+3+3) is 9


def _best_makespan(work: list[int], world: int) -> int:
    return min(
        int(np.bincount(np.array(a), work, world).max())
        for a in itertools.product(range(world), repeat=len(work))
    )


@pytest.mark.parametrize("world", [2, 3])
def test_lpt_is_within_grahams_bound_of_the_best_split(world):
    rng = np.random.default_rng(0)
    for _ in range(30):
        work = [int(w) for w in rng.integers(1, 20, size=int(rng.integers(1, 8)))]
        ranks = lpt(work, world)
        assert ranks.shape == (len(work),) and set(ranks.tolist()) <= set(range(world))
        best = _best_makespan(work, world)
        assert np.bincount(ranks, work, world).max() <= (4 / 3 - 1 / (3 * world)) * best + 1e-9


def _task(algorithm, compressor, steps, clients):
    plans = [SimpleNamespace(num_steps=s) for s in steps]
    return SimpleNamespace(
        algorithm=algorithm,
        compressor=compressor,
        params_D=torch.zeros(50),
        plans=plans,
        clients=np.array(clients),
    )


def _runtime(world: int, balance: bool = True) -> DistRuntime:
    ctx = DistContext(0, world, 0, torch.device("cpu"), "gloo", 0)
    return DistRuntime(balance=balance, _ctx=ctx)


STEPS, CLIENTS = [9, 1, 1, 1, 8], [0, 2, 4, 6, 8]  # k mod 2 puts all the work on rank 0


@pytest.mark.parametrize(
    "algorithm, compressor",
    [(fedavg(0.1), identity()), (fedprox(0.1, mu=0.1), top_k(0.1))],
)
def test_stateless_rounds_are_spread_by_work(algorithm, compressor):
    ranks = _runtime(2).assign(_task(algorithm, compressor, STEPS, CLIENTS))  # type: ignore[arg-type]
    assert ranks.tolist() == [0, 1, 0, 1, 1]  # 9 | 8, the 1s to the lighter: 10 | 10
    assert ranks.tolist() == lpt(STEPS, 2).tolist()


@pytest.mark.parametrize(
    "algorithm, compressor",
    [
        (scaffold(0.1), identity()),  # control variates c_k
        (fedavg(0.1), error_feedback(top_k(0.1))),  # a residual
        (fedavg(0.1), qsgd(4)),  # a per-client seed and step counter
    ],
)
def test_clients_with_state_stay_on_rank_k_mod_world(algorithm, compressor):
    ranks = _runtime(2).assign(_task(algorithm, compressor, STEPS, CLIENTS))  # type: ignore[arg-type]
    assert ranks.tolist() == [0, 0, 0, 0, 0]


def test_balance_false_keeps_k_mod_world():
    task = _task(fedavg(0.1), identity(), STEPS, [1, 2, 3, 4, 5])
    assert _runtime(3, balance=False).assign(task).tolist() == [1, 2, 0, 1, 2]  # type: ignore[arg-type]
