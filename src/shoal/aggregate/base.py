"""The Aggregator protocol: ``(inbox_ND, weights_N) -> x_D``.

An aggregator that is a weighted mean declares ``linear = True``; the runtime may then feed
it the inbox in chunks and keep only running sums, so memory does not grow with the number of
clients per round. Robust aggregators (median, Krum, ...) need the whole inbox at once.

The few rules with state across rounds (centered clipping) also implement
``StatefulAggregator``: explicit ``init``/``update``, adapted to ``Aggregator`` by ``stateful``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol, TypeVar, runtime_checkable

import torch

MESSAGE_KEY: ContextVar[str | None] = ContextVar("message_key", default=None)
"""The message key (``delta``, ``delta_c``, ...) being aggregated, set by the runtime's inbox
around each call: the stateless protocol has no room for it, and a stateful rule keeps one
state per key (SCAFFOLD's two keys of one shape shared a clipping center)."""


class TooFewInputs(ValueError):
    """An inbox with fewer rows than a rule needs for its ``f`` (``krum needs n >= 2f+3``): the
    runtime adds the round, since sampling and dropped stragglers decide ``n``."""


class NonFiniteInbox(ValueError):
    """An inbox with a NaN or inf entry: the rules refuse it rather than guess (a grid or a
    sweep catches this one to record a diverged run, and lets every other mistake surface)."""


@runtime_checkable
class Aggregator(Protocol):
    """A rule ``(inbox_ND, weights_N) -> x_D`` that combines a round's messages into one."""

    @property
    def linear(self) -> bool:
        """True when the rule is a weighted mean, so partial sums may be streamed."""
        ...

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor: ...


S = TypeVar("S")


@runtime_checkable
class StatefulAggregator(Protocol[S]):
    """A rule that carries state from round to round (centered clipping's previous output).

    Explicit, optax-style: ``init(x_D)`` builds the first state, ``update`` returns the new
    state instead of keeping it. ``stateful(agg)`` adapts one to the plain ``Aggregator``
    protocol for a runtime that only calls ``(inbox_ND, weights_N)``.
    """

    @property
    def linear(self) -> bool: ...

    def init(self, x_D: torch.Tensor) -> S: ...

    def update(
        self, inbox_ND: torch.Tensor, weights_N: torch.Tensor, state: S
    ) -> tuple[torch.Tensor, S]: ...
