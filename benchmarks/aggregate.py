"""Time of each aggregation rule on one server inbox, as a ratio to the plain mean.

Inbox: n = 100 float32 rows of d = 1,663,370 entries (the size of McMahan's CNN,
``shoal.models.cnn()``), i.i.d. ``N(0, 1e-6)``, unit weights: 665 MB. Every rule is called as
the runtime calls it, ``agg(inbox_ND, weights_N)``, on one torch thread; a rule's time is the
median over several calls (fewer for slow rules, one for a rule that needs more than a minute
per call, which the table says). f = 20 (20% of n, as in the robustness grid) wherever a rule
takes it; Bulyan's ``n >= 4f+3`` holds. A rule's ratio to the mean divides its median by the
mean's median timed right before it, so that drift in the shared machine's speed between the
first rule and the last does not enter the ratios.

The mean's effective bandwidth is the bytes of the inbox it reads divided by its time, compared
with the machine's memory bandwidth: bytes read + bytes written over the time of copying a
tensor of the same size into a buffer allocated once (``dst.copy_(x)``). A ``clone()`` is
reported too; it allocates 665 MB afresh every call, so it also times the kernel's first-touch
page faults and understates the bandwidth (6.7x in the committed ``results/aggregate.json``:
3.8 GB/s against 25.8).

    python benchmarks/aggregate.py --json benchmarks/results/aggregate.json   # ~5-10 min
    python benchmarks/aggregate.py --dim 100000                                # smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import _args

NUM_INPUTS, F = 100, 20
SLOW_S = 60.0  # one call above this: report that single call
FEW_S = 10.0  # one call above this: three calls in all
BUDGET_S = 20.0  # otherwise: as many calls as fit in this, 3 to 10


def rules() -> dict[str, tuple[Callable[[], Any], str]]:
    from shoal import aggregate as ag

    return {
        "mean": (ag.mean, "weighted mean (linear)"),
        "median": (lambda: ag.median(F), "coordinate-wise, kthvalue"),
        "trimmed mean": (lambda: ag.trimmed_mean(F), f"f={F}, full sort"),
        "Krum": (lambda: ag.krum(F), f"f={F}, float64 Gram"),
        "multi-Krum": (lambda: ag.multi_krum(F), f"f={F}, m=n-f"),
        "geo. median": (ag.geometric_median, "Weiszfeld, nu=1e-6, <=100 it, tol 1e-6"),
        "CClip": (
            lambda: ag.stateful(ag.centered_clip()),
            "stateful, tau=10, L=3 (epfml defaults)",
        ),
        "Bulyan": (lambda: ag.bulyan(F), f"f={F}"),
        "bucket+TM": (lambda: ag.bucketing(ag.trimmed_mean(F), s=2), f"s=2, trimmed mean f={F}"),
        "NNM+TM": (lambda: ag.nnm(ag.trimmed_mean(F), F), f"f={F}"),
        "Flag": (ag.flag_aggregator, "r=1, lam=0, IRLS to convergence"),
        "MoNNA (1 node)": (
            lambda: _monna(ag.monna(F)),
            f"f={F}, one node's step: own row + 99 neighbours",
        ),
    }


def _monna(rule: Any) -> Callable[[Any, Any], Any]:
    """MoNNA takes the node's own vector first; time one node against the other 99 rows."""
    return lambda x, w: rule(x[0], x[1:])


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(fn: Callable[[], Any]) -> tuple[list[float], str]:
    """Times of several calls (see the module constants), and how they were chosen."""
    first = timed(fn)
    if first > SLOW_S:
        return [first], f"one call only: it took {first:.0f} s (> {SLOW_S:.0f} s)"
    if first > FEW_S:
        return [first] + [timed(fn) for _ in range(2)], "3 calls, the first included"
    reps = min(10, max(3, int(BUDGET_S / max(first, 1e-9))))
    return [timed(fn) for _ in range(reps)], f"{reps} calls after one warm-up"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--dim", type=_args.positive_int, help="entries per row (default: the CNN's 1,663,370)"
    )
    ap.add_argument("--only", help="comma-separated rule names, e.g. mean,Krum (default: all)")
    ap.add_argument("--threads", type=_args.positive_int, default=1)
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    args = ap.parse_args()
    table = rules()
    if args.only:
        unknown = [k for k in args.only.split(",") if k not in table]
        if unknown:
            ap.error(f"--only: unknown rule(s) {unknown}; choose from {', '.join(table)}")
        table = {k: table[k] for k in args.only.split(",")}

    import torch

    torch.set_num_threads(args.threads)
    from shoal.functional import init_params
    from shoal.models import cnn

    cnn_dim = init_params(cnn, 0)[1].numel()
    dim = args.dim or cnn_dim
    gen = torch.Generator().manual_seed(0)
    x_ND = torch.randn(NUM_INPUTS, dim, generator=gen) * 1e-3
    w_N = torch.ones(NUM_INPUTS)
    inbox_bytes = x_ND.numel() * x_ND.element_size()
    print(
        f"Aggregators on one inbox: n={NUM_INPUTS} float32 rows of d={dim:,} "
        f"({'the CNN size' if dim == cnn_dim else 'not the CNN size'}), "
        f"{inbox_bytes / 1e6:.0f} MB, f={F}, {args.threads} torch thread(s); median of calls\n"
    )

    # The machine's memory bandwidth, two ways, read + write bytes over time: clone() (a fresh
    # 665 MB allocation, so it also pays the kernel's first-touch page faults) and copy_()
    # into a buffer allocated once (a STREAM-style copy). The second is the bandwidth figure.
    clone_times, _ = measure(lambda: x_ND.clone())
    dst = torch.empty_like(x_ND)
    copy_times, _ = measure(functools.partial(dst.copy_, x_ND))
    del dst
    clone_gbs = 2 * inbox_bytes / statistics.median(clone_times) / 1e9
    memory_gbs = 2 * inbox_bytes / statistics.median(copy_times) / 1e9
    print(f"memory bandwidth, read + write: copy_ into a kept buffer {memory_gbs:.2f} GB/s,")
    print(f"  clone() (fresh allocation, page faults included) {clone_gbs:.2f} GB/s\n")

    results: dict[str, dict[str, Any]] = {}
    mean = functools.partial(rules()["mean"][0](), x_ND, w_N)
    print(f"{'rule':<15} {'median s':>10} {'calls':>5} {'x mean':>9}  note")
    for name, (make, setting) in table.items():
        agg = make()
        base = statistics.median(measure(mean)[0])  # the mean, just before: a paired ratio
        times, how = measure(functools.partial(agg, x_ND, w_N))
        med = statistics.median(times)
        ratio = med / base
        results[name] = {"seconds": med, "times": times, "calls": how, "setting": setting}
        results[name].update(vs_mean=ratio, mean_seconds_before=base)
        note = how if len(times) < 3 else ""
        print(f"{name:<15} {med:10.3f} {len(times):>5} {ratio:9.1f}  {note}", flush=True)

    mean_s = results["mean"]["seconds"] if "mean" in results else None
    mean_gbs = inbox_bytes / mean_s / 1e9 if mean_s else None
    if mean_gbs is not None:
        print(
            f"\nmean reads the inbox at {mean_gbs:.2f} GB/s: {mean_gbs / memory_gbs:.0%} of the "
            f"copy_ bandwidth ({memory_gbs:.2f} GB/s), {mean_gbs / clone_gbs:.0%} of clone()'s "
            f"({clone_gbs:.2f} GB/s)"
        )
    headline = {
        "mean_bandwidth_fraction": mean_gbs / memory_gbs if mean_gbs else None,
        "krum_vs_mean": results.get("Krum", {}).get("vs_mean"),
    }
    report = {
        "setup": {
            "num_inputs": NUM_INPUTS,
            "dim": dim,
            "dtype": "float32",
            "f": F,
            "inbox_bytes": inbox_bytes,
            "threads": args.threads,
        },
        "memory_bandwidth_gbs": memory_gbs,
        "memory_bandwidth_method": "read + write bytes / median time of dst.copy_(inbox), "
        "dst allocated once",
        "copy_seconds": copy_times,
        "clone_gbs": clone_gbs,
        "clone_seconds": clone_times,
        "mean_gbs": mean_gbs,
        "mean_fraction_of_clone_gbs": mean_gbs / clone_gbs if mean_gbs else None,
        "results": results,
        "headline": headline,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("headline:", json.dumps(headline))


if __name__ == "__main__":
    main()
