"""Summaries, the printed table and the statement of what ``vs_flower.py`` compared."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import _workload as wl

REPO = Path(__file__).resolve().parents[1]


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None and r["returncode"] == 0]
    return statistics.median(vals) if vals else None


def summarize(runs: dict[str, list[dict]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for system, rows in runs.items():
        if rows:
            s[system] = {k: _median(rows, k) for k in ("wall_s", "final_accuracy")}
            s[system].update({k: _median(rows, k) for k in ("maxrss_mib", "tree_pss_mib")})
            s[system]["tree_rss_mib"] = _median(rows, "tree_rss_mib")
            s[system]["timed_out"] = any(r["timed_out"] for r in rows)
            s[system]["failed"] = any(r["failed"] for r in rows)
    fl, sh = s.get("flower"), s.get("shoal")
    if fl and sh and fl["wall_s"] and sh["wall_s"]:
        s["speedup"] = fl["wall_s"] / sh["wall_s"]
        s["memory_ratio"] = fl["tree_pss_mib"] / sh["maxrss_mib"]
    if fl and sh and fl["timed_out"] and sh["wall_s"]:  # a lower bound, reported as such
        cut = min(r["wall_s"] for r in runs["flower"] if r["timed_out"])
        s["speedup_at_least"] = cut / sh["wall_s"]
    if fl and sh:
        gaps = [
            100 * (b["final_accuracy"] - f["final_accuracy"])
            for f, b in zip(runs["flower"], runs["shoal"])
            if f.get("final_accuracy") is not None and b.get("final_accuracy") is not None
        ]
        s["accuracy_gap_pp"] = statistics.median(gaps) if gaps else None
        curves = [
            max(abs(x - y) for x, y in zip(f["accuracy"], b["accuracy"])) * 100
            for f, b in zip(runs["flower"], runs["shoal"])
            if f.get("accuracy") and b.get("accuracy")
        ]
        s["max_curve_gap_pp"] = max(curves) if curves else None
    return s


def report(results: dict[str, Any], a: argparse.Namespace) -> None:
    fmt = "{:<7} {:<9} {:>9} {:>22} {:>10} {:>16}"
    print("\n" + fmt.format("system", "model", "wall s", "peak MiB", "final acc", "Flower/Shoal"))
    for label, res in results["comparisons"].items():
        s = res["summary"]
        for system in ("shoal", "flower"):
            if system not in s:
                continue
            r = s[system]
            # A failed run is not a timeout: it stopped on an error (its line is printed below).
            if r["failed"]:
                wall = "failed"
            else:
                wall = "timeout" if r["wall_s"] is None else f"{r['wall_s']:.2f}"
            if system == "shoal":
                mem, ratio = f"{r['maxrss_mib'] or 0:.0f} (maxrss)", ""
            else:
                mem = f"{r['tree_pss_mib'] or 0:.0f} PSS ({r['tree_rss_mib'] or 0:.0f} RSS)"
                ratio = f"{s['speedup']:.1f}x wall" if "speedup" in s else "n/a"
                if "speedup_at_least" in s:
                    ratio += f" (>= {s['speedup_at_least']:.1f}x: timeout)"
            acc = "n/a" if r["final_accuracy"] is None else f"{r['final_accuracy']:.4f}"
            print(fmt.format(system, label, wall, mem, acc, ratio))
    for r in failures(results):
        print(f"{r['system']}/{r['model']} failed (rc={r['returncode']}): {r['error']}")
    print("\n" + results["statement"])
    print("headline:", json.dumps(results["headline"]))


def failures(results: dict[str, Any]) -> list[dict]:
    """The runs that stopped on an error (not at the timeout)."""
    comparisons = results["comparisons"].values()
    return [r for c in comparisons for rows in c["runs"].values() for r in rows if r["failed"]]


def shown(path: str) -> str:
    """A path relative to the repository root (no machine paths in the output)."""
    return os.path.relpath(Path(path).resolve(), REPO)


def statement(a: argparse.Namespace) -> str:
    return (
        f"Workload W: mnist5k ({shown(a.data_dir)}), 4,000 training images over 100 clients "
        f"(Dirichlet alpha={wl.ALPHA}, default_rng({wl.PARTITION_SEED})), test set = its 1,000 "
        f"test images, evaluated centrally after every round. FedAvg weighted by sample count, "
        f"10 clients per round, {wl.EPOCHS} local epoch, batch {wl.BATCH_SIZE} (short last "
        f"batch kept), plain SGD lr {wl.LR}, {a.rounds} rounds; same initial weights "
        f"(init_params(build, seed={wl.INIT_SEED})) and the same nn.Module (shoal.models). "
        + (SKIPPED if a.skip_flower else SAMPLING)
        + "Data order: both use shoal.schedule.make_plan. "
        f"Shoal: {'SimRuntime(vectorize=False)' if a.shoal_loop else 'SimRuntime()'} "
        "(default 'auto' on a CPU: the MLP vectorized, with the fused step stacked over the "
        "round's clients; the CNN looped, with channels-last kernels; gc.freeze() after its "
        "imports, as `shoal run`; its modules compiled to bytecode before the runs, as pip does "
        "for Flower's), torch threads "
        f"{a.threads or 'PyTorch default (one per core)'}. Flower: run_simulation (Ray), "
        f"client num_cpus={a.flower_client_cpus}. Each run is a fresh subprocess timed "
        f"launch-to-exit; medians of {a.repeats} run(s). Peak memory: Shoal = ru_maxrss of its "
        f"process; Flower = summed PSS (RSS) of its process tree sampled every {a.interval} s."
        + (SCALE if a.scale1000 else "")
        + (SCALE_ONLY if a.scale1000 and a.models.replace("none", "").strip(",") == "" else "")
    )


SAMPLING = (
    "Sampling: Flower's stock FedAvg sampled the clients; the partition-ids it trained each "
    "round were recorded and replayed in the Shoal run of the same repeat. "
)
SCALE_ONLY = (
    " Only the scale mode ran (--models none): the 10 clients per round and the rounds above"
    " are W's, not this run's."
)
SKIPPED = "Flower skipped; Shoal sampled with its own ClientSampler (seed 0). "
SCALE = (
    " Scale mode (mlp-1000): 1,000 clients (10 copies of the 100 W partitions), all 1,000 "
    "trained every round, MLP, 3 rounds, otherwise as W."
)
