"""SimComm: gossip is the mixing matrix, neighbours are the graph's, bytes are exact (and none
for one worker, in DistComm too), and push-sum on the one-peer exponential graph averages
exactly in log2(n) steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from shoal.compress import random_k, top_k
from shoal.compress.wire import payload_nbytes
from shoal.parallel import SimComm
from shoal.parallel.dist_comm import DistComm
from shoal.parallel.messages import dense_nbytes
from shoal.runtime.procgroup import DistContext
from shoal.topology import (
    complete,
    exponential,
    from_matrix,
    one_peer_exponential,
    ring,
    torus,
)

from .cases import push_sum, push_sum_start

GRAPHS = {
    "ring": lambda: ring(6),
    "torus": lambda: torus(2, 3),
    "exponential": lambda: exponential(6),
    "complete": lambda: complete(6),
    "one_peer[1]": lambda: one_peer_exponential(6).at(1),
    # directed, column-stochastic, unequal in-degrees
    "directed": lambda: from_matrix(
        torch.tensor(
            [
                [0.5, 0.0, 0.0, 0.0, 0.0, 0.2],
                [0.5, 0.3, 0.0, 0.0, 0.0, 0.2],
                [0.0, 0.7, 1.0, 0.5, 0.0, 0.2],
                [0.0, 0.0, 0.0, 0.5, 0.0, 0.2],
                [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.2],
            ]
        )
    ),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_gossip_is_the_mixing_matrix_and_counts_one_message_per_edge(name):
    topo = GRAPHS[name]()
    x = torch.randn(6, 7, dtype=torch.float64)
    comm = SimComm(6)
    torch.testing.assert_close(comm.gossip(x, topo), topo.mixing_WW @ x, rtol=0, atol=1e-12)
    edges = sum(len(topo.out_neighbors(j)) for j in range(6))
    assert comm.bytes_sent == edges * dense_nbytes(x[0])


@pytest.mark.parametrize("name", list(GRAPHS))
def test_neighbors_are_the_in_neighbours_rows_padded_with_a_mask(name):
    topo = GRAPHS[name]()
    x = torch.randn(6, 3)
    rows, mask = SimComm(6).neighbors(x, topo)
    k = max(len(topo.in_neighbors(i)) for i in range(6))
    assert rows.shape == (6, k, 3) and mask.shape == (6, k)
    for i in range(6):
        ins = topo.in_neighbors(i)
        assert mask[i].tolist() == [True] * len(ins) + [False] * (k - len(ins))
        torch.testing.assert_close(rows[i, : len(ins)], x[ins], rtol=0, atol=0)
        assert (rows[i, len(ins) :] == 0).all()


def test_collectives_and_their_bytes():
    comm = SimComm(3)
    x = torch.randn(3, 4)
    torch.testing.assert_close(comm.all_reduce_mean(x), x.mean(0).expand(3, 4))
    torch.testing.assert_close(comm.all_gather(x), x)
    assert comm.bytes_sent == 2 * 3 * dense_nbytes(x[0])
    # Summable payloads add their values; the indices come from the shared seed.
    rk = random_k(0.5)
    payloads = [rk.compress(row, rk.init(row))[0] for row in x]
    total = comm.all_reduce_payloads(payloads)
    torch.testing.assert_close(rk.decompress(total), sum(rk.decompress(p) for p in payloads))
    tk = top_k(k=2)
    gathered = comm.all_gather_payloads([tk.compress(row, None)[0] for row in x])
    assert len(gathered) == 3
    assert comm.bytes_sent == 2 * 3 * dense_nbytes(x[0]) + sum(
        payload_nbytes(p) for p in payloads + gathered
    )


@pytest.fixture(params=["sim", "dist"])
def one_worker_comm(request):
    if request.param == "sim":
        yield SimComm(1)
        return
    # A one-process gloo group in this process (what `shoal launch --nproc-per-node 1` makes).
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistComm(DistContext(0, 1, 0, torch.device("cpu"), "gloo", 0))
    finally:
        dist.destroy_process_group()


def test_one_workers_collectives_send_nothing(one_worker_comm):
    """A collective over one worker moves no byte (the cost model charges it 0 s too); a
    one-worker sync_sgd run reported its gradients as sent."""
    comm = one_worker_comm
    x = torch.randn(1, 4)
    torch.testing.assert_close(comm.all_reduce_mean(x), x)
    comm.all_gather(x)
    comm.start_all_reduce_mean_(x.clone()).wait()
    rk = random_k(0.5)
    comm.all_reduce_payloads([rk.compress(x[0], rk.init(x[0]))[0]])
    comm.all_gather_payloads([top_k(k=2).compress(x[0], None)[0]])
    assert comm.bytes_sent == 0
    assert len(comm.exchanges) == 5  # still recorded, as the steps' exchanges


@pytest.mark.parametrize("n", [4, 8, 16])
def test_push_sum_on_one_peer_exponential_averages_exactly_in_log2_n_steps(n):
    steps = int(math.log2(n))
    out = push_sum(SimComm(n), steps)
    start = push_sum_start(n)
    mean = start.mean(0)
    for t in range(steps):
        # Push-sum conserves the sums of the numerators and of the weights at every step.
        torch.testing.assert_close(out["x"][t].sum(0), start.sum(0), rtol=0, atol=1e-10)
        assert math.isclose(float(out["w"][t].sum()), n, abs_tol=1e-12)
    # Not yet one step early, exactly after log2(n) steps.
    assert (out["z"][steps - 2] - mean).abs().max() > 1e-3
    torch.testing.assert_close(out["z"][-1], mean.expand(n, -1), rtol=0, atol=1e-12)


def test_bad_input_is_refused():
    comm = SimComm(4)
    with pytest.raises(ValueError, match="5 nodes but there are 4 workers"):
        comm.gossip(torch.zeros(4, 2), ring(5))
    with pytest.raises(ValueError, match="one row per local worker"):
        comm.all_reduce_mean(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\[W, D\]"):
        comm.all_gather(torch.zeros(4))
    with pytest.raises(ValueError, match="world_size"):
        SimComm(0)
    with pytest.raises(TypeError, match="Topology"):
        comm.neighbors(torch.zeros(4, 2), torch.eye(4))  # type: ignore[arg-type]
