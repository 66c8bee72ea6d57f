import numpy as np
import pytest

from shoal.algorithms.base import LocalWork
from shoal.schedule import ClientSampler, Stragglers, make_plan


def test_sampler_reproducible_and_without_replacement():
    sizes = np.arange(1, 51, dtype=float)
    s = ClientSampler(10)
    a, b = s(sizes, seed=3, round_idx=7), s(sizes, seed=3, round_idx=7)
    assert np.array_equal(a, b)
    assert len(set(a.tolist())) == 10
    assert not np.array_equal(a, s(sizes, seed=3, round_idx=8))


def test_weighted_sampling_follows_sizes():
    sizes = np.array([1.0, 1.0, 98.0])
    s = ClientSampler(1, replace=True, weighted=True)
    draws = np.concatenate([s(sizes, 0, r) for r in range(2000)])
    assert abs((draws == 2).mean() - 0.98) < 0.02


def test_sampler_rejects_too_many_clients():
    with pytest.raises(ValueError, match="clients_per_round"):
        ClientSampler(11)(np.ones(10), 0, 0)


def test_plan_is_one_pass_per_epoch_with_masked_short_batch():
    idx = np.arange(100, 123)  # 23 samples, batch 10 -> 10, 10, 3
    plan = make_plan(idx, LocalWork(epochs=2, batch_size=10), 2, seed=0, round_idx=0, client=5)
    assert plan.num_steps == 6
    for e in range(2):
        rows = plan.index_TB[3 * e : 3 * e + 3][plan.mask_TB[3 * e : 3 * e + 3] > 0]
        assert sorted(rows.tolist()) == idx.tolist()
    assert plan.mask_TB[2].sum() == 3 and plan.mask_TB[0].sum() == 10


def test_plan_full_batch_and_fixed_steps():
    idx = np.arange(7)
    full = make_plan(idx, LocalWork(batch_size=None), 1, 0, 0, 0)
    assert full.index_TB.shape == (1, 7)
    steps = make_plan(idx, LocalWork(batch_size=3, steps=5), 1, 0, 0, 0)
    assert steps.num_steps == 5


def test_stragglers_follow_fedprox():
    work = LocalWork(epochs=20)
    ep = Stragglers(fraction=0.9).epochs(10, work, seed=0, round_idx=4)
    assert (ep == 20).sum() == 1 and ((ep >= 1) & (ep < 20)).sum() == 9
    dropped = Stragglers(fraction=0.5, drop=True).epochs(10, work, seed=0, round_idx=4)
    assert (dropped == 0).sum() == 5 and (dropped == 20).sum() == 5


def test_min_epochs_draws_in_range():
    ep = Stragglers().epochs(500, LocalWork(epochs=5, min_epochs=2), seed=1, round_idx=0)
    assert ep.min() == 2 and ep.max() == 5


@pytest.mark.parametrize("count", [0, 2.0, 2.5, True])
def test_sampler_count_must_be_an_integer(count):
    # 2.0, 2.5 and True failed in round 1 with numpy's TypeError.
    with pytest.raises(ValueError, match="clients_per_round must be an integer >= 1"):
        ClientSampler(count)
    assert len(ClientSampler(np.int64(2))(np.ones(10), 0, 0)) == 2


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ClientSampler(2, weighted="False"), "weighted must be true or false"),
        (lambda: ClientSampler(2, replace="no"), "replace must be true or false"),
        (lambda: Stragglers(0.5, drop="False"), "drop must be true or false"),
        (lambda: Stragglers(True), r"straggler fraction must be in \[0, 1\], got True"),
        (lambda: Stragglers("0.5"), r"straggler fraction must be in \[0, 1\], got '0.5'"),
    ],
)
def test_flags_and_fractions_of_the_wrong_type_are_refused(build, match):
    # A string flag is true to Python: weighted="False" sampled by size, drop="False" dropped
    # the stragglers; True was a fraction of 1, "0.5" failed in a comparison.
    with pytest.raises((TypeError, ValueError), match=match):
        build()


def test_min_epochs_does_not_change_who_straggles():
    # min_epochs and the straggler choice drew from one stream: turning min_epochs on changed
    # which clients were dropped in 198 of 200 rounds.
    for r in range(50):
        plain = Stragglers(0.5, drop=True).epochs(10, LocalWork(5), 0, r) == 0
        drawn = Stragglers(0.5, drop=True).epochs(10, LocalWork(5, min_epochs=1), 0, r) == 0
        assert (plain == drawn).all()
