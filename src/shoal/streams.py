"""Seeded random streams that advance with every call (the Gaussian attack's noise,
bucketing's permutations), and how a run saves and restores where one is.

``shoal.train`` starts a fresh run at the seed's start and a resumed one where its checkpoint
left off, so neither depends on what the object did before.
"""

from __future__ import annotations

import torch


def seeded_stream(seed: int) -> torch.Generator:
    """A CPU generator at the start of ``seed``'s stream."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def restore_stream(gen: torch.Generator, seed: int, saved: torch.Tensor | None) -> None:
    """Put ``gen`` where ``saved`` (its ``get_state()``) was; ``None``: at ``seed``'s start."""
    if saved is None:
        gen.manual_seed(seed)
    else:
        gen.set_state(saved)
