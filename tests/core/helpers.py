"""Small shared fixtures for the core tests: a tiny dataset and model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shoal.data.types import ArrayDataset, FederatedDataset


def tiny_data(
    n_train: int = 240, n_test: int = 60, dim: int = 8, seed: int = 0
) -> FederatedDataset:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, 3, generator=g)
    x = torch.randn(n_train + n_test, dim, generator=g)
    y = (x @ w).argmax(1)
    return FederatedDataset(
        "tiny",
        ArrayDataset(x[:n_train], y[:n_train], 3),
        ArrayDataset(x[n_train:], y[n_train:], 3),
    )


def unequal_clients(n: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Clients of clearly different sizes (so local step counts differ)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=num_clients - 1, replace=False))
    return [p for p in np.split(rng.permutation(n), cuts)]


def tiny_model(dim: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 3))


class WSConv2d(nn.Conv2d):
    """Weight Standardization (Qiao et al. 2019), written as its code does: ``w.view``, which
    fails on a kernel in channels-last layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        m = w.view(w.size(0), -1).mean(1).view(-1, 1, 1, 1)
        s = w.view(w.size(0), -1).std(1).view(-1, 1, 1, 1) + 1e-5
        return nn.functional.conv2d(x, (w - m) / s, self.bias)
