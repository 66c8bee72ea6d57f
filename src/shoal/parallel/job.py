"""What every process of a run works on, and the counters its checkpoint holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from shoal.cost import CostModel
from shoal.data.types import FederatedDataset
from shoal.functional import LossFn, ParamSpec
from shoal.parallel.base import ParallelAlgorithm
from shoal.parallel.comm import Comm
from shoal.parallel.config import ParallelConfig

Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Job:
    """The arguments of :func:`shoal.parallel.train_parallel`, checked and placed."""

    model: nn.Module
    spec: ParamSpec
    data: FederatedDataset
    shards: Sequence[np.ndarray]
    algorithm: ParallelAlgorithm
    config: ParallelConfig
    comm: Comm
    loss_fn: LossFn
    out: Path | None
    callback: Callback | None
    network: CostModel | None = None

    @property
    def rank(self) -> int | None:
        """This process's rank in a distributed run; ``None`` in simulation."""
        return getattr(self.comm, "rank", None)


@dataclass
class Progress:
    """The counters a checkpoint holds (this process's, except the ``last_*`` totals)."""

    step: int = 0
    wall: float = 0.0
    train_seconds: float = 0.0
    samples: float = 0.0
    loss_sum: float = 0.0
    loss_count: float = 0.0
    last_samples: float = 0.0
    last_train_seconds: float = 0.0
    steps_to_target: int | None = None
    time_to_target_seconds: float | None = None
    sim_seconds: float = 0.0

    def target(self, config: ParallelConfig) -> dict[str, Any]:
        return {
            "target_accuracy": config.target_accuracy,
            "steps_to_target": self.steps_to_target,
            "time_to_target_seconds": self.time_to_target_seconds,
        }
