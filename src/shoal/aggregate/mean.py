"""Weighted mean, the FedAvg aggregation rule (McMahan et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mean:
    """``sum_i w_i x_i / sum_i w_i``. Linear, so the runtime streams it chunk by chunk."""

    linear: bool = True

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        if not isinstance(weights_N, torch.Tensor):  # a list: AttributeError on .shape
            raise TypeError(f"mean: weights must be a tensor, got {type(weights_N).__name__}")
        if weights_N.dim() != 1 or inbox_ND.shape[0] != weights_N.shape[0]:  # 2-D: in matmul
            raise ValueError(
                f"mean: inbox has {inbox_ND.shape[0]} rows but weights have shape "
                f"{tuple(weights_N.shape)}; pass one weight per row"
            )
        if inbox_ND.shape[0] == 0:
            raise ValueError("mean: the inbox is empty; aggregate at least one message")
        total = weights_N.sum()
        # An inf weight gave inf / inf = NaN; a negative one an extrapolation, not a mean
        # (the robust rules refuse it too).
        if bool((weights_N < 0).any()) or not total > 0 or not torch.isfinite(total):
            raise ValueError(
                "aggregation weights must be finite and non-negative with a positive sum"
            )
        w = weights_N.to(inbox_ND.device, inbox_ND.dtype)  # CPU weights under a CUDA inbox
        return (w @ inbox_ND.reshape(inbox_ND.shape[0], -1)).reshape(inbox_ND.shape[1:]) / total


def mean() -> Mean:
    """The weighted mean aggregator."""
    return Mean()
