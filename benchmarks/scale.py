"""Round time and peak memory against the number of clients sampled per round.

Workload: MLP 784-200-200-10 (McMahan's 2NN), FedAvg, 1 local epoch, batch 10, lr 0.05, on
clients of ~40 mnist5k images each: the 100 clients of workload W (Dirichlet alpha=0.5,
seed 0), copied as often as needed to populate 10,000 clients. For each K in 10, 100, 1,000,
10,000 sampled clients per round, the vectorized and the looped ``SimRuntime`` (both train
this MLP with the fused step of ``shoal.runtime.fused``, stacked or per client) each run in
a fresh subprocess (so peak RSS is theirs alone); a run's steady round time is the median over
its rounds after the first. Each (K, mode) runs ``--repeats`` times, the modes alternating
within a repeat, so that a ratio compares runs adjacent in time on this shared machine: the
table shows the median over repeats, the speed-up is the median of the repeats' paired
ratios, and their range is printed. Achieved GFLOP/s (3x the forward FLOPs per trained
sample) is compared with a plain float32 matmul on the same machine and thread count (by
default PyTorch's, one thread per core; the median of five timings). With ``--device cuda``
the clients train on the GPU, the yardstick is a float32 8192 x 8192 matmul there, and the
peak memory reported is the GPU's (``torch.cuda.max_memory_allocated``), not the host's.

    python benchmarks/scale.py --json scale.json [--clients 10,100,1000,10000] [--threads 1]
    python benchmarks/scale.py --device cuda --json scale_cuda.json
    python benchmarks/scale.py --modes vectorized,looped,vmapped --clients 10,100,1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _args

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist5k"
MODES = ("vectorized", "looped", "vmapped")
MLP_FWD_FLOPS = 2 * (784 * 200 + 200 * 200 + 200 * 10)  # multiply-adds x 2, per sample


def gflops(samples: float, seconds: float) -> float:
    """Achieved GFLOP/s: a trained sample costs 3x its forward FLOPs (forward + backward)."""
    return 3 * MLP_FWD_FLOPS * samples / seconds / 1e9


def worker(args: argparse.Namespace) -> None:
    """One (K, mode) measurement, printed as one JSON line."""
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from shoal.algorithms.base import LocalWork
    from shoal.algorithms.fedavg import fedavg
    from shoal.data.idx import load_mnist_family
    from shoal.data.partition import dirichlet
    from shoal.functional import init_params
    from shoal.models import mlp
    from shoal.runtime.sim import SimRuntime
    from shoal.schedule import ClientSampler
    from shoal.train import TrainConfig, train

    data = load_mnist_family(args.data_dir)
    base = dirichlet(0.5)(data.train.y.numpy(), 100, np.random.default_rng(0))
    population = max(args.k, 100)
    clients = [base[i % 100] for i in range(population)]
    model, p0 = init_params(mlp, 0)
    cfg = TrainConfig(
        rounds=args.rounds,
        sampler=ClientSampler(args.k),
        work=LocalWork(epochs=1, batch_size=10),
        progress=False,
        eval_every=args.rounds,
        device=args.device,
    )
    rt = SimRuntime(
        vectorize=args.mode != "looped",
        fused=args.mode != "vmapped",
        memory_budget_mb=args.budget_mb,
    )
    times: list[float] = []
    last = [0.0]

    def on_round(row: dict) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the round's kernels have finished
        times.append(row["wall_seconds"] - last[0])
        last[0] = row["wall_seconds"]

    res = train(model, data, clients, fedavg(0.05), cfg, runtime=rt, init=p0, callback=on_round)
    samples = sum(len(clients[c]) for c in range(population)) * args.k / population
    steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    on_gpu = res.params.is_cuda
    print(
        json.dumps(
            {
                "round_seconds": times,
                "steady_round_seconds": steady,
                "peak_rss_mb": peak_mb,
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
                "samples_per_round": samples,
                "gflops": gflops(samples, steady),
                "final_accuracy": res.summary["final_test_accuracy"],
            }
        )
    )


def matmul_gflops(threads: int, device: str, reps: int = 20, timings: int = 5) -> float:
    """The median rate of ``timings`` timings of ``reps`` float32 n x n products (n = 1024 on
    the CPU, 8192 on a GPU, where a small product would time its launch)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    n = 8192 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def clock() -> float:
        if a.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    a @ b
    rates = []
    for _ in range(timings):
        t = clock()
        for _ in range(reps):
            a @ b
        rates.append(2 * n**3 * reps / (clock() - t) / 1e9)
    return statistics.median(rates)


def run_worker(args: argparse.Namespace, k: int, mode: str) -> dict | str:
    """One (K, mode) run in a fresh interpreter: its JSON line, or the error it ended with."""
    cmd = [sys.executable, __file__, "--worker", "--k", str(k), "--mode", mode]
    for flag in ("rounds", "threads", "budget_mb", "data_dir", "device"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict], peak: float) -> dict:
    """The median over repeats of a (K, mode)'s runs; every run is kept under ``repeats``."""
    steady = statistics.median(r["steady_round_seconds"] for r in runs)
    samples = runs[0]["samples_per_round"]
    rate = gflops(samples, steady)
    return {
        "steady_round_seconds": steady,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_gpu_mb": max((r.get("peak_gpu_mb") or 0 for r in runs), default=0) or None,
        "samples_per_round": samples,
        "gflops": rate,
        "fraction_of_matmul": rate / peak,
        "final_accuracy": runs[0]["final_accuracy"],
        "repeats": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--clients",
        type=_args.int_list(1, None, "clients per round"),
        default="10,100,1000,10000",
        metavar="K,K,...",
    )
    ap.add_argument(
        "--modes",
        default="vectorized,looped",
        help="of vectorized (stacked fused step), looped (fused step per client), "
        "vmapped (stacked, autograd through vmap: the path of models the fused step "
        "does not cover)",
    )
    ap.add_argument("--rounds", type=_args.positive_int, default=3)
    ap.add_argument("--repeats", type=_args.positive_int, default=3, help="runs of each (K, mode)")
    ap.add_argument(
        "--threads",
        type=_args.non_negative_int,  # 0 means something here, a negative number nothing
        default=0,
        help="0: PyTorch's default, one per core",
    )
    ap.add_argument("--budget-mb", type=float, default=1024.0)
    ap.add_argument("--looped-max", type=int, default=10000, help="skip the loop above this K")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument(
        "--device", type=_args.device, default="auto", help="auto | cpu | cuda | cuda:N"
    )
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown:  # any other name would run the vectorized mode under that name
        ap.error(f"--modes: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")

    import torch

    peak = matmul_gflops(args.threads, args.device)
    args.threads = torch.get_num_threads()
    gpu = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(args.device) if gpu else f"{args.threads} thread(s)"
    print(f"plain float32 matmul on {args.device} ({where}): {peak:.1f} GFLOP/s")
    print(
        f"MLP 784-200-200-10, FedAvg 1 epoch batch 10, ~40 mnist5k samples per client, "
        f"{args.rounds} rounds, memory budget {args.budget_mb:.0f} MB; median of "
        f"{args.repeats} runs each, in fresh processes\n"
    )
    mem_key = "peak_gpu_mb" if gpu else "peak_rss_mb"
    mem_head = "GPU MiB" if gpu else "peak MiB"
    print(f"{'K':>6} {'mode':>10} {'s/round':>9} {mem_head:>9} {'GFLOP/s':>8} {'of peak':>8}")
    results: dict[str, dict[str, dict]] = {}
    ratios: dict[str, list[float]] = {}
    for k in args.clients:
        modes = [m for m in args.modes.split(",") if m != "looped" or k <= args.looped_max]
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            this: dict[str, dict] = {}  # this repeat's runs: a failed one pairs with nothing
            for mode in modes:
                r = run_worker(args, k, mode)
                if isinstance(r, str):
                    print(f"{k:>6} {mode:>10} failed: {r}")
                else:
                    runs[mode].append(r)
                    this[mode] = r
            if "looped" in this and "vectorized" in this:
                # Paired within this repeat: the two runs were adjacent in time.
                loop, vec = this["looped"], this["vectorized"]
                ratios.setdefault(str(k), []).append(
                    loop["steady_round_seconds"] / vec["steady_round_seconds"]
                )
        for mode, done in runs.items():
            if not done:
                continue
            r = results.setdefault(str(k), {})[mode] = summarize(done, peak)
            print(
                f"{k:>6} {mode:>10} {r['steady_round_seconds']:9.3f} {r[mem_key]:9.0f} "
                f"{r['gflops']:8.1f} {r['fraction_of_matmul']:8.1%}"
            )
    if not results:  # a null headline with exit 0 would read as a finished measurement
        sys.exit("every run failed (see above); nothing measured, no JSON written")
    speedups = {k: statistics.median(v) for k, v in ratios.items()}
    for k, s in speedups.items():
        mem = results[k]["vectorized"][mem_key] / results[k]["looped"][mem_key]
        print(
            f"K={k}: vectorized is {s:.2f}x the loop's speed (median of {len(ratios[k])} paired "
            f"repeats, range {min(ratios[k]):.2f}-{max(ratios[k]):.2f}x) at {mem:.2f}x its "
            "peak memory"
        )
    vec = {k: v["vectorized"] for k, v in results.items() if "vectorized" in v}
    loop = [v["looped"]["fraction_of_matmul"] for v in results.values() if "looped" in v]
    headline = {
        "gflops_fraction": max((v["fraction_of_matmul"] for v in vec.values()), default=None),
        "gflops_fraction_looped": max(loop, default=None),
        "max_clients_per_round": max((int(k) for k in vec), default=0),
        "vectorized_vs_looped_1000": speedups.get("1000"),
    }
    report = {
        "device": args.device,
        "device_name": where,
        "matmul_gflops": peak,
        "threads": args.threads,
        "results": results,
        "repeats": args.repeats,
        "vectorized_vs_looped": speedups,
        "vectorized_vs_looped_per_repeat": ratios,
        "headline": headline,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("headline:", json.dumps(headline))


if __name__ == "__main__":
    main()
