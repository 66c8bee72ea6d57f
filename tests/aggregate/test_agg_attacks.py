"""Each Byzantine attack against its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from shoal.aggregate import krum, mean
from shoal.attacks import (
    Attack,
    alie,
    alie_z,
    byzantine,
    flip_labels,
    gaussian,
    ipm,
    label_flip,
    mimic,
    sign_flip,
)


@pytest.fixture
def honest() -> torch.Tensor:
    return torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_every_attack_follows_the_protocol(honest: torch.Tensor) -> None:
    for attack in (sign_flip(), ipm(), alie(), gaussian(), mimic(), mimic(None)):
        assert isinstance(attack, Attack)
        out = attack(honest, 3)
        assert out.shape == (3, 5) and out.dtype == honest.dtype
        assert attack(honest, 0).shape == (0, 5)
    with pytest.raises(ValueError, match="integer >= 0"):
        sign_flip()(honest, -1)


def test_sign_flip_and_ipm(honest: torch.Tensor) -> None:
    mu = honest.mean(dim=0)
    torch.testing.assert_close(sign_flip()(honest, 2), -mu.expand(2, 5))
    torch.testing.assert_close(sign_flip(scale=4.0)(honest, 1), -4 * mu[None])
    torch.testing.assert_close(ipm()(honest, 3), -0.1 * mu.expand(3, 5))
    torch.testing.assert_close(ipm(eps=1.0)(honest, 1), -mu[None])
    # The point of IPM: the mean of the inbox loses its inner product with the honest mean.
    inbox = torch.cat([honest, ipm(eps=10.0)(honest, 3)])
    assert float(mean()(inbox, torch.ones(10)) @ mu) < 0


@pytest.mark.parametrize(("n", "f"), [(26, 5), (50, 24), (10, 2), (7, 1)])
def test_alie_z_is_the_epfml_formula(n: int, f: int) -> None:
    s = math.floor(n / 2 + 1) - f
    assert alie_z(n, f) == pytest.approx(norm.ppf((n - f - s) / (n - f)), rel=1e-12)


def test_alie_vectors(honest: torch.Tensor) -> None:
    h, f = honest.shape[0], 3
    x = honest.numpy()
    want = x.mean(axis=0) - alie_z(h + f, f) * x.std(axis=0, ddof=1)
    got = alie()(honest, f)
    np.testing.assert_allclose(got.numpy(), np.tile(want, (f, 1)), rtol=1e-12)
    np.testing.assert_allclose(
        alie(z=1.5)(honest, 1).numpy()[0], x.mean(0) - 1.5 * x.std(0, ddof=1)
    )
    with pytest.raises(ValueError, match="undefined"):
        alie_z(10, 6)


def test_alie_sends_the_honest_mean_where_z_or_sigma_is_undefined(honest: torch.Tensor) -> None:
    # A Byzantine majority (z_max undefined) or one honest update (no sigma): a round of
    # sampled clients can draw either, and the run stopped with a ValueError.
    with pytest.warns(UserWarning, match=r"undefined for n=5, f=3.*honest mean \(z = 0\)"):
        got = alie()(honest[:2], 3)
    torch.testing.assert_close(got, honest[:2].mean(0).expand(3, -1), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="undefined for n=2, f=1"):
        assert torch.equal(alie()(honest[:1], 1), honest[:1])
    with pytest.warns(UserWarning, match="one honest update has no standard deviation"):
        assert torch.equal(alie(z=1.5)(honest[:1], 2), honest[:1].expand(2, -1))


def test_gaussian_is_seeded_normal_noise(honest: torch.Tensor) -> None:
    a, b = gaussian(sigma=2.0, seed=5), gaussian(sigma=2.0, seed=5)
    first = a(honest, 4)
    assert torch.equal(first, b(honest, 4))
    assert not torch.equal(first, a(honest, 4))  # the stream advances every round
    want = 2.0 * torch.randn(4, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(first, want)
    big = gaussian(sigma=3.0, seed=1)(torch.zeros(2, 20_000), 5)
    assert float(big.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(big.std()) == pytest.approx(3.0, rel=0.01)


def test_mimic_copies_one_honest_worker(honest: torch.Tensor) -> None:
    assert torch.equal(mimic()(honest, 2), honest[0].expand(2, 5))
    assert torch.equal(mimic(target=4)(honest, 1), honest[4][None])
    skewed = honest.clone()
    skewed[5] += 30.0  # most extreme along the top principal direction
    assert torch.equal(mimic(None)(skewed, 3), skewed[5].expand(3, 5))
    with pytest.raises(ValueError, match="target=9"):
        mimic(9)(honest, 1)


def test_label_flip() -> None:
    y = torch.arange(10)
    assert torch.equal(flip_labels(y, 10), 9 - y)
    assert torch.equal(label_flip(3)(torch.tensor([0, 1, 2, 2])), torch.tensor([2, 1, 0, 0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        label_flip(3)(torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        flip_labels(torch.tensor([0.0]), 2)


def test_krum_survives_a_sign_flip_attack(honest: torch.Tensor) -> None:
    centered = honest * 0.1 + 1.0
    inbox = torch.cat([sign_flip()(centered, 2), centered])
    out = krum(2)(inbox, torch.ones(9))
    assert any(torch.equal(out, h) for h in centered)


@pytest.mark.parametrize("sigma", [float("inf"), float("nan"), -1.0, "1"])
def test_gaussian_needs_a_finite_sigma(sigma) -> None:
    # sigma = inf was taken, and sent inf/NaN rows that end a run under any robust rule.
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        gaussian(sigma)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: mimic(True), "mimic: target must be an integer or None, got True"),
        (lambda: mimic(1.5), "mimic: target must be an integer or None, got 1.5"),
        (lambda: sign_flip(float("nan")), "sign_flip: scale must be a finite number, got nan"),
        (lambda: sign_flip("a"), "sign_flip: scale must be a finite number, got 'a'"),
        (lambda: alie(float("inf")), "alie: z must be a finite number or None, got inf"),
        (lambda: byzantine(2.0, 5, sign_flip()), "num_byzantine must be an integer >= 0"),
        (lambda: byzantine(1, 5.0, sign_flip()), "num_clients must be an integer >= 1"),
    ],
)
def test_bad_attack_arguments_are_refused_in_one_line(build, match) -> None:
    # mimic(True) indexed row 1 and returned rows of another shape; NaN scales sent NaN rows;
    # the rest failed inside numpy or at the first round.
    with pytest.raises(ValueError, match=match):
        build()


def test_the_mean_refuses_negative_weights_and_an_empty_inbox() -> None:
    # [2, -1] extrapolated (2 x0 - x1), where every robust rule refuses the weights.
    x = torch.tensor([[1.0], [4.0]])
    with pytest.raises(ValueError, match="non-negative"):
        mean()(x, torch.tensor([2.0, -1.0]))
    with pytest.raises(ValueError, match="the inbox is empty"):
        mean()(x[:0], torch.ones(0))
    assert float(mean()(x, torch.tensor([3.0, 1.0]))) == 1.75
