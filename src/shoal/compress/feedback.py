"""Error feedback (memory) around any compressor.

Seide, Fu, Droppo, Li, Yu, Interspeech 2014 ("1-bit SGD", quantization error feedback) and
Karimireddy, Rebjock, Stich, Jaggi, ICML 2019 (EF-SGD): keep what was not sent and add
it to the next message::

    a = x + e;   send C(a);   e <- a - decompress(C(a))

so ``decompress(sent) + e_new == a``; for sparsifiers (top-k, DGC, threshold, random-k without
scaling) the kept values are copies of ``a``, and this holds bit for bit: every step's input
mass is either sent or carried. Biased compressors (top-k, scaled sign, PowerSGD) need it to
converge. Wrapping changes neither the payload nor its decompression: ``nbytes``,
``decompress`` and ``sum_payloads`` are the inner compressor's.

A compressor may offer ``residual(accumulated_D, payload)``, the same difference computed
in place in ``accumulated_D`` (which error feedback allocates per call and owns); the
sparsifiers do, zeroing the sent entries instead of decompressing and subtracting, and so does
PowerSGD (``M - P Q^T`` by one fused product per matrix: equal to the subtraction up to
rounding, 3.5x less time for the 1.66M-parameter CNN).

Error feedback assumes a contractive compressor, ``E||x - C(x)||^2 <= ||x||^2``
(:func:`shoal.compress.is_contractive`; rescaled random-k at ratio 0.5 meets it with equality
for every ``x`` and is counted out: its residual did a random walk); wrapping one that declares
otherwise (QSGD with few levels per bucket, TernGrad, rescaled random-k, the count sketch)
warns, since its residual can grow without bound (a count sketch under error feedback diverged
on workload W).

A residual that would hold NaN or inf (a non-finite input, or an fp16 message past 65504) raises
``FloatingPointError`` instead of carrying it into every later message (``top_k`` sends such an
entry rather than keep it, so it raises only for the ones it did not send). Not in a process
group of several processes: there the others would wait for this one in their next collective;
the NaN reaches the model through the messages, and the runs' pooled checks stop every process
together, as before.

The residual starts at zero. DGC's momentum correction and factor masking, which also touch the
residual, belong to the algorithm (they need the optimizer's momentum).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import torch

from shoal.compress._common import check_flat, init_with_seed
from shoal.compress.base import (
    CONTRACTIVE_EXAMPLES,
    Compressor,
    Payload,
    decompress_sum,
    is_contractive,
    is_homomorphic,
    is_two_round,
)


@dataclass(frozen=True)
class ErrorFeedback:
    """State: ``{"residual": e_D, "inner": the inner compressor's state}``."""

    inner: Compressor

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Compressor):
            raise TypeError(
                f"error_feedback wraps a compressor (init/compress/decompress/nbytes), got "
                f"{type(self.inner).__name__}"
            )
        if is_contractive(self.inner) is False:
            warnings.warn(
                f"error_feedback({self.inner.name}): this compressor is not contractive "
                "(E||x - C(x)||^2 can exceed ||x||^2), so the residual can grow from one "
                "message to the next and training diverge. Send its messages without error "
                f"feedback, or wrap a contractive compressor ({CONTRACTIVE_EXAMPLES}).",
                stacklevel=4,  # the caller of error_feedback(...)
            )

    @property
    def name(self) -> str:
        return f"error_feedback({self.inner.name})"

    @property
    def homomorphic(self) -> bool:
        return is_homomorphic(self.inner)

    @property
    def shared_seed(self) -> bool:
        return bool(getattr(self.inner, "shared_seed", False))

    def init(self, x_D: torch.Tensor, seed: int | None = None) -> dict[str, Any]:
        x_D = check_flat(x_D, self.name)
        return {"residual": torch.zeros_like(x_D), "inner": init_with_seed(self.inner, x_D, seed)}

    def compress(self, x_D: torch.Tensor, state: dict[str, Any]) -> tuple[Payload, dict[str, Any]]:
        x_D = check_flat(x_D, self.name)
        self._check_state(x_D, state)
        accumulated_D = x_D + state["residual"]
        payload, inner_state = self.inner.compress(accumulated_D, state["inner"])
        return payload, {"residual": self._residual(accumulated_D, payload), "inner": inner_state}

    @staticmethod
    def _check_state(x_D: torch.Tensor, state: Any) -> None:
        """The state of this input's stream: a residual of another length broadcast (a length-1
        input made a message of the residual's length) or failed inside torch, and one of
        another dtype changed the message's dtype silently."""
        if not isinstance(state, dict) or "residual" not in state:
            raise ValueError("error_feedback: state must come from error_feedback(c).init(x_D)")
        r = state["residual"]
        if r.shape != x_D.shape or r.dtype != x_D.dtype:
            raise ValueError(
                f"error_feedback: the state's residual is {tuple(r.shape)} {r.dtype}, the input "
                f"{tuple(x_D.shape)} {x_D.dtype}; keep one state per input stream, made by "
                "init(x_D) of that stream"
            )

    def _residual(self, accumulated_D: torch.Tensor, payload: Payload) -> torch.Tensor:
        residual = getattr(self.inner, "residual", None)
        if residual is not None:  # computed in our own buffer (sparsifiers, PowerSGD)
            e_D = residual(accumulated_D, payload)
        else:
            e_D = accumulated_D - self.inner.decompress(payload).to(accumulated_D.dtype)
        # A NaN or inf kept in the residual spoils every later message, or surfaces rounds
        # later (random-k sends that entry when it draws it): stop where it starts. A finite
        # sum proves every entry finite in one reduction (isfinite().all() made
        # error_feedback(top_k) 1.83x slower on 10M entries); only a sum that overflowed is
        # rechecked.
        if (
            not bool(torch.isfinite(e_D.sum()))
            and not bool(torch.isfinite(e_D).all())
            and not _in_a_group()
        ):
            raise FloatingPointError(
                f"{self.name}: the residual holds NaN or inf: the input did (lower the "
                f"learning rate, or check the data){_overflow(self.inner)}; every later "
                "message would carry it"
            )
        return e_D

    # PowerSGD's two-round all-reduce (Vogels et al. 2019, with error feedback as there): the
    # residual is this worker's own approximation error, ``a - P Q_i^T`` with the shared P.

    @property
    def two_round(self) -> bool:
        return is_two_round(self.inner)

    def project(self, x_D: torch.Tensor, state: dict[str, Any]) -> Payload:
        self._check_state(x_D, state)
        inner: Any = self.inner
        return inner.project(x_D + state["residual"], state["inner"])

    def complete(
        self, x_D: torch.Tensor, summed: Payload, state: dict[str, Any]
    ) -> tuple[Payload, dict[str, Any]]:
        inner: Any = self.inner
        accumulated_D = x_D + state["residual"]
        payload, inner_state = inner.complete(accumulated_D, summed, state["inner"])
        return payload, {"residual": self._residual(accumulated_D, payload), "inner": inner_state}

    def with_query(self, state: dict[str, Any], payload: Payload) -> dict[str, Any]:
        inner: Any = self.inner
        return {**state, "inner": inner.with_query(state["inner"], payload)}

    def decompress(self, payload: Payload) -> torch.Tensor:
        return self.inner.decompress(payload)

    def decompress_sum(
        self, payloads: Sequence[Payload], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        return decompress_sum(self.inner, payloads, dtype)

    def nbytes(self, payload: Payload) -> int:
        return self.inner.nbytes(payload)

    def sum_payloads(self, payloads: Sequence[Payload]) -> Payload:
        if not self.homomorphic:
            raise TypeError(f"{self.inner.name} messages cannot be summed compressed")
        inner: Any = self.inner
        return inner.sum_payloads(payloads)


def _in_a_group() -> bool:
    """Whether this process is one of several of a ``torch.distributed`` group (see the module
    docstring: one of them alone must not stop)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _overflow(inner: Compressor) -> str:
    """The other cause, for a cast: a finite input past the message dtype's range."""
    dtype = getattr(inner, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        top = torch.finfo(dtype).max
        return f", or the message overflowed ({inner.name} is finite up to {top:.6g})"
    return ""


def error_feedback(compressor: Compressor) -> ErrorFeedback:
    """Wrap ``compressor`` so that what it drops is carried into the next message."""
    return ErrorFeedback(compressor)


def has_feedback(compressor: Compressor) -> bool:
    """Whether ``compressor`` is, or wraps (inside ``layerwise`` too), an ``error_feedback``."""
    if isinstance(compressor, ErrorFeedback):
        return True
    inner = getattr(compressor, "inner", None)
    return inner is not None and has_feedback(inner)


def without_feedback(compressor: Compressor) -> Compressor:
    """``compressor`` with its error-feedback wrappers removed, inside ``layerwise`` too.

    For a message whose sender already keeps its own memory of what the receiver has (SCAFFOLD's
    ``delta_c`` under a lossy uplink, EF21-style): a residual on top of it would carry the
    unsent part twice.
    """
    if isinstance(compressor, ErrorFeedback):
        return without_feedback(compressor.inner)
    if is_dataclass(compressor) and any(f.name == "inner" for f in fields(compressor)):
        wrapper: Any = compressor
        return replace(wrapper, inner=without_feedback(wrapper.inner))
    return compressor
