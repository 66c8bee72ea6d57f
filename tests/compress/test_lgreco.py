"""L-GreCo: the knapsack DP against brute force, and its choice on a CNN's real gradients."""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shoal.compress import error_feedback, serialize
from shoal.compress.lgreco import (
    LGreCo,
    knapsack,
    lgreco_powersgd,
    lgreco_qsgd,
    lgreco_top_k,
)
from shoal.compress.wire import entry_nbytes
from shoal.functional import ParamSpec

FAMILIES = [lgreco_top_k, lgreco_qsgd, lgreco_powersgd]


def brute_force(errors, sizes, budget) -> float:
    """Least total size over every combination within the budget (inf if none)."""
    best = math.inf
    for combo in itertools.product(*(range(len(e)) for e in errors)):
        if sum(e[c] for e, c in zip(errors, combo)) <= budget:
            best = min(best, sum(s[c] for s, c in zip(sizes, combo)))
    return best


def total(table, choice) -> float:
    return sum(row[c] for row, c in zip(table, choice))


@pytest.mark.parametrize("seed", range(20))
def test_dp_equals_brute_force_when_errors_are_whole_units(seed):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 6))
    errors = [rng.integers(0, 20, size=rng.integers(1, 5)).astype(float) for _ in range(layers)]
    sizes = [rng.integers(1, 100, size=len(e)).astype(float) for e in errors]
    budget = int(rng.integers(1, 20 * layers))
    # one bucket per error unit: the discretisation is exact
    choice = knapsack(errors, sizes, budget, buckets=budget)
    best = brute_force(errors, sizes, budget)
    if best == math.inf:
        assert choice is None
    else:
        assert choice is not None and total(sizes, choice) == best
        assert total(errors, choice) <= budget


@pytest.mark.parametrize("seed", range(20))
def test_dp_is_brute_force_up_to_the_discretisation(seed):
    """Rounding errors up to whole buckets of E/B costs at most L buckets of budget: the DP's
    choice meets E and is no larger than the best choice within E (1 - L/B)."""
    rng = np.random.default_rng(100 + seed)
    layers, buckets = 4, 40
    errors = [rng.random(rng.integers(2, 5)) for _ in range(layers)]
    sizes = [rng.random(len(e)) * 100 for e in errors]
    budget = float(sum(e.mean() for e in errors))
    choice = knapsack(errors, sizes, budget, buckets=buckets)
    assert choice is not None
    assert total(errors, choice) <= budget
    got = total(sizes, choice)
    assert brute_force(errors, sizes, budget) <= got
    assert got <= brute_force(errors, sizes, budget * (1 - layers / buckets)) + 1e-9


def test_dp_prefers_less_error_among_equal_sizes():
    assert knapsack([[3.0, 1.0]], [[5.0, 5.0]], budget=4.0, buckets=4) == (1,)


def test_a_subnormal_budget_is_discretised_like_any_other():
    """``buckets / 1e-320`` overflowed to inf, and a zero error times inf was NaN ("cannot
    convert float NaN to integer"). Half the budget is 5,000 of 10,000 buckets; an error of
    1e-300 is ~1e20 budgets, over it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no overflow warning on the way
        assert knapsack([[0.0]], [[1.0]], 1e-320) == (0,)
        assert knapsack([[0.0, 1e-300]], [[5.0, 1.0]], 1e-320) == (0,)
        assert knapsack([[5e-321, 0.0]], [[1.0, 5.0]], 1e-320) == (0,)
        assert knapsack([[2e-320, 0.0]], [[1.0, 5.0]], 1e-320) == (1,)


@pytest.mark.parametrize(
    ("errors", "sizes", "budget", "buckets", "match"),
    [
        ([], [], 1.0, 10, "errors must be a non-empty"),
        ([[1.0]], [[1.0, 2.0]], 1.0, 10, "same shape"),
        ([[-1.0]], [[1.0]], 1.0, 10, "finite and >= 0"),
        ([[float("nan")]], [[1.0]], 1.0, 10, "finite and >= 0"),
        ([[1.0]], [[1.0]], 0.0, 10, "budget must be a positive number"),
        ([[1.0]], [[1.0]], 1.0, 0, "buckets must be an integer >= 1"),
        # 10**9 buckets raised MemoryError, allocating 7.45 GiB of back-pointers.
        ([[1.0]], [[1.0]], 1.0, 10**9, "buckets must be at most 1000000, got 1000000000"),
    ],
)
def test_knapsack_bad_inputs(errors, sizes, budget, buckets, match):
    with pytest.raises(ValueError, match=match) as err:
        knapsack(errors, sizes, budget, buckets)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def cnn_gradient() -> tuple[tuple[torch.Size, ...], torch.Tensor]:
    """McMahan's CNN after 20 SGD steps on scikit-learn's digits, and a minibatch gradient."""
    from shoal.data import load_digits
    from shoal.functional import init_params
    from shoal.models import cnn

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    data = load_digits()
    model, _ = init_params(lambda: cnn(image_size=8), 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.train.x, data.train.y
    g = torch.Generator().manual_seed(0)
    for _ in range(21):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    torch.set_num_threads(before)
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    return ParamSpec.of(model).shapes, grad


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_meets_the_budget_with_fewer_bytes_than_uniform_on_cnn_gradients(family, cnn_gradient):
    shapes, grad = cnn_gradient
    lg = family(shapes)
    alloc = lg.allocate(grad)
    assert alloc.error <= alloc.budget == pytest.approx(alloc.uniform_error)
    assert alloc.nbytes < alloc.uniform_nbytes
    # the payload really is that size: the chosen blocks plus the dense biases and the choice
    payload, _ = lg.compress(grad, lg.init(grad))
    fixed = 2 + sum(entry_nbytes(k, payload[k]) for k in ("dense", "choice"))
    assert lg.nbytes(payload) == len(serialize(payload)) == alloc.nbytes + fixed
    assert lg.decompress(payload).shape == grad.shape


def test_low_rank_error_is_the_best_rank_r_error(cnn_gradient):
    """Eckart-Young: no rank-r PowerSGD step beats the SVD tail; full rank is exact."""
    shapes, grad = cnn_gradient
    lg = lgreco_powersgd(shapes, rank=2, choices=(1, 2, 4, 32))
    measured = LGreCo(lg.shapes, lg.build, lg.levels, lg.uniform, family="measured")
    tail, power = lg.profile(grad)[0], measured.profile(grad)[0]
    for t_C, p_C in zip(tail, power):
        assert all(t <= p + 1e-6 for t, p in zip(t_C, p_C))
    assert tail[0][-1] == 0.0  # conv1 is 32 x 25: rank 32 is full


def test_replans_every_period_steps(monkeypatch):
    shapes = [(4, 8), (8,), (16, 4)]
    lg = lgreco_top_k(shapes, ratio=0.1, choices=(0.05, 0.1, 0.5), period=2)
    calls = []
    original = LGreCo.allocate

    def spy(self, x_D):
        calls.append(state_step[0])
        return original(self, x_D)

    monkeypatch.setattr(LGreCo, "allocate", spy)
    x = torch.randn(104, generator=torch.Generator().manual_seed(0))
    state = lg.init(x)
    state_step = [0]
    for step in range(5):
        state_step[0] = step
        payload, state = lg.compress(x * (step + 1), state)
        assert int(state["step"]) == step + 1
        assert torch.equal(payload["choice"].long(), state["choice"])
    assert calls == [0, 2, 4]


def test_a_lower_rank_keeps_the_warm_start(monkeypatch):
    """When the allocation lowers a layer's rank, the layer's next message is the best
    rank-r approximation (the SVD's tail error) at once: the warm query's leading columns
    carry over. A fresh random query gave 1.15x that error here."""
    n, m = 64, 32
    g = torch.Generator().manual_seed(0)
    u_NM = torch.linalg.qr(torch.randn(n, m, generator=g))[0]
    v_MM = torch.linalg.qr(torch.randn(m, m, generator=g))[0]
    sigma_M = 10 * 2.0 ** -torch.arange(m, dtype=torch.float32)
    x = (u_NM @ torch.diag(sigma_M) @ v_MM.T).reshape(-1)
    lg = lgreco_powersgd([(n, m)], rank=4, choices=(2, 4), period=1)
    plan = [1, 1, 1, 1, 0]  # rank 4 for four steps (the query warms up), then rank 2
    original = LGreCo.allocate

    def forced(self, x_D):
        return dataclasses.replace(original(self, x_D), choice=(plan.pop(0),))

    monkeypatch.setattr(LGreCo, "allocate", forced)
    state = lg.init(x)
    while plan:
        payload, state = lg.compress(x, state)
    assert lg.levels[int(payload["choice"][0])] == 2
    error = float((lg.decompress(payload) - x).norm())
    assert error == pytest.approx(float(sigma_M[2:].norm()), rel=1e-3)


def test_composes_with_error_feedback_and_training():
    """Inside error feedback it profiles the accumulated vector, and nothing is lost."""
    from shoal.algorithms import LocalWork, fedavg
    from shoal.data.types import ArrayDataset, FederatedDataset
    from shoal.schedule import ClientSampler
    from shoal.train import TrainConfig, train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    shapes = ParamSpec.of(model).shapes
    ef = error_feedback(lgreco_top_k(shapes, ratio=0.1, choices=(0.05, 0.1, 0.3), period=2))
    x = torch.randn(163)
    state = ef.init(x)
    payload, state = ef.compress(x, state)
    torch.testing.assert_close(ef.decompress(payload) + state["residual"], x)

    data = torch.randn(40, 6)
    labels = data[:, :3].argmax(1)
    ds = FederatedDataset("toy", ArrayDataset(data, labels, 3), ArrayDataset(data, labels, 3))
    clients = [np.arange(0, 20), np.arange(20, 40)]
    cfg = TrainConfig(rounds=3, sampler=ClientSampler(2), work=LocalWork(batch_size=5),
                      progress=False, device="cpu", client_eval=False)  # fmt: skip
    res = train(model, ds, clients, fedavg(0.1), cfg, compressor=ef)
    dense = 2 + entry_nbytes("values", torch.zeros(163))
    assert all(0 < r["uplink_bytes"] < 2 * dense for r in res.metrics)
    assert torch.isfinite(res.params).all()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda s: lgreco_top_k(s, period=0), "period must be an integer >= 1"),
        (lambda s: lgreco_top_k(s, alpha=0.0), "alpha must be a positive number"),
        (lambda s: lgreco_top_k(s, buckets=0), "buckets must be an integer >= 1"),
        (lambda s: lgreco_top_k(s, buckets=10**7), "buckets must be at most 1000000"),
        (lambda s: lgreco_top_k(s, choices=()), "choices .* must be 1 to 255 distinct"),
        (lambda s: lgreco_top_k(s, choices=(0.1, 0.1)), "choices .* must be 1 to 255 distinct"),
        # The family's message names its own argument (ratio); which candidate, and that it
        # came from choices, was left out.
        (lambda s: lgreco_top_k(s, choices=(0.1, 2.0)), r"candidate 2\.0 \(of choices.*ratio must"),
        (lambda s: lgreco_qsgd(s, levels=0), "levels must be an integer >= 1"),
        (lambda s: lgreco_powersgd(s, rank=0), "rank must be an integer >= 1"),
        (lambda s: lgreco_top_k([]), "shapes is empty"),
        (lambda s: lgreco_top_k(s).allocate(torch.zeros(5)), "x_D has 5 entries"),
    ],
)
def test_bad_arguments_are_one_line_value_errors(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make([(4, 8), (8,)])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", [lgreco_top_k, lgreco_qsgd, lgreco_powersgd])
def test_empty_blocks_and_nan_are_planned_like_any_block(family):
    """A zero-size block costs nothing; a NaN entry travels (and shows where it is decoded)
    instead of failing in the SVD of the PowerSGD family's error table."""
    c = family([(0, 5), (10, 20)], period=1)
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    payload, state = c.compress(x, c.init(x))
    assert c.decompress(payload).shape == (200,)
    x[3] = float("nan")
    payload, _ = c.compress(x, state)
    assert c.decompress(payload).isnan().any()


@pytest.mark.parametrize(
    ("family", "scale", "dtype"),
    [
        (lgreco_top_k, 1e20, torch.float32),
        (lgreco_qsgd, 1e20, torch.float32),
        (lgreco_powersgd, 1e200, torch.float64),
    ],
)
def test_errors_of_huge_finite_blocks_do_not_overflow(family, scale, dtype):
    """The errors were plain norms: inf for a float32 block of 1e20s (a float32 norm), and the
    knapsack refused the table ("errors must be finite") on the first compress; PowerSGD's
    squared singular values overflowed float64 above ~1e154."""
    c = family([(10, 20)], period=1)
    x = torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    small = c.allocate(x.to(dtype))
    big = c.allocate((x * scale).to(dtype))
    np.testing.assert_allclose(
        np.array(big.layer_errors) / scale, np.array(small.layer_errors), rtol=1e-4
    )
    payload, _ = c.compress((x * scale).to(dtype), c.init(x.to(dtype)))
    assert c.decompress(payload).isfinite().all()
