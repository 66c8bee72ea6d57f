"""Deep Gradient Compression against dense synchronous momentum SGD, data-parallel, mnist5k CNN.

Setup: the 4,000 mnist5k training images split IID over ``--workers`` workers (``iid()``,
``default_rng(seed)``), McMahan's CNN without padding (``cnn(padding="valid")``, 582,026
parameters, init seed ``--seed``). Every worker takes one minibatch step per round and uploads;
the server averages and steps. Both runs start from the same weights and see the same minibatches
(batches are keyed by seed, round and worker); only the algorithm's upload and the wire differ:

- dense: :class:`shoal.algorithms.DGC` at density 1 without momentum factor masking, which *is*
  synchronous momentum SGD on the averaged gradient (``tests/algorithms/test_dgc.py`` checks it
  against ``torch.optim.SGD(momentum)`` to 1e-5); the uplink is uncompressed float32
  (``identity()``: 4 bytes per parameter plus framing).
- DGC: density ``--density`` (0.1%) after the paper's sparsity warm-up (1/4, 1/16, 1/64, 1/256
  over four epochs of ``ceil(shard / batch)`` rounds), DGC's sampled threshold (sample ratio
  1%), momentum correction and factor masking, no gradient clipping (off in every shipped config
  of the reference); its uplink is :attr:`DGC.default_compressor` (every weight tensor as
  (value, index) pairs, the 618 biases dense), so the bytes are what DGC really sends.

Test accuracy on the 1,000 test images every ``--eval-every`` rounds and at the end. The headline
is the final accuracy drop (dense minus DGC, in points) and the total uplink byte ratio
(dense / DGC). Timing is not the point; one torch thread.

    python benchmarks/dgc_mnist5k.py --json benchmarks/results/dgc_mnist5k.json   # as committed
    python benchmarks/dgc_mnist5k.py --rounds 50                                  # a quick look
    python benchmarks/dgc_mnist5k.py --form parallel \
        --json benchmarks/results/dgc_mnist5k_parallel.json    # on shoal.parallel's loop

``--form parallel`` runs the same comparison on the data-parallel loop: dense
``shoal.parallel.sync_sgd`` (momentum SGD, gradients all-reduced) against
``shoal.parallel.dgc`` (the same update rule, its messages all-gathered); "uplink" is then
every worker's message once a step (``bytes_sent``), the all-reduced gradient counting 4 bytes
a parameter.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import _args

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist5k"


def shown(path: Path | str) -> str:
    """A path relative to the repository root (no machine paths in the output)."""
    return os.path.relpath(Path(path).resolve(), REPO)


def training_images(data_dir: str) -> int | None:
    """The number of training images, from the IDX header of ``train-images-idx3-ubyte.gz``
    (no loading); None if the header cannot be read (the loading will then say why)."""
    try:
        with gzip.open(Path(data_dir) / "train-images-idx3-ubyte.gz") as f:
            magic, count = struct.unpack(">II", f.read(8))
    except (OSError, EOFError, struct.error):
        return None
    return count if magic == 0x803 else None


def last_round_after_warmup(rows: list[dict[str, Any]], warm: int) -> int | None:
    """The federated form's uplink bytes a round after the warm-up: its last round's (rows of
    every round); None when the run ended within the warm-up's ``warm`` rounds."""
    return rows[-1]["uplink_bytes"] if len(rows) > warm else None


def per_step_after_warmup(rows: list[dict[str, Any]], warm: int) -> float | None:
    """``--form parallel``'s bytes a step after the warm-up's ``warm`` steps: the cumulative
    bytes between the first evaluation at or after its end and the last evaluation, over their
    steps; None without two such evaluations (the run ended within, or just after, it)."""
    start = {"step": 0, "bytes_sent": 0}  # nothing sent before the first step
    after = [r for r in [start, *rows] if r["step"] >= warm]
    if len(after) < 2:
        return None
    first, last = after[0], after[-1]
    return (last["bytes_sent"] - first["bytes_sent"]) / (last["step"] - first["step"])


def run_one(a: argparse.Namespace, dense: bool) -> dict[str, Any]:
    from shoal.algorithms import dgc
    from shoal.compress import identity
    from shoal.data import iid, load_mnist_family
    from shoal.functional import ParamSpec, init_params
    from shoal.models import cnn
    from shoal.runtime.sim import SimRuntime
    from shoal.schedule import ClientSampler
    from shoal.train import TrainConfig, train

    data = load_mnist_family(a.data_dir, name="mnist")
    clients = iid()(data.train.y.numpy(), a.workers, np.random.default_rng(a.seed))
    model, p0 = init_params(lambda: cnn(padding="valid"), a.seed)
    shapes = ParamSpec.of(model).shapes
    epoch = math.ceil(min(len(c) for c in clients) / a.batch_size)  # rounds per local epoch
    if dense:
        alg = dgc(a.lr, shapes, density=1.0, momentum=a.momentum, batch_size=a.batch_size,
                  momentum_masking=False)  # fmt: skip
        compressor: Any = identity()
    else:
        alg = dgc(a.lr, shapes, density=a.density, momentum=a.momentum, batch_size=a.batch_size,
                  epoch_steps=epoch, warmup_epochs=a.warmup_epochs)  # fmt: skip
        compressor = alg.default_compressor
    cfg = TrainConfig(
        rounds=a.rounds,
        sampler=ClientSampler(a.workers),
        work=alg.work_override,
        weighting="uniform",
        seed=a.seed,
        eval_every=a.eval_every,
        device="cpu",
        progress=a.progress,
        client_eval=False,
    )
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    train(
        model,
        data,
        clients,
        alg,
        cfg,
        runtime=SimRuntime(),
        init=p0,
        compressor=compressor,
        callback=rows.append,
    )
    evaluated = [r for r in rows if r["test_accuracy"] is not None]
    warm_rounds = min(alg.warmup_epochs * alg.epoch_steps, len(rows))
    return {
        "algorithm": "dense momentum SGD" if dense else f"DGC density {a.density}",
        "compressor": compressor.name,
        "final_accuracy": evaluated[-1]["test_accuracy"],
        "best_accuracy": max(r["test_accuracy"] for r in evaluated),
        "mean_last5_eval_accuracy": float(np.mean([r["test_accuracy"] for r in evaluated[-5:]])),
        "final_test_loss": evaluated[-1]["test_loss"],
        "total_uplink_bytes": rows[-1]["cum_uplink_bytes"],
        "uplink_bytes_per_round_after_warmup": last_round_after_warmup(rows, warm_rounds),
        "uplink_bytes_during_warmup": rows[warm_rounds - 1]["cum_uplink_bytes"]
        if warm_rounds
        else 0,
        "warmup_rounds": warm_rounds,
        "rounds_per_epoch": epoch,
        "eval_rounds": [r["round"] for r in evaluated],
        "accuracy": [r["test_accuracy"] for r in evaluated],
        "train_loss": [r["train_loss"] for r in rows],
        "wall_s": time.perf_counter() - t0,
    }


def run_one_parallel(a: argparse.Namespace, dense: bool) -> dict[str, Any]:
    """The same comparison on :mod:`shoal.parallel`'s data-parallel loop (``--form parallel``):
    dense synchronous momentum SGD (``sync_sgd``, gradients all-reduced) against
    ``shoal.parallel.dgc`` (messages all-gathered), the workers simulated in one process."""
    from shoal.data import iid, load_mnist_family
    from shoal.functional import ParamSpec, init_params
    from shoal.models import cnn
    from shoal.parallel import ParallelConfig, SimComm, dgc, sync_sgd, train_parallel

    data = load_mnist_family(a.data_dir, name="mnist")
    shards = iid()(data.train.y.numpy(), a.workers, np.random.default_rng(a.seed))
    model, p0 = init_params(lambda: cnn(padding="valid"), a.seed)
    epoch = math.ceil(sum(len(s) for s in shards) / a.workers / a.batch_size)
    if dense:
        alg: Any = sync_sgd(a.lr, a.momentum)
    else:
        shapes = ParamSpec.of(model).shapes
        alg = dgc(a.lr, shapes, a.density, a.momentum, warmup_epochs=a.warmup_epochs,
                  epoch_steps=epoch)  # fmt: skip
    cfg = ParallelConfig(
        steps=a.rounds, batch_size=a.batch_size, seed=a.seed, eval_every=a.eval_every,
        device="cpu", progress=a.progress,
    )  # fmt: skip
    t0 = time.perf_counter()
    rows = train_parallel(model, data, shards, alg, cfg, SimComm(a.workers), init=p0).metrics
    warm = 0 if dense else a.warmup_epochs * epoch
    return {
        "algorithm": "dense momentum SGD (sync_sgd)" if dense else f"DGC density {a.density}",
        "compressor": "all-reduce, float32" if dense else "(value, index) pairs, all-gathered",
        "final_accuracy": rows[-1]["test_accuracy"],
        "best_accuracy": max(r["test_accuracy"] for r in rows),
        "mean_last5_eval_accuracy": float(np.mean([r["test_accuracy"] for r in rows[-5:]])),
        "final_test_loss": rows[-1]["test_loss"],
        "total_uplink_bytes": rows[-1]["bytes_sent"],  # every worker's message, once
        "uplink_bytes_per_round_after_warmup": per_step_after_warmup(rows, warm),
        "warmup_rounds": warm,
        "rounds_per_epoch": epoch,
        "eval_rounds": [r["step"] for r in rows],
        "accuracy": [r["test_accuracy"] for r in rows],
        "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=_args.positive_int, default=8)
    ap.add_argument(
        "--rounds", type=_args.positive_int, default=600, help="rounds (= synchronous SGD steps)"
    )
    ap.add_argument("--batch-size", type=_args.positive_int, default=32, help="per worker")
    # Checked now: dgc() refused a bad one only once the dense run (~3 min) was over.
    ap.add_argument("--lr", type=_args.positive_float, default=0.05)
    ap.add_argument("--momentum", type=_args.float_in(0, 1, hi_open=True), default=0.9)
    ap.add_argument("--density", type=float, default=0.001)
    ap.add_argument("--warmup-epochs", type=_args.non_negative_int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=_args.positive_int, default=25)
    ap.add_argument("--threads", type=_args.positive_int, default=1)
    ap.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help=f"mnist5k (IDX files; default: {shown(DEFAULT_DATA_DIR)} from the repository root)",
    )
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    ap.add_argument(
        "--form",
        choices=("federated", "parallel"),
        default="federated",
        help="the federated loop (every client every round; as committed) or shoal.parallel",
    )
    a = ap.parse_args()
    if not 0 < a.density <= 1:  # else refused by dgc() only after the whole dense run
        ap.error(f"--density must be in (0, 1], got {a.density}")
    _args.check_mnist5k(ap, a.data_dir)
    if (n := training_images(a.data_dir)) is not None and a.workers > n:  # else a shard is empty
        ap.error(f"--workers must be <= {n}, the training images in {a.data_dir}, got {a.workers}")
    torch.set_num_threads(a.threads)
    started = time.perf_counter()
    results = {}
    for key, dense in (("dense", True), ("dgc", False)):
        r = (run_one if a.form == "federated" else run_one_parallel)(a, dense)
        results[key] = r
        print(
            f"{r['algorithm']:<22} final {100 * r['final_accuracy']:.2f}%  best "
            f"{100 * r['best_accuracy']:.2f}%  uplink {r['total_uplink_bytes'] / 1e6:.2f} MB  "
            f"({r['wall_s']:.0f} s)",
            flush=True,
        )
    d, c = results["dense"], results["dgc"]
    headline = {
        "dgc_acc_drop": 100 * (d["final_accuracy"] - c["final_accuracy"]),
        "dgc_acc_drop_mean_last5_evals": 100
        * (d["mean_last5_eval_accuracy"] - c["mean_last5_eval_accuracy"]),
        "dgc_byte_reduction": d["total_uplink_bytes"] / c["total_uplink_bytes"],
    }
    dense_after, dgc_after = (r["uplink_bytes_per_round_after_warmup"] for r in (d, c))
    after = None if dgc_after is None else dense_after / dgc_after
    statement = (
        f"mnist5k ({shown(a.data_dir)}), 4,000 training images IID over {a.workers} workers "
        f"(default_rng({a.seed})), cnn(padding='valid') (582,026 parameters, init seed {a.seed}), "
        f"data-parallel: every worker one step of batch {a.batch_size} per round, lr {a.lr}, "
        f"momentum {a.momentum}, {a.rounds} rounds, seed {a.seed}. Dense: synchronous momentum "
        f"SGD, float32 uplink. DGC: density {a.density} after the paper's {a.warmup_epochs}-epoch "
        f"sparsity warm-up ({c['rounds_per_epoch']} rounds per epoch), sampled threshold, "
        "momentum correction and factor masking, no clipping, exact (value, index) uplink. "
        f"{a.threads} torch thread(s), torch {torch.__version__}. Form: {a.form} ("
        + (
            "shoal.train, every client every round"
            if a.form == "federated"
            else "shoal.parallel: sync_sgd's all-reduce against dgc's all-gather, SimComm"
        )
        + ")."
    )
    print("\n" + statement)  # what was compared, on what (the JSON's statement)
    drop, fewer = headline["dgc_acc_drop"], headline["dgc_byte_reduction"]
    if after is not None:
        per_round = f"{after:.0f}x per round after the warm-up"
    else:  # --form parallel measures between evaluations: two from the warm-up's end on
        warm = a.warmup_epochs * c["rounds_per_epoch"]
        when = "within" if a.form == "federated" else "before two evaluations from the end of"
        per_round = (
            f"per round after the warm-up n/a (the run ended {when} DGC's {warm}-round warm-up)"
        )
    print(
        f"\naccuracy drop {drop:+.2f} points; uplink {fewer:.1f}x fewer bytes in total, {per_round}"
    )
    report = {
        "statement": statement,
        "settings": {
            "workers": a.workers,
            "rounds": a.rounds,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "momentum": a.momentum,
            "density": a.density,
            "warmup_epochs": a.warmup_epochs,
            "warmup_schedule": "paper (1/4, 1/16, 1/64, 1/256 per epoch, then the density)",
            "seed": a.seed,
            "form": a.form,
            "eval_every": a.eval_every,
            "threads": a.threads,
            "data_dir": shown(a.data_dir),
            "total_seconds": time.perf_counter() - started,
        },
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            # The kernels' instruction set: float rounding, hence accuracies, depend on it.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "results": results,
        "byte_reduction_per_round_after_warmup": after,
        "targets": {"within_1_point": headline["dgc_acc_drop"] <= 1.0},
        "headline": headline,
    }
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    print("headline:", json.dumps(headline))


if __name__ == "__main__":
    main()
