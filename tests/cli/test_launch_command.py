"""``shoal launch`` around torchrun, with torchrun replaced by a recorder.

The end-to-end tests start real torchrun jobs on one machine with the default options; these
check the rest without starting anything: options that must reach torchrun or the workers
(``--node-rank 0``, ``--quiet``, the user's ``OMP_NUM_THREADS``), options that must be
refused before anything starts, and the last line written from a failure report (whose first
observed failure is a race, so the end-to-end test cannot pin it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import shoal, write_config

from shoal.cli import build_parser
from shoal.cli.launch import torchrun_command


class FakeTorchrun:
    """Stands in for ``subprocess.Popen``: records the command and environment it was given
    and replays a stderr text and an exit code."""

    def __init__(self, stderr: str = "", rc: int = 0) -> None:
        self.text, self.rc = stderr, rc
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, cmd: list[str], **kw: Any) -> FakeTorchrun:
        self.calls.append((cmd, kw["env"]))
        self.stderr = io.StringIO(self.text)
        return self

    def wait(self) -> int:
        return self.rc


@pytest.fixture
def torchrun(monkeypatch: pytest.MonkeyPatch) -> FakeTorchrun:
    fake = FakeTorchrun()
    monkeypatch.setattr("shoal.cli.launch.subprocess.Popen", fake)
    return fake


def _command(*options: str) -> list[str]:
    args = build_parser().parse_args(["launch", "c.toml", *options])
    return torchrun_command(args, Path("out"))


def test_machine_zero_and_quiet_reach_torchrun_and_the_workers():
    cmd = _command("--nnodes", "2", "--rdzv-endpoint", "h:1", "--node-rank", "0", "--quiet")
    assert "--node-rank=0" in cmd  # rank 0 is a rank, not "unset"
    assert cmd[cmd.index("run") :][-1] == "--quiet"
    assert "--quiet" not in _command()


def test_one_machine_written_as_a_range_needs_no_rendezvous_endpoint():
    cmd = _command("--nnodes", "1:1")
    assert "--nnodes=1:1" in cmd
    assert any(c.startswith("--rdzv-endpoint=127.0.0.1:") for c in cmd)  # a local one


@pytest.mark.parametrize(
    "bad",
    [
        ["--nnodes", "1:2:3", "--rdzv-endpoint", "127.0.0.1:1", "--out", "o"],
        ["--max-restarts", "-1", "--out", "o"],
        ["--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:1"],  # no --out every machine reaches
    ],
)
def test_bad_options_are_refused_before_torchrun_starts(tmp_path, capsys, torchrun, bad):
    assert shoal("launch", write_config(tmp_path), *bad) == 2
    assert torchrun.calls == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shoal: error:"), err


def test_the_users_thread_count_reaches_the_workers(tmp_path, monkeypatch, torchrun):
    cfg = write_config(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert shoal("launch", cfg, "--out", tmp_path / "a") == 0
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert shoal("launch", cfg, "--out", tmp_path / "b") == 0
    assert [env["OMP_NUM_THREADS"] for _, env in torchrun.calls] == ["3", "1"]


def _failure(rank: int, local_rank: int, code: int, signal: str = "") -> str:
    """One entry of torchrun's failure table (its ``_FAILURE_FORMAT_TEMPLATE``)."""
    return (
        f"[0]:\n  time      : 2025-11-22_12:00:00\n  host      : node0\n"
        f"  rank      : {rank} (local_rank: {local_rank})\n"
        f"  exitcode  : {code} (pid: {100 + rank}) {signal}\n  error_file: <N/A>\n"
        "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html\n"
    )


def _report(local_rank: int, code: int, failures: list[str], root: str) -> str:
    """torchrun's stderr when a worker fails: the agent's log line for the failure it saw
    (``local_rank``, ``code``), its traceback, then the failure table."""
    return (
        "E1122 12:00:00.000000 1 torch/distributed/elastic/multiprocessing/api.py:1002] failed "
        f"(exitcode: {code}) local_rank: {local_rank} (pid: 100) of binary: python\n"
        "Traceback (most recent call last):\n"
        '  File "torch/distributed/run.py", line 1028, in main\n'
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "shoal FAILED\n"
        "------------------------------------------------------------\n"
        "Failures:\n"
        + "".join(failures)
        + "------------------------------------------------------------\n"
        "Root Cause (first observed failure):\n"
        + root
        + "============================================================\n"
    )


# Rank 1 was SIGKILLed; the agent happened to observe rank 0's broken collective first.
KILLED_REPORT = _report(0, 1, [_failure(1, 1, -9, "(SIGKILL)")], _failure(0, 0, 1))


def test_a_killed_worker_is_named_as_the_cause(tmp_path, capsys, monkeypatch):
    fake = FakeTorchrun(KILLED_REPORT, rc=1)
    monkeypatch.setattr("shoal.cli.launch.subprocess.Popen", fake)
    assert shoal("launch", write_config(tmp_path), "--out", tmp_path / "o") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "shoal: error: rank 1 failed with exit code -9; the job stopped; "
        "--max-restarts K restarts from the checkpoint"
    )


def test_a_torchrun_that_fails_without_a_report_is_not_a_refused_config(
    tmp_path, capsys, monkeypatch
):
    text = "Traceback (most recent call last):\nValueError: bad rendezvous endpoint\n"
    monkeypatch.setattr("shoal.cli.launch.subprocess.Popen", FakeTorchrun(text, rc=1))
    cfg = write_config(tmp_path)
    assert shoal("launch", cfg, "--out", tmp_path / "o", "--max-restarts", "2") == 1
    err = capsys.readouterr().err
    assert "ValueError: bad rendezvous endpoint" in err
    assert err.strip().splitlines()[-1] == "shoal: error: a worker failed; the job stopped"


# ``shoal launch``'s last line names the worker that failed, read from torchrun's report.
#
# 1. The cause, not a victim. When a worker exits with an error, torchrun's agent stops the
#    others with SIGTERM and lists them with exit code -15. A signal is preferred as the cause
#    only when the agent did not send it (a SIGKILLed worker breaks its peers' collectives):
#    ``REPORT_SIGTERM`` has the shape of torchrun 2.13's stderr from a two-process job whose
#    rank 1 called ``sys.exit(3)`` while rank 0 was still working. In the same race, a config
#    refused by the faster worker (exit code 2) is still a refused config when the agent stops
#    the slower one before it refuses (``REPORT_REFUSED``).
# 2. The global rank. The agent's log line ``failed (exitcode: N) local_rank: L`` comes first;
#    the report's ``rank : R`` is the global rank: on the second machine of a job, local rank 0
#    is global rank 2 (``REPORT_NODE1``).

SIGTERM_SENT = "W1122 12:00:00.000000 1 torch/distributed/elastic/multiprocessing/api.py:1028] "
SIGTERM_SENT += "Sending process 100 closing signal SIGTERM\n"
STOPPED = _failure(0, 0, -15, "(SIGTERM)")
REPORT_SIGTERM = SIGTERM_SENT + _report(1, 3, [STOPPED], _failure(1, 1, 3))
REFUSED = (
    "shoal: error: partition.num_clients = 3: a sync_sgd job with 2 processes has 2 workers; "
    "give the partition one client per worker\n"
)
REPORT_REFUSED = REFUSED + SIGTERM_SENT + _report(1, 2, [STOPPED], _failure(1, 1, 2))
REPORT_NODE1 = _report(0, 1, [_failure(3, 1, 1)], _failure(2, 0, 1))


def _last_line(tmp_path, capsys, monkeypatch, report: str, *options: str) -> str:
    monkeypatch.setattr("shoal.cli.launch.subprocess.Popen", FakeTorchrun(report, rc=1))
    cfg = write_config(tmp_path)
    assert shoal("launch", cfg, "--out", tmp_path / "o", "--max-restarts", "1", *options) == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_the_worker_that_failed_is_named_not_the_one_the_agent_stopped(
    tmp_path, capsys, monkeypatch
):
    last = _last_line(tmp_path, capsys, monkeypatch, REPORT_SIGTERM)
    assert last == "shoal: error: rank 1 failed with exit code 3; the job stopped"


def test_a_config_refused_by_the_first_worker_is_still_a_refused_config(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("shoal.cli.launch.subprocess.Popen", FakeTorchrun(REPORT_REFUSED, rc=1))
    code = shoal("launch", write_config(tmp_path), "--out", tmp_path / "o")
    err = capsys.readouterr().err
    assert err.count(REFUSED) == 1
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "shoal: error: the workers refused the config (the error above)"
    )


def test_the_failed_worker_is_named_by_its_global_rank(tmp_path, capsys, monkeypatch):
    options = ("--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "127.0.0.1:1")
    last = _last_line(tmp_path, capsys, monkeypatch, REPORT_NODE1, *options)
    assert last == "shoal: error: rank 2 failed with exit code 1; the job stopped"


def test_a_launched_run_whose_machine_lacks_a_gpu_per_process_is_a_config_error(monkeypatch):
    # device = "cuda" on 4 processes and 1 GPU: NCCL would fail at its first collective
    # ("Duplicate GPU detected"); the worker refuses the config instead, before any group.
    from shoal.cli.build import build
    from shoal.cli.parallel import make_comm
    from shoal.cli.registry import CATALOG
    from shoal.config import ConfigError, resolve

    for name, value in dict(RANK="2", WORLD_SIZE="4", LOCAL_WORLD_SIZE="4").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = resolve({"device": "cuda"}, CATALOG)
    refused = r'device = "cuda": .*NCCL needs one GPU per process'
    with pytest.raises(ConfigError, match=refused):
        make_comm(cfg, 4)  # data-parallel: the DistComm's group
    with pytest.raises(ConfigError, match=refused):
        build(cfg, progress=False)  # federated: DistRuntime's group, joined while building


# 3. A worker whose collective broke exits with PEER_FAILURE_EXIT: it is the survivor of
#    another's failure, not its cause. Rank 1 raised (exit 1) while rank 0, observed first,
#    lost its all_reduce (``REPORT_RAISED``): the last line named rank 0. Rank 1 stalled until
#    rank 0 timed out, and the agent then stopped rank 1 (``REPORT_STALLED``).
BROKE = _failure(0, 0, 69)
REPORT_RAISED = _report(0, 69, [_failure(1, 1, 1)], BROKE)
REPORT_STALLED = SIGTERM_SENT + _report(0, 69, [_failure(1, 1, -15, "(SIGTERM)")], BROKE)


def test_a_worker_whose_collective_broke_is_not_blamed(tmp_path, capsys, monkeypatch):
    last = _last_line(tmp_path, capsys, monkeypatch, REPORT_RAISED)
    assert last == "shoal: error: rank 1 failed with exit code 1; the job stopped"


def test_a_worker_that_stalled_is_named_when_its_peer_timed_out(tmp_path, capsys, monkeypatch):
    last = _last_line(tmp_path, capsys, monkeypatch, REPORT_STALLED)
    assert last == (
        "shoal: error: rank 1 failed to respond (its peers timed out waiting; the agent stopped "
        "it); the job stopped"
    )


@pytest.mark.parametrize("peer", [False, True])
def test_a_workers_error_names_its_rank_and_a_broken_collective_has_its_exit_code(
    tmp_path, capsys, monkeypatch, peer
):
    from shoal.cli import PEER_FAILURE_EXIT
    from shoal.runtime.procgroup import PeerFailure

    def fail(args: Any) -> int:
        if peer:
            raise PeerFailure("rank 1: communication failed (Connection closed by peer)")
        raise ValueError("client 7 boom")

    monkeypatch.setattr("shoal.cli.run.cmd_run", fail)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = shoal("run", write_config(tmp_path))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    if peer:  # its message names the rank already
        assert (code, line) == (PEER_FAILURE_EXIT, "shoal: error: rank 1: communication failed "
                                "(Connection closed by peer)")  # fmt: skip
    else:  # "client 7 boom" did not say which worker's
        assert (code, line) == (1, "shoal: error: rank 1: client 7 boom")
