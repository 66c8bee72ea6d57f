"""The keystone for algorithms: looped and vectorized SimRuntime give the same model.

Every algorithm runs a few rounds with unequal client sizes, partial participation,
heterogeneous epochs and stragglers (so clients take different numbers of local steps and
the vectorized runtime compacts them), once in one chunk and once under a tiny memory budget
that forces several chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from shoal.aggregate import mean
from shoal.algorithms import (
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
from shoal.compress import identity
from shoal.functional import ParamSpec, cross_entropy
from shoal.models import mclr, mlp
from shoal.runtime.base import RoundTask
from shoal.runtime.fused import linear_chain
from shoal.runtime.loop import ClientLoop
from shoal.runtime.sim import SimRuntime
from shoal.schedule import Stragglers, make_plan

# Every algorithm runs with the same LocalWork; FedSGD's warning that it uses its own is
# expected here (tests/algorithms/test_fedavg_family.py checks that it is given).
pytestmark = pytest.mark.filterwarnings("ignore:fedsgd fixes its own local work")

ALGORITHMS = [
    fedavg(0.1),
    fedsgd(0.1),
    fedprox(0.1, mu=0.5),
    scaffold(0.1, server_lr=0.8),
    fedavgm(0.1, server_lr=0.9, momentum=0.9),
    fedadagrad(0.1, server_lr=0.05),
    fedadam(0.1, server_lr=0.01),
    fedyogi(0.1, server_lr=0.01),
    fednova(0.1),
]

CLIENTS_PER_ROUND = 4
FEATURES, CLASSES = 4, 3  # as the problem fixture's


class ChunkSpy(SimRuntime):
    """SimRuntime that records the chunk sizes it chooses."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunks: list[int] = []

    def chunk_size(self, task: RoundTask, batch: int) -> int:
        c = super().chunk_size(task, batch)
        self.chunks.append(c)
        return c


@pytest.mark.parametrize("budget_mb", [1024.0, 0.004], ids=["one-chunk", "tiny-budget"])
@pytest.mark.parametrize("alg", ALGORITHMS, ids=lambda a: a.name)
def test_vectorized_equals_looped(problem, run, alg, budget_mb):
    cfg = dict(
        rounds=3,
        clients_per_round=CLIENTS_PER_ROUND,
        work=LocalWork(epochs=2, batch_size=4, min_epochs=1),
        stragglers=Stragglers(0.25),
    )
    looped = run(problem, alg, runtime=SimRuntime(vectorize=False), **cfg)
    spy = ChunkSpy(vectorize=True, memory_budget_mb=budget_mb)
    vectorized = run(problem, alg, runtime=spy, **cfg)
    if budget_mb < 1:
        assert max(spy.chunks) < CLIENTS_PER_ROUND  # several chunks per round
    else:
        assert min(spy.chunks) >= CLIENTS_PER_ROUND
    torch.testing.assert_close(vectorized.params, looped.params, rtol=0, atol=1e-5)
    # The runs moved the model: a no-op would pass the equality trivially.
    model = problem.model()
    assert (looped.params - ParamSpec.of(model).flatten(model)).abs().max() > 1e-3


def _relu_mlp() -> torch.nn.Module:
    return mlp(FEATURES, (7, 5), CLASSES)  # Flatten, Linear, ReLU, Linear, ReLU | Linear


@pytest.mark.parametrize("alg", ALGORITHMS, ids=lambda a: a.name)
def test_fused_mlp_step_equals_autograd(problem, run, alg):
    problem.build = _relu_mlp
    cfg = dict(
        rounds=3,
        clients_per_round=CLIENTS_PER_ROUND,
        work=LocalWork(epochs=2, batch_size=4, min_epochs=1),
        stragglers=Stragglers(0.25),
    )
    autograd = run(problem, alg, runtime=SimRuntime(vectorize=False, fused=False), **cfg)
    fused = run(problem, alg, runtime=SimRuntime(vectorize=False), **cfg)
    stacked = run(problem, alg, runtime=SimRuntime(vectorize=True), **cfg)
    chunked = run(problem, alg, runtime=SimRuntime(vectorize=True, memory_budget_mb=0.004), **cfg)
    vmapped = run(problem, alg, runtime=SimRuntime(vectorize=True, fused=False), **cfg)
    for other in (fused, stacked, chunked, vmapped):
        torch.testing.assert_close(other.params, autograd.params, rtol=0, atol=1e-5)
        assert [m["train_loss"] for m in other.metrics] == pytest.approx(
            [m["train_loss"] for m in autograd.metrics], abs=1e-6
        )
    model = problem.model()
    assert (fused.params - ParamSpec.of(model).flatten(model)).abs().max() > 1e-3


def _task(model: torch.nn.Module, loss_fn=cross_entropy) -> RoundTask:
    spec = ParamSpec.of(model)
    x = torch.zeros(2, FEATURES)
    return RoundTask(
        model, spec, loss_fn, fedavg(0.1), mean(), identity(), spec.flatten(model), {}, x,
        torch.zeros(2, dtype=torch.long), np.zeros(0), [], np.zeros(0),
    )  # fmt: skip


def test_fused_step_applies_only_to_relu_chains_under_cross_entropy():
    nn = torch.nn
    assert linear_chain(_task(_relu_mlp())) is not None
    assert linear_chain(_task(mclr(FEATURES, CLASSES))) is not None
    assert linear_chain(_task(nn.Sequential(nn.Linear(FEATURES, CLASSES)))) is not None
    tanh = nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, CLASSES))
    assert linear_chain(_task(tanh)) is None
    frozen = _relu_mlp()
    frozen.head.bias.requires_grad_(False)
    assert linear_chain(_task(frozen)) is None
    assert linear_chain(_task(_relu_mlp(), loss_fn=lambda o, y: (o - 0).pow(2).sum(1))) is None

    class Custom(nn.Sequential):  # a forward of its own is not a plain chain
        def forward(self, x):
            return super().forward(x) * 2

    assert linear_chain(_task(Custom(nn.Linear(FEATURES, CLASSES)))) is None
    images = _task(nn.Sequential(nn.Linear(FEATURES, CLASSES)))  # 3-D samples, no Flatten
    assert linear_chain(dataclasses.replace(images, x=torch.zeros(2, 2, FEATURES // 2))) is None


def test_a_module_placed_twice_in_a_chain_is_run_twice(problem, run):
    nn = torch.nn
    relu = nn.ReLU()  # one instance between every pair of layers, a common way to write it
    problem.build = lambda: nn.Sequential(
        nn.Linear(FEATURES, 6), relu, nn.Linear(6, 5), relu, nn.Linear(5, CLASSES)
    )
    cfg = dict(rounds=2, work=LocalWork(epochs=2, batch_size=4))
    autograd = run(problem, fedavg(0.1), runtime=SimRuntime(vectorize=False, fused=False), **cfg)
    fused = run(problem, fedavg(0.1), runtime=SimRuntime(vectorize=False), **cfg)
    # The fused step used to drop the second ReLU: 0.1 apart after two rounds.
    torch.testing.assert_close(fused.params, autograd.params, rtol=0, atol=1e-5)
    lin = nn.Linear(6, 6)  # a layer applied twice shares its weights: autograd's
    twice = nn.Sequential(nn.Linear(FEATURES, 6), nn.ReLU(), lin, nn.ReLU(), lin)
    assert linear_chain(_task(twice)) is None


def test_a_model_with_hooks_goes_through_autograd():
    # The fused step never calls the modules, so it skipped their hooks: a forward hook that
    # scaled a layer's output trained a different model from autograd's.
    nn = torch.nn
    hooks = [
        lambda m: m[0].register_forward_hook(lambda mod, inp, out: 2 * out),
        lambda m: m[0].register_forward_pre_hook(lambda mod, inp: (3 * inp[0],)),
        lambda m: m.register_forward_hook(lambda mod, inp, out: -out),
        lambda m: m[2].register_full_backward_hook(lambda mod, gin, gout: gin),
    ]
    for register in hooks:
        model = nn.Sequential(nn.Linear(FEATURES, 6), nn.ReLU(), nn.Linear(6, CLASSES))
        handle = register(model)
        assert linear_chain(_task(model)) is None
        handle.remove()
        assert linear_chain(_task(model)) is not None


def test_a_global_module_hook_sends_every_model_through_autograd():
    # Hooks registered for every module are called by autograd's forward; the fused step
    # skipped them, as it did a module's own hooks.
    nn, hooks = torch.nn, torch.nn.modules.module
    registers = [
        lambda: hooks.register_module_forward_hook(lambda mod, inp, out: out),
        lambda: hooks.register_module_forward_pre_hook(lambda mod, inp: None),
        lambda: hooks.register_module_full_backward_hook(lambda mod, gin, gout: None),
        lambda: hooks.register_module_full_backward_pre_hook(lambda mod, gout: None),
    ]
    model = nn.Sequential(nn.Linear(FEATURES, 6), nn.ReLU(), nn.Linear(6, CLASSES))
    for register in registers:
        handle = register()
        try:
            assert linear_chain(_task(model)) is None
        finally:
            handle.remove()
        assert linear_chain(_task(model)) is not None


def test_fused_step_keeps_float64():
    # Each row's 1/count came out of a float32 division: a float64 run's fused step was 1e-8
    # off its autograd step.
    torch.manual_seed(0)
    model = _relu_mlp().double()
    spec = ParamSpec.of(model)
    params = spec.flatten(model).double()
    x, y = torch.randn(7, FEATURES, dtype=torch.float64), torch.randint(0, CLASSES, (7,))
    plans = [make_plan(np.arange(7), LocalWork(epochs=3, batch_size=3), 3, 0, 0, 0)]  # 3, 3, 1
    task = dataclasses.replace(_task(model), params_D=params, down={"params": params}, x=x, y=y)
    fused, loss, _ = ClientLoop(fused=True).train(task, plans, {})
    autograd, loss_ref, _ = ClientLoop(fused=False).train(task, plans, {})
    torch.testing.assert_close(fused, autograd, rtol=0, atol=1e-12)
    assert loss == pytest.approx(loss_ref, rel=0, abs=1e-12)
    assert (fused[0] - params).abs().max() > 1e-3
