"""Helpers for the CLI tests: a small, fast config and the CLI run in-process."""

from __future__ import annotations

from pathlib import Path

from shoal.cli import main

# digits, 20 clients, a small MLP: a round takes milliseconds.
SMALL = """
seed = 3
rounds = {rounds}
num_threads = 1

[data]
name = "digits"

[partition]
scheme = "dirichlet"
num_clients = 20
alpha = 0.5

[model]
name = "mlp"
hidden = [32]

[algorithm]
name = "fedavg"
lr = 0.1

[client]
epochs = {epochs}
batch_size = 10

[sampling]
clients_per_round = 5
"""


def write_config(folder: Path, rounds: int = 3, epochs: int = 1, name: str = "small") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(SMALL.format(rounds=rounds, epochs=epochs))
    return path


def shoal(*args: str | Path) -> int:
    """Run the CLI in this process; returns its exit code."""
    return main([str(a) for a in args])


def sets(assignments: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` as ``--set a=1 --set b=2`` arguments."""
    return [arg for a in assignments for arg in ("--set", a)]


def assert_one_line_error(folder: Path, err_text: str, words: list[str]) -> None:
    """A config mistake: one ``shoal: error:`` line naming ``words``, and no run folder left."""
    assert err_text.count("\n") == 1 and err_text.startswith("shoal: error:"), err_text
    for w in words:
        assert w in err_text, err_text
    assert "Traceback" not in err_text
    assert not (folder / "r" / "config.toml").exists()
