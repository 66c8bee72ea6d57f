"""Seeded random streams: numpy generators keyed by what they are for, and torch generators
that advance with every call (the Gaussian attack's noise, bucketing's permutations), with how
a run saves and restores where one is.

``shoal.train`` starts a fresh run at the seed's start and a resumed one where its checkpoint
left off, so neither depends on what the object did before.
"""

from __future__ import annotations

import numpy as np
import torch

# numpy's SeedSequence pads a short key with zeros: [seed, 7] and [seed, 7, 0] are one stream.
# The round streams (shoal.schedule.round_rng) are keyed [seed, round, stream, ...]; every other
# purpose is keyed [seed, _SETUP + purpose, ...], beyond any round number, so no two purposes
# share draws. (byzantine() keyed [seed, 7], round 7's client sample: with as many clients per
# round as Byzantine ones, round 8 sampled exactly the Byzantine clients.)
_SETUP = 2**31
PARTITION, FEATURE_NOISE, BYZANTINE, COST_SPEED, COST_BANDWIDTH, COST_STRAGGLE = range(6)


def keyed_rng(seed: int, purpose: int, *key: int) -> np.random.Generator:
    """The generator of ``purpose`` (one of the constants above) at ``key`` (e.g. a round and
    a client), independent of the round streams and of every other purpose."""
    return np.random.default_rng([seed, _SETUP + purpose, *key])


def seeded_stream(seed: int) -> torch.Generator:
    """A CPU generator at the start of ``seed``'s stream."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))  # a numpy integer is refused by manual_seed
    return gen


def restore_stream(gen: torch.Generator, seed: int, saved: torch.Tensor | None) -> None:
    """Put ``gen`` where ``saved`` (its ``get_state()``) was; ``None``: at ``seed``'s start."""
    if saved is None:
        gen.manual_seed(int(seed))  # as in seeded_stream
    else:  # a checkpoint loaded onto a GPU holds the CPU generator's state there
        gen.set_state(saved.cpu())
