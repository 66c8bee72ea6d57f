"""Progress bars that read well on a terminal and in a log file.

On a terminal, tqdm redraws one line with carriage returns. Written to a file (a job's log
under Slurm, a CI log, ``2> run.log``) the same output became one line of thousands of
characters with the redraws and Unicode blocks in it. Where stderr is no terminal, each
update is a line of its own, in ASCII, at most every :data:`LOG_INTERVAL_S` seconds.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between progress lines in a log file (a terminal redraws ten times a second)."""


class _Lines:
    """A stream for tqdm that writes each redraw as a line (its carriage returns and the
    spaces that pad a shorter redraw dropped)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.partition(" [")[0]  # closing redraws the last count (a new rate)
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)``, drawn as lines where stderr is not a terminal."""
    stream = sys.stderr
    terminal = hasattr(stream, "isatty") and stream.isatty()
    notebook = "ipykernel" in sys.modules  # its stderr is no terminal, but redraws a bar
    if not kwargs.get("disable") and not terminal and not notebook:
        kwargs = {"file": _Lines(stream), "mininterval": LOG_INTERVAL_S, "ascii": True, **kwargs}
    return tqdm(*args, **kwargs)
