"""Every public callable (the ``__all__`` of ``shoal`` and its subpackages) says what it does in
its own docstring: ``help()`` of a dataclass without one shows only its generated signature."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = [
    "shoal",
    "shoal.aggregate",
    "shoal.algorithms",
    "shoal.attacks",
    "shoal.compress",
    "shoal.cost",
    "shoal.data",
    "shoal.models",
    "shoal.parallel",
    "shoal.report",
    "shoal.robustness",
]


def _public(package: str) -> list[tuple[str, object]]:
    module = importlib.import_module(package)
    return [
        (name, obj)
        for name in module.__all__
        if callable(obj := getattr(module, name))
        and getattr(obj, "__module__", "").startswith("shoal")  # not a typing alias
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_public_callables_have_docstrings(package):
    missing = []
    for name, obj in _public(package):
        own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        if not own or (inspect.isclass(obj) and own.startswith(f"{obj.__name__}(")):
            missing.append(name)
    assert not missing, f"{package}: no docstring for {missing}"
