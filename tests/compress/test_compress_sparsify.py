"""Sparsifiers against their definitions; DGC against a transcription of its reference code."""

from __future__ import annotations

import math

import pytest
import torch
from compress_helpers import gen
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.compress import dgc_top_k, error_feedback, random_k, serialize, threshold, top_k
from shoal.compress.sparsify import (
    DGCPlan,
    dgc_plan,
    dgc_select,
    random_indices,
    sparse_decompress,
    sparse_indices,
    sparse_payload,
    top_k_indices,
)

# ---- top-k ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(1, 300),
    k_frac=st.floats(0.0, 1.0),
    scale=st.floats(-30, 30),
    seed=st.integers(0, 2**16),
)
def test_top_k_of_a_k_sparse_vector_is_itself(
    d: int, k_frac: float, scale: float, seed: int
) -> None:
    g = gen(seed)
    k = max(1, round(k_frac * d))
    support = torch.randperm(d, generator=g)[:k]
    values = torch.randn(k, generator=g) * 10.0**scale
    values[values == 0] = 1.0  # k-sparse means k nonzeros
    x = torch.zeros(d)
    x[support] = values
    c = top_k(k=k)
    payload, _ = c.compress(x, None)
    assert torch.equal(c.decompress(payload), x)
    assert payload["values"].numel() == k


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 500), ratio=st.floats(0.001, 1.0), seed=st.integers(0, 2**16))
def test_top_k_keeps_the_largest_magnitudes(d: int, ratio: float, seed: int) -> None:
    x = torch.randn(d, generator=gen(seed), dtype=torch.float64)  # no ties, almost surely
    c = top_k(ratio=ratio)
    payload, _ = c.compress(x, None)
    k = max(1, min(d, math.ceil(round(ratio * d, 9))))
    assert payload["values"].numel() == k
    kept = set(sparse_indices(payload).tolist())
    assert kept == set(x.abs().argsort(descending=True)[:k].tolist())
    assert torch.equal(payload["values"], x[sparse_indices(payload)])


def test_top_k_ratio_rounding_and_k_cap() -> None:
    x = torch.randn(100, generator=gen(0))
    assert top_k(ratio=0.07).compress(x, None)[0]["values"].numel() == 7  # not ceil(7.000...1)
    assert top_k(k=1000).compress(x, None)[0]["values"].numel() == 100


@pytest.mark.parametrize("d", [1000, 3 * 2**18 + 5])  # the second spans several |x| chunks
def test_threshold_is_its_definition(d: int) -> None:
    x = torch.randn(d, generator=gen(1))
    x[[0, d // 2, d - 1]] = torch.tensor([0.7, -math.inf, math.nan])  # tie, inf, NaN
    c = threshold(0.7)
    payload, _ = c.compress(x, None)
    # |x| >= 0.7, and the NaN: it is sent, not left behind (in an error-feedback residual)
    expected = torch.where((x.abs() >= 0.7) | x.isnan(), x, torch.zeros_like(x))
    torch.testing.assert_close(c.decompress(payload), expected, rtol=0, atol=0, equal_nan=True)


def test_a_positive_threshold_never_sends_zeros() -> None:
    # tau = 1e-8 is 0 in float16: |x| >= 0 sent every exact zero, values and indices.
    x = torch.tensor([0.0, 1e-3, 0.0, -2.0], dtype=torch.float16)
    payload, _ = threshold(1e-8).compress(x, None)
    assert payload["values"].tolist() == x[[1, 3]].tolist()
    assert threshold(1e-8).decompress(payload).equal(x)


@pytest.mark.parametrize("make", [lambda: threshold(0.5), lambda: dgc_top_k(0.01)])
def test_sparsifiers_send_nan_rather_than_keep_it_in_the_residual(make) -> None:
    x = torch.randn(100_000, generator=gen(3))
    x[12_345] = math.nan
    ef = error_feedback(make())
    payload, state = ef.compress(x, ef.init(x))
    assert ef.decompress(payload)[12_345].isnan()
    assert not state["residual"].isnan().any()


# ---- random-k ---------------------------------------------------------------------------


def test_random_k_sends_only_values_and_regenerates_indices() -> None:
    x = torch.randn(1000, generator=gen(2))
    c = random_k(0.05, seed=11)
    state = c.init(x)
    p1, state = c.compress(x, state)
    p2, state = c.compress(x, state)
    assert set(p1) == {"values", "seed", "step", "size"}
    assert p1["values"].numel() == 50
    # 50 float32 values + three scalars, with framing: 2 + (3+6+4+200) + (3+4+8)*2 + (3+4+2)
    assert c.nbytes(p1) == len(serialize(p1)) == 2 + 213 + 30 + 9
    y1, y2 = c.decompress(p1), c.decompress(p2)
    assert (y1 != 0).sum() == 50
    assert torch.equal(y1[y1 != 0], x[y1 != 0])
    assert not torch.equal(y1 != 0, y2 != 0)  # the step counter moves the mask
    # same seed on another worker: same mask in the same round
    other = torch.randn(1000, generator=gen(3))
    q1, _ = c.compress(other, c.init(other))
    assert torch.equal(c.decompress(q1) != 0, y1 != 0)
    # a per-worker seed gives a different mask
    r1, _ = c.compress(other, c.init(other, seed=12))
    assert not torch.equal(c.decompress(r1) != 0, y1 != 0)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("d, k", [(12, 3), (96, 4)], ids=["permutation", "sparse-draws"])
def test_random_k_expectation(unbiased: bool, d: int, k: int) -> None:
    """Unbiased: E[C(x)] = x; biased: E[C(x)] = (k/d) x. Monte Carlo with a 5-sigma band.

    Per entry the sent value is ``a x_i`` with probability k/d, ``a = d/k`` (unbiased) or 1,
    so the variance is ``a^2 x_i^2 (k/d)(1 - k/d)`` and the mean of n draws has standard
    error ``sqrt(var / n)``. Both ways of drawing the indices (a permutation for dense
    masks, deduplicated draws for sparse ones) are covered.
    """
    n = 2500
    x = torch.randn(d, generator=gen(4), dtype=torch.float64)
    c = random_k(k / d, seed=5, unbiased=unbiased)
    state = c.init(x)
    total = torch.zeros(d, dtype=torch.float64)
    for _ in range(n):
        payload, state = c.compress(x, state)
        total += c.decompress(payload)
    mean = total / n
    a, p = (d / k if unbiased else 1.0), k / d
    target = x if unbiased else p * x
    stderr = (a**2 * x**2 * p * (1 - p) / n).sqrt()
    assert ((mean - target).abs() <= 5 * stderr + 1e-12).all()


@pytest.mark.parametrize("d, k", [(64, 8), (1024, 10), (102_400, 1000)])
def test_random_indices_are_k_distinct_sorted_and_uniform(d: int, k: int) -> None:
    """The sparse draw (k <= d/8): k distinct in-range indices, the same for the same
    (seed, step); over many steps each index is chosen with probability k/d (5 sigma)."""
    steps = 4000 if d <= 1000 else 40
    counts = torch.zeros(d)
    for step in range(steps):
        idx = random_indices(d, k, 7, step, torch.device("cpu"))
        assert idx.numel() == k and idx.unique().numel() == k
        assert int(idx.min()) >= 0 and int(idx.max()) < d
        assert torch.equal(idx, idx.sort().values)
        counts[idx] += 1
    assert torch.equal(idx, random_indices(d, k, 7, steps - 1, torch.device("cpu")))
    # Counts over 64 equal bins of indices (each index alone where that keeps >= 25 per bin
    # expected): Binomial(steps * k, bin / d) within 5 sigma. A draw that favoured small
    # indices (e.g. the first k of the sorted distinct draws) fails this.
    bins = counts.view(64, -1).sum(1) if d >= 1000 else counts
    p = bins.numel() ** -1
    sigma = math.sqrt(steps * k * p * (1 - p))
    assert ((bins - steps * k * p).abs() <= 5 * sigma).all()
    if d == 64:  # with this much repetition, also pairs: no pair favoured or avoided
        pairs = torch.zeros(d, d)
        for step in range(steps):
            idx = random_indices(d, k, 8, step, torch.device("cpu"))
            pairs[idx[:, None], idx[None, :]] += 1
        q = k * (k - 1) / (d * (d - 1))
        off = ~torch.eye(d, dtype=torch.bool)
        assert ((pairs[off] - steps * q).abs() <= 5 * math.sqrt(steps * q * (1 - q))).all()


# ---- DGC --------------------------------------------------------------------------------


def reference_plan(numel: int, compress_ratio: float, sample_ratio: float) -> tuple[int, ...]:
    """``DGCCompressor.initialize`` of synxlin/deep-gradient-compression, transcribed."""
    if sample_ratio < 1.0:
        pct_numel = int(math.ceil(numel * sample_ratio))
        cpr_numel = int(math.ceil(2 / compress_ratio))
        if numel <= cpr_numel:
            sample_stride = 1
            num_samples = numel
        else:
            sample_stride = int(math.ceil(numel / max(pct_numel, cpr_numel) / 32)) * 32 + 1
            num_samples = numel // sample_stride
            while num_samples < max(pct_numel, cpr_numel):
                sample_stride = sample_stride - 8
                num_samples = numel // sample_stride
    else:
        sample_stride = 1
        num_samples = numel
    top_k_samples = int(math.ceil(num_samples * compress_ratio))
    num_selects = int(math.ceil(numel * compress_ratio))
    return num_selects, num_samples, top_k_samples, sample_stride


def reference_sparsify(
    importance: torch.Tensor, attrs: tuple[int, ...], sample_start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``DGCCompressor._sparsify`` (strided, resample=True, 1.3 / 0.8, 10 iterations),
    transcribed with the random start given; returns the indices *before* the final
    ``indices[:num_selects]`` and the threshold."""
    numel = importance.numel()
    num_selects, num_samples, top_k_samples, sample_stride = attrs
    samples = importance[sample_start::sample_stride]
    threshold = torch.min(torch.topk(samples, top_k_samples, 0, largest=True, sorted=False)[0])
    mask = torch.ge(importance, threshold)
    indices = mask.nonzero().view(-1)
    num_indices = indices.numel()
    if numel > num_samples:
        for _ in range(10):
            if num_indices > num_selects:
                if num_indices > num_selects * 1.3:
                    indices = indices[
                        torch.topk(importance[indices], num_selects, 0, largest=True, sorted=False)[
                            1
                        ]
                    ]
                    break
                else:
                    break
            elif num_indices < 0.8 * num_selects:
                threshold = threshold * 0.8
            else:
                break
            mask = torch.ge(importance, threshold)
            indices = mask.nonzero().view(-1)
            num_indices = indices.numel()
    return indices, threshold


@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.05, 0.3])
@pytest.mark.parametrize("sample_ratio", [0.01, 0.05, 1.0])
@pytest.mark.parametrize("numel", [10, 500, 2_000, 10_000, 123_457, 1_000_000])
def test_dgc_plan_matches_the_reference(numel: int, ratio: float, sample_ratio: float) -> None:
    plan = dgc_plan(numel, ratio, sample_ratio)
    assert (plan.num_selects, plan.num_samples, plan.top_k_samples, plan.sample_stride) == (
        reference_plan(numel, ratio, sample_ratio)
    )


def _constructed(case: str) -> torch.Tensor:
    """d = 10_000, ratio 0.01: k = 100, stride 49, 3 of 204 samples set the first threshold."""
    d = 10_000
    imp = torch.zeros(d)
    sample_pos = torch.arange(0, d, 49)
    other = torch.arange(d)[torch.arange(d) % 49 != 0]
    if case == "resample":  # every sample is 1.0, 300 others above: 505 > 130 -> exact top-k
        imp[sample_pos] = 1.0
        imp[other[:300]] = torch.linspace(1.1, 2.0, 300)
    elif case == "lower":  # 3 samples at 1.0, 200 others spread in (0.3, 1.0): two reductions
        imp[sample_pos[:3]] = 1.0
        imp[other[::40][:200]] = torch.linspace(0.3, 0.99, 200)
    elif case == "in_range":  # 3 samples at 1.0, 85 others at 1.5: 88 candidates, no change
        imp[sample_pos[:3]] = 1.0
        imp[other[:85]] = 1.5
    elif case == "exhausted":  # only 10 nonzero entries: ten reductions, still < 80
        imp[sample_pos[:3]] = 1.0
        imp[other[:7]] = 0.2  # reached after 8 reductions (0.8**8 < 0.2)
    return imp


@pytest.mark.parametrize("case", ["resample", "lower", "in_range", "exhausted"])
def test_dgc_threshold_rule_matches_the_reference(case: str) -> None:
    imp = _constructed(case)
    plan = dgc_plan(imp.numel(), 0.01, 0.01)
    assert plan == DGCPlan(num_selects=100, num_samples=204, top_k_samples=3, sample_stride=49)
    ours, ours_thr = dgc_select(imp, plan, start=0)
    ref, ref_thr = reference_sparsify(imp, reference_plan(imp.numel(), 0.01, 0.01), 0)
    assert torch.equal(ours_thr, ref_thr)
    assert torch.equal(ours.sort().values, ref.sort().values)
    expected = {
        "resample": (100, 1.0),
        "lower": (None, 1.0 * 0.8 * 0.8),
        "in_range": (88, 1.0),
        "exhausted": (10, 0.8**10),
    }[case]
    count, thr = expected
    assert float(ours_thr) == pytest.approx(thr, rel=1e-6)
    if count is not None:
        assert ours.numel() == count
        if case == "resample":
            assert torch.equal(ours.sort().values, imp.topk(100).indices.sort().values)
    else:  # 0.8k <= n <= 1.3k after lowering to 0.64
        assert 80 <= ours.numel() <= 130
        assert ours.numel() == int((imp >= ours_thr).sum())


@pytest.mark.parametrize("ratio", [0.0005, 0.001, 0.01])
def test_dgc_select_on_a_signed_vector_of_several_chunks_matches_the_reference(
    ratio: float,
) -> None:
    """dgc_select ranks |x| (it builds its mask a chunk at a time): on a signed 700,001-entry
    vector, the reference transcription run on |x| gives the same threshold and set."""
    x = torch.randn(700_001, generator=gen(4)) * torch.rand(700_001, generator=gen(5))
    plan = dgc_plan(x.numel(), ratio, 0.01)
    ours, ours_thr = dgc_select(x, plan, start=7)
    ref, ref_thr = reference_sparsify(x.abs(), reference_plan(x.numel(), ratio, 0.01), 7)
    assert torch.equal(ours_thr, ref_thr)
    assert torch.equal(ours.sort().values, ref.sort().values)


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(3_000, 60_000),
    ratio=st.sampled_from([0.001, 0.005, 0.01, 0.05]),
    dist=st.sampled_from(["normal", "laplace", "lognormal"]),
    seed=st.integers(0, 2**16),
)
def test_dgc_selects_between_0_8k_and_1_3k(d: int, ratio: float, dist: str, seed: int) -> None:
    g = gen(seed)
    x = torch.randn(d, generator=g)
    if dist == "laplace":
        x = torch.sign(x) * -torch.log(torch.rand(d, generator=g))
    elif dist == "lognormal":
        x = torch.sign(torch.randn(d, generator=g)) * torch.exp(2 * x)
    c = dgc_top_k(ratio, seed=seed)
    state = c.init(x)
    k = max(1, math.ceil(round(ratio * d, 9)))
    for _ in range(3):
        before = state
        payload, state = c.compress(x, state)
        n = payload["values"].numel()
        assert n <= 1.3 * k
        if n < 0.8 * k:  # as documented: ten reductions of the threshold did not reach 0.8k
            # (d=10000, ratio=0.005, lognormal, seed 5860: 33 of k=50); more of them do.
            more = dgc_top_k(ratio, seed=seed, max_adaptation_iters=1000)
            assert 0.8 * k <= more.compress(x, before)[0]["values"].numel() <= 1.3 * k
        assert torch.equal(payload["values"], x[sparse_indices(payload)])
        chosen = c.select(x, before)  # ascending, so the blocked encoding needs no sort
        assert torch.equal(chosen, sparse_indices(payload)) and bool((chosen.diff() > 0).all())
        # what is kept are the largest magnitudes: nothing dropped exceeds what is kept
        dropped = torch.ones(d, dtype=torch.bool)
        dropped[sparse_indices(payload)] = False
        assert x[dropped].abs().max() <= payload["values"].abs().min()


def test_dgc_on_a_small_vector_is_exact_top_k() -> None:
    x = torch.randn(150, generator=gen(7), dtype=torch.float64)  # d <= 2 / ratio
    c = dgc_top_k(0.02)
    payload, _ = c.compress(x, c.init(x))
    exact, _ = top_k(ratio=0.02).compress(x, None)
    assert sparse_indices(payload).tolist() == sorted(sparse_indices(exact).tolist())


def test_blocked_index_encoding_by_hand() -> None:
    # 40 kept entries of a 70,000-vector: flat int32 indices cost 160 bytes, blocked int16
    # offsets 80 bytes plus a 16-byte ``counts`` entry (3 uint8 counts), so blocked wins.
    index = torch.cat([torch.arange(65_536, 65_556), torch.arange(20)])  # unsorted on purpose
    values = torch.arange(40, dtype=torch.float32)
    payload = sparse_payload(values, index, 70_000)
    assert payload["indices"].dtype == torch.int16
    assert payload["indices"].tolist() == list(range(20)) * 2
    assert payload["counts"].tolist() == [20, 0, 20]
    assert payload["values"].tolist() == list(range(20, 40)) + list(range(20))
    assert sparse_indices(payload).tolist() == list(range(20)) + list(range(65_536, 65_556))
    flat = {"values": values, "indices": index.to(torch.int32), "size": payload["size"]}
    assert len(serialize(payload)) == len(serialize(flat)) - 160 + 80 + 16
    dense = torch.zeros(70_000)
    dense[index] = values
    assert torch.equal(sparse_decompress(payload), dense)


def test_few_kept_entries_keep_the_flat_encoding() -> None:
    # 4 entries: 16 flat bytes against 8 + 16 blocked, so the flat int32 form is shorter.
    payload = sparse_payload(torch.ones(4), torch.tensor([5, 32_768, 32_769, 69_999]), 70_000)
    assert "counts" not in payload and payload["indices"].dtype == torch.int32


@settings(max_examples=30, deadline=None)
@given(
    d=st.integers(32_769, 300_000),
    ratio=st.sampled_from([0.0001, 0.001, 0.01, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_sparse_payload_is_the_shorter_encoding_and_decodes_exactly(
    d: int, ratio: float, seed: int
) -> None:
    x = torch.randn(d, generator=gen(seed))
    for c in (top_k(ratio=ratio), dgc_top_k(ratio)):
        payload, _ = c.compress(x, c.init(x))
        index = sparse_indices(payload)
        assert torch.equal(payload["values"], x[index])
        assert index.unique().numel() == index.numel()
        flat = {"values": payload["values"], "indices": index.to(torch.int32)}
        flat["size"] = payload["size"]
        assert len(serialize(payload)) <= len(serialize(flat))
        assert c.nbytes(payload) == len(serialize(payload))
        expected = torch.zeros_like(x)
        expected[index] = x[index]
        assert torch.equal(c.decompress(payload), expected)


BIG = 2**19  # the smallest CPU vector on which top_k_indices filters candidates first


@settings(max_examples=15, deadline=None)
@given(
    extra=st.integers(0, 300_000),
    ratio=st.sampled_from([1e-5, 0.001, 0.01, 0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_top_k_indices_on_large_vectors_is_exactly_torch_topk(
    extra: int, ratio: float, seed: int
) -> None:
    x = torch.randn(BIG + extra, generator=gen(seed), dtype=torch.float64)  # no ties
    k = max(1, int(ratio * x.numel()))
    got = top_k_indices(x, k)  # by magnitude: negative entries count as much as positive
    assert got.numel() == k
    assert set(got.tolist()) == set(torch.topk(x.abs(), k).indices.tolist())


def test_top_k_indices_falls_back_when_the_sample_misleads() -> None:
    # The strided sample sees only the large entries, so its threshold admits fewer than k.
    stride = BIG // 2**17
    mag = torch.rand(BIG, generator=gen(1), dtype=torch.float64) * 1e-3
    mag[::stride] += 1.0
    k = BIG // stride + 100
    assert set(top_k_indices(mag, k).tolist()) == set(torch.topk(mag, k).indices.tolist())


def test_top_k_indices_with_ties_and_nan_keeps_what_torch_topk_keeps() -> None:
    x = torch.randint(-50, 50, (BIG,), generator=gen(2)).double()  # many ties, both signs
    x[123_457] = float("nan")
    k = 30_000
    got = top_k_indices(x, k)
    assert got.unique().numel() == k and 123_457 in set(got.tolist())
    ref = torch.topk(x.abs(), k).values
    assert torch.equal(x[got].abs().sort().values[:-1], ref.sort().values[:-1])  # NaN last
