"""Argument validation, the protocol, dtypes and devices for every compressor."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch

import shoal.compress as sc
from shoal.compress import (
    Compressor,
    bf16,
    count_sketch,
    dgc_top_k,
    error_feedback,
    fp16,
    identity,
    layerwise,
    natural_compression,
    powersgd,
    qsgd,
    random_k,
    scaled_sign,
    terngrad,
    threshold,
    top_k,
)

SHAPES = [torch.Size([16, 8]), torch.Size([16]), torch.Size([4, 2, 3, 3])]
D = sum(math.prod(s) for s in SHAPES)

FACTORIES: list[Callable[[], Compressor]] = [
    identity,
    fp16,
    bf16,
    lambda: top_k(ratio=0.1),
    lambda: random_k(0.2, unbiased=True),
    lambda: threshold(0.5),
    lambda: dgc_top_k(0.05, sample_ratio=0.2),
    lambda: qsgd(4, bucket_size=16),
    lambda: terngrad(bucket_size=16),
    scaled_sign,
    natural_compression,
    lambda: powersgd(SHAPES, rank=2, min_compression_rate=0),
    lambda: count_sketch(64, 3),
    lambda: error_feedback(top_k(ratio=0.1)),
    lambda: layerwise(qsgd(2), SHAPES),
]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_exports() -> None:
    assert sorted(sc.__all__) == sorted(set(sc.__all__))
    for name in sc.__all__:
        assert hasattr(sc, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f().name)
def test_protocol_devices_and_shapes(factory: Callable[[], Compressor], device: str) -> None:
    c = factory()
    assert isinstance(c, Compressor)
    x = torch.randn(D, generator=torch.Generator().manual_seed(0)).to(device)
    state = c.init(x)
    payload, state = c.compress(x, state)
    assert all(t.device.type == device for t in payload.values())
    y = c.decompress(payload)
    assert y.shape == x.shape and y.device == x.device and y.is_floating_point()
    assert c.nbytes(payload) == len(sc.serialize(payload))
    # the receiver's copy from the wire decompresses to the same vector
    back = sc.deserialize(sc.serialize(payload), device=device)
    assert torch.equal(c.decompress(back), y)
    # and reruns from the same state are reproducible
    again, _ = c.compress(x, c.init(x))
    first, _ = c.compress(x, c.init(x))
    assert all(torch.equal(again[k], first[k]) for k in first)


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f().name)
def test_rejects_non_flat_and_non_float_input(factory: Callable[[], Compressor]) -> None:
    c = factory()
    x = torch.randn(D)
    with pytest.raises(ValueError, match="1-D|flat"):
        c.compress(x.view(2, -1), c.init(x))
    with pytest.raises(TypeError):
        c.compress(torch.arange(D), c.init(x))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: top_k(), "exactly one"),
        (lambda: top_k(ratio=0.1, k=3), "exactly one"),
        (lambda: top_k(ratio=0.0), "ratio"),
        (lambda: top_k(ratio=1.5), "ratio"),
        (lambda: top_k(k=0), "k must be"),
        (lambda: random_k(0.0), "ratio"),
        (lambda: threshold(-1.0), "tau"),
        (lambda: threshold(float("nan")), "tau"),
        (lambda: dgc_top_k(2.0), "ratio"),
        (lambda: dgc_top_k(0.01, sample_ratio=0.0), "sample_ratio"),
        (lambda: dgc_top_k(0.01, lower_bound=1.5), "lower_bound"),
        (lambda: dgc_top_k(0.01, upper_bound=0.5), "upper_bound"),
        (lambda: qsgd(0), "levels"),
        (lambda: qsgd(cast(Any, 2.5)), "levels"),
        (lambda: qsgd(2, bucket_size=0), "bucket_size"),
        (lambda: terngrad(bucket_size=-1), "bucket_size"),
        (lambda: powersgd(SHAPES, rank=0), "rank"),
        (lambda: count_sketch(0), "width"),
        (lambda: count_sketch(8, depth=0), "depth"),
        (lambda: layerwise(top_k(k=1), cast(Any, "abc")), "shapes"),
        (lambda: layerwise(top_k(k=1), [(-2, 3), (3, 4)]), "negative sizes"),
        (lambda: top_k(ratio=cast(Any, True)), "ratio"),
    ],
)
def test_bad_arguments_raise_value_error(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_state_from_another_compressor_is_rejected() -> None:
    x = torch.randn(10)
    with pytest.raises(ValueError, match="init"):
        qsgd(2).compress(x, None)
    with pytest.raises(ValueError, match="init"):
        error_feedback(top_k(k=1)).compress(x, cast(Any, None))
    with pytest.raises(ValueError, match="init"):
        layerwise(top_k(k=1), [(2, 5)]).compress(x, {})


def test_identity_sums_only_messages_of_one_length() -> None:
    c = identity()
    messages = [c.compress(torch.ones(n), None)[0] for n in (3, 4)]
    with pytest.raises(ValueError, match=r"differ in the shape of 'values' \(\(3,\) and \(4,\)\)"):
        c.sum_payloads(messages)


def test_empty_vectors() -> None:
    x = torch.zeros(0)
    compressors: list[Compressor] = [
        top_k(k=1),
        random_k(0.5),
        threshold(0.1),
        dgc_top_k(0.1),
        qsgd(2),
        terngrad(),
        scaled_sign(),
        natural_compression(),
        count_sketch(4),
    ]
    for c in compressors:
        payload, _ = c.compress(x, c.init(x))
        assert c.decompress(payload).numel() == 0
        assert c.nbytes(payload) == len(sc.serialize(payload))
