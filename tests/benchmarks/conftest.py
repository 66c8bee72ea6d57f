"""Fixtures shared by the benchmark script tests."""

from pathlib import Path

import pytest


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """A folder that passes the scripts' "is mnist5k there" check (nothing reads it here)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    return tmp_path / "data"
