"""``spawn_local`` as its docstring promises: each rank's environment and one thread, results
in rank order whatever order they arrive in, and a rank that dies or outlives the timeout
fails the call naming it. The conformance tests only ever see the happy path, in which
ranks happen to finish close together."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import torch

from shoal.runtime.spawn import spawn_local


def _report() -> dict[str, Any]:
    rank = int(os.environ["RANK"])
    if rank == 0:
        time.sleep(1.0)  # rank 1 is done first: its result arrives first
    return {
        "rank": rank,
        "local_rank": os.environ["LOCAL_RANK"],
        "world": os.environ["WORLD_SIZE"],
        "extra": os.environ.get("SHOAL_SPAWN_TEST"),
        "threads": torch.get_num_threads(),
    }


def test_ranks_see_their_environment_one_thread_and_return_in_rank_order(monkeypatch):
    # Inherited by the children: without set_num_threads(1) each would start with 3.
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    got = spawn_local(_report, 2, env={"SHOAL_SPAWN_TEST": "yes"}, timeout_s=120)
    assert [g["rank"] for g in got] == [0, 1]
    assert [g["local_rank"] for g in got] == ["0", "1"]
    assert all(g["world"] == "2" and g["extra"] == "yes" for g in got)
    assert [g["threads"] for g in got] == [1, 1]


def test_no_ranks_is_refused():
    with pytest.raises(ValueError, match="world_size must be an integer >= 1"):
        spawn_local(_report, 0)


def _die() -> None:
    os._exit(7)


def test_a_rank_that_dies_is_named_with_its_exit_code():
    with pytest.raises(RuntimeError, match="rank 0 died with exit code 7"):
        spawn_local(_die, 1, timeout_s=60)


def _linger() -> str:
    time.sleep(3.0)
    return "late"


def test_a_rank_that_outlives_the_timeout_fails_the_call():
    with pytest.raises(TimeoutError, match=r"ranks \[0\] did not finish within 1 s"):
        spawn_local(_linger, 1, timeout_s=1.0)


def _rank_1_dies_mid_collective(how: str) -> None:
    import torch.distributed as dist

    from shoal.runtime.procgroup import init_from_env

    ctx = init_from_env(timeout_s=10)
    dist.all_reduce(torch.ones(1))  # both ranks are in the group
    if ctx.rank == 1:
        if how == "exit":
            os._exit(3)
        raise ValueError("boom on rank 1")
    time.sleep(0.5)
    dist.all_reduce(torch.ones(1))  # rank 0: a broken collective


@pytest.mark.parametrize(
    ("how", "match"),
    [("exit", "rank 1 died with exit code 3"), ("raise", "(?s)rank 1 failed:.*boom on rank 1")],
)
def test_the_rank_that_failed_is_named_not_the_one_whose_collective_broke(how, match):
    # Rank 0's broken all_reduce usually reached the queue first, and named rank 0.
    with pytest.raises(RuntimeError, match=match):
        spawn_local(_rank_1_dies_mid_collective, 2, how, timeout_s=60)
