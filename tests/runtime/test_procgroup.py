"""What a worker reports when a peer dies: a broken collective becomes one line."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from shoal.runtime.procgroup import PeerFailure, as_peer_failure, init_from_env
from shoal.runtime.spawn import spawn_local

# gloo's text for a peer that died mid-collective, as torch 2.13 raises it.
GLOO_RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
    "[127.0.0.1]:14997: Connection reset by peer. This is typically caused by a remote worker "
    "hanging or bugs in the application. Check the logs of the other workers."
)


def test_a_gloo_transport_error_is_one_line_naming_what_broke():
    lost = as_peer_failure(RuntimeError(GLOO_RESET), rank=0)
    assert isinstance(lost, PeerFailure) and isinstance(lost, ConnectionError)
    text = str(lost)
    assert text.startswith("rank 0: communication failed (Read error [127.0.0.1]:14997: ")
    assert "Connection reset by peer" in text and "died" in text
    assert "pair.cc" not in text and "typically" not in text and "\n" not in text


def test_torch_distributed_errors_are_peer_failures_and_other_errors_are_not():
    assert isinstance(as_peer_failure(dist.DistNetworkError("socket closed"), 3), PeerFailure)
    assert "rank 3" in str(as_peer_failure(dist.DistBackendError("NCCL watchdog timeout"), 3))
    # A bug of ours is not a dead peer, and must keep its traceback.
    assert as_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 0) is None
    assert as_peer_failure(RuntimeError("[model.py:3] not gloo's"), 0) is None


def _outlive_a_peer() -> tuple[str, str | None]:
    ctx = init_from_env(timeout_s=30)
    if ctx.rank == 1:
        return "left", None  # spawn's worker destroys rank 1's group as it returns
    time.sleep(1.0)
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError as e:
        lost = as_peer_failure(e, ctx.rank)
        return str(e), None if lost is None else str(lost)
    return "the collective succeeded without its peer", None


def test_a_real_collective_without_its_peer_becomes_a_peer_failure():
    (raw, lost), _ = spawn_local(_outlive_a_peer, 2, timeout_s=90)
    assert lost is not None, raw
    assert lost.startswith("rank 0: communication failed ("), lost
