"""``shoal run``: the files it writes, exact resume after SIGKILL, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, shoal, write_config

from shoal.cli.registry import CATALOG
from shoal.config import load, resolve
from shoal.report import read_metrics

ROW_KEYS = {
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "uplink_bytes",
    "downlink_bytes",
    "wall_seconds",
    "cum_uplink_bytes",
}


def test_run_writes_its_files(two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    run = two_runs[0]
    for name in ("config.toml", "metrics.jsonl", "summary.json", "checkpoint.pt", "model.pt"):
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(r) >= ROW_KEYS
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_accuracy"] == rows[-1]["test_accuracy"]


def test_resolved_config_reloads_to_the_same_config(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    assert shoal("run", cfg_path, "--out", "r", "--quiet", "--set", "partition.alpha=2") == 0
    written = resolve(load(tmp_path / "r" / "config.toml"), CATALOG)
    given = resolve(load(cfg_path) | {}, CATALOG)
    assert written["partition.alpha"] == 2.0
    assert written == given.replace("partition.alpha", 2.0)
    text = (tmp_path / "r" / "config.toml").read_text()
    assert "min_size = 1" in text and "memory_budget_mb" in text  # defaults written out


def test_default_run_folder_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg_path = write_config(tmp_path, rounds=1)
    assert shoal("run", cfg_path, "--quiet") == 0
    assert shoal("run", cfg_path, "--quiet") == 0
    assert (tmp_path / "runs" / "small" / "metrics.jsonl").is_file()
    assert (tmp_path / "runs" / "small-2" / "metrics.jsonl").is_file()
    out = capsys.readouterr().out
    assert "final test accuracy" in out and "runs" in out
    # An explicit --out that already holds a run is refused, not overwritten.
    assert shoal("run", cfg_path, "--out", "runs/small", "--quiet") == 2


def _metrics_rows(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


# Simulated time with per-client spread and stragglers, and a compressed downlink (whose copy
# of the model is checkpointed): a resumed run must match these too.
NETWORK = [
    f"--set={a}"
    for a in (
        "network.profile=4g",
        "network.seconds_per_sample=0.001",
        "network.speed_sigma=0.5",
        "network.straggler_probability=0.2",
        "compression.downlink=qsgd",
        "compression.downlink_levels=4",
    )
]


def _started(cfg_path: Path, out: Path, rows: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``shoal run`` in a process of its own, once it has written ``rows`` metrics rows."""
    run = [sys.executable, "-m", "shoal", "run", str(cfg_path), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*run, *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while _metrics_rows(out / "metrics.jsonl") < rows:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run never wrote metrics"
            time.sleep(0.005)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    rounds = 40
    cfg_path = write_config(tmp_path, rounds=rounds, epochs=3)
    killed = tmp_path / "killed"
    proc = _started(cfg_path, killed, 3, tuple(NETWORK))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # and its pipe closed (no leak)
    assert proc.returncode == -signal.SIGKILL
    done = _metrics_rows(killed / "metrics.jsonl")
    assert 3 <= done < rounds, "killed too late to test resuming"
    assert not (killed / "summary.json").exists()

    assert shoal("run", "--resume", killed, "--quiet") == 0
    assert shoal("run", cfg_path, "--out", tmp_path / "straight", "--quiet", *NETWORK) == 0

    a = torch.load(killed / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a, rows_b = read_metrics(killed), read_metrics(tmp_path / "straight")
    assert len(rows_a) == len(rows_b) == rounds
    assert rows_a[-1]["sim_seconds"] > 0
    for ra, rb in zip(rows_a, rows_b):
        ra.pop("wall_seconds")
        rb.pop("wall_seconds")
        assert ra == rb


DROP = ["--set", "sampling.drop_stragglers=true"]
ERRORS = [
    (["--set", "sampling.clients_per_rund=5"], "sampling.clients_per_rund"),
    (["--set", "rounds=many"], "rounds"),
    (["--set", "partition.alpha=0"], "partition.alpha"),
    (["--set", "partition.alpha=-0.5"], "partition.alpha"),
    (["--set", "sampling.clients_per_round=21"], "sampling.clients_per_round"),
    (["--set", "data.dir=missing/folder"], "data.dir"),
    (["--set", "algorithm.name=fedsdg"], "algorithm.name"),
    (["--set", "model.name=transformer"], "model.name"),
    (["--set", "data.name=imagenet"], "data.name"),
    (["--set", "data.name=mnist"], "shoal data fetch mnist"),  # not in the (empty) cache
    (["--set", "partition.scheme=natural", "--set", "partition.alpha=0.1"], "partition.alpha"),
    (["--set", "model.name=cnn", "--set", "model.hidden=[3]"], "model.hidden"),
    (["--set", "algorithm.name=fedprox", "--set", "algorithm.mu=-1"], "algorithm.mu"),
    (["--set", "model.name=char_lstm", "--set", "model.hidden=8"], "model.name"),
    # The file's alpha belongs to the scheme --set replaced: the message says how to drop it.
    (["--set", "partition.scheme=shards"], "small.toml: --unset partition.alpha drops it"),
    (["--unset", "partition.alfa"], "--unset 'partition.alfa': the config sets no such key"),
    # In range, but too few training images for scikit-learn's stratified split (the message
    # said "cannot read None").
    (["--set", "data.test_fraction=0.999"], "data.test_fraction = 0.999): The train_size"),
    # Fixed local steps have no epochs to draw or to cut short (exit code 1 before).
    (["--set", "client.steps=3", "--set", "client.min_epochs=1"], "client.min_epochs = 1"),
    (["--set", "client.steps=3", "--set", "sampling.straggler_fraction=0.5"], "fraction = 0.5"),
    # Fixed steps replace epochs: the epochs were ignored without a word.
    (["--set", "client.steps=3", "--set", "client.epochs=2"], "client.epochs = 2"),
    # Every sampled client dropped in every round: constant accuracy and exit code 0.
    (["--set", "sampling.straggler_fraction=1", *DROP], "drops all 5 clients"),
    (["--set", "sampling.straggler_fraction=0.9", *DROP], "round(5 x (1 - 0.9)) = 0"),
]


@pytest.mark.parametrize(("args", "key"), ERRORS)
def test_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], key: str
) -> None:
    cfg_path = write_config(tmp_path)
    assert shoal("run", cfg_path, "--out", "r", "--quiet", *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shoal: error:"), err
    assert key in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "config.toml").exists()


def test_sampling_the_algorithm_refuses_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # train() refuses it too, but only in each process: under `shoal launch` that was every
    # worker failing with exit code 1 and torchrun's failure report, not one config line.
    cfg_path = write_config(tmp_path, rounds=1)
    scaffold = ["--set", "algorithm.name=scaffold"]
    replace = ["--set", "sampling.replace=true"]
    assert shoal("run", cfg_path, "--out", "r", "--quiet", *scaffold, *replace) == 2
    err = capsys.readouterr().err
    assert_one_line_error(tmp_path, err, ["sampling.replace = true", "without replacement"])
    assert shoal("run", cfg_path, "--out", "r", "--quiet", *scaffold) == 0  # the same --out


def test_a_diverged_run_stops_in_one_line_naming_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg_path = write_config(tmp_path, rounds=5)
    assert shoal("run", cfg_path, "--out", "r", "--quiet", "--set", "algorithm.lr=1e30") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN/inf" in err, err
    # Diverged in round 1: it said it kept "the run's rows up to here" of a run with none.
    rows = read_metrics(tmp_path / "r")
    kept = "r keeps the run's rows up to here" if rows else "r has no metrics row yet"
    assert kept in err, err
    assert len(rows) < 5  # stopped, not trained NaN to the end


def test_unset_drops_a_key_of_the_file(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path, rounds=1)
    args = ["--set", "partition.scheme=shards", "--unset", "partition.alpha", "--quiet"]
    assert shoal("run", cfg_path, "--out", tmp_path / "r", *args) == 0
    cfg = resolve(load(tmp_path / "r" / "config.toml"), CATALOG)
    assert cfg["partition.scheme"] == "shards" and "alpha" not in cfg.options("partition")


def test_mistake_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[partition]\nscheme = "dirichlet"\nalpha = -1\n')
    proc = subprocess.run(
        [sys.executable, "-m", "shoal", "run", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "partition.alpha" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_from_another_folder_says_where_to_resume_from(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    # As `shoal run` wrote it, started in a folder where "data/mnist" existed.
    (run / "config.toml").write_text('[data]\nname = "mnist"\ndir = "data/mnist"\n')
    assert shoal("run", "--resume", run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resume from the folder the run was started in" in err
    # An absolute path is missing wherever one resumes from: no such advice.
    (run / "config.toml").write_text(f'[data]\nname = "mnist"\ndir = "{tmp_path / "gone"}"\n')
    assert shoal("run", "--resume", run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err and "resume from" not in err


def test_resume_with_more_rounds_trains_on_as_one_longer_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = write_config(tmp_path, rounds=2)
    assert shoal("run", cfg, "--out", tmp_path / "short", "--quiet") == 0
    assert shoal("run", "--resume", tmp_path / "short", "--set", "rounds=4", "--quiet") == 0
    assert shoal("run", cfg, "--set", "rounds=4", "--out", tmp_path / "long", "--quiet") == 0
    a = torch.load(tmp_path / "short" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "long" / "model.pt", weights_only=True)
    for k in b:
        assert torch.equal(a[k], b[k]), k
    rows_a, rows_b = read_metrics(tmp_path / "short"), read_metrics(tmp_path / "long")
    for ra, rb in zip(rows_a, rows_b, strict=True):  # every round is evaluated here
        ra.pop("wall_seconds")
        rb.pop("wall_seconds")
        assert ra == rb
    # The run folder now says 4, so a later resume goes on from there.
    assert resolve(load(tmp_path / "short" / "config.toml"), CATALOG)["rounds"] == 4
    capsys.readouterr()
    for bad, words in (
        (["rounds=3"], "can only train further"),
        (["parallel.steps=9"], "this run's length is rounds"),
        (["seed=1"], "no --set but rounds=N"),
    ):
        sets = [arg for a in bad for arg in ("--set", a)]
        assert shoal("run", "--resume", tmp_path / "short", *sets) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["run", "{cfg}", "--out", "a_file"], "--out a_file: a file, not a folder"),
        (["run", "{cfg}", "--out", ""], "--out: an empty path"),
        (["demo", "--out", "a_file"], "--out a_file: a file, not a folder"),
        (["plot", "{run}", "--out", "a_file"], "--out a_file: a file, not a folder"),
        (["robustness", "--data", "digits", "--out", "a_file"], "a file, not a folder"),
        (["probe", "--json", "no/such/folder/p.json"], "cannot write a file there"),
        # An existing folder was "cannot write a file there (no such folder?)".
        (["probe", "--json", "run"], "--json run: a folder, not a file; name a file in it"),
    ],
)
def test_output_paths_are_checked_before_any_work(tmp_path, capsys, command, says):
    """Not `[Errno 17] File exists` at the end (or, for the probe, after its measurement)."""
    (tmp_path / "a_file").write_text("")
    (tmp_path / "run").mkdir()
    cfg = write_config(tmp_path)
    args = [str(a).format(cfg=cfg, run=tmp_path / "run") for a in command]
    assert shoal(*args) == 2
    assert says in capsys.readouterr().err


def test_sigterm_ends_a_run_as_ctrl_c_does_and_it_resumes(tmp_path: Path) -> None:
    # SIGTERM (kill, a scheduler's stop) ended the process at once: no word, exit -15, a
    # temporary file left behind.
    cfg_path = write_config(tmp_path, rounds=40, epochs=3)
    out = tmp_path / "termed"
    proc = _started(cfg_path, out, 2)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert f"continue this run with: shoal run --resume {out}" in text
    assert text.rstrip().endswith("shoal: terminated") and "Traceback" not in text, text
    assert not list(out.glob("*.tmp"))
    assert shoal("run", "--resume", out, "--quiet") == 0
    assert [r["round"] for r in read_metrics(out)] == list(range(1, 41))
