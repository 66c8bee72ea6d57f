"""Start ``n`` local worker processes in a fresh process group and collect their results.

For tests, benchmarks and notebooks: ``spawn_local(fn, 4, *args)`` runs ``fn(*args)`` in four
processes (``spawn`` start method, one thread each so 4 ranks do not oversubscribe a small
machine) with ``RANK``/``WORLD_SIZE``/``MASTER_*`` set, so ``fn`` can call
:func:`shoal.runtime.procgroup.init_from_env`. Returns the ranks' return values in rank order;
a rank that raises, dies or outlives ``timeout_s`` fails the whole call with its rank named.
Real jobs use ``shoal launch`` (torchrun) instead.
"""

from __future__ import annotations

import io
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from shoal.checks import check_count

_CAUSE_GRACE_S = 3.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, world: int, port: int, env: dict[str, str], fn: Callable, args: tuple, q: Any
) -> None:
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        # Results travel as torch.save bytes: a tensor sent as-is would be shared through a
        # file descriptor that dies with this process before the parent reads it.
        buf = io.BytesIO()
        torch.save(fn(*args), buf)
        q.put((rank, True, buf.getvalue()))
    except BaseException as e:  # report any failure to the parent, with its traceback
        from shoal.runtime.procgroup import PeerFailure, as_peer_failure

        # A broken collective is a symptom: the parent looks for the rank that caused it.
        victim = isinstance(e, PeerFailure) or as_peer_failure(e, rank) is not None
        q.put((rank, False, (traceback.format_exc(), victim)))
    finally:
        from shoal.runtime.procgroup import shutdown

        shutdown()


def spawn_local(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` local ranks; see the module docstring."""
    check_count(world_size, "world_size")
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, env or {}, fn, args, q))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    # A rank whose collective broke (a peer died, raised or stalled) is reported only if no
    # cause turns up within this grace: the survivor's error usually reaches the queue
    # first, and named the survivor.
    victim: tuple[int, str, float] | None = None
    try:
        while len(results) < world_size:
            if not q.empty():
                rank, ok, value = q.get()
                if not ok:
                    text, broken = value
                    if not broken:
                        raise RuntimeError(f"rank {rank} failed:\n{text}")
                    if victim is None:
                        victim = (rank, text, time.monotonic() + _CAUSE_GRACE_S)
                    continue
                results[rank] = torch.load(io.BytesIO(value), weights_only=False)
                continue
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            dead = [r for r in dead if victim is None or r != victim[0]]
            if dead and q.empty():
                raise RuntimeError(f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}")
            if victim is not None and time.monotonic() > victim[2]:
                rank, text, _ = victim
                still = sorted(set(range(world_size)) - set(results) - {rank})
                stalled = f" (rank(s) {still} neither finished nor failed)" if still else ""
                raise RuntimeError(f"rank {rank} failed{stalled}:\n{text}")
            if time.monotonic() > deadline:
                missing = sorted(set(range(world_size)) - set(results))
                raise TimeoutError(f"ranks {missing} did not finish within {timeout_s:.0f} s")
            time.sleep(0.01)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world_size)]
