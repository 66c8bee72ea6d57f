"""Reading a run's metrics file and describing a run in a few lines a person can read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shoal.train import METRICS

__all__ = ["human_bytes", "read_metrics", "run_labels"]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``, one dict per round (``run_dir`` may also name
    the ``metrics.jsonl`` itself).

    A run killed while appending may leave a half-written last line: one without its newline
    (every row is written with one). It is skipped (a resumed run rewrites the file from its
    checkpoint anyway); any other line that is not JSON is an error naming it, and so is a value
    that is not a number or null (every metric is one: a hand-edited "n/a" or a list failed
    deep inside the plotting, or named no line).
    """
    path = Path(run_dir)
    if path.name != METRICS or not path.is_file():  # the run folder, or its metrics file
        path = path / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {METRICS} (is it a run folder?)")
    rows = []
    try:  # -sig: a byte-order mark (an editor's) made a valid first row "not a JSON line"
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); a metrics file?") from None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not text.endswith("\n"):
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
        if not isinstance(row, dict):  # valid JSON, but not a metrics row
            raise ValueError(f"{path}:{i + 1}: not a JSON object of metrics")
        for key, value in row.items():
            if value is not None and (isinstance(value, bool) or not _is_number(value)):
                raise ValueError(f"{path}:{i + 1}: {key} is {value!r}, not a number")
        rows.append(row)
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def seconds(s: float) -> str:
    """A simulated duration for people: ``0.0123 s``, ``4.56 s``, ``12,345.6 s`` (``.1f``
    showed a short run as ``0.0 s``; ``.4g`` a long one as ``1.235e+04 s``)."""
    return f"{s:.3g} s" if abs(s) < 10 else f"{s:,.1f} s"


def human_bytes(n: float) -> str:
    """``1536 -> "1.5 KiB"``; the unit is chosen after rounding (``1024**2 - 1`` is
    ``"1.0 MiB"``, not ``"1024.0 KiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        digits = 0 if unit == "B" else 1
        if abs(round(n, digits)) < 1024 or unit == "GiB":
            return f"{n:.{digits}f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Legend labels: each run folder's name, with parent folders added until they differ.
    The names as given (made absolute, not resolved): a symbolic link keeps its own name."""
    parts = [Path(os.path.abspath(p)).parts for p in run_dirs]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in run_dirs]
