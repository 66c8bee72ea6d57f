"""Argument types shared by the benchmark scripts.

A bad value is argparse's usage error (exit 2) before any work, not a traceback at the end of
a run that took minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any


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


def _int_at_least(text: str, least: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {n}")
    return n


def positive_int(text: str) -> int:
    """An integer >= 1 (rounds, repeats, sizes: 0 ran nothing, or failed later)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (where 0 means something: no warm-up, PyTorch's default threads)."""
    return _int_at_least(text, 0)


def _finite(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(x):  # float() takes "nan" and "inf"
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates: a negative one trained uphill, minutes long)."""
    x = _finite(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {x}")
    return x


def float_in(
    lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a number in the interval from ``lo`` to ``hi``, each end closed unless
    said open (momentum in [0, 1), an accuracy in (0, 1])."""
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        x = _finite(text)
        if x < lo or x > hi or (lo_open and x == lo) or (hi_open and x == hi):
            raise argparse.ArgumentTypeError(f"must be in {span}, got {x}")
        return x

    return parse


def names(allowed: Collection[str], *, none: str = "") -> Callable[[str], str]:
    """An argparse type: comma-separated names from ``allowed`` (``none``, if given, stands for
    no name). The text is kept as given, since the scripts record it as their settings."""

    def parse(text: str) -> str:
        if unknown := [n for n in text.split(",") if n and n != none and n not in allowed]:
            msg = f"unknown {unknown}; choose from {', '.join(allowed)}"
            raise argparse.ArgumentTypeError(msg + (f" (or {none!r})" if none else ""))
        return text

    return parse


def device(text: str) -> str:
    """``--device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``, resolved
    now: a bad name was a torch traceback once the run had started."""
    from shoal.runtime.sim import resolve_device  # here: it imports torch, the rest stays light

    try:
        return str(resolve_device(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_of(benchmark: str, keys: Collection[str] = ()) -> Callable[[str], Path]:
    """An argparse type: the path of a ``<benchmark>.py --json``, known by its ``benchmark``
    field or, for reports without one, by having all of ``keys``; a missing file or another
    JSON is a usage error (they were tracebacks)."""

    def parse(text: str) -> Path:
        try:
            data: Any = json.loads(Path(text).read_text())
        except OSError as e:
            raise argparse.ArgumentTypeError(f"{text}: {e.strerror}") from None
        except ValueError:  # not JSON
            data = None
        ok = isinstance(data, dict) and (
            all(k in data for k in keys) if keys else data.get("benchmark") == benchmark
        )
        if not ok:
            raise argparse.ArgumentTypeError(f"{text}: not a {benchmark}.py --json")
        return Path(text)

    return parse


def check_mnist5k(parser: argparse.ArgumentParser, data_dir: str | Path) -> None:
    """Refuse a ``--data-dir`` without mnist5k now: loading it came only after other work, or
    after a first job had failed on it."""
    if not (Path(data_dir) / "train-images-idx3-ubyte.gz").exists():
        parser.error(f"no mnist5k in {data_dir}; pass --data-dir")


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
