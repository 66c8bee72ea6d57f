"""FedAvg, FedSGD and FedProx against plain PyTorch references, plus argument checking."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from shoal.algorithms import (
    Algorithm,
    LocalWork,
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fednova,
    fedprox,
    fedsgd,
    fedyogi,
    scaffold,
)
from shoal.functional import ParamSpec
from shoal.schedule import Stragglers


def flat(model: torch.nn.Module) -> torch.Tensor:
    return ParamSpec.of(model).flatten(model)


def full_batch_gd(model: torch.nn.Module, x, y, lr: float, steps: int) -> torch.Tensor:
    """The reference: torch.optim.SGD on the mean cross-entropy of (x, y)."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return flat(model)


def test_fedavg_one_client_one_full_batch_step_is_sgd(problem, run):
    problem.clients = [problem.clients[3]]
    model = problem.model()
    x, y = problem.rows()
    expected = full_batch_gd(model, x, y, lr=0.3, steps=5)
    res = run(problem, fedavg(0.3), rounds=5, model=model, work=LocalWork(steps=1, batch_size=None))
    torch.testing.assert_close(res.params, expected, rtol=0, atol=1e-6)


def test_fedsgd_is_full_batch_gd_on_pooled_loss(problem, run):
    """Sample-weighted mean of per-client full-batch gradients = gradient of the pooled mean."""
    model = problem.model()
    x, y = problem.rows()
    expected = full_batch_gd(model, x, y, lr=0.5, steps=3)
    # The run's LocalWork asks for minibatch epochs; FedSGD must override it, and say so.
    work = LocalWork(epochs=3, batch_size=2)
    with pytest.warns(UserWarning, match="fedsgd fixes its own local work .* is ignored"):
        res = run(problem, fedsgd(0.5), rounds=3, model=model, work=work)
    torch.testing.assert_close(res.params, expected, rtol=0, atol=1e-6)


def test_fedprox_with_mu_zero_is_fedavg(problem, run):
    cfg = dict(
        rounds=3,
        clients_per_round=4,
        work=LocalWork(epochs=2, batch_size=3),
        stragglers=Stragglers(0.5),
    )
    avg = run(problem, fedavg(0.2), **cfg)
    prox = run(problem, fedprox(0.2, mu=0.0), **cfg)
    assert torch.equal(prox.params, avg.params)


def test_fedprox_large_mu_returns_the_proximal_point(problem, run):
    """With large mu the client solves min F_k(w) + mu/2 ||w - x||^2, so w - x ~ -grad F_k(x)/mu.

    30 full-batch steps with lr * mu = 0.5 converge to that proximal point (contraction 0.5
    per step); its distance to x is O(||grad|| / mu), while FedAvg's client wanders far.
    """
    problem.clients = [problem.clients[6]]
    model = problem.model()
    x0 = flat(model)
    xb, yb = problem.rows()
    g = torch.autograd.grad(F.cross_entropy(model(xb), yb), list(model.parameters()))
    g_D = torch.cat([t.reshape(-1) for t in g])
    mu = 100.0
    work = LocalWork(epochs=30, batch_size=None)
    prox = run(problem, fedprox(0.5 / mu, mu=mu), rounds=1, model=model, work=work)
    avg = run(problem, fedavg(0.5 / mu), rounds=1, model=model, work=work)
    delta = prox.params - x0
    assert torch.linalg.norm(delta + g_D / mu) <= 0.05 * torch.linalg.norm(g_D / mu)
    assert torch.linalg.norm(delta) < 0.1 * torch.linalg.norm(avg.params - x0)


def test_fedprox_correction_is_the_proximal_gradient():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(3, 5, generator=g), torch.randn(5, generator=g)
    out = fedprox(0.1, mu=2.0).correction(w, {"params": x}, {})
    torch.testing.assert_close(out, 2.0 * (w - x))
    assert fedprox(0.1, mu=0.0).correction(w, {"params": x}, {}) is None


ALL = [
    fedavg(0.1),
    fedsgd(0.1),
    fedprox(0.1, 0.01),
    scaffold(0.1),
    fedavgm(0.1),
    fedadagrad(0.1, 0.1),
    fedadam(0.1, 0.1),
    fedyogi(0.1, 0.1),
    fednova(0.1),
]


@pytest.mark.parametrize("alg", ALL, ids=lambda a: a.name)
def test_every_algorithm_satisfies_the_protocol(alg):
    assert isinstance(alg, Algorithm)
    with pytest.raises(AttributeError):  # frozen dataclasses
        alg.lr = 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: fedavg(0.0),
        lambda: fedsgd(-1.0),
        lambda: fedprox(0.1, mu=-0.1),
        lambda: fedprox(0.1, mu=float("nan")),
        lambda: fedprox(float("inf"), mu=0.1),
        lambda: scaffold(0.1, server_lr=0.0),
        lambda: fedavgm(0.1, momentum=1.0),
        lambda: fedavgm(0.1, server_lr=-1.0),
        lambda: fedadagrad(0.1, 0.1, beta1=-0.1),
        lambda: fedadam(0.1, 0.1, beta2=1.0),
        lambda: fedadam(0.1, 0.1, tau=0.0),
        lambda: fedyogi(0.1, 0.0),
        lambda: fedyogi(0.1, 0.1, beta1=1.5),
        lambda: fednova(float("nan")),
        # Not numbers: a TypeError from a comparison, or accepted (True is 1, "false" truthy).
        lambda: fedavg("0.1"),
        lambda: fedavg(True),
        lambda: fedprox(0.1, mu=None),
        lambda: fedavgm(0.1, momentum="0.9"),
        lambda: fedadam(0.1, 0.1, bias_correction="false"),
        lambda: fedadagrad(0.1, 0.1, bias_correction=1),
    ],
)
def test_factories_reject_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("field", ["epochs", "batch_size", "steps", "min_epochs"])
def test_local_work_counts_must_be_integers(field):
    """epochs=2.7 ran 2 epochs without a word; a float batch_size or steps failed in round 1."""
    extra = {"epochs": 3} if field == "min_epochs" else {}  # steps replace epochs: none
    with pytest.raises(ValueError, match=f"LocalWork.{field} must be an integer, got 2.5$"):
        LocalWork(**{**extra, field: 2.5})
    assert LocalWork(**{**extra, field: 2}) is not None
