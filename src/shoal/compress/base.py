"""The Compressor protocol and the identity compressor.

``compress(x_D, state) -> (payload, state)``, ``decompress(payload) -> x_D`` and
``nbytes(payload) -> int``, the exact number of bytes the payload occupies on the wire: the
tensors *and* the framing of :mod:`shoal.compress.wire`, so ``nbytes(p) == len(serialize(p))``.
The runtimes charge ``nbytes`` of what was really produced, never a nominal model size.

A payload is self-describing given the compressor's configuration: ``decompress`` needs no
worker state (lengths, seeds and step counters that the receiver needs travel in the payload).

Randomness is either *private* to a worker (stochastic rounding in QSGD, TernGrad and natural
compression; DGC's sample offset): :func:`init_for_worker` gives each worker its own seed, so
workers round independently; or *shared* (random-k's indices, PowerSGD's starting query):
those compressors declare ``shared_seed = True`` and every worker keeps the configured seed, so
their messages still add up in compressed form.

Compressors whose payloads can be added without decompressing (Jang, Na, Yoon 2017,
"homomorphic parameter compression") also satisfy :class:`Homomorphic`: ``homomorphic = True``
and ``sum_payloads(payloads) -> payload``, the payload of the summed *input*: the tables are
linear in it. ``decompress(sum_payloads(ps))`` then equals ``sum(decompress(p) for p in ps)``
(each class says whether bit for bit or up to rounding) for every such compressor but the
count sketch of depth > 1, whose median decoding is not linear: the summed sketch decodes to
one estimate of the sum, not to the sum of the estimates (:mod:`shoal.compress.sketch`).

A receiver that needs only the *sum* of many decompressed messages (a data-parallel all-gather
inbox) calls :func:`decompress_sum`; compressors that can form it without one dense vector per
message define ``decompress_sum(payloads, dtype)`` (sparsifiers scatter-add every message into
one buffer, bit for bit the sum; PowerSGD multiplies the stacked factors once, equal up to
rounding), and the others fall back to decompressing each.

Compressors also say whether they are *contractive*, ``E||x - C(x)||^2 <= ||x||^2`` for every
``x`` (:func:`is_contractive`; a compressor that meets it with equality for every ``x``, as
rescaled random-k at ratio 0.5 does, is not): the premise of error feedback's analysis (Stich,
Cordonnier, Jaggi 2018; Karimireddy et al. 2019 ask for a strict ``(1 - delta)`` factor), under
which the residual never outgrows what it accumulated. Sparsifiers, casts, scaled sign, natural
compression and PowerSGD's projection are; the unbiased quantizers with a large variance, the
rescaled random-k and the count sketch's estimate are not, and :func:`error_feedback` warns.

Shape suffixes: ``D`` flat parameters, ``K`` kept entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from shoal.compress._common import check_flat, init_with_seed, mix
from shoal.compress.wire import payload_nbytes

Payload = dict[str, torch.Tensor]


@runtime_checkable
class Compressor(Protocol):
    """A message codec: ``init``, ``compress``, ``decompress`` and exact ``nbytes``."""

    @property
    def name(self) -> str: ...

    def init(self, x_D: torch.Tensor) -> Any: ...

    def compress(self, x_D: torch.Tensor, state: Any) -> tuple[Payload, Any]: ...

    def decompress(self, payload: Payload) -> torch.Tensor: ...

    def nbytes(self, payload: Payload) -> int: ...


@runtime_checkable
class Homomorphic(Compressor, Protocol):
    """A compressor whose payloads can be summed in compressed form (e.g. in an all-reduce)."""

    @property
    def homomorphic(self) -> bool: ...

    def sum_payloads(self, payloads: Sequence[Payload]) -> Payload: ...


def is_homomorphic(compressor: Any) -> bool:
    """Whether ``compressor`` declares ``homomorphic = True`` (wrappers forward the flag)."""
    return bool(getattr(compressor, "homomorphic", False))


def is_two_round(compressor: Any) -> bool:
    """Whether ``compressor`` offers an all-reduce in two rounds (``two_round = True``:
    PowerSGD's ``project`` / ``complete`` / ``with_query``, Vogels et al. 2019; wrappers
    forward it)."""
    return bool(getattr(compressor, "two_round", False))


CONTRACTIVE_EXAMPLES = "top_k, scaled_sign, powersgd, natural_compression, ..."
"""What a warning about a compressor that is not contractive suggests instead."""


def is_contractive(compressor: Any) -> bool | None:
    """Whether ``compressor`` declares ``E||x - C(x)||^2 <= ||x||^2`` for every ``x``
    (``contractive``; wrappers forward it); ``None`` when it does not say."""
    flag = getattr(compressor, "contractive", None)
    return None if flag is None else bool(flag)


def init_for_worker(
    compressor: Compressor, x_D: torch.Tensor, worker: int, *stream: int, private: bool = False
) -> Any:
    """``compressor.init`` for one worker (a client id, a rank).

    Private randomness gets the seed ``mix(seed, worker, *stream)``, with ``seed`` the configured
    one (of the innermost compressor of a wrapper) and ``stream`` telling apart a worker's
    messages (SCAFFOLD sends two); with the state's call counter, a worker's stream depends on
    (seed, worker, use count), so two clients do not round alike. Compressors with
    ``shared_seed = True`` keep the configured seed (see the module docstring), unless
    ``private``: for messages decoded one by one, never summed compressed.
    """
    if getattr(compressor, "shared_seed", False) and not private:
        return compressor.init(x_D)
    return init_with_seed(compressor, x_D, mix(configured_seed(compressor) or 0, worker, *stream))


def configured_seed(compressor: Compressor) -> int | None:
    """The ``seed`` of the innermost compressor of a wrapper (``None`` when it has none)."""
    inner: Any = compressor
    while hasattr(inner, "inner"):
        inner = inner.inner
    seed = getattr(inner, "seed", None)
    return None if seed is None else int(seed)


def tensor_bytes(payload: Payload) -> int:
    """Bytes of the raw tensors of a payload (values, indices, scales), no framing."""
    return sum(t.numel() * t.element_size() for t in payload.values())


def add_all(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Left-to-right sum ``((t0 + t1) + t2) + ...``.

    A fixed order, so a test can reproduce the result bit for bit by adding decompressed
    messages in the same order.
    """
    acc = tensors[0].clone()
    for t in tensors[1:]:
        acc += t
    return acc


def decompress_sum(
    compressor: Compressor, payloads: Sequence[Payload], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``decompress(p0).to(dtype) + decompress(p1).to(dtype) + ...``, left to right, by the
    compressor's own ``decompress_sum`` where it has one (the module docstring)."""
    if len(payloads) == 0:
        raise ValueError(f"decompress_sum({compressor.name}) needs at least one payload")
    own = getattr(compressor, "decompress_sum", None)
    if own is not None:
        return own(payloads, dtype)
    parts = [compressor.decompress(p) for p in payloads]
    return add_all([t if dtype is None else t.to(dtype) for t in parts])


def check_same(payloads: Sequence[Payload], keys: Sequence[str], who: str) -> None:
    """Raise unless every payload has the same entries of the same shapes, and the same
    tensors under ``keys`` (e.g. seed, step, size). Another shape (a sketch of another width,
    random-k of another ratio) was a bare torch error from the addition."""
    if len(payloads) == 0:
        raise ValueError(f"{who}.sum_payloads needs at least one payload")
    first = payloads[0]
    for p in payloads[1:]:
        if p.keys() != first.keys():
            raise ValueError(f"{who}.sum_payloads: payloads have different entries")
        for key, t in p.items():
            if t.shape != first[key].shape:
                raise ValueError(
                    f"{who}.sum_payloads: payloads differ in the shape of {key!r} "
                    f"({tuple(first[key].shape)} and {tuple(t.shape)}); only messages of one "
                    "compressor's settings can be summed compressed"
                )
        for key in keys:
            if not torch.equal(p[key], first[key]):
                raise ValueError(
                    f"{who}.sum_payloads: payloads differ in {key!r}; only messages made with "
                    "the same shared seed, step and length can be summed compressed"
                )


@dataclass(frozen=True)
class Identity:
    """Send the tensor as it is (4 bytes per float32 entry plus the framing)."""

    name: str = "identity"
    homomorphic: ClassVar[bool] = True
    contractive: ClassVar[bool] = True

    def init(self, x_D: torch.Tensor) -> None:
        return None

    def compress(self, x_D: torch.Tensor, state: None) -> tuple[Payload, None]:
        return {"values": check_flat(x_D, self.name)}, state

    def decompress(self, payload: Payload) -> torch.Tensor:
        return payload["values"]

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)

    def sum_payloads(self, payloads: Sequence[Payload]) -> Payload:
        """Exact: the same additions as summing the decompressed vectors."""
        check_same(payloads, (), self.name)  # and of one length
        return {"values": add_all([p["values"] for p in payloads])}


def identity() -> Identity:
    """The no-op compressor."""
    return Identity()
