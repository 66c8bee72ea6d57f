"""DistRuntime's bookkeeping that the conformance runs do not reach.

- Which clients may move between ranks is decided per (algorithm, compressor) pair: the same
  algorithm with a stateful compressor must go back to ``k mod world``.
- An algorithm that claims to be stateless (``StatelessClient``) but keeps client state is
  refused before its state is lost on another rank.
- ``gather_store`` gives rank 0 every rank's client states *and* compressor states (the
  conformance test resumes SCAFFOLD, which has no compressor state).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from core.helpers import tiny_data, tiny_model, unequal_clients
from shoal.algorithms import LocalWork, fedavg, scaffold
from shoal.algorithms.base import StatelessClient
from shoal.algorithms.scaffold import Scaffold
from shoal.compress import error_feedback, identity, top_k
from shoal.runtime.base import ClientStore
from shoal.runtime.dist import DistRuntime
from shoal.runtime.procgroup import DistContext
from shoal.runtime.spawn import spawn_local
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

STEPS, CLIENTS = [9, 1, 1, 1, 8], [0, 2, 4, 6, 8]


def _runtime(world: int) -> DistRuntime:
    return DistRuntime(_ctx=DistContext(0, world, 0, torch.device("cpu"), "gloo", 0))


def _task(algorithm: Any, compressor: Any) -> Any:
    return SimpleNamespace(
        algorithm=algorithm,
        compressor=compressor,
        params_D=torch.zeros(50),
        plans=[SimpleNamespace(num_steps=s) for s in STEPS],
        clients=np.array(CLIENTS),
    )


def test_one_algorithm_with_a_new_stateful_compressor_keeps_clients_on_k_mod_world():
    runtime, alg = _runtime(2), fedavg(0.1)
    assert runtime.assign(_task(alg, identity())).tolist() == [0, 1, 0, 1, 1]  # by work
    stateful = runtime.assign(_task(alg, error_feedback(top_k(0.1))))
    assert stateful.tolist() == [c % 2 for c in CLIENTS]  # a residual per client: it stays


class _ClaimsStateless(Scaffold, StatelessClient):
    """SCAFFOLD (it keeps each client's control variate) wrongly marked stateless."""


def test_a_stateless_algorithm_that_keeps_client_state_is_refused():
    alg = scaffold(0.1)
    bad = _ClaimsStateless(**{f.name: getattr(alg, f.name) for f in dataclasses.fields(alg)})
    data = tiny_data()
    cfg = TrainConfig(
        rounds=1,
        sampler=ClientSampler(4),
        work=LocalWork(epochs=1, batch_size=8),
        progress=False,
        device="cpu",
    )
    clients = unequal_clients(len(data.train), 8)
    # The refusal comes before the round's first collective: no process group is needed.
    with pytest.raises(RuntimeError, match="kept client state"):
        train(tiny_model(), data, clients, bad, cfg, runtime=_runtime(1))


def _stores() -> dict[str, Any]:
    from shoal.runtime.procgroup import init_from_env

    rank = init_from_env().rank
    mine = ClientStore(
        {rank: {"c": torch.full((2,), float(rank))}},
        {10 + rank: {"delta": torch.full((3,), float(rank))}},
    )
    got = DistRuntime().gather_store(mine)
    return {"states": got.states, "compressor": got.compressor}


def test_rank_0_gathers_every_ranks_client_and_compressor_states():
    got = spawn_local(_stores, 2, timeout_s=120)
    merged = got[0]
    assert sorted(merged["states"]) == [0, 1] and sorted(merged["compressor"]) == [10, 11]
    for rank in range(2):
        assert torch.equal(merged["states"][rank]["c"], torch.full((2,), float(rank)))
        assert torch.equal(merged["compressor"][10 + rank]["delta"], torch.full((3,), float(rank)))
    # Rank 1 keeps its own.
    assert sorted(got[1]["states"]) == [1] and sorted(got[1]["compressor"]) == [11]


def _unlike_ranks(what: str) -> str:
    """Train on two processes whose rank 1 differs from rank 0 in ``what``."""
    from shoal.runtime.procgroup import init_from_env

    rank = init_from_env().rank
    data = tiny_data()
    seed = rank if what == "seed" else 0
    cfg = TrainConfig(
        rounds=2, sampler=ClientSampler(3), work=LocalWork(epochs=1, batch_size=8),
        progress=False, device="cpu", seed=seed,
    )  # fmt: skip
    model = tiny_model(seed=rank if what == "model" else 0)
    clients = unequal_clients(len(data.train), 8, seed=rank if what == "partition" else 0)
    try:
        train(model, data, clients, fedavg(0.1), cfg, runtime=DistRuntime())
    except ValueError as e:
        return str(e)
    return "trained"


@pytest.mark.parametrize("what", ["model", "seed", "partition", "nothing"])
def test_ranks_that_planned_a_round_differently_are_refused(what):
    # Each rank builds its own task and only sums are exchanged: a model built without a seed,
    # another seed or another partition on one rank trained on silently, mixing two runs.
    got = spawn_local(_unlike_ranks, 2, what, timeout_s=120)
    if what == "nothing":
        assert got == ["trained", "trained"]
        return
    for message in got:
        assert message.startswith("round 1: rank(s) [1] planned it unlike rank 0"), message
