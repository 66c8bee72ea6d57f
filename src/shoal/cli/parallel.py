"""Data-parallel and decentralized runs from a config (``[algorithm] name = "dpsgd"``, ...).

The partition's clients are the workers (one shard each); ``[parallel]`` says how many steps,
the per-worker batch, the gossip topology and an optional straggler. In one process the
workers are simulated together (:class:`~shoal.parallel.SimComm`); under ``shoal launch`` /
``torchrun`` each process is one worker (:class:`~shoal.parallel.DistComm`), so the job needs
as many processes as ``partition.num_clients`` (one more for asynchronous EASGD's parameter
server).
"""

from __future__ import annotations

import math
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

from shoal.checks import a_word
from shoal.cli.build import (
    build_clients,
    build_compressor,
    build_model,
    build_network,
    distributed,
    join_group,
    model_facts,
    run_seed,
)
from shoal.cli.registry import PARALLEL, call_factory
from shoal.compress import Identity
from shoal.config import SECTIONS, Config, ConfigError
from shoal.files import LOCK
from shoal.parallel import Comm, DistComm, ParallelConfig, ParallelResult, SimComm
from shoal.parallel import train_parallel as _train_parallel
from shoal.parallel.algorithms.easgd import EASGD
from shoal.parallel.base import ServerAlgorithm
from shoal.parallel.records import RANK_CHECKPOINTS, checkpoint_name, previous_checkpoint
from shoal.report import human_bytes, seconds
from shoal.runtime.procgroup import in_distributed_env, init_from_env
from shoal.runtime.sim import resolve_device
from shoal.topology import TOPOLOGIES, Topology

# The graph ``topology = "auto"`` means for the methods that gossip.
_DEFAULT_GRAPH = {"dpsgd": "ring", "sgp": "one_peer_exponential"}


def is_parallel(cfg: Config) -> bool:
    return cfg["algorithm.name"] in PARALLEL


def make_comm(cfg: Config, num_workers: int) -> Comm:
    if distributed(cfg):
        timeout_s = cfg["runtime.timeout_s"]
        return DistComm(
            join_group(cfg, lambda: init_from_env(device=cfg["device"], timeout_s=timeout_s))
        )
    return SimComm(num_workers)


def _topology(cfg: Config, num_workers: int) -> dict[str, Topology]:
    name, graph = cfg["algorithm.name"], cfg["parallel.topology"]
    if name not in _DEFAULT_GRAPH:
        if graph != "auto":
            raise ConfigError(
                f'parallel.topology = "{graph}": {name} does not gossip; only dpsgd and sgp '
                "take a topology"
            )
        return {}
    graph = _DEFAULT_GRAPH[name] if graph == "auto" else graph
    return {"topology": TOPOLOGIES[graph](num_workers)}


COMPRESSING = frozenset({"sync_sgd", "local_sgd"})
"""The data-parallel methods that take ``[compression]`` (gradients; local SGD's model changes)."""


def build_algorithm(cfg: Config, compressor: Any, model: Any, shard_sizes: list[int]) -> Any:
    name = cfg["algorithm.name"]
    options = cfg.options("algorithm")
    extra: dict[str, Any] = {
        **_topology(cfg, len(shard_sizes)),
        **model_facts(PARALLEL[name], model),
        **run_seed(PARALLEL[name], options, cfg),
    }
    if name == "dgc" and "epoch_steps" not in options:
        # DGC's warm-up epoch: one pass over a worker's share of the data.
        mean_shard = sum(shard_sizes) / len(shard_sizes)
        extra["epoch_steps"] = math.ceil(mean_shard / cfg["parallel.batch_size"])
    if not isinstance(compressor, Identity):
        if name not in COMPRESSING:
            sends = (
                "its own sparse encoding (algorithm.density)" if name == "dgc" else "models dense"
            )
            named = cfg["compression.name"]
            key = f'compression.name = "{named}"'
            if named == "identity":  # error feedback around no compressor
                key = "compression.error_feedback = true"
            raise ConfigError(
                f"{key}: only {' and '.join(sorted(COMPRESSING))} take a compressor; "
                f"{name} sends {sends}"
            )
        extra["compressor"] = compressor
    return call_factory(
        "algorithm",
        f'algorithm.name = "{name}"',
        [*options, "lr"],
        lambda: PARALLEL[name](lr=cfg["algorithm.lr"], **options, **extra),
    )


def parallel_config(cfg: Config, progress: bool) -> ParallelConfig:
    p = cfg.values["parallel"]
    default_factor = SECTIONS["parallel"]["slowdown_factor"].default
    if p["slowdown_worker"] < 0 and p["slowdown_factor"] != default_factor:
        raise ConfigError(  # it slowed no one, silently
            f"parallel.slowdown_factor = {p['slowdown_factor']} slows the worker that "
            "parallel.slowdown_worker names, and it names none (-1): set it, or drop the factor"
        )
    slow = {p["slowdown_worker"]: p["slowdown_factor"]} if p["slowdown_worker"] >= 0 else {}
    return ParallelConfig(
        steps=p["steps"],
        batch_size=p["batch_size"],
        seed=cfg["seed"],
        eval_every=p["eval_every"],
        eval_batch_size=cfg["eval.batch_size"],
        target_accuracy=p["target_accuracy"] or None,
        device=cfg["device"],
        progress=progress,
        checkpoint_every=p["checkpoint_every"],
        slowdown=slow,
    )


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out``: a data-parallel run launched on ``n``
    processes checkpoints each one's workers, and continues on as many."""
    n, folder = len(list(out.glob(RANK_CHECKPOINTS))), shlex.quote(str(out))
    if n and not (out / checkpoint_name(None)).is_file():
        return f"torchrun --nproc-per-node {n} -m shoal run --resume {folder}"
    return f"shoal run --resume {folder}"


def has_checkpoint(out: Path) -> bool:
    """Whether this process has a checkpoint of a data-parallel run to resume from."""
    rank = int(os.environ["RANK"]) if in_distributed_env() else None
    ranks = sorted(out.glob(RANK_CHECKPOINTS))
    single = (out / checkpoint_name(None)).is_file()
    if rank is None and ranks and not single:
        # Each process of a distributed run checkpoints its own workers: starting over here
        # would silently overwrite the run.
        n = len(ranks)
        raise ConfigError(
            f"{out} holds the checkpoints of a run on {n} processes ({ranks[0].name}, ...); "
            f"continue it on as many: {resume_command(out)}"
        )
    if rank is not None and not ranks and single:
        raise ConfigError(
            f"{out} holds the checkpoint of a run in one process; continue it with "
            f"shoal run --resume {out}"
        )
    ckpt = out / checkpoint_name(rank)
    # (a process killed while it saved has only its previous one: see shoal.parallel.loop)
    return ckpt.is_file() or (rank is not None and previous_checkpoint(ckpt).is_file())


def train_parallel(cfg: Config, out: Path, *, resume: bool, progress: bool) -> ParallelResult:
    """Build the data, shards, model and method of a data-parallel config and train it."""
    try:
        resolve_device(cfg["device"])
    except ValueError as e:
        raise ConfigError(f'device = "{cfg["device"]}": {e}') from None
    cfg, data, shards = build_clients(cfg, check_sampling=False)
    model, init = build_model(cfg, data)
    compressor = build_compressor(cfg, model)
    comm = make_comm(cfg, len(shards))
    algorithm = build_algorithm(cfg, compressor, model, [len(s) for s in shards])
    server = None
    if isinstance(algorithm, ServerAlgorithm):
        try:
            server = algorithm.server_rank(comm)
        except ValueError as e:  # mode = "async" with no process for the server: not a failed run
            raise ConfigError(
                f'algorithm.mode = "{cfg["algorithm.mode"]}": {e}; run it under `shoal launch`, '
                'one process per worker and one more for the server, or set algorithm.mode = "sync"'
            ) from None
    if isinstance(algorithm, EASGD) and server is None:
        try:  # refused here, not at init: every `shoal launch` worker exits as a config error
            algorithm.check_stable(comm)
        except ValueError as e:
            alpha = cfg.options("algorithm").get("alpha")  # unset: 0.9 / p, always stable
            raise ConfigError(f"algorithm.alpha = {alpha}: {e}") from None
    network = build_network(cfg)
    if network is not None and server is not None:
        raise ConfigError(
            f'network.profile = "{cfg["network.profile"]}": simulated time covers synchronous '
            f"steps; this {cfg['algorithm.name']} job runs asynchronously with a parameter "
            'server (set algorithm.mode = "sync", or network.profile = "none")'
        )
    workers = comm.world_size - (server is not None)
    slow = cfg["parallel.slowdown_worker"]
    if slow >= len(shards):
        raise ConfigError(
            f"parallel.slowdown_worker = {slow}: the workers are 0 to {len(shards) - 1}"
        )
    smallest = min(len(s) for s in shards)
    if cfg["parallel.batch_size"] > smallest and os.environ.get("RANK", "0") == "0":
        warnings.warn(
            f"parallel.batch_size = {cfg['parallel.batch_size']} is more than the {smallest} "
            "samples of the smallest shard: such a worker's steps take its whole shard",
            stacklevel=2,
        )
    if workers != len(shards):
        launched = len(list(out.glob(RANK_CHECKPOINTS)))
        if resume and launched and launched != comm.world_size:  # the partition is the run's
            raise ConfigError(
                f"cannot resume {out}: it ran on {launched} processes, and this job has "
                f"{comm.world_size}; continue it with `{resume_command(out)}`"
            )
        extra = " plus the parameter server" if server is not None else ""
        raise ConfigError(
            f"partition.num_clients = {len(shards)}: {a_word(cfg['algorithm.name'])} job with "
            f"{comm.world_size} processes has {workers} worker{'s' * (workers != 1)}{extra}; "
            "give the partition one client per worker"
        )
    return _train_parallel(
        model,
        data,
        shards,
        algorithm,
        parallel_config(cfg, progress),
        comm,
        init=init,
        out_dir=out,
        resume=resume,
        network=network,
    )


def summary_text(cfg: Config, result: ParallelResult, out: Path, elapsed: float) -> str:
    s = result.summary
    lines = [
        f"{s['algorithm']} on {cfg['data.name']}: {s['steps']} steps, {s['num_workers']} "
        f"workers, {s['num_params']:,} parameters"
    ]
    if s["final_test_accuracy"] is not None:
        lines.append(
            f"  final test accuracy {s['final_test_accuracy']:.2%} "
            f"(best {s['best_test_accuracy']:.2%}), test loss {s['final_test_loss']:.4f}"
        )
    if s.get("steps_to_target") is not None:
        lines.append(
            f"  reached {cfg['parallel.target_accuracy']:.2%} after {s['steps_to_target']} "
            f"steps, {s['time_to_target_seconds']:.1f} s"
        )
    sps = s.get("samples_per_second")
    rate = f", {sps:,.0f} samples/s" if sps else ""
    how = f" ({s['compressor']})" if "compressor" in s else ""
    lines.append(f"  sent {human_bytes(s['total_bytes_sent'])} in all{how}{rate}")
    sim = result.metrics[-1].get("sim_seconds") if result.metrics else None
    if sim is not None:
        lines.append(f"  simulated time on {cfg['network.profile']}: {seconds(sim)}")
    lines.append(f"  time: {s['wall_seconds']:.1f} s training, {elapsed:.1f} s this command")
    files = ", ".join(sorted(f.name for f in out.iterdir() if f.is_file() and f.name != LOCK))
    lines.append(f"  files in {out}{os.sep}: {files}")
    return "\n".join(lines)
