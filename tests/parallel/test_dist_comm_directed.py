"""DistComm's primitives on three gloo processes, against hand-computed answers.

The training cases (``test_parallel_dist.py``) run symmetric or one-peer graphs, whose in- and
out-degrees are equal everywhere, so they cannot tell in-neighbours from out-neighbours in the
byte counts, masks or padding; nor do they call ``all_gather``, ``broadcast`` with ranks that
disagree, ``sum_stats`` on large counts or ``all_reduce_payloads`` on several entries of one
dtype. One spawn runs every check below on a directed three-node graph.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from shoal.compress.wire import payload_nbytes
from shoal.parallel import SimComm
from shoal.runtime.spawn import spawn_local
from shoal.topology import from_matrix

WORLD = 3
THIRD = 1.0 / 3.0
# Row i: the weights node i gives to what it receives (column-stochastic, directed).
MIXING = [
    [0.5, 0.0, THIRD],
    [0.5, 0.5, THIRD],
    [0.0, 0.5, THIRD],
]
INS = {0: [2], 1: [0, 2], 2: [1]}  # read off the rows: who each node hears from
OUTS = {0: [1], 1: [2], 2: [0, 1]}  # read off the columns: who hears each node
BIG = 2**24 + 1  # the first integer float32 cannot hold: byte counts beyond 16 MB


def _row(rank: int) -> torch.Tensor:
    """Rank ``rank``'s ``[1, 4]`` row, distinct per rank, in float64 (exact sums)."""
    return torch.tensor([[1.0, 10.0, 100.0, 1000.0]], dtype=torch.float64) * (rank + 1)


def _payload(rank: int) -> dict[str, torch.Tensor]:
    """Two float32 entries (one collective for both) and an integer one (not summed)."""
    return {
        "values": torch.tensor([1.0, 2.0, 3.0]) * (rank + 1),
        "scale": torch.tensor([float(rank), 1.0]),
        "seed": torch.tensor([7], dtype=torch.int64),
    }


def _primitives() -> dict[str, Any]:
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import DistContext, init_from_env

    ctx = init_from_env()
    rank, x = ctx.rank, _row(ctx.rank)
    topology = from_matrix(torch.tensor(MIXING))
    got: dict[str, Any] = {}
    comm = DistComm(ctx)
    rows, mask = comm.neighbors(x, topology)
    got["neighbors"] = rows, mask, comm.bytes_sent
    got["gossip"] = DistComm(ctx).gossip(x, topology)
    comm = DistComm(ctx)
    got["all_gather"] = comm.all_gather(x), comm.bytes_sent
    got["broadcast"] = comm.broadcast(x[0])
    got["sum_stats"] = comm.sum_stats([BIG + rank, 0.25 * rank])
    got["average"] = comm.average(x)
    got["average_kept"] = comm.average(x, torch.tensor([rank != 1]))
    got["payload_sum"] = comm.all_reduce_payloads([_payload(rank)])
    other = DistContext((rank + 1) % WORLD, WORLD, ctx.local_rank, ctx.device, ctx.backend, 0)
    try:
        DistComm(other)
        got["other_rank"] = None
    except ValueError as e:
        got["other_rank"] = str(e)
    return got


@pytest.fixture(scope="module")
def got() -> list[dict[str, Any]]:
    return spawn_local(_primitives, WORLD, timeout_s=120)


def test_neighbours_are_the_in_neighbours_rows_in_order_padded_to_the_largest_in_degree(got):
    for rank in range(WORLD):
        rows, mask, _ = got[rank]["neighbors"]
        ins = INS[rank]
        assert rows.shape == (1, 2, 4) and mask.shape == (1, 2)  # node 1 hears two nodes
        assert mask[0].tolist() == [True] * len(ins) + [False] * (2 - len(ins))
        for slot, j in enumerate(ins):
            assert torch.equal(rows[0, slot], _row(j)[0]), (rank, slot)
        assert (rows[0, len(ins) :] == 0).all()


def test_gossip_on_a_directed_graph_applies_the_mixing_matrix(got):
    x_ND = torch.cat([_row(r) for r in range(WORLD)])
    want = torch.tensor(MIXING, dtype=torch.float64) @ x_ND
    for rank in range(WORLD):
        torch.testing.assert_close(got[rank]["gossip"][0], want[rank], rtol=1e-6, atol=0)


def test_each_process_counts_one_row_per_out_neighbour(got):
    row_bytes = payload_nbytes({"values": _row(0)[0]})
    for rank in range(WORLD):
        assert got[rank]["neighbors"][2] == len(OUTS[rank]) * row_bytes, rank


def test_all_gather_gives_every_row_in_rank_order_and_counts_this_processs_row(got):
    x_ND = torch.cat([_row(r) for r in range(WORLD)])
    for rank in range(WORLD):
        rows, sent = got[rank]["all_gather"]
        assert torch.equal(rows.reshape(WORLD, -1), x_ND)
        assert sent == payload_nbytes({"values": _row(rank)[0]})


def test_broadcast_gives_every_process_rank_0s_tensor(got):
    for rank in range(WORLD):
        assert torch.equal(got[rank]["broadcast"], _row(0)[0]), rank


def test_sum_stats_are_exact_for_counts_float32_cannot_hold(got):
    want = [WORLD * BIG + sum(range(WORLD)), 0.25 * sum(range(WORLD))]
    for rank in range(WORLD):
        assert got[rank]["sum_stats"] == want


def test_average_over_all_workers_and_over_the_kept_ones(got):
    x_ND = torch.cat([_row(r) for r in range(WORLD)])
    for rank in range(WORLD):
        torch.testing.assert_close(got[rank]["average"], x_ND.mean(0), rtol=0, atol=1e-9)
        kept = (x_ND[0] + x_ND[2]) / 2  # rank 1 is left out
        torch.testing.assert_close(got[rank]["average_kept"], kept, rtol=0, atol=1e-9)


def test_all_reduce_payloads_sums_each_float_entry_and_keeps_the_integer_ones(got):
    for rank in range(WORLD):
        total = got[rank]["payload_sum"]
        assert list(total) == ["values", "scale", "seed"]
        assert torch.equal(total["values"], torch.tensor([6.0, 12.0, 18.0]))  # (1+2+3) * v
        assert torch.equal(total["scale"], torch.tensor([3.0, 3.0]))  # 0+1+2, 1+1+1
        assert torch.equal(total["seed"], torch.tensor([7]))  # shared, not summed


def test_a_context_describing_another_rank_is_refused(got):
    for rank in range(WORLD):
        assert got[rank]["other_rank"] is not None, rank
        assert "does not describe the current process group" in got[rank]["other_rank"]


def test_more_rows_than_local_workers_are_refused():
    """``check_rows`` wants exactly one row per local worker: too many is as wrong as too few."""
    with pytest.raises(ValueError, match="one row per local worker"):
        SimComm(2).all_reduce_mean(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="one row per local worker"):
        SimComm(2).all_gather(torch.zeros(1, 2))
