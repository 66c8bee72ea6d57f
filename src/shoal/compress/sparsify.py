"""Sparsifiers: top-k, random-k, a magnitude threshold, and DGC's sampled top-k.

- ``top_k``: keep the k entries of largest magnitude (Aji & Heafield 2017; Stich, Cordonnier,
  Jaggi 2018, "Sparsified SGD with memory"), exactly: ``torch.topk`` on ``|x|``, or on a large
  CPU vector :func:`top_k_indices`' candidate filter first (same set, ~5x faster).
- ``random_k``: keep k entries chosen uniformly without replacement (Stich et al. 2018,
  Wangni et al. 2018). Indices never travel: they are regenerated from a seed and a per-call
  step counter, both in the payload. Two flavours: ``unbiased=False`` sends ``x_i`` (biased,
  ``E = (k/d) x``, the contraction used with error feedback); ``unbiased=True`` sends
  ``(d/k) x_i`` so that ``E[decompress] = x`` with variance ``(d/k - 1) x_i**2`` per entry
  (in the input's dtype: in float16 a scaled entry above 65504 is sent as inf).
  Workers that share the seed draw the same indices in a round, so their messages add up in
  compressed form (homomorphic, bit for bit).
- ``threshold``: keep ``|x_i| >= tau`` (Strom 2015); k varies from call to call.
- ``dgc_top_k``: Deep Gradient Compression's selection (Lin et al., ICLR 2018,
  ``synxlin/deep-gradient-compression``, ``dgc/compression.py``): see :class:`DGCTopK`.

Sparse payload: ``values`` [K] in the input's dtype, ``indices`` [K] and ``size`` (d, in the
smallest dtype that holds it), in one of two index encodings, whichever is shorter on the wire:

- flat: ``indices`` are positions in ``0 .. d-1``, in the smallest of uint8/int16/int32/int64
  that holds ``d - 1``;
- blocked (only for ``d > 32768``): the vector is cut into blocks of ``BLOCK = 2**15`` entries;
  entries are sent in increasing position, ``indices`` are int16 offsets inside their block and
  ``counts`` [B] says how many kept entries each block has (smallest dtype that holds K). This
  halves the index bytes of an int32-indexed top-k whenever K is large next to the block count
  (at density 0.01 a kept entry costs 6 bytes instead of 8).

:func:`sparse_indices` decodes either to global positions.
Local accumulation (error feedback) is :func:`shoal.compress.error_feedback`, not part of these.

Shape suffixes: ``D`` flat parameters, ``K`` kept entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from shoal.checks import check_count, check_flag, check_seed, is_real
from shoal.compress._common import (
    check_flat,
    check_ratio,
    check_seed_state,
    generator,
    index_dtype,
    next_state,
    num_kept,
    seed_state,
    size_scalar,
    smallest_int_dtype,
)
from shoal.compress.base import Payload, add_all, check_same
from shoal.compress.wire import entry_nbytes, payload_nbytes

BLOCK = 2**15  # int16 holds every offset inside a block


def sparse_payload(
    values_K: torch.Tensor, index_K: torch.Tensor, d: int, ascending: bool = False
) -> Payload:
    """``values``, ``indices`` and ``size`` in the shorter of the flat and blocked encodings;
    ``ascending``: the indices are already in order (:func:`flat_nonzero`'s), so the blocked
    encoding need not sort them."""
    k, num_blocks = index_K.numel(), -(-d // BLOCK)
    count_dtype = smallest_int_dtype(k)
    flat_bytes = k * index_dtype(d).itemsize
    blocked_bytes = k * 2 + entry_nbytes("counts", torch.empty(num_blocks, dtype=count_dtype))
    if d <= BLOCK or blocked_bytes >= flat_bytes:
        return {
            "values": values_K,
            "indices": index_K.to(index_dtype(d)),
            "size": size_scalar(d, values_K.device),
        }
    if not ascending:
        index_K, order_K = index_K.sort()
        values_K = values_K[order_K]
    counts_B = torch.bincount(index_K // BLOCK, minlength=num_blocks)
    return {
        "values": values_K,
        "indices": (index_K % BLOCK).to(torch.int16),
        "counts": counts_B.to(count_dtype),
        "size": size_scalar(d, values_K.device),
    }


def sparse_indices(payload: Payload) -> torch.Tensor:
    """Global positions (int64) of a sparse payload's values, in either encoding."""
    # .long(): a uint8 index tensor would otherwise be read as a boolean mask.
    index_K = payload["indices"].long()
    if "counts" in payload:
        counts_B = payload["counts"].long()
        starts_B = torch.arange(counts_B.numel(), device=index_K.device) * BLOCK
        index_K = index_K + torch.repeat_interleave(starts_B, counts_B)
    return index_K


def sparse_decompress(payload: Payload) -> torch.Tensor:
    values_K = payload["values"]
    out_D = values_K.new_zeros(int(payload["size"]))
    out_D[sparse_indices(payload)] = values_K
    return out_D


def sparse_decompress_sum(
    payloads: Sequence[Payload], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``sum_i sparse_decompress(payloads[i])``: one buffer, one scatter-add per message (a
    payload without ``indices`` is a dense message, added as it is).

    Bit for bit the left-to-right sum of the dense vectors: a message's indices are distinct,
    so each entry of the buffer gets that message's value added once, as the dense sum adds it
    (and adds zero, exactly, elsewhere). Costs one pass over ``D`` instead of one per message.
    ``index_add_``, not ``index_put_(accumulate=True)``: on CUDA the latter sorts the indices
    first (1.4x slower than decompressing each message on an H200, 16 top-k messages of a
    10M vector); distinct indices make the former's atomic adds exact in any order.
    """
    sizes = {int(p["size"]) if "indices" in p else p["values"].numel() for p in payloads}
    if len(sizes) != 1:
        raise ValueError("sparse messages of different lengths cannot be summed")
    out_D = payloads[0]["values"].new_zeros(sizes.pop(), dtype=dtype)
    for p in payloads:
        values = p["values"].to(out_D.dtype)
        if "indices" in p:
            out_D.index_add_(0, sparse_indices(p), values)
        else:
            out_D += values
    return out_D


class _Sparse:
    """Shared decompress / nbytes of the (values, indices, size) payload."""

    contractive: ClassVar[bool] = True  # sends exact copies of some entries, zeros the rest

    def decompress(self, payload: Payload) -> torch.Tensor:
        return sparse_decompress(payload)

    def decompress_sum(
        self, payloads: Sequence[Payload], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        return sparse_decompress_sum(payloads, dtype)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)

    def residual(self, accumulated_D: torch.Tensor, payload: Payload) -> torch.Tensor:
        """``accumulated_D - decompress(payload)``, computed in ``accumulated_D``'s storage.

        The kept values are copies of ``accumulated_D``'s entries, so the difference is
        ``accumulated_D`` with those entries zeroed: no decompressed vector, no subtraction
        (error feedback's cost on a 10M vector drops from ~3 full passes to one scatter).
        """
        accumulated_D[sparse_indices(payload)] = 0
        return accumulated_D


@dataclass(frozen=True)
class TopK(_Sparse):
    """Exact top-k by magnitude; give ``ratio`` (k = ceil(ratio d)) or ``k`` (capped at d)."""

    ratio: float | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.k is None):
            raise ValueError("top_k: give exactly one of ratio= or k=")
        if self.ratio is not None:
            check_ratio(self.ratio, "top_k")
        if self.k is not None:
            check_count(self.k, "top_k: k")

    @property
    def name(self) -> str:
        return f"top_k(ratio={self.ratio})" if self.ratio is not None else f"top_k(k={self.k})"

    def num_kept(self, d: int) -> int:
        return num_kept(self.ratio, d) if self.ratio is not None else min(int(self.k or 1), d)

    def init(self, x_D: torch.Tensor) -> None:
        return None

    def compress(self, x_D: torch.Tensor, state: None) -> tuple[Payload, None]:
        x_D = check_flat(x_D, self.name)
        d = x_D.numel()
        if d == 0:
            return sparse_payload(x_D, x_D.new_zeros(0, dtype=torch.long), 0), state
        index_K = top_k_indices(x_D, self.num_kept(d))
        return sparse_payload(x_D[index_K], index_K, d), state


def flat_nonzero(mask_D: torch.Tensor) -> torch.Tensor:
    """Positions (int64) of the true entries of a 1-D boolean mask.

    On the CPU numpy's ``flatnonzero`` (on the same memory) is ~4x faster than
    ``torch.nonzero`` on a 10M mask with ~1% set: the selection passes of top-k, threshold
    and DGC were dominated by it.
    """
    if mask_D.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask_D.numpy()))
    return mask_D.nonzero().view(-1)


_CHUNK = 2**18  # entries whose |x| is computed at a time (1 MiB of float32)


def magnitude_mask(
    x_D: torch.Tensor, compare: Callable[..., torch.Tensor], threshold: torch.Tensor | float
) -> torch.Tensor:
    """``compare(|x_D|, threshold)`` (``torch.ge``, ``torch.lt``) as a boolean mask.

    On the CPU ``|x|`` is computed a cache-sized chunk at a time: ``|x|`` of a whole 10M
    vector is a fresh 40 MB allocation whose page faults cost more than the arithmetic.
    """
    if x_D.device.type != "cpu":
        return compare(x_D.abs(), threshold)
    mask_D = torch.empty(x_D.numel(), dtype=torch.bool)
    for x_C, mask_C in zip(x_D.split(_CHUNK), mask_D.split(_CHUNK)):
        compare(x_C.abs(), threshold, out=mask_C)
    return mask_D


def not_below(x_D: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """The mask of ``|x_i| >= threshold``, written as "not below" so that NaN entries are in it:
    a NaN is sent (and shows up where it is decoded) rather than left in an error-feedback
    residual for good. ``torch.topk`` ranks NaN above every number, so top-k sends it too."""
    return magnitude_mask(x_D, torch.lt, threshold).logical_not_()


_FILTER_SAMPLE = 2**17  # entries sampled to place the candidate threshold
_FILTER_MARGIN = 1.5  # the threshold admits ~1.5 k candidates


def top_k_indices(x_D: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` entries of largest magnitude ``|x_D|`` (in no order; ties broken
    as ``torch.topk`` breaks them among the candidates).

    On a CPU vector of at least ``4 * _FILTER_SAMPLE`` entries, ``torch.topk`` over the whole
    vector is slow (a partial sort, ~0.2 s for 10M entries). Instead: the threshold ``t`` is
    the ``1.5 k/d``-quantile of ``|x|`` on a strided sample, every entry with ``|x_i| >= t``
    is a candidate (one comparison pass), and ``torch.topk`` runs on the ~1.5 k candidates.
    If fewer than k entries pass (an unlucky sample), it falls back to ``torch.topk`` on
    everything, so the result is always the exact top k. GPUs keep ``torch.topk`` (a radix
    select, and ``nonzero`` would synchronize).
    """
    d = x_D.numel()
    if x_D.device.type != "cpu" or d < 4 * _FILTER_SAMPLE:
        return torch.topk(x_D.abs(), k, sorted=False).indices
    sample = x_D[:: d // _FILTER_SAMPLE].abs()
    rank = min(sample.numel(), math.ceil(k / d * sample.numel() * _FILTER_MARGIN) + 1)
    threshold = torch.topk(sample, rank, sorted=False).values.min()
    candidates = flat_nonzero(not_below(x_D, threshold))
    if candidates.numel() < k:
        return torch.topk(x_D.abs(), k, sorted=False).indices
    return candidates[torch.topk(x_D[candidates].abs(), k, sorted=False).indices]


@dataclass(frozen=True)
class Threshold(_Sparse):
    """Keep every entry with ``|x_i| >= tau`` (and every NaN: see :func:`not_below`).

    ``tau`` is compared in the input's dtype, as torch compares with a Python number (so
    ``float32(0.7)`` ties with ``tau = 0.7``), except that a ``tau > 0`` which that dtype
    rounds to zero (``1e-8`` in float16) still leaves out the exact zeros."""

    tau: float

    def __post_init__(self) -> None:
        if not (is_real(self.tau) and math.isfinite(self.tau) and self.tau >= 0):  # True was 1
            raise ValueError(f"threshold: tau must be a finite number >= 0, got {self.tau!r}")

    @property
    def name(self) -> str:
        return f"threshold(tau={self.tau})"

    def init(self, x_D: torch.Tensor) -> None:
        return None

    def compress(self, x_D: torch.Tensor, state: None) -> tuple[Payload, None]:
        x_D = check_flat(x_D, self.name)
        tau: torch.Tensor | float = self.tau
        if self.tau > 0 and float(torch.tensor(self.tau, dtype=x_D.dtype)) == 0:
            zero = torch.zeros((), dtype=x_D.dtype, device=x_D.device)
            tau = torch.nextafter(zero, zero + 1)  # the dtype's smallest positive value
        index_K = flat_nonzero(not_below(x_D, tau))
        return sparse_payload(x_D[index_K], index_K, x_D.numel(), ascending=True), state


def random_indices(d: int, k: int, seed: int, step: int, device: torch.device) -> torch.Tensor:
    """k distinct indices of ``range(d)``, uniformly random, a function of ``(seed, step)``.

    Drawn on the CPU so that workers on different devices (or a CPU receiver) agree. For
    ``k <= d / 8``, about ``k`` draws instead of a permutation of all ``d`` (33x faster at
    ``k = d / 100`` for ``d = 10M``, 1.4x at ``d / 10``): uniform draws, deduplicated,
    topped up until ``k`` are distinct, then ``k`` of them chosen at random. Every step is
    symmetric under relabelling ``range(d)``, so each ``k``-subset is equally likely, as
    with a permutation's first ``k``. The drawn indices come out sorted (gathering and
    scattering in memory order); a permutation's (``k > d / 8``) in its own order.
    """
    g = generator(seed, step, "cpu")
    if 8 * k > d:
        return torch.randperm(d, generator=g)[:k].to(device)
    distinct = torch.empty(0, dtype=torch.int64)
    while len(distinct) < k:
        # Expected repeats among m draws from d are about m^2 / 2d: draw a few more.
        want = k - len(distinct)
        draws = torch.randint(d, (want + want * k // d + 16,), generator=g)
        distinct = torch.unique(torch.cat([distinct, draws]))
    keep = torch.randperm(len(distinct), generator=g)[:k].sort().values
    return distinct[keep].to(device)


@dataclass(frozen=True)
class RandomK:
    """k uniformly random entries; the indices are regenerated from ``(seed, step)``.

    State: ``{"seed", "step"}``; ``init(x_D, seed=...)`` overrides the seed (give every worker
    the same seed for summable messages, different seeds for independent masks).
    Payload: ``values`` [K], ``seed`` and ``step`` (int64 scalars), ``size``.
    """

    ratio: float
    seed: int = 0
    unbiased: bool = False
    homomorphic: ClassVar[bool] = True
    shared_seed: ClassVar[bool] = True
    """Workers keep the same seed (and so, at equal call counts, the same indices)."""

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "random_k")
        check_seed(self.seed, "random_k: seed")
        check_flag(self.unbiased, "random_k: unbiased")  # "no" was unbiased

    @property
    def name(self) -> str:
        return f"random_k(ratio={self.ratio}{', unbiased' if self.unbiased else ''})"

    @property
    def contractive(self) -> bool:
        """Unscaled, a subset of exact entries; scaled by d/k, ``E||x - C(x)||^2 =
        (d/k - 1)||x||^2``: below ``||x||^2`` for ``ratio > 0.5``. At 0.5 it equals it for
        every ``x`` (the bound other compressors reach at worst), and an error-feedback
        residual grew like a random walk (28 ||x|| after 800 messages)."""
        return not self.unbiased or self.ratio > 0.5

    def init(self, x_D: torch.Tensor, seed: int | None = None) -> dict[str, Any]:
        check_flat(x_D, self.name)  # a 2-D input or a string was accepted here
        return seed_state(self.seed if seed is None else seed)

    def compress(self, x_D: torch.Tensor, state: dict[str, Any]) -> tuple[Payload, dict[str, Any]]:
        x_D = check_flat(x_D, self.name)
        seed, step = check_seed_state(state, "random_k")
        d = x_D.numel()
        k = num_kept(self.ratio, d) if d else 0
        values_K = x_D[random_indices(d, k, seed, step, x_D.device)]
        if self.unbiased and k:
            values_K = values_K * (d / k)
        payload = {
            "values": values_K,
            "seed": torch.tensor(seed, dtype=torch.int64, device=x_D.device),
            "step": torch.tensor(step, dtype=torch.int64, device=x_D.device),
            "size": size_scalar(d, x_D.device),
        }
        return payload, next_state(state)

    def decompress(self, payload: Payload) -> torch.Tensor:
        values_K = payload["values"]
        d = int(payload["size"])
        index_K = random_indices(
            d, values_K.numel(), int(payload["seed"]), int(payload["step"]), values_K.device
        )
        out_D = values_K.new_zeros(d)
        out_D[index_K] = values_K
        return out_D

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)

    def sum_payloads(self, payloads: Sequence[Payload]) -> Payload:
        """Add the values of messages with the same seed, step and size.

        Exact: each kept entry undergoes the same additions, in the same order, as when the
        decompressed vectors are added left to right; untouched entries stay 0.
        """
        check_same(payloads, ("seed", "step", "size"), "random_k")
        return {**payloads[0], "values": add_all([p["values"] for p in payloads])}


# ---- Deep Gradient Compression ----------------------------------------------------------


@dataclass(frozen=True)
class DGCPlan:
    """Per-tensor sizes of DGC's selection (``DGCCompressor.initialize`` in the reference)."""

    num_selects: int  # k
    num_samples: int
    top_k_samples: int
    sample_stride: int


def dgc_plan(numel: int, ratio: float, sample_ratio: float) -> DGCPlan:
    """The reference's sample stride: at least ``max(ceil(sample_ratio d), ceil(2 / ratio))``
    strided samples, with a stride of the form ``32 m + 1`` reduced by 8 until there are."""
    if sample_ratio < 1.0:
        pct_numel = math.ceil(numel * sample_ratio)
        cpr_numel = math.ceil(2 / ratio)
        if numel <= cpr_numel:
            stride, num_samples = 1, numel
        else:
            wanted = max(pct_numel, cpr_numel)
            stride = math.ceil(numel / wanted / 32) * 32 + 1
            num_samples = numel // stride
            while num_samples < wanted:
                stride -= 8
                num_samples = numel // stride
    else:
        stride, num_samples = 1, numel
    return DGCPlan(num_kept(ratio, numel), num_samples, num_kept(ratio, num_samples), stride)


def _largest_in_order(x_D: torch.Tensor, index_N: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` of the ascending positions ``index_N`` where ``|x_D|`` is largest, still
    ascending: a message then needs no sort to be encoded (:func:`sparse_payload`)."""
    return index_N[torch.topk(x_D[index_N].abs(), k, sorted=False).indices.sort().values]


def dgc_select(
    x_D: torch.Tensor,
    plan: DGCPlan,
    start: int,
    upper_bound: float = 1.3,
    lower_bound: float = 0.8,
    max_adaptation_iters: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DGC's threshold rule (``DGCCompressor._sparsify`` with ``resample=True``).

    Importance is ``|x_D|``. Returns ``(index_K, threshold)``. The threshold is the smallest
    of the top ``top_k_samples`` of the strided sample ``|x[start::stride]|``; then, at most
    ``max_adaptation_iters`` times: more than ``upper_bound * k`` candidates -> exact top-k
    among the candidates, stop; more than k -> stop; fewer than ``lower_bound * k`` ->
    ``threshold *= lower_bound`` and reselect. ``index_K`` is ascending.
    """
    k = plan.num_selects
    samples = x_D[start :: plan.sample_stride].abs()
    threshold = torch.topk(samples, plan.top_k_samples, sorted=False).values.min()
    index_K = flat_nonzero(not_below(x_D, threshold))
    for _ in range(max_adaptation_iters):
        n = index_K.numel()
        if n > k:
            if n > upper_bound * k:
                index_K = _largest_in_order(x_D, index_K, k)
            break
        if n >= lower_bound * k:
            break
        threshold = threshold * lower_bound
        index_K = flat_nonzero(not_below(x_D, threshold))
    return index_K, threshold


@dataclass(frozen=True)
class DGCTopK(_Sparse):
    """DGC's sampled-threshold top-k (Lin et al. 2018, Sec. 3 and ``dgc/compression.py``).

    A threshold is estimated on a strided ~``sample_ratio`` sample (random start drawn from the
    state's seed and step), then adapted by the 1.3 / 0.8 rule of :func:`dgc_select`. Vectors
    too small to sample (``d <= 2 / ratio``) get an exact top-k.

    Deviations from the reference, named: (1) it truncates the final candidates to the first
    k by *position* (``indices[:num_selects]``), which favours the front of the tensor; we send
    every candidate when ``k < n <= 1.3k`` and fall back to an exact top-k of the candidates if
    the last adaptation overshot ``1.3k``, so ``n <= 1.3k`` always and ``n >= 0.8k`` unless
    ten reductions did not reach it; (2) the reference silently raises ``sample_ratio`` below
    0.01 to 0.01; we take any value in (0, 1]; (3) k = ceil(ratio d) after rounding ratio d to
    9 decimals (see ``num_kept``). Momentum correction, momentum factor masking and local
    accumulation belong to the algorithm and to :func:`error_feedback`.
    """

    ratio: float
    sample_ratio: float = 0.01
    upper_bound: float = 1.3
    lower_bound: float = 0.8
    max_adaptation_iters: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "dgc_top_k")
        check_seed(self.seed, "dgc_top_k: seed")
        if not (is_real(self.sample_ratio) and 0 < self.sample_ratio <= 1):
            raise ValueError(f"dgc_top_k: sample_ratio must be in (0, 1], got {self.sample_ratio}")
        # "2" or None failed in the comparison, True was 1, inf never took the exact top-k.
        up, low = self.upper_bound, self.lower_bound
        if not (is_real(up) and 1.0 <= up < math.inf):
            raise ValueError(f"dgc_top_k: upper_bound must be a finite number >= 1, got {up!r}")
        if not (is_real(low) and 0.0 < low <= 1.0):
            raise ValueError(f"dgc_top_k: lower_bound must be in (0, 1], got {low!r}")
        check_count(self.max_adaptation_iters, "dgc_top_k: max_adaptation_iters", least=0)

    @property
    def name(self) -> str:
        return f"dgc_top_k(ratio={self.ratio})"

    def init(self, x_D: torch.Tensor, seed: int | None = None) -> dict[str, Any]:
        check_flat(x_D, self.name)  # a 2-D input or a string was accepted here
        return seed_state(self.seed if seed is None else seed)

    def compress(self, x_D: torch.Tensor, state: Any) -> tuple[Payload, Any]:
        x_D = check_flat(x_D, self.name)
        index_K = self.select(x_D, state)
        return sparse_payload(x_D[index_K], index_K, x_D.numel(), ascending=True), next_state(state)

    def select(self, x_D: torch.Tensor, state: Any) -> torch.Tensor:
        """The positions (int64, ascending) that :meth:`compress` sends for this state; the
        DGC algorithm uses them without building a message."""
        seed, step = check_seed_state(state, "dgc_top_k")
        d = x_D.numel()
        if d == 0:
            return x_D.new_zeros(0, dtype=torch.long)
        plan = dgc_plan(d, self.ratio, self.sample_ratio)
        k = plan.num_selects
        if k == d:  # every entry: a threshold from a sample left ~10% of them out at ratio 1
            return torch.arange(d, device=x_D.device)
        if plan.num_samples == d:
            return torch.topk(x_D.abs(), k, sorted=False).indices.sort().values
        g = generator(seed, step, "cpu")
        start = int(torch.randint(0, plan.sample_stride, (1,), generator=g))
        index_K, _ = dgc_select(
            x_D, plan, start, self.upper_bound, self.lower_bound, self.max_adaptation_iters
        )
        if index_K.numel() > self.upper_bound * k:
            index_K = _largest_in_order(x_D, index_K, k)
        return index_K


def top_k(ratio: float | None = None, k: int | None = None) -> TopK:
    """Exact top-k by magnitude: ``top_k(ratio=0.01)`` or ``top_k(k=100)``."""
    return TopK(ratio=ratio, k=k)


def random_k(ratio: float, seed: int = 0, unbiased: bool = False) -> RandomK:
    """k = ceil(ratio d) uniformly random entries from a shared seed; only values travel."""
    return RandomK(ratio=ratio, seed=seed, unbiased=unbiased)


def threshold(tau: float) -> Threshold:
    """Every entry with ``|x_i| >= tau``."""
    return Threshold(tau=tau)


def dgc_top_k(
    ratio: float,
    sample_ratio: float = 0.01,
    *,
    upper_bound: float = 1.3,
    lower_bound: float = 0.8,
    max_adaptation_iters: int = 10,
    seed: int = 0,
) -> DGCTopK:
    """DGC's sampled-threshold top-k (defaults from ``configs/dgc/__init__.py``)."""
    return DGCTopK(ratio, sample_ratio, upper_bound, lower_bound, max_adaptation_iters, seed)
