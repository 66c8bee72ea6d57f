"""Looking at a split: per-client label counts, a terminal table, and feature-noise skew."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from shoal.checks import is_real
from shoal.data.types import check_labels


def label_histogram(
    labels: np.ndarray | torch.Tensor, client_indices: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Counts ``[clients, classes]``: how many samples of each class each client holds."""
    labels = np.asarray(labels)
    check_labels(labels, num_classes)
    hist = np.zeros((len(client_indices), num_classes), dtype=np.int64)
    for i, idx in enumerate(client_indices):
        hist[i] = np.bincount(labels[_indices(idx, i)], minlength=num_classes)
    return hist


def _indices(idx: np.ndarray, i: int) -> np.ndarray:
    """Client ``i``'s sample indices as int64; a boolean mask is refused, since converting it
    gives indices 0 and 1 (every selected sample counted as sample 1), silently."""
    arr = np.asarray(idx)
    if arr.dtype == np.bool_:
        raise ValueError(
            f"client_indices[{i}] is a boolean mask; pass sample indices (np.flatnonzero(mask))"
        )
    return arr.astype(np.int64, copy=False)


def format_histogram(hist: np.ndarray, max_rows: int = 20, who: str = "client") -> str:
    """A plain-text table of a label histogram: one row per client, its size and class count.

    With more than ``max_rows`` clients the first and last rows are shown around a ``...`` line;
    a final row gives the totals. ``who`` names a row (``"worker"`` for data-parallel ones).
    """
    hist = np.asarray(hist)
    if hist.ndim != 2:
        raise ValueError(f"hist must be [clients, classes], got shape {hist.shape}")
    num_clients, num_classes = hist.shape
    # Wide enough for the totals row too: a class's total outgrows any one client's count.
    width = max(len(str(int(hist.sum(axis=0).max(initial=0)))), len(str(num_classes - 1)), 1)
    total_w = max(len(str(int(hist.sum()))), 5)
    head = f"{who:>6} {'n':>{total_w}} {'#cls':>4} | "
    lines = [head + " ".join(f"{c:>{width}}" for c in range(num_classes))]
    lines.append("-" * len(lines[0]))

    def row(label: str, counts: np.ndarray) -> str:
        nonzero = int((counts > 0).sum())
        cells = " ".join(f"{int(v):>{width}}" if v else f"{'.':>{width}}" for v in counts)
        return f"{label:>6} {int(counts.sum()):>{total_w}} {nonzero:>4} | {cells}"

    if num_clients > max_rows:
        top, bottom = (max_rows + 1) // 2, max_rows // 2
        shown = list(range(top)) + [-1] + list(range(num_clients - bottom, num_clients))
    else:
        shown = list(range(num_clients))
    for i in shown:
        if i < 0:
            lines.append(f"{'...':>6} ({num_clients - max_rows} more {who}s)")
        else:
            lines.append(row(str(i), hist[i]))
    lines.append("-" * len(lines[0]))
    lines.append(row("total", hist.sum(axis=0)))
    return "\n".join(lines)


def feature_noise(
    x: torch.Tensor,
    client_indices: Sequence[np.ndarray],
    sigma: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Feature-distribution skew: add ``N(0, (sigma * i / W)^2)`` noise to client ``i``'s samples.

    Clients are numbered ``i = 0..W-1``, so client 0 keeps clean features (NIID-Bench / Li et
    al. 2022, "noise-based feature imbalance", the paper's ``sigma * i / N``; its code divides
    by ``N - 1``, so there the last client gets the full ``sigma``). Returns a new tensor;
    ``x`` is left unchanged and samples outside every client stay clean. Noise comes from
    ``rng``, so it is reproducible.
    """
    if not x.is_floating_point():
        raise TypeError(f"feature_noise needs floating-point features, got {x.dtype}")
    if not (is_real(sigma) and 0 <= sigma < math.inf):  # NaN filled the features with NaN
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    out = x.clone()
    num_clients = len(client_indices)
    for i, idx in enumerate(client_indices):
        std = sigma * i / num_clients
        idx_t = torch.as_tensor(_indices(idx, i))
        if std == 0 or len(idx_t) == 0:
            continue
        noise = rng.normal(0.0, std, size=(len(idx_t), *x.shape[1:]))
        out[idx_t] += torch.from_numpy(noise).to(dtype=x.dtype, device=x.device)
    return out
