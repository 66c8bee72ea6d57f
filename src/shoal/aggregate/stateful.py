"""Adapt a ``StatefulAggregator`` to the runtime's stateless ``(inbox_ND, weights_N) -> x_D``.

The rules keep their state explicit (``init``/``update``); this adapter is the one place that
remembers it between calls, because the runtime's protocol has nowhere to pass it. It is
deliberately not a frozen dataclass: ``state`` changes on every call, and ``reset()`` forgets it.

``shoal.train`` starts a run from a fresh state (a reused adapter forgets the last run's) and
keeps the state in its checkpoints, so a resumed run continues it.

The runtime aggregates each message key on its own (SCAFFOLD sends ``delta`` and ``delta_c``,
FedNova ``normalized_delta`` and ``tau``) and names the key in ``base.MESSAGE_KEY``; the adapter
keeps one state per key, so each key's stream continues its own last output. Called directly
(no key set), it serves one stream; a call whose message shape differs from that stream's
raises instead of silently mixing two streams.
"""

from __future__ import annotations

import warnings
from typing import Any, Generic

import torch

from shoal.aggregate.base import MESSAGE_KEY, S, StatefulAggregator


class Stateful(Generic[S]):
    """``Aggregator`` view of a stateful rule; each stream's first call starts from
    ``agg.init(zeros)``."""

    linear = False

    def __init__(self, agg: StatefulAggregator[S]) -> None:
        if not callable(getattr(agg, "update", None)) or not callable(getattr(agg, "init", None)):
            raise TypeError(f"stateful: {agg!r} has no init/update; wrap a stateful rule")
        self.agg = agg
        self.streams: dict[str | None, tuple[S, torch.Size]] = {}
        """Message key -> (the rule's state, the message shape it is for)."""

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        key, shape = MESSAGE_KEY.get(), inbox_ND.shape[1:]
        if key not in self.streams:
            self.streams[key] = (self.agg.init(inbox_ND.new_zeros(shape)), shape)
        state, own = self.streams[key]
        if shape != own:
            named = "" if key is None else f" {key!r}"
            raise ValueError(
                f"stateful: this aggregator's state for messages{named} is for shape "
                f"{tuple(own)}, got {tuple(shape)}; use one stateful(...) per message stream"
            )
        out, state = self.agg.update(inbox_ND, weights_N, state)
        self.streams[key] = (state, shape)
        return out

    @property
    def state(self) -> S | None:
        """The state of the one stream so far (None before the first call)."""
        if len(self.streams) > 1:
            raise ValueError(f"stateful: {len(self.streams)} streams; read .streams")
        return next(iter(self.streams.values()))[0] if self.streams else None

    def reset(self) -> None:
        """Forget the state; the next call starts from ``init`` again."""
        self.streams = {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (``shoal.train`` saves it, and restores it on resume)."""
        return {"streams": dict(self.streams)}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Continue from ``state_dict()``'s ``saved``; ``None``: start afresh (:meth:`reset`)."""
        if saved is not None and "streams" not in saved:  # one state, saved before streams
            raise ValueError(
                "stateful: the checkpoint holds this aggregator's state in the older one-stream "
                "form; resume it with the Shoal version that wrote it, or start a new run"
            )
        self.streams = {} if saved is None else dict(saved["streams"])

    def __repr__(self) -> str:
        return f"stateful({self.agg!r})"


def warn_if_unkept(agg: Any) -> None:
    """Warn when a stateful rule reaches a runtime bare (or inside bucketing or NNM): called
    with ``(inbox_ND, weights_N)`` alone it starts every round from a zero state, so
    ``centered_clip()`` clips around 0 (plain norm clipping), not around the previous round's
    output as Karimireddy et al. 2021 do. Zero may be meant, hence a warning."""
    while agg is not None and not isinstance(agg, Stateful):
        if callable(getattr(agg, "update", None)) and callable(getattr(agg, "init", None)):
            warnings.warn(
                f"{agg!r} keeps no state between rounds as passed: every round starts from "
                f"zero, not from the last round's output; pass stateful({agg!r}) to keep it",
                stacklevel=3,
            )
            return
        agg = getattr(agg, "agg", None)  # bucketing's and NNM's inner rule


def stateful(agg: StatefulAggregator[S]) -> Stateful[S]:
    """Keep ``agg``'s state between calls so the runtime can use it as an ``Aggregator``."""
    return Stateful(agg)
