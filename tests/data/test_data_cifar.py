"""CIFAR readers against python-version batches written here in Krizhevsky's format."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.data import load_cifar10, load_cifar100


def batch(rng: np.random.Generator, n: int, keys: dict[bytes, int]) -> tuple[dict, np.ndarray]:
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    # 1024 red values, then green, then blue, each a row-major 32x32 image
    out: dict = {b"data": images.reshape(n, 3072), b"batch_label": b"testing"}
    for key, k in keys.items():
        out[key] = rng.integers(0, k, n).tolist()
    return out, images


def write_tar(path: Path, folder: str, members: dict[str, dict]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in members.items():
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))


@pytest.fixture
def cifar10_tar(tmp_path: Path) -> tuple[Path, list[dict], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    made = [batch(rng, 3, {b"labels": 10}) for _ in names]
    path = tmp_path / "cifar-10-python.tar.gz"
    write_tar(path, "cifar-10-batches-py", {n: b for n, (b, _) in zip(names, made)})
    return path, [b for b, _ in made], [im for _, im in made]


def test_cifar10_from_archive_folder_and_extracted(cifar10_tar, tmp_path: Path) -> None:
    path, batches, images = cifar10_tar
    for root in (path, tmp_path):
        ds = load_cifar10(root)
        assert ds.train.x.shape == (15, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
        expect = torch.from_numpy(np.concatenate(images[:5])).float() / 255
        assert torch.allclose(ds.train.x, expect)
        assert ds.train.y.tolist() == sum((b[b"labels"] for b in batches[:5]), [])
        assert ds.test.y.tolist() == batches[5][b"labels"]
    extract = tmp_path / "x"
    with tarfile.open(path) as tf:
        tf.extractall(extract, filter="data")
    for root in (extract, extract / "cifar-10-batches-py"):
        ds = load_cifar10(root)
        assert torch.allclose(ds.test.x, torch.from_numpy(images[5]).float() / 255)


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train, tr_images = batch(rng, 4, {b"fine_labels": 100, b"coarse_labels": 20})
    test, _ = batch(rng, 2, {b"fine_labels": 100, b"coarse_labels": 20})
    path = tmp_path / "cifar-100-python.tar.gz"
    write_tar(path, "cifar-100-python", {"train": train, "test": test})
    ds = load_cifar100(path)
    assert ds.train.num_classes == 100 and ds.train.y.tolist() == train[b"fine_labels"]
    assert torch.allclose(ds.train.x, torch.from_numpy(tr_images).float() / 255)
    coarse = load_cifar100(tmp_path, coarse=True)
    assert coarse.train.num_classes == 20 and coarse.test.y.tolist() == test[b"coarse_labels"]


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_with_foreign_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cifar-100-python.tar.gz"
    write_tar(path, "cifar-100-python", {"train": {b"data": _Evil()}, "test": {}})
    with pytest.raises(ValueError, match="refusing"):
        load_cifar100(path)


def test_damaged_archive_or_batch_names_the_file(tmp_path: Path) -> None:
    # Not a tar (an error page saved under the archive's name) raised tarfile.ReadError, a
    # batch cut short pickle.UnpicklingError: tracebacks from the command line, naming no file.
    path = tmp_path / "cifar-100-python.tar.gz"
    path.write_bytes(b"<html>not found</html>" * 20)
    with pytest.raises(ValueError, match="cifar-100-python.tar.gz is not a readable tar"):
        load_cifar100(path)
    rng = np.random.default_rng(2)
    train, _ = batch(rng, 2, {b"fine_labels": 100, b"coarse_labels": 20})
    write_tar(path, "cifar-100-python", {"train": train, "test": train})
    with tarfile.open(path) as tf:
        tf.extractall(tmp_path, filter="data")
    member = tmp_path / "cifar-100-python" / "test"
    member.write_bytes(member.read_bytes()[:40])
    with pytest.raises(ValueError, match="test is not a readable CIFAR batch"):
        load_cifar100(tmp_path / "cifar-100-python")


def test_missing_data_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path)


CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_folder(root: Path, members: dict[str, dict]) -> Path:
    """An extracted ``cifar-10-batches-py`` folder under ``root``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, obj in members.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return folder


def good_batches(seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {name: batch(rng, 3, {b"labels": 10})[0] for name in CIFAR10_BATCHES}


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((3, 32, 32, 3), dtype=np.uint8),  # height, width, channel
        np.full((3, 3072), 0.5, dtype=np.float32),  # already scaled to [0, 1]
        np.full((3, 3072), 300, dtype=np.int64),  # past 255
    ],
    ids=["hwc", "float", "int64"],
)
def test_data_in_another_layout_is_refused(tmp_path: Path, data: np.ndarray) -> None:
    # Each was reshaped silently into wrong images (floats cast to uint8 became all zeros).
    members = good_batches()
    members["data_batch_2"][b"data"] = data
    write_folder(tmp_path, members)
    with pytest.raises(ValueError, match=r"data_batch_2: CIFAR data must be uint8 \[N, 3072\]"):
        load_cifar10(tmp_path)


def test_labels_are_counted_in_each_batch(tmp_path: Path) -> None:
    # One label too many in one batch and one too few in the next matched in total and
    # shifted every label between them by one, silently.
    members = good_batches()
    members["data_batch_1"][b"labels"].append(0)
    members["data_batch_2"][b"labels"].pop()
    write_folder(tmp_path, members)
    with pytest.raises(ValueError, match="data_batch_1: 3 images but 4 labels"):
        load_cifar10(tmp_path)


def test_labels_out_of_range_name_the_batch(tmp_path: Path) -> None:
    members = good_batches()
    members["data_batch_3"][b"labels"][0] = 10
    write_folder(tmp_path, members)
    with pytest.raises(ValueError, match=r"data_batch_3: labels must lie in \[0, 10\)"):
        load_cifar10(tmp_path)


def test_a_missing_batch_file_is_named(tmp_path: Path) -> None:
    # "[Errno 2] No such file or directory" before.
    members = good_batches()
    del members["test_batch"]
    folder = write_folder(tmp_path, members)
    with pytest.raises(FileNotFoundError, match=f"{folder} lacks test_batch") as err:
        load_cifar10(tmp_path)
    assert "Errno" not in str(err.value)


def test_batches_pickled_with_str_keys_are_read(tmp_path: Path) -> None:
    # Re-pickled by Python 3 with "data" for b"data": refused as "a CIFAR batch without data".
    members = good_batches()
    write_folder(tmp_path, {n: {k.decode(): v for k, v in b.items()} for n, b in members.items()})
    ds = load_cifar10(tmp_path)
    assert ds.test.y.tolist() == members["test_batch"][b"labels"]
    expect = torch.from_numpy(members["test_batch"][b"data"].reshape(3, 3, 32, 32)) / 255
    assert torch.allclose(ds.test.x, expect.float())
