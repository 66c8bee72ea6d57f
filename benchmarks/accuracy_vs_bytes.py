"""Accuracy against total uplink bytes on workload W with the CNN, one run per compressor.

Workload W (``_workload.py``): the 4,000 mnist5k training images over 100 clients (Dirichlet
alpha=0.5, ``default_rng(0)``), McMahan's CNN without padding (582,026 parameters), FedAvg,
10 clients per round, 1 local epoch, batch 10, SGD lr 0.05, 20 rounds, test accuracy on the
1,000 test images after every round. Every configuration starts from the same weights and
trains the same clients on the same minibatches (seed 0); only ``train(compressor=...)``
changes: each client's model delta is compressed on upload, and the uplink bytes are the
serialized payloads (``cum_uplink_bytes`` of the last round). Error feedback keeps a residual
per client, carried to that client's next participation. PowerSGD gets the model's
``ParamSpec.shapes`` (its 1-D tensors, the biases, travel dense); the paper's PowerSGD warm-starts
from the client's last query, the "2 iterations, cold start" rows start from a fresh query
and take two subspace steps (same bytes), and the "best rank 2, SVD" row is a bound, not a
method (see :class:`BestRank`). The thresholds 7e-4 and 2e-3
are about the 90th and 99th percentiles of |delta| in a dense run of W (~10% and ~1% kept);
the count sketches (depth 3) hold 10% or 1% as many entries as the model.

20-round accuracy on W is noisy (a few points between neighbouring configurations), so the
mean over the last 5 rounds is reported next to the final accuracy; ``--long-rounds 100`` adds
a longer run of a few configurations (not W: no headline), with the round and the bytes at which
each first reaches 90%. ``--server`` runs dense, top-k EF 1%, PowerSGD rank 2 and its
two-iteration cold start again with a server optimizer (FedAvgM, server momentum 0.9, server lr
1 and 2) in place of FedAvg's plain average, each compressed run against dense under the same
server optimizer: how much of the gap is a smaller step that a server optimizer would make up
(not W: no headline).
``--participation 25,50,100`` runs them again with more clients sampled per round (W: 10 of
100, so a client uploads about twice in 20 rounds): how much of the gap is error feedback's
residual waiting at clients that are rarely sampled (not W: no headline). ``--seeds 1,2,3,4``
runs them and the 1% count sketch again with other seeds for the initial weights, client
sampling and minibatches (W's partition kept), and tabulates each drop's mean and standard
deviation over W's seed and these: how far one seed's 20-round figures can be trusted (not W:
no headline); ``--long-seeds`` does the same for the ``--long-rounds`` run. The headline
compares final accuracies of W as defined (20 rounds).

Configurations whose global model turns NaN are reported as diverged (with the round), not
dropped. Timing is not the point here: one torch thread by default, because on this 2-core
machine shared with other jobs two threads ran 13x slower whenever another process held a core.

The plot goes to the committed ``docs/img/accuracy_vs_bytes.png`` only from a full run of W (20
rounds, every configuration of the default run, as below); any other run draws it next to its
``--json`` (none without one) unless ``--png`` names a file.

    python benchmarks/accuracy_vs_bytes.py --json out.json               # W, 25 configs, ~12 min
    python benchmarks/accuracy_vs_bytes.py --quick                       # dense, top-k EF, PowerSGD
    python benchmarks/accuracy_vs_bytes.py --all --long-rounds 100 --server \
        --participation 25,50,100 --seeds 1,2,3,4 \
        --json benchmarks/results/accuracy_vs_bytes.json                 # as committed, ~35 min
    python benchmarks/accuracy_vs_bytes.py --only topk_ef_0.01,powersgd_r2,powersgd_r2_cold2 \
        --long-rounds 100 --long-seeds 1,2,3,4 --png '' \
        --json benchmarks/results/accuracy_vs_bytes_long_seeds.json     # ~30 min
    python benchmarks/accuracy_vs_bytes.py --list                        # configuration keys
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _args  # noqa: E402
import _workload as wl  # noqa: E402
from shoal import compress as C  # noqa: E402
from shoal.compress.low_rank import PowerSGD  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PNG = REPO / "docs" / "img" / "accuracy_vs_bytes.png"
W_ROUNDS = 20
LAST = 5  # rounds averaged in the "mean of the last rounds" column
EF = C.error_feedback

Factory = Callable[[tuple[torch.Size, ...]], Any]


class BestRank(PowerSGD):
    """Not a method, a bound: each block's best rank-r approximation (truncated SVD).

    Same payload and bytes as PowerSGD's (``p`` = the top r left singular vectors, ``q`` =
    the right ones scaled by the singular values), so the row shows how much accuracy *any*
    rank-r message of W's client deltas can carry; PowerSGD's one warm-started power step
    approximates it.
    """

    def compress(self, x_D: torch.Tensor, state: Any) -> tuple[C.Payload, Any]:
        payload: C.Payload = {}
        dense = []
        for i, b in enumerate(self._blocks):
            if not b.rank:
                dense.append(x_D[b.offset : b.offset + b.numel])
                continue
            u, sv, vh = torch.linalg.svd(self._matrix(x_D, b), full_matrices=False)
            payload[f"p{i}"] = u[:, : b.rank].contiguous()
            payload[f"q{i}"] = (vh[: b.rank].T * sv[: b.rank]).contiguous()
        if dense:
            payload["dense"] = torch.cat(dense)
        return payload, state


# (key, family for the plot, label, factory(shapes) -> compressor)
CONFIGS: list[tuple[str, str, str, Factory]] = [
    ("dense", "dense", "dense (identity)", lambda s: C.identity()),
    ("fp16", "cast", "fp16", lambda s: C.fp16()),
    ("bf16", "cast", "bf16", lambda s: C.bf16()),
    ("topk_ef_0.1", "top-k EF", "EF(top_k 0.1)", lambda s: EF(C.top_k(0.1))),
    ("topk_ef_0.01", "top-k EF", "EF(top_k 0.01)", lambda s: EF(C.top_k(0.01))),
    ("topk_ef_0.001", "top-k EF", "EF(top_k 0.001)", lambda s: EF(C.top_k(0.001))),
    ("topk_0.01", "top-k, no EF", "top_k 0.01 (no EF)", lambda s: C.top_k(0.01)),
    ("dgc_ef_0.01", "DGC top-k EF", "EF(dgc_top_k 0.01)", lambda s: EF(C.dgc_top_k(0.01))),
    ("dgc_ef_0.001", "DGC top-k EF", "EF(dgc_top_k 0.001)", lambda s: EF(C.dgc_top_k(0.001))),
    ("threshold_ef_7e-4", "threshold EF", "EF(threshold 7e-4)", lambda s: EF(C.threshold(7e-4))),
    ("threshold_ef_2e-3", "threshold EF", "EF(threshold 2e-3)", lambda s: EF(C.threshold(2e-3))),
    ("randomk_ef_0.1", "random-k EF", "EF(random_k 0.1)", lambda s: EF(C.random_k(0.1))),
    ("randomk_ef_0.01", "random-k EF", "EF(random_k 0.01)", lambda s: EF(C.random_k(0.01))),
    ("powersgd_r1", "PowerSGD EF", "EF(powersgd r1)", lambda s: EF(C.powersgd(s, 1))),
    ("powersgd_r2", "PowerSGD EF", "EF(powersgd r2)", lambda s: EF(C.powersgd(s, 2))),
    ("powersgd_r4", "PowerSGD EF", "EF(powersgd r4)", lambda s: EF(C.powersgd(s, 4))),
    ("powersgd_r2_cold2", "PowerSGD EF", "EF(powersgd r2, 2 iterations, cold start)",
     lambda s: EF(C.powersgd(s, 2, power_iterations=2, warm_start=False))),
    ("powersgd_r4_cold2", "PowerSGD EF", "EF(powersgd r4, 2 iterations, cold start)",
     lambda s: EF(C.powersgd(s, 4, power_iterations=2, warm_start=False))),
    ("svd_r2_bound", "bound (not a method)", "EF(best rank 2, SVD): bound",
     lambda s: EF(BestRank(s, 2))),
    ("qsgd_4", "QSGD", "qsgd 4 levels", lambda s: C.qsgd(4)),
    ("qsgd_16", "QSGD", "qsgd 16 levels", lambda s: C.qsgd(16)),
    ("terngrad", "TernGrad", "terngrad (1 scale)", lambda s: C.terngrad()),
    ("terngrad_layer", "TernGrad", "layerwise(terngrad)", lambda s: C.layerwise(C.terngrad(), s)),
    ("sign_ef", "scaled sign EF", "EF(scaled_sign)", lambda s: EF(C.scaled_sign())),
    ("sign_ef_layer", "scaled sign EF", "EF(layerwise(scaled_sign))",
     lambda s: EF(C.layerwise(C.scaled_sign(), s))),
    ("natural", "natural", "natural_compression", lambda s: C.natural_compression()),
    ("sketch_0.1", "count sketch", "count_sketch 10%", lambda s: C.count_sketch(_width(s, 0.1))),
    ("sketch_0.01", "count sketch", "count_sketch 1%", lambda s: C.count_sketch(_width(s, 0.01))),
    ("sketch_ef_0.1", "count sketch", "EF(count_sketch 10%)",
     lambda s: EF(C.count_sketch(_width(s, 0.1)))),
]  # fmt: skip
QUICK = ["dense", "topk_ef_0.01", "powersgd_r2"]
VARIANT_ONLY = "topk_ef_0.01,powersgd_r2,powersgd_r2_cold2"
SEEDS_ONLY = VARIANT_ONLY + ",sketch_0.01"


def _fedavgm(server_lr: float) -> Callable[[], Any]:
    from shoal.algorithms.fedopt import fedavgm

    return lambda: fedavgm(wl.LR, server_lr=server_lr, momentum=0.9)


# (key, label, algorithm) for --server: W's clients, a server optimizer instead of FedAvg's
# plain average (Hsu, Qi, Brown 2019, FedAvgM; Reddi et al. 2021, FedOpt).
SERVERS: list[tuple[str, str, Callable[[], Any]]] = [
    ("fedavgm_0.9_lr1", "FedAvgM, server momentum 0.9, server lr 1", _fedavgm(1.0)),
    ("fedavgm_0.9_lr2", "FedAvgM, server momentum 0.9, server lr 2", _fedavgm(2.0)),
]
EXTRA = ["dgc_ef_0.001", "terngrad_layer", "sketch_0.01", "sketch_ef_0.1"]
"""Run only with ``--all`` or ``--only`` (keeps the default run near 10 minutes)."""


def _width(shapes: tuple[torch.Size, ...], fraction: float) -> int:
    """A depth-3 count sketch whose table holds ``fraction`` of the model's entries."""
    return max(1, math.ceil(fraction * sum(s.numel() for s in shapes) / 3))


def run_one(
    factory: Factory,
    rounds: int,
    data_dir: str,
    server: Callable[[], Any] | None = None,
    per_round: int = 10,
    seed: int = wl.SCHEDULE_SEED,
) -> dict[str, Any]:
    """One run of W with ``factory(shapes)`` compressing the uploads (``server()``: another
    algorithm than W's FedAvg, for the server optimizer table; ``per_round``: clients sampled
    per round, 10 in W, for the participation table; ``seed``: the initial weights, client
    sampling and minibatches, 0 in W, for the seed table; the partition stays W's)."""
    from shoal.algorithms.base import LocalWork
    from shoal.algorithms.fedavg import fedavg
    from shoal.functional import ParamSpec, init_params
    from shoal.runtime.sim import SimRuntime
    from shoal.schedule import ClientSampler
    from shoal.train import TrainConfig, train

    data, clients = wl.load(data_dir)
    model, p0 = init_params(lambda: wl.build_model("cnn"), seed)
    compressor = factory(ParamSpec.of(model).shapes)
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(per_round),
        work=LocalWork(epochs=wl.EPOCHS, batch_size=wl.BATCH_SIZE),
        seed=seed,
        device="cpu",
        progress=False,
        client_eval=False,
    )
    rows: list[dict[str, Any]] = []
    diverged = None
    t0 = time.perf_counter()
    try:
        train(
            model,
            data,
            clients,
            fedavg(wl.LR) if server is None else server(),
            cfg,
            runtime=SimRuntime(),
            init=p0,
            compressor=compressor,
            callback=rows.append,
        )
    except FloatingPointError:  # NaN/inf global model: report it, keep the rounds before it
        diverged = len(rows) + 1
    wall = time.perf_counter() - t0
    acc = [m["test_accuracy"] for m in rows]
    return {
        "compressor": compressor.name,
        "diverged_at_round": diverged,
        "final_accuracy": None if diverged else acc[-1],
        "mean_last5_accuracy": None if diverged else statistics.fmean(acc[-LAST:]),
        "best_accuracy": max(acc, default=None),
        "total_uplink_bytes": rows[-1]["cum_uplink_bytes"] if rows else 0,
        "accuracy": acc,
        "cum_uplink_bytes": [m["cum_uplink_bytes"] for m in rows],
        "wall_s": wall,
    }


def run_all(
    chosen: list[tuple[str, str, str, Factory]],
    rounds: int,
    a: argparse.Namespace,
    server: Callable[[], Any] | None = None,
    per_round: int = 10,
    seed: int = wl.SCHEDULE_SEED,
) -> dict[str, dict[str, Any]]:
    """Every chosen configuration, then drops and byte ratios against ``dense``."""
    results: dict[str, dict[str, Any]] = {}
    for key, family, label, factory in chosen:
        r = run_one(factory, rounds, a.data_dir, server, per_round, seed)
        results[key] = {"label": label, "family": family, **r}
        if r["diverged_at_round"]:
            what = f"diverged (NaN) in round {r['diverged_at_round']}"
        else:
            what = (
                f"final {100 * r['final_accuracy']:5.1f}%  last-{LAST} mean "
                f"{100 * r['mean_last5_accuracy']:5.1f}%"
            )
        uplink = human(r["total_uplink_bytes"])
        print(f"  {label:<28} {what}  uplink {uplink:>9}  ({r['wall_s']:.0f} s)", flush=True)
    dense = results["dense"]
    for r in results.values():
        ok = r["diverged_at_round"] is None
        r["acc_drop_pts"] = 100 * (dense["final_accuracy"] - r["final_accuracy"]) if ok else None
        r["mean_last5_drop_pts"] = (
            100 * (dense["mean_last5_accuracy"] - r["mean_last5_accuracy"]) if ok else None
        )
        r["byte_reduction"] = dense["total_uplink_bytes"] / r["total_uplink_bytes"] if ok else None
        hit = next((i for i, v in enumerate(r["accuracy"]) if v >= a.target_acc), None)
        r["rounds_to_target"] = None if hit is None else hit + 1
        r["bytes_to_target"] = None if hit is None else r["cum_uplink_bytes"][hit]
    return results


def run_variant(
    label: str,
    instead: str,
    a: argparse.Namespace,
    server: Callable[[], Any] | None = None,
    per_round: int = 10,
    seed: int = wl.SCHEDULE_SEED,
    keys: str = VARIANT_ONLY,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Dense and the ``keys`` compressors with one thing of W changed (not W: no headline)."""
    print(f"\nW's clients and compressors, {label} {instead} (not W; no headline)")
    rounds = a.rounds if rounds is None else rounds
    results = run_all(pick(keys.split(",")), rounds, a, server, per_round, seed)
    md = table(results, a.target_acc)
    print("\n" + md + "\n")
    return {"label": label, "results": results, "table_markdown": md}


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def table(results: dict[str, dict[str, Any]], target: float) -> str:
    """Markdown; the "to target accuracy" columns only when some configuration reached it."""
    t = f"{100 * target:.0f}%"
    reached = any(r["rounds_to_target"] is not None for r in results.values())
    head = (
        f"| configuration | final acc % | drop (pts) | mean acc last {LAST} % | drop (pts) "
        "| uplink total | fewer bytes |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if reached:
        head += f" round to {t} | bytes to {t} |"
        rule += "---:|---:|"
    lines = [head, rule]
    for r in results.values():
        reach = "–" if r["rounds_to_target"] is None else str(r["rounds_to_target"])
        nbytes = "–" if r["bytes_to_target"] is None else human(r["bytes_to_target"])
        extra = f" {reach} | {nbytes} |" if reached else ""
        if r["diverged_at_round"]:
            lines.append(
                f"| {r['label']} | diverged (NaN) in round {r['diverged_at_round']} | | | "
                f"| {human(r['total_uplink_bytes'])} before | |{extra}"
            )
            continue
        lines.append(
            f"| {r['label']} | {100 * r['final_accuracy']:.1f} | {r['acc_drop_pts']:+.1f} "
            f"| {100 * r['mean_last5_accuracy']:.1f} | {r['mean_last5_drop_pts']:+.1f} "
            f"| {human(r['total_uplink_bytes'])} | {r['byte_reduction']:.2f}x |{extra}"
        )
    return "\n".join(lines)


PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#000000", "#b8860b", "#4b0082", "#006400", "#ff1493", "#00008b",
]  # fmt: skip
MARKERS = "os^Dv<>pPhX*dH8"
# Label positions tried in turn (offset points, horizontal alignment): the first that overlaps
# no label placed so far is used.
OFFSETS = [(6, 2, "left"), (6, -9, "left"), (-6, 2, "right"), (-6, -9, "right"),
           (6, 10, "left"), (6, -17, "left"), (-6, 10, "right"), (-6, -17, "right"),
           (6, 18, "left"), (6, -25, "left"), (-6, 18, "right"), (-6, -25, "right"),
           (6, 26, "left"), (6, -33, "left")]  # fmt: skip


def _place_labels(
    ax: Any, points: list[tuple[float, float, str]], markers: list[tuple[float, float]]
) -> None:
    """Annotate each point, nudging its label off other labels, markers and the axes' edges."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for x, y in markers:  # a small box around every marker, so that labels do not hide them
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        chosen = None
        for dx, dy, ha in OFFSETS:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha,
                              fontsize=7)  # fmt: skip
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
            if inside and box.y1 <= frame.y1 and not any(box.overlaps(b) for b in taken):
                chosen = ann
                break
            ann.remove()
        if chosen is None:  # crowded: the first position anyway
            dx, dy, ha = OFFSETS[0]
            chosen = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy),
                                 ha=ha, fontsize=7)  # fmt: skip
        taken.append(chosen.get_window_extent(renderer))


def plot(
    results: dict[str, dict[str, Any]],
    rounds: int,
    png: Path,
    long: dict[str, Any] | None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in results.values()))
    style = {
        f: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, f in enumerate(families)
    }
    if long is not None:
        fig, (ax, ax2) = plt.subplots(
            1, 2, figsize=(18, 7.5), gridspec_kw={"width_ratios": [1.5, 1]}
        )
    else:
        fig, ax = plt.subplots(figsize=(12, 7.5))
    labels: list[tuple[float, float, str]] = []
    markers: list[tuple[float, float]] = []
    for r in results.values():
        if r["diverged_at_round"]:
            color, _ = style[r["family"]]
            ax.scatter([r["total_uplink_bytes"]], [10], color=color, marker="x", s=50, zorder=3)
            markers.append((r["total_uplink_bytes"], 10))
            labels.append(
                (
                    r["total_uplink_bytes"],
                    10,
                    f"{r['label']}: NaN in round {r['diverged_at_round']}",
                )
            )
    for fam in families:
        rows = [r for r in results.values() if r["family"] == fam and not r["diverged_at_round"]]
        color, marker = style[fam]
        xs = [r["total_uplink_bytes"] for r in rows]
        big = fam == "dense"
        ax.scatter(xs, [100 * r["final_accuracy"] for r in rows], color=color, marker=marker,
                   s=150 if big else 55, label=fam, zorder=3,
                   edgecolors="black" if big else "none")  # fmt: skip
        ax.scatter(xs, [100 * r["mean_last5_accuracy"] for r in rows], facecolors="none",
                   edgecolors=color, marker=marker, s=35, zorder=2, linewidths=0.8)  # fmt: skip
        for r in rows:
            x, y = r["total_uplink_bytes"], 100 * r["final_accuracy"]
            ax.plot([x, x], [y, 100 * r["mean_last5_accuracy"]], color=color, lw=0.6, zorder=1)
            labels.append((x, y, r["label"]))
            markers += [(x, y), (x, 100 * r["mean_last5_accuracy"])]
    dense = results.get("dense")
    if dense is not None:
        acc = 100 * dense["final_accuracy"]
        ax.axhspan(acc - 1, acc + 1, color="grey", alpha=0.15, zorder=0, label="dense +- 1 point")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo / 2.5, hi * 2.5)  # room for the labels of the outermost points
    ax.set_xlabel(f"total uplink bytes in {rounds} rounds (serialized payloads, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"Workload W (mnist5k, 100 Dirichlet(0.5) clients, 10/round, FedAvg, CNN), {rounds} "
        f"rounds\nfilled: accuracy after round {rounds}; hollow: mean of the last {LAST} rounds",
        fontsize=9.5,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right", ncol=2)
    if long is not None:
        count: dict[str, int] = {}  # rows of one family share a colour: vary the dashes
        for r in long["results"].values():
            color, _ = style.get(r["family"], ("black", "o"))
            n = count[r["family"]] = count.get(r["family"], 0) + 1
            dash = ("-", "--", ":")[min(n - 1, 2)]
            ax2.plot(r["cum_uplink_bytes"], [100 * v for v in r["accuracy"]], color=color,
                     lw=1.2, ls=dash, label=r["label"])  # fmt: skip
        ax2.set_xscale("log")
        ax2.set_xlabel("cumulative uplink bytes (log scale)")
        ax2.set_ylabel("test accuracy (%)")
        ax2.set_title(
            f"the same workload run for {long['rounds']} rounds: accuracy after each round "
            "against the bytes sent so far",
            fontsize=9.5,
        )
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _place_labels(ax, labels, markers)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def shown(path: Path | str) -> str:
    """A path relative to the repository root (no machine paths in the output)."""
    return os.path.relpath(Path(path).resolve(), REPO)


def pick(keys: list[str]) -> list[tuple[str, str, str, Factory]]:
    known = {c[0] for c in CONFIGS}
    if unknown := [k for k in keys if k not in known]:
        raise SystemExit(f"unknown configuration(s) {unknown}; see --list")
    return [c for c in CONFIGS if c[0] in keys or c[0] == "dense"]


def png_path(a: argparse.Namespace, rounds: int, keys: list[str]) -> Path | None:
    """``--png``, else the committed figure for a full run of W (its rounds, every configuration
    of the default run) and for any other run a PNG next to ``--json`` (none without one): a
    ``--quick`` or shorter run drew over the committed figure."""
    if a.png is not None:
        return Path(a.png) if a.png else None
    if rounds == W_ROUNDS and {c[0] for c in CONFIGS if c[0] not in EXTRA} <= set(keys):
        return DEFAULT_PNG
    return a.json.with_suffix(".png") if a.json else None


def replot(a: argparse.Namespace) -> None:
    """Tables and plot again from a results file (e.g. after changing how they look)."""
    if a.json is None or not a.json.is_file():
        raise SystemExit("--replot needs --json FILE written by an earlier run")
    report = json.loads(a.json.read_text())
    target = report["settings"]["target_accuracy"]
    report["table_markdown"] = table(report["results"], target)
    print(report["table_markdown"])
    long = report.get("long_run")
    if long:
        long["table_markdown"] = table(long["results"], target)
        print("\n" + long["table_markdown"])
    for section in ("server_optimizers", "participation", "seeds", "long_seeds"):
        for variant in (report.get(section) or {}).values():
            variant["table_markdown"] = table(variant["results"], target)
            print(f"\n{variant['label']}\n" + variant["table_markdown"])
    for section, base in (
        ("seeds", report["results"]),
        ("long_seeds", (long or {}).get("results")),
    ):
        if report.get(section):
            report[f"{section}_table_markdown"] = seed_table(base, report[section])
            print(f"\nAcross seeds ({section})\n\n" + report[f"{section}_table_markdown"])
    settings = report["settings"]
    png = png_path(a, settings["rounds"], settings["configurations"])
    if png:
        plot(report["results"], settings["rounds"], png, long)
        print(f"plot: {shown(png)}")
    a.json.write_text(json.dumps(report, indent=1) + "\n")


def seed_table(w: dict[str, dict[str, Any]], seeds: dict[str, dict[str, Any]]) -> str:
    """Markdown: dense's accuracy and each compressor's drop for W's seed and every other one,
    with their mean and sample standard deviation (diverged runs are left out of both)."""
    others = [(v["label"].removeprefix("seed "), v["results"]) for v in seeds.values()]
    runs = [("0 (W)", w), *others]
    keys = [k for k in runs[-1][1] if k != "dense" and all(k in r for _, r in runs)]
    head = "| seed | " + " | ".join(name for name, _ in runs) + " | mean | sd |"
    lines = [head, "|---|" + "---:|" * (len(runs) + 2)]

    def row(label: str, values: list[float | None]) -> None:
        ok = [v for v in values if v is not None]
        cells = ["div." if v is None else f"{v:.1f}" for v in values]
        mean = f"{statistics.fmean(ok):.1f}" if ok else "–"
        sd = f"{statistics.stdev(ok):.1f}" if len(ok) > 1 else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {sd} |")

    for field, what in (("final_accuracy", "final"), ("mean_last5_accuracy", f"last-{LAST} mean")):
        row(f"dense, {what} acc %", [100 * r["dense"][field] for _, r in runs])
    for k in keys:
        for field, what in (("acc_drop_pts", "final"), ("mean_last5_drop_pts", f"last-{LAST}")):
            row(f"{w[k]['label']}: drop, {what}", [r[k][field] for _, r in runs])
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--rounds",
        type=_args.positive_int,
        default=W_ROUNDS,
        help=f"rounds of W ({W_ROUNDS} as defined)",
    )
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--only", help="comma-separated configuration keys (dense is always run)")
    ap.add_argument("--all", action="store_true", help=f"also {', '.join(EXTRA)}")
    ap.add_argument(
        "--long-rounds", type=int, default=0, help="also run --long-only for this many rounds"
    )
    ap.add_argument(
        "--long-only", default="topk_ef_0.01,powersgd_r2,powersgd_r2_cold2", help="(dense always)"
    )
    ap.add_argument(
        "--server",
        action="store_true",
        help=f"also run dense and {VARIANT_ONLY} under each server optimizer of SERVERS",
    )
    ap.add_argument(
        "--participation",
        type=_args.int_list(1, wl.NUM_CLIENTS, "clients per round"),
        default=[],
        metavar="M,M,...",
        help=f"also run dense and {VARIANT_ONLY} with M clients per round (e.g. 25,50,100)",
    )
    ap.add_argument(
        "--seeds",
        type=_args.int_list(1, 2**31 - 1, "seeds (0 is W's)"),
        default=[],
        metavar="S,S,...",
        help=f"also run dense and {SEEDS_ONLY} with seed S for the initial weights, client "
        "sampling and minibatches (W's partition), and a table of the drops' spread",
    )
    ap.add_argument(
        "--long-seeds",
        type=_args.int_list(1, 2**31 - 1, "seeds (0 is W's)"),
        default=[],
        metavar="S,S,...",
        help="as --seeds, for dense and --long-only over --long-rounds rounds",
    )
    ap.add_argument(
        "--target-acc",
        type=_args.float_in(0, 1, lo_open=True),  # a fraction: 0.9 is 90%
        default=0.9,
        help="for 'round/bytes to' columns (a fraction, 0.9 = 90%%)",
    )
    ap.add_argument(
        "--threads",
        type=_args.positive_int,
        default=1,
        help="torch threads (1: on 2 shared cores, 2 threads ran 13x slower when another "
        "process held a core)",
    )
    ap.add_argument("--data-dir", default=str(wl.DEFAULT_DATA_DIR))
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    ap.add_argument(
        "--png",
        help=f"the plot ('' for none; default: {shown(DEFAULT_PNG)} for a full run of W, "
        "else next to --json)",
    )
    ap.add_argument("--list", action="store_true", help="list the configurations and exit")
    ap.add_argument(
        "--replot", action="store_true", help="redraw table and plot from --json, no training"
    )
    a = ap.parse_args()
    if a.long_seeds and not a.long_rounds:
        ap.error("--long-seeds needs --long-rounds N (the horizon of the seeds' runs)")
    if a.replot:
        return replot(a)
    if a.list:
        for key, _, label, _ in CONFIGS:
            print(f"{key:<18} {label}{'  (--all)' if key in EXTRA else ''}")
        return
    _args.check_mnist5k(ap, a.data_dir)
    torch.set_num_threads(a.threads)
    if a.quick:
        keys = QUICK
    elif a.only:
        keys = a.only.split(",")
    else:
        keys = [c[0] for c in CONFIGS if a.all or c[0] not in EXTRA]
    chosen = pick(keys)
    png = png_path(a, a.rounds, [c[0] for c in chosen])
    long_chosen = pick(a.long_only.split(",")) if a.long_rounds else []
    started = time.perf_counter()

    statement = (
        f"Workload W: mnist5k ({shown(a.data_dir)}), 4,000 training images over "
        f"{wl.NUM_CLIENTS} clients (Dirichlet alpha={wl.ALPHA}, default_rng({wl.PARTITION_SEED})),"
        f" CNN (cnn(padding='valid'), 582,026 parameters, init seed {wl.INIT_SEED}), FedAvg "
        f"weighted by samples, 10 clients/round (ClientSampler, seed {wl.SCHEDULE_SEED}), "
        f"{wl.EPOCHS} local epoch, batch {wl.BATCH_SIZE}, SGD lr {wl.LR}, {a.rounds} rounds, "
        f"SimRuntime() (loops the CNN on CPU), {a.threads} torch thread(s), torch "
        f"{torch.__version__}. Same seeds and schedule for every configuration; only the "
        "uplink compressor changes (EF = error_feedback, residual kept per client). Accuracy: "
        "the 1,000 test images after each round."
    )
    print(statement + "\n")
    results = run_all(chosen, a.rounds, a)
    md = table(results, a.target_acc)
    print("\n" + md + "\n")
    print(
        "drop = dense minus compressed, in percentage points (positive = worse than dense); "
        "fewer bytes = dense total uplink / compressed total uplink."
    )
    long = None
    if long_chosen:
        print(f"\nLonger run: the same, {a.long_rounds} rounds (not W; no headline)")
        long_results = run_all(long_chosen, a.long_rounds, a)
        long_md = table(long_results, a.target_acc)
        print("\n" + long_md + "\n")
        long = {"rounds": a.long_rounds, "results": long_results, "table_markdown": long_md}
    servers = {
        key: run_variant(label, "instead of FedAvg", a, server=server)
        for key, label, server in (SERVERS if a.server else [])
    }
    participation = {
        f"{m}_per_round": run_variant(f"{m} clients per round", "instead of 10", a, per_round=m)
        for m in a.participation
    }
    seeds = {
        f"seed_{s}": run_variant(
            f"seed {s}", "instead of 0 (weights, sampling, batches)", a, seed=s, keys=SEEDS_ONLY
        )
        for s in a.seeds
    }
    seeds_md = seed_table(results, seeds) if seeds else None
    if seeds_md:
        print("\nAcross seeds (W's partition):\n\n" + seeds_md + "\n")
    long_seeds = {
        f"seed_{s}": run_variant(
            f"seed {s}",
            f"instead of 0, {a.long_rounds} rounds",
            a,
            seed=s,
            keys=a.long_only,
            rounds=a.long_rounds,
        )
        for s in a.long_seeds
    }
    long_seeds_md = seed_table(long["results"], long_seeds) if long and long_seeds else None
    if long_seeds_md:
        print(f"\nAcross seeds, {a.long_rounds} rounds:\n\n" + long_seeds_md + "\n")

    headline: dict[str, Any] = {}
    # The keys are the paper's PowerSGD (one warm-started step); the 2-iteration cold
    # start (better for clients sampled every ~10 rounds) gets keys of its own.
    keys = [
        ("topk_ef", "topk_ef_0.01"),
        ("powersgd_r2", "powersgd_r2"),
        ("powersgd_r2_cold2", "powersgd_r2_cold2"),
    ]
    is_w = a.rounds == W_ROUNDS  # the headline and the targets are W's, as defined
    for name, key in keys:
        if is_w and key in results:
            headline[f"{name}_acc_drop"] = results[key]["acc_drop_pts"]
            headline[f"{name}_byte_reduction"] = results[key]["byte_reduction"]
    targets = {}
    if is_w and "topk_ef_0.01" in results:
        r = results["topk_ef_0.01"]
        targets["topk_ef_0.01"] = {
            "within_1_point": r["acc_drop_pts"] is not None and r["acc_drop_pts"] <= 1.0,
            "at_least_50x_fewer_bytes": r["byte_reduction"] is not None
            and r["byte_reduction"] >= 50.0,
        }
    if is_w and "powersgd_r2" in results:
        drop = results["powersgd_r2"]["acc_drop_pts"]
        targets["powersgd_r2"] = {"within_1_point": drop is not None and drop <= 1.0}
    if not is_w:
        print(f"--rounds {a.rounds}: not W ({W_ROUNDS} rounds), so no headline and no targets")
    for key, t in targets.items():
        print(f"target {key}: {', '.join(f'{k}={v}' for k, v in t.items())}")
    if png:
        plot(results, a.rounds, png, long)
        print(f"plot: {shown(png)}")
    total = time.perf_counter() - started
    print(f"total time {total:.0f} s")
    report = {
        "statement": statement,
        "settings": {
            "rounds": a.rounds,
            "threads": a.threads,
            "data_dir": shown(a.data_dir),
            "configurations": list(results),
            "target_accuracy": a.target_acc,
            "total_seconds": total,
        },
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            # The kernels' instruction set: float rounding, hence accuracies, depend on it.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "results": results,
        "table_markdown": md,
        "long_run": long,
        "server_optimizers": servers,
        "participation": participation,
        "seeds": seeds,
        "seeds_table_markdown": seeds_md,
        "long_seeds": long_seeds,
        "long_seeds_table_markdown": long_seeds_md,
        "targets": targets,
        "headline": headline,
    }
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    print("headline:", json.dumps(headline))


if __name__ == "__main__":
    main()
