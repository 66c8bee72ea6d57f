"""Half-precision casts: fp16 and bf16 messages.

The cast analogue of PyTorch DDP's ``fp16_compress_hook`` / ``bf16_compress_hook``
(``torch.distributed.algorithms.ddp_comm_hooks.default_hooks``): 2 bytes per entry instead of 4.
Rounding is to nearest (deterministic, so biased by at most half an ulp). fp16 overflows to
``inf`` above 65504; bf16 keeps float32's range with 8 bits of mantissa.

Deviation: DDP's hook divides by the world size *before* the cast to avoid overflow in the sum;
a compressor has no world size, so scale before compressing if the aggregate may overflow.
Payloads are not declared homomorphic: summing in half precision loses the bits the cast kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from shoal.compress._common import check_flat
from shoal.compress.base import Payload
from shoal.compress.wire import DTYPE_CODES, payload_nbytes


@dataclass(frozen=True)
class Cast:
    """Send ``x_D.to(dtype)``; decompress to ``output_dtype`` (Shoal's parameters are float32)."""

    dtype: torch.dtype
    output_dtype: torch.dtype = torch.float32
    contractive: ClassVar[bool] = True  # relative rounding error < 2^-8 (finite range)

    def __post_init__(self) -> None:
        for what, dt in (("dtype", self.dtype), ("output_dtype", self.output_dtype)):
            if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
                raise ValueError(f"cast: {what} must be a floating torch.dtype, got {dt!r}")
        if self.dtype not in DTYPE_CODES:  # float8 compressed, then failed in nbytes
            wired = ", ".join(
                str(d).removeprefix("torch.") for d in DTYPE_CODES if d.is_floating_point
            )
            raise ValueError(f"cast: {self.dtype} has no wire code; messages can be {wired}")

    @property
    def name(self) -> str:
        short = {torch.float16: "fp16", torch.bfloat16: "bf16"}
        return short.get(self.dtype, str(self.dtype).removeprefix("torch."))

    def init(self, x_D: torch.Tensor) -> None:
        return None

    def compress(self, x_D: torch.Tensor, state: None) -> tuple[Payload, None]:
        x_D = check_flat(x_D, self.name)
        return {"values": x_D.to(self.dtype)}, state

    def decompress(self, payload: Payload) -> torch.Tensor:
        return payload["values"].to(self.output_dtype)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)


def fp16() -> Cast:
    """IEEE half precision (5 exponent bits, 10 mantissa bits)."""
    return Cast(torch.float16)


def bf16() -> Cast:
    """bfloat16 (8 exponent bits, 7 mantissa bits)."""
    return Cast(torch.bfloat16)
