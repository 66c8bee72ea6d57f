"""Loading the benchmark scripts (files in ``benchmarks/``, not a package) into tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import their siblings (_args, _workload, ...)


def script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dgc_result(dense: bool, dgc_after_warmup: int | None) -> dict[str, Any]:
    """What ``dgc_mnist5k.run_one`` returns, for tests that replace the training."""
    return {
        "algorithm": "dense" if dense else "dgc",
        "final_accuracy": 0.5,
        "best_accuracy": 0.5,
        "mean_last5_eval_accuracy": 0.5,
        "total_uplink_bytes": 1000 if dense else 500,
        "uplink_bytes_per_round_after_warmup": 100 if dense else dgc_after_warmup,
        "rounds_per_epoch": 16,
        "wall_s": 0.0,
    }
