"""Synthetic(alpha, beta) statistics against FedProx's generative process."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from shoal.data import FederatedDataset, synthetic


@pytest.fixture(scope="module")
def s11() -> FederatedDataset:
    return synthetic(1.0, 1.0, seed=0)


def user(ds: FederatedDataset, k: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    data = ds.train if split == "train" else ds.test
    idx = (ds.natural_clients if split == "train" else ds.natural_test_clients)[k]
    return data.x[idx].numpy().astype(np.float64), data.y[idx].numpy()


def test_shapes_users_and_the_90_10_split(s11: FederatedDataset) -> None:
    assert s11.train.x.shape[1] == 60 and s11.train.num_classes == 10
    assert len(s11.natural_clients) == len(s11.natural_test_clients) == 30
    for tr, te in zip(s11.natural_clients, s11.natural_test_clients):
        n_k = len(tr) + len(te)
        assert n_k >= 50
        assert len(tr) == int(0.9 * n_k)
    allidx = np.concatenate(s11.natural_clients)
    assert np.array_equal(np.sort(allidx), np.arange(len(s11.train)))


def test_user_sizes_are_lognormal_4_2_plus_50() -> None:
    ds = synthetic(1, 1, num_users=3000, dim=1, num_classes=2, seed=1)
    n = np.array([len(a) + len(b) for a, b in zip(ds.natural_clients, ds.natural_test_clients)])
    assert n.min() >= 50
    # int(lognormal(4, 2)) has median floor(e^4) = 54, quartiles e^(4 -/+ 2 * 0.674)
    q1, med, q3 = np.percentile(n - 50, [25, 50, 75])
    assert med == pytest.approx(np.exp(4), rel=0.12)
    assert q1 == pytest.approx(np.exp(4 - 2 * 0.6745), rel=0.15)
    assert q3 == pytest.approx(np.exp(4 + 2 * 0.6745), rel=0.15)


def test_within_user_feature_variance_is_j_to_minus_1_2(s11: FederatedDataset) -> None:
    resid = []
    for k in range(30):
        x, _ = user(s11, k)
        resid.append(x - x.mean(axis=0))
    var = np.concatenate(resid).var(axis=0)
    expect = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(var, expect, rtol=0.12)


def test_beta_moves_user_means() -> None:
    def user_shift(ds: FederatedDataset) -> np.ndarray:
        # mean over features of the user's mean: ~ N(B_k, 1/60) since v_k ~ N(B_k, 1)^60
        return np.array([user(ds, k)[0].mean() for k in range(30)])

    flat = user_shift(synthetic(0, 0, seed=2))
    assert np.abs(flat).max() < 0.6  # 4.6 standard deviations of N(0, 1/60)
    spread = user_shift(synthetic(0, 1, seed=2))
    assert 0.6 < spread.std() < 1.5  # B_k ~ N(0, 1)


def test_alpha_cannot_change_labels() -> None:
    # u_k shifts every logit of a sample equally (FedProx's generator, faithfully): same seed,
    # same draws, same argmax whatever alpha is.
    a, b = synthetic(0, 1, num_users=10, seed=3), synthetic(5, 1, num_users=10, seed=3)
    assert np.array_equal(a.train.x.numpy(), b.train.x.numpy())
    assert (a.train.y == b.train.y).float().mean() > 0.999


def test_iid_users_share_one_distribution_and_labelling(s11: FederatedDataset) -> None:
    ds = synthetic(1, 1, iid=True, seed=0)
    x = ds.train.x.numpy().astype(np.float64)
    assert np.abs(x.mean(axis=0)).max() < 0.1  # x ~ N(0, Sigma)
    np.testing.assert_allclose(x.var(axis=0), np.arange(1, 61) ** -1.2, rtol=0.12)

    def label_table(d: FederatedDataset) -> np.ndarray:
        t = np.stack([np.bincount(user(d, k)[1], minlength=10) for k in range(30)])
        return t[:, t.sum(axis=0) > 0]

    # same x distribution and one shared (W, b): label frequencies agree across users ...
    assert chi2_contingency(label_table(ds)).pvalue > 1e-3
    # ... while Synthetic(1, 1) users each have their own W_k and v_k
    assert chi2_contingency(label_table(s11)).pvalue < 1e-10


def test_seed_and_validation() -> None:
    a, b, c = synthetic(1, 1, seed=5), synthetic(1, 1, seed=5), synthetic(1, 1, seed=6)
    assert np.array_equal(a.train.x.numpy(), b.train.x.numpy())
    assert a.train.x.shape != c.train.x.shape or not np.array_equal(
        a.train.x.numpy(), c.train.x.numpy()
    )
    for alpha, beta in [(-1, 0), (float("nan"), 1), (1, float("nan")), (math.inf, 1)]:
        with pytest.raises(ValueError, match="alpha and beta must be finite and >= 0"):
            synthetic(alpha, beta)  # NaN slipped past `< 0` and made every label 0
    for kw in [{"num_users": 2.5}, {"num_users": True}, {"dim": 0}, {"num_classes": 1}]:
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be an integer"):
            synthetic(1, 1, **kw)
