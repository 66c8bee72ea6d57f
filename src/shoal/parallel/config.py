"""What a data-parallel run is configured with, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from shoal.checks import check_counts, check_flag, check_instance, check_seed, is_integer, is_real
from shoal.functional import ParamSpec
from shoal.parallel.base import State


@dataclass(frozen=True)
class ParallelConfig:
    """Everything about a run of :func:`shoal.parallel.train_parallel` that is not an object.

    ``slowdown`` emulates stragglers: worker ``w``'s compute takes ``factor`` times as long
    (after each gradient computation it sleeps ``factor - 1`` times the time it measured). In
    simulation all workers compute together, so every step waits for the slowest, as a
    synchronous step would. ``target_accuracy`` stops the run at the first evaluation that
    reaches it and records ``time_to_target_seconds`` and ``steps_to_target``.
    Momentum, weight decay and the like belong to the algorithm.
    """

    steps: int
    batch_size: int = 32
    seed: int = 0
    eval_every: int = 50
    eval_batch_size: int = 256
    target_accuracy: float | None = None
    device: str = "auto"
    progress: bool = True
    checkpoint_every: int = 100
    slowdown: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_counts(
            self, ("steps", "batch_size", "eval_every", "eval_batch_size", "checkpoint_every")
        )
        # The seed keys every draw, through numpy's SeedSequence, as TrainConfig's does.
        check_seed(self.seed)
        target = self.target_accuracy  # "0.5" failed in a comparison, True was 1
        if target is not None and not (is_real(target) and 0 < target <= 1):
            raise ValueError(f"target_accuracy must be in (0, 1], got {target!r}")
        check_flag(self.progress, "progress")  # "no" showed the bar
        check_instance(self.slowdown, dict, "slowdown", " of worker id -> factor")
        for worker, factor in self.slowdown.items():
            if not is_integer(worker) or worker < 0:
                raise ValueError(f"slowdown keys are worker ids >= 0, got {worker!r}")
            if not (is_real(factor) and 1.0 <= factor < float("inf")):
                raise ValueError(f"slowdown factors must be >= 1, got {factor!r} for {worker}")


@dataclass
class ParallelResult:
    """The evaluated model ``params`` (flat: the workers' average, or the centre; the same on
    every process), this process's workers' final parameters and algorithm state, and, on
    the process that reports (see ``Comm.is_main``), the metrics."""

    params: torch.Tensor
    params_WD: torch.Tensor
    state: State
    spec: ParamSpec
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
