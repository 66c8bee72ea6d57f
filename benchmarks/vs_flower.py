"""Shoal vs Flower 1.41 simulation on workload W: wall time, peak memory, accuracy.

Each run is a fresh subprocess of this script (``--worker shoal|flower``), timed from launch
to exit, with the memory of its whole process tree sampled (see ``_measure.py``). Flower
samples its clients itself (stock FedAvg); the partition-ids each round trained are recorded
and replayed in the Shoal run of the same repeat, and both take their minibatches in the same
order (``shoal.schedule.make_plan``), so the accuracy curves should nearly coincide.

    python benchmarks/vs_flower.py --quick --models mlp
    python benchmarks/vs_flower.py --json runs/vs_flower.json          # MLP and CNN, 3 repeats
    python benchmarks/vs_flower.py --scale1000 --models none           # 1,000 clients per round
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _args  # noqa: E402
import _measure  # noqa: E402
import _workload as wl  # noqa: E402
from _report import failures, report, shown, statement, summarize  # noqa: E402

HERE = Path(__file__).resolve()


class Replay:
    """A Shoal sampler returning a recorded schedule: ``schedule[round]`` client ids."""

    def __init__(self, schedule: list[list[int]]) -> None:
        self.schedule = schedule

    def check(self, num_clients: int) -> None:
        if any(c >= num_clients for ids in self.schedule for c in ids):
            raise ValueError(f"the recorded schedule names clients beyond {num_clients}")

    def __call__(self, sizes: Any, seed: int, round_idx: int) -> Any:
        import numpy as np

        return np.asarray(self.schedule[round_idx], dtype=np.int64)


def shoal_worker(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    # PyTorch's default, one thread per core, as Flower's Ray runs one client per core.
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    import numpy as np

    from shoal.algorithms.base import LocalWork
    from shoal.algorithms.fedavg import fedavg
    from shoal.functional import init_params
    from shoal.runtime.sim import SimRuntime
    from shoal.schedule import ClientSampler
    from shoal.train import TrainConfig, train

    gc.freeze()  # as `shoal run` does once its modules are imported (src/shoal/cli/__init__.py)
    data, clients = wl.load(a.data_dir, a.copies)
    model, p0 = init_params(lambda: wl.build_model(a.model), wl.INIT_SEED)
    if a.schedule:
        sampler: Any = Replay(json.loads(Path(a.schedule).read_text()))
    else:
        sampler = ClientSampler(a.per_round)
    cfg = TrainConfig(
        rounds=a.rounds,
        sampler=sampler,
        work=LocalWork(epochs=wl.EPOCHS, batch_size=wl.BATCH_SIZE),
        seed=wl.SCHEDULE_SEED,
        device="cpu",
        progress=False,
        client_eval=False,  # Flower computes no per-client accuracy: the same work on both sides
    )
    runtime = SimRuntime(vectorize=False) if a.shoal_loop else SimRuntime()
    res = train(model, data, clients, fedavg(wl.LR), cfg, runtime=runtime, init=p0)
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    walls = [0.0] + [m["wall_seconds"] for m in res.metrics]
    return {
        "accuracy": [m["test_accuracy"] for m in res.metrics],
        "schedule": [sorted(sampler(sizes, cfg.seed, r).tolist()) for r in range(a.rounds)],
        "round_seconds": [b - c for b, c in zip(walls[1:], walls[:-1])],
        "sampler": "replayed Flower's schedule" if a.schedule else f"ClientSampler({a.per_round})",
        "threads": threads,
        "runtime": "SimRuntime(vectorize=False)" if a.shoal_loop else "SimRuntime()",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def flower_worker(a: argparse.Namespace) -> dict[str, Any]:
    import flwr
    import ray
    from flwr.simulation import run_simulation

    import _flower_app as fa

    fa.SETTINGS.update(
        model=a.model, data_dir=a.data_dir, copies=a.copies, rounds=a.rounds, per_round=a.per_round
    )
    backend = {
        "client_resources": {"num_cpus": a.client_cpus, "num_gpus": 0.0},
        "init_args": {"_temp_dir": a.ray_tmp},
    }
    run_simulation(
        server_app=fa.server_app,
        client_app=fa.client_app,
        num_supernodes=wl.NUM_CLIENTS * a.copies,
        backend_config=backend,  # type: ignore[arg-type]
    )
    if len(fa.RESULT.get("accuracy", [])) != a.rounds:
        raise SystemExit(f"Flower's ServerApp did not finish {a.rounds} rounds: {fa.RESULT}")
    return {
        **fa.RESULT,
        "client_cpus": a.client_cpus,
        "versions": {"flwr": flwr.__version__, "ray": ray.__version__},
    }


def launch(system: str, model: str, a: argparse.Namespace, work: Path, **extra: Any) -> dict:
    """Run one worker in a fresh subprocess; its scratch (HOME, TMPDIR, Ray) lives in ``work``."""
    work.mkdir(parents=True)
    for sub in ("home", "tmp", "flwr", "ray"):
        (work / sub).mkdir()
    env = dict(os.environ, HOME=str(work / "home"), TMPDIR=str(work / "tmp"))
    env.update(FLWR_HOME=str(work / "flwr"), RAY_AUTH_MODE="disabled")
    env.update(FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore")
    out = work / "result.json"
    cmd = [sys.executable, str(HERE), "--worker", system, "--model", model, "--out", str(out)]
    cmd += ["--data-dir", a.data_dir, "--rounds", str(extra.get("rounds", a.rounds))]
    cmd += ["--threads", str(a.threads), "--client-cpus", str(a.flower_client_cpus)]
    cmd += ["--copies", str(extra.get("copies", 1)), "--per-round", str(extra.get("k", 10))]
    cmd += ["--ray-tmp", str(work / "ray")] + (["--shoal-loop"] if a.shoal_loop else [])
    if extra.get("schedule"):
        (work / "schedule.json").write_text(json.dumps(extra["schedule"]))
        cmd += ["--schedule", str(work / "schedule.json")]
    m = _measure.run(cmd, env=env, log=work / "log.txt", timeout=a.timeout, interval=a.interval)
    row: dict[str, Any] = {"system": system, "model": model, **vars(m)}
    row["timed_out"] = m.returncode is None
    # A worker that stopped on its own without a result failed: not a timeout (it was
    # reported as one, and the script still exited 0).
    row["failed"] = not row["timed_out"] and not (m.returncode == 0 and out.exists())
    if m.returncode == 0 and out.exists():
        row.update(json.loads(out.read_text()))
        row["final_accuracy"] = row["accuracy"][-1]
    else:
        tail = (work / "log.txt").read_text(errors="replace")[-3000:]
        print(f"  {system}/{model} failed (rc={m.returncode}); log tail:\n{tail}", flush=True)
        row["error_log_tail"] = tail
        row["error"] = ([line for line in tail.splitlines() if line.strip()] or [""])[-1]
    return row


def compare(a: argparse.Namespace, model: str, tmp: Path, label: str, **extra: Any) -> dict:
    """``repeats`` pairs of runs: Flower first (it records the schedule), then Shoal."""
    runs: dict[str, list[dict]] = {"flower": [], "shoal": []}
    for rep in range(a.repeats):
        schedule = None
        if not a.skip_flower:
            fl = launch("flower", model, a, tmp / f"{label}-{rep}-flower", **extra)
            runs["flower"].append(fl)
            schedule = fl.get("schedule")
            print(f"  [{label} {rep + 1}/{a.repeats}] flower {_brief(fl)}", flush=True)
        sh = launch("shoal", model, a, tmp / f"{label}-{rep}-shoal", schedule=schedule, **extra)
        runs["shoal"].append(sh)
        print(f"  [{label} {rep + 1}/{a.repeats}] shoal  {_brief(sh)}", flush=True)
    return {"runs": runs, "summary": summarize(runs)}


def compile_bytecode() -> None:
    """Write the ``.pyc`` files of Shoal's package and of this folder's modules, as ``pip
    install`` wrote Flower's, torch's and Ray's. An editable install never gets them where
    ``PYTHONDONTWRITEBYTECODE`` is set (as on the machine these figures come from): each fresh
    Shoal run then compiled its ~130 modules from source (~0.07 s of a ~2 s run) while Flower's
    runs read bytecode. ``py_compile`` writes them whatever that variable says."""
    import compileall
    from importlib.util import find_spec

    spec = find_spec("shoal")
    assert spec is not None and spec.submodule_search_locations, "shoal is not installed"
    for folder in [*spec.submodule_search_locations, str(HERE.parent)]:
        compileall.compile_dir(folder, quiet=1)


def _brief(r: dict) -> str:
    if r["failed"]:
        return f"failed (rc={r['returncode']}): {r['error']}"
    acc = r.get("final_accuracy")
    return f"wall {r['wall_s']:.2f} s, acc {acc if acc is None else round(acc, 4)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models",
        type=_args.names(("mlp", "cnn"), none="none"),
        default="mlp,cnn",
        help="comma-separated; 'none' for no W runs",
    )
    p.add_argument("--repeats", type=_args.positive_int, default=3)
    p.add_argument("--rounds", type=_args.positive_int, default=20)
    p.add_argument("--quick", action="store_true", help="1 repeat")
    p.add_argument("--skip-flower", action="store_true", help="Shoal only")
    p.add_argument("--scale1000", action="store_true", help="also 1,000 clients/round, MLP, 3 r")
    p.add_argument("--data-dir", default=str(wl.DEFAULT_DATA_DIR))
    p.add_argument("--json", type=_args.json_path, help="write all figures here")
    p.add_argument(
        "--threads",
        type=_args.non_negative_int,
        default=0,
        help="torch threads of the Shoal worker (0: PyTorch's default, one per core)",
    )
    p.add_argument("--shoal-loop", action="store_true", help="Shoal's looped (not vectorized)")
    p.add_argument("--flower-client-cpus", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--interval", type=float, default=0.5, help="memory sampling period, s")
    p.add_argument("--worker", choices=["shoal", "flower"], help=argparse.SUPPRESS)
    for opt in ("--model", "--out", "--schedule", "--ray-tmp"):
        p.add_argument(opt, help=argparse.SUPPRESS)
    p.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--per-round", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--client-cpus", type=float, default=1.0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        fn = shoal_worker if a.worker == "shoal" else flower_worker
        Path(a.out).write_text(json.dumps(fn(a)))
        return
    if a.quick:
        a.repeats = 1
    models = [m for m in a.models.split(",") if m and m != "none"]
    if not models and not a.scale1000:  # it ran nothing and wrote an empty JSON, exit 0
        p.error("--models none compares nothing without --scale1000")
    _args.check_mnist5k(p, a.data_dir)
    compile_bytecode()
    tmp = Path(tempfile.mkdtemp(prefix="svf-"))
    results: dict[str, Any] = {"comparisons": {}, "headline": {}}
    try:
        for model in models:
            results["comparisons"][model] = compare(a, model, tmp, model)
        if a.scale1000:
            extra = {"copies": 10, "k": 1000, "rounds": 3}
            results["comparisons"]["mlp-1000"] = compare(a, "mlp", tmp, "mlp-1000", **extra)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    h, c = results["headline"], results["comparisons"]
    for model in models:
        h[f"speedup_{model}"] = c[model]["summary"].get("speedup")
    if "mlp" in c:
        h["accuracy_gap_mlp"] = c["mlp"]["summary"].get("accuracy_gap_pp")
    if "mlp-1000" in c:
        h["speedup_vs_flower_1000"] = c["mlp-1000"]["summary"].get("speedup")
        if "speedup_at_least" in c["mlp-1000"]["summary"]:
            h["speedup_vs_flower_1000_at_least"] = c["mlp-1000"]["summary"]["speedup_at_least"]
    results["statement"] = statement(a)
    hidden = {"worker", "model", "out", "schedule", "ray_tmp", "copies", "per_round"}
    settings = {k: str(v) for k, v in vars(a).items() if v is not None and k not in hidden}
    results["settings"] = {k: v for k, v in settings.items() if k != "client_cpus"}
    results["settings"]["data_dir"] = shown(a.data_dir)
    if a.json:
        results["settings"]["json"] = shown(a.json)
    report(results, a)
    if failed := failures(results):  # no figures to keep: a JSON already there stays as it was
        raise SystemExit(f"{len(failed)} run(s) failed (above); no JSON written")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
