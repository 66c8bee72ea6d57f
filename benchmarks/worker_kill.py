"""A worker killed with SIGKILL in the middle of a `shoal launch` job, with and without restarts.

Workload: FedAvg on mnist5k (4,000 training images, 100 clients, Dirichlet alpha = 0.5, seed
0), the 2NN MLP, 10 clients per round, one local epoch of batch 10, lr 0.05, ``--rounds``
rounds, on ``--nproc`` processes (``DistRuntime``, gloo). Three fresh jobs, same seed:

1. uninterrupted;
2. rank 1 kills itself after round ``--kill-round`` (``SHOAL_FAULT_KILL``), and
   ``--max-restarts 1`` lets torchrun's elastic agent restart every worker, which resume from
   the run's checkpoint;
3. the same kill without restarts: the job must stop, naming the dead rank, instead of hanging.

Reported: each job's wall time (launch to exit), the restart's cost (2 minus 1), whether job 2
ends with the same final model and metrics as job 1, and in job 3 the time from the last
metrics row written before the kill (the file's modification time) to the launcher's exit.

    python benchmarks/worker_kill.py --json benchmarks/results/worker_kill.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import _args

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist5k"

CONFIG = """
seed = 0
rounds = {rounds}
num_threads = 1
[data]
name = "mnist"
dir = "{data}"
[partition]
scheme = "dirichlet"
num_clients = 100
alpha = 0.5
[model]
name = "mlp"
[algorithm]
name = "fedavg"
lr = 0.05
[client]
epochs = 1
batch_size = 10
[sampling]
clients_per_round = 10
"""


def launch(cfg: Path, out: Path, nproc: int, *, kill: str | None, restarts: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SHOAL_FAULT_KILL", None)
    if kill:
        env["SHOAL_FAULT_KILL"] = kill
    cmd = [sys.executable, "-m", "shoal", "launch", "--nproc-per-node", str(nproc), str(cfg)]
    cmd += ["--out", str(out), "--quiet", "--max-restarts", str(restarts)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    end = time.time()
    wall = time.perf_counter() - t0
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    rows = [json.loads(line) for line in lines]
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    # Only shoal's own one-line verdict; torchrun's log lines name this machine's paths.
    last_line = last if last.startswith("shoal:") else ""
    return {
        "error": last,  # for the terminal only, if the job should not have failed
        "returncode": proc.returncode,
        "wall_seconds": wall,
        "rounds_done": len(rows),
        "seconds_after_last_metrics_write": end - metrics.stat().st_mtime if rows else None,
        "last_stderr_line": last_line,
        "rows": rows,
    }


def must_succeed(job: dict, name: str) -> None:
    """Stop on a failed job, in one line: the later jobs and figures would mean nothing."""
    if job["returncode"] != 0:
        raise SystemExit(f"job {name} failed (rc {job['returncode']}): {job['error']}")


def same_run(a: Path, b: Path, rows_a: list[dict], rows_b: list[dict]) -> dict[str, Any]:
    ma, mb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    diff = max(float((ma[k] - mb[k]).abs().max()) for k in ma)
    strip = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows_a]
    strip_b = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows_b]
    return {"max_abs_param_difference": diff, "metrics_equal": strip == strip_b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--nproc", type=int, default=4, help="processes, >= 2 (rank 1 is killed)")
    ap.add_argument("--rounds", type=_args.positive_int, default=40)
    ap.add_argument("--kill-round", type=int, default=20, help="in 1..--rounds - 1")
    ap.add_argument("--json", type=_args.json_path)
    a = ap.parse_args()
    # Up front: else job 1 ran first, and then the kill was refused or never came.
    if a.nproc < 2:
        ap.error(f"--nproc must be >= 2 (rank 1 is the one killed), got {a.nproc}")
    if not 1 <= a.kill_round < a.rounds:
        ap.error(
            f"--kill-round must be in 1..{a.rounds - 1} (--rounds {a.rounds}), got {a.kill_round}"
        )
    _args.check_mnist5k(ap, a.data_dir)
    kill = f"1:{a.kill_round}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = root / "w.toml"
        cfg.write_text(CONFIG.format(rounds=a.rounds, data=a.data_dir.resolve().as_posix()))
        print(
            f"FedAvg, MLP, mnist5k, {a.rounds} rounds on {a.nproc} processes; rank 1 is "
            f"SIGKILLed after round {a.kill_round} in jobs 2 and 3."
        )
        clean = launch(cfg, root / "clean", a.nproc, kill=None, restarts=0)
        must_succeed(clean, "1 (uninterrupted)")
        restarted = launch(cfg, root / "restarted", a.nproc, kill=kill, restarts=1)
        must_succeed(restarted, "2 (killed + restarted)")
        failed = launch(cfg, root / "failed", a.nproc, kill=kill, restarts=0)
        if not failed["rows"]:  # it must fail, but after some rounds: the figure is the wait
            raise SystemExit(f"job 3 (killed, no restarts) wrote no metrics: {failed['error']}")
        equal = (
            same_run(root / "clean", root / "restarted", clean["rows"], restarted["rows"])
            if clean["returncode"] == restarted["returncode"] == 0
            else None
        )
    for r in (clean, restarted, failed):
        r.pop("rows")
        r.pop("error")
    overhead = restarted["wall_seconds"] - clean["wall_seconds"]
    detect = failed["seconds_after_last_metrics_write"]
    print(f"1. uninterrupted:        {clean['wall_seconds']:6.1f} s, rc {clean['returncode']}")
    print(
        f"2. killed + restarted:   {restarted['wall_seconds']:6.1f} s, rc "
        f"{restarted['returncode']}, +{overhead:.1f} s for the restart; same final model and "
        f"metrics as 1: {equal}"
    )
    print(
        f"3. killed, no restarts:  {failed['wall_seconds']:6.1f} s, rc {failed['returncode']}, "
        f"{failed['rounds_done']} rounds written, exited {detect:.1f} s after the last metrics "
        f"write; last line: {failed['last_stderr_line']}"
    )
    headline = {
        "restart_overhead_seconds": overhead,
        "resumed_equals_uninterrupted": bool(
            equal and equal["metrics_equal"] and equal["max_abs_param_difference"] == 0
        ),
        "failure_exit_seconds": detect,
        "failure_names_rank": "rank 1" in failed["last_stderr_line"],
    }
    report = {
        "statement": __doc__.split("\n\n    python")[0],
        "settings": {k: str(v) for k, v in vars(a).items() if k not in ("json", "data_dir")},
        "uninterrupted": clean,
        "killed_restarted": restarted,
        "killed_no_restart": failed,
        "restarted_vs_uninterrupted": equal,
        "headline": headline,
    }
    print("headline:", json.dumps(headline))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
