"""L-GreCo over the three families of the paper: top-k density, QSGD levels, PowerSGD rank."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from shoal.checks import check_count
from shoal.compress._common import as_shapes
from shoal.compress.lgreco.compressor import LGreCo
from shoal.compress.low_rank import PowerSGD
from shoal.compress.quantize import QSGD
from shoal.compress.sparsify import TopK


def _svd_tail(block_D: torch.Tensor, shape: torch.Size, ranks: Sequence[Any]) -> list[float]:
    """Best rank-r error of the block as a matrix [n, rest], for every r at once (NaN for a
    block with a non-finite entry, as the other families' errors are; the SVD would fail)."""
    if not block_D.numel():
        return [0.0 for _ in ranks]
    if not bool(block_D.isfinite().all()):
        return [math.nan for _ in ranks]
    sigma = torch.linalg.svdvals(block_D.reshape(shape[0], -1).double())
    # Relative to the largest singular value: squares of float64 values above ~1e154 overflow.
    top = float(sigma[0]) if len(sigma) and float(sigma[0]) > 0 else 1.0
    tail = (sigma / top).square().flip(0).cumsum(0).flip(0)  # tail[r] = sum_{i >= r} sigma_i^2
    return [float(tail[r].sqrt()) * top if r < len(tail) else 0.0 for r in ranks]


def lgreco_top_k(
    shapes: Sequence[Sequence[int]],
    ratio: float = 0.01,
    choices: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
    period: int = 100,
    alpha: float = 1.0,
    buckets: int = 10_000,
) -> LGreCo:
    """L-GreCo over top-k densities; the budget is the error of top-k at ``ratio`` everywhere.

    Top-k is biased: wrap it in :func:`shoal.compress.error_feedback`.
    """
    return LGreCo(
        as_shapes(shapes, "lgreco"),
        lambda r, _: TopK(ratio=r),
        tuple(choices),
        ratio,
        period,
        alpha,
        buckets,
        family="top_k",
    )


def lgreco_qsgd(
    shapes: Sequence[Sequence[int]],
    levels: int = 7,
    choices: tuple[int, ...] = (1, 7, 127, 32767),
    bucket_size: int = 512,
    period: int = 100,
    alpha: float = 1.0,
    buckets: int = 10_000,
    seed: int = 0,
) -> LGreCo:
    """L-GreCo over QSGD's levels s (2, 4, 8 and 16 bits per entry by default: the largest s
    of each packed width); the budget is the error of ``levels`` everywhere."""
    return LGreCo(
        as_shapes(shapes, "lgreco"),
        lambda s, _: QSGD(s, bucket_size),
        tuple(choices),
        levels,
        period,
        alpha,
        buckets,
        family="qsgd",
        seed=seed,
    )


def lgreco_powersgd(
    shapes: Sequence[Sequence[int]],
    rank: int = 4,
    choices: tuple[int, ...] = (),
    period: int = 100,
    alpha: float = 1.0,
    buckets: int = 10_000,
    seed: int = 0,
) -> LGreCo:
    """L-GreCo over PowerSGD ranks; ``choices`` default to the reference's
    ``[rank / 2, 2 rank]``. PowerSGD is biased: wrap it in :func:`error_feedback`."""
    check_count(rank, "lgreco: rank")
    ranks = tuple(choices) or tuple(range(max(1, rank // 2), 2 * rank + 1))
    return LGreCo(
        as_shapes(shapes, "lgreco"),
        # min_compression_rate=0: every matrix is factored; the DP decides what a rank is worth.
        lambda r, s: PowerSGD((s,), r, min_compression_rate=0.0),
        ranks,
        rank,
        period,
        alpha,
        buckets,
        error_fn=_svd_tail,
        family="powersgd",
        seed=seed,
    )
