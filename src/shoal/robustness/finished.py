"""The grid's finished cells, kept as they end, so a killed or failed grid resumes.

A 56-cell grid trains for about ten minutes: killed (Ctrl-C, a closed terminal) or stopped by
an error in one cell, it kept nothing, and the next run trained every cell again.
:class:`FinishedCells` appends each finished cell to a JSON-lines file, keyed by everything its
result depends on (the style, rounds and workload setup, a digest of the data, the split and
the initial model, the attack's and the aggregator's reprs, Shoal's version), and hands a later
grid the cells of the same key instead of training them. A line cut short by a kill is skipped,
so that cell is trained again. The torch thread count is not in the key: it changes only the
time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from shoal.files import append_metrics, split_digest


def workload_digest(tensors: list[torch.Tensor], parts: list[Any]) -> str:
    """A digest of the data, the initial parameters (``tensors``) and the split (``parts``)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    h.update(split_digest(parts).encode())
    return h.hexdigest()[:16]


class FinishedCells:
    """The cells in ``path`` (created on the first :meth:`add`), by their key's JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: dict[str, dict[str, Any]] = {}
        if not path.is_file():
            return
        text = path.read_text()
        if text and not text.endswith("\n"):  # the next line must not be glued to a cut one
            with open(path, "a") as f:
                f.write("\n")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self.cells[entry["key"]] = entry["cell"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill: its cell is trained again

    @staticmethod
    def key(**parts: Any) -> str:
        return json.dumps(parts, sort_keys=True)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cells.get(key)

    def add(self, key: str, cell: dict[str, Any]) -> None:
        self.cells[key] = cell
        append_metrics(self.path, {"key": key, "cell": cell})  # a Ctrl-C waits for the line
