"""Who is Byzantine in a run, and how they behave.

A fixed set of clients (drawn once from a seed, as in the robustness literature where the
adversary controls ``f`` of ``n`` workers) either sends attacked updates (an :class:`Attack`,
which sees the round's honest updates) or trains honestly on flipped labels
(:class:`~shoal.attacks.label_flip.LabelFlip`, a data-poisoning attack).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from shoal.attacks.base import Attack
from shoal.attacks.label_flip import LabelFlip
from shoal.checks import check_count, check_seed, is_integer
from shoal.streams import BYZANTINE, keyed_rng


@dataclass(frozen=True)
class Byzantine:
    """Which clients are Byzantine and what they do; build it with :func:`byzantine`."""

    clients: frozenset[int]
    behaviour: Attack | LabelFlip

    def __post_init__(self) -> None:
        # An id of 1.5 or "1" matched no client: the run went on without that attacker.
        odd = sorted(map(repr, (c for c in self.clients if not is_integer(c) or c < 0)))
        if odd:
            raise ValueError(f"Byzantine client ids must be integers >= 0, got {', '.join(odd)}")
        # A name ("ipm") or a factory not called (ipm for ipm()) failed only in round 1.
        b = self.behaviour
        if inspect.isfunction(b) and b.__module__.startswith("shoal.attacks"):
            raise TypeError(
                f"byzantine: behaviour {b.__name__} is a factory: call it, {b.__name__}()"
            )
        if isinstance(b, type) or not callable(b):
            raise TypeError(f"byzantine: behaviour must be an attack (e.g. sign_flip()), got {b!r}")

    def mask(self, clients: np.ndarray) -> np.ndarray:
        """Boolean per entry of ``clients``: is that client Byzantine."""
        return np.isin(clients, np.fromiter(self.clients, dtype=np.int64, count=len(self.clients)))


def byzantine(
    num_byzantine: int, num_clients: int, behaviour: Attack | LabelFlip, seed: int = 0
) -> Byzantine:
    """``num_byzantine`` of the ``num_clients`` clients, chosen at random from ``seed``."""
    check_count(num_byzantine, "byzantine: num_byzantine", least=0)  # 2.0 failed in numpy
    check_count(num_clients, "byzantine: num_clients")
    check_seed(seed, "byzantine: seed")
    if not 0 <= num_byzantine < num_clients:
        raise ValueError(
            f"num_byzantine must be in [0, num_clients={num_clients}), got {num_byzantine}"
        )
    chosen = keyed_rng(seed, BYZANTINE).choice(num_clients, num_byzantine, replace=False)
    return Byzantine(frozenset(int(c) for c in chosen), behaviour)
