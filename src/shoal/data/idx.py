"""MNIST-family readers for the IDX format (MNIST, Fashion-MNIST, EMNIST, KMNIST, ...).

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/, "FILE FORMATS FOR THE MNIST DATABASE"):
a 4-byte magic number -- two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and the number of dimensions -- then one
big-endian uint32 per dimension, then the data in C order, big-endian. MNIST labels have magic
0x00000801 (ubyte, 1-D) and images 0x00000803 (ubyte, 3-D ``N x 28 x 28``).

EMNIST (Cohen et al. 2017) keeps the IDX layout but names its files
``emnist-<split>-train-images-idx3-ubyte.gz`` and stores every image transposed, so it is
transposed back here to look upright.
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from shoal.data.types import ArrayDataset, FederatedDataset, check_labels

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
LABELS_MAGIC = 0x0801
IMAGES_MAGIC = 0x0803


def parse_idx(raw: bytes, *, expect_magic: int | None = None, what: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (gzip-compressed or raw) into a native-endian numpy array."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{what}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{what} is not an IDX file (bad magic bytes {raw[:4]!r})")
    magic = int.from_bytes(raw[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(f"{what}: magic number {magic:#06x}, expected {expect_magic:#06x}")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise ValueError(f"{what}: unknown IDX type code {code:#04x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{what}: truncated header ({len(raw)} bytes, {ndim} dimensions need {header})"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: np.prod wrapped around in int64
    if len(raw) - header != expected:
        raise ValueError(
            f"{what}: header says {dims} ({expected} bytes) but {len(raw) - header} bytes follow"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file, gzip-compressed or raw (detected from its first bytes)."""
    path = Path(path)
    return parse_idx(path.read_bytes(), what=str(path))


def _member_bytes(root: Path, name: str) -> tuple[bytes, str]:
    """Bytes of ``name`` or ``name.gz`` from a folder or a zip (any sub-folder of the zip)."""
    candidates = (name + ".gz", name)
    if root.is_dir():
        for cand in candidates:
            if (root / cand).is_file():
                return (root / cand).read_bytes(), str(root / cand)
    elif root.is_file():
        try:
            with zipfile.ZipFile(root) as zf:
                members = {Path(m).name: m for m in zf.namelist()}
                for cand in candidates:
                    if cand in members:
                        return zf.read(members[cand]), f"{root}:{members[cand]}"
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise ValueError(
                f"{root} is not a readable zip archive (corrupt or truncated?): {e}"
            ) from None
    raise FileNotFoundError(f"no {name}(.gz) in {root}")


def _first_member(root: Path, names: list[str]) -> tuple[bytes, str]:
    """Bytes of the first of ``names`` found, as :func:`_member_bytes`; the error names all."""
    for name in names:
        try:
            return _member_bytes(root, name)
        except FileNotFoundError:
            continue
    # naming only the last spelling sent MNIST users looking for EMNIST's test-... files
    raise FileNotFoundError(f"no {' or '.join(n + '(.gz)' for n in names)} in {root}")


def load_mnist_family(
    root: str | Path,
    prefix: str = "",
    *,
    name: str | None = None,
    num_classes: int | None = None,
    transpose: bool | None = None,
) -> FederatedDataset:
    """Load an MNIST-style dataset from IDX files into ``[N, 1, H, W]`` float32 images in [0, 1].

    Args:
        root: a folder holding ``{prefix}train-images-idx3-ubyte(.gz)``,
            ``{prefix}train-labels-idx1-ubyte(.gz)``, ``{prefix}t10k-...``, or a zip holding them
            in any sub-folder (EMNIST's ``gzip.zip`` works as downloaded).
        prefix: file-name prefix, e.g. ``"emnist-balanced-"``; EMNIST uses ``test`` instead of
            ``t10k``, and both spellings are tried.
        name: dataset name; defaults to the prefix without its trailing dash, or ``"mnist"``.
        num_classes: defaults to ``max(label) + 1`` over train and test (EMNIST-letters labels
            run 1..26, so it gets 27 classes with class 0 unused).
        transpose: swap H and W; defaults to True for EMNIST (prefix starting ``emnist``), whose
            files store images transposed.
    """
    root = Path(root)
    if transpose is None:
        transpose = prefix.lower().startswith("emnist")
    splits = []
    for split, alt in (("train", "train"), ("t10k", "test")):
        arrays = []
        for kind, magic in (
            ("images-idx3-ubyte", IMAGES_MAGIC),
            ("labels-idx1-ubyte", LABELS_MAGIC),
        ):
            names = list(dict.fromkeys([f"{prefix}{split}-{kind}", f"{prefix}{alt}-{kind}"]))
            raw, where = _first_member(root, names)
            arrays.append(parse_idx(raw, expect_magic=magic, what=where))
        images, labels = arrays
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels in {root}")
        if transpose:
            images = images.transpose(0, 2, 1)
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
        splits.append((x, torch.from_numpy(labels.astype(np.int64)), where))
    if not len(splits[0][1]):  # max() of no labels said "max() arg is an empty sequence"
        raise ValueError(f"{root}: the training split has no samples")
    if num_classes is None:
        num_classes = int(max(int(y.max()) for _, y, _ in splits if len(y)) + 1)
    for _, y, where in splits:  # ArrayDataset would refuse them without naming the file
        check_labels(y, num_classes, f"{where}: labels", ": corrupt, or another dataset's file?")
    train, test = (ArrayDataset(x, y, num_classes) for x, y, _ in splits)
    return FederatedDataset(name or prefix.rstrip("-_") or "mnist", train, test)
