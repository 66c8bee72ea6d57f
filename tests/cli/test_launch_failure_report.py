"""``shoal launch``'s last line names the worker that failed, read from torchrun's report
(replayed here with ``subprocess.Popen`` replaced).

1. The cause, not a victim. When a worker exits with an error, torchrun's agent stops the
   others with SIGTERM and lists them with exit code -15. A signal is preferred as the cause
   only when the agent did not send it (a SIGKILLed worker breaks its peers' collectives):
   ``REPORT_SIGTERM`` is torchrun 2.13's stderr (paths, times, host and trailing spaces
   aside) from a two-process job whose rank 1 called ``sys.exit(3)`` while rank 0 was still
   working. In the same race, a config refused by the faster worker (exit code 2) is still a
   refused config when the agent stops the slower one before it refuses (``REPORT_REFUSED``).
2. The global rank. The agent's log line ``failed (exitcode: N) local_rank: L`` comes first;
   the report's ``rank : R`` is the global rank: on the second machine of a job, local rank 0
   is global rank 2 (``REPORT_NODE1``, torchrun's templates filled in for that machine).
"""

from __future__ import annotations

import io
from typing import Any

from cli_helpers import shoal, write_config

REPORT_SIGTERM = """\
W1122 22:06:45.236000 17817 torch/distributed/elastic/multiprocessing/api.py:1028] Sending \
process 17826 closing signal SIGTERM
E1122 22:06:45.243000 17817 torch/distributed/elastic/multiprocessing/api.py:1002] failed \
(exitcode: 3) local_rank: 1 (pid: 17827) of binary: python
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1028, in main
    run(args)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
shoal FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2025-11-22_22:06:45
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 17826)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 17826
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-11-22_22:06:45
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 3 (pid: 17827)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""

REFUSED = (
    "shoal: error: partition.num_clients = 3: a sync_sgd job with 2 processes has 2 workers; "
    "give the partition one client per worker\n"
)
REPORT_REFUSED = REFUSED + REPORT_SIGTERM.replace("exitcode: 3", "exitcode: 2").replace(
    "exitcode  : 3", "exitcode  : 2"
)

REPORT_NODE1 = """\
E1122 22:06:45.243000 17817 torch/distributed/elastic/multiprocessing/api.py:1002] failed \
(exitcode: 1) local_rank: 0 (pid: 200) of binary: python
============================================================
shoal FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2025-11-22_22:06:45
  host      : node1
  rank      : 3 (local_rank: 1)
  exitcode  : 1 (pid: 201)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-11-22_22:06:45
  host      : node1
  rank      : 2 (local_rank: 0)
  exitcode  : 1 (pid: 200)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


class FakeTorchrun:
    """``subprocess.Popen`` replaced: torchrun's stderr replayed, exit code 1."""

    def __init__(self, stderr: str) -> None:
        self.text = stderr

    def __call__(self, cmd: list[str], **kw: Any) -> FakeTorchrun:
        self.stderr = io.StringIO(self.text)
        return self

    def wait(self) -> int:
        return 1


def _last_line(tmp_path, capsys, monkeypatch, report: str, *options: str) -> str:
    monkeypatch.setattr("shoal.cli.launch.subprocess.Popen", FakeTorchrun(report))
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
    monkeypatch.setattr("shoal.cli.launch.subprocess.Popen", FakeTorchrun(REPORT_REFUSED))
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
