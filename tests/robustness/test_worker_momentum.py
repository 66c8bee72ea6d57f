"""Worker momentum (the data-parallel grid's algorithm) against a plain PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shoal.aggregate import mean
from shoal.algorithms import LocalWork
from shoal.data.types import ArrayDataset, FederatedDataset
from shoal.functional import ParamSpec
from shoal.robustness import worker_momentum
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train


def test_mean_of_worker_momenta_is_dampened_momentum_sgd_on_the_mean_gradient():
    # With the mean (linear), averaging the workers' momenta equals one momentum buffer on the
    # averaged gradient: m <- b m + (1 - b) g, x <- x - lr m, g = mean_i grad F_i(x).
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    data = FederatedDataset("tiny", ArrayDataset(x, y, 3), ArrayDataset(x[:8], y[:8], 3))
    clients = [np.arange(i, 40, 4) for i in range(4)]  # 10 samples each: one full batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    spec = ParamSpec.of(model)
    lr, beta, rounds = 0.4, 0.9, 6

    ref = model
    params = spec.flatten(model)
    m = torch.zeros_like(params)
    for _ in range(rounds):
        grads = []
        for idx in clients:
            spec.load_into(ref, params)
            ref.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in ref.parameters()]))
        m = beta * m + (1 - beta) * torch.stack(grads).mean(0)
        params = params - lr * m

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(4),
        work=LocalWork(epochs=1, batch_size=10, steps=1),
        weighting="uniform",
        progress=False,
        client_eval=False,
        device="cpu",
    )
    alg = worker_momentum(lr, beta, batch_size=10)
    res = train(model, data, clients, alg, cfg, aggregator=mean())
    torch.testing.assert_close(res.params, params, rtol=0, atol=1e-5)


def test_worker_momentum_checks_its_arguments():
    with pytest.raises(ValueError, match="momentum must be in"):
        worker_momentum(0.1, 1.0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        worker_momentum(0.0)
    assert worker_momentum(0.1, batch_size=7).work_override == LocalWork(1, 7, steps=1)
