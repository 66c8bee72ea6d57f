"""IDX readers against files written here in the IDX format (LeCun's MNIST page)."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.data import load_mnist_family, read_idx

MNIST5K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist5k"


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">HBB", 0, type_code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype({0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_code]).tobytes()


def write_set(
    folder: Path, prefix: str, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True
) -> None:
    for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        raw = idx_bytes(arr)
        name = f"{prefix}{split}-{kind}"
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def make(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_layout_roundtrip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    tr_x, tr_y = make(rng, 12)
    te_x, te_y = make(rng, 5)
    write_set(tmp_path, "", "train", tr_x, tr_y, gz)
    write_set(tmp_path, "", "t10k", te_x, te_y, gz)
    ds = load_mnist_family(tmp_path)
    assert ds.name == "mnist"
    assert ds.train.x.shape == (12, 1, 28, 28) and ds.train.x.dtype == torch.float32
    assert ds.test.x.shape == (5, 1, 28, 28)
    assert torch.allclose(ds.train.x[:, 0], torch.from_numpy(tr_x).float() / 255)
    assert ds.train.y.dtype == torch.int64
    assert ds.test.y.tolist() == te_y.tolist()
    assert ds.natural_clients is None


def test_read_idx_other_dtypes(tmp_path: Path) -> None:
    arr = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr, 0x0B))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), arr)
    f = np.linspace(0, 1, 6, dtype=np.float32)
    (tmp_path / "f.idx.gz").write_bytes(gzip.compress(idx_bytes(f, 0x0D)))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx.gz"), f)


def test_wrong_magic_and_truncation_are_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, y = make(rng, 4)
    write_set(tmp_path, "", "train", x, y)
    write_set(tmp_path, "", "t10k", x, y)
    # a labels file that holds images has magic 0x0803, not 0x0801
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
    with pytest.raises(ValueError, match="magic number"):
        load_mnist_family(tmp_path)
    (tmp_path / "cut.idx").write_bytes(idx_bytes(x)[:-3])
    with pytest.raises(ValueError, match="bytes follow"):
        read_idx(tmp_path / "cut.idx")


def test_a_cut_header_an_empty_split_and_huge_dims_are_named(tmp_path: Path) -> None:
    (tmp_path / "head.idx").write_bytes(b"\x00\x00\x08\x03\x00")  # said "-11 bytes follow"
    with pytest.raises(ValueError, match="truncated header"):
        read_idx(tmp_path / "head.idx")
    # 2**31 x 2**31 x 4 bytes wrapped around in np.prod's int64 and passed the size check
    huge = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**31, 2**31, 4)
    (tmp_path / "huge.idx").write_bytes(huge)
    with pytest.raises(ValueError, match="bytes follow"):
        read_idx(tmp_path / "huge.idx")
    empty_x, empty_y = np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)
    write_set(tmp_path, "", "train", empty_x, empty_y)
    write_set(tmp_path, "", "t10k", empty_x, empty_y)
    with pytest.raises(ValueError, match="the training split has no samples"):
        load_mnist_family(tmp_path)  # "max() arg is an empty sequence"


def test_mnist_from_a_config_is_ten_classes(tmp_path: Path) -> None:
    # A corrupt label (200) made a 201-class MNIST, and a model with 201 outputs.
    from shoal.cli.registry import DATASETS

    x, y = make(np.random.default_rng(2), 6)
    write_set(tmp_path, "", "train", x, np.where(np.arange(6) == 0, 200, y).astype(np.uint8))
    write_set(tmp_path, "", "t10k", x, y)
    for name in ("mnist", "fashion_mnist"):
        with pytest.raises(ValueError, match="200"):
            DATASETS[name].load(tmp_path, {}, 0)


def test_damaged_gzip_and_zip_name_the_file(tmp_path: Path) -> None:
    # A damaged gzip raised a bare zlib.error or EOFError naming no file (zlib.error escaped the
    # command line's one-line report as a traceback); a truncated zip said its files were
    # missing, and a zip member with a bad CRC raised zipfile.BadZipFile.
    x, y = np.zeros((4, 28, 28), dtype=np.uint8), np.arange(4, dtype=np.uint8)
    write_set(tmp_path, "", "train", x, y)
    write_set(tmp_path, "", "t10k", x, y)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], whole[:12] + b"\xff" * 8 + whole[20:]):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: corrupt or truncated"):
            load_mnist_family(tmp_path)
    path.write_bytes(whole)
    bundle = tmp_path / "gzip.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(tmp_path.glob("*.gz")):
            zf.write(f, f"gzip/{f.name}")
    raw = bundle.read_bytes()
    bundle.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="gzip.zip is not a readable zip archive"):
        load_mnist_family(bundle)
    start = raw.index(b"\x1f\x8b")
    bundle.write_bytes(raw[: start + 12] + b"\xff" * 8 + raw[start + 20 :])
    with pytest.raises(ValueError, match="gzip.zip is not a readable zip archive.*CRC"):
        load_mnist_family(bundle)


def test_emnist_zip_is_read_and_transposed_upright(tmp_path: Path) -> None:
    upright = np.zeros((3, 28, 28), dtype=np.uint8)
    upright[:, 0, :] = 255  # a bar along the top row
    labels = np.array([0, 46, 5], dtype=np.uint8)
    stored = upright.transpose(0, 2, 1)  # EMNIST stores images transposed
    bundle = tmp_path / "gzip.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        for split in ("train", "test"):
            for kind, arr in (("images-idx3-ubyte", stored), ("labels-idx1-ubyte", labels)):
                name = f"gzip/emnist-balanced-{split}-{kind}.gz"
                zf.writestr(name, gzip.compress(idx_bytes(arr)))
    ds = load_mnist_family(bundle, "emnist-balanced-", num_classes=47)
    assert ds.name == "emnist-balanced"
    assert ds.train.num_classes == 47
    assert torch.all(ds.train.x[:, 0, 0, :] == 1.0)  # top row set: upright again
    assert torch.all(ds.train.x[:, 0, 1:, :] == 0.0)
    assert ds.test.y.tolist() == [0, 46, 5]


def test_missing_files_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_mnist_family(tmp_path)


@pytest.mark.skipif(not MNIST5K.is_dir(), reason="shared mnist5k subset not present")
def test_reads_shared_mnist5k_unchanged() -> None:
    ds = load_mnist_family(MNIST5K)
    assert ds.train.x.shape == (4000, 1, 28, 28)
    assert ds.test.x.shape == (1000, 1, 28, 28)
    assert np.bincount(ds.train.y.numpy()).tolist() == [400] * 10
    assert np.bincount(ds.test.y.numpy()).tolist() == [100] * 10
    assert float(ds.train.x.min()) >= 0.0 and float(ds.train.x.max()) == 1.0
    # MNIST digits are light strokes on a dark background: most pixels are 0
    assert float((ds.train.x == 0).float().mean()) > 0.7


def test_missing_test_files_name_both_spellings(tmp_path: Path) -> None:
    # Only EMNIST's test-images-idx3-ubyte was named, to an MNIST user missing t10k-...
    x, y = make(np.random.default_rng(3), 4)
    write_set(tmp_path, "", "train", x, y)
    with pytest.raises(
        FileNotFoundError,
        match=r"no t10k-images-idx3-ubyte\(\.gz\) or test-images-idx3-ubyte\(\.gz\) in",
    ):
        load_mnist_family(tmp_path)


def test_labels_out_of_range_name_the_file(tmp_path: Path) -> None:
    x, y = make(np.random.default_rng(4), 4)
    write_set(tmp_path, "", "train", x, y)
    write_set(tmp_path, "", "t10k", x, np.array([1, 2, 200, 3], dtype=np.uint8))
    with pytest.raises(
        ValueError, match=r"t10k-labels-idx1-ubyte.gz: labels must lie in \[0, 10\), got 200"
    ):
        load_mnist_family(tmp_path, num_classes=10)
