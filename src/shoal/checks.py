"""Argument checks shared by the configs and factories: one wording for one mistake."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def is_integer(value: object) -> bool:
    """An integer (a numpy one too), not a bool (``True`` is an int to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number torch computes with: a Python or numpy int or float, not a bool (nor a
    numeric string, nor a ``Fraction``, which torch refuses inside the first round)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_number(value: Any, name: str, *, positive: bool, finite: bool = True) -> None:
    """A real setting, ``> 0`` or ``>= 0``, finite unless ``finite=False``: True was taken as
    1 (a 1 s latency; a clipping radius), inf made the geometric median NaN, a string or None
    failed later inside the first round."""
    ok = is_real(value) and (value > 0 if positive else value >= 0)
    if not ok or (finite and not math.isfinite(value)):
        bound = "> 0" if positive else ">= 0"
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{name} must be {kind} {bound}, got {value!r}")


def check_count(value: Any, name: str, least: int = 1) -> None:
    """A count must be an integer >= ``least`` (a float count was truncated, or failed deep
    inside a round or in numpy)."""
    if not is_integer(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


SEED_LIMIT = 2**32
"""Run seeds are below this: numpy's SeedSequence splits a larger integer into 32-bit words,
so the round key ``[2**32 + s, r, stream]`` (:func:`shoal.schedule.round_rng`) is
``[s, 1, r, stream]``, and seed ``2**32 + s`` sampled in round 0 the clients that seed ``s``
samples in round 1."""


def check_seed(value: Any, name: str = "seed") -> None:
    """A run's seed: an integer in ``[0, 2**32)`` (see :data:`SEED_LIMIT`)."""
    if not is_integer(value) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer >= 0 and < 2**32, got {value!r}")


def stragglers_keep(clients_per_round: int, fraction: float) -> int:
    """How many of the ``m`` clients sampled in a round FedProx's straggler model leaves
    unslowed: ``round(m (1 - fraction))``. With the stragglers dropped, 0 means that no one
    trains in any round (a run of constant accuracy that ended without an error)."""
    return int(round(clients_per_round * (1.0 - fraction)))


def check_counts(owner: object, names: tuple[str, ...]) -> None:
    """Each named attribute of ``owner`` must be an integer >= 1."""
    for name in names:
        check_count(getattr(owner, name), name)


class FlagError(TypeError, ValueError):
    """A switch given something else: a wrong type, so a TypeError, and a wrong value to the
    callers (the command line, the config factories) that report ValueErrors in one line."""


def check_flag(value: Any, name: str) -> None:
    """A switch must be a bool: the string "False" is true to Python, and nesterov="False"
    trained with Nesterov momentum."""
    if not isinstance(value, (bool, np.bool_)):  # a numpy comparison's result is a flag too
        raise FlagError(f"{name} must be true or false, got {value!r}")


def a_word(word: str) -> str:
    """``"a Compressor"``, ``"an Aggregator"``, ``"an easgd"``."""
    return f"{'an' if word[:1].lower() in tuple('aeiou') else 'a'} {word}"


def a_kind(kind: type) -> str:
    return a_word(kind.__name__)


def check_instance(value: Any, kind: type, name: str, hint: str = "") -> None:
    """``value`` must be a ``kind``: a wrong object otherwise failed later, deep inside, with
    an ``AttributeError`` that named neither the argument nor what it should be."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {a_kind(kind)}{hint}, got {type(value).__name__}")
