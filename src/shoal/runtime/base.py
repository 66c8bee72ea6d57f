"""What a runtime is given for one round, and what it hands back.

The driver (:mod:`shoal.train`) decides who trains and on which batches; a runtime only
executes the local work and delivers the aggregated messages. ``SimRuntime`` does it in one
process (looped or vectorized); the distributed runtimes do it across processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from shoal.aggregate.base import Aggregator
from shoal.algorithms.base import Algorithm
from shoal.attacks.base import Attack
from shoal.compress.base import Compressor
from shoal.functional import LossFn, ParamSpec
from shoal.schedule import Plan
from shoal.types import ClientState, Message


@dataclass
class ClientStore:
    """Algorithm state of the clients that have one, created on first participation.

    A dormant client costs its data indices (held by the dataset) and, once it has taken part,
    its algorithm state and, with a stateful uplink compressor, its compressor state
    (error feedback's residual is model-sized); nothing else is kept per client.
    """

    states: dict[int, ClientState] = field(default_factory=dict)
    compressor: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Per-client compressor state (e.g. error feedback's residual), by message key."""

    def get(self, client: int, alg: Algorithm, params_D: torch.Tensor) -> ClientState:
        state = self.states.get(client)
        return alg.client_init(params_D) if state is None else state

    def put(self, client: int, state: ClientState) -> None:
        if state:
            self.states[client] = state


@dataclass(frozen=True)
class RoundTask:
    """The local work of one round, identical for every runtime."""

    model: nn.Module
    spec: ParamSpec
    loss_fn: LossFn
    algorithm: Algorithm
    aggregator: Aggregator
    compressor: Compressor
    params_D: torch.Tensor
    down: Message
    x: torch.Tensor
    y: torch.Tensor
    clients: np.ndarray
    plans: list[Plan]
    weights: np.ndarray
    attack: Attack | None = None
    """An update attack applied to the Byzantine clients' messages (omniscient)."""
    byzantine: np.ndarray | None = None
    """Boolean per client (task order): which of this round's clients are Byzantine."""
    round_idx: int = 0
    """The round (from 0): the Byzantine clients' compressor draws differ from round to round."""


@dataclass(frozen=True)
class RoundResult:
    """What a runtime returns for one round: the aggregated message, the loss and the bytes sent."""

    mean_msg: Message
    train_loss: float
    """Mean per-sample loss over every local minibatch of the round's honest clients (see
    :func:`honest_train_loss`)."""
    uplink_bytes: int
    client_train_loss: np.ndarray
    """Per client (in task order): mean loss over its own local minibatches."""
    client_uplink_bytes: np.ndarray | None = None
    """Per client (in task order): the bytes it uploaded, for the network cost model; ``None``
    from a runtime that does not count them (the cost model then splits ``uplink_bytes``)."""


def honest_train_loss(
    losses: np.ndarray, samples: np.ndarray, byzantine: np.ndarray | None
) -> float:
    """The round's mean per-sample loss over its honest clients (per-client loss sums and sample
    counts in task order): a Byzantine client's own loss, on flipped labels or under a message
    it then replaces, is no measure of the honest training. A round of Byzantine clients only
    counts theirs."""
    keep = ~byzantine if byzantine is not None and not byzantine.all() else slice(None)
    return float(losses[keep].sum() / max(samples[keep].sum(), 1.0))


@runtime_checkable
class Runtime(Protocol):
    """Trains a round's clients and aggregates their messages: :class:`~shoal.SimRuntime` in one
    process, :class:`~shoal.runtime.dist.DistRuntime` across ``torch.distributed`` processes."""

    def run_round(self, task: RoundTask, store: ClientStore) -> RoundResult: ...

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files and shows progress (one process does)."""
        ...

    def gather_store(self, store: ClientStore) -> ClientStore:
        """Every client's state, for the main process's checkpoint (a distributed runtime
        keeps each client's state on the process that trains it)."""
        ...

    def sync(self) -> None:
        """Wait until every process got here (the main one has written the run's files)."""
        ...

    def predict(
        self,
        model: nn.Module,
        spec: ParamSpec,
        params_D: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(loss_N, correct_N)`` of the global model on ``(x, y)``, on every
        process (:func:`shoal.evaluate.predict`; a distributed runtime shares the rows out)."""
        ...


def inbox_order(task: RoundTask, positions: np.ndarray) -> np.ndarray:
    """The order in which the server's inbox holds the messages of ``positions``: clients with
    more local steps first (the simulator trains them so, keeping the active ones a prefix),
    then the round's order. Every runtime fills the inbox in it, so rules that depend on the
    order (bucketing's permutation, a mimic attack's target) see the same inbox in all."""
    steps = np.array([task.plans[i].num_steps for i in positions], dtype=np.int64)
    return positions[np.argsort(-steps, kind="stable")]


def stack_states(states: list[ClientState]) -> ClientState:
    """Stack per-client states along a new leading ``W`` axis."""
    if not states or not states[0]:
        return {}
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def corrects(task: RoundTask, cstate: ClientState) -> bool:
    """Whether the task's algorithm adds a correction to the local gradient (probed on the
    first client's state at the global model)."""
    probe = {k: v[:1] for k, v in cstate.items()}
    return task.algorithm.correction(task.params_D.unsqueeze(0), task.down, probe) is not None
