"""``init_from_env`` reads torchrun's variables and asks torch for the store and group that
the module docstring describes; ``shutdown`` and ``DistContext.is_main`` as documented.

torch's store and group constructors are replaced by recorders, so no process group is made:
the checks see exactly the arguments a real one would get (address, port, who hosts the
store, the per-attempt key prefix, the timeout), which a real single-process group on
localhost cannot tell apart (rank 0, no restart, the default address).
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist

from shoal.runtime.procgroup import DistContext, init_from_env, shutdown

CPU = torch.device("cpu")
VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``init_from_env`` passes to torch, with a clean torchrun environment."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls: dict[str, Any] = {}

    def tcp_store(addr: str, port: int, world: int, *, is_master: bool, timeout: timedelta):
        calls["store"] = (addr, port, world, is_master, timeout)
        return "base-store"

    def prefix_store(prefix: str, base: Any) -> tuple[str, Any]:
        calls["prefix"] = prefix
        return ("prefixed", base)

    def init_group(backend: str, **kw: Any) -> None:
        calls["group"] = {"backend": backend, **kw}

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "TCPStore", tcp_store)
    monkeypatch.setattr(dist, "PrefixStore", prefix_store)
    monkeypatch.setattr(dist, "init_process_group", init_group)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return calls


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_a_restarted_worker_of_another_machine(recorded, monkeypatch):
    _env(
        monkeypatch,
        RANK="2",
        WORLD_SIZE="4",
        MASTER_ADDR="10.1.2.3",
        MASTER_PORT="29511",
        TORCHELASTIC_RESTART_COUNT="3",
        TORCHELASTIC_MAX_RESTARTS="5",
    )
    ctx = init_from_env(timeout_s=7.5)
    # LOCAL_RANK unset: the rank stands in for it.
    assert ctx == DistContext(2, 4, 2, CPU, "gloo", 3)
    wait = timedelta(seconds=7.5)
    assert recorded["store"] == ("10.1.2.3", 29511, 4, False, wait)
    assert recorded["prefix"] == "/shoal/attempt_3"  # this attempt's keys only
    group = recorded["group"]
    assert group["backend"] == "gloo" and group["store"] == ("prefixed", "base-store")
    assert (group["rank"], group["world_size"], group["timeout"]) == (2, 4, wait)


def test_rank_0_hosts_the_store_unless_torchruns_agent_does(recorded, monkeypatch):
    _env(monkeypatch, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_PORT="29512")
    ctx = init_from_env()
    assert ctx.attempt == 0 and recorded["prefix"] == "/shoal/attempt_0"
    assert recorded["store"][0] == "127.0.0.1" and recorded["store"][3] is True
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # as torchrun sets it
    init_from_env()
    assert recorded["store"][3] is False


def test_an_unknown_backend_or_a_missing_gpu_is_refused(recorded, monkeypatch):
    _env(monkeypatch, RANK="0", WORLD_SIZE="1", MASTER_PORT="29513")
    with pytest.raises(ValueError, match="backend must be"):
        init_from_env(backend="mpi")
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_from_env(device="cuda")
    assert "group" not in recorded  # refused before any group was made


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> list[torch.device]:
    """Pretend this machine has ``count`` GPUs; returns the devices ``set_device`` was given."""
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_one_gpu_per_process_runs_nccl_with_gloo_for_cpu_tensors(recorded, monkeypatch):
    chosen = _gpus(monkeypatch, 2)
    _env(monkeypatch, RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
         MASTER_PORT="29514")  # fmt: skip
    ctx = init_from_env()
    assert (ctx.device, ctx.backend) == (torch.device("cuda", 1), "nccl")
    assert chosen == [torch.device("cuda", 1)]
    # The round statistics and evaluation scores the runtimes reduce live on the CPU.
    assert recorded["group"]["backend"] == "cpu:gloo,cuda:nccl"


def test_more_processes_than_gpus_fall_back_to_the_cpu_under_auto(recorded, monkeypatch):
    chosen = _gpus(monkeypatch, 1)
    _env(monkeypatch, RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_PORT="29515")
    with pytest.warns(UserWarning, match=r"2 processes on this machine but 1 GPU"):
        ctx = init_from_env()
    assert (ctx.device, ctx.backend, recorded["group"]["backend"]) == (CPU, "gloo", "gloo")
    assert chosen == []
    # Every process of the machine makes the same choice; only its first one says so.
    _env(monkeypatch, RANK="1", LOCAL_RANK="1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert init_from_env().device == CPU
    # Without LOCAL_WORLD_SIZE (a group started by hand) the whole world is on this machine.
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    with pytest.warns(UserWarning):
        _env(monkeypatch, RANK="0", LOCAL_RANK="0")
        assert init_from_env().device == CPU


def test_more_processes_than_gpus_are_refused_for_cuda_but_not_for_gloo(recorded, monkeypatch):
    _gpus(monkeypatch, 1)
    _env(monkeypatch, RANK="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_PORT="29516")
    with pytest.raises(ValueError, match=r"NCCL needs one GPU per process.*device 'cpu'"):
        init_from_env(device="cuda")
    assert "group" not in recorded
    # gloo can share a GPU between processes.
    ctx = init_from_env(backend="gloo", device="cuda")
    assert (ctx.device, recorded["group"]["backend"]) == (torch.device("cuda", 0), "gloo")


def test_shutdown_waits_at_the_barrier_only_when_asked(monkeypatch):
    done: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: done.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: done.append("destroy"))
    shutdown(barrier=True)
    assert done == ["barrier", "destroy"]
    done.clear()
    shutdown()
    assert done == ["destroy"]


def test_the_main_process_is_global_rank_0_not_every_machines_first():
    assert DistContext(0, 4, 0, CPU, "gloo", 0).is_main
    # The first process of the second machine: local rank 0, global rank 2.
    assert not DistContext(2, 4, 0, CPU, "gloo", 0).is_main
