"""Progress bars in a log file: a line per update, no carriage returns."""

from __future__ import annotations

import io

import pytest

from shoal.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("sys.stderr", stream)
    for _ in progress_bar(range(3), desc="fedavg", unit="round", mininterval=0, miniters=1):
        pass
    return stream.getvalue()


def test_a_log_file_gets_one_ascii_line_per_update(monkeypatch: pytest.MonkeyPatch) -> None:
    # Written to a file, tqdm's redraws became one line of thousands of characters.
    text = _draw(io.StringIO(), monkeypatch)
    lines = text.splitlines()
    assert "\r" not in text and text.isascii()
    assert lines[0].startswith("fedavg:   0%") and lines[-1].startswith("fedavg: 100%")
    assert len(lines) == 4 and all(line == line.rstrip() for line in lines)


def test_a_terminal_keeps_the_redrawn_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "\r" in _draw(_Terminal(), monkeypatch)
