"""Quantizers against their definitions: unbiasedness (Monte Carlo), supports, bit budgets."""

from __future__ import annotations

import math

import pytest
import torch
from compress_helpers import gen
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.compress import (
    Compressor,
    bf16,
    fp16,
    natural_compression,
    qsgd,
    scaled_sign,
    terngrad,
)
from shoal.compress._common import code_bits, generator, pack_codes, unpack_codes


def monte_carlo(c: Compressor, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and the ``[n, d]`` draws of ``c`` on ``x``, from one call on ``x`` tiled n times.

    Valid because these quantizers draw independently per entry and every bucket of the tiled
    vector is a bucket of one copy (the callers choose bucket sizes dividing ``d``). That
    successive calls draw afresh is tested separately.
    """
    tiled = x.repeat(n)
    payload, _ = c.compress(tiled, c.init(tiled))
    draws = c.decompress(payload).to(torch.float64).view(n, x.numel())
    return draws.mean(0), draws


def assert_unbiased(mean: torch.Tensor, x: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """|mean - x| within 5 standard errors, ``sqrt(var / n)``, per entry (var from the
    definition, not estimated); entries with zero variance must match to rounding."""
    stderr = (var / n).sqrt()
    assert ((mean - x).abs() <= 5 * stderr + 1e-9 * x.abs().max()).all()


N = 4000


@pytest.mark.parametrize(("levels", "bucket_size"), [(1, 8), (4, 8), (4, 24), (15, 6)])
def test_qsgd_is_unbiased(levels: int, bucket_size: int) -> None:
    # Var of entry i: (||v_b|| / s)^2 p (1 - p), p = frac(s |v_i| / ||v_b||) (Alistarh et al.).
    x = torch.randn(24, generator=gen(0), dtype=torch.float64)
    c = qsgd(levels, bucket_size=bucket_size, seed=1)
    mean, _ = monte_carlo(c, x, N)
    b = bucket_size
    norms = torch.stack([x[i : i + b].norm() for i in range(0, x.numel(), b)])
    norm_i = norms.repeat_interleave(b)[: x.numel()]
    r = levels * x.abs() / norm_i
    p = r - r.floor()
    assert_unbiased(mean, x, (norm_i / levels) ** 2 * p * (1 - p), N)


@pytest.mark.parametrize("levels", [2**24, 2**30])
def test_qsgd_with_more_levels_than_float32_integers_stays_unbiased(levels: int) -> None:
    """float32 holds integers only up to 2**24: codes s + xi above it used to be rounded, so
    2e-7 (between levels 3 and 4 at s = 2**24) decoded to 2.38e-7 on every draw (+19%)."""
    x = torch.tensor([1.0, 2e-7])  # float32: its norm is 1 and 2e-7 is r = 2e-7 s levels
    c = qsgd(levels, bucket_size=2, seed=0)  # one bucket per copy of x
    mean, draws = monte_carlo(c, x, N)
    r = 2e-7 * levels
    p = r - math.floor(r)
    assert len(set(draws[:, 1].tolist())) == 2  # both neighbouring levels are drawn
    sd = math.sqrt(p * (1 - p) / N) / levels
    assert abs(float(mean[1]) - 2e-7) < 5 * sd + 1e-12


def test_qsgd_values_lie_on_the_levels_and_respect_the_variance_bound() -> None:
    x = torch.randn(64, generator=gen(2), dtype=torch.float64)
    s = 3
    c = qsgd(s, bucket_size=64, seed=0)
    mean, draws = monte_carlo(c, x, 400)
    q = draws * s / x.norm()
    assert torch.allclose(q, q.round(), atol=1e-9) and q.abs().max() <= s
    # Lemma 3.1: E||Q(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2
    mse = ((draws - x) ** 2).sum(1).mean()
    d = x.numel()
    assert mse <= min(d / s**2, math.sqrt(d) / s) * x.norm() ** 2


def test_terngrad_is_unbiased_and_ternary() -> None:
    x = torch.randn(30, generator=gen(3), dtype=torch.float64)
    c = terngrad(bucket_size=10, seed=4)
    mean, draws = monte_carlo(c, x, N)
    scale_i = x.view(3, 10).abs().amax(1).repeat_interleave(10)
    assert set((draws / scale_i).round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(draws.abs(), (draws != 0) * scale_i)
    # Var of entry i: s |x_i| - x_i^2 (Bernoulli(|x_i| / s) times s).
    assert_unbiased(mean, x, scale_i * x.abs() - x**2, N)


def bucket_of(d: int, bucket_size: int) -> list[list[int]]:
    return [list(range(i, min(i + bucket_size, d))) for i in range(0, d, bucket_size)]


@pytest.mark.parametrize(("levels", "bucket_size"), [(1, 7), (4, 7), (15, 4), (4, 512)])
def test_qsgd_is_its_definition_entry_by_entry(levels: int, bucket_size: int) -> None:
    # 23 entries: a last bucket shorter than the others (or one short bucket); zeros of both
    # signs. Given the same uniforms u_i (the compressor's stream for its seed and step), the
    # paper's rule per entry: r = s |x_i| / ||x_b||, l = floor(r), xi = l + 1 iff u_i < r - l.
    x = torch.randn(23, generator=gen(12), dtype=torch.float64)
    x[2], x[9] = 0.0, -0.0
    c = qsgd(levels, bucket_size=bucket_size, seed=3)
    payload, _ = c.compress(x, c.init(x))
    u = torch.rand(23, generator=generator(3, 0), dtype=torch.float64).tolist()
    expected = [0.0] * 23
    for bucket in bucket_of(23, bucket_size):
        norm = math.sqrt(sum(x[i].item() ** 2 for i in bucket))
        for i in bucket:
            r = levels * abs(x[i].item()) / norm
            xi = math.floor(r) + (u[i] < r - math.floor(r))
            expected[i] = math.copysign(norm * xi / levels, x[i].item())
    assert torch.allclose(c.decompress(payload), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("bucket_size", [None, 5, 7])
def test_terngrad_is_its_definition_entry_by_entry(bucket_size: int | None) -> None:
    # s_b = max |x| over the bucket; b_i = 1 iff u_i < |x_i| / s_b; output s_b sgn(x_i) b_i.
    x = torch.randn(23, generator=gen(13))
    x[4] = 0.0
    c = terngrad(bucket_size=bucket_size, seed=2)
    payload, _ = c.compress(x, c.init(x))
    u = torch.rand(23, generator=generator(2, 0)).tolist()
    expected = [0.0] * 23
    for bucket in bucket_of(23, bucket_size or 23):
        scale = max(abs(x[i].item()) for i in bucket)
        for i in bucket:
            kept = u[i] < abs(x[i].item()) / scale
            expected[i] = math.copysign(scale, x[i].item()) if kept else 0.0
    assert torch.allclose(c.decompress(payload), torch.tensor(expected), rtol=0, atol=0)


def test_natural_compression_is_unbiased_and_powers_of_two() -> None:
    x = torch.randn(40, generator=gen(5)) * torch.logspace(-30, 30, 40)
    x[0], x[1] = 0.0, 1e-40  # zero and a subnormal
    c = natural_compression(seed=6)
    mean, draws = monte_carlo(c, x, N)
    x64 = x.double()
    nz = draws != 0
    mantissa, _ = torch.frexp(draws[nz])
    assert torch.all(mantissa.abs() == 0.5)  # every nonzero output is +-2^a
    assert torch.all(torch.sign(draws[nz]) == torch.sign(x64.expand_as(draws)[nz]))
    low = torch.where(x64 == 0, x64, 2.0 ** torch.floor(torch.log2(x64.abs())))
    p = torch.where(low == 0, torch.zeros_like(low), (x64.abs() - low) / low.clamp_min(1e-300))
    p = torch.where(x.abs() < 2.0**-126, x64.abs() / 2.0**-126, p)
    low = torch.where(x.abs() < 2.0**-126, torch.full_like(low, 2.0**-126), low)
    assert_unbiased(mean, x64, low**2 * p * (1 - p), N)
    assert torch.all((draws.abs() <= 2 * x64.abs()) | (x64.abs() < 2.0**-126))


def test_natural_compression_edges_non_finite_and_the_largest_floats() -> None:
    # Non-finite entries go as +-inf; entries in [2^127, max] always round down to 2^127,
    # never up into inf (the one biased case, named in the module docstring).
    x = torch.tensor([math.inf, -math.inf, math.nan, 3.3e38, -(2.0**127), -3.4e38, 1.5])
    c = natural_compression(seed=3)
    state = c.init(x)
    for _ in range(50):
        payload, state = c.compress(x, state)
        y = c.decompress(payload)
        assert y[:3].tolist() == [math.inf, -math.inf, math.inf]
        assert y[3:6].tolist() == [2.0**127, -(2.0**127), -(2.0**127)]
        assert y[6].item() in (1.0, 2.0)


@pytest.mark.parametrize(
    "make", [lambda: qsgd(4, bucket_size=4), lambda: terngrad(bucket_size=4), scaled_sign]
)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_bucket_without_a_finite_scale_decodes_to_nan(make, bad: float) -> None:
    """Not a sign-flipped inf (what QSGD's codes made of an inf entry before): the whole bucket
    is NaN, and the other buckets decode as usual."""
    c = make()
    x = torch.tensor([1.0, bad, -2.0, 0.5, 1.0, -1.0, 2.0, 0.25])
    y = c.decompress(c.compress(x, c.init(x))[0])
    if isinstance(c, type(scaled_sign())):  # one scale for the whole message
        assert y.isnan().all()
    else:
        assert y[:4].isnan().all() and y[4:].isfinite().all()


def test_qsgd_of_a_norm_beyond_float32_is_nan_not_a_wrong_number() -> None:
    x = torch.tensor([3e38, 3e38])  # finite entries; ||x|| = 4.2e38 overflows float32
    y = qsgd(4).decompress(qsgd(4).compress(x, qsgd(4).init(x))[0])
    assert y.isnan().all()


@pytest.mark.parametrize(
    ("scale", "dtype"),
    [
        (1e20, torch.float32),  # squares overflow float32, the norm does not
        (1e-30, torch.float32),  # squares underflow to 0
        (1e200, torch.float64),
        (1e-200, torch.float64),
        (1e20, torch.bfloat16),
    ],
)
def test_qsgd_norms_do_not_overflow_or_underflow_in_their_squares(scale, dtype) -> None:
    """The norms were plain sums of squares in the work dtype: NaN messages for float32
    entries of 1e20 (finite norm), zeros for entries of 1e-30 (float64: 1e200, 1e-200)."""
    x = (torch.randn(1100, generator=gen(21), dtype=torch.float64) * scale).to(dtype)
    c = qsgd(4, bucket_size=512)
    payload, _ = c.compress(x, c.init(x))
    exact = [(v.double() / scale).norm() * scale for v in x.split(512)]
    torch.testing.assert_close(payload["norms"].double(), torch.stack(exact), rtol=1e-5, atol=0)
    y = c.decompress(payload)
    assert y.isfinite().all() and (y != 0).any()
    assert torch.equal(y.sign()[y != 0], x.to(y.dtype).sign()[y != 0])


@pytest.mark.parametrize("levels", [2**20, 2**30])
def test_many_levels_decode_a_tiny_vector_as_precisely_as_a_unit_one(levels) -> None:
    """The decoded step ``||x|| / s`` was a float32 subnormal for ``||x||`` near 1e-35: 2**30
    levels decoded such a vector 8% off, more levels giving a worse message."""
    x = torch.randn(20, generator=gen(22))
    c = qsgd(levels)
    errors = []
    for scale in (1.0, 1e-36):
        y = c.decompress(c.compress(x * scale, c.init(x))[0])
        assert y.dtype == torch.float32
        errors.append(float((y.double() / scale - x.double()).norm() / x.double().norm()))
    assert errors[1] < 2 * errors[0] + 1e-7, errors


@pytest.mark.parametrize("make", [lambda: qsgd(2, bucket_size=8), lambda: terngrad(bucket_size=8)])
def test_subnormal_scales_quantize_unbiased_and_zeros_stay_zero(make) -> None:
    """``|x|`` was multiplied by ``s / scale``, inf for a subnormal scale: every nonzero entry
    went out as +-scale (a mean of +-scale, not x) and zeros as NaN codes (decoded -scale)."""
    x = torch.tensor([0.0, 1e-41, -3e-41, 8e-41, 0.0, -2e-40, 5e-41, 1e-40])  # subnormals
    mean, draws = monte_carlo(make(), x, N)
    assert torch.equal(draws[:, x == 0], torch.zeros_like(draws[:, x == 0]))
    # Both variances are at most (||x|| / 2)^2 per entry (one bucket): 5 standard errors.
    bound = 5 * float(x.double().norm()) / 2 / math.sqrt(N)
    torch.testing.assert_close(mean, x.double(), rtol=0, atol=bound)


def test_natural_compression_takes_nine_bits_per_entry() -> None:
    x = torch.randn(800, generator=gen(7))
    c = natural_compression()
    payload, _ = c.compress(x, c.init(x))
    assert payload["exponents"].numel() == 800 and payload["signs"].numel() == 100


def test_scaled_sign_is_its_definition() -> None:
    x = torch.randn(37, generator=gen(8))
    x[3] = 0.0
    c = scaled_sign()
    payload, _ = c.compress(x, None)
    scale = x.abs().sum() / x.numel()
    expected = torch.where(x >= 0, scale, -scale)  # zero goes out as +scale (named deviation)
    assert torch.allclose(c.decompress(payload), expected)
    assert payload["signs"].numel() == math.ceil(37 / 8)


@pytest.mark.parametrize(("big", "dtype"), [(1e37, torch.float32), (1e307, torch.float64)])
def test_scaled_sign_scale_does_not_overflow_where_the_mean_fits(big, dtype) -> None:
    """The scale was a plain sum of ``|x|`` in the work dtype: 100 float32 entries of 1e37
    summed to inf, and the message decoded to NaN although ``||x||_1 / d = 1e37``."""
    x = torch.full((100,), big, dtype=dtype)
    x[::3] *= -1
    c = scaled_sign()
    payload, _ = c.compress(x, None)
    torch.testing.assert_close(payload["scale"], torch.tensor(big, dtype=dtype))
    torch.testing.assert_close(c.decompress(payload), x)  # every |x_i| is the mean
    # Where the plain sum is finite the scale is that sum over d, bit for bit.
    y = torch.randn(1000, generator=gen(9), dtype=dtype)
    assert torch.equal(c.compress(y, None)[0]["scale"], y.abs().sum() / 1000)


@pytest.mark.parametrize(
    ("levels", "bits", "dtype"),
    [
        (1, 2, torch.uint8),
        (7, 4, torch.uint8),
        (8, 8, torch.uint8),
        (127, 8, torch.uint8),
        (128, 16, torch.int16),
        (40_000, 32, torch.int32),
    ],
)
def test_qsgd_code_width(levels: int, bits: int, dtype: torch.dtype) -> None:
    d = 1000
    x = torch.randn(d, generator=gen(9))
    c = qsgd(levels)
    assert c.bits == bits
    payload, _ = c.compress(x, c.init(x))
    codes = payload["codes"]
    assert codes.dtype == dtype
    assert codes.numel() * codes.element_size() == math.ceil(d * bits / 8)
    assert payload["norms"].numel() == math.ceil(d / 512)


@settings(max_examples=50, deadline=None)
@given(
    bits=st.sampled_from([1, 2, 4, 8, 16, 32]),
    n=st.integers(0, 100),
    seed=st.integers(0, 2**16),
)
def test_pack_codes_round_trips(bits: int, n: int, seed: int) -> None:
    codes = torch.randint(0, 2**bits, (n,), generator=gen(seed), dtype=torch.int64)
    packed = pack_codes(codes, bits)
    assert packed.numel() * packed.element_size() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)
    # Quantizers hand over integer-valued floats and read floats back: the same bytes.
    assert torch.equal(pack_codes(codes.double(), bits), packed)
    assert torch.equal(unpack_codes(packed, bits, n, torch.float64), codes.double())
    if bits == 1:  # sign bits go in as bools
        assert torch.equal(pack_codes(codes.bool(), bits), packed)


def test_packed_layout_by_hand() -> None:
    # 2-bit codes 1, 2, 3, 0 | 1: first code in the low bits, the last byte zero-padded.
    assert pack_codes(torch.tensor([1, 2, 3, 0, 1]), 2).tolist() == [1 + (2 << 2) + (3 << 4), 1]
    assert pack_codes(torch.tensor([1, 0, 0, 1, 1, 1, 1, 0, 1]), 1).tolist() == [0b01111001, 1]
    assert pack_codes(torch.tensor([0xA, 0x3, 0xF]), 4).tolist() == [0x3A, 0xF]


def test_code_bits() -> None:
    assert [code_bits(n) for n in (2, 3, 4, 5, 16, 17, 256, 257)] == [1, 2, 2, 4, 4, 8, 8, 16]


def test_seeds_make_runs_reproducible_and_calls_and_workers_independent() -> None:
    x = torch.randn(100, generator=gen(10))
    for c in (qsgd(2), terngrad(), natural_compression()):
        a, state = c.compress(x, c.init(x, seed=1))
        b, _ = c.compress(x, c.init(x, seed=1))
        other, _ = c.compress(x, c.init(x, seed=2))
        again, _ = c.compress(x, state)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], other[k]) for k in a)
        assert not all(torch.equal(a[k], again[k]) for k in a)


def test_casts() -> None:
    x = torch.randn(50, generator=gen(11))
    for c, dtype in ((fp16(), torch.float16), (bf16(), torch.bfloat16)):
        payload, _ = c.compress(x, None)
        assert payload["values"].dtype == dtype
        y = c.decompress(payload)
        assert y.dtype == torch.float32 and torch.equal(y, x.to(dtype).float())
