"""An asynchronous EASGD run that stopped at its target accuracy is finished: a resume does
not train on (as a synchronous run's does not, `shoal.parallel.loop`).

Before, each worker's checkpoint held the server's stop flag but its loop started again: one
more step (an exchange with the server, which moved the centre) and one more metrics row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from shoal.parallel import easgd, train_parallel

from .cases import config, tiny_data, tiny_model

SHARD = np.arange(10)


def _train(comm: Any, out_dir: str, resume: bool) -> Any:
    cfg = config(steps=12, eval_every=2, target_accuracy=0.01)  # reached at the first row
    algorithm = easgd(0.2, 2)
    return train_parallel(
        tiny_model(), tiny_data(), [SHARD], algorithm, cfg, comm, out_dir=out_dir, resume=resume
    )


def _stop_then_resume(out_dir: str) -> dict[str, Any]:
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env

    ctx = init_from_env()
    first = _train(DistComm(ctx), out_dir, False)
    again = _train(DistComm(ctx), out_dir, True)
    return {
        "rows": (first.metrics, again.metrics),
        "params": (first.params, again.params),
        "summary": (first.summary, again.summary),
    }


@pytest.fixture(scope="module")
def got(tmp_path_factory) -> list[dict[str, Any]]:
    from shoal.runtime.spawn import spawn_local

    out = tmp_path_factory.mktemp("finished")
    return spawn_local(_stop_then_resume, 2, str(out), timeout_s=120)


def test_the_first_run_stopped_at_its_target(got):
    assert got[1]["summary"][0]["steps_to_target"] == 2
    assert got[1]["rows"][0][-1]["step"] < 12


def test_a_resume_of_a_finished_run_trains_no_further(got):
    server, worker = got[1], got[0]
    assert server["rows"][1] == server["rows"][0]
    assert server["summary"][1]["steps_to_target"] == server["summary"][0]["steps_to_target"]
    for rank in (server, worker):
        torch.testing.assert_close(rank["params"][1], rank["params"][0], rtol=0, atol=0)
