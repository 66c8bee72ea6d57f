"""The network cost model: rounds by hand, seeded heterogeneity, simulated time in training."""

import warnings

import numpy as np
import pytest
import torch

from shoal.aggregate.mean import mean
from shoal.algorithms import fedavg
from shoal.algorithms.base import LocalWork
from shoal.compress import threshold
from shoal.cost import (
    CostModel,
    Exchange,
    Heterogeneity,
    Link,
    Network,
    alpha_beta,
    cellular_4g,
    datacenter,
    ethernet_1g,
    measure_codec,
    ring_all_gather_seconds,
    ring_all_reduce_seconds,
    wifi,
)
from shoal.functional import ParamSpec, cross_entropy
from shoal.runtime.base import ClientStore, RoundTask
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler, Stragglers, make_plan
from shoal.topology import one_peer_exponential, ring
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients

# Up: 10 ms + 1,000 B/s; down: 20 ms + 4,000 B/s; 1 ms per sample.
NET = Network("test", alpha_beta(0.01, 1000.0), alpha_beta(0.02, 4000.0))
MODEL = CostModel(NET, seconds_per_sample=0.001)


def test_star_round_by_hand():
    clients = np.array([4, 9, 2])
    samples = np.array([100, 200, 0])  # the third was dropped: it only downloaded
    up = np.array([500, 1000, 0])
    down = np.array([2000, 2000, 2000])
    # download 0.02 + 0.5; compute 0.1 / 0.2 / 0; upload 0.01 + 0.5 / 0.01 + 1.0 / nothing
    per_client = MODEL.client_seconds(clients, samples, up, down, round_idx=0)
    np.testing.assert_allclose(per_client, [1.13, 1.73, 0.52])
    assert MODEL.federated_round(clients, samples, up, down, 0) == pytest.approx(1.73)
    assert MODEL.federated_round(clients[:0], samples[:0], up[:0], down[:0], 0) == 0.0


def test_ring_all_reduce_by_hand():
    link = Link(1e-3, 1e8)  # 1 ms, 100 MB/s
    # 2 (4-1)/4 * 1e6 / 1e8 = 0.015 s of transfer, 2 (4-1) * 1 ms = 0.006 s of latency
    assert ring_all_reduce_seconds(4, 1e6, link) == pytest.approx(0.021)
    assert ring_all_reduce_seconds(1, 1e6, link) == 0.0
    cm = CostModel(Network("sym", link, link), seconds_per_sample=1e-4)
    samples = np.array([10, 20, 30, 40])  # slowest computes 4 ms
    assert cm.all_reduce(np.arange(4), 1e6, samples, 0) == pytest.approx(0.025)


def test_gossip_step_by_hand():
    link = Link(0.5, 100.0)
    cm = CostModel(Network("sym", link, link), seconds_per_sample=0.01)
    nbytes = np.array([100.0, 100.0, 300.0, 100.0])
    samples = np.array([0, 0, 0, 50])
    # Every node sends to its two ring neighbours and receives from two: each message gets
    # half of a 100 B/s link. Node 2's 300 B take 0.5 + 300 / 50 = 6.5 s; node 3 computes
    # 0.5 s, then sends 100 B in 0.5 + 2 s.
    assert cm.gossip(ring(4), nbytes, samples, 0) == pytest.approx(6.5)
    nbytes[2] = 100.0
    assert cm.gossip(ring(4), nbytes, samples, 0) == pytest.approx(3.0)
    # Only node 0 sends: its two messages share its uplink, each receiver gets one message.
    assert cm.gossip(ring(4), np.array([100, 0, 0, 0]), np.zeros(4), 0) == pytest.approx(2.5)
    # A one-peer graph sends one message per node: the full link each.
    assert cm.gossip(one_peer_exponential(4).at(0), nbytes, samples, 0) == pytest.approx(2.0)


def test_overlapped_messages_travel_beside_the_compute():
    link = Link(0.5, 100.0)
    cm = CostModel(Network("sym", link, link), seconds_per_sample=0.01)
    graph = one_peer_exponential(4).at(0)  # i sends to i + 1: one message per link, 1.5 s each
    for samples, blocking, overlapped in (
        ([0, 0, 0, 50], 0.5 + 1.5, 1.5),  # node 3 computes 0.5 s: the transfer paces the step
        ([0, 0, 0, 300], 3.0 + 1.5, 3.0),  # node 3 computes 3 s: its compute does
    ):
        n = np.array(samples)
        assert cm.step_seconds([Exchange("p2p", (100,) * 4, graph)], n, 0) == pytest.approx(
            blocking
        )
        ex = Exchange("p2p", (100,) * 4, graph, overlapped=True)
        assert cm.step_seconds([ex], n, 0) == pytest.approx(overlapped)
    # The shared-link rule holds as for blocking messages: a ring's two messages per node
    # take half the link each, 0.5 + 100 / 50 s.
    ring_ex = Exchange("p2p", (100,) * 4, ring(4), overlapped=True)
    assert cm.step_seconds([ring_ex], np.zeros(4), 0) == pytest.approx(2.5)


def test_ring_all_gather_by_hand():
    link = Link(1e-3, 1e8)
    # 3 ring steps, each 1 ms + the largest block (1e6 B at 100 MB/s: 10 ms)
    assert ring_all_gather_seconds(4, 1e6, link) == pytest.approx(0.033)
    assert ring_all_gather_seconds(1, 1e6, link) == 0.0


def test_a_step_of_several_exchanges_by_hand():
    link = Link(0.05, 1000.0)
    cm = CostModel(Network("sym", link, link), seconds_per_sample=0.01)
    samples = np.array([10, 20, 30])  # the workers' clocks start at 0.1, 0.2, 0.3 s
    p2p = Exchange("p2p", (100, 0, 0), ring(3))  # only worker 0 sends, to 1 and 2
    reduce = Exchange("all_reduce", (300, 300, 300))
    # p2p: 0's two messages share its uplink (500 B/s each) and arrive at 0.1 + 0.05 + 0.2 =
    # 0.35, so the clocks are 0.35, 0.35, 0.3; the all-reduce starts at 0.35 and takes
    # 2 (2/3) 300 / 1000 + 2 (2) 0.05 = 0.6 s.
    assert cm.step_seconds([p2p, reduce], samples, 0) == pytest.approx(0.95)
    # The other order: the all-reduce ends at 0.9 for all, then 0's messages take 0.25 s.
    assert cm.step_seconds([reduce, p2p], samples, 0) == pytest.approx(1.15)
    # A gather is paced by its largest block: 2 (0.05 + 0.4).
    gather = Exchange("all_gather", (100, 400, 200))
    assert cm.step_seconds([gather], samples, 0) == pytest.approx(0.3 + 0.9)
    assert cm.step_seconds([], samples, 0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="2 byte counts for 3 workers"):
        cm.step_seconds([Exchange("all_reduce", (1, 2))], samples, 0)


def test_a_compressed_exchange_first_charges_each_workers_codec_time():
    link = Link(0.0, 1000.0)
    slow = Heterogeneity(speed_sigma=0.5, seed=3)  # the compute slowdown applies to the codec
    cm = CostModel(Network("sym", link, link), 0.01, slow, codec_seconds_per_element=1e-4)
    samples = np.array([10, 20, 30])
    s_N = slow.slowdown(np.arange(3), 4)
    gather = Exchange("all_gather", (100, 400, 200), codec_elements=2000)
    # Each worker: its compute, then 2,000 entries at 0.1 ms each; the gather starts with the
    # last of them and takes 2 (400 / 1000).
    start = max((samples * 0.01 + 0.2) * s_N)
    assert cm.step_seconds([gather], samples, 4) == pytest.approx(start + 0.8)
    # An exchange of uncompressed rows charges none; nor does a model without a codec rate.
    plain = Exchange("all_gather", (100, 400, 200))
    assert cm.step_seconds([plain], samples, 4) == pytest.approx(max(samples * 0.01 * s_N) + 0.8)
    free = CostModel(Network("sym", link, link), 0.01, slow)
    assert free.step_seconds([gather], samples, 4) == cm.step_seconds([plain], samples, 4)


def test_measure_codec_times_a_compressed_step_per_entry():
    from shoal.compress import error_feedback, top_k

    rate = measure_codec(error_feedback(top_k(ratio=0.01)), 200_000, 4, repeats=3)
    # A real duration per entry: more than nothing, less than a microsecond per float.
    assert 0 < rate < 1e-6
    with pytest.raises(ValueError, match="world_size must be an integer >= 1"):
        measure_codec(top_k(ratio=0.01), 100, 0)


def test_measure_codec_does_the_work_of_the_exchange_the_compressor_gets(monkeypatch):
    # Payloads an all-reduce adds (random-k's shared seed) are decompressed once, as the sum;
    # timing world_size decompressions charged random-k ~17x its work at 16 workers.
    import shoal.compress as C

    inboxes: list[int] = []
    real = C.decompress_sum
    monkeypatch.setattr(C, "decompress_sum", lambda c, p, *a: inboxes.append(len(p)) or real(c, p))
    measure_codec(C.random_k(0.01), 10_000, 16, repeats=2)
    assert inboxes == []
    measure_codec(C.top_k(ratio=0.01), 10_000, 16, repeats=2)  # all-gathered: a sum of 16
    assert inboxes == [16, 16, 16]
    with pytest.raises(TypeError, match="needs a compressor"):
        measure_codec("top_k", 100, 2)


def test_exchanges_say_what_they_are():
    with pytest.raises(ValueError, match="kind"):
        Exchange("broadcast", (1,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topology"):
        Exchange("p2p", (1, 1))
    with pytest.raises(ValueError, match="topology"):
        Exchange("all_reduce", (1, 1, 1), ring(3))
    with pytest.raises(ValueError, match="codec_elements"):
        Exchange("all_reduce", (1, 1, 1), codec_elements=-1)
    with pytest.raises(ValueError, match="all_gather cannot be overlapped"):
        Exchange("all_gather", (1, 1, 1), overlapped=True)


def test_profiles_are_typical_values_with_a_slower_4g_uplink():
    assert datacenter().uplink.bandwidth_Bps == 25e9 / 8
    assert ethernet_1g().downlink.bandwidth_Bps == 1e9 / 8
    for net in (wifi(), cellular_4g()):
        assert net.uplink.bandwidth_Bps < net.downlink.bandwidth_Bps
    assert cellular_4g().uplink.latency_s > datacenter().uplink.latency_s


def test_heterogeneity_is_seeded_per_client():
    h = Heterogeneity(speed_sigma=0.5, bandwidth_sigma=0.3, seed=7)
    clients = np.array([3, 11, 42, 5])
    a = h.slowdown(clients, 0)
    np.testing.assert_array_equal(a, Heterogeneity(0.5, 0.3, seed=7).slowdown(clients, 0))
    # A client's factor is its own: the same whoever else is sampled, and in any round.
    np.testing.assert_array_equal(h.slowdown(clients[::-1], 5), a[::-1])
    assert h.slowdown(np.array([42]), 3)[0] == a[2]
    assert not np.allclose(a, Heterogeneity(0.5, 0.3, seed=8).slowdown(clients, 0))
    assert len(set(a)) == 4 and (a > 0).all()
    assert not np.allclose(h.bandwidth(clients), a)  # an independent stream
    spread = Heterogeneity(speed_sigma=1.0).slowdown(np.arange(4000), 0)
    assert np.median(spread) == pytest.approx(1.0, abs=0.1)  # log-normal with median 1


def test_stragglers_are_drawn_per_round():
    clients = np.arange(2000)
    h = Heterogeneity(straggler_probability=0.25, straggler_slowdown=8.0, seed=1)
    r0, r1 = h.slowdown(clients, 0), h.slowdown(clients, 1)
    assert set(np.unique(r0)) == {1.0, 8.0}
    assert (r0 == 8.0).mean() == pytest.approx(0.25, abs=0.03)
    assert not np.array_equal(r0, r1)
    np.testing.assert_array_equal(r0, h.slowdown(clients, 0))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Link(-1.0, 10.0), "latency_s"),
        (lambda: Link(0.0, 0.0), "bandwidth_Bps"),
        (lambda: Heterogeneity(straggler_probability=1.5), "straggler_probability"),
        (lambda: Heterogeneity(straggler_slowdown=0.5), "straggler_slowdown"),
        (lambda: Heterogeneity(speed_sigma=float("nan")), "speed_sigma"),
        # exp(sigma z) was inf seconds with only numpy's overflow warning
        (lambda: Heterogeneity(bandwidth_sigma=300.0), "bandwidth_sigma must be <= 10"),
        (lambda: CostModel(NET, seconds_per_sample=-1.0), "seconds_per_sample"),
        (lambda: CostModel(NET, codec_seconds_per_element=-1e-9), "codec_seconds_per_element"),
        (lambda: Heterogeneity(seed=-1), "seed must be an integer >= 0"),
        (lambda: Heterogeneity(seed=1.5), "seed must be an integer >= 0"),
        (lambda: Exchange("all_reduce", (-5, 3)), "nbytes_N must be finite numbers >= 0"),
        (lambda: NET.uplink.seconds(np.array([-100.0])), "nbytes must be"),
        (lambda: MODEL.federated_round([0, 1], [-1000, 5], [1, 1], [1, 1], 0), "samples must"),
        (lambda: MODEL.federated_round([0, 1], [10, 5], [1, 1, 1], [1, 1], 0), "uplink bytes"),
        (lambda: MODEL.step_seconds([Exchange("p2p", (1,) * 4, ring(3))], [1] * 4, 0), "3 nodes"),
    ],
)
def test_bad_values_are_one_line(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_a_profile_not_called_is_refused_at_once():
    # CostModel(wifi) for CostModel(wifi()) failed only at the first round, with an
    # AttributeError.
    with pytest.raises(TypeError, match=r"a profile called: wifi\(\)"):
        CostModel(wifi, seconds_per_sample=1e-3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="heterogeneity must be a Heterogeneity"):
        CostModel(wifi(), heterogeneity=0.5)  # type: ignore[arg-type]


def test_no_workers_cost_nothing():
    assert MODEL.federated_round([], [], [], [], 0) == 0.0
    assert MODEL.all_reduce(np.array([], dtype=int), 1000, np.array([]), 0) == 0.0


def _setup():
    data = tiny_data()
    return data, unequal_clients(len(data.train), 10)


def test_runtime_reports_each_clients_uplink_bytes():
    torch.set_num_threads(1)
    data, clients = _setup()
    model = tiny_model()
    spec = ParamSpec.of(model)
    params = spec.flatten(model)
    alg = fedavg(0.2)
    chosen = np.array([0, 3, 5, 8])
    plans = [make_plan(clients[c], LocalWork(1, 8), 1, 0, 0, int(c)) for c in chosen]
    task = RoundTask(
        model, spec, cross_entropy, alg, mean(), threshold(0.02), params,
        alg.download(params, {}), data.train.x, data.train.y, chosen, plans,
        np.ones(len(chosen)),
    )  # fmt: skip
    res = SimRuntime(vectorize=True, memory_budget_mb=0.02).run_round(task, ClientStore())
    assert res.client_uplink_bytes is not None
    assert res.client_uplink_bytes.sum() == res.uplink_bytes
    assert len(set(res.client_uplink_bytes.tolist())) > 1  # threshold: sizes differ per client


def _train(network, rounds=3):
    data, clients = _setup()
    cfg = TrainConfig(
        rounds=rounds, sampler=ClientSampler(4), work=LocalWork(1, 8), progress=False, seed=2
    )
    return train(tiny_model(), data, clients, fedavg(0.2), cfg, network=network)


def test_training_logs_simulated_time():
    torch.set_num_threads(1)
    plain = _train(None, rounds=2)
    assert "sim_seconds" not in plain.metrics[0]
    res = _train(CostModel(NET, seconds_per_sample=1e-3), rounds=2)
    row = res.metrics[0]
    # Equal dense messages: one download and one upload of a client's bytes, plus the compute
    # of the largest sampled client (one epoch: every one of its samples once).
    up, down = row["uplink_bytes"] / 4, row["downlink_bytes"] / 4
    data, clients = _setup()
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    most = max(len(clients[c]) for c in ClientSampler(4)(sizes, 2, 0))
    expected = 0.02 + down / 4000 + 1e-3 * most + 0.01 + up / 1000
    assert row["round_sim_seconds"] == pytest.approx(expected)
    sims = [r["round_sim_seconds"] for r in res.metrics]
    assert res.metrics[-1]["sim_seconds"] == pytest.approx(sum(sims))
    assert res.metrics[0]["test_accuracy"] == plain.metrics[0]["test_accuracy"]  # timing only


def test_federated_training_refuses_a_codec_rate():
    with pytest.raises(ValueError, match="per data-parallel exchange only"):
        _train(CostModel(NET, codec_seconds_per_element=1e-9), rounds=1)


def test_a_ring_of_fast_workers_runs_at_its_slowest_workers_speed():
    """The bottleneck factor is the slowest worker's, also when every factor is above 1."""
    h = Heterogeneity(bandwidth_sigma=0.5, seed=3)
    fast = np.array([c for c in range(200) if h.bandwidth(np.array([c]))[0] > 1.2][:3])
    model = CostModel(NET, heterogeneity=h)
    slowest = min(NET.uplink.bandwidth_Bps, NET.downlink.bandwidth_Bps) * h.bandwidth(fast).min()
    assert h.bandwidth(fast).min() > 1.2
    assert model.all_reduce(fast, 3000.0, np.zeros(3), 0) == pytest.approx(
        ring_all_reduce_seconds(3, 3000.0, Link(0.02, slowest))
    )


@pytest.mark.parametrize(
    "het", [Heterogeneity(speed_sigma=0.5), Heterogeneity(straggler_probability=0.3)]
)
def test_slow_workers_without_compute_time_are_warned_of(het):
    # Slowdowns multiply compute time; with seconds_per_sample 0 they changed nothing, silently.
    with pytest.warns(UserWarning, match="seconds_per_sample is 0"):
        CostModel(wifi(), heterogeneity=het)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CostModel(wifi(), 1e-3, het)
        CostModel(wifi(), heterogeneity=het, codec_seconds_per_element=1e-9)  # codec is scaled
        CostModel(wifi(), heterogeneity=Heterogeneity(bandwidth_sigma=0.5))  # links, not compute


def test_the_server_does_not_wait_for_the_stragglers_it_drops():
    # A dropped straggler still downloads the model, but the server moves on without it: its
    # download on a slow link set the round's time before.
    torch.set_num_threads(1)
    data, clients = _setup()
    het = Heterogeneity(bandwidth_sigma=2.0, seed=11)
    network = CostModel(NET, seconds_per_sample=1e-3, heterogeneity=het)
    stragglers = Stragglers(0.5, drop=True)
    work = LocalWork(1, 8)
    cfg = TrainConfig(rounds=6, sampler=ClientSampler(4), work=work, stragglers=stragglers,
                      progress=False, seed=2)  # fmt: skip
    res = train(tiny_model(), data, clients, fedavg(0.2), cfg, network=network)
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    waited_for_a_dropped_one = False
    for r, row in enumerate(res.metrics):
        sampled = ClientSampler(4)(sizes, 2, r)
        kept = stragglers.epochs(4, work, 2, r) > 0
        down = np.full(4, row["downlink_bytes"] / 4)  # dense: every client the same
        up = np.where(kept, row["uplink_bytes"] / kept.sum(), 0.0)
        samples = np.where(kept, sizes[sampled], 0.0)
        each = network.client_seconds(sampled, samples, up, down, r)
        assert row["round_sim_seconds"] == pytest.approx(each[kept].max())
        waited_for_a_dropped_one |= bool(each[~kept].max() > each[kept].max())
    assert waited_for_a_dropped_one  # the case the old rule got wrong happens here
