"""The cost model against hand-computed figures where the by-hand tests leave gaps: per-client
bandwidth factors on both directions, stragglers on top of persistent slowdowns, independent
random streams, shared downlinks and clocks across several point-to-point exchanges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.cost import CostModel, Exchange, Heterogeneity, Link, Network, alpha_beta
from shoal.topology import from_matrix

# Up: 10 ms + 1,000 B/s; down: 20 ms + 4,000 B/s.
NET = Network("test", alpha_beta(0.01, 1000.0), alpha_beta(0.02, 4000.0))


def _lognormal(sigma: float, seed: int, stream: int, clients) -> np.ndarray:
    """The documented draw, written out: exp(sigma z), z standard normal keyed [seed, 2**31 +
    3 + stream, c] (shoal.streams: COST_SPEED is purpose 3, COST_BANDWIDTH 4)."""
    z = [
        np.random.default_rng([seed, 2**31 + 3 + stream, int(c)]).standard_normal() for c in clients
    ]
    return np.exp(sigma * np.array(z))


def _into_zero(n: int) -> torch.Tensor:
    """A directed graph: every node 1..n-1 sends to node 0 only, node 0 sends to nobody."""
    m = torch.zeros(n, n, dtype=torch.float64)
    m[0, 0] = 1.0
    for i in range(1, n):
        m[0, i] = m[i, i] = 0.5
    return m


def test_bandwidth_factors_scale_both_directions_of_each_clients_link():
    h = Heterogeneity(bandwidth_sigma=0.7, seed=5)
    clients = np.array([2, 10, 8])
    factor = _lognormal(0.7, 5, 1, clients)  # the bandwidth stream is stream 1
    assert factor.min() < 1 < factor.max()  # some slower, some faster than the profile
    model = CostModel(NET, heterogeneity=h)
    up, down = np.array([500.0, 800.0, 300.0]), np.array([2000.0, 2000.0, 2000.0])
    got = model.client_seconds(clients, np.zeros(3), up, down, round_idx=0)
    # A faster link takes less time: bytes over (nominal bandwidth x the client's factor).
    want = 0.02 + down / (4000.0 * factor) + 0.01 + up / (1000.0 * factor)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_straggler_multiplies_its_persistent_slowdown():
    clients = np.arange(400)
    steady = Heterogeneity(speed_sigma=0.5, seed=4)
    both = Heterogeneity(speed_sigma=0.5, straggler_probability=0.5, straggler_slowdown=6.0, seed=4)
    ratio = both.slowdown(clients, 3) / steady.slowdown(clients, 3)
    # Each client is its usual speed, or six times slower than that; about half are stragglers.
    np.testing.assert_allclose(ratio[~np.isclose(ratio, 1.0)], 6.0, rtol=1e-12)
    assert 0.35 < np.isclose(ratio, 6.0).mean() < 0.65
    np.testing.assert_allclose(steady.slowdown(clients, 3), _lognormal(0.5, 4, 0, clients))


def test_speed_and_bandwidth_are_independent_draws():
    clients = np.arange(2000)
    h = Heterogeneity(speed_sigma=0.4, bandwidth_sigma=0.4, seed=2)
    log_speed, log_bw = np.log(h.slowdown(clients, 0)), np.log(h.bandwidth(clients))
    assert not np.allclose(log_speed, log_bw) and not np.allclose(log_speed, -log_bw)
    assert abs(np.corrcoef(log_speed, log_bw)[0, 1]) < 0.1  # uncorrelated streams


def test_a_receivers_downlink_is_shared_among_its_incoming_messages():
    link = Link(0.5, 100.0)
    cm = CostModel(Network("sym", link, link))
    graph = from_matrix(_into_zero(4))
    # Three senders, one message each (the whole uplink each), all into node 0, whose
    # downlink gives each a third: 0.5 + 100 / (100 / 3) = 3.5 s.
    step = cm.step_seconds([Exchange("p2p", (0, 100, 100, 100), graph)], np.zeros(4), 0)
    assert step == pytest.approx(3.5)
    # One sender alone gets the whole downlink: 0.5 + 1 s.
    alone = cm.step_seconds([Exchange("p2p", (0, 100, 0, 0), graph)], np.zeros(4), 0)
    assert alone == pytest.approx(1.5)


def test_a_message_is_paced_by_its_receivers_own_bandwidth_factor():
    h = Heterogeneity(bandwidth_sigma=0.8, seed=11)
    f = _lognormal(0.8, 11, 1, range(2))
    up, down = Link(0.0, 1000.0), Link(0.0, 100.0)  # the downlink is the bottleneck
    cm = CostModel(Network("slow down", up, down), heterogeneity=h)
    graph = from_matrix(_into_zero(2))  # node 1 sends to node 0
    got = cm.step_seconds([Exchange("p2p", (0, 400), graph)], np.zeros(2), 0)
    assert got == pytest.approx(400 / min(1000.0 * f[1], 100.0 * f[0]), rel=1e-12)


def test_a_sender_is_busy_until_its_message_arrives():
    """A message leaves at its sender's clock and moves both ends' clocks to its arrival: a
    second message from the same node leaves only when the first has arrived."""
    link = Link(0.5, 100.0)
    cm = CostModel(Network("sym", link, link))
    graph = from_matrix(_into_zero(2))  # node 1 sends to node 0
    once = Exchange("p2p", (0, 100), graph)
    assert cm.step_seconds([once], np.zeros(2), 0) == pytest.approx(1.5)
    assert cm.step_seconds([once, once], np.zeros(2), 0) == pytest.approx(3.0)
