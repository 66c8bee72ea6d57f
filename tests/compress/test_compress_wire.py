"""The wire format: nbytes equals the serialized length, round trips, smallest index dtypes."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.compress import (
    Compressor,
    bf16,
    count_sketch,
    deserialize,
    dgc_top_k,
    error_feedback,
    fp16,
    identity,
    index_dtype,
    layerwise,
    natural_compression,
    payload_nbytes,
    powersgd,
    qsgd,
    random_k,
    scaled_sign,
    serialize,
    terngrad,
    threshold,
    top_k,
)
from shoal.compress.wire import DTYPE_CODES, parse_layout, serialize_layout

SHAPES = [torch.Size([16, 8]), torch.Size([16]), torch.Size([4, 2, 3, 3]), torch.Size([4])]
D = sum(math.prod(s) for s in SHAPES)


def all_compressors() -> list[Compressor]:
    return [
        identity(),
        fp16(),
        bf16(),
        top_k(ratio=0.1),
        top_k(k=7),
        random_k(0.25, seed=3),
        random_k(0.25, seed=3, unbiased=True),
        threshold(0.5),
        dgc_top_k(0.05, sample_ratio=0.1),
        qsgd(1),
        qsgd(4, bucket_size=32),
        qsgd(100),
        qsgd(20_000, bucket_size=None),
        terngrad(),
        terngrad(bucket_size=16),
        scaled_sign(),
        natural_compression(),
        powersgd(SHAPES, rank=2, min_compression_rate=0),
        powersgd(SHAPES, rank=1),
        count_sketch(32, depth=3),
        error_feedback(top_k(ratio=0.1)),
        error_feedback(powersgd(SHAPES, rank=1, min_compression_rate=0)),
        layerwise(top_k(ratio=0.2), SHAPES),
        layerwise(terngrad(), SHAPES),
        layerwise(random_k(0.5), SHAPES),
    ]


@pytest.mark.parametrize("compressor", all_compressors(), ids=lambda c: c.name)
def test_nbytes_is_serialized_length_and_round_trips(compressor: Compressor) -> None:
    x = torch.randn(D, generator=torch.Generator().manual_seed(0))
    state = compressor.init(x)
    for _ in range(2):  # the second call runs on warm state (residuals, counters, warm Q)
        payload, state = compressor.compress(x, state)
        data = serialize(payload)
        assert compressor.nbytes(payload) == len(data) == payload_nbytes(payload)
        back = deserialize(data)
        assert list(back) == list(payload)
        for key, t in payload.items():
            assert back[key].dtype == t.dtype and back[key].shape == t.shape
            assert torch.equal(back[key], t)
        assert torch.equal(compressor.decompress(back), compressor.decompress(payload))


def test_framing_is_what_the_docstring_says() -> None:
    payload = {"values": torch.arange(3, dtype=torch.float32), "size": torch.tensor(3)}
    data = serialize(payload)
    # count u16 | 6 "values" f32 [3] data | 4 "size" int64 () data
    expected = 2 + (3 + 6 + 4 + 12) + (3 + 4 + 0 + 8)
    assert len(data) == expected
    assert struct.unpack_from("<H", data, 0) == (2,)
    assert data[2] == 6 and data[3:9] == b"values"
    assert data[9] == DTYPE_CODES[torch.float32] and data[10] == 1
    assert struct.unpack_from("<I", data, 11) == (3,)


_DTYPES = list(DTYPE_CODES)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    n = draw(st.integers(0, 5))
    names = draw(st.lists(st.text(min_size=1, max_size=12), min_size=n, max_size=n, unique=True))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(_DTYPES))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        seed = draw(st.integers(0, 2**16))
        raw = torch.randint(
            0,
            256,
            (math.prod(shape) * torch.empty((), dtype=dtype).element_size(),),
            generator=torch.Generator().manual_seed(seed),
            dtype=torch.uint8,
        )
        t = raw.view(dtype).reshape(shape) if dtype != torch.bool else (raw > 127).reshape(shape)
        out[name] = t
    return out


@settings(max_examples=60, deadline=None)
@given(payloads())
def test_round_trip_is_bitwise_for_any_payload(payload: dict[str, torch.Tensor]) -> None:
    data = serialize(payload)
    assert payload_nbytes(payload) == len(data)
    back = deserialize(data)
    assert list(back) == list(payload)
    for key, t in payload.items():
        assert back[key].dtype == t.dtype and back[key].shape == t.shape
        # compare bit patterns: NaNs from random bytes must survive too
        assert torch.equal(back[key].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


@settings(max_examples=40, deadline=None)
@given(payloads())
def test_layout_plus_data_is_the_message(payload: dict[str, torch.Tensor]) -> None:
    layout = serialize_layout(payload)
    data = sum(t.numel() * t.element_size() for t in payload.values())
    assert len(layout) + data == len(serialize(payload)) == payload_nbytes(payload)
    assert parse_layout(layout) == [(k, t.dtype, tuple(t.shape)) for k, t in payload.items()]


def test_parse_layout_rejects_garbage() -> None:
    layout = serialize_layout({"a": torch.ones(4), "b": torch.ones(2, 3, dtype=torch.int16)})
    for bad in (layout[:-1], layout + b"\x00", serialize({"a": torch.ones(4)})):
        with pytest.raises(ValueError, match="not a Shoal|trailing"):
            parse_layout(bad)


def test_deserialize_rejects_garbage() -> None:
    data = serialize({"a": torch.ones(4)})
    with pytest.raises(ValueError, match="truncated|not a Shoal"):
        deserialize(data[:-1])
    with pytest.raises(ValueError, match="trailing"):
        deserialize(data + b"\x00")
    with pytest.raises(ValueError):
        deserialize(b"\x01")


def test_serialize_rejects_what_it_cannot_frame() -> None:
    with pytest.raises(TypeError, match="wire code"):
        serialize({"c": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="255"):
        serialize({"x" * 256: torch.ones(1)})


@pytest.mark.parametrize(
    ("d", "dtype"),
    [
        (1, torch.uint8),
        (256, torch.uint8),
        (257, torch.int16),
        (2**15, torch.int16),
        (2**15 + 1, torch.int32),
        (2**31, torch.int32),
        (2**31 + 1, torch.int64),
    ],
)
def test_index_dtype_is_the_smallest_that_fits(d: int, dtype: torch.dtype) -> None:
    assert index_dtype(d) == dtype
    info = torch.iinfo(dtype)
    assert info.max >= d - 1
    smaller = {torch.int16: torch.uint8, torch.int32: torch.int16, torch.int64: torch.int32}
    if dtype in smaller:
        assert torch.iinfo(smaller[dtype]).max < d - 1


@pytest.mark.parametrize(
    ("d", "dtype"), [(256, torch.uint8), (257, torch.int16), (40_000, torch.int32)]
)
def test_sparse_payloads_store_indices_in_that_dtype(d: int, dtype: torch.dtype) -> None:
    x = torch.randn(d, generator=torch.Generator().manual_seed(1))
    # Few kept entries, so even the 40,000-vector keeps the flat encoding (see
    # test_compress_sparsify.py for the blocked one).
    compressors: list[Compressor] = [top_k(k=5), dgc_top_k(1e-4)]
    if d < 2**15:
        compressors.append(threshold(1.0))
    for c in compressors:
        payload, _ = c.compress(x, c.init(x))
        assert payload["indices"].dtype == dtype
        assert torch.equal(c.decompress(payload)[payload["indices"].long()], payload["values"])


@pytest.mark.parametrize("compressor", all_compressors(), ids=lambda c: c.name)
def test_a_vector_that_requires_grad_or_is_strided_is_compressed_as_its_plain_copy(
    compressor: Compressor,
) -> None:
    """QSGD's norms and the count sketch's table kept the autograd graph (decompress failed
    in an in-place op); QSGD's norms of a strided view differed from its copy's by an ulp."""
    base = torch.randn(2 * D, generator=torch.Generator().manual_seed(1))
    plain = base[::2].clone()
    for x in (base[::2], plain.clone().requires_grad_()):
        got, _ = compressor.compress(x, compressor.init(x))
        want, _ = compressor.compress(plain, compressor.init(plain))
        assert serialize(got) == serialize(want)
        assert not compressor.decompress(got).requires_grad
