"""The asynchronous, lock-free form of EASGD with a parameter server, after DeepSpark.

Kim, Park, Jang, Yoon, "DeepSpark: A Spark-Based Distributed Deep Learning Framework for
Commodity Clusters", 2016 (``deepspark/deepspark``: ``ParameterEASGDServer.java``,
``ParameterEASGDClient.java``); the update is asynchronous EASGD (Zhang, Choromanska, LeCun,
NeurIPS 2015, Algorithm 1). The centre ``x~`` lives on the last rank. Every ``tau`` local
steps a worker swaps weights with it, without any global barrier::

    worker i -> server:  [header, x_i]          server -> worker i:  [x~, stop]
    worker:  x_i <- x_i - alpha (x_i - x~)      server:  x~ <- x~ + alpha (x_i - x~)

The server applies each exchange as soon as it arrives, in arrival order, so a slow worker
delays nobody but itself. The header carries what the server needs for the metrics (the
worker's step and its training loss since its last exchange). Deviations, named: DeepSpark
serves each exchange in its own thread and updates the centre without a lock (so concurrent
updates can be lost); here one server thread applies them one after another, which is the same
update without lost writes. DeepSpark's server rate ``alpha * server_factor`` is ``alpha``.
A worker applies the pull after its next local step, from the same weights, as asynchronous
EASGD's Algorithm 1 does (``x_i <- local_step(x_i) - alpha (x_i - x~)``, see :mod:`.easgd`);
DeepSpark's client moves to the pulled weights first and takes its next gradient there.

Arrival order: on gloo the server receives from any source (``recv`` without ``src``); NCCL
has no any-source receive, so there it posts one ``irecv`` per worker and polls them
(``is_completed``; gloo's receive requests only complete inside ``wait``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from shoal.compress.wire import payload_nbytes
from shoal.parallel.dist_comm import DistComm

EXCHANGE, DONE = 1.0, 2.0
"""Header kinds: swap weights / this worker has finished."""

OnExchange = Callable[[int, list[float], torch.Tensor, int], bool]
"""``(worker, header, centre_D, total_bytes) -> stop``: the server's monitor (metrics,
checkpoints, target accuracy); returning True tells every worker to stop at its next exchange."""


def header(kind: float, step: int, loss_sum: float, loss_steps: float, like: torch.Tensor):
    """``[kind, step, loss_sum, loss_steps]`` as float64 on ``like``'s device."""
    return torch.tensor([kind, step, loss_sum, loss_steps], dtype=torch.float64, device=like.device)


def exchange(comm: DistComm, x_D: torch.Tensor, head: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Worker side: send ``x_D``, receive the centre as it was before this exchange."""
    server = comm.world_size - 1
    comm.send({"header": head, "params": x_D}, server)
    reply = comm.recv({"params": x_D, "stop": x_D[:1]}, server)
    return reply["params"], bool(reply["stop"].item())


def finish(comm: DistComm, head: torch.Tensor, centre_D: torch.Tensor) -> torch.Tensor:
    """Worker side: tell the server this worker is done, then receive the final centre."""
    comm.send({"header": head}, comm.world_size - 1)
    final_D = centre_D.clone()
    dist.broadcast(final_D, src=comm.world_size - 1)
    return final_D


def serve(
    centre_D: torch.Tensor, alpha: float, comm: DistComm, on_exchange: OnExchange
) -> torch.Tensor:
    """Server side: apply exchanges as they arrive until every worker is done; then broadcast
    the final centre to all ranks (the one collective of the run) and return it."""
    workers = list(range(comm.world_size - 1))
    received = 0  # payload bytes the workers sent here (the server's own are comm.bytes_sent)
    stop = False
    for src, head in _arrivals(comm, workers, centre_D.device):
        h = head.tolist()
        if h[0] == EXCHANGE:
            x_D = comm.recv({"params": centre_D}, src)["params"]
            received += payload_nbytes({"header": head, "params": x_D})
            flag = torch.full((1,), float(stop), dtype=centre_D.dtype, device=centre_D.device)
            comm.send({"params": centre_D, "stop": flag}, src)
            centre_D = centre_D + alpha * (x_D - centre_D)
        else:
            received += payload_nbytes({"header": head})
        stop = on_exchange(src, h, centre_D, comm.bytes_sent + received) or stop
    dist.broadcast(centre_D, src=comm.world_size - 1)
    return centre_D


def _arrivals(comm: DistComm, workers: list[int], device: torch.device):
    """Yield ``(worker, header)`` in arrival order until every worker has sent DONE."""
    active = set(workers)
    if comm.ctx.backend == "gloo":
        head = torch.empty(4, dtype=torch.float64, device=device)
        while active:
            src = dist.recv(head, src=None)
            if head[0].item() == DONE:
                active.discard(src)
            yield src, head.clone()
        return
    heads = {w: torch.empty(4, dtype=torch.float64, device=device) for w in workers}
    posted: dict[int, Any] = {w: dist.irecv(heads[w], w) for w in workers}
    while active:
        ready = [w for w in sorted(active) if posted[w].is_completed()]
        if not ready:
            time.sleep(1e-4)
            continue
        for w in ready:
            posted[w].wait()
            head = heads[w].clone()
            if head[0].item() == DONE:
                active.discard(w)
            yield w, head
            if w in active:  # the exchange's body was received in the meantime
                posted[w] = dist.irecv(heads[w], w)
