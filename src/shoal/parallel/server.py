"""The parameter-server rank of asynchronous EASGD: it holds, evaluates and reports the centre.

The workers never synchronize with each other, so no process sees a global step. The server
tracks each worker's step from the header of its exchanges and uses their mean as the run's
``step``: when it crosses a multiple of ``eval_every`` the server evaluates the centre and
writes a metrics row (the same columns as :mod:`.loop`; ``train_loss`` is the workers' loss
reported since the last row, ``samples_per_second`` counts every worker's samples over the
server's wall time). ``bytes_sent`` is exact: the server counts its own messages and the
ones it received. The server checkpoints its centre and rows at each row; a resumed run
continues from every rank's own checkpoint, but (being asynchronous) not bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from shoal.files import append_metrics, atomic_save, load_checkpoint, write_metrics
from shoal.parallel import records
from shoal.parallel.base import ServerAlgorithm
from shoal.parallel.config import ParallelResult
from shoal.parallel.job import Job, Progress
from shoal.progress import progress_bar


def run_server(job: Job, params_D: torch.Tensor, resume: bool) -> ParallelResult:
    """The server rank's whole run: serve the workers' exchanges, report, checkpoint."""
    model, spec, data, shards, config = job.model, job.spec, job.data, job.shards, job.config
    algorithm, comm, out, callback = job.algorithm, job.comm, job.out, job.callback
    assert isinstance(algorithm, ServerAlgorithm)
    dev = params_D.device
    x_test, y_test = data.test.x.to(dev), data.test.y.to(dev)
    batch_W = [min(config.batch_size, len(s)) for s in shards]
    num_workers = len(shards)
    ckpt = out / records.checkpoint_name(job.rank) if out is not None else None
    centre_D, prog, rows = params_D, Progress(), []
    steps_W = [0.0] * num_workers
    received_before = 0  # bytes the workers had sent here before a resume
    if resume and ckpt is not None:
        if not ckpt.exists():
            raise ValueError(f"cannot resume: no {ckpt.name} in {ckpt.parent}")
        ck = load_checkpoint(ckpt, dev, "centre_D")
        centre_D, rows, steps_W = ck["centre_D"], ck["rows"], ck["steps_W"]
        prog, comm.bytes_sent = Progress(**ck["progress"]), ck["bytes_sent"]
        received_before = ck["received"]
    if out is not None:
        write_metrics(out / records.METRICS, rows)
    bar = progress_bar(
        total=config.steps, desc=algorithm.name, unit="step", disable=not config.progress
    )
    clock = [time.perf_counter()]  # start of the current stretch of serving

    def row_now(centre: torch.Tensor, total_bytes: int) -> bool:
        """Evaluate the centre and log a row; True when the target is reached."""
        t0 = time.perf_counter()
        served = t0 - clock[0]
        prog.train_seconds += served
        prog.wall += served
        samples = sum(s * b for s, b in zip(steps_W, batch_W))
        test_loss, test_acc = records.evaluate(
            model, spec, centre, x_test, y_test, job.loss_fn, config.eval_batch_size
        )
        prog.wall += time.perf_counter() - t0
        step = int(round(sum(steps_W) / num_workers))
        records.check_finite(test_loss, step)
        d_seconds = prog.train_seconds - prog.last_train_seconds
        row: dict[str, Any] = {
            "step": step,
            "train_loss": prog.loss_sum / prog.loss_count if prog.loss_count else None,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "bytes_sent": int(total_bytes),
            "samples": int(samples),
            "wall_seconds": prog.wall,
            "samples_per_second": (samples - prog.last_samples) / d_seconds if d_seconds else None,
        }
        prog.loss_sum = prog.loss_count = 0.0
        prog.last_samples, prog.last_train_seconds = samples, prog.train_seconds
        prog.step = row["step"]
        reached = False
        target = config.target_accuracy
        if target is not None and prog.steps_to_target is None and test_acc >= target:
            prog.steps_to_target, prog.time_to_target_seconds = row["step"], prog.wall
            reached = True
        rows.append(row)
        bar.n = min(row["step"], config.steps)
        bar.set_postfix(acc=f"{test_acc:.3f}")
        if out is not None:
            append_metrics(out / records.METRICS, row)
        if callback is not None:
            callback(row)
        if ckpt is not None:
            state = {"centre_D": centre, "rows": rows, "steps_W": steps_W}
            counts = {"bytes_sent": comm.bytes_sent, "received": total_bytes - comm.bytes_sent}
            atomic_save({**state, "progress": asdict(prog), **counts}, ckpt)
        clock[0] = time.perf_counter()
        return reached

    total_bytes = [rows[-1]["bytes_sent"] if rows else 0]

    def on_exchange(worker: int, head: list[float], centre: torch.Tensor, total: int) -> bool:
        _, step, loss_sum, loss_steps = head
        steps_W[worker] = step
        prog.loss_sum += loss_sum  # a sum of per-step losses of one worker ...
        prog.loss_count += loss_steps  # ... over this many steps
        total += received_before
        total_bytes[0] = total
        mean_step = sum(steps_W) / num_workers
        next_row = (prog.step // config.eval_every + 1) * config.eval_every
        due = next_row <= mean_step < config.steps
        return row_now(centre, total) if due else False

    centre_D = algorithm.serve(centre_D, comm, on_exchange)
    if not rows or rows[-1]["step"] != int(round(sum(steps_W) / num_workers)):
        row_now(centre_D, total_bytes[0])
    bar.close()
    summary = records.summarize(
        algorithm,
        rows,
        num_workers=num_workers,
        num_params=spec.num_params,
        samples=rows[-1]["samples"],
        train_seconds=prog.train_seconds,
        target=prog.target(config),
        device=centre_D.device,
    )
    if out is not None:
        records.save_final(Path(out), model, spec, centre_D, summary)
    return ParallelResult(centre_D, centre_D.unsqueeze(0), {}, spec, rows, summary)
