"""``decompress_sum``: the sum of many decompressed messages, against decompressing each.

Reference: the left-to-right sum of the ``decompress``-ed messages (what a receiver without the
fast path computes). Sparsifiers (and the wrappers around them) must match it bit for bit;
PowerSGD's stacked product to float rounding; compressors without a fast path fall back to it.
"""

from __future__ import annotations

import pytest
import torch

from shoal.compress import (
    decompress_sum,
    dgc_top_k,
    error_feedback,
    init_for_worker,
    layerwise,
    powersgd,
    qsgd,
    threshold,
    top_k,
)

SHAPES = [torch.Size([400, 200]), torch.Size([200]), torch.Size([16, 3, 5, 5]), torch.Size([7])]
D = sum(s.numel() for s in SHAPES)  # 81,409


def left_sum(ts: list[torch.Tensor]) -> torch.Tensor:
    acc = ts[0].clone()
    for t in ts[1:]:
        acc += t
    return acc


def messages(compressor, n: int = 4, scale: float = 1.0):
    """``n`` workers' payloads, each from its own input and its own compressor state."""
    out = []
    for w in range(n):
        x = torch.randn(D, generator=torch.Generator().manual_seed(w)) * scale
        state = init_for_worker(compressor, x, w)
        out.append(compressor.compress(x, state)[0])
    return out


@pytest.mark.parametrize(
    "compressor",
    [
        top_k(ratio=0.001),  # blocked indices (D > 2**15)
        threshold(1.5),  # a different count per message
        dgc_top_k(0.01),
        error_feedback(top_k(ratio=0.05)),
        layerwise(top_k(ratio=0.1), SHAPES),  # blocked and flat (a 1,200-entry block)
        qsgd(4, bucket_size=64),  # no fast path: the fallback
    ],
    ids=lambda c: c.name,
)
@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_sum_is_bit_for_bit_the_sum_of_the_decompressed_messages(compressor, dtype) -> None:
    payloads = messages(compressor)
    reference = left_sum([compressor.decompress(p).to(dtype or torch.float32) for p in payloads])
    got = decompress_sum(compressor, payloads, dtype)
    assert got.dtype == reference.dtype
    assert torch.equal(got, reference)


def test_both_index_encodings_are_covered() -> None:
    assert "counts" in messages(top_k(ratio=0.001))[0]
    per_block = messages(layerwise(top_k(ratio=0.1), SHAPES))[0]
    assert "0.counts" in per_block and "2.indices" in per_block and "2.counts" not in per_block


def test_threshold_messages_overlap_and_differ_in_length() -> None:
    # The premise of the test above for threshold: messages share some indices, not all.
    payloads = messages(threshold(1.5))
    kept = [set(threshold(1.5).decompress(p).nonzero().flatten().tolist()) for p in payloads]
    assert len({len(k) for k in kept}) > 1
    assert kept[0] & kept[1] and kept[0] != kept[1]


@pytest.mark.parametrize("wrap", [False, True])
def test_powersgd_stacked_product_is_the_sum_to_rounding(wrap: bool) -> None:
    inner = powersgd(SHAPES, rank=2, min_compression_rate=0)
    compressor = error_feedback(inner) if wrap else inner
    payloads = messages(compressor)
    reference = left_sum([compressor.decompress(p) for p in payloads])
    torch.testing.assert_close(decompress_sum(compressor, payloads), reference)
    # The 1-D blocks travel dense: their sum is exact.
    one_d = slice(80_000, 80_200)
    assert torch.equal(decompress_sum(compressor, payloads)[one_d], reference[one_d])
    # A single message is its own decompression.
    assert torch.equal(decompress_sum(compressor, payloads[:1]), compressor.decompress(payloads[0]))


def test_powersgd_sums_half_precision_messages_in_the_asked_dtype() -> None:
    """Summed in float16 and cast after, two messages of 40,000 gave inf, not 80,000."""
    c = powersgd([(20, 30), (30,)], rank=2)
    x = torch.full((630,), 40_000.0, dtype=torch.float16)  # the dense (30,) block's
    x[:600] = 0.01  # the matrix's (P = M Q itself would overflow float16)
    payloads = [c.compress(x, c.init(x))[0] for _ in range(2)]
    got = decompress_sum(c, payloads, torch.float32)
    want = left_sum([c.decompress(p).to(torch.float32) for p in payloads])
    assert got.dtype == torch.float32 and bool(got.isfinite().all())
    torch.testing.assert_close(got, want, rtol=2e-3, atol=0)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one payload"):
        decompress_sum(top_k(ratio=0.1), [])
    short = top_k(ratio=0.1).compress(torch.randn(50), None)[0]
    long = top_k(ratio=0.1).compress(torch.randn(60), None)[0]
    with pytest.raises(ValueError, match="different lengths"):
        decompress_sum(top_k(ratio=0.1), [short, long])
    c = powersgd(SHAPES, rank=2, min_compression_rate=0)
    x = torch.randn(D)
    round_1 = c.project(x, c.init(x))
    with pytest.raises(ValueError, match="round-1"):
        decompress_sum(c, [round_1])


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_dgc_encoding_sums_sparse_and_dense_messages_bit_for_bit(dtype) -> None:
    from shoal.algorithms import DGC

    encoding = DGC(0.1, SHAPES).default_compressor  # (value, index) pairs, or dense when shorter
    payloads = []
    for w, density in enumerate((0.01, 0.8, 0.0, 0.3)):
        g = torch.Generator().manual_seed(w)
        x = torch.randn(D, generator=g) * (torch.rand(D, generator=g) < density)
        payloads.append(encoding.compress(x, encoding.init(x))[0])
    keys = [k for p in payloads for k in p]
    sparse = sum(k.endswith(".indices") for k in keys)
    assert 0 < sparse < sum(k.endswith(".values") for k in keys)  # both encodings occur
    reference = left_sum([encoding.decompress(p).to(dtype or torch.float32) for p in payloads])
    assert torch.equal(decompress_sum(encoding, payloads, dtype), reference)


def test_dgc_selection_is_what_its_message_sends() -> None:
    from shoal.compress.sparsify import sparse_indices

    selector = dgc_top_k(0.01, sample_ratio=0.05)
    x = torch.randn(D, generator=torch.Generator().manual_seed(0))
    state = selector.init(x)
    payload, _ = selector.compress(x, state)
    sent = sparse_indices(payload).sort().values
    assert torch.equal(selector.select(x, state).sort().values, sent)
