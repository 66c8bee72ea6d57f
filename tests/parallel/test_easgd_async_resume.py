"""A resumed asynchronous EASGD run reports each step's loss once, and its processes' byte
counts still add up to the server's.

A worker saves its checkpoint inside the step loop, with the losses it has not reported yet
(``loss_sum``/``loss_steps`` of the steps since its last exchange); ``EASGD.finish`` then
reports them in its sign-off. The checkpoint is saved again after the sign-off, so a run
resumed to train further does not report them a second time, and its ``bytes_sent`` includes
the sign-off. With one worker the run is deterministic and equals synchronous EASGD on
``SimComm(1)``, whose row at step 8 averages the losses of steps 4-7.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from shoal.parallel import SimComm, easgd, train_parallel

from .cases import config, tiny_data, tiny_model

SHARD = np.arange(10)


def _train(comm: Any, steps: int, **kw: Any) -> Any:
    cfg = config(steps=steps, eval_every=4)
    return train_parallel(tiny_model(), tiny_data(), [SHARD], easgd(0.2, 2), cfg, comm, **kw)


def _stop_and_resume(out_dir: str) -> dict[str, Any]:
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env

    ctx = init_from_env()
    _train(DistComm(ctx), 4, out_dir=out_dir)
    comm = DistComm(ctx)
    run = _train(comm, 8, out_dir=out_dir, resume=True)
    return {"rows": run.metrics, "bytes": comm.bytes_sent}


@pytest.fixture(scope="module")
def got(tmp_path_factory) -> list[dict[str, Any]]:
    from shoal.runtime.spawn import spawn_local

    out = tmp_path_factory.mktemp("resume")
    return spawn_local(_stop_and_resume, 2, str(out), timeout_s=120)


def test_resumed_async_row_averages_each_steps_loss_once(got):
    rows = got[1]["rows"]
    ref = _train(SimComm(1), 8).metrics
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == [4, 8]
    assert math.isclose(rows[0]["train_loss"], ref[0]["train_loss"], rel_tol=1e-9)
    # Not (l2 + l3 + l4 + ... + l7) / 6: steps 2 and 3 were reported before the resume.
    assert math.isclose(rows[1]["train_loss"], ref[1]["train_loss"], rel_tol=1e-9)


def test_after_a_resume_the_processes_counts_add_up_to_the_servers(got):
    # The worker's count includes its first sign-off.
    assert got[1]["rows"][-1]["bytes_sent"] == got[0]["bytes"] + got[1]["bytes"]
