"""Quantizers: QSGD, TernGrad, scaled sign (EF-signSGD) and natural compression.

- ``qsgd(levels, bucket_size)``: Alistarh, Grubic, Li, Tomioka, Vojnovic, NeurIPS 2017:
  ``Q_s(v)_i = ||v||_2 sgn(v_i) xi_i / s`` with ``xi_i = l + 1`` w.p. ``s|v_i|/||v|| - l`` else
  ``l`` (stochastic rounding between the levels ``l/s``), one 2-norm per bucket of
  ``bucket_size`` entries (the paper's "bucketing"). Unbiased; ``Var <= min(d/s^2, sqrt(d)/s)
  ||v||^2`` per bucket (Lemma 3.1).
- ``terngrad(bucket_size)``: Wen et al., NeurIPS 2017: ``s sgn(g) * b`` with
  ``b_k ~ Bernoulli(|g_k| / s)`` and ``s = max|g|`` per bucket (per layer in the paper: use
  :func:`layerwise`). Unbiased; ``Var = s|g_k| - g_k^2``.
- ``scaled_sign()``: Karimireddy, Rebjock, Stich, Jaggi, ICML 2019 (EF-signSGD):
  ``(||x||_1 / d) sign(x)``, one scale per message (per tensor in the paper's code: use
  :func:`layerwise`). Biased: meant to be wrapped in :func:`error_feedback`.
- ``natural_compression()``: Horvath, Ho, Horvath, Sahu, Canini, Richtarik 2019, "Natural
  compression for distributed deep learning": round ``|x|`` to one of the two nearest powers of
  two, stochastically so that it is unbiased (variance ``<= x^2 / 8`` in float32's normal
  range; a subnormal ``x`` rounds to 0 or ``2^-126``, so its relative error is unbounded);
  9 bits per entry (sign + 8-bit exponent), taken straight from the float32 bit pattern.

Deviations, named: codes are packed with byte-aligned widths (1, 2, 4, 8, 16, 32 bits: QSGD
with s = 1 takes 2 bits, s <= 7 takes 4 bits, TernGrad 2 bits) rather than QSGD's Elias
coding, so ``nbytes`` is what this packing really emits; TernGrad's gradient clipping (c sigma)
and max-scaler sharing are not applied here (clip before compressing); scaled sign sends
``x_i = 0`` as ``+scale`` (one bit has no zero); natural compression works on float32 (other
dtypes are cast), sends non-finite entries as +-inf, and clamps the round-up of entries above
2**127 (the one place it is biased). Stochastic compressors draw from a generator seeded by
``(seed, step)`` from their state on the input's device; ``init(x_D, seed=...)`` sets the seed.
QSGD, TernGrad and scaled sign decode a bucket whose scale is not finite (an inf or NaN entry,
or a norm beyond the work dtype: two float32 entries of 3e38) to NaN, and decode in their work
dtype (float32, float64 for float64 input), as natural compression decodes to float32. QSGD's
norms are computed without overflow or underflow of the squares (:func:`_row_norms`), so
entries of 1e20 or 1e-30 in float32 quantize like any others, and ``|x|`` is divided by the
scale (not multiplied by its inverse, which overflows for a subnormal scale). Scaled sign's mean
``|x|`` is likewise computed without overflow (:func:`_mean_abs`): finite entries always give a
finite scale.
Workers must not share it (shared seeds correlate their rounding):
:func:`shoal.compress.init_for_worker` gives each its own, and training uses it.

Shape suffixes: ``D`` flat parameters, ``B`` buckets (here, not batch), ``L`` bucket length.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from shoal.checks import check_count, check_seed
from shoal.compress._common import (
    check_flat,
    check_seed_state,
    code_bits,
    generator,
    next_state,
    pack_codes,
    seed_state,
    size_scalar,
    unpack_codes,
    work_dtype,
)
from shoal.compress.base import Payload
from shoal.compress.wire import payload_nbytes

_MAX_LEVELS = 2**30
# float32 holds every integer up to 2**24 = 2s: above, QSGD's codes s + xi would be rounded
# (a fixed, biased level), so it forms them in float64.
_EXACT_FLOAT32_LEVELS = 2**23


def _bucket_length(d: int, bucket_size: int | None) -> int:
    return bucket_size or max(d, 1)


def _split_buckets(v_D: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of ``v_D``: its full buckets ``[B_full, length]`` and the shorter tail (maybe empty).

    Working on views instead of a zero-padded copy saves a pass over the vector, and each
    freshly allocated vector costs as much as the arithmetic done in it (its pages fault in).
    """
    full = v_D.numel() // length
    return v_D[: full * length].view(full, length), v_D[full * length :]


def _bucket_reduce(
    v_D: torch.Tensor, length: int, reduce: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``reduce`` (a row reduction of ``[n, length]``) of each bucket, the tail zero-padded."""
    body_BL, tail = _split_buckets(v_D, length)
    if not tail.numel():
        return reduce(body_BL)
    return torch.cat([reduce(body_BL), reduce(F.pad(tail, (0, length - tail.numel()))[None])])


def _row_norms(v_BL: torch.Tensor) -> torch.Tensor:
    """The 2-norm of each row, without the overflow or underflow of a plain sum of squares.

    A plain float32 norm overflows to inf for entries of ~1e19 in a 512-entry row although the
    norm is a float32, and is 0 (or has lost its digits) for entries below ~1e-23. Rows whose
    plain norm is not finite or is below ``sqrt(tiny / eps)`` (where squares of its entries may
    have underflowed) are recomputed divided by their largest ``|entry|``, as the reference
    BLAS ``nrm2`` scales (Blue, "A portable Fortran program to find the Euclidean norm of a
    vector", ACM TOMS 1978); the others, nearly always all of them, cost one pass as before.
    """
    norms_B = torch.linalg.vector_norm(v_BL, dim=1)
    info = torch.finfo(v_BL.dtype)
    risky_B = ~(norms_B.isfinite() & (norms_B >= (info.tiny / info.eps) ** 0.5))
    rows = risky_B.nonzero().view(-1)
    if rows.numel():
        r_RL = v_BL[rows]
        big_R = r_RL.abs().amax(dim=1)
        # All-zero rows keep norm 0, and rows with an inf or NaN entry a non-finite norm.
        big_R = torch.where((big_R > 0) & big_R.isfinite(), big_R, torch.ones_like(big_R))
        norms_B[rows] = torch.linalg.vector_norm(r_RL / big_R[:, None], dim=1) * big_R
    return norms_B


def _finite_or_nan(scales: torch.Tensor) -> torch.Tensor:
    """Scales (norms, maxima, means) with each non-finite one replaced by NaN.

    A bucket with an inf or NaN entry, or whose norm overflows the float dtype, has no usable
    scale: its codes are meaningless, and NaN makes the whole bucket decode to NaN, so the
    failure shows where the message is decoded (inf would decode to a mix of +-inf and NaN,
    signs flipped).
    """
    return scales.where(scales.isfinite(), torch.nan)


def _scale_buckets_(
    v_D: torch.Tensor, scales_B: torch.Tensor, length: int, divide: bool = False
) -> torch.Tensor:
    """``v_D`` with each bucket multiplied (``divide``: divided) by its scale, in place."""
    body_BL, tail = _split_buckets(v_D, length)
    buckets = body_BL.shape[0] + (tail.numel() > 0)
    if scales_B.numel() != buckets:  # decoded by a compressor of another bucket size
        raise ValueError(
            f"the message holds {scales_B.numel()} bucket scale(s), and {v_D.numel()} entries "
            f"in buckets of {length} need {buckets}: decode it with the compressor that made it"
        )
    op = torch.Tensor.div_ if divide else torch.Tensor.mul_
    op(body_BL, scales_B[: body_BL.shape[0], None])
    if tail.numel():
        op(tail, scales_B[-1])
    return v_D


def _divisors(scales_B: torch.Tensor) -> torch.Tensor:
    """Scales to divide ``|x|`` by: a zero or NaN scale becomes inf, so its finite entries get
    0 (their codes are those of zero; a NaN scale decodes to NaN anyway). Dividing, not
    multiplying by ``1 / scale``: that inverse overflows for a subnormal scale (inf times the
    bucket's zeros was NaN, and every nonzero entry went out as +-scale)."""
    return torch.where(scales_B > 0, scales_B, torch.inf)


def _mean_abs(x_D: torch.Tensor) -> torch.Tensor:
    """``||x||_1 / d`` without the overflow of the plain sum (d float32 entries of 1e37 sum to
    inf although their mean is a float32).

    Where the plain sum is finite it is the value, bit for bit as before; otherwise the sum is
    redone over ``|x| / 2^k`` with ``2^k >= 2d`` (a power of two, so scaling is exact save for
    entries that become subnormal, which cannot matter next to a sum of ~1e38), the scaled
    accumulation of Blue (ACM TOMS 1978). Both sums are always computed and chosen with
    ``torch.where``: an ``if`` on the plain sum would be a host sync per message on a GPU; the
    second sum costs an in-place pass over ``|x|`` (about 4% of compress at 10M entries).
    """
    d = max(x_D.numel(), 1)
    abs_D = x_D.abs()
    plain = abs_D.sum() / d  # before the in-place scaling below
    k = d.bit_length() + 1
    scaled = abs_D.mul_(2.0**-k).sum() / d * 2.0**k  # divided by d before it is scaled back
    return torch.where(plain.isfinite(), plain, scaled)  # inf or NaN entries stay non-finite


class _Stochastic(ABC):
    """Seed-and-step state, exact ``nbytes``."""

    seed: int

    @property
    @abstractmethod
    def name(self) -> str:
        """The compressor's name, for messages."""

    def init(self, x_D: torch.Tensor, seed: int | None = None) -> dict[str, Any]:
        check_flat(x_D, self.name)  # a 2-D input or a string was accepted here
        return seed_state(self.seed if seed is None else seed)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)


def _check_bucket_size(bucket_size: int | None, who: str) -> None:
    if bucket_size is not None:
        check_count(bucket_size, f"{who}: bucket_size")


@dataclass(frozen=True)
class QSGD(_Stochastic):
    """QSGD with ``levels`` = s quantization levels and one norm per bucket.

    Payload: ``codes`` (``q + s`` in ``[0, 2s]``, packed), ``norms`` [B], ``size``.
    """

    levels: int
    bucket_size: int | None = 512
    seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.levels, "qsgd: levels")
        check_seed(self.seed, "qsgd: seed")
        if self.levels > _MAX_LEVELS:
            raise ValueError(f"qsgd: levels must be <= 2**30, got {self.levels}")
        _check_bucket_size(self.bucket_size, "qsgd")

    @property
    def name(self) -> str:
        return f"qsgd(levels={self.levels})"

    @property
    def contractive(self) -> bool:
        """Lemma 3.1's variance bound ``min(b/s^2, sqrt(b)/s)`` (bucket length b) is <= 1,
        i.e. ``s^2 >= b``; without buckets b is the whole message, unknown here."""
        return self.bucket_size is not None and self.levels**2 >= self.bucket_size

    @property
    def bits(self) -> int:
        return code_bits(2 * self.levels + 1)

    def compress(self, x_D: torch.Tensor, state: Any) -> tuple[Payload, Any]:
        x_D = check_flat(x_D, self.name)
        seed, step = check_seed_state(state, "qsgd")
        s, d = self.levels, x_D.numel()
        xw_D = x_D.to(work_dtype(x_D))
        length = _bucket_length(d, self.bucket_size)
        norms_B = _finite_or_nan(_bucket_reduce(xw_D, length, _row_norms))
        div_B = _divisors(norms_B)
        if s > _EXACT_FLOAT32_LEVELS:  # codes up to 2s and r's fraction need float64
            xw_D, div_B = xw_D.double(), div_B.double()
        # Three fresh vectors (r, floor(r), u), the rest in place: a fresh vector costs as
        # much as the arithmetic done in it. r = s |x| / ||x||, divided first (<= 1).
        r_D = _scale_buckets_(xw_D.abs(), div_B, length, divide=True).mul_(s)
        low_D = r_D.floor()
        g = generator(seed, step, x_D.device)
        u_D = torch.rand(d, generator=g, dtype=xw_D.dtype, device=x_D.device)
        # xi = l + 1 w.p. r - l (u becomes that 0/1 event); r <= s up to rounding, which the
        # clamp guards. The codes xi sgn(x) + s are integer-valued floats, cast once by
        # pack_codes (no int64 pass over the vector).
        xi_D = low_D.add_(u_D.lt_(r_D.sub_(low_D))).clamp_max_(s)
        codes = xi_D.copysign_(xw_D).add_(s)  # xi = 0 where x = 0: code s for either zero
        payload = {
            "codes": pack_codes(codes, self.bits),
            "norms": norms_B,
            "size": size_scalar(x_D.numel(), x_D.device),
        }
        return payload, next_state(state)

    def decompress(self, payload: Payload) -> torch.Tensor:
        d = int(payload["size"])
        norms_B = payload["norms"]
        if self.bits <= 16:  # codes < 2**16: exact in the float work dtype, no int64 pass
            q_D = unpack_codes(payload["codes"], self.bits, d, norms_B.dtype).sub_(self.levels)
        else:
            q_D = (unpack_codes(payload["codes"], self.bits, d) - self.levels).to(norms_B.dtype)
        step_B = norms_B / self.levels
        tiny = torch.finfo(step_B.dtype).tiny
        if bool(((step_B < tiny) & (norms_B > 0)).any()):
            # A subnormal ||x|| / s keeps few significant bits (2**30 levels of a 1e-36 vector
            # decoded 8% off, of a 1e-40 one to zeros): scale in float64, then cast back.
            dtype, step_B = q_D.dtype, norms_B.double() / self.levels
            q_D = _scale_buckets_(q_D.double(), step_B, _bucket_length(d, self.bucket_size))
            return q_D.to(dtype)
        return _scale_buckets_(q_D, step_B, _bucket_length(d, self.bucket_size))


@dataclass(frozen=True)
class TernGrad(_Stochastic):
    """TernGrad: ``max|x|`` per bucket times a stochastic ternary {-1, 0, 1} (2 bits each).

    Payload: ``codes`` (``t + 1``, packed 4 per byte), ``scales`` [B], ``size``.
    """

    bucket_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_bucket_size(self.bucket_size, "terngrad")
        check_seed(self.seed, "terngrad: seed")

    @property
    def contractive(self) -> bool:
        """``E||x - C(x)||^2 = max|x| ||x||_1 - ||x||^2`` per bucket of length b, at worst
        ``(sqrt(b) - 1) / 2 ||x||^2`` (one entry at the max, the others at ``(sqrt(b) - 1) /
        (b - 1)`` of it): at most ``||x||^2`` for buckets of up to 9 entries."""
        return self.bucket_size is not None and self.bucket_size <= 9

    @property
    def name(self) -> str:
        return "terngrad"

    def compress(self, x_D: torch.Tensor, state: Any) -> tuple[Payload, Any]:
        x_D = check_flat(x_D, self.name)
        seed, step = check_seed_state(state, "terngrad")
        d = x_D.numel()
        xw_D = x_D.to(work_dtype(x_D))
        length = _bucket_length(d, self.bucket_size)
        a_D = xw_D.abs()
        scales_B = _finite_or_nan(_bucket_reduce(a_D, length, lambda v_BL: v_BL.amax(dim=1)))
        g = generator(seed, step, x_D.device)
        u_D = torch.rand(d, generator=g, dtype=xw_D.dtype, device=x_D.device)
        p_D = _scale_buckets_(a_D, _divisors(scales_B), length, divide=True)
        kept_D = u_D.lt_(p_D)  # b ~ Bernoulli(|x| / s), as 0/1
        codes = kept_D.copysign_(xw_D).add_(1)  # integer-valued floats; x = 0 gives b = 0
        payload = {
            "codes": pack_codes(codes, 2),
            "scales": scales_B,
            "size": size_scalar(x_D.numel(), x_D.device),
        }
        return payload, next_state(state)

    def decompress(self, payload: Payload) -> torch.Tensor:
        d = int(payload["size"])
        scales_B = payload["scales"]
        t_D = unpack_codes(payload["codes"], 2, d, scales_B.dtype).sub_(1)
        return _scale_buckets_(t_D, scales_B, _bucket_length(d, self.bucket_size))


@dataclass(frozen=True)
class ScaledSign:
    """``(||x||_1 / d) sign(x)``: 1 bit per entry plus one scale.

    Payload: ``signs`` (bit 1 for ``x_i >= 0``, packed 8 per byte), ``scale`` (0-d), ``size``.
    """

    contractive: ClassVar[bool] = True  # ||x - C(x)||^2 = ||x||^2 - ||x||_1^2 / d

    @property
    def name(self) -> str:
        return "scaled_sign"

    def init(self, x_D: torch.Tensor) -> None:
        return None

    def compress(self, x_D: torch.Tensor, state: None) -> tuple[Payload, None]:
        x_D = check_flat(x_D, self.name)
        d = x_D.numel()
        scale = _finite_or_nan(_mean_abs(x_D.to(work_dtype(x_D))))
        payload = {
            "signs": pack_codes(x_D >= 0, 1),
            "scale": scale,
            "size": size_scalar(d, x_D.device),
        }
        return payload, state

    def decompress(self, payload: Payload) -> torch.Tensor:
        scale = payload["scale"]
        bits_D = unpack_codes(payload["signs"], 1, int(payload["size"]), scale.dtype)
        return bits_D.mul_(2).sub_(1).mul_(scale)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)


_MANTISSA = 2**23


@dataclass(frozen=True)
class NaturalCompression(_Stochastic):
    """Unbiased stochastic rounding of each float32 to a power of two (9 bits per entry).

    With ``|x| = 2^a (1 + m / 2^23)`` (mantissa field m), round up to ``2^(a+1)`` with
    probability ``m / 2^23``, else down to ``2^a``; for subnormals the same rule rounds to 0 or
    ``2^-126``. Payload: ``exponents`` (uint8 IEEE exponent field) and ``signs`` (packed bits).
    """

    seed: int = 0
    contractive: ClassVar[bool] = True  # E||x - C(x)||^2 <= ||x||^2 / 8

    def __post_init__(self) -> None:
        check_seed(self.seed, "natural_compression: seed")

    @property
    def name(self) -> str:
        return "natural_compression"

    def compress(self, x_D: torch.Tensor, state: Any) -> tuple[Payload, Any]:
        x_D = check_flat(x_D, self.name)
        seed, step = check_seed_state(state, "natural_compression")
        bits_D = x_D.to(torch.float32).contiguous().view(torch.int32)
        exponent_D = (bits_D >> 23).bitwise_and_(0xFF)
        g = generator(seed, step, x_D.device)
        u_D = torch.randint(
            0, _MANTISSA, x_D.shape, generator=g, dtype=torch.int32, device=x_D.device
        )
        # Round up w.p. m / 2^23 (u becomes that 0/1 event), except from exponent 254 (a finite
        # entry never becomes inf) or 255 (inf and nan keep theirs).
        up_D = u_D.lt_(bits_D & (_MANTISSA - 1)).mul_(exponent_D < 254)
        payload = {
            "exponents": exponent_D.add_(up_D).to(torch.uint8),
            "signs": pack_codes(bits_D < 0, 1),
        }
        return payload, next_state(state)

    def decompress(self, payload: Payload) -> torch.Tensor:
        exponents = payload["exponents"]
        # The float32 bit pattern: sign bit, exponent field, zero mantissa.
        bits_D = unpack_codes(payload["signs"], 1, exponents.numel(), torch.int32)
        return (
            bits_D.bitwise_left_shift_(8)
            .bitwise_or_(exponents)
            .bitwise_left_shift_(23)
            .view(torch.float32)
        )


def qsgd(levels: int, bucket_size: int | None = 512, seed: int = 0) -> QSGD:
    """QSGD with s = ``levels`` (>= 1) and a norm per ``bucket_size`` entries (None: one)."""
    return QSGD(levels=levels, bucket_size=bucket_size, seed=seed)


def terngrad(bucket_size: int | None = None, seed: int = 0) -> TernGrad:
    """TernGrad with ``max|x|`` per bucket (None: one scale for the whole message)."""
    return TernGrad(bucket_size=bucket_size, seed=seed)


def scaled_sign() -> ScaledSign:
    """EF-signSGD's ``||x||_1 / d * sign(x)``; wrap it in :func:`error_feedback`."""
    return ScaledSign()


def natural_compression(seed: int = 0) -> NaturalCompression:
    """Horvath et al.'s unbiased power-of-two rounding, 9 bits per entry."""
    return NaturalCompression(seed=seed)
