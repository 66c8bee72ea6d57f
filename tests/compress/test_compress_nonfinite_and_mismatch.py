"""Error feedback stops at a NaN/inf residual (it carried it into every later message, with no
word); messages of other settings are refused by sum_payloads in one line; a cast to a dtype
without a wire code is refused up front; a strided one-element tensor serializes; random-k
rescaled at ratio 0.5 is not contractive (its residual grew like a random walk)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch

from shoal.compress import (
    Compressor,
    bf16,
    count_sketch,
    deserialize,
    error_feedback,
    fp16,
    identity,
    layerwise,
    payload_nbytes,
    powersgd,
    qsgd,
    random_k,
    serialize,
    top_k,
)
from shoal.compress.cast import Cast

INNER: dict[str, Callable[[], Compressor]] = {
    "layerwise_top_k": lambda: layerwise(top_k(ratio=0.25), [(4, 4), (4,)]),
    "random_k": lambda: random_k(0.25),
    "qsgd": lambda: qsgd(16, bucket_size=4),
    "bf16": bf16,
    "powersgd": lambda: powersgd([(4, 4), (4,)], rank=1, min_compression_rate=0),
}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name", list(INNER))
def test_a_non_finite_input_stops_error_feedback_where_it_starts(name, bad):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qsgd's contractiveness is not the point here
        c = error_feedback(INNER[name]())
    x = torch.randn(20)
    state = c.init(x)
    _, state = c.compress(x, state)  # a clean message first
    x[3] = bad
    with pytest.raises(FloatingPointError, match=r"the residual holds NaN or inf"):
        c.compress(x, state)


def test_an_fp16_overflow_of_a_finite_input_names_the_range():
    c = error_feedback(fp16())
    x = torch.zeros(8)
    x[0] = 7e4  # finite in float32, inf in fp16: inf - inf = NaN stayed in the residual
    with pytest.raises(FloatingPointError, match="fp16 is finite up to 65504"):
        c.compress(x, c.init(x))


def test_top_k_sends_a_nan_entry_and_keeps_a_finite_residual():
    # The sparsifiers send such an entry rather than keep it: nothing to raise about.
    c = error_feedback(top_k(k=2))
    x = torch.tensor([1.0, math.nan, 0.5, -3.0])
    payload, state = c.compress(x, c.init(x))
    assert torch.isnan(c.decompress(payload)).any()
    assert bool(torch.isfinite(state["residual"]).all())


def test_sum_payloads_refuses_messages_of_other_settings_in_one_line():
    x = torch.randn(400)
    narrow, wide = count_sketch(50), count_sketch(100)
    tables = [narrow.compress(x, narrow.init(x))[0], wide.compress(x, wide.init(x))[0]]
    with pytest.raises(ValueError, match=r"count_sketch.sum_payloads: .* shape of 'table'"):
        narrow.sum_payloads(tables)
    few, many = random_k(0.1), random_k(0.2)
    values = [few.compress(x, few.init(x))[0], many.compress(x, many.init(x))[0]]
    with pytest.raises(ValueError, match=r"random_k.sum_payloads: .* shape of 'values'"):
        few.sum_payloads(values)
    r1, r2 = (powersgd([(20, 20)], rank=r, min_compression_rate=0) for r in (1, 2))
    ps = [c.project(x, c.init(x)) for c in (r1, r2)]
    with pytest.raises(ValueError, match=r"powersgd.sum_payloads: .* shape of 'p0'"):
        r1.sum_payloads(ps)


def test_a_cast_to_a_dtype_without_a_wire_code_is_refused_up_front():
    # float8 compressed fine, then nbytes failed with a TypeError.
    with pytest.raises(ValueError, match="float8_e4m3fn has no wire code; messages can be"):
        Cast(torch.float8_e4m3fn)


@pytest.mark.parametrize("make", [fp16, bf16, identity, lambda: Cast(torch.float64)])
def test_a_strided_one_element_tensor_serializes(make):
    # .contiguous() keeps a one-element view's stride of 2, and .view(uint8) failed on it.
    c = make()
    x = torch.tensor([3.0, 7.0, 5.0, 1.0])[::2][:1]
    assert x.stride() == (2,)
    payload = c.compress(x, c.init(x))[0]
    data = serialize(payload)
    assert len(data) == payload_nbytes(payload)
    assert torch.equal(c.decompress(deserialize(data)).double(), torch.tensor([3.0]).double())


def test_rescaled_random_k_is_contractive_only_above_half():
    assert random_k(0.5, unbiased=True).contractive is False
    assert random_k(0.51, unbiased=True).contractive is True
    assert random_k(0.1).contractive is True  # unscaled: a subset of exact entries


def test_a_message_decoded_by_a_compressor_of_other_settings_is_refused():
    """Each decoded silently: another sketch's table at 1.18 relative error, QSGD's norms of
    another bucket size at 0.06, PowerSGD's and layerwise's longer dense part cut short."""
    x = torch.randn(2048)
    wide = count_sketch(300)
    with pytest.raises(ValueError, match=r"count_sketch: the message's table is \(3, 300\)"):
        count_sketch(200).decompress(wide.compress(x, wide.init(x))[0])
    q256 = qsgd(8, bucket_size=256)
    with pytest.raises(ValueError, match="holds 8 bucket scale.s., and 2048 entries in buckets"):
        qsgd(8, bucket_size=512).decompress(q256.compress(x, q256.init(x))[0])
    shapes48, shapes40 = [(40, 51), (48,)], [(40, 51), (40,)]
    y = torch.randn(40 * 51 + 48)
    p48 = powersgd(shapes48, rank=1, min_compression_rate=0)
    with pytest.raises(ValueError, match="powersgd: the message's dense part holds 48 entries"):
        powersgd(shapes40, rank=1, min_compression_rate=0).decompress(
            p48.compress(y, p48.init(y))[0]
        )
    l48 = layerwise(top_k(ratio=0.1), shapes48)
    with pytest.raises(ValueError, match="layerwise: the message's dense part holds 48 entries"):
        layerwise(top_k(ratio=0.1), shapes40).decompress(l48.compress(y, l48.init(y))[0])
