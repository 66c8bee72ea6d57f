"""A distributed run killed while its processes saved a checkpoint resumes from the newest
step that all of them have.

Each process saves its own checkpoint, with no collective in between, so a job killed after
rank 0 has saved step 4 and before rank 1 has leaves rank 1 at step 2. Resumed, rank 0 went
on from step 4 and rank 1 from step 2: their collectives no longer matched, and the job hung
until the group's timeout. Now every process continues from step 2 and the run ends as an
uninterrupted one, bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from shoal.parallel import DistComm, sync_sgd, train_parallel

from .cases import config, shards, tiny_data, tiny_model


def _train(comm: Any, steps: int, out_dir: str, resume: bool = False) -> torch.Tensor:
    cfg = config(steps=steps, checkpoint_every=2)
    alg = sync_sgd(0.2, momentum=0.9)
    run = train_parallel(
        tiny_model(), tiny_data(), shards(2), alg, cfg, comm, out_dir=out_dir, resume=resume
    )
    return run.params_WD


def _killed_while_saving(out_dir: str) -> dict[str, torch.Tensor]:
    from shoal.runtime.procgroup import init_from_env

    ctx = init_from_env(timeout_s=15)
    rank, out = ctx.rank, Path(out_dir)
    whole = _train(DistComm(ctx), 6, str(out / "whole"))
    _train(DistComm(ctx), 2, str(out / "cut"))
    ckpt = out / "cut" / f"checkpoint.rank{rank}.pt"
    shutil.copy(ckpt, out / f"step2.rank{rank}.pt")
    _train(DistComm(ctx), 4, str(out / "cut"), resume=True)
    if rank == 1:  # rank 1 died before its step-4 checkpoint was written
        shutil.copy(out / f"step2.rank{rank}.pt", ckpt)
    torch.distributed.barrier()
    resumed = _train(DistComm(ctx), 6, str(out / "cut"), resume=True)
    return {"whole": whole, "resumed": resumed}


def test_processes_resume_from_the_newest_step_all_of_them_saved(tmp_path):
    from shoal.runtime.spawn import spawn_local

    got = spawn_local(_killed_while_saving, 2, str(tmp_path), timeout_s=120)
    for rank in (0, 1):
        assert torch.equal(got[rank]["resumed"], got[rank]["whole"])
