"""Download dataset files into a local cache, checking their SHA-256.

The checksums below were copied from TensorFlow Datasets (tensorflow/datasets,
``tensorflow_datasets/url_checksums/{mnist,fashion_mnist,emnist}.txt`` and
``{cifar10,cifar100}.csv``), which record the SHA-256 of exactly these files. Where no
published checksum was found the entry says ``None`` and :func:`fetch` warns that the file is
unverified -- a hash is never guessed; such a file named ``*.zip`` must at least be a whole zip
archive (downloaded or cached), and an HTML page (a login or error page) is never saved.

LEAF's FEMNIST and Shakespeare are built by LEAF's own preprocessing scripts
(TalwalkarLab/leaf ``data/<name>/preprocess.sh``) from raw inputs: NIST Special Database 19
(``by_class.zip``, ``by_write.zip``) and Project Gutenberg's complete Shakespeare. Only those raw
inputs are downloadable here; run LEAF's scripts on them and point
:func:`shoal.data.load_femnist` / :func:`shoal.data.load_shakespeare` at the prepared folder.

Nothing here runs at import time; tests serve files from ``file://`` URLs.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import secrets
import time
import urllib.error
import urllib.request
import warnings
import zipfile
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
    kept and a warning says so. A failed download raises a one-line ``OSError`` naming the file,
    the URL and what to do.
    """
    folder = Path(folder)
    url = url or remote.url
    created = not folder.exists()
    dest = folder / remote.filename
    if dest.exists() and not dest.is_file():  # else found after the download, by os.replace
        raise OSError(f"{dest} is in the way of the download: it is not a file; remove it")
    if dest.is_file():
        if remote.sha256 is None and _looks_complete(dest):
            _warn_unverified(dest, sha256_of(dest))
            return dest
        if remote.sha256 is not None and sha256_of(dest) == remote.sha256:
            return dest
        # A stale or corrupt copy (or the user's own file) is replaced only by a verified
        # download: deleted first, it was lost when the download failed (offline, say).
    fd, tmp = _create_part(folder, remote.filename)
    try:
        actual = _receive(fd, remote, url, folder, progress)
        if remote.sha256 is not None and actual != remote.sha256:
            raise ValueError(
                f"SHA-256 mismatch for {remote.filename} from {url}: expected {remote.sha256}, "
                f"got {actual}; the download was deleted (try again, use another mirror via "
                f"urls= in Python, or {_by_hand(remote, url, folder)})"
            )
        if not _looks_complete(tmp, remote.filename):
            raise OSError(
                f"the download of {remote.filename} from {url} is not a complete zip archive "
                f"(cut short?); it was deleted (try again, or {_by_hand(remote, url, folder)})"
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


def _by_hand(remote: RemoteFile, url: str, folder: Path) -> str:
    """What a CLI user (who has no ``urls=``) can do instead: place the file themselves."""
    return (
        f"download {remote.filename} yourself from {url} or a mirror and put it into {folder}; "
        "--cache-dir, data.cache_dir or $SHOAL_DATA choose the cache folder"
    )


def _create_part(folder: Path, filename: str) -> tuple[int, Path]:
    """Open a new ``<filename>.<random>.part`` in ``folder`` (created if needed).

    Created with mode 0666 less the umask, like any new file: mkstemp's 0600 survived
    ``os.replace``, so other users of a shared cache could not read the data. Parts older
    than a day are removed first: a killed download leaves its part behind.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(folder, filename)
        while True:
            tmp = folder / f"{filename}.{secrets.token_hex(4)}.part"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                return os.open(tmp, flags, 0o666), tmp
            except FileExistsError:
                continue
    except OSError as e:  # a file in the way, a read-only disk: [Errno 20] or [Errno 30] before
        raise OSError(
            f"cannot write {filename} into the cache folder {folder} ({e.strerror}); choose "
            "another with --cache-dir, data.cache_dir or $SHOAL_DATA"
        ) from None


STALE_PART_S = 24 * 3600.0
"""Age in seconds after which a ``.part`` file is taken for a killed download's leftover (an
active download writes to its part, so its modification time stays recent)."""


def _remove_stale_parts(folder: Path, filename: str) -> None:
    now = time.time()
    for part in folder.glob(f"{glob.escape(filename)}.*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:  # best effort: another process removed it first, or it is not ours
            pass


def _receive(fd: int, remote: RemoteFile, url: str, folder: Path, progress: bool) -> str:
    """Write the response for ``url`` to ``fd``; return its SHA-256. Failures of the network
    or the server become one ``OSError`` naming the file, the URL and what to do (an
    ``OSError`` rather than a ``URLError``, so no caller words it as a network failure)."""
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            if resp.headers.get_content_type() == "text/html":
                # A login, error or "moved" page served with 200: without a published hash
                # it was saved under the archive's name and accepted from then on.
                raise OSError(
                    f"{url} answered with an HTML page instead of {remote.filename}; nothing was "
                    f"saved (if the file moved, {_by_hand(remote, url, folder)})"
                )
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
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            why = f"the server has no such file (HTTP {e.code}); if it moved, "
        else:
            why = f"the server refused it (HTTP {e.code} {e.reason}); try again later, or "
        raise OSError(
            f"downloading {remote.filename} from {url} failed: {why}{_by_hand(remote, url, folder)}"
        ) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):  # while connecting
            raise _timed_out(remote, url, folder) from None
        raise OSError(
            f"downloading {remote.filename} from {url} failed ({e.reason}); check the network, "
            f"or {_by_hand(remote, url, folder)}"
        ) from None
    except TimeoutError:  # waiting for the response or its next bytes (socket.timeout)
        raise _timed_out(remote, url, folder) from None
    except (http.client.HTTPException, ConnectionError) as e:  # cut off, or a chunk cut short
        raise OSError(
            f"downloading {remote.filename} from {url} failed ({type(e).__name__}: {e}); "
            f"try again, or {_by_hand(remote, url, folder)}"
        ) from None
    if total is not None and received != total:
        # A server that closes early ends the read without an error; only the length
        # announced tells, and files without a known hash have nothing else to check.
        raise OSError(
            f"the download of {remote.filename} from {url} ended after "
            f"{received:,} of {total:,} bytes; it was deleted (try again)"
        )
    return h.hexdigest()


def _timed_out(remote: RemoteFile, url: str, folder: Path) -> OSError:
    return OSError(
        f"downloading {remote.filename} from {url} timed out (no data for {TIMEOUT_S:g} s); "
        f"try again later, or {_by_hand(remote, url, folder)}"
    )


def _looks_complete(path: Path, filename: str | None = None) -> bool:
    """False for a file named ``*.zip`` that is not a whole zip archive.

    Files without a published hash (LEAF's raw inputs) have nothing else to check: a download
    cut short without a Content-Length, or an error page, was kept and reused from the cache.
    A zip ends with its central directory, so one cut short has none.
    """
    if not (filename or path.name).endswith(".zip"):
        return True
    return zipfile.is_zipfile(path)


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
    remotes, made_root = CATALOGUE[name], not folder.parent.exists()
    try:
        for i, remote in enumerate(remotes):
            try:
                download_file(remote, folder, url=urls.get(remote.filename), progress=progress)
            except OSError as e:
                # Offline, the message named the first file only: a user placing files by
                # hand learned of the others one failure at a time.
                rest = [r for r in remotes[i + 1 :] if not (folder / r.filename).is_file()]
                if not rest:
                    raise
                more = ", ".join(f"{r.filename} ({urls.get(r.filename, r.url)})" for r in rest)
                raise OSError(f"{e}; {name} needs these files too: {more}") from None
    except BaseException:
        # download_file removes the dataset's empty folder; the cache folder made for it too
        if made_root and folder.parent.is_dir() and not any(folder.parent.iterdir()):
            folder.parent.rmdir()
        raise
    return folder
