"""``shoal launch``: torchrun workers with DistRuntime, and what happens when one dies.

A worker is killed with SIGKILL after round 2 (``SHOAL_FAULT_KILL``). With ``--max-restarts``
the elastic agent restarts the workers, they resume from the checkpoint and end with exactly
the model and metrics of an uninterrupted single-process run; without restarts the job stops
within seconds and says which rank died.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from cli_helpers import shoal, write_config

from shoal.cli import PEER_FAILURE_EXIT, build_parser
from shoal.cli.launch import _AgentLog, torchrun_command
from shoal.runtime.spawn import free_port


def _launch(cfg: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_FAULT_KILL": "1:2", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shoal", "launch", "--nproc-per-node", "2", str(cfg)]
    cmd += ["--out", str(out), "--quiet", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("wall_seconds")
    return rows


def test_killed_worker_restarts_and_resumes_exactly(tmp_path):
    cfg = write_config(tmp_path, rounds=4)
    assert shoal("run", cfg, "--out", tmp_path / "single", "--quiet") == 0
    proc = _launch(cfg, tmp_path / "dist", "--max-restarts", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The kill really happened (which failure the agent reports first is a race: the dead
    # rank's -9, or rank 0's broken collective, PEER_FAILURE_EXIT).
    assert "fault injection: rank 1 SIGKILLs itself" in proc.stderr
    assert "exitcode: -9" in proc.stderr or f"exitcode: {PEER_FAILURE_EXIT}" in proc.stderr
    # Equal up to float summation order (ranks add their partial sums in an all-reduce).
    dist, single = _metrics(tmp_path / "dist"), _metrics(tmp_path / "single")
    assert [r["round"] for r in dist] == [1, 2, 3, 4]
    assert dist == [pytest.approx(r, rel=1e-6) for r in single]
    a = torch.load(tmp_path / "dist" / "model.pt")
    b = torch.load(tmp_path / "single" / "model.pt")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_killed_worker_without_restarts_fails_fast_naming_the_rank(tmp_path):
    cfg = write_config(tmp_path, rounds=50)
    started = time.monotonic()
    proc = _launch(cfg, tmp_path / "dist")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("shoal: error: rank 1 failed with exit code -9"), last
    assert time.monotonic() - started < 120  # bounded, not a hang
    # Neither the survivor (its broken collective is one line) nor torchrun's agent prints a
    # traceback; the agent's failure table stays.
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Root Cause" in proc.stderr


AGENT_TRACEBACK = """Traceback (most recent call last):
  File "torch/distributed/run.py", line 1028, in main
    run(args)
    ^^^^^^^^^
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
"""
OTHER_TRACEBACK = """Traceback (most recent call last):
  File "torch/distributed/run.py", line 1028, in main
ValueError: bad rendezvous endpoint
"""


@pytest.mark.parametrize("debug", [False, True])
def test_launch_drops_only_the_agents_own_traceback(capsys, debug):
    log = _AgentLog(verbose=debug)
    text = "W1122 agent log line\n" + AGENT_TRACEBACK + "=====\nrank : 1\n" + OTHER_TRACEBACK
    for line in text.splitlines(keepends=True):
        log.write(line)
    log.flush()
    err = capsys.readouterr().err
    want = text if debug else text.replace(AGENT_TRACEBACK, "")
    assert err == want


REFUSED = "shoal: error: partition.num_clients = 3: a sync_sgd job with 2 processes has 2 ...\n"
REPORT = "E1122 api.py:1002] failed (exitcode: 2) local_rank: 0\n=====\nshoal FAILED\nrank : 0\n"
STOPPING = "W1123 api.py:1028] Sending process 2978 closing signal SIGTERM\n"


@pytest.mark.parametrize(("codes", "refused"), [(["2", "2"], True), (["2", "-9"], False)])
def test_a_refused_config_is_one_line_not_the_agents_report(capsys, codes, refused):
    log = _AgentLog(verbose=False)
    lines = REFUSED + STOPPING + REPORT + AGENT_TRACEBACK + REFUSED
    for line in lines.splitlines(keepends=True):
        log.write(line)
    assert log.finish(codes) == refused
    err = capsys.readouterr().err
    assert err.count(REFUSED) == 1  # every worker says it; shown once
    assert ("shoal FAILED" in err) != refused and "ChildFailedError" not in err
    assert ("closing signal" in err) != refused  # the agent stopping the other worker


def test_launch_of_a_config_the_workers_refuse_ends_in_one_error(tmp_path):
    cfg = tmp_path / "dp.toml"
    cfg.write_text(
        '[data]\nname = "digits"\n[partition]\nscheme = "iid"\nnum_clients = 3\n'
        '[model]\nname = "mlp"\nhidden = [8]\n[algorithm]\nname = "sync_sgd"\nlr = 0.1\n'
    )
    cmd = [sys.executable, "-m", "shoal", "launch", "--nproc-per-node", "2", str(cfg)]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("shoal: error:")]
    assert len(errors) == 2 and "2 processes has 2 workers" in errors[0], proc.stderr
    assert "refused the config" in errors[1]
    assert "Root Cause" not in proc.stderr and "OMP_NUM_THREADS" not in proc.stderr


def test_a_finished_worker_leaves_its_process_group(tmp_path, monkeypatch):
    # A worker that exits with a live gloo group can abort in interpreter teardown (SIGABRT)
    # and fail a finished job (seen in CI on a restarted worker): the run destroys it first.
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port()}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    try:
        assert shoal("run", write_config(tmp_path, rounds=1), "--out", tmp_path / "o") == 0
        assert (tmp_path / "o" / "model.pt").is_file()  # it really ran as a worker
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():  # keep a failure here from leaking into other tests
            dist.destroy_process_group()


def test_a_distributed_resume_trains_further_and_refuses_other_settings(tmp_path, monkeypatch):
    """``torchrun -m shoal run --resume DIR --set rounds=N`` (what the CLI tells a launched
    run's user to type) used to ignore every --set and exit 0 without training further."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port()}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    run = tmp_path / "o"
    try:
        assert shoal("run", write_config(tmp_path, rounds=1), "--out", run, "--quiet") == 0
        assert shoal("run", "--resume", run, "--set", "rounds=3", "--quiet") == 0
        assert [r["round"] for r in _metrics(run)] == [1, 2, 3]
        assert shoal("run", "--resume", run, "--set", "seed=99") == 2
        assert shoal("run", "--resume", run, "--set", "rounds=2") == 2  # only further
        # A finished run is left as it is (its model and summary were written again).
        files = {f.name: f.stat().st_mtime_ns for f in run.iterdir()}
        assert shoal("run", "--resume", run, "--quiet") == 0
        assert {f.name: f.stat().st_mtime_ns for f in run.iterdir()} == files
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_distributed_run_into_a_run_folder_is_refused(tmp_path, monkeypatch, capsys):
    """``torchrun -m shoal run CONFIG --out DIR`` started the run in DIR over (files replaced,
    exit 0), where ``shoal run`` and ``shoal launch`` refuse; a restarted job continues."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port()}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    run, cfg = tmp_path / "o", write_config(tmp_path, rounds=1)
    try:
        assert shoal("run", cfg, "--out", run, "--quiet") == 0
        metrics = (run / "metrics.jsonl").read_text()
        capsys.readouterr()
        assert shoal("run", cfg, "--out", run, "--quiet") == 2
        assert f"continue it with `shoal run --resume {run}`" in capsys.readouterr().err
        assert (run / "metrics.jsonl").read_text() == metrics
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # an elastic restart resumes
        assert shoal("run", cfg, "--out", run, "--quiet") == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("spec", ["abc", "2:1", "0:0"])
def test_a_fault_injection_that_cannot_happen_is_refused(tmp_path, monkeypatch, spec):
    # A restarted job skipped the parse (and ended with exit 0); a rank outside the job or
    # round 0 killed no one, silently.
    monkeypatch.setenv("SHOAL_FAULT_KILL", spec)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert shoal("run", write_config(tmp_path, rounds=1), "--out", tmp_path / "o") == 2


def test_distributed_worker_needs_an_out_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert shoal("run", write_config(tmp_path)) == 2


@pytest.mark.parametrize(
    "bad",
    [
        ["--nproc-per-node", "0"],
        ["--nnodes", "2"],
        ["--nnodes", "abc", "--rdzv-endpoint", "127.0.0.1:1"],  # not torchrun's traceback
        ["--nnodes", "0"],
        ["--nnodes", "3:2"],
        ["--node-rank", "-1"],
    ],
)
def test_launch_usage_errors_are_one_line(tmp_path, capsys, bad):
    assert shoal("launch", write_config(tmp_path), *bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shoal: error:")


def test_launch_passes_the_overrides_to_every_worker(tmp_path):
    args = build_parser().parse_args(
        ["launch", "c.toml", "--unset", "partition.alpha", "--set", "partition.scheme=shards"]
    )
    cmd = torchrun_command(args, tmp_path)
    tail = cmd[cmd.index("run") :]
    assert tail[tail.index("--unset") :][:4] == [
        "--unset", "partition.alpha", "--set", "partition.scheme=shards"
    ]  # fmt: skip


class _Writes:
    """A stderr that records each write call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_workers_error_is_one_write_so_workers_lines_do_not_interleave(
    tmp_path, monkeypatch
) -> None:
    # The workers of a launched job share the launcher's pipe. A line written in two parts
    # (print: the text, then the newline) was glued to another worker's, and the launcher's
    # de-duplication of refused configs missed it. A pipe write under PIPE_BUF is atomic.
    err = _Writes()
    monkeypatch.setattr(sys, "stderr", err)
    assert shoal("run", write_config(tmp_path), "--set", "rounds=-1") == 2
    assert len(err.calls) == 1 and err.calls[0].startswith("shoal: error:"), err.calls
    assert err.calls[0].endswith("\n") and err.calls[0].count("\n") == 1


def test_every_workers_identical_warning_is_shown_once(capsys):
    # Each worker checks the same config and warns of the same setting: one line, not one per
    # process. A warning that differs between workers (it names its rank) is not a repeat.
    same = "shoal: warning: sync_sgd: reduce='all_gather' without a compressor ...\n"
    lines = [same, "rank 0 log\n", same, "shoal: warning: rank 1 only\n", same]
    log = _AgentLog(verbose=False)
    for line in lines:
        log.write(line)
    assert log.finish(["0", "0"]) is False
    err = capsys.readouterr().err
    assert err == same + "rank 0 log\n" + "shoal: warning: rank 1 only\n"
    verbose = _AgentLog(verbose=True)  # SHOAL_DEBUG=1: every worker's line
    for line in lines:
        verbose.write(line)
    verbose.finish(["0", "0"])
    assert capsys.readouterr().err == "".join(lines)


@pytest.mark.parametrize("name", ["fedavg", "sync_sgd"])
def test_a_simulated_runtime_in_a_distributed_job_is_refused(tmp_path, monkeypatch, capsys, name):
    # Each process ran the whole simulation into the same folder: duplicated, interleaved
    # metrics rows (data-parallel), or a checkpoint renamed away by the other (federated).
    for key, value in {"RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    cfg = write_config(tmp_path, rounds=1)
    if name == "sync_sgd":
        cfg = tmp_path / "dp.toml"
        cfg.write_text(
            '[data]\nname = "digits"\n[partition]\nscheme = "iid"\nnum_clients = 2\n'
            '[model]\nname = "mlp"\nhidden = [8]\n[algorithm]\nname = "sync_sgd"\nlr = 0.1\n'
            "[parallel]\nsteps = 2\n"
        )
    args = ["--set", "runtime.kind=sim", "--out", tmp_path / "o", "--quiet"]
    assert shoal("run", cfg, *args) == 2
    assert (
        "runtime.kind = 'sim' runs every client or worker in one process" in capsys.readouterr().err
    )
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_the_same_error_from_every_rank_is_shown_once(capsys):
    # Each worker's error names its rank: the same refusal from two ranks was two lines.
    log = _AgentLog(verbose=False)
    for line in (
        "shoal: error: rank 0: the model returns a tuple\n",
        "shoal: error: rank 1: the model returns a tuple\n",
        "shoal: error: rank 1: client 7 boom\n",
    ):
        log.write(line)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "shoal: error: rank 0: the model returns a tuple",
        "shoal: error: rank 1: client 7 boom",
    ]
