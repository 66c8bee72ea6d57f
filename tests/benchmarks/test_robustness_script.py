"""benchmarks/robustness.py redraws the grid a JSON holds into that grid's files: without
``--style``, ``--render robustness_dp.json`` wrote the data-parallel table and heat map over
the FedAvg grid's ``robustness.md`` and ``robustness.png``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal.robustness import render

ROOT = Path(__file__).resolve().parents[2]


def _main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> dict[str, Any]:
    """Run the script's ``main`` with ``render.write`` replaced by a recorder (nothing is
    written into the repository); returns what it was asked to write."""
    spec = importlib.util.spec_from_file_location(
        "robustness_benchmark", ROOT / "benchmarks" / "robustness.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    asked: dict[str, Any] = {}
    monkeypatch.setattr(render, "write", lambda report, **paths: asked.update(paths))
    monkeypatch.setattr(sys, "argv", ["robustness.py", *argv])
    script.main()
    return asked


@pytest.mark.parametrize(("name", "stem"), [("robustness_dp", "robustness_dp"),
                                            ("robustness", "robustness")])  # fmt: skip
def test_render_writes_the_files_of_the_grid_in_the_json(
    monkeypatch: pytest.MonkeyPatch, name: str, stem: str
) -> None:
    asked = _main(monkeypatch, "--render", str(ROOT / "benchmarks" / "results" / f"{name}.json"))
    assert asked["json_path"] is None
    assert Path(asked["md_path"]) == ROOT / "benchmarks" / "results" / f"{stem}.md"
    assert Path(asked["png_path"]) == ROOT / "docs" / "img" / f"{stem}.png"


def test_render_refuses_a_style_unlike_the_jsons(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dp = ROOT / "benchmarks" / "results" / "robustness_dp.json"
    assert json.loads(dp.read_text())["setup"]["style"] == "data_parallel"
    with pytest.raises(SystemExit) as stop:
        _main(monkeypatch, "--style", "fedavg", "--render", str(dp), "--md", str(tmp_path / "x"))
    assert stop.value.code == 2
    assert "holds the data_parallel grid" in capsys.readouterr().err


@pytest.mark.parametrize("rounds", ["0", "-2"])
def test_rounds_below_one_are_refused_before_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], rounds: str
) -> None:
    """``--rounds 0`` ran the default 5/25/40 rounds and left it out of the command line."""
    with pytest.raises(SystemExit) as stop:
        _main(monkeypatch, "--quick", "--rounds", rounds, "--data-dir", str(tmp_path / "none"))
    assert stop.value.code == 2
    assert f"--rounds must be >= 1, got {rounds}" in capsys.readouterr().err
