"""Count sketch against its definition, computed entry by entry with Python integers, and
the cache of its hashes (same values, bounded memory)."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from shoal.compress import count_sketch
from shoal.compress import sketch as sketch_module
from shoal.compress._common import mix

P = 2**31 - 1


def reference(x: list[float], width: int, depth: int, seed: int) -> tuple[list, list]:
    """``S[j][h_j(i)] += s_j(i) x_i`` and ``x_hat_i = median_j s_j(i) S[j][h_j(i)]`` with the
    module docstring's hashes ``((a i + b) mod p) mod width`` and sign from the low bit."""
    rng = random.Random(mix(seed, len(x)))
    coef = [(rng.randrange(1, P), rng.randrange(P)) for _ in range(2 * depth)]
    bucket = [[((a * i + b) % P) % width for i in range(len(x))] for a, b in coef[:depth]]
    sign = [[1 if ((a * i + b) % P) & 1 else -1 for i in range(len(x))] for a, b in coef[depth:]]
    table = [[0.0] * width for _ in range(depth)]
    for j in range(depth):
        for i, v in enumerate(x):
            table[j][bucket[j][i]] += sign[j][i] * v
    estimate = [
        statistics.median([sign[j][i] * table[j][bucket[j][i]] for j in range(depth)])
        for i in range(len(x))
    ]
    return table, estimate


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_count_sketch_is_its_definition(depth: int) -> None:
    d, width, seed = 300, 17, 9
    # Integers: every addition exact, so the table must match bit for bit in any order.
    x = torch.randint(-50, 50, (d,), generator=torch.Generator().manual_seed(depth)).double()
    c = count_sketch(width, depth, seed=seed)
    payload, _ = c.compress(x, None)
    table, estimate = reference(x.tolist(), width, depth, seed)
    assert payload["table"].tolist() == table
    # an even count's median is the mean of the two middle values (not torch.median's lower one)
    assert c.decompress(payload).tolist() == estimate


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tables_are_summed_in_float32_and_rounded_once(dtype) -> None:
    """Summed in their own dtype, every addition rounded: 3000 ones in one cell summed to
    2048 in float16 (1 is below half an ulp there) and to 256 in bfloat16."""
    d, width, seed = 6000, 2, 4
    c = count_sketch(width, depth=1, seed=seed)
    x = c.hashes(d, torch.device("cpu"))[1][0].to(dtype)  # each entry's sign: all adds +1
    payload, _ = c.compress(x, None)
    table, _ = reference(x.double().tolist(), width, 1, seed)  # exact: integers
    assert min(table[0]) > 2048
    assert payload["table"].dtype == dtype
    assert torch.equal(payload["table"], torch.tensor(table).to(dtype))


@pytest.mark.parametrize("depth", [1, 2])
def test_shallow_sketches_are_unbiased(depth: int) -> None:
    """Each row's estimate is unbiased over the hashes, so depth 1 and the depth-2 median (the
    mean of the two rows) are too. The lower median of two rows, min(e1, e2), was 1.8 below x
    on average here (entries of mean |x| 0.8)."""
    x = torch.randn(500, generator=torch.Generator().manual_seed(0))
    errors = []
    for seed in range(200):
        c = count_sketch(50, depth, seed=seed)
        errors.append(c.decompress(c.compress(x, None)[0]) - x)
    bias = torch.stack(errors).mean()
    # per estimate sd ~ ||x|| / sqrt(50) ~ 3; averaged over 200 seeds x 500 entries
    assert abs(float(bias)) < 0.1


def test_hashes_are_kept_and_the_cache_stays_within_its_budget(monkeypatch) -> None:
    monkeypatch.setattr(sketch_module, "_hash_cache", type(sketch_module._hash_cache)())
    c = count_sketch(64, 3, seed=1)
    first = c.hashes(1000, torch.device("cpu"))
    again = c.hashes(1000, torch.device("cpu"))
    assert first[0] is again[0] and first[1] is again[1]  # computed once
    fresh = c._compute_hashes(1000, torch.device("cpu"))
    assert torch.equal(first[0].long(), fresh[0]) and torch.equal(first[1].long(), fresh[1])
    # A budget for two 1000-entry vectors at depth 3 (24 kB each): a third evicts the oldest,
    # and a vector larger than the whole budget is computed every time, never kept.
    monkeypatch.setattr(sketch_module, "HASH_CACHE_BYTES", 2 * 24_000)
    c.hashes(1001, torch.device("cpu"))
    c.hashes(999, torch.device("cpu"))
    kept = {key[3] for key in sketch_module._hash_cache}
    assert kept == {1001, 999}
    c.hashes(100_000, torch.device("cpu"))
    assert {key[3] for key in sketch_module._hash_cache} == {1001, 999}
    assert sketch_module._cached_bytes() <= 2 * 24_000
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    payload, _ = c.compress(x, None)  # uncached, and still a correct round trip shape
    assert c.decompress(payload).shape == x.shape


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("value", [3e38, -3e38])
def test_even_depth_estimates_near_the_float_max_do_not_overflow(depth: int, value) -> None:
    """The two middle estimates were averaged as ``(lo + hi) / 2``: inf for 3e38 in float32."""
    c = count_sketch(8, depth, seed=1)
    x = torch.tensor([value])  # alone in its buckets: every row estimates it exactly
    assert c.decompress(c.compress(x, None)[0]).tolist() == x.tolist()
