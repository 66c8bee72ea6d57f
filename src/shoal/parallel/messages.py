"""Small helpers on messages that both communicators share.

Shape suffixes: ``W`` local workers, ``D`` flat parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shoal.compress.base import Payload, add_all
from shoal.compress.wire import payload_nbytes


def dense_nbytes(x_D: torch.Tensor) -> int:
    """Wire bytes of one dense row sent as it is (an identity payload ``{"values": x_D}``)."""
    return payload_nbytes({"values": x_D})


def check_rows(x_WD: torch.Tensor, num_local: int, who: str) -> None:
    """``x_WD`` must be a ``[W, D]`` tensor with one row per local worker."""
    if not isinstance(x_WD, torch.Tensor) or x_WD.ndim != 2:
        shape = tuple(x_WD.shape) if isinstance(x_WD, torch.Tensor) else type(x_WD).__name__
        raise ValueError(f"{who}: expected a [W, D] tensor, got {shape}")
    if x_WD.shape[0] != num_local:
        raise ValueError(
            f"{who}: expected one row per local worker ({num_local}), got {x_WD.shape[0]}"
        )


def sum_floats(payloads: Sequence[Payload]) -> Payload:
    """Add the floating-point entries left to right; the other entries (indices regenerated
    from a shared seed, sizes) are equal in summable payloads and are taken from the first."""
    first = payloads[0]
    return {
        k: add_all([p[k] for p in payloads]) if v.is_floating_point() else v
        for k, v in first.items()
    }
