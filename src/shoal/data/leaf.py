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

from shoal.data.types import ArrayDataset, FederatedDataset, check_labels

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
_LETTER_INDEX = {c: i for i, c in enumerate(ALL_LETTERS)}


Chunk = tuple[Path, dict[str, list[Any]]]
"""One file's ``{"x": [...], "y": [...]}`` for one user, with the file, for messages."""


def read_leaf_split(folder: str | Path) -> dict[str, dict[str, list[Any]]]:
    """Merge every ``*.json`` in ``folder`` (sorted) into ``{user: {"x": [...], "y": [...]}}``.

    Users keep the order in which the files list them; a user repeated across files is merged.
    """
    return {
        u: {k: [v for _, d in chunks for v in d[k]] for k in ("x", "y")}
        for u, chunks in _read_chunks(folder).items()
    }


def _read_chunks(folder: str | Path) -> dict[str, list[Chunk]]:
    """``{user: [(file, data), ...]}`` over every ``*.json`` in ``folder`` (sorted), checked."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no LEAF *.json files in {folder}")
    users: dict[str, list[Chunk]] = {}
    for path in files:
        for u, data in _read_file(path).items():
            users.setdefault(u, []).append((path, data))
    return users


def _has_samples(data: Any) -> bool:
    return not (isinstance(data, dict) and not data.get("x") and not data.get("y"))


def _read_file(path: Path) -> dict[str, dict[str, list[Any]]]:
    """One LEAF JSON file's ``user_data`` in the order of its ``users``, checked for agreement
    between ``users``, ``num_samples`` and ``user_data`` (disagreement means a corrupt file:
    users missing from ``users`` were dropped silently, and ``num_samples`` went unread)."""
    try:  # JSON is UTF-8 (RFC 8259), whatever the locale says
        blob = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON (corrupt or truncated?): {e}") from None
    for key in ("users", "user_data"):
        if not isinstance(blob, dict) or key not in blob:
            raise ValueError(f"{path} is not LEAF JSON: missing {key!r}")
    listed, user_data = blob["users"], blob["user_data"]
    if not isinstance(listed, list) or not isinstance(user_data, dict):
        raise ValueError(f"{path}: 'users' must be a list and 'user_data' an object")
    known = set(listed)
    if len(known) != len(listed):  # its samples were counted twice
        raise ValueError(f"{path}: 'users' lists a user twice")
    for u in listed:
        if u not in user_data:
            raise ValueError(f"{path}: user {u!r} is in 'users' but not in 'user_data'")
    # LEAF's split_data.py writes an empty entry for every user it leaves out of 'users' (fewer
    # than 2 samples): those are fine; one with samples means a corrupt or edited file.
    unlisted = [u for u, d in user_data.items() if u not in known and _has_samples(d)]
    if unlisted:
        raise ValueError(f"{path}: user {unlisted[0]!r} is in 'user_data' but not in 'users'")
    for u in listed:
        data = user_data[u]
        if not (
            isinstance(data, dict)
            and isinstance(data.get("x"), list)
            and isinstance(data.get("y"), list)
        ):
            raise ValueError(f"{path}: user {u!r} needs lists 'x' and 'y'")
        if len(data["x"]) != len(data["y"]):
            raise ValueError(f"{path}: user {u} has {len(data['x'])} x but {len(data['y'])} y")
    counts = blob.get("num_samples")  # LEAF writes it; files written by hand may leave it out
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != len(listed):
            raise ValueError(f"{path}: 'num_samples' must list one count per user in 'users'")
        for u, n in zip(listed, counts):
            if n != len(user_data[u]["y"]):
                raise ValueError(
                    f"{path}: user {u!r} has {len(user_data[u]['y'])} samples but "
                    f"'num_samples' says {n!r}"
                )
    return {u: user_data[u] for u in listed}


def encode_shakespeare(text: str) -> list[int]:
    """Map characters to LEAF's 80-letter vocabulary; unknown characters become 0."""
    return [_LETTER_INDEX.get(c, 0) for c in text]


def _convert(
    chunk: Chunk, user: str, to_x: Any, to_y: Any, num_classes: int
) -> tuple[torch.Tensor, np.ndarray]:
    """One user's samples from one file as tensors; a refusal names the file and user."""
    path, data = chunk
    try:
        x, y = to_x(data["x"]), to_y(data["y"])
        check_labels(y, num_classes, "y")
    except OverflowError:  # a y past int64: numpy's "Python int too large to convert"
        raise ValueError(
            f"{path}: user {user!r}: y must be classes in [0, {num_classes}), got one past int64"
        ) from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: user {user!r}: {e}") from None
    return x, y


def _load(root: str | Path, name: str, to_x: Any, to_y: Any, num_classes: int) -> FederatedDataset:
    root = Path(root)
    parts = {s: _read_chunks(root / s) for s in ("train", "test")}
    for split, users in parts.items():
        if not users:  # an empty dataset failed later with a message about something else
            raise ValueError(
                f"{root}: {split}/ lists no users; run LEAF's preprocess.sh again (or with a "
                "lower -k, the minimum samples per user)"
            )
    idle = [u for u, chunks in parts["train"].items() if not any(d["y"] for _, d in chunks)]
    if idle:  # a natural client without data, which the partition then refused
        raise ValueError(f"{root / 'train'}: user {idle[0]!r} has no training samples")
    datasets, offsets = {}, {}
    for split, users in parts.items():
        xs, ys, sizes = [], [], []
        for u, chunks in users.items():
            for chunk in chunks:
                x, y = _convert(chunk, u, to_x, to_y, num_classes)
                xs.append(x)
                ys.append(y)
            sizes.append(sum(len(d["y"]) for _, d in chunks))
        starts = np.concatenate([[0], np.cumsum(sizes)])
        offsets[split] = {u: np.arange(starts[i], starts[i + 1]) for i, u in enumerate(users)}
        datasets[split] = ArrayDataset(
            torch.cat(xs), torch.from_numpy(np.concatenate(ys)), num_classes
        )
    train_users = list(parts["train"])
    test_clients = None
    # With ``-t sample`` every user is in both splits; with ``-t user`` the splits hold
    # different users and there is no aligned per-user test set.
    if set(parts["test"]) & set(train_users):
        test_only = [u for u in parts["test"] if u not in parts["train"]]
        if test_only:  # one such user dropped every client's test accuracy, without a word
            warnings.warn(
                f"{root / 'test'}: {len(test_only)} user(s) (the first: {test_only[0]!r}) have "
                "test samples but no training samples: they count in the pooled test accuracy, "
                "in no client's",
                stacklevel=3,
            )
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
    natural client per writer. ``natural_test_clients`` is None when no user is in both splits.
    """

    def to_x(x: list[list[float]]) -> torch.Tensor:
        if any(not isinstance(row, list) or len(row) != 784 for row in x):
            # reshape(-1, 784) paired rows of other lengths with other samples' labels
            raise ValueError("every x must be a list of 784 grey levels")
        kind = np.asarray(x).dtype.kind
        if kind in "bSU":  # "0.5" and true were converted to 0.5 and 1.0 without a word
            raise ValueError(
                f"x must hold numbers (grey levels), got {'booleans' if kind == 'b' else 'strings'}"
            )
        arr = np.asarray(x, dtype=np.float32).reshape(-1, 784)
        bad = arr[~((arr >= 0) & (arr <= 1))]  # NaN (from NaN or null) fails both
        if bad.size:
            raise ValueError(
                f"x must be grey levels in [0, 1] (LEAF stores level / 255), got {bad[0]:g}"
            )
        return torch.from_numpy(arr).reshape(-1, 1, 28, 28)

    def to_y(y: list[int]) -> np.ndarray:
        bad = [c for c in y if not isinstance(c, int) or isinstance(c, bool)]
        if bad:  # 1.7 was cut to 1, "1" and true read as 1
            raise ValueError(f"y must be integer classes, got {bad[0]!r}")
        return np.asarray(y, dtype=np.int64)

    return _load(root, "femnist", to_x, to_y, 62)


def load_shakespeare(root: str | Path, *, seq_len: int = 80) -> FederatedDataset:
    """Load LEAF Shakespeare: x int64 ``[N, seq_len]`` character ids, y the next character id.

    80 classes (``ALL_LETTERS``); one natural client per speaking role. Characters outside the
    vocabulary map to 0 with a warning (LEAF itself would produce -1).
    """
    unknown: list[str] = []  # the characters outside the vocabulary, as met

    def to_x(x: list[str]) -> torch.Tensor:
        if not all(isinstance(s, str) for s in x):
            raise ValueError("Shakespeare inputs must be strings")
        bad = [s for s in x if len(s) != seq_len]
        if bad:
            raise ValueError(
                f"Shakespeare inputs must be {seq_len} characters, got {len(bad[0])} (seq_len, "
                "data.seq_len in a config, is the length the prepared data has)"
            )
        unknown.extend(c for s in x for c in s if c not in _LETTER_INDEX)
        ids = [encode_shakespeare(s) for s in x]
        return torch.tensor(ids, dtype=torch.int64).reshape(-1, seq_len)

    def to_y(y: list[str]) -> np.ndarray:
        if any(not isinstance(c, str) or len(c) != 1 for c in y):
            raise ValueError("Shakespeare targets must be single characters")
        unknown.extend(c for c in y if c not in _LETTER_INDEX)
        return np.asarray(encode_shakespeare("".join(y)), dtype=np.int64)

    data = _load(root, "shakespeare", to_x, to_y, len(ALL_LETTERS))
    if unknown:
        warnings.warn(
            f"{len(unknown)} characters outside LEAF's 80-letter vocabulary (the first: "
            f"{unknown[0]!r}) were mapped to 0, its '\\n'",
            stacklevel=2,
        )
    return data
