"""Shared checks and kernels for the aggregation rules.

Shape suffixes: ``N`` inbox rows, ``D`` flat parameters.
"""

from __future__ import annotations

import torch

from shoal.aggregate.base import NonFiniteInbox, TooFewInputs
from shoal.checks import check_count

# Columns of the inbox converted to float64 at a time when building a Gram matrix, so that a
# float32 inbox of a large model is never copied whole into float64.
_GRAM_CHUNK_ELEMENTS = 1 << 22


def as_matrix(
    inbox_ND: torch.Tensor, weights_N: torch.Tensor, rule: str
) -> tuple[torch.Tensor, torch.Size]:
    """Flatten the inbox to ``[N, D]`` after checking it; also returns the shape of one row.

    The runtime aggregates every message key on its own, so a row may be ``[D]`` or ``[1]`` or
    any shape; every rule here works on the flattened rows and reshapes its output back.
    """
    if not isinstance(inbox_ND, torch.Tensor) or inbox_ND.dim() < 1:
        raise TypeError(f"{rule}: the inbox must be a tensor with a leading row axis")
    if inbox_ND.shape[0] == 0:
        raise ValueError(f"{rule}: the inbox is empty; aggregate at least one message")
    if not isinstance(weights_N, torch.Tensor):  # a list failed in .dim() (AttributeError)
        raise TypeError(f"{rule}: weights must be a tensor, got {type(weights_N).__name__}")
    if weights_N.dim() != 1 or weights_N.shape[0] != inbox_ND.shape[0]:
        raise ValueError(
            f"{rule}: inbox has {inbox_ND.shape[0]} rows but weights have shape "
            f"{tuple(weights_N.shape)}; pass one weight per row"
        )
    if not inbox_ND.is_floating_point():
        raise TypeError(f"{rule}: the inbox must be a floating-point tensor, got {inbox_ND.dtype}")
    if not bool(torch.isfinite(inbox_ND).all()):
        raise NonFiniteInbox(
            f"{rule}: the inbox holds NaN or inf; drop those rows (or torch.nan_to_num them) "
            "before aggregating"
        )
    return inbox_ND.reshape(inbox_ND.shape[0], -1), inbox_ND.shape[1:]


def check_f(f: int, rule: str) -> None:
    """``f`` (the number of Byzantine inputs tolerated) must be a non-negative integer (a
    numpy integer too, as a count computed with numpy is)."""
    check_count(f, f"{rule}: f", least=0)


def require(cond: bool, rule: str, need: str, n: int, f: int) -> None:
    """Raise the house error for an impossible ``(n, f)``: ``krum needs n >= 2f+3, ...``."""
    if not cond:
        raise TooFewInputs(f"{rule} needs {need}, got n={n}, f={f}; send more inputs or lower f")


def positive_weights(weights_N: torch.Tensor, rule: str) -> torch.Tensor:
    """Weights a rule actually uses: finite, non-negative, with a positive sum (an inf weight
    made the normalised weights inf / inf = NaN)."""
    total = weights_N.sum()
    if bool((weights_N < 0).any()) or not bool(total > 0) or not bool(torch.isfinite(total)):
        raise ValueError(f"{rule}: weights must be finite and non-negative with a positive sum")
    return weights_N


def gram(x_ND: torch.Tensor) -> torch.Tensor:
    """``x x^T`` in float64, accumulated over column chunks; exactly symmetric."""
    n, d = x_ND.shape
    g = torch.zeros(n, n, dtype=torch.float64, device=x_ND.device)
    for cols in _column_chunks(n, d):
        block = x_ND[:, cols].to(torch.float64)
        g += block @ block.T
    # Each entry is a dot product summed in some order; averaging with the transpose makes
    # d(i, j) == d(j, i) bit for bit, which the Krum tie-break below relies on.
    return (g + g.T) / 2


def row_norms(x_ND: torch.Tensor, z_D: torch.Tensor) -> torch.Tensor:
    """``||x_i - z||`` for every row, ``[N]``: in the rows' dtype, or in float64 where a
    distance does not fit that dtype.

    A float32 norm sums its squares in float32: one finite Byzantine row of 1e19s in 1000
    coordinates overflows it to inf although the distance (3e20) is a float32. Only then are
    the distances summed again in float64, over column chunks as in ``gram`` so that the
    float64 copy stays small. A distance beyond the dtype's range (a row of 3e38s, or a start
    point it pulled that far) is kept in float64, not rounded to inf: ``tau / inf`` or
    ``alpha / inf`` was 0, which dropped the row from centered clipping and made every
    Weiszfeld weight 0 and the geometric median 0/0 = NaN. Callers handle a float64 result.
    """
    fast = (x_ND - z_D).norm(dim=1)
    if bool(torch.isfinite(fast).all()):
        return fast
    n, d = x_ND.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x_ND.device)
    for cols in _column_chunks(n, d):
        sq += (x_ND[:, cols].to(torch.float64) - z_D[cols].to(torch.float64)).square().sum(1)
    wide = sq.sqrt()
    fits = bool((wide <= torch.finfo(x_ND.dtype).max).all())
    return wide.to(x_ND.dtype) if fits else wide


def mean_scaled_diffs(scale_N: torch.Tensor, x_ND: torch.Tensor, z_D: torch.Tensor) -> torch.Tensor:
    """``mean_i scale_i (x_i - z)`` in ``x``'s dtype; summed in float64 (over column chunks)
    when ``scale`` is float64, i.e. when :func:`row_norms` returned distances beyond ``x``'s
    range: a clipping factor ``tau / 1e39`` is no normal float32, so it is applied there."""
    if scale_N.dtype == x_ND.dtype:
        return (scale_N[:, None] * (x_ND - z_D)).mean(dim=0)
    n, d = x_ND.shape
    out = torch.empty(d, dtype=x_ND.dtype, device=x_ND.device)
    for cols in _column_chunks(n, d):
        diff = x_ND[:, cols].to(torch.float64) - z_D[cols].to(torch.float64)
        out[cols] = (scale_N[:, None] * diff).mean(dim=0).to(x_ND.dtype)
    return out


def _column_chunks(n: int, d: int) -> list[slice]:
    """Column slices of an ``[n, d]`` matrix whose float64 copy stays small."""
    step = max(1, _GRAM_CHUNK_ELEMENTS // max(n, 1))
    return [slice(start, start + step) for start in range(0, d, step)]


def sq_distances(x_ND: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``[N, N]`` in float64 by the Gram identity.

    ``||a||^2 + ||b||^2 - 2 a.b`` clamped at 0 (rounding can make it slightly negative), with
    an exact zero diagonal. The identity cancels: its error is about ``1e-16 ||x||^2`` in
    float64, so distances below about ``1e-8 ||x||`` are rounding (float64 rows
    ``10 + 1e-8 N(0, 1)`` made Krum pick by it). Model updates are spread far wider than that;
    centring the rows first would remove the limit at the cost of a copy of the inbox.
    """
    g = gram(x_ND)
    sq = g.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    d.fill_diagonal_(0)
    return d


def coordinate_median(x_ND: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median; for even ``N`` the mean of the two middle values.

    ``torch.median`` returns the lower middle value, which is not symmetric under negation;
    the epfml ``CM`` averages the two, as here. ``kthvalue`` is a selection, O(N D).
    """
    n = x_ND.shape[0]
    lo = torch.kthvalue(x_ND, (n + 1) // 2, dim=0).values
    if n % 2 == 1:
        return lo
    hi = torch.kthvalue(x_ND, n // 2 + 1, dim=0).values
    mid = (lo + hi) / 2
    # lo + hi overflows for two float32 values of 3e38; halving first cannot, but would round
    # subnormal middles differently, so it is used only where the plain midpoint is inf.
    return torch.where(mid.isinf(), lo / 2 + hi / 2, mid)


def canonical_order(
    x_ND: torch.Tensor, weights_N: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows and their weights sorted by a fixed projection of the rows, ties by a second.

    Rules built on matrix products (a Gram matrix, eigenvectors) round differently when the
    same messages arrive in another order (a product's tiling depends on a row's position),
    and a near-tie in a selection (Krum's scores after mixing) can then flip. Sorting first
    makes such a rule exactly invariant to the order of its inbox. Distinct integer-valued
    rows (quantized or sign-compressed updates) can tie on the first projection, whose
    weights are evenly spaced; the second's, ``frac(i * golden ratio)``, make a tie of two
    distinct rows on both practically impossible.
    """
    order = canonical_permutation(x_ND)
    # Weights may stay on the CPU under a CUDA inbox; a CPU tensor takes no CUDA index.
    return x_ND[order], weights_N[order.to(weights_N.device)]


def canonical_permutation(x_ND: torch.Tensor) -> torch.Tensor:
    """The row indices in :func:`canonical_order`'s order."""
    d = x_ND.shape[1]
    v_D = torch.linspace(1.0, 2.0, d, dtype=x_ND.dtype, device=x_ND.device)
    u_D = (torch.arange(d, dtype=torch.float64) * 0.6180339887498949 % 1.0).to(x_ND)
    order = torch.argsort(x_ND @ u_D, stable=True)
    return order[torch.argsort((x_ND @ v_D)[order], stable=True)]
