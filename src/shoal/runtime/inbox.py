"""The server's inbox: aggregation chunk by chunk, and Byzantine clients' messages.

Linear rules (the weighted mean) keep running sums, so memory does not grow with the number
of clients per round. Robust rules get the whole inbox. A non-linear rule is applied to each
message key on its own, so keys that belong together (FedNova's ``tau`` and its normalized
delta) are not kept paired by it.

With an update attack, the inbox is always kept whole: the Byzantine clients' model-sized
messages are replaced by ``attack(honest_messages, f)`` before aggregation, the omniscient
threat model of the attack papers (ALIE, IPM and sign flipping see the honest updates). The
attack sees what the server decoded of the honest messages; under a compressor the Byzantine
clients then send their rows through it too (without error feedback: no honest residual is
theirs to carry), so the server decodes a payload of the run's format and the ledger charges
the bytes of that payload, as for any client (:attr:`Inbox.sent`). A crafted dense row in a
top-k inbox had travelled for the bytes of the client's honest sparse upload.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from shoal.aggregate.base import MESSAGE_KEY, Aggregator, TooFewInputs
from shoal.attacks.base import Attack
from shoal.compress.base import Compressor, identity
from shoal.compress.feedback import without_feedback
from shoal.runtime.base import RoundTask
from shoal.runtime.transmit import model_sized, statistics_of, transmit_each
from shoal.types import Message


class Inbox:
    def __init__(
        self,
        aggregator: Aggregator,
        num_params: int,
        attack: Attack | None = None,
        byzantine: np.ndarray | None = None,
        compressor: Compressor | None = None,
        clients: np.ndarray | None = None,
        round_idx: int = 0,
        statistics: frozenset[str] = frozenset(),
    ) -> None:
        """``byzantine`` and ``clients`` are per task position; ``compressor`` is the uplink's,
        through which the Byzantine clients send their crafted rows (``round_idx`` keys its
        random draws)."""
        self.aggregator = aggregator
        self.num_params = num_params
        self.attack = attack if byzantine is not None and byzantine.any() else None
        self.byzantine = byzantine
        self.streaming = aggregator.linear and self.attack is None
        self.sums: Message = {}
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.weights: list[torch.Tensor] = []
        self.positions: list[np.ndarray] = []
        self.compressor = compressor if compressor is not None else identity()
        self.clients = clients
        self.round_idx = round_idx
        self.statistics = statistics  # message keys attacks leave alone (FedNova's tau)
        self.sent: dict[int, int] = {}
        """Task position -> bytes a Byzantine client's crafted message took (set by result)."""

    @classmethod
    def of(cls, task: RoundTask) -> Inbox:
        """The server's inbox for one round of ``task``."""
        return cls(
            task.aggregator,
            task.spec.num_params,
            task.attack,
            task.byzantine,
            task.compressor,
            task.clients,
            task.round_idx,
            statistics_of(task.algorithm),
        )

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
            if f < len(bad):
                where = np.concatenate(self.positions)[bad.numpy()]
                inbox = self._attacked(self.attack, inbox, bad, where)
        out = {}
        for k, v in inbox.items():
            token = MESSAGE_KEY.set(k)  # a stateful rule keeps a state per key
            try:
                out[k] = self.aggregator(v, w)
            except TooFewInputs as e:  # the rule's message does not say when or why
                raise TooFewInputs(
                    f"round {self.round_idx + 1}: {len(w)} message(s) reached the server "
                    f"(sampled clients less dropped stragglers): {e}"
                ) from None
            finally:
                MESSAGE_KEY.reset(token)
        return out

    def _attacked(
        self, attack: Attack, inbox: Message, bad: torch.Tensor, positions: np.ndarray
    ) -> Message:
        """The inbox with the Byzantine rows (``bad``, at task ``positions``) crafted from the
        honest ones and sent through the compressor; records their bytes in ``sent``."""
        crafted = {}
        for k, v in inbox.items():
            rows = v[bad.to(v.device)]
            if model_sized(k, v, self.num_params, self.statistics):
                rows = attack(v[~bad.to(v.device)], len(positions)).to(v.dtype)
            crafted[k] = rows
        ids = [int(c) for c in (positions if self.clients is None else self.clients[positions])]
        # A fresh compressor state keyed by the round, so every process of a distributed run
        # decodes the same rows and a stochastic compressor draws anew each round (a state
        # from the client's first-message seed rounded them alike, and random-k picked the
        # same coordinates, in every round); an attacker keeps no residual to feed back.
        received, sent_F = transmit_each(
            without_feedback(self.compressor),
            crafted,
            ids,
            {},
            self.num_params,
            stream=(self.round_idx,),
            statistics=self.statistics,
        )
        self.sent = {int(p): int(b) for p, b in zip(positions, sent_F)}
        out = {}
        for k, v in inbox.items():
            if model_sized(k, v, self.num_params, self.statistics):
                v = v.clone()
                v[bad.to(v.device)] = received[k]
            out[k] = v
        return out
