"""Adapt a ``StatefulAggregator`` to the runtime's stateless ``(inbox_ND, weights_N) -> x_D``.

The rules keep their state explicit (``init``/``update``); this adapter is the one place that
remembers it between calls, because the runtime's protocol has nowhere to pass it. It is
deliberately not a frozen dataclass: ``state`` changes on every call, and ``reset()`` forgets it.

``shoal.train`` starts a run from a fresh state (a reused adapter forgets the last run's) and
keeps the state in its checkpoints, so a resumed run continues it.

One adapter serves one message stream. The runtime aggregates each message key separately, so an
algorithm that sends several keys would feed all of them through the same adapter; a call whose
message shape differs from the stored state's raises instead of silently mixing two streams.
Two keys of the same shape cannot be told apart here: give such algorithms one adapter per key,
or drive ``init``/``update`` yourself.
"""

from __future__ import annotations

from typing import Any, Generic

import torch

from shoal.aggregate.base import S, StatefulAggregator


class Stateful(Generic[S]):
    """``Aggregator`` view of a stateful rule; the first call starts from ``agg.init(zeros)``."""

    linear = False

    def __init__(self, agg: StatefulAggregator[S]) -> None:
        if not callable(getattr(agg, "update", None)) or not callable(getattr(agg, "init", None)):
            raise TypeError(f"stateful: {agg!r} has no init/update; wrap a stateful rule")
        self.agg = agg
        self.state: S | None = None
        self._shape: torch.Size | None = None

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        shape = inbox_ND.shape[1:]
        if self.state is None:
            self.state = self.agg.init(inbox_ND.new_zeros(shape))
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(
                f"stateful: this aggregator's state is for messages of shape "
                f"{tuple(self._shape or ())}, got {tuple(shape)}; use one stateful(...) per "
                "message key"
            )
        out, self.state = self.agg.update(inbox_ND, weights_N, self.state)
        return out

    def reset(self) -> None:
        """Forget the state; the next call starts from ``init`` again."""
        self.state = None
        self._shape = None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (``shoal.train`` saves it, and restores it on resume)."""
        return {"state": self.state, "shape": self._shape}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Continue from ``state_dict()``'s ``saved``; ``None``: start afresh (:meth:`reset`)."""
        if saved is None:
            self.reset()
        else:
            self.state, self._shape = saved["state"], saved["shape"]

    def __repr__(self) -> str:
        return f"stateful({self.agg!r})"


def stateful(agg: StatefulAggregator[S]) -> Stateful[S]:
    """Keep ``agg``'s state between calls so the runtime can use it as an ``Aggregator``."""
    return Stateful(agg)
