"""Compressed federated rounds against hand-computed references: the server trains on what
was decompressed, the downlink's copy is the clients' copy (EF21-P) and only last round's
receivers hold it, each client's own upload paces the simulated round, and SCAFFOLD's two
messages draw from separate random streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.algorithms import fedavg, scaffold
from shoal.algorithms.base import LocalWork
from shoal.compress import payload_nbytes, serialize, top_k
from shoal.compress._common import mix
from shoal.cost import CostModel, Network, alpha_beta
from shoal.runtime.broadcast import broadcast
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients

D = 40


def _train(alg, compressor, sampler, rounds=1, vectorize=True, **kw):
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    # On the CPU, where the hand-computed top-k below lives (tests/test_cuda.py covers GPUs).
    cfg = TrainConfig(rounds=rounds, sampler=sampler, work=LocalWork(1, 8), device="cpu",
                      progress=False)  # fmt: skip
    return train(tiny_model(), data, clients, alg, cfg, compressor=compressor,
                 runtime=SimRuntime(vectorize=vectorize), **kw)  # fmt: skip


@pytest.mark.parametrize("vectorize", [True, False])
def test_the_server_applies_the_decompressed_update(vectorize):
    """One client, one round: the model moves by the top-k of that client's dense change."""
    start = torch.nn.utils.parameters_to_vector(tiny_model().parameters()).detach()
    dense = _train(fedavg(0.2), None, ClientSampler(1), vectorize=vectorize).params - start
    got = _train(fedavg(0.2), top_k(k=5), ClientSampler(1), vectorize=vectorize).params - start
    keep = torch.topk(dense.abs(), 5).indices
    want = torch.zeros_like(dense)
    want[keep] = dense[keep]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def _xs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(D, generator=g) for _ in range(n)]


def test_the_downlink_copy_is_what_the_clients_rebuilt():
    """EF21-P by hand: w1 = x1, then w <- w + C(x - w) on both ends, every round."""
    c = top_k(k=4)
    xs = _xs(4)
    everyone = np.arange(3)
    state: dict = {}
    w = None
    for x in xs:
        got, _, state = broadcast(c, {"params": x}, everyone, state, D)
        if w is None:
            w = x.clone()
        else:
            payload, _ = c.compress(x - w, None)
            w = w + c.decompress(payload)
        torch.testing.assert_close(got["params"], w, rtol=0, atol=0)


def test_a_client_that_missed_a_round_is_sent_the_dense_model():
    c = top_k(k=4)
    x1, x2, x3 = _xs(3)
    dense = len(serialize({"values": x1}))
    _, sent, state = broadcast(c, {"params": x1}, np.array([0, 1]), {}, D)
    _, sent, state = broadcast(c, {"params": x2}, np.array([1]), state, D)
    # Client 0 holds round 1's copy, not round 2's: it cannot apply round 3's difference.
    _, sent, state = broadcast(c, {"params": x3}, np.array([0, 1]), state, D)
    sparse = len(serialize(c.compress(torch.randn(D), None)[0]))
    assert sent.tolist() == [dense, sparse]


class _Sized:
    """Identity values; the bytes charged are ``1000 (client + 1)``, told apart by the
    client's own seed (``mix(0, client, 0)`` for the message ``delta``)."""

    name = "sized"
    seed = 0

    def __init__(self, owners: dict[int, int]) -> None:
        self.owners = owners

    def init(self, x_D, seed=None):
        return {"owner": self.owners[seed]}

    def compress(self, x_D, state):
        return {"values": x_D, "owner": torch.tensor(state["owner"])}, state

    def decompress(self, payload):
        return payload["values"]

    def nbytes(self, payload):
        return 1000 * (int(payload["owner"]) + 1)


def test_the_round_waits_for_the_client_with_the_largest_upload():
    # Up: 10 ms + 1,000 B/s; down: 20 ms + 4,000 B/s; no compute time.
    net = CostModel(Network("test", alpha_beta(0.01, 1000.0), alpha_beta(0.02, 4000.0)))
    owners = {mix(0, c, 0): c for c in range(10)}
    sampler = ClientSampler(3)
    res = _train(fedavg(0.2), _Sized(owners), sampler, network=net)
    data = tiny_data()
    sizes = np.array([len(c) for c in unequal_clients(len(data.train), 10)], dtype=np.float64)
    chosen = sampler(sizes, 0, 0)
    up = 1000 * (chosen + 1)
    row = res.metrics[0]
    assert row["uplink_bytes"] == up.sum()
    down = row["downlink_bytes"] / 3  # the dense model, the same for each
    want = 0.02 + down / 4000 + 0.01 + up.max() / 1000
    assert row["round_sim_seconds"] == pytest.approx(want, rel=1e-12)


def test_scaffolds_two_messages_draw_from_separate_streams():
    """Each client's messages get the seeds ``mix(seed, client, i)``, ``i`` the message's
    index, so its model and control-variate updates are not rounded alike."""
    seen: list[int] = []

    class Seeds:
        name = "seeds"
        seed = 0

        def init(self, x_D, seed=None):
            seen.append(seed)
            return None

        def compress(self, x_D, state):
            return {"values": x_D}, state

        def decompress(self, payload):
            return payload["values"]

        def nbytes(self, payload):
            return payload_nbytes(payload)

    sampler = ClientSampler(3)
    _train(scaffold(0.2), Seeds(), sampler)
    data = tiny_data()
    sizes = np.array([len(c) for c in unequal_clients(len(data.train), 10)], dtype=np.float64)
    chosen = sampler(sizes, 0, 0)
    assert sorted(seen) == sorted(mix(0, int(c), i) for c in chosen for i in range(2))
