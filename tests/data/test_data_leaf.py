"""LEAF readers against JSON written here in LEAF's layout (TalwalkarLab/leaf data READMEs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.data import load_femnist, load_shakespeare

# LEAF models/utils/language_utils.py
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"


def leaf_file(path: Path, users: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "users": list(users),
        "num_samples": [len(d["y"]) for d in users.values()],
        "user_data": users,
    }
    path.write_text(json.dumps(blob))


def femnist_user(rng: np.random.Generator, n: int, label: int) -> dict:
    return {"x": rng.random((n, 784)).round(3).tolist(), "y": [label] * n}


def test_femnist_pools_users_and_keeps_the_natural_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = {
        "f0": femnist_user(rng, 3, 7),
        "f1": femnist_user(rng, 2, 61),
        "f2": femnist_user(rng, 4, 0),
    }
    test = {"f0": femnist_user(rng, 1, 7), "f2": femnist_user(rng, 2, 0)}
    leaf_file(
        tmp_path / "train" / "all_data_0_niid_train.json", {k: train[k] for k in ("f0", "f1")}
    )
    leaf_file(tmp_path / "train" / "all_data_1_niid_train.json", {"f2": train["f2"]})
    leaf_file(tmp_path / "test" / "all_data_0_niid_test.json", test)
    ds = load_femnist(tmp_path)
    assert ds.train.x.shape == (9, 1, 28, 28) and ds.train.x.dtype == torch.float32
    assert ds.train.num_classes == 62
    assert [len(c) for c in ds.natural_clients] == [3, 2, 4]
    for user, idx in zip(["f0", "f1", "f2"], ds.natural_clients):
        expect = torch.tensor(train[user]["x"], dtype=torch.float32).reshape(-1, 1, 28, 28)
        assert torch.allclose(ds.train.x[idx], expect)
        assert ds.train.y[idx].tolist() == train[user]["y"]
    # aligned with natural_clients; f1 has no test samples
    assert [len(c) for c in ds.natural_test_clients] == [1, 0, 2]
    assert ds.test.y[ds.natural_test_clients[2]].tolist() == [0, 0]


def test_user_level_split_has_no_aligned_test_clients(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    leaf_file(tmp_path / "train" / "a.json", {"u0": femnist_user(rng, 2, 1)})
    leaf_file(tmp_path / "test" / "a.json", {"u9": femnist_user(rng, 2, 1)})
    ds = load_femnist(tmp_path)
    assert len(ds.natural_clients) == 1 and ds.natural_test_clients is None


def test_a_test_only_user_keeps_the_shared_users_test_clients_and_warns(tmp_path: Path) -> None:
    # One stray test user dropped every client's test set (and client_test_accuracy), silently.
    rng = np.random.default_rng(2)
    leaf_file(tmp_path / "train" / "a.json", {"u0": femnist_user(rng, 2, 1)})
    test = {"u0": femnist_user(rng, 3, 1), "u9": femnist_user(rng, 2, 1)}
    leaf_file(tmp_path / "test" / "a.json", test)
    with pytest.warns(UserWarning, match=r"1 user\(s\) \(the first: 'u9'\) have test samples"):
        ds = load_femnist(tmp_path)
    assert ds.natural_test_clients is not None
    assert [c.tolist() for c in ds.natural_test_clients] == [[0, 1, 2]]


def test_shakespeare_uses_leaf_vocabulary(tmp_path: Path) -> None:
    line = ("To be, or not to be: that is the question:\nWhether 'tis nobler in the mind! " * 2)[
        :80
    ]
    line2 = "Q" * 79 + "}"
    train = {
        "HAMLET": {"x": [line, line2], "y": ["W", "z"]},
        "OPHELIA": {"x": [line2], "y": ["\n"]},
    }
    test = {"HAMLET": {"x": [line], "y": [" "]}}
    leaf_file(tmp_path / "train" / "t.json", train)
    leaf_file(tmp_path / "test" / "t.json", test)
    ds = load_shakespeare(tmp_path)
    assert ds.train.x.shape == (3, 80) and ds.train.x.dtype == torch.int64
    assert ds.train.num_classes == 80 == len(LEAF_LETTERS)
    assert ds.train.x[0].tolist() == [LEAF_LETTERS.find(c) for c in line]
    assert ds.train.x[1, -1].item() == 79  # '}' is the last letter
    assert ds.train.y.tolist() == [LEAF_LETTERS.find("W"), LEAF_LETTERS.find("z"), 0]
    assert ds.test.y.tolist() == [1]
    assert [c.tolist() for c in ds.natural_clients] == [[0, 1], [2]]


def test_shakespeare_unknown_characters_map_to_zero_with_a_warning(tmp_path: Path) -> None:
    leaf_file(tmp_path / "train" / "t.json", {"A": {"x": ["é" + "a" * 79], "y": ["~"]}})
    leaf_file(tmp_path / "test" / "t.json", {"A": {"x": ["a" * 80], "y": ["a"]}})
    with pytest.warns(UserWarning, match=r"2 characters .*\(the first: 'é'\)"):
        ds = load_shakespeare(tmp_path)
    assert ds.train.x[0, 0].item() == 0 and ds.train.y.tolist() == [0]


def test_bad_leaf_input_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no LEAF"):
        load_femnist(tmp_path)
    leaf_file(tmp_path / "train" / "t.json", {"A": {"x": ["short"], "y": ["a"]}})
    leaf_file(tmp_path / "test" / "t.json", {"A": {"x": ["short"], "y": ["a"]}})
    with pytest.raises(ValueError, match="80 characters"):
        load_shakespeare(tmp_path)


def test_damaged_leaf_json_names_the_file(tmp_path: Path) -> None:
    # A truncated file raised json's message with no file name; a user listed in "users"
    # without "user_data" raised a bare KeyError (a traceback from the command line).
    leaf_file(tmp_path / "test" / "t.json", {"u": femnist_user(np.random.default_rng(0), 1, 1)})
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "t.json").write_text('{"users": ["u"], "user_data": {"u": {"x": [')
    with pytest.raises(ValueError, match="t.json is not valid JSON"):
        load_femnist(tmp_path)
    blob = {
        "users": ["u", "v"],
        "num_samples": [1, 1],
        "user_data": {"u": {"x": [[0.0] * 784], "y": [1]}},
    }
    (tmp_path / "train" / "t.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="t.json: user 'v' is in 'users' but not in 'user_data'"):
        load_femnist(tmp_path)


def constant_user(n: int, label: int, level: float) -> dict:
    """A FEMNIST user whose ``n`` images are all ``level``: users can be told apart."""
    return {"x": np.full((n, 784), level).tolist(), "y": [label] * n}


def test_users_keep_the_order_of_the_users_list(tmp_path: Path) -> None:
    # LEAF's "users" list is not alphabetical; client k is the k-th user listed
    train = {"w9": constant_user(2, 9, 0.9), "w1": constant_user(1, 1, 0.1)}
    test = {"w9": constant_user(1, 9, 0.9), "w1": constant_user(1, 1, 0.1)}
    leaf_file(tmp_path / "train" / "a.json", train)
    leaf_file(tmp_path / "test" / "a.json", test)
    ds = load_femnist(tmp_path)
    assert [ds.train.y[c].tolist() for c in ds.natural_clients] == [[9, 9], [1]]
    assert [ds.test.y[c].tolist() for c in ds.natural_test_clients] == [[9], [1]]


def test_a_user_split_across_files_is_merged(tmp_path: Path) -> None:
    leaf_file(tmp_path / "train" / "a.json", {"u": constant_user(2, 3, 0.25)})
    leaf_file(tmp_path / "train" / "b.json", {"u": constant_user(1, 4, 0.5)})
    leaf_file(tmp_path / "test" / "a.json", {"u": constant_user(1, 3, 0.25)})
    ds = load_femnist(tmp_path)
    assert len(ds.natural_clients) == 1
    assert ds.train.y[ds.natural_clients[0]].tolist() == [3, 3, 4]  # files in sorted order
    assert ds.train.x[ds.natural_clients[0], 0, 0, 0].tolist() == [0.25, 0.25, 0.5]


GOOD = {"x": [[0.5] * 784], "y": [1]}


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        # KeyError / TypeError tracebacks before
        ({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 784]}}}, "needs lists 'x' and 'y'"),
        ({"users": ["a"], "user_data": {"a": [1, 2]}}, "needs lists 'x' and 'y'"),
        ({"users": "ab", "user_data": {"a": GOOD, "b": GOOD}}, "'users' must be a list"),
        # samples counted twice
        ({"users": ["a", "a"], "user_data": {"a": GOOD}}, "lists a user twice"),
        # rows of 392 values paired two by two with one label each, silently
        ({"users": ["a"], "user_data": {"a": {"x": [[0.1] * 392] * 2, "y": [1, 2]}}}, "784"),
        ({"users": ["a"], "user_data": {"a": {"x": [[0.1] * 784], "y": [1.7]}}}, "integer"),
        # a natural client without data, which the partition refused without naming it
        ({"users": ["a", "b"], "user_data": {"a": {"x": [], "y": []}, "b": GOOD}}, "'a' has no"),
        # users, num_samples and user_data disagreeing: a corrupt file, read silently
        (
            {"users": ["a"], "num_samples": [5], "user_data": {"a": GOOD}},
            "t.json: user 'a' has 1 samples but 'num_samples' says 5",
        ),
        (
            {"users": ["a"], "num_samples": [1, 1], "user_data": {"a": GOOD}},
            "t.json: 'num_samples' must list one count per user",
        ),
        (  # b's samples were dropped
            {"users": ["a"], "user_data": {"a": GOOD, "b": GOOD}},
            "t.json: user 'b' is in 'user_data' but not in 'users'",
        ),
        # an empty dataset, which failed later with a misleading message
        ({"users": [], "num_samples": [], "user_data": {}}, "train/ lists no users"),
        # LEAF stores grey levels / 255; these loaded silently
        *(
            ({"users": ["a"], "user_data": {"a": {"x": [[v] * 784], "y": [1]}}}, words)
            for v, words in (
                (255, r"t.json: user 'a': x must be grey levels in \[0, 1\].*got 255"),
                (-0.5, r"t.json: user 'a': x must be grey levels in \[0, 1\].*got -0.5"),
                (float("nan"), r"t.json: user 'a': x must be grey levels.*got nan"),
                (None, r"t.json: user 'a': x must be grey levels.*got nan"),
                # converted to 0.5 and 1.0 without a word
                ("0.5", r"t.json: user 'a': x must hold numbers \(grey levels\), got strings"),
                (True, r"t.json: user 'a': x must hold numbers \(grey levels\), got booleans"),
            )
        ),
        *(
            (
                {"users": ["a"], "user_data": {"a": {"x": [[0.5] * 784], "y": [y]}}},
                f"t.json: user 'a': y must be integer classes, got {y!r}",
            )
            for y in ("1", True, 1.0)
        ),
        (
            {"users": ["a"], "user_data": {"a": {"x": [[0.5] * 784], "y": [62]}}},
            r"t.json: user 'a': y must lie in \[0, 62\), got 62",
        ),
        (  # "Python int too large to convert to C long"
            {"users": ["a"], "user_data": {"a": {"x": [[0.5] * 784], "y": [10**30]}}},
            r"t.json: user 'a': y must be classes in \[0, 62\), got one past int64",
        ),
    ],
)
def test_malformed_femnist_users_are_named(tmp_path: Path, blob: dict, words: str) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "t.json").write_text(json.dumps(blob))
    leaf_file(tmp_path / "test" / "t.json", {"a": GOOD})
    with pytest.raises(ValueError, match=words):
        load_femnist(tmp_path)


def test_shakespeare_targets_must_be_characters(tmp_path: Path) -> None:
    # len(5) raised a TypeError traceback.
    leaf_file(tmp_path / "train" / "t.json", {"A": {"x": ["x" * 80], "y": [5]}})
    leaf_file(tmp_path / "test" / "t.json", {"A": {"x": ["x" * 80], "y": ["a"]}})
    with pytest.raises(ValueError, match="user 'A': Shakespeare targets must be single char"):
        load_shakespeare(tmp_path)


def test_leaf_json_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    # Read with the locale's encoding: an ASCII (or Windows cp1252) locale could not read it.
    import os
    import subprocess
    import sys

    user = {"Ü": {"x": [[0.5] * 784], "y": [1]}}
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        blob = {"users": ["Ü"], "user_data": user}
        (tmp_path / split / "t.json").write_bytes(json.dumps(blob, ensure_ascii=False).encode())
    code = f"from shoal.data import load_femnist; print(len(load_femnist({str(tmp_path)!r}).train))"
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.split()[-1] == "1", out.stderr[-500:]


def test_the_empty_entries_leaf_writes_for_users_it_leaves_out_are_read(tmp_path: Path) -> None:
    # split_data.py writes user_data[u] = {"x": [], "y": []} for every user and lists in
    # "users" only those with 2 or more samples; such a file was refused as inconsistent.
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        blob = {
            "users": ["a"],
            "num_samples": [1],
            "user_data": {"a": GOOD, "f1": {"x": [], "y": []}},
        }
        (tmp_path / split / "t.json").write_text(json.dumps(blob))
    data = load_femnist(tmp_path)
    assert len(data.train) == 1 and len(data.natural_clients or []) == 1
