"""Shoal's FedAvg against a plain PyTorch FedAvg loop (nn.Module + torch.optim.SGD).

The plain loop is what a user would write by hand (and what Flower's clients run): copy the
global model, iterate the same minibatches with ``torch.optim.SGD``, average the client
models weighted by their sample counts. Both runtimes must agree with it.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shoal.algorithms import fedavg
from shoal.algorithms.base import LocalWork
from shoal.data import dirichlet, load_mnist_family
from shoal.data.builtin import load_digits
from shoal.data.types import ArrayDataset, FederatedDataset
from shoal.functional import ParamSpec, init_params
from shoal.models import mlp
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler, Stragglers, make_plan
from shoal.train import TrainConfig, train

MNIST5K = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist5k"


def _plain_fedavg(model, data, clients, rounds, cfg: TrainConfig, lr: float):
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    for r in range(rounds):
        sampled = cfg.sampler(sizes, cfg.seed, r)
        epochs = Stragglers().epochs(len(sampled), cfg.work, cfg.seed, r)
        new = {k: torch.zeros_like(v) for k, v in global_state.items()}
        total = sizes[sampled].sum()
        for c, e in zip(sampled, epochs):
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            plan = make_plan(clients[c], cfg.work, int(e), cfg.seed, r, int(c))
            for idx, mask in zip(plan.index_TB, plan.mask_TB):
                rows = torch.from_numpy(idx[mask > 0])
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(data.train.x[rows]), data.train.y[rows])
                loss.backward()
                opt.step()
            for k, v in model.state_dict().items():
                new[k] += v * (sizes[c] / total)
        global_state = new
    model.load_state_dict(global_state)
    return ParamSpec.of(model).flatten(model)


def _mini_w() -> tuple[FederatedDataset, list[np.ndarray], int]:
    """A slice of workload W: 600 mnist5k images over 20 Dirichlet(0.5) clients; where the
    shared subset is not next to this checkout, the same on scikit-learn's digits (so the
    check always runs). Also returns the input size."""
    if MNIST5K.exists():
        full = load_mnist_family(MNIST5K)
    else:
        full = load_digits()
    train_ds = ArrayDataset(full.train.x[:600], full.train.y[:600], 10)
    data = FederatedDataset("mini", train_ds, full.test)
    clients = dirichlet(0.5, min_size=5)(train_ds.y.numpy(), 20, np.random.default_rng(0))
    return data, clients, int(train_ds.x[0].numel())


def _against_plain_loop(
    build: Callable[[int], nn.Module], rounds: int, per_round: int, vectorize: bool
) -> None:
    """FedAvg (lr 0.05, 1 epoch of batch 10) by ``train`` and by the plain PyTorch loop, from
    the same initial weights of ``build(inputs)``."""
    data, clients, inputs = _mini_w()
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(per_round),
        work=LocalWork(epochs=1, batch_size=10),
        device="cpu",  # the plain loop runs on the CPU
        progress=False,
    )
    model, init = init_params(lambda: build(inputs), 0)
    reference = _plain_fedavg(model, data, clients, rounds, cfg, lr=0.05)
    model, init = init_params(lambda: build(inputs), 0)
    ours = train(
        model, data, clients, fedavg(0.05), cfg, init=init, runtime=SimRuntime(vectorize=vectorize)
    )
    torch.testing.assert_close(ours.params, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("vectorize", [True, False])
def test_fedavg_equals_plain_pytorch_loop(vectorize):
    _against_plain_loop(mlp, rounds=3, per_round=5, vectorize=vectorize)


class _WithUnused(nn.Module):
    """A model with a parameter its forward does not use (a spare head, say)."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(inputs, 16)
        self.spare = nn.Linear(16, 3)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


@pytest.mark.parametrize("vectorize", [True, False])
def test_an_unused_parameter_is_left_as_torch_optim_leaves_it(vectorize):
    # autograd.grad raised "appears to not have been used in the graph" in round 1, where
    # torch.optim.SGD skips the parameter.
    _against_plain_loop(_WithUnused, rounds=2, per_round=4, vectorize=vectorize)
