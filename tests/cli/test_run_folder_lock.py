"""One run writes into a folder at a time (``shoal.files.run_lock``), and a checkpoint of
another kind of run is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import SMALL, shoal, write_config

from core.helpers import tiny_data, tiny_model, unequal_clients
from shoal.algorithms import fedavg
from shoal.cli.run import claimed_out
from shoal.files import FolderInUse, atomic_save, load_checkpoint, run_lock
from shoal.report import read_metrics
from shoal.train import ClientSampler, TrainConfig, train


def test_a_locked_folder_is_refused_naming_the_holder_and_freed_after(tmp_path: Path) -> None:
    held = pytest.raises(FolderInUse, match=r"run is in use by another shoal process \(pid \d+\)")
    # flock conflicts between two opens of one file even within one process.
    with run_lock(tmp_path / "run"), held, run_lock(tmp_path / "run"):
        pass
    with run_lock(tmp_path / "run"):  # released on exit
        pass


def test_a_run_into_a_folder_in_use_ends_in_one_line_and_leaves_it_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Two runs into one folder (started at once, or a resume of a run still going) mixed
    # their metrics rows and files, and the survivor exited 0.
    cfg = write_config(tmp_path, rounds=1)
    assert shoal("run", cfg, "--out", "r", "--quiet") == 0
    rows = read_metrics(tmp_path / "r")
    capsys.readouterr()
    with run_lock(tmp_path / "r"):  # another process's run going on there
        assert shoal("run", "--resume", "r", "--set", "rounds=2", "--quiet") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "r is in use by another shoal process" in err, err
        assert shoal("run", cfg, "--out", "fresh", "--quiet") == 0  # another folder is free
    assert read_metrics(tmp_path / "r") == rows
    assert "rounds = 1" in (tmp_path / "r" / "config.toml").read_text()


def test_a_launch_into_a_folder_in_use_is_refused_before_any_worker_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `shoal launch` took no lock: a second launch or a resume wrote into the job's folder.
    import shoal.cli.launch as launch

    def no_workers(*args: object, **kwargs: object) -> None:
        raise AssertionError("torchrun started")

    monkeypatch.setattr(launch.subprocess, "Popen", no_workers)
    cfg = write_config(tmp_path, rounds=1)
    with run_lock(tmp_path / "job"):  # a launch (or run) going on there
        assert shoal("launch", cfg, "--out", "job", "--quiet") == 1
    assert "job is in use by another shoal process" in capsys.readouterr().err


def test_without_out_a_folder_another_run_holds_is_passed_over(tmp_path: Path) -> None:
    # An empty folder, but a run has just claimed it.
    with run_lock(Path("runs") / "small"), claimed_out(None, "small") as out:
        assert out == Path("runs") / "small-2"
    # A lock file left by a run that ended before writing anything is not a run.
    with claimed_out(None, "small") as out:
        assert out == Path("runs") / "small"


def test_a_checkpoint_of_another_kind_of_run_is_refused_in_one_line(tmp_path: Path) -> None:
    # A config edited from data-parallel to federated (or back) over a run folder: a KeyError
    # ('params', 'params_WD') from deep inside the resume before.
    for saved, holds, words in [
        (
            {"params_WD": torch.zeros(2, 3)},
            "params",
            "is a data-parallel run's checkpoint, not a federated run's",
        ),
        (
            {"params": torch.zeros(3)},
            "params_WD",
            "is a federated run's checkpoint, not a data-parallel",
        ),
        ({"centre_D": torch.zeros(3)}, "params", "an asynchronous EASGD server's checkpoint"),
        ({"weights": torch.zeros(3)}, "params", "is not a shoal checkpoint"),
    ]:
        atomic_save(saved, tmp_path / "checkpoint.pt")
        with pytest.raises(ValueError, match=words):
            load_checkpoint(tmp_path / "checkpoint.pt", "cpu", holds)
    data = tiny_data()
    config = TrainConfig(rounds=1, sampler=ClientSampler(2), progress=False)
    with pytest.raises(ValueError, match="data-parallel run's checkpoint, not a federated"):
        atomic_save({"params_WD": torch.zeros(2, 3)}, tmp_path / "checkpoint.pt")
        train(tiny_model(), data, unequal_clients(len(data.train), 4), fedavg(0.1), config,
              out_dir=tmp_path, resume=True)  # fmt: skip


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lustre mounted without flock, some FUSE mounts: ENOSYS failed every run in one line.
    import errno
    import fcntl

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    warned = pytest.warns(UserWarning, match="cannot lock the run folder .*not implemented")
    with warned, run_lock(tmp_path / "run"):
        (tmp_path / "run" / "x").write_text("")
    assert (tmp_path / "run" / "x").is_file()


def test_the_summary_lists_the_runs_files_not_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The data-parallel summary lists the folder's files (the federated one names its own).
    text = SMALL.split("[client]")[0].replace('"fedavg"', '"dpsgd"')
    (tmp_path / "dp.toml").write_text(
        text.replace("rounds = {rounds}\n", "") + "[parallel]\nsteps = 2\n"
    )
    assert shoal("run", tmp_path / "dp.toml", "--out", "r", "--quiet") == 0
    listing = next(line for line in capsys.readouterr().out.splitlines() if "files in" in line)
    assert ".shoal.lock" not in listing
