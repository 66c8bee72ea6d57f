"""A grid keeps each cell as it ends: a killed or failed grid went on from nothing, retraining
every cell. A later grid of the same setup takes the kept cells; another setup (rounds, data,
attack or aggregator settings) trains its own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import shoal.robustness.grid as grid
from shoal.robustness import STYLES, load_workload, presets, run_grid

STYLE = STYLES["data_parallel"]


def _grid(path: Path, rounds: int = 2, aggs: tuple[str, ...] = ("mean", "median"), **kw):
    work = kw.pop("work", None) or load_workload("digits", None)
    attacks = presets.pick("attack", presets.attacks(), ["sign_flip"])
    cols = presets.pick("aggregator", presets.aggregators(STYLE.tau), list(aggs))
    return run_grid(work, STYLE, rounds, attacks, cols, command="t", progress=False, finished=path)


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a kept cell was trained again")

    monkeypatch.setattr(grid, "run_cell", refuse)


def test_a_second_grid_takes_every_kept_cell_and_reports_the_same(tmp_path, monkeypatch):
    kept = tmp_path / "cells.jsonl"
    first = _grid(kept)
    assert first["reused_cells"] == []
    assert len(kept.read_text().splitlines()) == 4  # clean and sign flip x mean and median
    _no_training(monkeypatch)
    second = _grid(kept)
    assert second["results"] == first["results"]  # JSON floats come back bit for bit
    assert second["headline"] == first["headline"]
    assert second["reused_cells"] == [
        "clean x mean",
        "clean x median",
        "sign flip x mean",
        "sign flip x median",
    ]


def test_a_cut_line_and_a_missing_cell_are_trained_again(tmp_path, monkeypatch):
    kept = tmp_path / "cells.jsonl"
    first = _grid(kept)
    lines = kept.read_text().splitlines()
    # The last cell's line cut short by a kill, and one cell never written.
    kept.write_text("\n".join([lines[0], lines[2], lines[3][:40]]))
    trained = []
    real = grid.run_cell

    def counting(work, style, rounds, attack, aggregator):
        trained.append((repr(attack), type(aggregator).__name__))
        return real(work, style, rounds, attack, aggregator)

    monkeypatch.setattr(grid, "run_cell", counting)
    again = _grid(kept)
    assert len(trained) == 2 and again["reused_cells"] == ["clean x mean", "sign flip x mean"]
    assert again["headline"] == first["headline"]  # retrained alike (only "seconds" differ)
    assert len(kept.read_text().splitlines()) == 5  # the two retrained appended after the cut
    _no_training(monkeypatch)
    assert len(_grid(kept)["reused_cells"]) == 4  # not glued to the cut line


def test_another_setup_trains_its_own_cells(tmp_path, monkeypatch):
    kept = tmp_path / "cells.jsonl"
    _grid(kept, aggs=("mean",))
    work = load_workload("digits", None)
    calls = []
    real = grid.run_cell

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(grid, "run_cell", counting)
    assert _grid(kept, rounds=1, aggs=("mean",))["reused_cells"] == []
    other_init = dataclasses.replace(work, init=work.init + 1e-3)
    assert _grid(kept, aggs=("mean",), work=other_init)["reused_cells"] == []
    x = work.data.train.x.clone()
    x[0, 0] += 1.0
    other_data = dataclasses.replace(
        work, data=dataclasses.replace(work.data, train=dataclasses.replace(work.data.train, x=x))
    )
    assert _grid(kept, aggs=("mean",), work=other_data)["reused_cells"] == []
    assert len(calls) == 6
    keys = [json.loads(line)["key"] for line in kept.read_text().splitlines()]
    assert len(set(keys)) == len(keys) == 8


def test_without_a_file_nothing_is_kept(tmp_path, monkeypatch):
    def no_store(path):
        raise AssertionError(f"a store of finished cells was made at {path}")

    monkeypatch.chdir(tmp_path)  # where a default file would land
    monkeypatch.setattr(grid, "FinishedCells", no_store)
    report = run_grid(
        load_workload("digits", None),
        STYLE,
        1,
        {},
        presets.pick("aggregator", presets.aggregators(STYLE.tau), ["mean"]),
        command="t",
        progress=False,
    )
    assert report["reused_cells"] == [] and not list(tmp_path.iterdir())
