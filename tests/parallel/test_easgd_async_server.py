"""Asynchronous EASGD's server rank, on two processes: one worker and the server.

With a single worker nothing is asynchronous: the worker's exchanges reach the server in
order, and each one is the synchronous update of one worker (``d = alpha (x - centre)``, the
worker takes ``-d``, the centre ``+d``). So the run must give the numbers of synchronous EASGD
on ``SimComm(1)``: the same final centre, and rows at the same steps with the same training
loss (a row at step ``s`` is due at the exchange of step ``s``, whose header carries the
losses of the steps before it) and samples. The bytes are the messages' wire sizes, counted by
hand. The existing straggler test runs three workers, where only the last row is determined.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shoal.compress.wire import payload_nbytes
from shoal.functional import ParamSpec
from shoal.parallel import SimComm, easgd, train_parallel

from .cases import config, tiny_data, tiny_model

SHARD = np.arange(10)  # smaller than a batch (16): 10 samples a step
TAU = 2  # exchanges at steps 0, 2, 4, ...; each header reports two steps' losses


def _train(comm: Any, steps: int, eval_every: int, **kw: Any) -> Any:
    """EASGD (moving rate 0.9 / 1 worker) on the one small shard."""
    cfg = config(steps=steps, eval_every=eval_every)
    return train_parallel(tiny_model(), tiny_data(), [SHARD], easgd(0.2, TAU), cfg, comm, **kw)


def _async_runs(out_dir: str) -> dict[str, Any]:
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env

    ctx = init_from_env()
    run = _train(DistComm(ctx), 6, 2)
    got = {"rows": run.metrics, "params": run.params}
    # Stopped after 4 steps, resumed to 8 from every rank's checkpoint.
    _train(DistComm(ctx), 4, 100, out_dir=out_dir)
    run = _train(DistComm(ctx), 8, 100, out_dir=out_dir, resume=True)
    got["resumed_rows"], got["resumed_params"] = run.metrics, run.params
    return got


@pytest.fixture(scope="module")
def got(tmp_path_factory) -> list[dict[str, Any]]:
    from shoal.runtime.spawn import spawn_local

    out = tmp_path_factory.mktemp("async")
    return spawn_local(_async_runs, 2, str(out), timeout_s=120)


def _sync(steps: int, eval_every: int) -> Any:
    """The reference: synchronous EASGD of one worker, in one process."""
    return _train(SimComm(1), steps, eval_every)


def _message_bytes() -> tuple[int, int]:
    """One exchange (header and model up, centre and stop flag down) and a sign-off header."""
    d = ParamSpec.of(tiny_model()).num_params
    header = torch.zeros(4, dtype=torch.float64)
    up = payload_nbytes({"header": header, "params": torch.zeros(d)})
    down = payload_nbytes({"params": torch.zeros(d), "stop": torch.zeros(1)})
    return up + down, payload_nbytes({"header": header})


def test_one_worker_async_rows_are_synchronous_easgds(got):
    server, worker = got[1], got[0]
    assert worker["rows"] == []  # the server rank reports
    rows, ref = server["rows"], _sync(6, 2).metrics
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == [2, 4, 6]
    for r, s in zip(rows, ref):
        assert r["samples"] == s["samples"] == 10 * r["step"]  # the shard, not the batch size
        assert math.isclose(r["train_loss"], s["train_loss"], rel_tol=1e-9), r["step"]
    # The last row scores the final centre, which is synchronous EASGD's.
    assert math.isclose(rows[-1]["test_loss"], ref[-1]["test_loss"], abs_tol=1e-6)
    assert rows[-1]["test_accuracy"] == ref[-1]["test_accuracy"]


def test_one_worker_async_ends_with_synchronous_easgds_centre(got):
    ref = _sync(6, 2).params
    for rank in range(2):
        torch.testing.assert_close(got[rank]["params"], ref, rtol=0, atol=1e-6)


def test_the_server_counts_every_message_exactly(got):
    exchange, sign_off = _message_bytes()
    # Exchanges at steps 0 and 2 before the row of step 2, then step 4; the sign-off last.
    want = [2 * exchange, 3 * exchange, 3 * exchange + sign_off]
    assert [r["bytes_sent"] for r in got[1]["rows"]] == want


def test_a_resumed_async_run_continues_its_centre_and_its_byte_count(got):
    rows = got[1]["resumed_rows"]
    assert [r["step"] for r in rows] == [4, 8]
    assert rows[-1]["samples"] == 80
    # Four exchanges (steps 0, 2, then 4, 6) and each run's sign-off: all really sent.
    exchange, sign_off = _message_bytes()
    assert [r["bytes_sent"] for r in rows] == [2 * exchange + sign_off, 4 * exchange + 2 * sign_off]
    ref = _sync(8, 100).params
    for rank in range(2):
        torch.testing.assert_close(got[rank]["resumed_params"], ref, rtol=0, atol=1e-6)


def test_checkpoint_name_is_per_rank_only_in_distributed_runs(tmp_path: Path):
    """A simulated run (no rank) writes ``checkpoint.pt``, as the CLI's resume expects."""
    _train(SimComm(1), 2, 2, out_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file()
    assert not list(tmp_path.glob("checkpoint.rank*.pt"))
