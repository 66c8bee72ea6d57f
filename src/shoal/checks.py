"""Argument checks shared by the configs and factories: one wording for one mistake."""

from __future__ import annotations

import numbers
from typing import Any


def is_integer(value: object) -> bool:
    """An integer (a numpy one too), not a bool (``True`` is an int to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number, not a bool nor a numeric string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_count(value: Any, name: str, least: int = 1) -> None:
    """A count must be an integer >= ``least`` (a float count was truncated, or failed deep
    inside a round or in numpy)."""
    if not is_integer(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def check_counts(owner: object, names: tuple[str, ...]) -> None:
    """Each named attribute of ``owner`` must be an integer >= 1."""
    for name in names:
        check_count(getattr(owner, name), name)
