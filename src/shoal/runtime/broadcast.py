"""Downlink transmission: the server's broadcast, optionally compressed, with exact bytes.

What is compressed is the model's change since the copy the clients hold, not the model: the
server keeps ``w``, the copy every up-to-date client has, and each round sends
``C(x - w)``; server and clients both set ``w <- w + decompress(C(x - w))``, and the clients
train from ``w``. Whatever ``C`` left out is still in ``x - w`` next round, so this is error
feedback through the reference (EF21-P: Gruntkowska, Tyurin, Richtarik, "EF21-P and friends",
ICML 2023; the compressed-model-difference downlink of Tang et al., "DoubleSqueeze", ICML
2019). The downlink compressor must therefore not be wrapped in ``error_feedback``: that would
carry the same residual twice.

Only a client that received the previous round's broadcast holds ``w``. With partial
participation the others (never sampled, or sampled earlier) are sent ``w`` itself, uncompressed:
every client of a round trains from the same ``w``, and the bytes charged are what each one was
really sent (compressed payload for up-to-date clients, the dense model for the rest). With
full participation every client is up to date from round 2 on.

Model-sized tensors (``[D]``: the model, SCAFFOLD's control variate) each have their own ``w``;
other tensors travel uncompressed. The identity compressor sends the message untouched, so it
is bit for bit the uncompressed broadcast.

Shape suffixes: ``D`` flat parameters, ``W`` the round's sampled clients.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from shoal.compress._common import init_with_seed, mix
from shoal.compress.base import (
    CONTRACTIVE_EXAMPLES,
    Compressor,
    Identity,
    configured_seed,
    identity,
    is_contractive,
)
from shoal.compress.feedback import has_feedback
from shoal.types import Message

_RAW = identity()

DownlinkState = dict[str, Any]
"""``{"ref": {key: w_D}, "compressor": {key: state}, "holders": client ids holding w}``."""


def _dense(t: torch.Tensor) -> int:
    return _RAW.nbytes({"values": t})


def check_downlink(compressor: Compressor) -> None:
    """Refuse ``error_feedback`` on the downlink, inside a wrapper too (the reference already
    is the feedback: the unsent part would travel twice), and warn of a compressor that is not
    contractive: the clients' copy follows the model by that feedback (EF21-P), and with such
    a compressor it can drift away from it (QSGD with 4 levels took FedAvg to chance)."""
    if has_feedback(compressor):
        raise ValueError(
            f"downlink compressor {compressor.name}: the downlink already carries what was not "
            "sent to the next round (its reference copy); pass it without error_feedback"
        )
    if is_contractive(compressor) is False:
        warnings.warn(
            f"downlink compressor {compressor.name}: not contractive (E||x - C(x)||^2 can "
            "exceed ||x||^2), so the clients' copy of the model, updated by feedback through "
            "the last one sent, can drift away from it and training diverge. Use a "
            f"contractive compressor ({CONTRACTIVE_EXAMPLES}; qsgd with more levels).",
            stacklevel=3,  # the caller of train(...)
        )


def broadcast(
    compressor: Compressor,
    down: Message,
    sampled_W: np.ndarray,
    state: DownlinkState,
    num_params: int,
) -> tuple[Message, np.ndarray, DownlinkState]:
    """Send ``down`` to the clients ``sampled_W``.

    Returns what the clients hold afterwards (train from it), the bytes each sampled client
    received, and the new state (a new dict: the old one is not modified).
    """
    if isinstance(compressor, Identity):
        per_client = sum(_dense(t) for t in down.values())
        return down, np.full(len(sampled_W), per_client, dtype=np.int64), state
    holders = state.get("holders")
    fresh_W = np.isin(sampled_W, holders) if holders is not None else np.zeros(len(sampled_W), bool)
    refs, cstates = dict(state.get("ref", {})), dict(state.get("compressor", {}))
    received: Message = {}
    sent_W = np.zeros(len(sampled_W), dtype=np.int64)
    model_sized = 0
    for key, x in down.items():
        if x.dim() != 1 or x.shape[0] != num_params:
            received[key] = x
            sent_W += _dense(x)
            continue
        stream, model_sized = model_sized, model_sized + 1
        ref = refs.get(key)
        if ref is None:  # the first broadcast: nobody holds a copy yet, all get it dense
            refs[key] = received[key] = x.clone()
            sent_W += _dense(x)
            continue
        if key not in cstates:
            # Each key its own draws (SCAFFOLD sends params and c, which were rounded alike);
            # the first keeps the configured seed, as before.
            seed = None if stream == 0 else mix(configured_seed(compressor) or 0, stream)
            cstates[key] = init_with_seed(compressor, x, seed)
        payload, cstates[key] = compressor.compress(x - ref, cstates[key])
        w = ref + compressor.decompress(payload).to(ref.dtype)
        refs[key] = received[key] = w
        sent_W += np.where(fresh_W, compressor.nbytes(payload), _dense(w))
    new_state = {"ref": refs, "compressor": cstates, "holders": np.unique(sampled_W)}
    return received, sent_W, new_state
