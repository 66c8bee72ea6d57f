"""What a download keeps and how a failed one is reported, against a loopback HTTP server."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal.data.download as dl
from shoal.data import CATALOGUE, RemoteFile, download_file

Route = tuple[int, dict[str, str], bytes, bool]
"""status, headers, body, and whether to stall (send nothing more) after the body."""


class _Server(http.server.ThreadingHTTPServer):
    routes: dict[str, Route]
    release: threading.Event


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        status, headers, body, stall = self.server.routes[self.path]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if stall:
            self.server.release.wait(10)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, Route]]]:
    """``(base URL, routes)``: the test fills ``routes`` with ``path -> Route``."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.routes, srv.release = {}, threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv.routes
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def a_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("by_class/hsf_0/a.png", b"\x89PNG" + bytes(range(256)) * 40)
    return buf.getvalue()


def test_an_html_page_served_with_200_is_refused(server, tmp_path: Path) -> None:
    # A login or "moved" page was saved as by_class.zip and, with no published hash to
    # compare, accepted from then on.
    base, routes = server
    routes["/by_class.zip"] = (200, {"Content-Type": "text/html; charset=utf-8"}, b"<html/>", False)
    remote = RemoteFile(base + "/by_class.zip", "by_class.zip", None)
    with pytest.raises(OSError, match="answered with an HTML page instead of by_class.zip"):
        download_file(remote, tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_a_zip_cut_short_without_a_length_is_refused(server, tmp_path: Path) -> None:
    # Without Content-Length the end of the connection is the end of the file: a zip cut
    # short was kept as complete.
    base, routes = server
    whole = a_zip()
    routes["/cut.zip"] = (200, {}, whole[: len(whole) // 2], False)
    routes["/whole.zip"] = (200, {}, whole, False)
    cut = RemoteFile(base + "/cut.zip", "by_class.zip", None)
    with pytest.raises(OSError, match="by_class.zip .* is not a complete zip archive"):
        download_file(cut, tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
    whole_remote = RemoteFile(base + "/whole.zip", "by_class.zip", None)
    with pytest.warns(UserWarning, match="unverified"):
        path = download_file(whole_remote, tmp_path / "c", progress=False)
    assert path.read_bytes() == whole


def test_a_cut_zip_in_the_cache_is_downloaded_again(server, tmp_path: Path) -> None:
    # An unverified cached copy was returned as it was, forever.
    base, routes = server
    whole = a_zip()
    routes["/by_class.zip"] = (200, {"Content-Length": str(len(whole))}, whole, False)
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "by_class.zip").write_bytes(whole[:100])
    with pytest.warns(UserWarning, match="unverified"):
        path = download_file(RemoteFile(base + "/by_class.zip", "by_class.zip", None), cache)
    assert path.read_bytes() == whole


def test_a_404_names_the_file_the_url_and_where_to_put_it(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    base, routes = server
    routes["/gone.zip"] = (404, {"Content-Length": "9"}, b"not found", False)
    url = base + "/gone.zip"
    with pytest.raises(OSError) as err:
        download_file(RemoteFile(url, "by_class.zip", None), tmp_path / "c", progress=False)
    msg = str(err.value)
    assert "by_class.zip" in msg and url in msg and "no such file (HTTP 404)" in msg
    assert str(tmp_path / "c") in msg and "--cache-dir" in msg and "SHOAL_DATA" in msg
    assert "network" not in msg and "\n" not in msg
    # The command line said "check the network" (it rewords a URLError).
    from shoal.cli import main

    monkeypatch.setitem(CATALOGUE, "femnist", (RemoteFile(url, "by_class.zip", None),))
    assert main(["data", "fetch", "femnist", "--cache-dir", str(tmp_path / "cli")]) == 1
    err_text = capsys.readouterr().err
    assert "no such file (HTTP 404)" in err_text and "network" not in err_text


def test_a_read_timeout_is_one_line_naming_file_and_url(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that stops sending mid-file raised a bare TimeoutError ("timed out").
    base, routes = server
    routes["/slow.bin"] = (200, {"Content-Length": "1000"}, b"x" * 100, True)
    monkeypatch.setattr(dl, "TIMEOUT_S", 0.5)
    url = base + "/slow.bin"
    with pytest.raises(OSError) as err:
        download_file(RemoteFile(url, "slow.bin", "0" * 64), tmp_path / "c", progress=False)
    assert type(err.value) is OSError
    msg = str(err.value)
    assert "slow.bin" in msg and url in msg and "timed out" in msg and "try again" in msg
    assert not (tmp_path / "c").exists()


def test_a_connection_cut_mid_chunk_is_one_line(server, tmp_path: Path) -> None:
    # http.client.IncompleteRead, not an OSError: a traceback from the command line.
    base, routes = server
    routes["/cut.txt"] = (200, {"Transfer-Encoding": "chunked"}, b"100\r\n" + b"x" * 10, False)
    url = base + "/cut.txt"
    with pytest.raises(OSError, match="downloading raw_data.txt from .* failed .*IncompleteRead"):
        download_file(RemoteFile(url, "raw_data.txt", None), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_a_mismatch_says_how_to_place_the_file_by_hand(tmp_path: Path) -> None:
    # The message suggested urls=, which command-line users do not have.
    src = tmp_path / "toy.bin"
    src.write_bytes(b"toy")
    cache = tmp_path / "cache" / "toy"
    with pytest.raises(ValueError, match="mismatch") as err:
        download_file(RemoteFile(src.as_uri(), "toy.bin", "0" * 64), cache, progress=False)
    msg = str(err.value)
    assert f"put it into {cache}" in msg and "--cache-dir" in msg and "SHOAL_DATA" in msg


def test_a_download_is_readable_by_others_and_old_parts_are_removed(tmp_path: Path) -> None:
    # mkstemp's mode 0600 survived the rename; a killed download's part stayed forever.
    payload = b"shoal" * 100
    src = tmp_path / "toy.bin"
    src.write_bytes(payload)
    cache = tmp_path / "cache"
    cache.mkdir()
    old, fresh, other = (cache / n for n in ("toy.bin.dead.part", "toy.bin.live.part", "x.part"))
    for part in (old, fresh, other):
        part.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    for part in (old, other):
        os.utime(part, (two_days_ago, two_days_ago))
    remote = RemoteFile(src.as_uri(), "toy.bin", hashlib.sha256(payload).hexdigest())
    before = os.umask(0o022)
    try:
        path = download_file(remote, cache, progress=False)
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in cache.iterdir()) == ["toy.bin", "toy.bin.live.part", "x.part"]


def test_a_cache_folder_that_cannot_be_written_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # A file in the folder's place raised "[Errno 17] File exists" or "[Errno 20] Not a
    # directory"; a read-only disk "[Errno 30] Read-only file system".
    src = tmp_path / "toy.bin"
    src.write_bytes(b"toy")
    remote = RemoteFile(src.as_uri(), "toy.bin", None)
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a folder")
    for folder in (blocker, blocker / "toy"):
        with pytest.raises(OSError, match=f"cache folder {folder} .*--cache-dir.*SHOAL_DATA"):
            download_file(remote, folder, progress=False)
    from shoal.cli import main

    assert main(["data", "fetch", "mnist", "--cache-dir", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert f"cache folder {blocker / 'mnist'}" in err and "Errno" not in err

    real_open = os.open

    def read_only(path: str, *args: int) -> int:
        if str(path).endswith(".part"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args)

    monkeypatch.setattr(dl.os, "open", read_only)
    with pytest.raises(OSError, match="cannot write toy.bin into the cache folder .*Read-only"):
        download_file(remote, tmp_path / "ro", progress=False)


def test_a_folder_at_the_files_name_is_refused_before_downloading(server, tmp_path: Path) -> None:
    # The whole file was downloaded, then os.replace raised a bare IsADirectoryError.
    base, routes = server
    whole = a_zip()
    routes["/by_class.zip"] = (200, {"Content-Length": str(len(whole))}, whole, False)
    (tmp_path / "c" / "by_class.zip").mkdir(parents=True)
    remote = RemoteFile(base + "/by_class.zip", "by_class.zip", None)
    with pytest.raises(OSError, match="by_class.zip is in the way of the download: it is not a"):
        download_file(remote, tmp_path / "c", progress=False)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["by_class.zip"]  # no part left
