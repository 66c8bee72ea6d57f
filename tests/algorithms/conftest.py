"""Shared fixtures for the algorithm tests: a tiny classification problem and a runner.

Everything is small on purpose (a 51-parameter MLP, tens of samples): these tests check
update rules against references, not learning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from shoal.data.types import ArrayDataset, FederatedDataset

FEATURES, CLASSES = 4, 3


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, CLASSES))


class Point(nn.Module):
    """The model is a point ``x``; every sample predicts it (for quadratic/linear clients)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(dim))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.x.expand(inp.shape[0], -1)


@dataclass
class Problem:
    data: FederatedDataset
    clients: list[np.ndarray]
    build: Callable[[], nn.Module] = tiny_mlp

    def model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build()

    def rows(self, client_ids: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled training rows of some clients (all by default)."""
        ids = range(len(self.clients)) if client_ids is None else client_ids
        idx = torch.from_numpy(np.concatenate([self.clients[k] for k in ids]))
        return self.data.train.x[idx], self.data.train.y[idx]


def make_problem(sizes: tuple[int, ...] = (3, 5, 8, 11, 6, 9, 15), seed: int = 0) -> Problem:
    """Random features, labels from a random linear rule, clients of unequal sizes."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, FEATURES, generator=g)
    y = (x @ torch.randn(FEATURES, CLASSES, generator=g)).argmax(1)
    train = ArrayDataset(x, y, CLASSES)
    test = ArrayDataset(x[:10], y[:10], CLASSES)
    offsets = np.cumsum((0, *sizes))
    clients = [np.arange(offsets[k], offsets[k + 1]) for k in range(len(sizes))]
    return Problem(FederatedDataset("tiny", train, test), clients)


def make_label_problem(sizes: tuple[int, ...]) -> Problem:
    """Client ``i`` holds ``sizes[i]`` rows, all of label ``i``; the model is a :class:`Point`
    of dimension ``len(sizes)``. With batch size 1 and one epoch, client ``i`` takes exactly
    ``sizes[i]`` local steps, and a loss of ``(out, y)`` makes client ``i``'s objective any
    function of ``x`` and ``i`` (the paper's quadratic ``0.5 ||x - e_i||^2``, say)."""
    n = len(sizes)
    y = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    ds = ArrayDataset(torch.zeros(len(y), 1), y, n)
    offsets = np.cumsum((0, *sizes))
    clients = [np.arange(offsets[i], offsets[i + 1]) for i in range(n)]
    return Problem(FederatedDataset("label-clients", ds, ds), clients, lambda: Point(n))


@pytest.fixture
def label_problem() -> Callable[[tuple[int, ...]], Problem]:
    return make_label_problem


@pytest.fixture
def problem() -> Problem:
    return make_problem()


@pytest.fixture
def problem_factory() -> Callable[..., Problem]:
    return make_problem


def fit(
    problem: Problem,
    algorithm: Any,
    *,
    rounds: int,
    clients_per_round: int | None = None,
    runtime: Any = None,
    model: nn.Module | None = None,
    out_dir: Any = None,
    **config: Any,
) -> Any:
    """``shoal.train.train`` on the problem, quietly, on the CPU, looped runtime by default."""
    from shoal.runtime.sim import SimRuntime
    from shoal.schedule import ClientSampler
    from shoal.train import TrainConfig, train

    m = clients_per_round if clients_per_round is not None else len(problem.clients)
    loss_fn = config.pop("loss_fn", None)
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(m),
        progress=False,
        device="cpu",
        eval_every=rounds,
        **config,
    )
    extra = {} if loss_fn is None else {"loss_fn": loss_fn}
    return train(
        model if model is not None else problem.model(),
        problem.data,
        problem.clients,
        algorithm,
        cfg,
        runtime=runtime if runtime is not None else SimRuntime(vectorize=False),
        out_dir=out_dir,
        **extra,
    )


@pytest.fixture
def run() -> Callable[..., Any]:
    return fit
