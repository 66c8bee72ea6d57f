"""Real gloo processes: DistComm gives the same numbers as SimComm; stragglers keep training.

One spawn per world size runs every check (process start-up is what costs time), shared by
the tests below through a module-scoped fixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from shoal.compress.wire import payload_nbytes
from shoal.functional import ParamSpec, cross_entropy
from shoal.parallel import SimComm
from shoal.parallel.records import evaluate
from shoal.runtime.spawn import spawn_local

from .cases import (
    CASES,
    STRAGGLER_STEPS,
    dist_worker,
    gather_sequence,
    mixed_payload,
    push_sum_start,
    run_case,
    tiny_data,
    tiny_model,
)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Callable[[int], list[dict[str, Any]]]:
    """``spawned(world)``: every rank's results, computed once per world size."""
    cache: dict[int, list[dict[str, Any]]] = {}

    def get(world: int) -> list[dict[str, Any]]:
        if world not in cache:
            out = tmp_path_factory.mktemp(f"dist{world}")
            cache[world] = spawn_local(
                dist_worker, world, list(CASES), str(out), world == 4, timeout_s=300
            )
        return cache[world]

    return get


@pytest.fixture(params=[2, 4], ids=["world2", "world4"])
def runs(request, spawned) -> tuple[int, list[dict[str, Any]]]:
    return request.param, spawned(request.param)


def _initial_test_loss() -> float:
    model, data = tiny_model(), tiny_data()
    spec = ParamSpec.of(model)
    init = spec.flatten(model)
    return evaluate(model, spec, init, data.test.x, data.test.y, cross_entropy, 256)[0]


def test_distcomm_equals_simcomm(runs):
    world, got = runs
    init = ParamSpec.of(tiny_model()).flatten(tiny_model())
    for name in CASES:
        comm = SimComm(world)
        sim = run_case(name, comm)
        assert (sim.params_WD - init).abs().max() > 1e-2, f"{name} did not train"
        for rank in range(world):
            torch.testing.assert_close(
                got[rank][name]["params"],
                sim.params_WD[rank],
                rtol=0,
                atol=1e-5,
                msg=f"{name} rank {rank}",
            )
        # Exact bytes: the processes together sent what the simulation counted.
        assert sum(g[name]["bytes"] for g in got) == comm.bytes_sent, name
        rows = got[0][name]["rows"]
        assert [r["step"] for r in rows] == [r["step"] for r in sim.metrics] == [2, 4, 5]
        for r_dist, r_sim in zip(rows, sim.metrics):
            assert r_dist["bytes_sent"] == r_sim["bytes_sent"], name
            assert r_dist["samples"] == r_sim["samples"], name
            # Every process charges the exchanges it recorded: the simulation's figure.
            assert math.isclose(r_dist["sim_seconds"], r_sim["sim_seconds"], rel_tol=1e-12), name
            assert math.isclose(r_dist["train_loss"], r_sim["train_loss"], abs_tol=1e-5), name
            # The same model is scored: the workers' average, also where gossip keeps the
            # workers' models apart (each process scored a slice of the test set).
            assert math.isclose(r_dist["test_loss"], r_sim["test_loss"], abs_tol=1e-5), name
            assert r_dist["test_accuracy"] == r_sim["test_accuracy"], name
        assert all(g[name]["rows"] == [] for g in got[1:])  # only rank 0 reports


def test_distributed_resume_continues_overlap_sgp(runs):
    world, got = runs
    sim = run_case("sgp_overlap", SimComm(world))
    for rank in range(world):
        torch.testing.assert_close(
            got[rank]["sgp_overlap_resumed"]["params"], sim.params_WD[rank], rtol=0, atol=1e-5
        )
    # The first run reported at its last step (3); the extended run goes on from there.
    assert [r["step"] for r in got[0]["sgp_overlap_resumed"]["rows"]] == [2, 3, 4, 5]


def test_distributed_push_sum_averages_exactly(runs):
    world, got = runs
    steps = int(math.log2(world))
    mean = push_sum_start(world).mean(0)
    for rank in range(world):
        torch.testing.assert_close(
            got[rank]["push_sum"]["z"][steps - 1][0], mean, rtol=0, atol=1e-12
        )
    # Mass is conserved at every step: sum of numerators and of weights.
    for t in range(2):
        x_sum = sum(got[r]["push_sum"]["x"][t][0] for r in range(world))
        w_sum = sum(float(got[r]["push_sum"]["w"][t][0, 0]) for r in range(world))
        torch.testing.assert_close(x_sum, push_sum_start(world).sum(0), rtol=0, atol=1e-12)
        assert math.isclose(w_sum, world, abs_tol=1e-12)


def test_payloads_with_different_layouts_are_gathered_exactly(runs):
    world, got = runs
    sent = [mixed_payload(r) for r in range(world)]
    assert "counts" in sent[0] and "counts" not in sent[1]  # the layouts really differ
    for rank in range(world):
        gathered = got[rank]["mixed_gather"]
        assert len(gathered) == world
        for mine, theirs in zip(gathered, sent):
            assert list(mine) == list(theirs)
            for key, t in theirs.items():
                assert mine[key].dtype == t.dtype and torch.equal(mine[key], t), key
        # Every process records every worker's message size, as the simulation does.
        sim = SimComm(world)
        sim.all_gather_payloads(sent)
        assert got[rank]["mixed_gather_exchanges"] == sim.exchanges
        assert sim.exchanges[0].nbytes_N == tuple(payload_nbytes(p) for p in sent)


def test_gathers_that_fit_the_learned_capacity_or_outgrow_it_are_exact(runs):
    """One all-gather when every block fits the capacity the last gather set, a second one
    when a block outgrows it: either way every process gets every message, bit for bit."""
    world, got = runs
    sent = []
    for r in range(world):
        torch.manual_seed(r)
        sent.append(gather_sequence(r))
    for rank in range(world):
        for step, gathered in enumerate(got[rank]["gather_sequence"]):
            for mine, theirs in zip(gathered, (s[step] for s in sent), strict=True):
                assert list(mine) == list(theirs)
                for key, t in theirs.items():
                    assert mine[key].dtype == t.dtype and torch.equal(mine[key], t), key
        # Every process derives the same capacity: 16 + the largest block, plus 1/32.
        largest = [max(16 + payload_nbytes(s[step]) for s in sent) for step in range(4)]
        assert got[rank]["gather_capacity"] == [n + n // 32 for n in largest]
    assert largest[1] == largest[0] and largest[2] > largest[1] * 33 / 32 > largest[3]


def test_a_nan_on_one_worker_stops_every_process_with_the_same_message(runs):
    _, got = runs
    said = {g["nan_one_worker"] for g in got}
    assert len(said) == 1 and said.pop().startswith("step 2: the test loss is nan")


def test_stragglers_keep_training_sgp_and_async_easgd(spawned):
    got = spawned(4)
    init_loss = _initial_test_loss()
    # SGP on 4 workers, worker 1 five times slower: rank 0 reports, the loss goes down.
    sgp_rows = got[0]["straggler_sgp"]
    assert [r["step"] for r in sgp_rows] == [10, 20, 30]
    assert sgp_rows[-1]["test_loss"] < init_loss
    assert all(r["samples_per_second"] > 0 for r in sgp_rows)
    # Asynchronous EASGD, 3 workers + the server (rank 3): the server evaluates the centre
    # and writes the rows; every worker ran all its steps.
    rows = got[3]["straggler_easgd"]
    assert all(got[r]["straggler_easgd"] == [] for r in range(3))
    assert rows[-1]["step"] == STRAGGLER_STEPS
    assert rows[-1]["samples"] == STRAGGLER_STEPS * 16 * 3
    assert rows[-1]["test_loss"] < init_loss - 0.05
    assert all(r["samples_per_second"] > 0 for r in rows)
    # Exact bytes: what the server counted is what all four processes sent.
    assert rows[-1]["bytes_sent"] == sum(g["straggler_easgd_bytes"] for g in got)
    centre = got[3]["straggler_easgd_params"]
    for g in got:  # every rank ends with the final centre
        torch.testing.assert_close(g["straggler_easgd_params"], centre, rtol=0, atol=0)


def test_async_easgd_stops_every_worker_at_the_target(spawned):
    got = spawned(4)
    summary, rows = got[3]["target_easgd"], got[3]["target_easgd_rows"]
    assert summary["steps_to_target"] is not None and summary["time_to_target_seconds"] > 0
    assert rows[-1]["step"] < 300  # the workers stopped early (and the run did not hang)
    assert max(r["test_accuracy"] for r in rows) >= 0.6
