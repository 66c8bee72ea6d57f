"""The shipped example configs: the reference one documents every key; every one runs on the
MNIST subset."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import shoal

from shoal.cli.parallel import is_parallel
from shoal.cli.registry import CATALOG
from shoal.config import SECTIONS, TOP, load, resolve

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fedavg_mnist5k.toml"


def test_example_documents_every_fixed_key() -> None:
    text = EXAMPLE.read_text()
    for key in TOP:
        assert f"\n{key} = " in text, key
    for section, fixed in SECTIONS.items():
        assert f"[{section}]" in text
        for key in fixed:
            assert f"\n{key} = " in text, f"{section}.{key}"


def test_example_runs_on_the_mnist_subset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    raw = load(EXAMPLE)
    if not (REPO / raw["data"]["dir"]).is_dir():
        pytest.skip("the shared MNIST subset is not next to this checkout")
    monkeypatch.chdir(REPO)  # data.dir is relative to the current directory
    assert resolve(raw, CATALOG)["data.name"] == "mnist"
    small = ["--set", "partition.num_clients=20", "--set", "num_threads=1"]
    assert shoal("data", "show", EXAMPLE, *small, "--png", tmp_path / "h.png") == 0
    assert "mnist: 4000 training samples, 10 classes" in capsys.readouterr().out
    run = tmp_path / "run"
    assert shoal("run", EXAMPLE, *small, "--set", "rounds=1", "--out", run, "--quiet") == 0
    assert "final test accuracy" in capsys.readouterr().out
    assert (run / "model.pt").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.stem)
def test_every_example_config_runs(path: Path, tmp_path: Path, monkeypatch) -> None:
    raw = load(path)
    if not (REPO / raw["data"]["dir"]).is_dir():
        pytest.skip("the shared MNIST subset is not next to this checkout")
    monkeypatch.chdir(REPO)
    parallel = is_parallel(resolve(raw, CATALOG))
    short = ["parallel.steps=2", "parallel.eval_every=2"] if parallel else ["rounds=1"]
    args = [a for s in short for a in ("--set", s)]
    assert shoal("run", path, *args, "--out", tmp_path / "run", "--quiet") == 0
    assert (tmp_path / "run" / "model.pt").is_file()


def _flat(path: Path) -> dict[str, object]:
    values = resolve(load(path), CATALOG).values
    return {
        f"{section}.{key}": value
        for section, table in values.items()
        if isinstance(table, dict)
        for key, value in table.items()
    } | {key: value for key, value in values.items() if not isinstance(value, dict)}


def test_compressed_example_differs_from_its_baseline_only_in_compression(monkeypatch) -> None:
    # Its comment compares the two runs' accuracies (and suggests plotting them together):
    # that holds only on the same partition, model, schedule and seed.
    if not (REPO / load(EXAMPLE)["data"]["dir"]).is_dir():
        pytest.skip("the shared MNIST subset is not next to this checkout")
    monkeypatch.chdir(REPO)  # resolving checks data.dir, relative to the current directory
    dense, compressed = _flat(EXAMPLE), _flat(REPO / "examples" / "topk_ef_mnist5k.toml")
    differ = {k for k in dense.keys() | compressed.keys() if dense.get(k) != compressed.get(k)}
    assert {k for k in differ if not k.startswith("compression.")} == set()
    assert "compression.name" in differ
