"""The ``contractive`` flag against its definition, and error feedback's warning.

A compressor that declares ``contractive`` must satisfy ``E||x - C(x)||^2 <= ||x||^2`` on every
input tried (the mean over draws for the stochastic ones); one that declares it is not must
break it on an ordinary Gaussian vector (TernGrad with short buckets: on its worst case). Error
feedback warns exactly for the latter, and the warning is earned: with a constant input, a
non-expansive compressor's residual grows at most linearly (``||e_t|| <= t ||x||``), while the
flagged ones' grows geometrically.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from shoal.compress import (
    Compressor,
    bf16,
    count_sketch,
    dgc_top_k,
    error_feedback,
    fp16,
    identity,
    is_contractive,
    layerwise,
    lgreco_powersgd,
    lgreco_qsgd,
    lgreco_top_k,
    natural_compression,
    powersgd,
    qsgd,
    random_k,
    scaled_sign,
    terngrad,
    threshold,
    top_k,
)
from shoal.compress.base import init_for_worker

SHAPES = [torch.Size([32, 48]), torch.Size([48]), torch.Size([16, 8, 3, 3])]
D = sum(s.numel() for s in SHAPES)  # 3,744

CONTRACTIVE: list[Compressor] = [
    identity(),
    fp16(),
    bf16(),
    top_k(0.01),
    threshold(0.5),
    dgc_top_k(0.05),
    random_k(0.1),
    random_k(0.6, unbiased=True),
    qsgd(32, bucket_size=512),
    terngrad(bucket_size=4),
    terngrad(bucket_size=9),
    scaled_sign(),
    natural_compression(),
    powersgd(SHAPES, 2),
    powersgd(SHAPES, 1, power_iterations=2, warm_start=False),
    layerwise(scaled_sign(), SHAPES),
]
NOT_CONTRACTIVE: list[Compressor] = [
    qsgd(4),  # buckets of 512: s^2 = 16 < 512
    qsgd(4, bucket_size=None),  # one bucket of the whole message
    terngrad(),
    terngrad(bucket_size=64),
    random_k(0.1, unbiased=True),
    count_sketch(100),
    layerwise(qsgd(2), SHAPES),
]


def _worst_for_terngrad(b: int) -> torch.Tensor:
    """Buckets of one 1 and ``b - 1`` entries at ``(sqrt(b) - 1) / (b - 1)``: TernGrad's error
    is then ``(sqrt(b) - 1) / 2 ||x||^2``, its largest."""
    bucket = torch.full((b,), (b**0.5 - 1) / (b - 1))
    bucket[0] = 1.0
    return bucket.repeat(D // b + 1)[:D]


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(D, generator=g)
    heavy = torch.distributions.StudentT(1.5).sample((D,))  # Cauchy-like tails
    sparse = torch.zeros(D)
    sparse[torch.randperm(D, generator=g)[:20]] = torch.randn(20, generator=g) * 100
    return [
        gaussian,
        heavy,
        sparse,
        _worst_for_terngrad(4),
        torch.full((D,), -0.25),
        torch.zeros(D),
    ]


def _mean_error(c: Compressor, x: torch.Tensor, draws: int) -> float:
    """``mean ||x - C(x)||^2`` over ``draws`` independent workers' first messages."""
    total = 0.0
    for w in range(draws):
        payload, _ = c.compress(x, init_for_worker(c, x, w))
        total += float((x - c.decompress(payload).to(x.dtype)).double().pow(2).sum())
    return total / draws


@pytest.mark.parametrize("c", CONTRACTIVE, ids=lambda c: c.name)
def test_declared_contractive_compressors_do_not_expand(c: Compressor) -> None:
    assert is_contractive(c) is True
    torch.manual_seed(0)  # the Student-t sample
    for x in _inputs():
        # 64 draws: the mean of a squared error at most ||x||^2 / 8 (natural compression) or
        # (d/k - 1)||x||^2 = 0.67||x||^2 (random-k at 0.6) stays below ||x||^2 with room.
        err = _mean_error(c, x, draws=64)
        assert err <= float(x.double().pow(2).sum()) * (1 + 1e-6) + 1e-9, c.name


@pytest.mark.parametrize("c", NOT_CONTRACTIVE, ids=lambda c: c.name)
def test_declared_non_contractive_compressors_expand_some_vector(c: Compressor) -> None:
    assert is_contractive(c) is False
    # A Gaussian vector, or TernGrad's worst case where its buckets are short (a Gaussian
    # bucket of 64 entries is not expanded: 0.9 ||x||^2).
    x = _worst_for_terngrad(64) if c == terngrad(bucket_size=64) else _inputs()[0]
    assert _mean_error(c, x, draws=16) > 1.5 * float(x.double().pow(2).sum()), c.name


def test_lgreco_is_contractive_when_every_level_is() -> None:
    assert is_contractive(lgreco_top_k(SHAPES)) is True
    assert is_contractive(lgreco_powersgd(SHAPES)) is True
    assert is_contractive(lgreco_qsgd(SHAPES)) is False  # s = 1 and 7 with buckets of 512
    assert is_contractive(lgreco_qsgd(SHAPES, levels=32767, choices=(32767,))) is True


def test_a_compressor_that_does_not_say_is_unknown() -> None:
    class Plain:  # the protocol's four methods, no flag
        name = "plain"

    assert is_contractive(Plain()) is None


@pytest.mark.parametrize("c", NOT_CONTRACTIVE, ids=lambda c: c.name)
def test_error_feedback_warns_around_a_non_contractive_compressor(c: Compressor) -> None:
    with pytest.warns(UserWarning, match="not contractive"):
        error_feedback(c)


def test_error_feedback_is_quiet_around_contractive_compressors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for c in CONTRACTIVE:
            error_feedback(c)


@pytest.mark.parametrize(
    ("c", "bounded"),
    [(top_k(0.01), True), (scaled_sign(), True), (powersgd(SHAPES, 1), True),
     (count_sketch(100), False), (qsgd(2), False), (random_k(0.1, unbiased=True), False)],
    ids=lambda v: getattr(v, "name", str(v)),
)  # fmt: skip
def test_residual_of_a_constant_input(c: Compressor, bounded: bool) -> None:
    x = _inputs()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the flagged ones warn, as tested above
        ef = error_feedback(c)
    state = init_for_worker(ef, x, 0)
    for t in range(1, 21):
        _, state = ef.compress(x, state)
        ratio = float(state["residual"].norm() / x.norm())
        if bounded:  # ||e_t|| <= ||x + e_{t-1}|| <= t ||x|| for a non-expansive compressor
            assert ratio <= t * (1 + 1e-5), (c.name, t, ratio)
    if not bounded:
        assert not ratio < 1e3, (c.name, ratio)  # NaN or inf count as grown
