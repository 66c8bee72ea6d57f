"""DeepSpark's lock-free EASGD exchange (shoal.parallel.algorithms.deepspark) on three gloo
processes, against the update written out by hand: the server answers each exchange with the
centre as it was, then ``x~ <- x~ + alpha (x_i - x~)`` (DeepSpark's server rule with
``server_factor`` 1; asynchronous EASGD, Zhang et al. 2015, Algorithm 1); a stop, once
asked for, reaches every later exchange; the monitor sees each header as sent."""

from __future__ import annotations

from typing import Any

import torch

from shoal.runtime.spawn import spawn_local

ALPHA = 0.3
STEPS = 2  # exchanges per worker


def _x(worker: int, k: int) -> torch.Tensor:
    """Worker ``worker``'s parameters at its exchange ``k`` (distinct, known to every rank)."""
    return torch.arange(4, dtype=torch.float64) * (worker + 1) + 10.0 * k + 1.0


def _centre0() -> torch.Tensor:
    return torch.tensor([1.0, -2.0, 0.5, 4.0], dtype=torch.float64)


def _ranks() -> dict[str, Any]:
    """Rank 2 serves; worker 0 makes its exchanges, then lets worker 1 make its own (a token
    sent worker to worker), so the server sees them in a known order."""
    import torch.distributed as dist

    from shoal.parallel import DistComm
    from shoal.parallel.algorithms import deepspark
    from shoal.runtime.procgroup import init_from_env

    comm = DistComm(init_from_env(device="cpu"))
    if comm.rank == 2:
        seen: list[tuple[int, list[float], torch.Tensor, int]] = []

        def on_exchange(worker: int, head: list[float], centre: torch.Tensor, total: int) -> bool:
            seen.append((worker, head, centre.clone(), total))
            return worker == 0 and head[0] == deepspark.EXCHANGE and head[1] == STEPS

        final = deepspark.serve(_centre0(), ALPHA, comm, on_exchange)
        return {"seen": seen, "final": final, "bytes": comm.bytes_sent}
    token = torch.zeros(1)
    if comm.rank == 1:
        dist.recv(token, src=0)
    replies = []
    for k in range(1, STEPS + 1):
        x = _x(comm.rank, k)
        head = deepspark.header(deepspark.EXCHANGE, k, 0.5 * k + comm.rank, k + 1, x)
        centre, stop = deepspark.exchange(comm, x, head)
        replies.append((centre.clone(), stop))
    if comm.rank == 0:
        dist.send(token, dst=1)
    done = deepspark.header(deepspark.DONE, STEPS, 0.0, 0, replies[-1][0])
    final = deepspark.finish(comm, done, replies[-1][0])
    return {"replies": replies, "final": final, "bytes": comm.bytes_sent}


def test_server_applies_each_exchange_by_hand_and_stop_reaches_later_exchanges() -> None:
    got = spawn_local(_ranks, 3, timeout_s=120)
    # By hand: the exchanges in order w0 k=1, w0 k=2, w1 k=1, w1 k=2; the reply to each is
    # the centre before it, and the centre moves alpha of the way to the worker.
    order = [(0, 1), (0, 2), (1, 1), (1, 2)]
    centres = [_centre0()]
    for w, k in order:
        c = centres[-1]
        centres.append(c + ALPHA * (_x(w, k) - c))
    for w in (0, 1):
        replies = got[w]["replies"]
        for k, (centre, _) in enumerate(replies, start=1):
            before = centres[order.index((w, k))]
            torch.testing.assert_close(centre, before, msg=f"worker {w} exchange {k}")
    # The monitor returned True after worker 0's second exchange: the replies before it say
    # go on, every reply after it says stop (even though the monitor said False since).
    assert [stop for _, stop in got[0]["replies"]] == [False, False]
    assert [stop for _, stop in got[1]["replies"]] == [True, True]
    # Every rank ends with the last centre.
    for g in got:
        torch.testing.assert_close(g["final"], centres[-1])
    # The monitor saw each exchange's header as sent and the centre right after it.
    server = got[2]
    exchanges = [s for s in server["seen"] if s[1][0] == 1.0]
    assert [(w, int(h[1])) for w, h, _, _ in exchanges] == order
    for (w, h, centre, _), (_, k), after in zip(exchanges, order, centres[1:], strict=True):
        assert h == [1.0, float(k), 0.5 * k + w, float(k + 1)]
        torch.testing.assert_close(centre, after)
    dones = [s for s in server["seen"] if s[1][0] == 2.0]
    assert sorted(w for w, *_ in dones) == [0, 1] and len(server["seen"]) == 6
    # Bytes: the last count is everything the three processes sent through their comms.
    assert server["seen"][-1][3] == sum(g["bytes"] for g in got)
