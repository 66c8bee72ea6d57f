"""Containers for datasets: plain tensors in memory, plus an optional natural split.

Shape legend: ``N`` samples, ``C`` channels, ``H``/``W`` image height/width, ``F`` features,
``L`` sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shoal.checks import check_count


def check_labels(
    y: np.ndarray | torch.Tensor, num_classes: int, name: str = "labels", hint: str = ""
) -> None:
    """Class labels must lie in ``[0, num_classes)``: the one check (and wording) of every
    reader and of :class:`ArrayDataset`, which say where in ``name`` and what to do in
    ``hint``. Out-of-range labels failed later inside a loss or ``bincount``, or not at all."""
    if len(y) == 0:
        return
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        bad = y[(y < 0) | (y >= num_classes)]
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got {int(bad[0])} ({len(bad)} of {len(y)} "
            f"outside it){hint}"
        )


@dataclass(frozen=True)
class ArrayDataset:
    """Features and integer labels held in memory.

    Attributes:
        x: float32 features -- images ``[N, C, H, W]`` scaled to [0, 1], vectors ``[N, F]`` --
            or int64 token ids ``[N, L]`` for text.
        y: int64 labels ``[N]`` in ``[0, num_classes)``.
        num_classes: number of label values the task has (some may be absent from ``y``).
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError(
                f"x and y must be torch.Tensor, got {type(self.x).__name__} and "
                f"{type(self.y).__name__}; wrap numpy arrays with torch.from_numpy"
            )
        if self.y.ndim != 1:
            raise ValueError(f"y must be 1-D [N], got shape {tuple(self.y.shape)}")
        if self.x.ndim < 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x and y must have the same length, got x {tuple(self.x.shape)} and "
                f"y {tuple(self.y.shape)}"
            )
        if self.y.dtype != torch.int64:
            raise ValueError(f"y must be int64, got {self.y.dtype}; use y.long()")
        check_count(self.num_classes, "num_classes")
        check_labels(self.y, self.num_classes, hint="; raise num_classes or remap the labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class FederatedDataset:
    """A train/test pair, optionally with the data's own per-user split.

    Attributes:
        name: a short human-readable name (``"mnist"``, ``"femnist"``, ...).
        train, test: the pooled data.
        natural_clients: one int64 index array into ``train`` per user (LEAF writers/roles,
            Synthetic users); ``None`` when the data has no natural split.
        natural_test_clients: the same users' indices into ``test``, aligned with
            ``natural_clients``; ``None`` when there is no aligned test split.
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    natural_clients: list[np.ndarray] | None = None
    natural_test_clients: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.train.num_classes != self.test.num_classes:
            raise ValueError(
                f"train and test disagree on num_classes: {self.train.num_classes} vs "
                f"{self.test.num_classes}"
            )
        if self.natural_clients is not None:
            _check_index_lists(self.natural_clients, len(self.train), "natural_clients")
        if self.natural_test_clients is not None:
            if self.natural_clients is None:
                raise ValueError("natural_test_clients is set but natural_clients is None")
            if len(self.natural_test_clients) != len(self.natural_clients):
                raise ValueError(
                    f"natural_test_clients has {len(self.natural_test_clients)} users but "
                    f"natural_clients has {len(self.natural_clients)}; they must be aligned"
                )
            _check_index_lists(self.natural_test_clients, len(self.test), "natural_test_clients")


def _check_index_lists(parts: list[np.ndarray], n: int, what: str) -> None:
    for i, idx in enumerate(parts):
        if not isinstance(idx, np.ndarray) or idx.ndim != 1:
            raise ValueError(f"{what}[{i}] must be a 1-D numpy array")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{what}[{i}] must hold integers, got {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{what}[{i}] has indices outside [0, {n})")
