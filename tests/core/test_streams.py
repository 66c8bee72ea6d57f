"""No two purposes share random draws. numpy's SeedSequence pads a short key with zeros, so the
keys [seed, 7] and [seed, 7, 0] are one stream: ``byzantine()`` (keyed [seed, 7]) drew its
clients with round 7's client sample, and the cost model's per-client draws ([seed, 0 or 1,
client], [seed, 2, round, client]) were round 0's and 1's sampling streams and round 2's batch
orders whenever its seed equalled the run's."""

from __future__ import annotations

import numpy as np

from shoal.attacks import byzantine, sign_flip
from shoal.cost import Heterogeneity
from shoal.schedule import ClientSampler, round_rng
from shoal.streams import (
    BYZANTINE,
    COST_BANDWIDTH,
    COST_SPEED,
    COST_STRAGGLE,
    FEATURE_NOISE,
    PARTITION,
    keyed_rng,
)


def test_a_round_never_samples_exactly_the_byzantine_clients() -> None:
    # 10 Byzantine of 1,000 clients, 10 sampled a round: round 8 (index 7) was all Byzantine.
    sampler, sizes = ClientSampler(10), np.ones(1000)
    for seed in range(3):
        bad = byzantine(10, 1000, sign_flip(), seed=seed).clients
        overlap = [len(bad & set(sampler(sizes, seed, r).tolist())) for r in range(30)]
        assert max(overlap) <= 2, (seed, overlap)


def test_the_cost_models_draws_are_not_the_rounds_draws() -> None:
    # Client c's log-speed was the first normal of round 0's stream c (c = 0: the client
    # sample); whether it straggled in round 2, the first draw of its round-2 batch order.
    clients = np.arange(200)
    log_speed = np.log(Heterogeneity(speed_sigma=1.0, seed=0).slowdown(clients, 5))
    rounds_z = np.array([round_rng(0, 0, int(c)).standard_normal() for c in clients])
    assert abs(np.corrcoef(log_speed, rounds_z)[0, 1]) < 0.3
    slow = Heterogeneity(straggler_probability=0.5, seed=0).slowdown(clients, 2) > 1
    batch_u = np.array([round_rng(0, 2, 2, int(c)).random() for c in clients])
    assert 0.3 < np.mean(slow == (batch_u < 0.5)) < 0.7


def test_every_purpose_has_streams_of_its_own() -> None:
    # The first 64-bit word of every stream a run of 10 rounds and 5 clients can draw, for
    # three seeds: all distinct.
    first: dict[int, str] = {}
    for seed in range(3):
        keys: list[tuple[str, np.random.Generator]] = []
        for p in (PARTITION, FEATURE_NOISE, BYZANTINE):
            keys.append((f"setup {p}", keyed_rng(seed, p)))
        for r in range(10):
            keys += [
                (f"sample {r}", round_rng(seed, r, 0)),
                (f"straggle {r}", round_rng(seed, r, 1)),
            ]
            for c in range(5):
                keys.append((f"batches {r} {c}", round_rng(seed, r, 2, c)))
                keys.append((f"cost straggle {r} {c}", keyed_rng(seed, COST_STRAGGLE, r, c)))
        for c in range(5):
            keys.append((f"cost speed {c}", keyed_rng(seed, COST_SPEED, c)))
            keys.append((f"cost bandwidth {c}", keyed_rng(seed, COST_BANDWIDTH, c)))
        for name, rng in keys:
            word = int(rng.bit_generator.random_raw())
            assert word not in first, (seed, name, first.get(word))
            first[word] = f"{seed} {name}"
