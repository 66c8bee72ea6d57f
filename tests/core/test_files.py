"""shoal.files: a checkpoint reaches the disk under a temporary name of its own (the full name
plus ``.tmp``, so ``model.pt`` and ``model.json`` never share one), is flushed with fsync and
only then renamed over the old file; a metrics file is one JSON object per line, each line
ended, so rows appended later start on a line of their own."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.files import append_metrics, atomic_save, load_checkpoint, write_metrics


def test_atomic_save_fsyncs_a_temporary_of_its_own_then_renames_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, ...]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        ino = os.fstat(fd).st_ino  # the name that file has in the folder now
        events.append(("fsync", *(str(p) for p in tmp_path.iterdir() if p.stat().st_ino == ino)))
        fsync(fd)

    def spy_replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    other = tmp_path / "ckpt.tmp"  # someone else's file with the same stem
    other.write_text("keep")
    path = tmp_path / "ckpt.pt"
    atomic_save({"x": torch.arange(3)}, path)
    tmp = str(tmp_path / "ckpt.pt.tmp")
    assert events == [("fsync", tmp), ("replace", tmp, str(path))]
    assert torch.equal(torch.load(path)["x"], torch.arange(3))
    assert other.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.tmp"]


def test_write_metrics_ends_every_row_so_appends_stay_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"old": true}\n')
    write_metrics(path, [{"step": 1}, {"step": 2, "loss": 0.5}])
    assert path.read_text() == '{"step": 1}\n{"step": 2, "loss": 0.5}\n'
    append_metrics(path, {"step": 3})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    write_metrics(path, [])
    assert path.read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_stop_signalled_during_a_write_waits_until_the_file_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM's exception raised inside torch.save: the zip writer's cleanup failed, and the
    # process ended with that error (and a .tmp file) instead of the stop.
    from shoal.files import stop_when_written

    class Stop(BaseException):
        pass

    real = torch.save

    def signalled_midway(obj: object, f: object) -> None:
        stop_when_written(Stop())  # what the SIGTERM handler calls
        real(obj, f)

    monkeypatch.setattr(torch, "save", signalled_midway)
    with pytest.raises(Stop):
        atomic_save({"a": 1}, tmp_path / "c.pt")
    monkeypatch.undo()
    assert torch.load(tmp_path / "c.pt") == {"a": 1} and not list(tmp_path.glob("*.tmp"))
    append_metrics(tmp_path / "m.jsonl", {"round": 1})  # no stop left pending
    with pytest.raises(Stop):  # outside a write: at once
        stop_when_written(Stop())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_during_a_checkpoint_save_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    # Ctrl-C inside torch.save ended `shoal run` with the zip writer's RuntimeError (exit 1)
    # in 2 of 6 tries; SIGTERM was already held back.
    from shoal.cli import Terminated, _catch_signals

    real = torch.save

    def signalled_midway(obj: object, f: object) -> None:
        signal.raise_signal(signum)  # the handler runs here, inside the write
        real(obj, f)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # As a command started from a terminal has it: pytest started in the background (`&`)
        # inherits an ignored SIGINT, which _catch_signals rightly leaves alone.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _catch_signals()
        monkeypatch.setattr(torch, "save", signalled_midway)
        with pytest.raises(KeyboardInterrupt) as stop:
            atomic_save({"a": 1}, tmp_path / "c.pt")
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert isinstance(stop.value, Terminated) == (signum == signal.SIGTERM)
    monkeypatch.undo()
    assert torch.load(tmp_path / "c.pt") == {"a": 1} and not list(tmp_path.glob("*.tmp"))


class _Planted:
    """What a checkpoint handed over with a run folder could hold: unpickling it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_is_loaded_weights_only_and_runs_no_planted_code(tmp_path: Path) -> None:
    # torch.load(weights_only=False) ran whatever the file's pickle named.
    marker = tmp_path / "ran"
    torch.save({"params": torch.zeros(3), "x": _Planted(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"holds an object .* \(getattr\), and loading it could"):
        load_checkpoint(tmp_path / "checkpoint.pt", "cpu", "params")
    assert not marker.exists()


def test_the_state_classes_a_run_saves_load_weights_only(tmp_path: Path) -> None:
    from shoal.aggregate.clipping import ClipState
    from shoal.parallel.graph import Neighbors
    from shoal.topology import ring

    saved = {
        "params": torch.ones(3),
        "aggregator": ClipState(torch.zeros(3)),
        "in_flight": Neighbors(torch.zeros(2, 1, 3), torch.ones(2, 1, dtype=torch.bool)),
        "topology": ring(4),
        "holders": np.arange(4),  # a downlink's, in int64
        "history": [{"sim_seconds": np.float64(1.5), "share": np.float32(0.25)}],
    }
    atomic_save(saved, tmp_path / "checkpoint.pt")
    got = load_checkpoint(tmp_path / "checkpoint.pt", "cpu", "params")
    assert got["topology"] == ring(4) and torch.equal(got["aggregator"].center, torch.zeros(3))
    assert isinstance(got["in_flight"], Neighbors)
    assert np.array_equal(got["holders"], np.arange(4)) and got["history"] == saved["history"]
