"""Workload W, shared by the Shoal worker and Flower's ServerApp/ClientApp.

The 4,000 training images of ``mnist5k`` split over 100 clients with Shoal's
``dirichlet(0.5)`` partitioner and ``np.random.default_rng(0)``; the 1,000 test images as the
server's test set. ``copies > 1`` repeats the 100 partitions (the 1,000-client scale mode):
client ``c`` holds the data of W's client ``c % 100``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

NUM_CLIENTS = 100
ALPHA = 0.5
PARTITION_SEED = 0
INIT_SEED = 0
SCHEDULE_SEED = 0
LR = 0.05
BATCH_SIZE = 10
EPOCHS = 1
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist5k"


def build_model(name: str) -> torch.nn.Module:
    from shoal.models import cnn, mlp

    if name == "mlp":
        return mlp()
    if name == "cnn":
        # Workload W's CNN as measured in reference/flower-baseline.md: McMahan's layers
        # without padding (FC input 1024, 582,026 parameters); cnn() with "same" padding is
        # the paper's 1,663,370-parameter count.
        return cnn(padding="valid")
    raise ValueError(f"unknown model {name!r}; use mlp or cnn")


def initial_model(name: str) -> torch.nn.Module:
    """The model with W's initial weights (``init_params(build, seed=0)``)."""
    from shoal.functional import init_params

    model, _ = init_params(lambda: build_model(name), INIT_SEED)
    return model


@cache
def load(data_dir: str, copies: int = 1):  # -> (FederatedDataset, list[np.ndarray])
    """The dataset and the client index arrays (cached per process)."""
    from shoal.data.idx import load_mnist_family
    from shoal.data.partition import dirichlet

    data = load_mnist_family(data_dir)
    rng = np.random.default_rng(PARTITION_SEED)
    parts = dirichlet(ALPHA)(data.train.y.numpy(), NUM_CLIENTS, rng)
    return data, list(parts) * copies


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy on the test set in batches of 1,000 (Flower's side; Shoal's evaluates in
    ``TrainConfig``'s default batches of 256, the same accuracy)."""
    model.eval()
    correct = 0
    for i in range(0, len(y), 1000):
        correct += int((model(x[i : i + 1000]).argmax(-1) == y[i : i + 1000]).sum())
    model.train()
    return correct / len(y)
