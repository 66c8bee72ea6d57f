"""Uplink transmission through a compressor, with exact byte accounting.

Each client's message tensors of model size (``[W, D]``: deltas, SCAFFOLD's control-variate
updates) go through the compressor one client at a time; the receiver sees the decompressed
tensors and the ledger is charged ``compressor.nbytes`` of what was really produced. Other
tensors (FedNova's ``tau``, one number per client, which the algorithm names among its
``statistics``: see :func:`model_sized`) travel uncompressed in the same framing.
A client's compressor state (error feedback's residual, a random-k counter) lives in the
client store next to its algorithm state, created on first participation with the client's own
seed for private randomness (:func:`shoal.compress.init_for_worker`): two clients sending the
same vector round it independently, while random-k's shared index seed stays shared.

An algorithm may name message keys it ``tracks`` (``{message key: client-state key}``): the
client keeps, in that state entry, the sum of what the server decoded of the key's messages,
as EF21 keeps its gradient estimate (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021), so the two
sides agree on it whatever the compressor drops. The next message is then taken against that
sum and already carries what was not sent, so these keys go without error feedback
(:func:`shoal.compress.without_feedback`). SCAFFOLD tracks its control variates this way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch

from shoal.compress.base import Compressor, Identity, identity, init_for_worker
from shoal.compress.feedback import without_feedback
from shoal.types import ClientState, Message

_RAW = identity()


def model_sized(
    key: str, value: torch.Tensor, num_params: int, statistics: Collection[str]
) -> bool:
    """Whether message entry ``key`` is a model-sized vector per client (compressed, and what
    attacks craft): its last dimension is the model's, and the algorithm does not name it
    among its per-client ``statistics`` (FedNova's ``[W, 1]`` tau has the model's size when
    the model has one parameter, and was compressed and attacked as a delta)."""
    return value.shape[-1] == num_params and key not in statistics


def statistics_of(algorithm: Any) -> frozenset[str]:
    return frozenset(getattr(algorithm, "statistics", ()))


def transmit(
    compressor: Compressor,
    msg: Message,
    clients: list[int],
    states: dict[int, dict[str, Any]],
    num_params: int,
) -> tuple[Message, int]:
    """Send each client's row of ``msg``; returns what the server receives and the bytes."""
    received, sent_W = transmit_each(compressor, msg, clients, states, num_params)
    return received, int(sent_W.sum())


def transmit_each(
    compressor: Compressor,
    msg: Message,
    clients: list[int],
    states: dict[int, dict[str, Any]],
    num_params: int,
    tracked: Mapping[str, str] | None = None,
    stream: tuple[int, ...] = (),
    statistics: Collection[str] = (),
) -> tuple[Message, np.ndarray]:
    """:func:`transmit`, with the bytes each client sent (int64, in ``clients`` order);
    the keys of ``tracked`` go without error feedback. A state made here is seeded by the
    client and the message key's position; with a ``stream``, by it too and privately even
    for a shared-seed compressor (random-k's indices, PowerSGD's first query): such messages
    are decoded one by one, never summed compressed (the Byzantine rows, keyed by round)."""
    received: Message = {}
    sent_W = np.zeros(len(clients), dtype=np.int64)
    for index, (key, value) in enumerate(msg.items()):
        if not model_sized(key, value, num_params, statistics) or isinstance(compressor, Identity):
            sent_W += [_RAW.nbytes({"values": row}) for row in value]
            received[key] = value
            continue
        c = without_feedback(compressor) if tracked and key in tracked else compressor
        rows = []
        for j, client in enumerate(clients):
            state = states.setdefault(client, {})
            if key not in state:
                state[key] = init_for_worker(
                    c, value[j], client, index, *stream, private=bool(stream)
                )
            payload, state[key] = c.compress(value[j], state[key])
            sent_W[j] += c.nbytes(payload)
            rows.append(c.decompress(payload).to(value.dtype))
        received[key] = torch.stack(rows)
    return received, sent_W


def track(
    tracked: Mapping[str, str] | None,
    before: ClientState,
    after: ClientState,
    received: Message,
    compressor: Compressor,
) -> ClientState:
    """The clients' new state, with each tracked entry the old one plus what the server
    received (a lossless uplink leaves ``after`` as the algorithm computed it)."""
    if not tracked or isinstance(compressor, Identity):
        return after
    return {**after, **{s: before[s] + received[m] for m, s in tracked.items()}}
