"""Joining a ``torch.distributed`` process group the way Shoal's distributed runtimes need it.

Every process reads the usual environment variables (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), as ``torchrun`` sets
them. The backend is NCCL when the process has a GPU and gloo otherwise.

GPUs: NCCL needs a GPU of its own for each process ("Duplicate GPU detected" otherwise, at the
first collective). ``device="auto"`` therefore computes on the GPUs only when the machine has
one for each of its processes (``LOCAL_WORLD_SIZE``, the same on every process of a machine,
so all of them choose alike), and otherwise on the CPU with gloo, saying so; ``"cuda"``
with too few GPUs is refused. Under NCCL the group also carries gloo for tensors on the CPU
(backend ``cpu:gloo,cuda:nccl``): the runtimes' small bookkeeping collectives (round
statistics, evaluation scores) stay on the CPU, and NCCL has no CPU path.

Restarts: ``torchrun``'s elastic agent restarts every worker after a failure, but the restarted
gloo group reuses the agent's store and races against the previous attempt's keys (measured
here: 3 of 7 plain restarts failed or hung). Each attempt therefore gets its own key prefix,
``/shoal/attempt_<TORCHELASTIC_RESTART_COUNT>`` (6 of 6 restarts succeeded).

A dead peer must not hang the survivors: every collective runs under ``timeout_s`` (gloo
raises when it expires), the survivors exit, and ``shoal launch`` names the rank that died.
:func:`as_peer_failure` turns the survivors' broken collectives (and store errors) into
one-line :class:`PeerFailure` errors; gloo raises them as plain ``RuntimeError`` exceptions
whose text starts with its source location and ends in generic advice.

Leaving: a process must destroy its group before it exits. One that exits with a live gloo
group can abort in interpreter teardown (SIGABRT, "terminate called without an active
exception", pytorch/pytorch#190489), and the agent then reports a finished run as failed
(seen once in this project's CI, on a restarted worker). :func:`shutdown` does it.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    attempt: int
    """How many times the elastic agent has restarted the job (0 on the first run)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise RuntimeError(
                f"{name} is not set: start distributed runs with `shoal launch` or `torchrun`"
            )
        return default
    return int(raw)


def in_distributed_env() -> bool:
    """Whether this process was started by ``torchrun`` / ``shoal launch`` (or looks like it)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(
    backend: str = "auto", device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
) -> DistContext:
    """Join (or reuse) the default process group; see the module docstring."""
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    use_cuda = _uses_cuda(device, backend, local_rank, local_world)
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    dev = torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda else None
    dev = dev if dev is not None else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    if not dist.is_initialized():
        addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = _env_int("MASTER_PORT")
        timeout = timedelta(seconds=timeout_s)
        # Under torchrun the agent hosts the store; a hand-started group hosts it on rank 0.
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        base = dist.TCPStore(
            addr, port, world, is_master=rank == 0 and not agent_store, timeout=timeout
        )
        store = dist.PrefixStore(f"/shoal/attempt_{attempt}", base)
        group_backend = "cpu:gloo,cuda:nccl" if backend == "nccl" else backend
        dist.init_process_group(
            group_backend, store=store, rank=rank, world_size=world, timeout=timeout
        )
    return DistContext(rank, world, local_rank, dev, backend, attempt)


def _uses_cuda(device: str, backend: str, local_rank: int, local_world: int) -> bool:
    """Whether this process computes on a GPU; see the module docstring."""
    available = torch.cuda.is_available()
    if device != "auto" and not device.startswith("cuda"):
        return False
    if device != "auto" and not available:
        raise ValueError(f"device {device!r} was requested but CUDA is not available here")
    if not available:
        return False
    gpus = torch.cuda.device_count()
    if local_world <= gpus or backend == "gloo":  # gloo can share a GPU between processes
        return True
    advice = (
        f"{local_world} processes on this machine but {gpus} GPU(s), and NCCL needs one GPU "
        f"per process: start at most {gpus} per machine (--nproc-per-node)"
    )
    if device != "auto":
        raise ValueError(f"{advice}, or use device 'cpu'")
    if local_rank == 0:
        warnings.warn(
            f"device 'auto' runs on the CPU with gloo: {advice} to use the GPUs", stacklevel=2
        )
    return False


def shutdown(barrier: bool = False) -> None:
    """Leave the group (see the module docstring). ``barrier``: first wait until every rank
    is done, so that all leave together; only after a run that succeeded, since after a
    failure a peer may never arrive."""
    if not dist.is_initialized():
        return
    if barrier:
        dist.barrier()
    # torch < 2.8 frees the group without releasing the GIL, and gloo's destructor then joins
    # its worker threads, one of which may wait for the GIL to free a tensor: a deadlock
    # (pytorch/pytorch#154976, fixed in 2.8; the probe tests hung in 15 of 25 runs on torch
    # 2.4.0). Holding the gloo backend across destroy_process_group() leaves it to the `del`,
    # through gloo's own binding, which releases the GIL first (0 hangs in 45 runs).
    gloo = _gloo_backend()
    dist.destroy_process_group()
    del gloo


def _gloo_backend() -> object | None:
    """The default group's gloo backend, or ``None`` (also if torch's private API changes:
    holding it only works around a deadlock of old releases)."""
    try:
        return dist.group.WORLD._get_backend(torch.device("cpu"))  # type: ignore[union-attr]
    except Exception:
        return None


class PeerFailure(ConnectionError):
    """Communication with the other processes broke (a collective or the store): a peer
    died, closed its connection or stopped responding."""


# gloo's errors start with the C++ source location: "[.../gloo/transport/tcp/pair.cc:537] ".
_GLOO_SOURCE = re.compile(r"^\[[^\]]*\bgloo\b[^\]]*\]\s*")


def as_peer_failure(e: BaseException, rank: int) -> PeerFailure | None:
    """``e`` as a one-line :class:`PeerFailure` if it is a broken collective (torch's
    ``DistError`` family, or gloo's transport errors), else ``None``."""
    text = " ".join(str(e).split())
    gloo = _GLOO_SOURCE.match(text)
    if gloo is None and not isinstance(e, dist.DistError):
        return None
    # The first sentence says what broke; gloo's next ones are advice that fits any failure.
    reason = text[gloo.end() :] if gloo else text
    reason = reason.split(". ")[0].rstrip(".") or type(e).__name__
    return PeerFailure(
        f"rank {rank}: communication failed ({reason}); another worker has probably died or "
        "stopped responding"
    )
