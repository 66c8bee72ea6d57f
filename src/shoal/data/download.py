"""Download dataset files into a local cache, checking their SHA-256.

The checksums below were copied from TensorFlow Datasets (tensorflow/datasets,
``tensorflow_datasets/url_checksums/{mnist,fashion_mnist,emnist}.txt`` and
``{cifar10,cifar100}.csv``), which record the SHA-256 of exactly these files. Where no
published checksum was found the entry says ``None`` and :func:`fetch` warns that the file is
unverified -- a hash is never guessed.

LEAF's FEMNIST and Shakespeare are built by LEAF's own preprocessing scripts
(TalwalkarLab/leaf ``data/<name>/preprocess.sh``) from raw inputs: NIST Special Database 19
(``by_class.zip``, ``by_write.zip``) and Project Gutenberg's complete Shakespeare. Only those raw
inputs are downloadable here; run LEAF's scripts on them and point
:func:`shoal.data.load_femnist` / :func:`shoal.data.load_shakespeare` at the prepared folder.

Nothing here runs at import time; tests serve files from ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it lives, what to call it, and its SHA-256 if known."""

    url: str
    filename: str
    sha256: str | None

    def __post_init__(self) -> None:
        if self.sha256 is not None:  # hex digests are compared as hashlib writes them
            object.__setattr__(self, "sha256", self.sha256.lower())


TIMEOUT_S = 60.0
"""Seconds a download may wait to connect or for its next bytes: a server that accepts the
connection and never answers fails the fetch instead of hanging it."""

_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

CATALOGUE: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": (
        RemoteFile(
            _MNIST + "train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        RemoteFile(
            _MNIST + "train-labels-idx1-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        RemoteFile(
            _MNIST + "t10k-images-idx3-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        RemoteFile(
            _MNIST + "t10k-labels-idx1-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    ),
    "fashion_mnist": (
        RemoteFile(
            _FASHION + "train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        RemoteFile(
            _FASHION + "train-labels-idx1-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        RemoteFile(
            _FASHION + "t10k-images-idx3-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        RemoteFile(
            _FASHION + "t10k-labels-idx1-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
    # The whole EMNIST gzip bundle (all six splits); load_mnist_family reads the zip directly.
    # The hash was recorded for this address; NIST now also serves it from biometrics.nist.gov.
    "emnist": (
        RemoteFile(
            "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip",
            "gzip.zip",
            "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e",
        ),
    ),
    "cifar10": (
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        ),
    ),
    "cifar100": (
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        ),
    ),
    # Raw inputs of LEAF's preprocessing; no published SHA-256 was found for them.
    "femnist": (
        RemoteFile("https://s3.amazonaws.com/nist-srd/SD19/by_class.zip", "by_class.zip", None),
        RemoteFile("https://s3.amazonaws.com/nist-srd/SD19/by_write.zip", "by_write.zip", None),
    ),
    "shakespeare": (
        RemoteFile("http://www.gutenberg.org/files/100/100-0.txt", "raw_data.txt", None),
    ),
}


def default_cache_dir() -> Path:
    """``$SHOAL_DATA`` if set, else ``~/.cache/shoal``."""
    return Path(os.environ.get("SHOAL_DATA") or "~/.cache/shoal").expanduser()


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(
    remote: RemoteFile, folder: str | Path, *, url: str | None = None, progress: bool = True
) -> Path:
    """Download one file into ``folder`` unless a copy with the right hash is already there.

    The bytes go to a temporary file in ``folder`` and are renamed into place only once the
    hash matches, so an interrupted download never leaves a half file under the real name, and
    a copy with another hash stays until a verified one replaces it.
    A mismatch deletes the download and raises ``ValueError``; with no known hash the file is
    kept and a warning says so.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    if dest.is_file():
        if remote.sha256 is None:
            _warn_unverified(dest, sha256_of(dest))
            return dest
        if sha256_of(dest) == remote.sha256:
            return dest
        # A stale or corrupt copy (or the user's own file) is replaced only by a verified
        # download: deleted first, it was lost when the download failed (offline, say).
    fd, tmp_name = tempfile.mkstemp(prefix=remote.filename + ".", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    actual = ""
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url or remote.url, timeout=TIMEOUT_S) as resp,
        ):
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=remote.filename, disable=not progress
            ) as bar:
                received = 0
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
                    received += len(block)
        if total is not None and received != total:
            # A server that closes early ends the read without an error; only the length
            # announced tells, and files without a known hash have nothing else to check.
            raise OSError(
                f"the download of {remote.filename} from {url or remote.url} ended after "
                f"{received:,} of {total:,} bytes; it was deleted (try again)"
            )
        actual = h.hexdigest()
        if remote.sha256 is not None and actual != remote.sha256:
            raise ValueError(
                f"SHA-256 mismatch for {remote.filename} from {url or remote.url}: expected "
                f"{remote.sha256}, got {actual}; the download was deleted (try again or use a "
                "different mirror via urls=)"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed first download leaves no empty dataset folder behind
        raise
    if remote.sha256 is None:
        _warn_unverified(dest, actual)
    return dest


def check_cached(name: str, folder: str | Path) -> None:
    """Raise ``ValueError`` unless each file of catalogue entry ``name`` in ``folder`` has its
    published SHA-256 (files without one are not checked). A cache is read on every run, so
    a corrupted or substituted file would otherwise train silently on the wrong data."""
    for remote in CATALOGUE.get(name, ()):
        path = Path(folder) / remote.filename
        if remote.sha256 is not None and path.is_file() and sha256_of(path) != remote.sha256:
            raise ValueError(
                f"{path} does not have the published SHA-256 of {remote.filename} (corrupted, "
                f"or another file); delete it and run `shoal data fetch {name}`, or point "
                "data.dir at the folder to use its files as they are"
            )


def _warn_unverified(path: Path, actual: str) -> None:
    warnings.warn(
        f"{path.name} is unverified: no published SHA-256 is known for it (its SHA-256 is "
        f"{actual})",
        stacklevel=3,
    )


def fetch(
    name: str,
    cache_dir: str | Path | None = None,
    *,
    urls: Mapping[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Download every file of catalogue entry ``name`` into ``cache_dir/name`` and return it.

    Args:
        name: a key of :data:`CATALOGUE` (``mnist``, ``fashion_mnist``, ``emnist``, ``cifar10``,
            ``cifar100``, ``femnist``, ``shakespeare``).
        cache_dir: defaults to :func:`default_cache_dir`.
        urls: optional ``{filename: url}`` overrides, e.g. a mirror or a local ``file://`` copy;
            the expected hash stays the catalogue's.
        progress: show a tqdm progress bar per file.

    Files already present with the right hash are not downloaded again.
    """
    if name not in CATALOGUE:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(CATALOGUE))}")
    urls = dict(urls or {})
    unknown = set(urls) - {f.filename for f in CATALOGUE[name]}
    if unknown:
        raise ValueError(f"urls names files that {name!r} does not have: {sorted(unknown)}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / name
    for remote in CATALOGUE[name]:
        download_file(remote, folder, url=urls.get(remote.filename), progress=progress)
    return folder
