"""Per-layer compression: one compressor per parameter block, some blocks sent dense.

The flat message ``x_D`` is cut into the blocks of ``shapes`` (``ParamSpec.shapes``, in
order). Blocks for which ``skip(shape)`` holds (by default 1-D tensors: biases and norm
scales, as DGC's ``train.py`` and PowerSGD do) are concatenated into one dense ``dense``
tensor; every other block ``i`` is compressed on its own with its own state, its tensors
stored under ``"<i>.<key>"``. Per-tensor scales (TernGrad per layer, EF-signSGD per tensor,
top-k per layer as in DGC) come from this wrapper.

Seeds: ``init(x_D, seed=s)`` gives block ``i`` the seed ``mix(s, i)`` (when the compressor
takes seeds), so blocks of equal size do not draw the same random mask; without ``seed=`` the
compressor's own ``seed`` field is the base.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from shoal.compress._common import as_shapes, check_dense, check_flat, init_with_seed, mix
from shoal.compress.base import (
    Compressor,
    Payload,
    add_all,
    check_same,
    configured_seed,
    decompress_sum,
    is_contractive,
    is_homomorphic,
)
from shoal.compress.wire import payload_nbytes


def skip_1d(shape: torch.Size) -> bool:
    """Send 0-D and 1-D blocks (biases, norm scales) dense."""
    return len(shape) <= 1


@dataclass(frozen=True)
class Layerwise:
    """State: ``{"<i>": block i's state}`` for the compressed blocks."""

    inner: Compressor
    shapes: tuple[torch.Size, ...]
    skip: Callable[[torch.Size], bool] = skip_1d

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Compressor):
            raise TypeError(f"layerwise wraps a compressor, got {type(self.inner).__name__}")
        object.__setattr__(self, "shapes", as_shapes(self.shapes, "layerwise"))
        if not callable(self.skip):
            raise TypeError("layerwise: skip must be a function shape -> bool")

    @property
    def name(self) -> str:
        return f"layerwise({self.inner.name})"

    @property
    def homomorphic(self) -> bool:
        return is_homomorphic(self.inner)

    @property
    def contractive(self) -> bool | None:
        return is_contractive(self.inner)

    @property
    def shared_seed(self) -> bool:
        return bool(getattr(self.inner, "shared_seed", False))

    @cached_property
    def _layout(self) -> tuple[tuple[int, int, bool], ...]:
        """``(offset, numel, skipped)`` per block."""
        out, offset = [], 0
        for shape in self.shapes:
            numel = math.prod(shape)
            out.append((offset, numel, bool(self.skip(shape))))
            offset += numel
        return tuple(out)

    def _check(self, x_D: torch.Tensor) -> torch.Tensor:
        x_D = check_flat(x_D, self.name)
        size = sum(n for _, n, _ in self._layout)
        if x_D.numel() != size:
            raise ValueError(f"layerwise: x_D has {x_D.numel()} entries, shapes describe {size}")
        return x_D

    def init(self, x_D: torch.Tensor, seed: int | None = None) -> dict[str, Any]:
        x_D = self._check(x_D)
        # The innermost compressor's seed, through error_feedback too: equal-sized blocks must
        # not share a mask (layerwise(error_feedback(random_k)) gave them one).
        base = seed if seed is not None else configured_seed(self.inner)
        state = {}
        for i, (offset, numel, skipped) in enumerate(self._layout):
            if not skipped:
                block_seed = None if base is None else mix(int(base), i)
                state[str(i)] = init_with_seed(self.inner, x_D[offset : offset + numel], block_seed)
        return state

    def compress(self, x_D: torch.Tensor, state: dict[str, Any]) -> tuple[Payload, dict[str, Any]]:
        x_D = self._check(x_D)
        blocks = {str(i) for i, (_, _, skipped) in enumerate(self._layout) if not skipped}
        if not isinstance(state, dict) or state.keys() != blocks:
            raise ValueError(f"{self.name}: the state must come from init(x_D)")
        payload: Payload = {}
        new_state: dict[str, Any] = {}
        dense = []
        for i, (offset, numel, skipped) in enumerate(self._layout):
            block_D = x_D[offset : offset + numel]
            if skipped:
                dense.append(block_D)
                continue
            block_payload, new_state[str(i)] = self.inner.compress(block_D, state[str(i)])
            payload.update({f"{i}.{k}": v for k, v in block_payload.items()})
        if dense:
            payload["dense"] = torch.cat(dense)
        return payload, new_state

    def _split(self, payload: Payload) -> dict[str, Payload]:
        blocks: dict[str, Payload] = {}
        for key, t in payload.items():
            if key != "dense":
                block, _, sub = key.partition(".")
                blocks.setdefault(block, {})[sub] = t
        return blocks

    def decompress(self, payload: Payload) -> torch.Tensor:
        return self.decompress_sum([payload])

    def decompress_sum(
        self, payloads: Sequence[Payload], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Block by block with the inner compressor's :func:`decompress_sum` (one payload:
        its decompression; ``torch.cat`` promotes, e.g. a float32 dense part with float64
        blocks)."""
        check_dense(payloads, sum(n for _, n, skipped in self._layout if skipped), "layerwise")
        split = [self._split(p) for p in payloads]
        parts, dense_at = [], 0
        for i, (_, numel, skipped) in enumerate(self._layout):
            if skipped:
                dense = [p["dense"][dense_at : dense_at + numel] for p in payloads]
                parts.append(add_all([d if dtype is None else d.to(dtype) for d in dense]))
                dense_at += numel
            else:
                parts.append(decompress_sum(self.inner, [s[str(i)] for s in split], dtype))
        return torch.cat(parts)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)

    def sum_payloads(self, payloads: Sequence[Payload]) -> Payload:
        """Block by block with the inner compressor's sum (its exactness), dense exactly."""
        if not self.homomorphic:
            raise TypeError(f"{self.inner.name} messages cannot be summed compressed")
        inner: Any = self.inner
        check_same(payloads, (), "layerwise")
        split = [self._split(p) for p in payloads]
        out: Payload = {}
        for block in split[0]:
            summed = inner.sum_payloads([s[block] for s in split])
            out.update({f"{block}.{k}": v for k, v in summed.items()})
        if "dense" in payloads[0]:
            out["dense"] = add_all([p["dense"] for p in payloads])
        return out


def layerwise(
    compressor: Compressor,
    shapes: Sequence[Sequence[int]],
    skip: Callable[[torch.Size], bool] = skip_1d,
) -> Layerwise:
    """Compress each block of ``shapes`` on its own; blocks with ``skip(shape)`` go dense."""
    return Layerwise(compressor, as_shapes(shapes, "layerwise"), skip)
