"""Real distributed training over a rate-limited network: Shoal's algorithms against DDP.

Four worker processes, each in its own network namespace, joined through a bridge by veth
links whose rate ``tc`` caps in both directions (``benchmarks/_netns.py``), train McMahan et
al.'s CNN on mnist5k to a target test accuracy. Measured side by side in one run, for every
link rate given: PyTorch ``DistributedDataParallel`` (the peer, unmodified), Shoal synchronous
dense SGD (``dense``: one all-reduce after the backward pass; ``dense_overlap``, the default:
DDP's buckets, all-reduced during the backward pass), Shoal with top-k + error feedback,
Shoal with PowerSGD, D-PSGD on a ring, SGP on the one-peer exponential graph and local SGD;
``--configs`` also takes the overlapped forms
(``dpsgd_ring_lian``: D-PSGD's Algorithm 1, the models sent before the gradient is computed;
``sgp_overlap``). Each configuration's time to target counts training only (evaluation time
is excluded for all of them alike).

``--straggler`` adds: one worker made 5x slower (it sleeps 4x its compute so far before each
gradient bucket is handed over and at the end, so every event of its step happens 5x later:
``shoal.parallel.batches.Stretch``, the same emulation for DDP and for Shoal), and the
training throughput (the sum over workers of samples per second of own training time, a fixed
number of steps each) of DDP, synchronous SGD, SGP, overlap SGP and asynchronous EASGD with
and without the straggler. Asynchronous EASGD runs the same workers plus its parameter server,
one more process in one more namespace.

Bytes sent per worker are read from the kernel's counters of each worker's interface (IP and
TCP headers included); the JSON also lists the payload bytes as Shoal counts them.

    sudo .venv/bin/python benchmarks/shaped_network.py --straggler \
        --json benchmarks/results/shaped_network.json
    .venv/bin/python benchmarks/shaped_network.py --no-netns --one-launch --workers 2 \
        --model mlp --max-steps 20 --json runs/shaped_smoke.json

Needs root and iproute2 for the namespaces; ``--no-netns`` runs the workers on loopback with
no shaping (for the smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _args  # noqa: E402
import _netns  # noqa: E402
from shoal.runtime.spawn import free_port  # noqa: E402

# Chosen before measuring, from the papers' usual settings, and the same at every bandwidth.
TOPK_RATIO = 0.01  # Lin et al. 2018 (DGC) and Stich et al. 2018 keep 0.1-1%
POWERSGD_RANK = 2  # Vogels et al. 2019's default for ResNet-18 ("rank 2 matches SGD")
LOCAL_SGD_PERIOD = 8  # steps between averages (Lin et al. 2020 use H in 4..16)
EASGD_PERIOD = 4  # tau of asynchronous EASGD (Zhang et al. 2015 use 4..64)
DGC_DENSITY = 0.001  # Lin et al. 2018's 99.9% sparsity, after their four-epoch warm-up

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_shaped_worker.py")
MAIN_CONFIGS = (
    "ddp", "dense", "dense_overlap", "topk_ef", "powersgd", "dpsgd_ring", "sgp", "local_sgd",
    "local_sgd_topk", "local_sgd_powersgd",
)  # fmt: skip
STRAGGLER_CONFIGS = ("ddp", "dense", "sgp", "sgp_overlap", "easgd")
# "Compressed or decentralized" configurations, the candidates for the headline speedup.
REDUCED = (
    "topk_ef", "powersgd", "dpsgd_ring", "sgp", "local_sgd", "local_sgd_topk", "local_sgd_powersgd",
    "dgc",
)  # fmt: skip
LABELS = {
    "ddp": "PyTorch DDP (peer)",
    "dense": "Shoal sync SGD, dense, all-reduce after the backward",
    "dense_overlap": "Shoal sync SGD, dense, buckets overlapping the backward",
    "topk_ef": f"Shoal top-k {TOPK_RATIO:g} + EF",
    "powersgd": f"Shoal PowerSGD rank {POWERSGD_RANK}",
    "powersgd_two_round": f"Shoal PowerSGD rank {POWERSGD_RANK}, two-round all-reduce",
    "dpsgd_ring": "Shoal D-PSGD, ring",
    "dpsgd_ring_lian": "Shoal overlap D-PSGD, ring",
    "sgp": "Shoal SGP, 1-peer exp.",
    "sgp_overlap": "Shoal overlap SGP, 1-peer",
    "local_sgd": f"Shoal local SGD, H={LOCAL_SGD_PERIOD}",
    "local_sgd_topk": f"Shoal Qsparse local SGD, H={LOCAL_SGD_PERIOD}, top-k {TOPK_RATIO:g} + EF",
    "local_sgd_powersgd": f"Shoal local SGD, H={LOCAL_SGD_PERIOD}, PowerSGD r{POWERSGD_RANK} + EF",
    "easgd": f"Shoal async EASGD, tau={EASGD_PERIOD}",
    "dgc": f"Shoal DGC, density {DGC_DENSITY:g} after warm-up",
}


def shown(path: str | Path) -> str:
    """A path relative to the repository root (no machine paths in outputs)."""
    return os.path.relpath(Path(path).resolve(), REPO)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--json", type=_args.json_path, required=True, help="where to write every figure"
    )
    p.add_argument("--bandwidths", default="100mbit,1gbit", help="tc rates; 'none' = unshaped")
    p.add_argument(
        "--configs",
        default=",".join(MAIN_CONFIGS),
        help=f"comma-separated, from {', '.join(LABELS)}; 'none': only --straggler",
    )
    p.add_argument("--target", type=float, default=0.95, help="test accuracy to reach")
    p.add_argument("--max-steps", type=int, default=600, help="step cap per configuration")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--straggler", action="store_true", help="also run the straggler comparison")
    p.add_argument("--straggler-factor", type=float, default=5.0)
    p.add_argument("--straggler-steps", type=int, default=60, help="steps per worker")
    p.add_argument("--straggler-bandwidth", default="1gbit")
    p.add_argument("--straggler-configs", default=",".join(STRAGGLER_CONFIGS))
    p.add_argument("--no-netns", action="store_true", help="loopback, no shaping (smoke test)")
    p.add_argument(
        "--one-launch",
        action="store_true",
        help="smoke test: every configuration in one set of processes (one start-up)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument(
        "--data-dir",
        default=str(REPO.parent / "shared" / "data" / "mnist5k"),
        help="mnist5k IDX files (default: ../shared/data/mnist5k from the repository root)",
    )
    a = p.parse_args(argv)
    a.bandwidth_list = [b.strip() for b in a.bandwidths.split(",") if b.strip()]
    a.config_list = [c.strip() for c in a.configs.split(",") if c.strip() not in ("", "none")]
    a.straggler_list = [c.strip() for c in a.straggler_configs.split(",") if c.strip()]
    known = tuple(LABELS)
    for c in a.config_list + a.straggler_list:
        if c not in known:
            p.error(f"unknown configuration {c!r}; choose from {', '.join(known)}")
    for b in [*a.bandwidth_list, a.straggler_bandwidth]:
        if b != "none":
            try:
                _netns.parse_rate(b)
            except ValueError as err:
                p.error(str(err))
    if a.no_netns and any(b != "none" for b in a.bandwidth_list):
        a.bandwidth_list = ["none"]  # loopback cannot be shaped
    if a.no_netns:
        a.straggler_bandwidth = "none"
    if not 2 <= a.workers <= 64:
        p.error("--workers must be in 2..64")
    if not 0 < a.target <= 1:
        p.error("--target is an accuracy in (0, 1]")
    if not Path(a.data_dir).exists():
        p.error(f"--data-dir {a.data_dir} does not exist")
    return a


# -- launching one configuration ---------------------------------------------------------------


class Launcher:
    """Starts the ranks of one run, in the namespaces or on loopback."""

    def __init__(self, a: argparse.Namespace, net: _netns.Network | None, logs: Path) -> None:
        self.a, self.net, self.logs = a, net, logs
        self.port = 29600
        self.count = 0

    def _port(self) -> int:
        if self.net is not None:  # every namespace has its own port space
            self.port += 1
            return self.port
        return free_port()

    def run(self, configs: list[str], extra: list[str]) -> list[dict[str, Any]]:
        """Run ``configs`` one after the other in one set of rank processes."""
        a = self.a
        # Asynchronous EASGD: the same workers plus its parameter server, as the last rank.
        names = {c.removesuffix(":slow") for c in configs}
        world = a.workers + 1 if names == {"easgd"} else a.workers
        assert "easgd" not in names or len(names) == 1
        self.count += 1
        out = self.logs / f"run{self.count:03d}_{'_'.join(configs)}"
        out.mkdir(parents=True)
        port = self._port()
        args = [
            "--config", ",".join(configs), "--data-dir", a.data_dir, "--model", a.model,
            "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--momentum", str(a.momentum),
            "--seed", str(a.seed), "--target", str(a.target), "--max-steps", str(a.max_steps),
            "--eval-every", str(a.eval_every), "--out", str(out),
            "--topk-ratio", str(TOPK_RATIO), "--powersgd-rank", str(POWERSGD_RANK),
            "--local-period", str(LOCAL_SGD_PERIOD), "--easgd-period", str(EASGD_PERIOD),
            "--dgc-density", str(DGC_DENSITY), *extra,
        ]  # fmt: skip
        procs, files = [], []
        t0 = time.perf_counter()
        for rank in range(world):
            env = dict(
                os.environ,
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world),
                MASTER_PORT=str(port),
                OMP_NUM_THREADS="1",
                MKL_NUM_THREADS="1",
                PYTHONUNBUFFERED="1",
            )
            if self.net is not None:
                env.update(self.net.env(rank))
                prefix = self.net.exec_prefix(rank)
            else:
                env.update(GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
                prefix = []
            log = open(out / f"rank{rank}.log", "wb")  # noqa: SIM115 (closed below)
            files.append(log)
            cmd = [*prefix, sys.executable, str(WORKER), *args]
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        codes = _netns.wait_all(procs, a.timeout)
        wall = time.perf_counter() - t0
        for f in files:
            f.close()
        failed = [r for r, c in enumerate(codes) if c != 0]
        records = []
        for item in configs:
            config = item.removesuffix(":slow")
            record: dict[str, Any] = {"config": config, "slow": item.endswith(":slow")}
            record["process_wall_seconds"] = wall
            found = [out / f"{item.replace(':', '_')}_rank{r}.json" for r in range(world)]
            if all(f.exists() for f in found):
                records.append(merge(record, [json.loads(f.read_text()) for f in found]))
                continue
            r = failed[0] if failed else 0
            tail = (out / f"rank{r}.log").read_text(errors="replace").splitlines()[-15:]
            record.update(error=f"rank {r} exited with {codes[r]}", log_tail=tail)
            print(f"  !! {config}: rank {r} exited with {codes[r]}:\n    " + "\n    ".join(tail))
            records.append(record)
        return records


def _mean_or_none(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known and len(known) == len(values) else None


def merge(record: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One record of a run from its ranks' files (the reporting rank's curve and target)."""
    main = next(r for r in ranks if r["reports"])
    workers = [r for r in ranks if not r["is_server"]]
    tx = [r.get("tx_bytes") for r in workers]
    payload = [r.get("payload_bytes") for r in workers]
    slowest = max(r["train_seconds"] for r in workers)
    samples = sum(r["samples"] for r in workers)
    rates = [r["samples"] / r["train_seconds"] for r in workers if r["train_seconds"] > 0]
    record.update(
        steps=workers[0]["steps"],
        steps_per_worker=[r["steps"] for r in workers],
        train_seconds=workers[0]["train_seconds"],
        train_seconds_per_worker=[r["train_seconds"] for r in workers],
        compute_seconds_per_worker=[r.get("compute_seconds") for r in workers],
        steps_to_target=main["steps_to_target"],
        time_to_target_seconds=main["time_to_target_seconds"],
        reached=main["time_to_target_seconds"] is not None,
        best_accuracy=max((c["accuracy"] for c in main["curve"]), default=None),
        final_accuracy=main["curve"][-1]["accuracy"] if main["curve"] else None,
        curve=main["curve"],
        tx_bytes_per_rank=tx,
        tx_bytes_per_worker=_mean_or_none(tx),
        payload_bytes_per_rank=payload,
        payload_bytes_per_worker=_mean_or_none(payload),
        server_tx_bytes=next((r.get("tx_bytes") for r in ranks if r["is_server"]), None),
        library_summary=main.get("library_summary"),
        warmup_steps=main.get("warmup_steps"),
        samples=samples,
        samples_per_second=sum(rates) if len(rates) == len(workers) else None,
        samples_per_second_to_slowest=samples / slowest if slowest > 0 else None,
    )
    return record


# -- the comparison -----------------------------------------------------------------------------


@contextlib.contextmanager
def shaped(a: argparse.Namespace) -> Iterator[_netns.Network | None]:
    if a.no_netns:
        yield None
        return
    extra = "easgd" in a.config_list or (a.straggler and "easgd" in a.straggler_list)
    with _netns.network(a.workers + extra) as net:  # EASGD's server gets a namespace too
        yield net


def set_rate(net: _netns.Network | None, bandwidth: str) -> None:
    if net is not None:
        net.set_rate(None if bandwidth == "none" else bandwidth)


def cpu_capability() -> str:
    """The instruction set PyTorch's CPU kernels use here: float results, and so training
    curves, differ across them (README, "On another CPU")."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def shoal_parallel_missing() -> str | None:
    try:
        from shoal.parallel import train_parallel  # noqa: F401
    except ImportError as err:
        return f"shoal.parallel is not importable here ({err})"
    return None


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _compute_per_step(run: dict[str, Any]) -> float | None:
    """Mean over workers of the time in the gradient closure per step (Shoal only)."""
    pairs = zip(run["compute_seconds_per_worker"], run["steps_per_worker"])
    vals = [c / n for c, n in pairs if c is not None and n]
    return statistics.mean(vals) if vals and len(vals) == len(run["steps_per_worker"]) else None


def _seconds_per_step_after(curve: list[dict[str, Any]], start: int) -> float | None:
    """Training seconds per step between the first evaluation at or after step ``start`` and
    the last one."""
    later = [p for p in curve if p["step"] >= start]
    if len(later) < 2:
        return None
    return (later[-1]["train_seconds"] - later[0]["train_seconds"]) / (
        later[-1]["step"] - later[0]["step"]
    )


def summarize(runs: list[dict[str, Any]], bandwidths: list[str], configs: list[str]) -> dict:
    out: dict[str, dict[str, Any]] = {}
    for bw in bandwidths:
        rows = {c: [r for r in runs if r["bandwidth"] == bw and r["config"] == c] for c in configs}
        per: dict[str, Any] = {}
        for c, rs in rows.items():
            ok = [r for r in rs if "error" not in r]
            per[c] = {
                "runs": len(rs),
                "failed": len(rs) - len(ok),
                "reached": sum(r["reached"] for r in ok),
                "steps_to_target": _median(ok, "steps_to_target"),
                "time_to_target_seconds": _median(ok, "time_to_target_seconds"),
                "seconds_per_step": _median(
                    [{"v": r["train_seconds"] / r["steps"]} for r in ok if r["steps"]], "v"
                ),
                "compute_seconds_per_step": _median([{"v": _compute_per_step(r)} for r in ok], "v"),
                "tx_bytes_per_worker": _median(ok, "tx_bytes_per_worker"),
                "payload_bytes_per_worker": _median(ok, "payload_bytes_per_worker"),
                "best_accuracy": _median(ok, "best_accuracy"),
                "steps": _median(ok, "steps"),
            }
            if c == "dgc":  # its steady state, once the warm-up's large messages are over
                after = [{"v": _seconds_per_step_after(r["curve"], r["warmup_steps"])} for r in ok]
                per[c]["seconds_per_step_after_warmup"] = _median(after, "v")
        ddp = per.get("ddp", {}).get("time_to_target_seconds")
        for s in per.values():
            t = s["time_to_target_seconds"]
            s["speedup_vs_ddp"] = ddp / t if ddp and t else None
        out[bw] = per
    return out


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    at = summary.get("100mbit", {})
    cands = [(s["speedup_vs_ddp"], c) for c, s in at.items() if c in REDUCED]
    cands = [x for x in cands if x[0] is not None]
    best = max(cands) if cands else (None, None)

    def vs_ddp(config: str, bw: str = "100mbit") -> float | None:
        times = {
            c: summary.get(bw, {}).get(c, {}).get("time_to_target_seconds") for c in (config, "ddp")
        }
        return times[config] / times["ddp"] if times[config] and times["ddp"] else None

    return {
        "best_speedup_vs_ddp_100mbit": best[0],
        "best_config_100mbit": best[1],
        "dense_vs_ddp_time_ratio": vs_ddp("dense"),
        # Shoal's default: buckets all-reduced during the backward pass, as DDP does.
        "dense_overlap_vs_ddp_time_ratio": vs_ddp("dense_overlap"),
        "dense_overlap_vs_ddp_time_ratio_1gbit": vs_ddp("dense_overlap", "1gbit"),
        "dgc_vs_ddp_time_ratio": vs_ddp("dgc"),
        "dgc_vs_ddp_time_ratio_1gbit": vs_ddp("dgc", "1gbit"),
    }


def launch_groups(items: list[str], one_launch: bool) -> list[list[str]]:
    """Each item in fresh processes, or (smoke test) all in one launch; EASGD always apart,
    since it has one more rank (its parameter server)."""
    if not one_launch:
        return [[c] for c in items]
    easgd = [c for c in items if c.removesuffix(":slow") == "easgd"]
    rest = [c for c in items if c not in easgd]
    return [g for g in (rest, easgd) if g]


def run_straggler(a: argparse.Namespace, launcher: Launcher, net: Any) -> dict[str, Any]:
    set_rate(net, a.straggler_bandwidth)
    slow = a.workers - 1  # not rank 0, which also evaluates
    rows: dict[str, dict[str, Any]] = {c: {} for c in a.straggler_list}
    common = ["--no-stop", "--max-steps", str(a.straggler_steps)]
    common += ["--eval-every", str(a.straggler_steps)]
    common += ["--slow-rank", str(slow), "--slowdown", str(a.straggler_factor)]
    # Without and with the straggler, one after the other for each configuration.
    items = [x for c in a.straggler_list for x in (c, f"{c}:slow")]
    for group in launch_groups(items, a.one_launch):
        print(f"[straggler {a.straggler_bandwidth}] {','.join(group)} ...", flush=True)
        for rec in launcher.run(group, common):
            rec["bandwidth"] = a.straggler_bandwidth
            rows[rec["config"]]["straggler" if rec["slow"] else "no_straggler"] = rec
    for r in rows.values():
        b, s = r["no_straggler"].get("samples_per_second"), r["straggler"].get("samples_per_second")
        r["throughput_kept"] = s / b if b and s else None
    sync = rows.get("dense", {}).get("straggler", {}).get("samples_per_second")
    for r in rows.values():
        s = r["straggler"].get("samples_per_second")
        r["vs_sync_sgd_under_straggler"] = s / sync if s and sync else None
    return {
        "bandwidth": a.straggler_bandwidth,
        "slow_rank": slow,
        "factor": a.straggler_factor,
        "steps_per_worker": a.straggler_steps,
        "emulation": (
            "the slow worker sleeps (factor - 1) x its compute so far before each gradient "
            "bucket is handed over and at the end of its gradient, so every event of its step "
            "happens factor times later (shoal.parallel.batches.Stretch; DDP: the same, after "
            "the forward pass and in a hook on every parameter's gradient)"
        ),
        "throughput": "the sum over workers of each worker's samples / its own training "
        "seconds (evaluation excluded): what the workers process per second while they all "
        "train. samples_per_second_to_slowest divides all samples by the slowest worker's time",
        "configs": rows,
    }


def statement(a: argparse.Namespace) -> str:
    straggler = (
        f" Straggler comparison at {a.straggler_bandwidth}: worker {a.workers - 1} made "
        f"{a.straggler_factor:g}x slower, {a.straggler_steps} steps per worker, no target; "
        "throughput = the sum over workers of samples / own training seconds; asynchronous "
        "EASGD runs the same workers plus its parameter server (one more process, in its own "
        "namespace)."
        if a.straggler
        else ""
    )
    network = (
        "on loopback, unshaped (--no-netns)"
        if a.no_netns
        else "each in its own network namespace on a bridge; tbf caps every link in both "
        f"directions at {', '.join(a.bandwidth_list)}"
    )
    return (
        f"{a.workers} workers, one process each (1 torch thread), {network} "
        f"({os.cpu_count()} CPU cores). Model: {a.model} "
        f"({'McMahan CNN, padding same, 1,663,370 parameters' if a.model == 'cnn' else 'MLP'}); "
        f"data: mnist5k ({shown(a.data_dir)}), its 4,000 training images in IID shards "
        f"(default_rng({a.seed})), test accuracy on its 1,000 test images evaluated on rank 0 "
        f"every {a.eval_every} steps (evaluation time excluded). Per-worker batch "
        f"{a.batch_size}, SGD lr {a.lr}, momentum {a.momentum}, same initial weights and the "
        f"same minibatches for every configuration; target {a.target:.0%} test accuracy, cap "
        f"{a.max_steps} steps. Convolution kernels in channels-last layout on the CPU for DDP "
        "(its module) and Shoal alike. Medians of "
        f"{a.repeats} run(s); configurations interleaved." + straggler
    )


def progress(rec: dict[str, Any]) -> str:
    t = rec["time_to_target_seconds"]
    reached = f"target at {t:.1f} s" if t is not None else "target not reached"
    return f"{rec['config']}: steps {rec['steps']}, {reached}, best acc {rec['best_accuracy']:.4f}"


def fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f} MB"


def print_table(summary: dict[str, Any], a: argparse.Namespace) -> None:
    fmt = "{:<28} {:>9} {:>6} {:>11} {:>7} {:>9} {:>11} {:>7}"
    print("\n" + fmt.format("configuration", "bandwidth", "steps", "seconds", "s/step",
                            "compute/s", "sent/worker", "vs DDP"))  # fmt: skip
    for bw, per in summary.items():
        for c, s in per.items():
            if s["runs"] == 0:
                continue
            if s["time_to_target_seconds"] is None:
                acc = s["best_accuracy"]
                steps = "—" if s["failed"] == s["runs"] else f">{s['steps']:.0f}"
                secs = "failed" if s["failed"] == s["runs"] else f"best {acc:.3f}"
            else:
                steps = f"{s['steps_to_target']:.0f}"
                secs = f"{s['time_to_target_seconds']:.1f}"
            sps = "n/a" if s["seconds_per_step"] is None else f"{s['seconds_per_step']:.3f}"
            cps = s["compute_seconds_per_step"]
            cps = "n/a" if cps is None else f"{cps:.3f}"
            sent = s["tx_bytes_per_worker"] or s["payload_bytes_per_worker"]
            speed = "" if s["speedup_vs_ddp"] is None else f"{s['speedup_vs_ddp']:.2f}x"
            print(fmt.format(LABELS[c], bw, steps, secs, sps, cps, fmt_bytes(sent), speed))


def print_straggler(st: dict[str, Any]) -> None:
    print(
        f"\nStraggler: worker {st['slow_rank']} {st['factor']:g}x slower, "
        f"{st['steps_per_worker']} steps per worker at {st['bandwidth']}; samples/s over all "
        "workers:"
    )
    fmt = "{:<28} {:>14} {:>14} {:>8} {:>16}"
    print(fmt.format("configuration", "no straggler", "straggler", "kept", "vs sync SGD"))
    for c, r in st["configs"].items():
        base = r["no_straggler"].get("samples_per_second")
        slow = r["straggler"].get("samples_per_second")
        kept, vs = r.get("throughput_kept"), r.get("vs_sync_sgd_under_straggler")
        print(
            fmt.format(
                LABELS[c],
                "failed" if base is None else f"{base:.1f}",
                "failed" if slow is None else f"{slow:.1f}",
                "" if kept is None else f"{kept:.2f}",
                "" if vs is None else f"{vs:.2f}x",
            )
        )


def setup_record(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "workers": a.workers,
        "model": a.model,
        "data": shown(a.data_dir),
        "partition": "iid",
        "batch_size_per_worker": a.batch_size,
        "lr": a.lr,
        "momentum": a.momentum,
        "seed": a.seed,
        "target_accuracy": a.target,
        "max_steps": a.max_steps,
        "eval_every": a.eval_every,
        "repeats": a.repeats,
        "bandwidths": a.bandwidth_list,
        "netns": not a.no_netns,
        "shaping": None if a.no_netns else "tbf on both ends of every veth, burst 10 ms",
        "torch_threads_per_worker": 1,
        "cpu_count": os.cpu_count(),
        "cpu_capability": cpu_capability(),
        "hyperparameters": {
            "topk_ratio": TOPK_RATIO,
            "powersgd_rank": POWERSGD_RANK,
            "local_sgd_period": LOCAL_SGD_PERIOD,
            "easgd_period": EASGD_PERIOD,
            "dgc_density": DGC_DENSITY,
        },
        "time_to_target": "training seconds on rank 0 up to the evaluation that first "
        "reached the target; evaluation time excluded for every configuration",
        "sent_per_worker": "bytes the worker's network interface transmitted while training "
        "(kernel counters: IP/TCP headers included); payload bytes as Shoal counts them are "
        "listed separately",
    }


def command_line(argv: list[str], a: argparse.Namespace) -> str:
    """The command as run, with the paths relative to the repository root."""
    args = [shown(x) if x == a.data_dir or Path(x) == a.json else x for x in argv]
    return "python benchmarks/shaped_network.py " + " ".join(shlex.quote(x) for x in args)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    missing = shoal_parallel_missing()
    if missing:
        sys.exit(f"error: {missing}; install Shoal into this interpreter (pip install -e .)")
    if not a.no_netns:
        try:
            _netns.check_available()
        except _netns.NetnsError as err:
            sys.exit(f"error: {err}")
    runs: list[dict[str, Any]] = []
    straggler = None
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shaped_network_") as tmp, shaped(a) as net:
        launcher = Launcher(a, net, Path(tmp))
        for repeat in range(a.repeats):
            for bw in a.bandwidth_list:
                set_rate(net, bw)
                for group in launch_groups(a.config_list, a.one_launch):
                    print(f"[{repeat + 1}/{a.repeats} {bw}] {','.join(group)} ...", flush=True)
                    for rec in launcher.run(group, []):
                        rec.update(bandwidth=bw, repeat=repeat)
                        runs.append(rec)
                        if "error" not in rec:
                            print("    " + progress(rec), flush=True)
        if a.straggler and a.straggler_list:
            straggler = run_straggler(a, launcher, net)
    left = [] if a.no_netns else _netns.leftovers()
    summary = summarize(runs, a.bandwidth_list, a.config_list)
    result: dict[str, Any] = {
        "benchmark": "shaped_network",
        "command": command_line(argv if argv is not None else sys.argv[1:], a),
        "setup": setup_record(a),
        "statement": statement(a),
        "summary": summary,
        "straggler": straggler,
        "runs": runs,
        "total_seconds": time.perf_counter() - t_start,
        "netns_leftovers": left,
        "headline": headline(summary),
    }
    if runs:
        print_table(summary, a)
    if straggler:
        print_straggler(straggler)
    print("\n" + result["statement"])
    print("headline:", json.dumps(result["headline"]))
    if left:
        print(f"warning: namespaces or links left over: {left}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {shown(a.json)}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the workers and namespaces are gone already
        sys.exit("interrupted; workers stopped, namespaces removed")
