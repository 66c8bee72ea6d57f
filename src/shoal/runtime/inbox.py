"""The server's inbox: aggregation chunk by chunk, and Byzantine clients' messages.

Linear rules (the weighted mean) keep running sums, so memory does not grow with the number
of clients per round. Robust rules get the whole inbox. A non-linear rule is applied to each
message key on its own, so keys that belong together (FedNova's ``tau`` and its normalized
delta) are not kept paired by it.

With an update attack, the inbox is always kept whole: the Byzantine clients' model-sized
messages are replaced by ``attack(honest_messages, f)`` before aggregation, the omniscient
threat model of the attack papers (ALIE, IPM and sign flipping see the honest updates).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from shoal.aggregate.base import Aggregator
from shoal.attacks.base import Attack
from shoal.types import Message


class Inbox:
    def __init__(
        self,
        aggregator: Aggregator,
        num_params: int,
        attack: Attack | None = None,
        byzantine: np.ndarray | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.num_params = num_params
        self.attack = attack if byzantine is not None and byzantine.any() else None
        self.byzantine = byzantine
        self.streaming = aggregator.linear and self.attack is None
        self.sums: Message = {}
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.weights: list[torch.Tensor] = []
        self.positions: list[np.ndarray] = []

    def add(self, msg: Message, w_W: torch.Tensor, positions: np.ndarray) -> None:
        """Messages of one chunk; ``positions`` are the clients' places in the round's task."""
        self.weights.append(w_W)
        self.positions.append(positions)
        for k, v in msg.items():
            if self.streaming:
                part = (w_W.to(v.dtype) @ v.reshape(v.shape[0], -1)).reshape(v.shape[1:])
                self.sums[k] = self.sums[k] + part if k in self.sums else part
            else:
                self.rows.setdefault(k, []).append(v)

    def total_weight(self) -> torch.Tensor:
        return torch.cat(self.weights).sum()

    def result(self) -> Message:
        if self.streaming:
            total = self.total_weight()
            return {k: v / total for k, v in self.sums.items()}
        w = torch.cat(self.weights)
        inbox = {k: torch.cat(vs) for k, vs in self.rows.items()}
        if self.attack is not None and self.byzantine is not None:
            bad = torch.from_numpy(self.byzantine[np.concatenate(self.positions)])
            f = int(bad.sum())
            if f and f == len(bad):
                warnings.warn(
                    "every client sampled this round is Byzantine: the attack crafts its "
                    "messages from honest updates and there are none, so they sent their own "
                    "(honest) updates; sample more clients per round to attack every round",
                    stacklevel=2,
                )
            for k, v in inbox.items():
                if v.shape[-1] == self.num_params and f < len(v):
                    v = v.clone()
                    v[bad.to(v.device)] = self.attack(v[~bad.to(v.device)], f).to(v.dtype)
                    inbox[k] = v
        return {k: self.aggregator(v, w) for k, v in inbox.items()}
