"""LEAF readers: FEMNIST and Shakespeare with their natural per-user split.

LEAF (Caldas et al. 2018, TalwalkarLab/leaf) writes each split as one or more JSON files in
``<root>/train/`` and ``<root>/test/``, each of the form (``data/femnist/README.md``)::

    {"users": [u, ...], "num_samples": [n_u, ...],
     "user_data": {u: {"x": [...], "y": [...]}, ...}}

LEAF builds these files itself (``preprocess.sh -s niid --sf ... -k ... -t sample --tf 0.9``),
so these readers take a prepared folder; ``shoal.data.fetch`` only downloads the raw inputs.

- FEMNIST (``data/femnist/preprocess/data_to_json.py``): ``x`` is a 784-long list of grey levels
  already divided by 255 (white background, dark strokes), ``y`` in 0..61 (digits, upper-case,
  lower-case letters).
- Shakespeare (``models/utils/language_utils.py``): ``x`` an 80-character string, ``y`` the next
  character; characters map to their position in ``ALL_LETTERS``. LEAF's ``ALL_LETTERS.find``
  returns -1 for a character outside the vocabulary, which is not a valid class or embedding id
  (as a Python index -1 silently picks the last letter); here such characters map to 0 and a
  warning counts them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.data.types import ArrayDataset, FederatedDataset

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
_LETTER_INDEX = {c: i for i, c in enumerate(ALL_LETTERS)}


def read_leaf_split(folder: str | Path) -> dict[str, dict[str, list[Any]]]:
    """Merge every ``*.json`` in ``folder`` (sorted) into ``{user: {"x": [...], "y": [...]}}``.

    Users keep the order in which the files list them; a user repeated across files is merged.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no LEAF *.json files in {folder}")
    users: dict[str, dict[str, list[Any]]] = {}
    for path in files:
        try:  # JSON is UTF-8 (RFC 8259), whatever the locale says
            blob = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON (corrupt or truncated?): {e}") from None
        for key in ("users", "user_data"):
            if not isinstance(blob, dict) or key not in blob:
                raise ValueError(f"{path} is not LEAF JSON: missing {key!r}")
        if not isinstance(blob["users"], list) or not isinstance(blob["user_data"], dict):
            raise ValueError(f"{path}: 'users' must be a list and 'user_data' an object")
        if len(set(blob["users"])) != len(blob["users"]):  # its samples were counted twice
            raise ValueError(f"{path}: 'users' lists a user twice")
        for u in blob["users"]:
            if u not in blob["user_data"]:
                raise ValueError(f"{path}: user {u!r} is in 'users' but not in 'user_data'")
            data = blob["user_data"][u]
            if not (
                isinstance(data, dict)
                and isinstance(data.get("x"), list)
                and isinstance(data.get("y"), list)
            ):
                raise ValueError(f"{path}: user {u!r} needs lists 'x' and 'y'")
            if len(data["x"]) != len(data["y"]):
                raise ValueError(f"{path}: user {u} has {len(data['x'])} x but {len(data['y'])} y")
            entry = users.setdefault(u, {"x": [], "y": []})
            entry["x"].extend(data["x"])
            entry["y"].extend(data["y"])
    return users


def encode_shakespeare(text: str) -> list[int]:
    """Map characters to LEAF's 80-letter vocabulary; unknown characters become 0."""
    return [_LETTER_INDEX.get(c, 0) for c in text]


def _load(root: str | Path, name: str, to_x: Any, to_y: Any, num_classes: int) -> FederatedDataset:
    root = Path(root)
    parts = {s: read_leaf_split(root / s) for s in ("train", "test")}
    idle = [u for u, d in parts["train"].items() if not d["y"]]
    if idle:  # a natural client without data, which the partition then refused
        raise ValueError(f"{root / 'train'}: user {idle[0]!r} has no training samples")
    datasets, offsets = {}, {}
    for split, users in parts.items():
        xs, ys = [], []
        for u, d in users.items():
            try:
                xs.append(to_x(d["x"]))
                ys.append(to_y(d["y"]))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{root / split}: user {u!r}: {e}") from None
        sizes = np.array([len(y) for y in ys], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        offsets[split] = {u: np.arange(starts[i], starts[i + 1]) for i, u in enumerate(users)}
        datasets[split] = ArrayDataset(
            torch.cat(xs) if xs else torch.empty(0),
            torch.from_numpy(np.concatenate(ys) if ys else np.zeros(0, np.int64)),
            num_classes,
        )
    train_users = list(parts["train"])
    test_clients = None
    # With ``-t sample`` every user is in both splits; with ``-t user`` the splits hold
    # different users and there is no aligned per-user test set.
    if set(parts["test"]) <= set(train_users):
        empty = np.zeros(0, dtype=np.int64)
        test_clients = [offsets["test"].get(u, empty) for u in train_users]
    return FederatedDataset(
        name,
        datasets["train"],
        datasets["test"],
        natural_clients=[offsets["train"][u] for u in train_users],
        natural_test_clients=test_clients,
    )


def load_femnist(root: str | Path) -> FederatedDataset:
    """Load LEAF FEMNIST from ``root/train/*.json`` and ``root/test/*.json``.

    Images become ``[N, 1, 28, 28]`` float32 in [0, 1] as LEAF stored them; 62 classes; one
    natural client per writer. ``natural_test_clients`` is None when train and test users differ.
    """

    def to_x(x: list[list[float]]) -> torch.Tensor:
        if any(not isinstance(row, list) or len(row) != 784 for row in x):
            # reshape(-1, 784) paired rows of other lengths with other samples' labels
            raise ValueError("every x must be a list of 784 grey levels")
        arr = np.asarray(x, dtype=np.float32).reshape(-1, 784)
        return torch.from_numpy(arr).reshape(-1, 1, 28, 28)

    def to_y(y: list[int]) -> np.ndarray:
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in y):
            raise ValueError("every y must be an integer class (1.7 was cut to 1)")
        return np.asarray(y, dtype=np.int64)

    return _load(root, "femnist", to_x, to_y, 62)


def load_shakespeare(root: str | Path, *, seq_len: int = 80) -> FederatedDataset:
    """Load LEAF Shakespeare: x int64 ``[N, seq_len]`` character ids, y the next character id.

    80 classes (``ALL_LETTERS``); one natural client per speaking role. Characters outside the
    vocabulary map to 0 with a warning (LEAF itself would produce -1).
    """
    unknown = 0

    def to_x(x: list[str]) -> torch.Tensor:
        nonlocal unknown
        if not all(isinstance(s, str) for s in x):
            raise ValueError("Shakespeare inputs must be strings")
        bad = [s for s in x if len(s) != seq_len]
        if bad:
            raise ValueError(f"Shakespeare inputs must be {seq_len} characters, got {len(bad[0])}")
        unknown += sum(c not in _LETTER_INDEX for s in x for c in s)
        ids = [encode_shakespeare(s) for s in x]
        return torch.tensor(ids, dtype=torch.int64).reshape(-1, seq_len)

    def to_y(y: list[str]) -> np.ndarray:
        nonlocal unknown
        if any(not isinstance(c, str) or len(c) != 1 for c in y):
            raise ValueError("Shakespeare targets must be single characters")
        unknown += sum(c not in _LETTER_INDEX for c in y)
        return np.asarray(encode_shakespeare("".join(y)), dtype=np.int64)

    data = _load(root, "shakespeare", to_x, to_y, len(ALL_LETTERS))
    if unknown:
        warnings.warn(
            f"{unknown} characters outside LEAF's 80-letter vocabulary were mapped to 0",
            stacklevel=2,
        )
    return data
