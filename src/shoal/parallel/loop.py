"""The data-parallel driver: ``train_parallel(model, data, shards, algorithm, config, comm)``.

Every worker holds its own shard and model copy. Each step the loop draws every local worker's
minibatch (keyed by ``(seed, step, worker)``, see :mod:`.batches`), hands the algorithm a
gradient closure, and lets it step and communicate through ``comm``. The same code runs
all workers in one process (:class:`SimComm`) or one worker per process (:class:`DistComm`).

Every ``eval_every`` steps (and at the end) it logs a metrics row: ``step``, ``train_loss``
(the workers' minibatch losses since the last row; the honest ones' under attack),
``test_loss`` / ``test_accuracy`` of the
workers' average model (the centre for EASGD; in synchronous data parallelism every worker
holds the same model), ``bytes_sent`` (all workers, exact, cumulative), ``samples``,
``wall_seconds`` (training and evaluation) and ``samples_per_second`` (since the last row,
training time only). With ``network=CostModel(...)`` rows also have ``sim_seconds``: every
step's compute (``batch_size`` samples per worker, times its ``slowdown``) and the exchanges
the communicator recorded, charged on that network (:meth:`shoal.cost.CostModel.step_seconds`;
the same on every process, and kept exact across resumes). In distributed runs a row costs
one small all-reduce (the counters), one all-reduce of the parameters where the workers'
models differ (the average), and one all-gather of the test scores (each process scores a
slice); none of it is counted in ``bytes_sent``. Rank 0 writes the files.

Checkpoints hold each process's workers' parameters and algorithm state (messages in flight
received first), the counters and the rows so far, one file per rank; ``resume=True``
restores them, and because every random choice is keyed by the step, a resumed run ends with
the same parameters and metrics as an uninterrupted one writing checkpoints at the same steps
(only the timings differ; a run without ``out_dir``, whose train loss is not split at the
checkpoints, can differ in the last bit of ``train_loss``). A run that *finished* at fewer
``steps`` and is trained further has the same parameters, but its rows keep the shorter run's
last evaluation, and the next row's train loss covers only the steps since. The
processes of a distributed run save their own, so one killed while they saved may leave some
a checkpoint ahead of others: each keeps its previous one too, and none trains on before all
have saved (one small all-reduce), so a resumed run continues, on every process, from the
newest step that all of them have.

The asynchronous form of EASGD runs differently: its last rank is the parameter server
(:mod:`.server`), which evaluates the centre and writes the metrics; the worker ranks never
wait for each other (see :mod:`.algorithms.deepspark`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.checks import check_instance
from shoal.cost import CostModel
from shoal.data.types import FederatedDataset
from shoal.evaluate import pooled
from shoal.files import (
    append_metrics,
    atomic_save,
    check_checkpoint_dtype,
    load_checkpoint,
    split_digest,
    warn_setup_differs,
    write_metrics,
)
from shoal.functional import (
    LossFn,
    ParamSpec,
    check_model,
    check_run_inputs,
    cross_entropy,
    param_dtype,
    start_params,
)
from shoal.parallel import records
from shoal.parallel.base import (
    HonestSubset,
    ParallelAlgorithm,
    ServerAlgorithm,
    State,
    settle,
)
from shoal.parallel.batches import Gradients, LocalBatches, uses_vmap
from shoal.parallel.comm import Comm
from shoal.parallel.config import ParallelConfig, ParallelResult
from shoal.parallel.job import Callback, Job, Progress
from shoal.parallel.server import run_server
from shoal.progress import progress_bar
from shoal.runtime.sim import resolve_device


def train_parallel(
    model: nn.Module,
    data: FederatedDataset,
    shards: Sequence[np.ndarray],
    algorithm: ParallelAlgorithm,
    config: ParallelConfig,
    comm: Comm,
    *,
    loss_fn: LossFn = cross_entropy,
    init: torch.Tensor | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callback: Callback | None = None,
    network: CostModel | None = None,
) -> ParallelResult:
    """Train ``model`` on ``data`` split into ``shards`` (one index array per worker).

    ``init``: the initial flat parameters of every worker (default: the model's). With
    ``out_dir``, the reporting process writes ``metrics.jsonl``, ``model.pt`` and
    ``summary.json`` there and every process its checkpoint; ``resume=True`` continues from
    them. ``callback(row)`` is called with every metrics row. ``network`` adds simulated
    time (``sim_seconds``) to the rows. See the module docstring.
    """
    if not isinstance(algorithm, ParallelAlgorithm):
        raise TypeError(f"algorithm must have name/init/step/model, got {type(algorithm)}")
    if not isinstance(comm, Comm):
        raise TypeError(f"comm must be a SimComm or DistComm, got {type(comm).__name__}")
    # A wrong object failed later with an AttributeError (a dict config, a list init), or
    # after training (a callback that is not callable, at the first evaluation).
    check_instance(model, nn.Module, "model")  # a TensorDataset: 'no attribute train'
    check_instance(data, FederatedDataset, "data")
    check_instance(config, ParallelConfig, "config")
    check_run_inputs(init, callback)
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    dev = _device(config, comm)
    model = model.to(dev)
    # All the samples, where they are: the checks move the few rows they try to the model.
    check_model(model, data.train.x, data.train.y, data.test.x, data.train.num_classes, loss_fn)
    spec = ParamSpec.of(model)
    params_D = start_params(model, spec, init, dev)
    if network is not None and not isinstance(network, CostModel):
        raise TypeError(f"network must be a shoal.cost.CostModel, got {type(network).__name__}")
    server = algorithm.server_rank(comm) if isinstance(algorithm, ServerAlgorithm) else None
    if server is not None and network is not None:
        raise ValueError(
            f"{algorithm.name}: simulated time covers synchronous steps only, not the "
            "asynchronous parameter-server form; leave network out (or use mode='sync')"
        )
    num_workers = comm.world_size - (server is not None)
    _check_shards(shards, num_workers, len(data.train), server is not None)
    unknown = sorted(w for w in config.slowdown if w >= num_workers)
    if unknown:
        raise ValueError(f"slowdown names worker(s) {unknown}, but there are {num_workers}")
    if config.slowdown and network is not None and network.seconds_per_sample == 0:
        warnings.warn(
            "slowdown: a slower worker multiplies the simulated compute time, and the "
            "network's seconds_per_sample is 0 (none), so sim_seconds does not show it (the "
            "run itself is still slowed); set seconds_per_sample",
            stacklevel=2,
        )
    # Every worker starts from rank 0's model, as DDP does, whatever seed each process used.
    params_D = comm.broadcast(params_D)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if resume and not out.is_dir():  # a typo's folder was made, and stayed, empty
            raise ValueError(f"cannot resume: no run folder {out}")
        out.mkdir(parents=True, exist_ok=True)
    job = Job(model, spec, data, shards, algorithm, config, comm, loss_fn, out, callback, network)
    if server is not None and job.rank == server:
        return run_server(job, params_D, resume)
    return _WorkerRun(job, dev).train(params_D, resume, asynchronous=server is not None)


def _device(config: ParallelConfig, comm: Comm) -> torch.device:
    if comm.device is None:
        return resolve_device(config.device)
    if config.device == "auto":
        return comm.device
    want = torch.device(config.device)
    # "cuda" names any GPU (the group gives each process its own); "cuda:N" names one.
    if want.type != comm.device.type or want.index not in (None, comm.device.index):
        raise ValueError(
            f"config.device={config.device!r} but this process's group uses {comm.device}; "
            "leave device='auto' in distributed runs"
        )
    return comm.device


def _check_shards(shards: Sequence[np.ndarray], num_workers: int, n: int, server: bool) -> None:
    if len(shards) != num_workers:
        extra = " (the last rank is the parameter server)" if server else ""
        raise ValueError(f"got {len(shards)} shards for {num_workers} workers{extra}")
    for w, idx in enumerate(shards):
        idx = np.asarray(idx)
        if idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"shard {w} must be a non-empty 1-D integer index array")
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"shard {w} has indices outside the training set [0, {n})")


class _WorkerRun:
    """The loop of the processes that hold workers (all of them, except EASGD's server)."""

    def __init__(self, job: Job, dev: torch.device) -> None:
        self.job, self.dev = job, dev
        self.model, self.spec, self.algorithm = job.model, job.spec, job.algorithm
        self.config, self.comm, self.loss_fn, self.out = job.config, job.comm, job.loss_fn, job.out
        config, comm, data = job.config, job.comm, job.data
        self.batches = LocalBatches(
            data.train.x,
            data.train.y,
            job.shards,
            comm.workers,
            config.batch_size,
            config.seed,
            dev,
        )
        self.num_workers = len(job.shards)
        self.vectorize = uses_vmap(job.model, dev, len(comm.workers))
        self.slowdown = max(config.slowdown.get(w, 1.0) for w in comm.workers)
        # Every worker's compute per step, in samples (a straggler's times its slowdown).
        self.step_samples_N = np.array(
            [
                min(config.batch_size, len(s)) * config.slowdown.get(w, 1.0)
                for w, s in enumerate(job.shards)
            ]
        )
        self.reports = comm.is_main
        self.x_test, self.y_test = data.test.x.to(dev), data.test.y.to(dev)
        self.rows: list[dict[str, Any]] = []
        self.coordinated = False  # a distributed run's processes agree on their checkpoints

    def evaluated(self, params_WD: torch.Tensor, state: State) -> torch.Tensor:
        """The workers' average model (one collective in distributed runs): gossip leaves
        the workers apart, and the average is what the decentralized literature scores.
        A model all workers hold (``[D]``: EASGD's centre, synchronous SGD) is scored as is."""
        alg = self.algorithm
        models = alg.model(params_WD, state)
        if models.dim() == 1:
            return models
        keep_W = alg.evaluated_W(state) if isinstance(alg, HonestSubset) else None
        return self.comm.average(models, keep_W)

    def train(self, params_D: torch.Tensor, resume: bool, asynchronous: bool) -> ParallelResult:
        cfg, comm, alg, callback = self.config, self.comm, self.algorithm, self.job.callback
        params_WD = params_D.expand(len(comm.workers), -1).clone()
        state = alg.init(params_WD, comm)
        prog = Progress()
        ckpt = self.out / records.checkpoint_name(self.job.rank) if self.out is not None else None
        # The processes of a distributed run agree on the step to continue from (see _restore).
        self.coordinated = ckpt is not None and self.job.rank is not None and not asynchronous
        if ckpt is not None and (resume or self.coordinated):
            restored = self._restore(ckpt, resume, set(state))
            if restored is not None:
                # State the algorithm makes from its setting (SGP's graph, robust gossip's
                # honest nodes) is this run's: the checkpoint's kept the old setting while the
                # warning said the run went on under the new one.
                fresh, (params_WD, state, prog) = state, restored
                state = {**state, **{k: fresh[k] for k in getattr(alg, "setting_keys", ())}}
        if self.out is not None and self.reports and not asynchronous:
            write_metrics(self.out / records.METRICS, self.rows)
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.dev)
        step_samples = float(sum(self.batches.samples()))
        # train_loss averages the workers whose model is scored: a Byzantine node's own
        # losses are no honest node's (robust gossip, HonestSubset).
        loss_keep_W = alg.evaluated_W(state) if isinstance(alg, HonestSubset) else None
        loss_workers = len(comm.workers) if loss_keep_W is None else int(loss_keep_W.sum())
        # A run that stopped at its target accuracy is finished: a resume does not train on.
        # An asynchronous worker knows it from the server's stop flag in its checkpoint.
        # A synchronous run resumed without the target (train_parallel's config) trains on; an
        # asynchronous worker still stops on the server's flag in its checkpoint.
        reached = prog.steps_to_target is not None and cfg.target_accuracy is not None
        finished = reached or bool(state.get("stop", False))
        end = prog.step if finished else cfg.steps
        bar = progress_bar(
            range(prog.step, end),
            initial=prog.step,
            total=cfg.steps,
            desc=alg.name,
            unit="step",
            disable=not (cfg.progress and self.reports),
        )
        comm.exchanges.clear()  # the steps' own only
        codec = self.job.network is not None and self.job.network.codec_seconds_per_element > 0
        charged_codec = False
        for step in bar:
            t0 = time.perf_counter()
            grad_fn = Gradients(
                self.model,
                self.spec,
                self.loss_fn,
                self.batches,
                *self.batches.index(step),
                self.vectorize,
                self.slowdown,
            )
            try:
                params_WD, state = alg.step(params_WD, grad_fn, state, comm, step)
            except FloatingPointError as e:  # an error-feedback residual went NaN/inf
                raise FloatingPointError(f"step {step + 1}: {e}") from None
            if self.job.network is not None:
                prog.sim_seconds += self.job.network.step_seconds(
                    comm.exchanges, self.step_samples_N, step
                )
                charged_codec |= any(ex.codec_elements for ex in comm.exchanges)
            comm.exchanges.clear()
            if grad_fn.loss_W is not None:
                loss_W = grad_fn.loss_W.double()
                if loss_keep_W is not None:
                    loss_W = torch.where(loss_keep_W.to(loss_W.device), loss_W, 0.0)
                loss_acc += loss_W.sum()
                prog.loss_count += loss_workers
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            spent = time.perf_counter() - t0
            prog.step, prog.samples = step + 1, prog.samples + step_samples
            prog.train_seconds += spent
            prog.wall += spent
            stop = bool(state.get("stop", False))
            last = step + 1 == cfg.steps or stop
            if not asynchronous and ((step + 1) % cfg.eval_every == 0 or last):
                prog.loss_sum += float(loss_acc)
                loss_acc.zero_()
                row, reached = self._report(params_WD, state, prog)
                stop = stop or reached
                if row is not None:
                    bar.set_postfix(acc=f"{row['test_accuracy']:.3f}")
                    if callback is not None:
                        callback(row)
            if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0 or last or stop):
                prog.loss_sum += float(loss_acc)
                loss_acc.zero_()
                self._save(ckpt, params_WD, state, prog)
            if stop:
                break
        bar.close()
        if codec and not charged_codec and self.reports:
            warnings.warn(
                f"network.codec_seconds_per_element is charged per compressed exchange, and "
                f"{alg.name} sent none here (no compressor was given; only sync_sgd, local_sgd "
                "and dgc take one), so it added nothing to sim_seconds",
                stacklevel=2,
            )
        state = settle(state)  # no message left in flight when the run returns
        if asynchronous:
            assert isinstance(alg, ServerAlgorithm)
            centre_1D, state = alg.finish(params_WD, state, comm, prog.step)
            if ckpt is not None:  # after the sign-off: its losses reported, its bytes sent
                self._save(ckpt, params_WD, state, prog)
            return ParallelResult(centre_1D[0], params_WD, state, self.spec, [], {})
        final_D = self.evaluated(params_WD, state)
        summary: dict[str, Any] = {}
        if self.reports:
            summary = records.summarize(
                alg,
                self.rows,
                num_workers=self.num_workers,
                num_params=self.spec.num_params,
                samples=self.rows[-1]["samples"] if self.rows else 0.0,
                train_seconds=prog.train_seconds,
                target=prog.target(cfg),
                device=self.dev,
            )
            if self.out is not None:
                records.save_final(self.out, self.model, self.spec, final_D, summary)
        return ParallelResult(final_D, params_WD, state, self.spec, self.rows, summary)

    def _report(
        self, params_WD: torch.Tensor, state: State, prog: Progress
    ) -> tuple[dict[str, Any] | None, bool]:
        """One metrics row (on the reporting process) and whether the target was reached."""
        t0 = time.perf_counter()
        cfg, comm = self.config, self.comm
        loss, count, samples, sent = comm.sum_stats(
            [prog.loss_sum, prog.loss_count, prog.samples, comm.bytes_sent]
        )
        prog.loss_sum = prog.loss_count = 0.0
        d_samples = samples - prog.last_samples
        d_seconds = prog.train_seconds - prog.last_train_seconds
        prog.last_samples, prog.last_train_seconds = samples, prog.train_seconds
        # Every process scores its slice of the test set and all of them get every score, so
        # all of them see the same accuracy and stop at the same step without asking rank 0.
        test_loss, test_acc = pooled(
            *comm.predict(
                self.model,
                self.spec,
                self.evaluated(params_WD, state),
                self.x_test,
                self.y_test,
                self.loss_fn,
                cfg.eval_batch_size,
            )
        )
        records.check_finite(test_loss, prog.step)
        prog.wall += time.perf_counter() - t0
        target = cfg.target_accuracy
        reached = target is not None and prog.steps_to_target is None and test_acc >= target
        if reached:
            prog.steps_to_target, prog.time_to_target_seconds = prog.step, prog.wall
        if not self.reports:
            return None, reached
        row = {
            "step": prog.step,
            "train_loss": loss / count if count else None,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "bytes_sent": int(sent),
            "samples": int(samples),
            "wall_seconds": prog.wall,
            "samples_per_second": d_samples / d_seconds if d_seconds > 0 else None,
        }
        if self.job.network is not None:
            row["sim_seconds"] = prog.sim_seconds
        self.rows.append(row)
        if self.out is not None:
            append_metrics(self.out / records.METRICS, row)
        return row, reached

    def _save(self, path: Path, params_WD: torch.Tensor, state: State, prog: Progress) -> None:
        ck = {
            "params_WD": params_WD,
            "state": settle(state),
            "progress": asdict(prog),
            "rows": self.rows,
            "bytes_sent": self.comm.bytes_sent,
            "setup": self._setup(),
        }
        if self.coordinated and path.exists():
            os.replace(path, records.previous_checkpoint(path))
        atomic_save(ck, path)
        if self.coordinated:  # a barrier: no process trains on before all have saved
            self.comm.sum_stats([0.0])

    def _check_resumed(self, path: Path, ck: dict[str, Any], init_keys: Collection[str]) -> None:
        """A resume continues the same run, further. Without these checks another setting
        went on silently from the checkpoint (fewer steps returned the longer run), or failed
        deep inside (another algorithm's state: a KeyError; a model of another size)."""
        saved_WD, workers = ck["params_WD"], len(self.comm.workers)
        if saved_WD.shape[0] != workers:
            raise ValueError(
                f"cannot resume: {path.name} holds {saved_WD.shape[0]} workers, this run has "
                f"{workers}"
            )
        if saved_WD.shape[1] != self.spec.num_params:
            raise ValueError(
                f"cannot resume: {path.name} holds a model of {saved_WD.shape[1]} parameters, "
                f"this one has {self.spec.num_params}"
            )
        check_checkpoint_dtype(path, saved_WD, param_dtype(self.model))
        done = ck["progress"]["step"]
        if done > self.config.steps:
            raise ValueError(
                f"cannot resume: {path.name} is at step {done}, past steps={self.config.steps}; "
                "a resumed run can only train further"
            )
        # What init made must be there (an algorithm may add keys later, never drop them):
        # another algorithm's state failed in its step (KeyError), so did added momentum.
        if missing := sorted(set(init_keys) - set(ck["state"])):
            raise ValueError(
                f"cannot resume: {path.name} holds the state of another algorithm or setting "
                f"({', '.join(sorted(ck['state'])) or 'none'}), without the "
                f"{', '.join(missing)} that {self.algorithm.name} here keeps"
            )
        warn_setup_differs(path.parent, ck.get("setup", {}), self._setup(), stacklevel=5)

    def _setup(self) -> dict[str, Any]:
        """What a checkpoint records of the run's setting, for a resume to be checked against
        (as ``shoal.train``'s does)."""
        cfg = self.config
        return {
            "algorithm": repr(self.algorithm),
            "seed": cfg.seed,
            "batch size": cfg.batch_size,
            "shard sizes": [len(s) for s in self.job.shards],
            "shard split": split_digest(self.job.shards),  # a reshuffle of equal sizes
        }

    def _restore(
        self, path: Path, resume: bool, init_keys: Collection[str]
    ) -> tuple[torch.Tensor, State, Progress] | None:
        """The checkpoint to continue from (``None``: start over). In a distributed run, the
        newest step that every process has a checkpoint of (one that has none starts them
        all over): a process ahead of another continues from its previous checkpoint."""
        previous = records.previous_checkpoint(path)
        if resume and not path.exists() and not (self.coordinated and previous.exists()):
            raise ValueError(f"cannot resume: no {path.name} in {path.parent}")
        ck = None
        if resume:
            ck = load_checkpoint(path if path.exists() else previous, self.dev, "params_WD")
        if self.coordinated:
            assert self.job.rank is not None
            step = ck["progress"]["step"] if ck is not None else 0
            steps = [0.0] * self.comm.world_size
            steps[self.job.rank] = step
            agreed = int(min(self.comm.sum_stats(steps)))
            if agreed == 0:
                return None
            if step != agreed:
                ck = load_checkpoint(previous, self.dev, "params_WD")
                if ck["progress"]["step"] != agreed:
                    raise ValueError(
                        f"cannot resume: {previous.name} holds step {ck['progress']['step']}, "
                        f"but the other processes continue from step {agreed}"
                    )
                os.replace(previous, path)  # where this process is now
        assert ck is not None
        self._check_resumed(path, ck, init_keys)
        self.rows = ck["rows"]
        self.comm.bytes_sent = ck["bytes_sent"]
        return ck["params_WD"], ck["state"], Progress(**ck["progress"])
