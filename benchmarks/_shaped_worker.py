"""One rank of ``benchmarks/shaped_network.py``: train one configuration to a target accuracy.

Started by the driver (inside a network namespace, or on loopback) with ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and ``GLOO_SOCKET_IFNAME`` set; joins the gloo
group with :func:`shoal.runtime.procgroup.init_from_env`, runs the configurations named by
``--config`` one after the other (several only in the smoke test) and writes
``<config>_rank<r>.json`` into ``--out`` for each.

Every configuration trains the same model from the same initial weights on the same IID
shards, with the same per-worker batch size, learning rate and momentum:

- ``ddp``: the peer, unmodified: ``torch.nn.parallel.DistributedDataParallel`` (gloo) with
  ``torch.optim.SGD(momentum)``. Minibatches are drawn exactly as Shoal draws them
  (:func:`shoal.parallel.batches.draw_positions`), so the data order matches. On the CPU its
  module is put in channels-last memory format (one standard line), which gives its
  convolutions the same oneDNN kernels Shoal's CPU path uses
  (:func:`shoal.functional.channels_last`): the comparison is of communication, not kernels.
- everything else: :func:`shoal.parallel.train_parallel` with one ``shoal.parallel``
  algorithm (see ``shoal_algorithm``).

Evaluation: on the test split every ``--eval-every`` steps (DDP: rank 0, the others wait
for its verdict; Shoal: every rank scores a slice); the clock that measures training time is
stopped meanwhile, so ``time_to_target_seconds`` is training time only, for DDP and for Shoal
alike (``Timed``).

Wire bytes: ``tx_bytes`` is what this process's network interface sent while training, read
from the kernel's counters (``/sys/class/net/<GLOO_SOCKET_IFNAME>/statistics``); on loopback
the interface is shared by all ranks and it is reported as ``None``. It includes what the
evaluations send: the all-gather of test scores, and for methods whose workers' models differ
(local SGD, gossip) one all-reduce of the model per evaluation, which ``payload_bytes`` (the
algorithm's own messages) leaves out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import shoal
from shoal.parallel.batches import Stretch, draw_positions
from shoal.runtime.procgroup import init_from_env, shutdown

CONFIGS = (
    "ddp", "dense", "dense_overlap", "topk_ef", "powersgd", "powersgd_two_round", "dpsgd_ring",
    "dpsgd_ring_lian", "sgp", "sgp_overlap", "local_sgd", "local_sgd_topk", "local_sgd_powersgd",
    "easgd", "dgc",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        required=True,
        help="one of CONFIGS, or several, comma-separated; a ':slow' suffix applies --slowdown",
    )
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--slow-rank", type=int, default=-1, help="the straggler (-1: none)")
    p.add_argument("--slowdown", type=float, default=1.0, help="the straggler's factor")
    p.add_argument("--slow", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-stop", action="store_true", help="run --max-steps, ignore the target")
    p.add_argument("--topk-ratio", type=float, default=0.01)
    p.add_argument("--powersgd-rank", type=int, default=2)
    p.add_argument("--local-period", type=int, default=8)
    p.add_argument("--easgd-period", type=int, default=4)
    p.add_argument("--dgc-density", type=float, default=0.001)
    p.add_argument("--out", required=True, help="folder for <config>_rank<r>.json")
    a = p.parse_args(argv)
    a.configs = a.config.split(",")
    unknown = {c.removesuffix(":slow") for c in a.configs} - set(CONFIGS)
    if unknown:
        p.error(f"unknown configurations {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    return a


# -- setup shared by every configuration -------------------------------------------------------


def build_model(kind: str) -> nn.Module:
    if kind == "cnn":
        return shoal.models.cnn(padding="same")  # McMahan et al.'s CNN, 1,663,370 parameters
    return shoal.models.mlp(784, (200, 200), 10)  # flattens its input itself


def load(a: argparse.Namespace, num_workers: int) -> tuple[Any, list[np.ndarray]]:
    data = shoal.data.load_mnist_family(a.data_dir)
    shards = shoal.data.iid()(data.train.y.numpy(), num_workers, np.random.default_rng(a.seed))
    return data, shards


def tx_counter() -> Path | None:
    ifname = os.environ.get("GLOO_SOCKET_IFNAME")
    if not ifname or ifname == "lo":
        return None
    path = Path(f"/sys/class/net/{ifname}/statistics/tx_bytes")
    return path if path.exists() else None


def read_tx(path: Path | None) -> int | None:
    return int(path.read_text()) if path is not None else None


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train()
    return correct / len(x)


# -- the peer: DistributedDataParallel --------------------------------------------------------


def _positions(seed: int, step: int, worker: int, n: int, batch: int) -> np.ndarray:
    return np.asarray(draw_positions(seed, step, worker, n, batch))  # Shoal's minibatches


def run_ddp(a: argparse.Namespace, rank: int, world: int, data: Any, shards: list) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model, _ = shoal.init_params(lambda: build_model(a.model), seed=a.seed)
    shard = torch.from_numpy(np.asarray(shards[rank], dtype=np.int64))
    xs, ys = data.train.x[shard], data.train.y[shard]
    loss_fn = nn.CrossEntropyLoss()

    if any(p.dim() == 4 for p in model.parameters()):  # see the module docstring
        model = model.to(memory_format=torch.channels_last)
    # Straggler: the emulation of shoal.parallel (shoal.parallel.batches.Stretch). The slow
    # rank sleeps after its forward pass and in a hook on every parameter's gradient, which
    # runs before DDP's own hook marks the gradient ready, so every event of its step (DDP's
    # bucket all-reduces included) happens `slowdown` times later, as on a slower device.
    stretch = Stretch(a.slowdown if a.slow and rank == a.slow_rank else 1.0)
    if stretch.factor > 1.0:
        for p in model.parameters():
            p.register_hook(lambda g: stretch())
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=a.lr, momentum=a.momentum)
    counter = tx_counter()
    flag = torch.zeros(1)
    dist.barrier()
    tx0 = read_tx(counter)
    train_s, curve, reached = 0.0, [], None
    steps = 0
    for step in range(a.max_steps):
        t0 = time.perf_counter()
        pos = torch.from_numpy(_positions(a.seed, step, rank, len(xs), a.batch_size))
        stretch.start()
        loss = loss_fn(ddp(xs[pos]), ys[pos])
        stretch()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_s += time.perf_counter() - t0
        steps = step + 1
        if steps % a.eval_every == 0 or steps == a.max_steps:
            if rank == 0:
                acc = accuracy(model, data.test.x, data.test.y)
                curve.append({"step": steps, "accuracy": acc, "train_seconds": train_s})
                if reached is None and acc >= a.target:
                    reached = {"steps": steps, "seconds": train_s}
                flag.fill_(1.0 if reached is not None and not a.no_stop else 0.0)
            dist.broadcast(flag, 0)
            if flag.item():
                break
    tx = read_tx(counter)
    return {
        "steps": steps,
        "train_seconds": train_s,
        "samples": steps * min(a.batch_size, len(xs)),
        "steps_to_target": reached["steps"] if reached else None,
        "time_to_target_seconds": reached["seconds"] if reached else None,
        "is_server": False,
        "reports": rank == 0,
        "curve": curve,
        "tx_bytes": None if tx0 is None or tx is None else tx - tx0,
        "payload_bytes": None,
    }


# -- Shoal ------------------------------------------------------------------------------------


def shoal_algorithm(
    a: argparse.Namespace, config: str, model: nn.Module, num_workers: int, epoch_steps: int = 0
):
    """``config``'s algorithm; ``epoch_steps`` (a worker's shard over the batch size, rounded
    up) times DGC's warm-up."""
    from shoal import compress, topology
    from shoal.functional import ParamSpec
    from shoal.parallel import dgc, dpsgd, easgd, local_sgd, sgp, sync_sgd

    if config == "dense":  # one all-reduce after the backward pass
        return sync_sgd(a.lr, a.momentum, overlap=False)
    if config == "dense_overlap":  # buckets all-reduced during the backward pass, as DDP
        return sync_sgd(a.lr, a.momentum)
    if config == "topk_ef":
        ef_topk = compress.error_feedback(compress.top_k(ratio=a.topk_ratio))
        return sync_sgd(a.lr, a.momentum, compressor=ef_topk)
    if config in ("powersgd", "powersgd_two_round"):  # every worker's own P and Q gathered,
        # or the paper's two-round all-reduce (a shared P)
        shapes = ParamSpec.of(model).shapes
        ef_psgd = compress.error_feedback(compress.powersgd(shapes, rank=a.powersgd_rank))
        reduce = "two_round" if config == "powersgd_two_round" else "auto"
        return sync_sgd(a.lr, a.momentum, compressor=ef_psgd, reduce=reduce)
    if config == "dpsgd_ring":
        return dpsgd(a.lr, topology.ring(num_workers), momentum=a.momentum)
    if config == "dpsgd_ring_lian":  # Algorithm 1: the models travel while the gradient computes
        return dpsgd(a.lr, topology.ring(num_workers), "lian", momentum=a.momentum)
    if config == "sgp":
        return sgp(a.lr, topology.one_peer_exponential(num_workers), momentum=a.momentum)
    if config == "sgp_overlap":
        top = topology.one_peer_exponential(num_workers)
        return sgp(a.lr, top, overlap=True, momentum=a.momentum)
    if config == "local_sgd":
        return local_sgd(a.lr, a.local_period, momentum=a.momentum)
    if config == "local_sgd_topk":  # Qsparse-local-SGD (Basu et al. 2019)
        ef_topk = compress.error_feedback(compress.top_k(ratio=a.topk_ratio))
        return local_sgd(a.lr, a.local_period, momentum=a.momentum, compressor=ef_topk)
    if config == "local_sgd_powersgd":
        shapes = ParamSpec.of(model).shapes
        ef_psgd = compress.error_feedback(compress.powersgd(shapes, rank=a.powersgd_rank))
        return local_sgd(a.lr, a.local_period, momentum=a.momentum, compressor=ef_psgd)
    if config == "dgc":  # the paper's four-epoch sparsity warm-up, then --dgc-density
        if epoch_steps < 1:
            raise ValueError("dgc needs epoch_steps, the steps of its warm-up's epochs")
        shapes = ParamSpec.of(model).shapes
        return dgc(a.lr, shapes, a.dgc_density, a.momentum, epoch_steps=epoch_steps)
    if config == "easgd":
        # Asynchronous EASGD has no momentum term (EAMSGD's is Nesterov's, with its own
        # delta), so it runs plain SGD at the common learning rate.
        return easgd(a.lr, a.easgd_period, mode="async")
    raise ValueError(f"no Shoal configuration {config!r}")


class _TimedGrad:
    """A gradient closure that adds the time of its calls (the compute) to ``owner``."""

    def __init__(self, inner: Any, owner: Timed) -> None:
        self.inner, self.owner = inner, owner

    @property
    def loss_W(self) -> torch.Tensor | None:
        return self.inner.loss_W

    def __call__(self, at_WD: torch.Tensor, buckets: Any = None) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.inner(at_WD, buckets)
        self.owner.compute_seconds += time.perf_counter() - t0
        return out


class Timed:
    """Delegates to a ``shoal.parallel`` algorithm and times its steps on this rank.

    The loop's own ``time_to_target_seconds`` includes evaluation; the step time summed here
    excludes it, exactly as the DDP loop does, and is known on every rank (the straggler
    throughput needs each worker's own time). ``compute_seconds`` is the part spent in the
    gradient closure (forward, backward, and a straggler's sleep); the rest of a step is
    communication, waiting for peers and the update.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.compute_seconds = 0.0
        self.steps = 0

    def init(self, params_WD: torch.Tensor, comm: Any) -> Any:
        return self.inner.init(params_WD, comm)

    def step(
        self, params_WD: torch.Tensor, grad_fn: Any, state: Any, comm: Any, step: int
    ) -> tuple[torch.Tensor, Any]:
        t0 = time.perf_counter()
        out = self.inner.step(params_WD, _TimedGrad(grad_fn, self), state, comm, step)
        self.seconds += time.perf_counter() - t0
        self.steps += 1
        return out

    def model(self, params_WD: torch.Tensor, state: Any) -> torch.Tensor:
        return self.inner.model(params_WD, state)

    # Asynchronous EASGD's server side, written out: from Python 3.12 on, isinstance() against
    # a runtime-checkable protocol (the loop's ServerAlgorithm) looks attributes up statically,
    # so a method forwarded by __getattr__ would not count and the server would never start.
    def server_rank(self, comm: Any) -> int | None:
        return getattr(self.inner, "server_rank", lambda _comm: None)(comm)

    def serve(self, *args: Any) -> Any:
        return self.inner.serve(*args)

    def finish(self, *args: Any) -> Any:
        return self.inner.finish(*args)


def run_shoal(a: argparse.Namespace, config: str, ctx: Any, data: Any, shards: list) -> dict:
    from shoal.parallel import DistComm, ParallelConfig, train_parallel

    comm = DistComm(ctx)
    model, init = shoal.init_params(lambda: build_model(a.model), seed=a.seed)
    epoch_steps = math.ceil(len(shards[min(ctx.rank, len(shards) - 1)]) / a.batch_size)
    alg = Timed(shoal_algorithm(a, config, model, len(shards), epoch_steps))
    curve: list[dict[str, Any]] = []
    reached: dict[str, Any] = {}

    def on_row(row: dict[str, Any]) -> None:  # called on the reporting rank only
        acc = row["test_accuracy"]
        curve.append({"step": row["step"], "accuracy": acc, "train_seconds": alg.seconds})
        curve[-1]["library_wall_seconds"] = row["wall_seconds"]
        if not reached and acc >= a.target:
            reached.update(steps=row["step"], seconds=alg.seconds)

    slow = {a.slow_rank: a.slowdown} if a.slow and a.slow_rank >= 0 and a.slowdown > 1 else {}
    cfg = ParallelConfig(
        steps=a.max_steps,
        batch_size=a.batch_size,
        seed=a.seed,
        eval_every=a.eval_every,
        target_accuracy=None if a.no_stop else a.target,
        progress=False,
        slowdown=slow,
    )
    counter = tx_counter()
    dist.barrier()
    tx0 = read_tx(counter)
    result = train_parallel(model, data, shards, alg, cfg, comm, init=init, callback=on_row)
    tx = read_tx(counter)
    server = alg.server_rank(comm)
    is_server = server is not None and ctx.rank == server
    samples = 0 if is_server else alg.steps * min(a.batch_size, len(shards[ctx.rank]))
    return {
        "steps": alg.steps,
        "train_seconds": alg.seconds,
        "compute_seconds": alg.compute_seconds,
        "samples": samples,
        "is_server": is_server,
        "reports": bool(result.metrics),
        "steps_to_target": reached.get("steps"),
        "time_to_target_seconds": reached.get("seconds"),
        "library_summary": result.summary,
        # DGC's sparsity warm-up: the steps before its messages reach their final density.
        "warmup_steps": alg.inner.rule.warmup_epochs * epoch_steps if config == "dgc" else None,
        "curve": curve,
        "tx_bytes": None if tx0 is None or tx is None else tx - tx0,
        "payload_bytes": comm.bytes_sent,
    }


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(1)
    ctx = init_from_env()
    rank, world = ctx.rank, ctx.world_size
    torch.manual_seed(a.seed)
    # Asynchronous EASGD's parameter server is one more process (the last rank), not a worker.
    names = [c.removesuffix(":slow") for c in a.configs]
    if "easgd" in names and set(names) != {"easgd"}:
        raise ValueError("easgd runs alone: its last rank is the parameter server")
    num_workers = world - 1 if "easgd" in names else world
    data, shards = load(a, num_workers)
    for item, config in zip(a.configs, names):  # several only in the smoke test
        a.slow = item.endswith(":slow")
        dist.barrier()
        if config == "ddp":
            result = run_ddp(a, rank, world, data, shards)
        else:
            result = run_shoal(a, config, ctx, data, shards)
        result.update(rank=rank, world_size=world, config=config, slow=a.slow)
        Path(a.out, f"{item.replace(':', '_')}_rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    shutdown()


if __name__ == "__main__":
    main()
