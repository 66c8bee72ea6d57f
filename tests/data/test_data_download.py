"""fetch/download against files served from a temporary folder; never the network."""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import pytest

import shoal.data.download as dl
from shoal.data import CATALOGUE, RemoteFile, default_cache_dir, download_file, fetch


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real = dl.urllib.request.urlopen

    def only_files(url, *a, **k):
        assert str(url).startswith("file://"), f"test tried to reach {url}"
        return real(url, *a, **k)

    monkeypatch.setattr(dl.urllib.request, "urlopen", only_files)


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, bytes, str]:
    payload = bytes(range(256)) * 4000
    src = tmp_path / "server" / "toy.bin"
    src.parent.mkdir()
    src.write_bytes(payload)
    return src, payload, hashlib.sha256(payload).hexdigest()


def test_good_hash_lands_in_cache_and_is_not_downloaded_twice(served, tmp_path: Path) -> None:
    src, payload, digest = served
    remote = RemoteFile(src.as_uri(), "toy.bin", digest)
    cache = tmp_path / "cache"
    path = download_file(remote, cache, progress=True)
    assert path == cache / "toy.bin" and path.read_bytes() == payload
    assert sorted(p.name for p in cache.iterdir()) == ["toy.bin"]
    src.unlink()  # a second download would now fail
    assert download_file(remote, cache, progress=False) == path


def test_bad_hash_raises_and_leaves_nothing(served, tmp_path: Path) -> None:
    src, _, digest = served
    wrong = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as err:
        download_file(RemoteFile(src.as_uri(), "toy.bin", wrong), cache, progress=False)
    msg = str(err.value)
    assert "toy.bin" in msg and wrong in msg and digest in msg
    assert not cache.exists()  # nor an empty dataset folder


def test_a_server_that_never_answers_times_out(tmp_path: Path, monkeypatch) -> None:
    """A loopback socket that accepts the connection (into its backlog) and never answers."""
    monkeypatch.undo()  # the real urlopen: the server is on loopback
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dl, "TIMEOUT_S", 0.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/toy.bin"
        with pytest.raises(OSError, match="timed out"):
            download_file(RemoteFile(url, "toy.bin", "0" * 64), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_corrupt_cached_copy_is_replaced(served, tmp_path: Path) -> None:
    src, payload, digest = served
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "toy.bin").write_bytes(b"truncated")
    download_file(RemoteFile(src.as_uri(), "toy.bin", digest), cache, progress=False)
    assert (cache / "toy.bin").read_bytes() == payload


def test_an_upper_case_hash_is_the_same_hash(served, tmp_path: Path) -> None:
    src, payload, digest = served
    remote = RemoteFile(src.as_uri(), "toy.bin", digest.upper())  # a mismatch before
    assert download_file(remote, tmp_path / "c", progress=False).read_bytes() == payload


def test_a_failed_download_keeps_the_cached_copy(tmp_path: Path) -> None:
    # The copy with another hash (a user's subset, say) was deleted before the download,
    # which then failed (offline): the user's only copy was gone.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "toy.bin").write_bytes(b"mine")
    missing = (tmp_path / "nowhere.bin").as_uri()
    with pytest.raises(OSError):
        download_file(RemoteFile(missing, "toy.bin", "0" * 64), cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == ["toy.bin"]
    assert (cache / "toy.bin").read_bytes() == b"mine"


def test_unknown_hash_warns_unverified(served, tmp_path: Path) -> None:
    src, payload, _ = served
    with pytest.warns(UserWarning, match="unverified"):
        download_file(RemoteFile(src.as_uri(), "toy.bin", None), tmp_path / "c", progress=False)
    with pytest.warns(UserWarning, match="unverified"):
        download_file(RemoteFile(src.as_uri(), "toy.bin", None), tmp_path / "c", progress=False)


def test_fetch_uses_catalogue_hash_with_url_overrides(
    served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, payload, digest = served
    monkeypatch.setitem(
        CATALOGUE, "toy", (RemoteFile("https://example.invalid/toy.bin", "toy.bin", digest),)
    )
    folder = fetch("toy", tmp_path / "cache", urls={"toy.bin": src.as_uri()}, progress=False)
    assert folder == tmp_path / "cache" / "toy" and (folder / "toy.bin").read_bytes() == payload
    assert fetch("toy", tmp_path / "cache", progress=False) == folder  # cached: no network
    monkeypatch.setitem(
        CATALOGUE, "bad", (RemoteFile("https://example.invalid/x", "toy.bin", "f" * 64),)
    )
    with pytest.raises(ValueError, match="mismatch"):
        fetch("bad", tmp_path / "cache", urls={"toy.bin": src.as_uri()}, progress=False)
    assert not (tmp_path / "cache" / "bad" / "toy.bin").exists()


def test_a_failed_fetch_names_every_file_still_missing(
    served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offline, it named the first file only: the others came one failure at a time.
    src, payload, digest = served
    gone = [(tmp_path / f"{n}.gz").as_uri() for n in "abc"]
    files = [RemoteFile(url, f"{n}.gz", digest) for url, n in zip(gone, "abc")]
    monkeypatch.setitem(CATALOGUE, "toy", tuple(files))
    (tmp_path / "cache" / "toy").mkdir(parents=True)
    (tmp_path / "cache" / "toy" / "c.gz").write_bytes(payload)  # in place already
    with pytest.raises(OSError) as err:
        fetch("toy", tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert msg.count("a.gz") >= 1 and f"toy needs these files too: b.gz ({gone[1]})" in msg
    assert "c.gz" not in msg and "\n" not in msg
    # A first fetch into a new cache folder leaves none behind when it fails (it left it empty).
    with pytest.raises(OSError):
        fetch("toy", tmp_path / "new_cache", progress=False)
    assert not (tmp_path / "new_cache").exists()


def test_fetch_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        fetch("nope", tmp_path)
    with pytest.raises(ValueError, match="does not have"):
        fetch("mnist", tmp_path, urls={"other.gz": "file:///dev/null"})


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOAL_DATA", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SHOAL_DATA")
    assert default_cache_dir() == Path.home() / ".cache" / "shoal"


def test_catalogue_entries_are_well_formed() -> None:
    assert {
        "mnist",
        "fashion_mnist",
        "emnist",
        "cifar10",
        "cifar100",
        "femnist",
        "shakespeare",
    } <= set(CATALOGUE)
    for name, files in CATALOGUE.items():
        assert files, name
        for f in files:
            assert f.url.startswith(("http://", "https://")), f
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256), f


def test_a_download_cut_short_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A loopback server announces 1,000 bytes and closes after 400: for a file without a
    published hash (LEAF's raw inputs) that was kept and cached as if complete."""
    import threading

    monkeypatch.undo()  # the real urlopen: the server is on loopback
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
                conn.sendall(head + b"x" * 400)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/raw.txt"
        with pytest.raises(OSError, match="ended after 400 of 1,000 bytes"):
            download_file(RemoteFile(url, "raw.txt", None), tmp_path / "c", progress=False)
        thread.join(5)
    assert not (tmp_path / "c").exists()  # nothing cached


def test_a_cached_file_is_checked_before_it_is_used(tmp_path: Path, capsys) -> None:
    """The CLI reads the cache on every run: a corrupted file (here every label 0) trained
    silently on the wrong data; now it is refused with what to do."""
    import gzip

    from shoal.cli import main

    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    for remote in CATALOGUE["mnist"]:
        (folder / remote.filename).write_bytes(gzip.compress(b"\0" * 16))
    with pytest.raises(ValueError, match="does not have the published SHA-256"):
        dl.check_cached("mnist", folder)
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nname = "mnist"\ncache_dir = "{(tmp_path / "cache").as_posix()}"\n')
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "does not have the published SHA-256" in capsys.readouterr().err
