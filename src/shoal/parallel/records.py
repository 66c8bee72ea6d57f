"""Files a run writes (metrics.jsonl, checkpoints, model.pt, summary.json) and its summary.

Writes are atomic (a temporary file, flushed, then renamed), so a run killed at any moment
leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shoal.evaluate import pooled, predict
from shoal.files import atomic_save, environment, replace_text
from shoal.functional import LossFn, ParamSpec

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
MODEL = "model.pt"


def checkpoint_name(rank: int | None) -> str:
    """``checkpoint.pt`` in simulation; one file per rank in distributed runs."""
    return "checkpoint.pt" if rank is None else f"checkpoint.rank{rank}.pt"


RANK_CHECKPOINTS = "checkpoint.rank*.pt"
"""The glob of a distributed run's per-rank checkpoints (:func:`checkpoint_name`)."""


def previous_checkpoint(path: Path) -> Path:
    """Where a process of a distributed run keeps the checkpoint before its newest one
    (``previous.rank<i>.pt``): its processes save on their own, so a job killed while they
    saved continues from the newest step that all of them have (see :mod:`.loop`)."""
    return path.with_name(path.name.replace("checkpoint", "previous", 1))


def evaluate(
    model: nn.Module,
    spec: ParamSpec,
    params_D: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    batch_size: int,
) -> tuple[float, float]:
    """Pooled ``(loss, accuracy)`` of the model with ``params_D`` on ``(x, y)``."""
    return pooled(*predict(model, spec, params_D, x, y, loss_fn, batch_size))


def check_finite(test_loss: float, step: int) -> None:
    """Stop a run whose model has diverged. The pooled test loss is NaN or inf when the
    evaluated parameters are (every process sees the same pooled value, so all of them stop
    together), and a run would otherwise go on training NaN to its last step."""
    if not math.isfinite(test_loss):
        raise FloatingPointError(
            f"step {step}: the test loss is {test_loss}: the model has NaN/inf entries; lower "
            "the learning rate or check the data"
        )


def summarize(
    algorithm: Any,
    rows: list[dict[str, Any]],
    *,
    num_workers: int,
    num_params: int,
    samples: float,
    train_seconds: float,
    target: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    evaluated = [r for r in rows if r.get("test_accuracy") is not None]
    last = rows[-1] if rows else {}
    compressor = getattr(algorithm, "compressor", None)  # sync_sgd's and local_sgd's
    return {
        "algorithm": algorithm.name,
        **({"compressor": compressor.name} if compressor is not None else {}),
        "steps": last.get("step", 0),
        "num_workers": num_workers,
        "num_params": num_params,
        "final_test_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        "final_test_loss": evaluated[-1]["test_loss"] if evaluated else None,
        "best_test_accuracy": max((r["test_accuracy"] for r in evaluated), default=None),
        "total_bytes_sent": last.get("bytes_sent", 0),
        "wall_seconds": last.get("wall_seconds", 0.0),
        "samples_per_second": samples / train_seconds if train_seconds > 0 else None,
        **({"sim_seconds": last["sim_seconds"]} if "sim_seconds" in last else {}),
        **target,
        "environment": environment(device),
    }


def save_final(
    out: Path, model: nn.Module, spec: ParamSpec, params_D: torch.Tensor, summary: dict[str, Any]
) -> None:
    atomic_save(spec.state_dict(model, params_D), out / MODEL)
    replace_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
