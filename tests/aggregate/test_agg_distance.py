"""Krum and Multi-Krum against a brute-force NumPy reference and on a constructed attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.aggregate import krum, multi_krum


def krum_ref(x: np.ndarray, f: int, m: int) -> np.ndarray:
    n = len(x)
    d2 = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    keys = []
    for i in range(n):
        others = sorted(d2[i, j] for j in range(n) if j != i)
        keys.append((sum(others[: n - f - 2]), sum(others), i))
    chosen = [i for _, _, i in sorted(keys)[:m]]
    return x[chosen].mean(axis=0)


@pytest.mark.parametrize(("n", "f", "m"), [(3, 0, 1), (7, 2, 1), (9, 3, 1), (10, 2, 4), (12, 3, 9)])
def test_matches_reference(n: int, f: int, m: int) -> None:
    x = np.random.default_rng(n * 100 + f).normal(size=(n, 5)) * 3 + 1
    agg = krum(f) if m == 1 else multi_krum(f, m)
    got = agg(torch.from_numpy(x), torch.ones(n))
    np.testing.assert_allclose(got.numpy(), krum_ref(x, f, m), rtol=1e-12, atol=1e-12)


def test_multi_krum_default_m_is_n_minus_f() -> None:
    x = np.random.default_rng(0).normal(size=(11, 4))
    got = multi_krum(3)(torch.from_numpy(x), torch.ones(11))
    np.testing.assert_allclose(got.numpy(), krum_ref(x, 3, 8), rtol=1e-12)


def test_selects_the_honest_cluster() -> None:
    f, n = 3, 9
    gen = torch.Generator().manual_seed(0)
    honest = 5.0 + 0.1 * torch.randn(n - f, 8, generator=gen, dtype=torch.float64)
    # Colluding attackers on one far point: 0 distance to each other, far from everyone else.
    byz = torch.full((f, 8), -50.0, dtype=torch.float64)
    x = torch.cat([byz, honest])
    out = krum(f)(x, torch.ones(n))
    assert any(torch.equal(out, h) for h in honest)
    torch.testing.assert_close(multi_krum(f)(x, torch.ones(n)), honest.mean(dim=0))


def test_float32_close_vectors_keep_their_order() -> None:
    # Nearby vectors with a large common offset: the float64 Gram matrix ranks them correctly.
    base = 1e3 * torch.ones(64)
    spread = torch.tensor([0.0, 0.01, 0.02, 0.5, 0.03])[:, None] * torch.ones(64)
    x = (base + spread).float()
    out = krum(1)(x, torch.ones(5))
    assert float(out[0] - 1e3) < 0.05


def test_too_few_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"krum needs n >= 2f\+3, got n=7, f=3"):
        krum(3)(torch.randn(7, 2), torch.ones(7))
    with pytest.raises(ValueError, match=r"^multi_krum needs n >= 2f\+3, got n=12, f=5"):
        multi_krum(5)(torch.randn(12, 2), torch.ones(12))  # it named "krum"
    with pytest.raises(ValueError, match="m=12 exceeds"):
        multi_krum(1, 12)(torch.randn(9, 2), torch.ones(9))
    with pytest.raises(ValueError, match="m must be"):
        multi_krum(1, 0)


def test_exact_score_ties_do_not_depend_on_the_inbox_order() -> None:
    # -1 and 1 tie on both the score and the tie-break; position used to decide, so reversing
    # the inbox changed the output. Sign-compressed updates tie like this (7 of 300 draws of
    # eleven {-1, 1}^8 rows changed Krum's output when permuted).
    x = torch.tensor([[-3.0], [-1.0], [1.0], [3.0]], dtype=torch.float64)
    for agg in (krum(0), multi_krum(0, 3)):
        assert torch.equal(agg(x, torch.ones(4)), agg(x.flip(0), torch.ones(4)))
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        x = torch.randint(0, 2, (11, 8), generator=gen).double() * 2 - 1
        p = torch.randperm(11, generator=gen)
        assert torch.equal(krum(3)(x[p], torch.ones(11)), krum(3)(x, torch.ones(11)))
