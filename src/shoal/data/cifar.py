"""CIFAR-10 and CIFAR-100 readers for the "python version" archives.

Format (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-10-python.tar.gz``
holds ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``; ``cifar-100-python.tar.gz``
holds ``cifar-100-python/train`` and ``test``. Each is a pickled dict with ``b"data"``, a uint8
array ``[N, 3072]`` (1024 red, then green, then blue values of a 32x32 image, row-major), and
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100).

The files are pickles, and unpickling can run code, so a restricted unpickler accepts only
what these files contain (numpy arrays, lists, dicts, bytes); anything else is refused.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.data.types import ArrayDataset, FederatedDataset, check_labels

_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}; refusing")
        if module == "numpy.core.multiarray":  # Python-2-era pickles; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(raw: bytes, what: str, keys: tuple[bytes, ...]) -> dict[bytes, Any]:
    try:
        out = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"{what} is not a readable CIFAR batch: {e}") from e
    if not isinstance(out, dict):
        raise ValueError(f"{what}: a CIFAR batch must unpickle to a dict")
    # Pickled by Python 3 from str keys ("data"), not Krizhevsky's bytes (b"data"): same batch.
    out = {k.encode() if isinstance(k, str) else k: v for k, v in out.items()}
    missing = [k.decode() for k in keys if k not in out]  # a KeyError traceback before
    if missing:
        raise ValueError(f"{what}: a CIFAR batch without {' and '.join(missing)}")
    return out


Batch = tuple[str, dict[bytes, Any]]
"""A batch's dict and where it was read (a path, or ``archive:member``) for messages."""


def _read_batches(
    root: Path, folder: str, archive: str, members: list[str], keys: tuple[bytes, ...]
) -> list[Batch]:
    """Unpickle ``members`` from an extracted ``folder`` or from a ``.tar.gz`` archive."""
    base = root if root.name == folder and root.is_dir() else root / folder
    if base.is_dir():
        missing = [m for m in members if not (base / m).is_file()]
        if missing:  # a bare "[Errno 2] No such file or directory" before
            raise FileNotFoundError(
                f"{base} lacks {', '.join(missing)}; extract {archive} there again"
            )
        named = [(str(base / m), (base / m).read_bytes()) for m in members]
        return [(what, _unpickle(raw, what, keys)) for what, raw in named]
    tar_path = root / archive if root.is_dir() else root
    if not tar_path.is_file():
        raise FileNotFoundError(
            f"found neither a {folder}/ folder nor {archive} at {root}; put {archive} there "
            f"(`shoal data fetch {'cifar100' if '100' in archive else 'cifar10'}` downloads it "
            "into the cache folder, which a run reads when data.dir is unset)"
        )
    found: dict[str, bytes] = {}
    # One sequential pass: a .tar.gz cannot seek, so reopening it per member re-reads it all.
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            for info in tf:
                name = info.name.removeprefix("./")
                if name.startswith(folder + "/") and name[len(folder) + 1 :] in members:
                    f = tf.extractfile(info)
                    if f is not None:
                        found[name[len(folder) + 1 :]] = f.read()
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(
            f"{tar_path} is not a readable tar archive (corrupt or truncated?): {e}"
        ) from None
    missing = [m for m in members if m not in found]
    if missing:
        raise FileNotFoundError(f"{tar_path} lacks {', '.join(folder + '/' + m for m in missing)}")
    named = [(f"{tar_path}:{folder}/{m}", found[m]) for m in members]
    return [(what, _unpickle(raw, what, keys)) for what, raw in named]


def _decode(batch: Batch, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64, checked.

    Each batch is checked on its own: data in another layout (HWC, floats in [0, 1], ints past
    255) was reshaped into wrong images, and one label too many in one batch and too few in
    the next shifted every label in between, silently.
    """
    what, b = batch
    data, labels = b[b"data"], np.asarray(b[label_key])
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        got = (
            f"{data.dtype} {list(data.shape)}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(
            f"{what}: CIFAR data must be uint8 [N, 3072] (1024 red, then green, then blue "
            f"values per image), got {got}"
        )
    key = label_key.decode()
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{what}: {key} must be a list of integer classes")
    if len(labels) != len(data):
        raise ValueError(f"{what}: {len(data)} images but {len(labels)} {key}")
    check_labels(labels, num_classes, f"{what}: {key}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _to_dataset(batches: list[Batch], label_key: bytes, num_classes: int) -> ArrayDataset:
    decoded = [_decode(b, label_key, num_classes) for b in batches]
    data = np.concatenate([d for d, _ in decoded])
    labels = np.concatenate([y for _, y in decoded])
    x = torch.from_numpy(data).float().div_(255.0)
    return ArrayDataset(x, torch.from_numpy(labels), num_classes)


def load_cifar10(root: str | Path) -> FederatedDataset:
    """Load CIFAR-10 as ``[N, 3, 32, 32]`` float32 images in [0, 1] (50,000 train, 10,000 test).

    ``root`` is the ``cifar-10-batches-py`` folder, a folder containing it or
    ``cifar-10-python.tar.gz``, or the archive itself (read without extracting).
    """
    members = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    *train, test = _read_batches(
        Path(root), "cifar-10-batches-py", "cifar-10-python.tar.gz", members, (b"data", b"labels")
    )
    return FederatedDataset(
        "cifar10", _to_dataset(train, b"labels", 10), _to_dataset([test], b"labels", 10)
    )


def load_cifar100(root: str | Path, *, coarse: bool = False) -> FederatedDataset:
    """Load CIFAR-100 as ``[N, 3, 32, 32]`` float32 images in [0, 1] with 100 fine labels.

    ``root`` is the ``cifar-100-python`` folder, a folder containing it or
    ``cifar-100-python.tar.gz``, or the archive itself. ``coarse=True`` uses the 20 superclasses.
    """
    key, k = (b"coarse_labels", 20) if coarse else (b"fine_labels", 100)
    train, test = _read_batches(
        Path(root), "cifar-100-python", "cifar-100-python.tar.gz", ["train", "test"], (b"data", key)
    )
    return FederatedDataset(
        "cifar100-coarse" if coarse else "cifar100",
        _to_dataset([train], key, k),
        _to_dataset([test], key, k),
    )
