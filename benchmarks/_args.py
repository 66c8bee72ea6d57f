"""Argument types shared by the benchmark scripts.

A bad value is argparse's usage error (exit 2) before any work, not a traceback at the end of
a run that took minutes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path


def json_path(text: str) -> Path:
    """``--json PATH``: the file a run writes at its end. A folder or an empty path is refused
    now; a missing parent folder is made now (the write would fail only after the run)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; name a file")
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text} names a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise argparse.ArgumentTypeError(
            f"cannot make the folder of {text}: {e.strerror}"
        ) from None
    return path


def positive_int(text: str) -> int:
    """An integer >= 1 (rounds, repeats, sizes: 0 ran nothing, or failed later)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def int_list(lo: int, hi: int | None, what: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers in ``lo..hi`` (no upper bound if ``hi`` is
    None)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(m) for m in text.split(",")]
        except ValueError:
            msg = f"expected comma-separated integers, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if bad := [m for m in values if m < lo or (hi is not None and m > hi)]:
            span = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{what} must be {span}: {bad}")
        return values

    return parse
