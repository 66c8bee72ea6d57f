"""Error feedback (mass conservation) and per-layer compression."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import torch
from compress_helpers import gen
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.compress import (
    Compressor,
    dgc_top_k,
    error_feedback,
    identity,
    layerwise,
    powersgd,
    qsgd,
    random_k,
    scaled_sign,
    terngrad,
    threshold,
    top_k,
)

SPARSIFIERS: dict[str, Callable[[], Compressor]] = {
    "top_k": lambda: top_k(ratio=0.05),
    "top_k_1": lambda: top_k(k=1),
    "dgc": lambda: dgc_top_k(0.01, sample_ratio=0.05),
    "threshold": lambda: threshold(1.5),
    "random_k": lambda: random_k(0.1, seed=3),
}


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(SPARSIFIERS)),
    d=st.integers(1, 3000),
    steps=st.integers(1, 5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_error_feedback_conserves_mass_bit_for_bit_for_sparsifiers(
    name: str, d: int, steps: int, dtype: torch.dtype, seed: int
) -> None:
    """Each step: decompress(sent) + new residual == x + old residual, with torch.equal."""
    c = error_feedback(SPARSIFIERS[name]())
    g = gen(seed)
    x = torch.randn(d, generator=g, dtype=dtype)
    state = c.init(x)
    assert torch.equal(state["residual"], torch.zeros_like(x))
    for _ in range(steps):
        x = torch.randn(d, generator=g, dtype=dtype) * torch.rand(1, generator=g, dtype=dtype) * 10
        accumulated = x + state["residual"]
        payload, state = c.compress(x, state)
        sent = c.decompress(payload)
        assert torch.equal(sent + state["residual"], accumulated)
        kept = sent != 0
        assert torch.all(state["residual"][kept] == 0)  # what is sent leaves the memory


@pytest.mark.parametrize(
    "inner",
    [top_k(ratio=0.01), top_k(ratio=0.3), dgc_top_k(0.01), threshold(2.0)],
    ids=lambda c: c.name,
)
def test_in_place_residual_equals_decompress_and_subtract(inner: Compressor) -> None:
    """The sparsifiers' in-place residual (blocked and flat index encodings, d > 2**15) is
    ``accumulated - decompress(payload)`` bit for bit, and leaves the caller's input and
    state untouched."""
    c = error_feedback(inner)
    for accumulated, payload, residual in residual_steps(c, 100_003, seed=11):
        assert torch.equal(residual, accumulated - c.decompress(payload))


def test_powersgd_in_place_residual_is_accumulated_minus_decompressed() -> None:
    """PowerSGD's fused residual: ``M - P Q^T`` per matrix to rounding, the dense (1-D and
    too-small) blocks exactly zero, the caller's input and state untouched."""
    shapes = [torch.Size([40, 30]), torch.Size([30]), torch.Size([8, 2, 3, 3])]
    c = error_feedback(powersgd(shapes, rank=2, min_compression_rate=0))
    for accumulated, payload, residual in residual_steps(c, 1374, seed=12):
        expected = accumulated - c.decompress(payload)
        torch.testing.assert_close(residual, expected, rtol=0, atol=1e-6)
        assert torch.equal(residual[1200:1230], torch.zeros(30))
        assert residual[:1200].abs().max() > 0.1  # rank 2 of 30 drops a lot


def residual_steps(c: Any, d: int, seed: int, steps: int = 3) -> Iterator[tuple]:
    """``(accumulated input, payload, new residual)`` of ``steps`` compressions of fresh
    Gaussian inputs, each checked to leave the caller's input and state untouched."""
    g = gen(seed)
    x = torch.randn(d, generator=g)
    state = c.init(x)
    for _ in range(steps):
        x_before, residual_before = x.clone(), state["residual"].clone()
        accumulated = x + state["residual"]
        payload, new_state = c.compress(x, state)
        assert torch.equal(x, x_before) and torch.equal(state["residual"], residual_before)
        yield accumulated, payload, new_state["residual"]
        state, x = new_state, torch.randn(d, generator=g)


def test_error_feedback_eventually_sends_everything() -> None:
    """With inputs only at step 0, top-k with memory drains the residual in ceil(d / k) steps."""
    x = torch.randn(100, generator=gen(1))
    c = error_feedback(top_k(k=10))
    state = c.init(x)
    total = torch.zeros(100)
    for t in range(10):
        payload, state = c.compress(x if t == 0 else torch.zeros(100), state)
        total += c.decompress(payload)
    assert torch.equal(total, x) and torch.equal(state["residual"], torch.zeros(100))


@pytest.mark.parametrize(
    "inner", [qsgd(8, bucket_size=64, seed=1), scaled_sign(), identity()], ids=lambda c: c.name
)
def test_error_feedback_residual_is_the_compression_error(inner: Compressor) -> None:
    x = torch.randn(64, generator=gen(2))
    c = error_feedback(inner)
    state = c.init(x)
    for _ in range(3):
        accumulated = x + state["residual"]
        payload, state = c.compress(x, state)
        assert torch.allclose(c.decompress(payload) + state["residual"], accumulated, atol=1e-6)
    assert c.nbytes(payload) == inner.nbytes(payload)


def test_error_feedback_forwards_the_seed_and_the_homomorphic_flag() -> None:
    x = torch.randn(50, generator=gen(3))
    c = error_feedback(random_k(0.2, seed=0))
    assert c.homomorphic and not error_feedback(top_k(k=3)).homomorphic
    a, _ = c.compress(x, c.init(x, seed=5))
    assert int(a["seed"]) == 5
    with pytest.raises(TypeError):
        error_feedback(top_k(k=3)).sum_payloads([a])
    with pytest.raises(TypeError, match="wraps a compressor"):
        error_feedback(cast(Any, "top_k"))


# ---- layerwise --------------------------------------------------------------------------

SHAPES = [torch.Size([10, 4]), torch.Size([10]), torch.Size([3, 2, 3, 3]), torch.Size([3])]
D = sum(math.prod(s) for s in SHAPES)


def split(x: torch.Tensor) -> list[torch.Tensor]:
    out, at = [], 0
    for s in SHAPES:
        out.append(x[at : at + math.prod(s)])
        at += math.prod(s)
    return out


def test_layerwise_compresses_each_block_and_sends_1d_blocks_dense() -> None:
    x = torch.randn(D, generator=gen(4))
    c = layerwise(top_k(ratio=0.25), SHAPES)
    payload, _ = c.compress(x, c.init(x))
    assert torch.equal(payload["dense"], torch.cat([split(x)[1], split(x)[3]]))
    y = split(c.decompress(payload))
    for i in (0, 2):  # the same as compressing the block on its own
        alone, _ = top_k(ratio=0.25).compress(split(x)[i], None)
        assert torch.equal(y[i], top_k(ratio=0.25).decompress(alone))
    assert torch.equal(y[1], split(x)[1]) and torch.equal(y[3], split(x)[3])
    assert set(payload) == {
        "0.values",
        "0.indices",
        "0.size",
        "2.values",
        "2.indices",
        "2.size",
        "dense",
    }


def test_layerwise_per_layer_scales_and_custom_skip_rule() -> None:
    x = torch.randn(D, generator=gen(5))
    c = layerwise(terngrad(seed=1), SHAPES, skip=lambda shape: math.prod(shape) < 20)
    payload, _ = c.compress(x, c.init(x))
    assert payload["0.scales"] == split(x)[0].abs().max()
    assert payload["2.scales"] == split(x)[2].abs().max()
    assert payload["dense"].numel() == 13


@pytest.mark.parametrize("feedback", [False, True], ids=["plain", "error_feedback_inside"])
def test_layerwise_gives_blocks_distinct_seeds(feedback: bool) -> None:
    # Through error_feedback too: it has no seed of its own, and the blocks used to share one.
    shapes = [torch.Size([8, 8]), torch.Size([8, 8])]
    x = torch.ones(128)
    inner = random_k(0.25, seed=0)
    c = layerwise(error_feedback(inner) if feedback else inner, shapes)
    payload, _ = c.compress(x, c.init(x))
    y = c.decompress(payload)
    assert not torch.equal(y[:64] != 0, y[64:] != 0)


def test_layerwise_with_error_feedback_inside_conserves_mass() -> None:
    c = layerwise(error_feedback(top_k(ratio=0.1)), SHAPES)
    g = gen(6)
    x = torch.randn(D, generator=g)
    state = c.init(x)
    for _ in range(3):
        x = torch.randn(D, generator=g)
        payload, new_state = c.compress(x, state)
        sent = split(c.decompress(payload))
        for i in ("0", "2"):
            b = int(i)
            assert torch.equal(
                sent[b] + new_state[i]["residual"], split(x)[b] + state[i]["residual"]
            )
        state = new_state


def test_layerwise_validation() -> None:
    with pytest.raises(ValueError, match="entries"):
        c = layerwise(top_k(k=1), SHAPES)
        c.init(torch.zeros(D - 1))
    with pytest.raises(ValueError, match="shapes"):
        layerwise(top_k(k=1), [])


@pytest.mark.parametrize(
    "x", [torch.ones(1), torch.ones(7), torch.ones(10, dtype=torch.float16)], ids=str
)
def test_an_input_unlike_the_states_residual_is_refused(x) -> None:
    # A length-1 input broadcast into a 10-entry message, length 7 failed inside torch, and a
    # half-precision one silently sent float32 and kept a float32 residual.
    ef = error_feedback(top_k(ratio=0.5))
    state = ef.init(torch.zeros(10))
    with pytest.raises(ValueError, match="the state's residual is \\(10,\\) torch.float32"):
        ef.compress(x, state)
