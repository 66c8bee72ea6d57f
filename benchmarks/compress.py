"""Compressor throughput against this machine's memory bandwidth, and DGC vs exact top-k.

Every compressor of ``shoal.compress`` compresses and decompresses one 10M-element float32
vector (``torch.randn``, seed 0: a stand-in for a flattened gradient). Throughput is GB/s of
gradient processed: input bytes / (compress + decompress time), the median of ``--reps`` timed
calls after one warm-up, on ``--threads`` torch threads (default 1). The yardstick is a
``clone()`` of the same vector: bytes read + written / time (measured before every compressor
and once at the end, the median of all); a ``sum()`` gives the read-only figure. The fraction
printed is compressor GB/s / copy GB/s, so a compressor exactly as fast as one copy scores 0.5
(a copy moves two bytes per input byte).

PowerSGD needs layer shapes: the headline row uses the parameter shapes of a realistic ~10M
model, a 3-layer Transformer encoder (``nn.TransformerEncoderLayer(512, 8, 2048)``) with a
1000 x 512 embedding (9,969,152 parameters, 13 matrices, 24 vectors sent dense), on the first
9,969,152 entries of the vector; a second row uses one [2500, 4000] matrix on its first 10M
(so ``--size`` is at least 10M).

Homomorphic reduction (Jang et al. 2017): the server's work for ``--workers`` payloads of
random-k (shared seed) and count sketch, summed in compressed form and decompressed
once, against decompressing every payload and adding the dense vectors
(``homomorphic_server_speedup_<compressor>`` is their time ratio). For top-k and PowerSGD,
whose messages do not add, a data-parallel worker's sum of the ``--workers`` all-gathered
payloads by ``shoal.compress.decompress_sum`` against decompressing each and adding
(``inbox_sum_speedup_<compressor>``).

DGC: ``dgc_top_k(0.001).compress`` against exact top-k on the same vector, twice:
``torch.topk(|x|, k)`` as PyTorch gives it (``dgc_speedup_vs_exact_topk``, the issue's
yardstick) and Shoal's ``top_k(0.001).compress``, which filters candidates before its
``torch.topk`` (``speedup_vs_top_k_compress`` in the JSON; ``top_k_speedup_vs_torch_topk`` is
Shoal's exact top-k against ``torch.topk``). Time ratios of medians.

``--device cuda`` runs everything on the GPU (the vector lives there; every timing waits for
the device to finish, ``torch.cuda.synchronize``); the yardstick is then the GPU's copy
bandwidth.

    python benchmarks/compress.py --json benchmarks/results/compress.json
    python benchmarks/compress.py --quick           # 3 reps, ~1 min
    python benchmarks/compress.py --device cuda --json benchmarks/results/compress_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import _args
from shoal import compress as C
from shoal.functional import ParamSpec

SPARSE_RATIO = 0.01
DGC_RATIO = 0.001
THRESHOLD_TAU = 2.5758  # |N(0, 1)| >= tau for 1% of the entries: the same density as top-k
MATRIX = (2500, 4000)  # PowerSGD's second row: one matrix of 10M entries
MIN_SIZE = MATRIX[0] * MATRIX[1]  # PowerSGD's inputs are as long as its shapes: the longer one


def transformer_shapes() -> tuple[torch.Size, ...]:
    """Parameter shapes of a ~10M Transformer encoder with an embedding (in model order)."""
    model = nn.ModuleDict(
        {
            "embedding": nn.Embedding(1000, 512),
            "encoder": nn.TransformerEncoder(
                nn.TransformerEncoderLayer(512, 8, 2048), 3, enable_nested_tensor=False
            ),
        }
    )
    return ParamSpec.of(model).shapes


def clock(x: torch.Tensor) -> float:
    """``time.perf_counter()`` once the work queued on ``x``'s device has finished (CUDA
    kernels run asynchronously: without the wait a timing would stop at the launch)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter()


def median_seconds(fn: Callable[[], Any], reps: int, x: torch.Tensor) -> tuple[float, list[float]]:
    """Median seconds of ``fn()`` (which works on ``x``'s device) over ``reps`` calls."""
    fn()  # warm-up: allocator, lazy initialisation
    times = []
    for _ in range(reps):
        t0 = clock(x)
        fn()
        times.append(clock(x) - t0)
    return statistics.median(times), times


def bandwidth(x: torch.Tensor, reps: int) -> dict[str, float]:
    """GB/s of ``x.clone()`` (read + written bytes; the copy lands in freshly allocated memory,
    page faults included, as a compressor's outputs do), of ``copy_`` into an existing buffer
    (read + written, no allocation) and of ``sum()`` (read only)."""
    nbytes = x.numel() * x.element_size()
    out = torch.empty_like(x)
    t_clone, _ = median_seconds(lambda: x.clone(), reps, x)
    t_copy, _ = median_seconds(lambda: out.copy_(x), reps, x)
    t_read, _ = median_seconds(lambda: x.sum(), reps, x)
    return {
        "clone_GBps": 2 * nbytes / t_clone / 1e9,
        "copy_into_GBps": 2 * nbytes / t_copy / 1e9,
        "read_GBps": nbytes / t_read / 1e9,
    }


def cases(d: int, shapes: tuple[torch.Size, ...]) -> list[tuple[str, str, Any, int]]:
    """``(key, configuration, compressor, input length)`` for every compressor."""
    top = C.top_k(ratio=SPARSE_RATIO)
    n_tf = sum(s.numel() for s in shapes)
    r = SPARSE_RATIO
    return [
        ("identity", "identity()", C.identity(), d),
        ("fp16", "fp16()", C.fp16(), d),
        ("bf16", "bf16()", C.bf16(), d),
        ("top_k", f"top_k(ratio={r})", top, d),
        ("random_k", f"random_k(ratio={r})", C.random_k(r), d),
        ("threshold", f"threshold(tau={THRESHOLD_TAU}) (~1% kept)", C.threshold(THRESHOLD_TAU), d),
        ("dgc_top_k", f"dgc_top_k(ratio={r})", C.dgc_top_k(r), d),
        ("qsgd", "qsgd(levels=4, bucket_size=512)", C.qsgd(4), d),
        ("terngrad", "terngrad() (one scale)", C.terngrad(), d),
        ("scaled_sign", "scaled_sign()", C.scaled_sign(), d),
        ("natural_compression", "natural_compression()", C.natural_compression(), d),
        ("powersgd", "powersgd(transformer shapes, rank=2)", C.powersgd(shapes, 2), n_tf),
        ("powersgd_2500x4000", "powersgd([[2500, 4000]], rank=2)",
         C.powersgd([MATRIX], 2), MIN_SIZE),
        ("count_sketch", f"count_sketch(width={d // 100}, depth=3)", C.count_sketch(d // 100), d),
        ("error_feedback", f"error_feedback(top_k(ratio={r}))", C.error_feedback(top), d),
        ("layerwise", f"layerwise(top_k(ratio={r}), transformer shapes)",
         C.layerwise(top, shapes), n_tf),
    ]  # fmt: skip


def measure(compressor: Any, x: torch.Tensor, reps: int) -> dict[str, Any]:
    """Median compress, decompress and round-trip times (each rep decompresses its payload)."""
    state = compressor.init(x)
    payload, state = compressor.compress(x, state)  # warm-up
    nbytes = compressor.nbytes(payload)
    exact = nbytes == len(C.serialize(payload))
    compressor.decompress(payload)
    comp, dec = [], []
    for _ in range(reps):
        t0 = clock(x)
        payload, state = compressor.compress(x, state)
        t1 = clock(x)
        compressor.decompress(payload)
        t2 = clock(x)
        comp.append(t1 - t0)
        dec.append(t2 - t1)
    roundtrip = [a + b for a, b in zip(comp, dec)]
    t = statistics.median(roundtrip)
    in_bytes = x.numel() * x.element_size()
    return {
        "input_elements": x.numel(),
        "payload_bytes": nbytes,
        "nbytes_equals_serialized": exact,
        "compression_ratio": in_bytes / nbytes,
        "roundtrip_s": t,
        "roundtrip_s_all": roundtrip,
        "compress_s": statistics.median(comp),
        "decompress_s": statistics.median(dec),
        "GBps": in_bytes / t / 1e9,
    }


def dgc_vs_topk(x: torch.Tensor, reps: int) -> dict[str, Any]:
    exact, dgc = C.top_k(ratio=DGC_RATIO), C.dgc_top_k(DGC_RATIO)
    k = exact.num_kept(x.numel())
    box = {"state": dgc.init(x)}
    kept: list[int] = []

    def run_dgc() -> None:
        p, box["state"] = dgc.compress(x, box["state"])
        kept.append(p["values"].numel())

    t_exact, _ = median_seconds(lambda: exact.compress(x, None), reps, x)
    t_dgc, _ = median_seconds(run_dgc, reps, x)
    t_bare, _ = median_seconds(lambda: torch.topk(x.abs(), k, sorted=False), reps, x)
    return {
        "density": DGC_RATIO,
        "k": k,
        "dgc_kept": {"min": min(kept), "max": max(kept)},
        "exact_top_k_compress_s": t_exact,
        "dgc_top_k_compress_s": t_dgc,
        "bare_torch_topk_abs_s": t_bare,
        "speedup_vs_top_k_compress": t_exact / t_dgc,
        "speedup_vs_bare_torch_topk": t_bare / t_dgc,
    }


def sum_then_decompress(comp: Any, payloads: list[Any]) -> torch.Tensor:
    return comp.decompress(comp.sum_payloads(payloads))


def decompress_each(comp: Any, payloads: list[Any]) -> torch.Tensor:
    """What a server without homomorphic sums does: a running dense sum of decompressions."""
    total = comp.decompress(payloads[0]).clone()
    for p in payloads[1:]:
        total += comp.decompress(p)
    return total


def homomorphic_saving(x: torch.Tensor, workers: int, reps: int) -> dict[str, Any]:
    """The server's reduction of ``workers`` payloads: sum them in compressed form and
    decompress once, against decompressing each one and adding the dense vectors."""
    d = x.numel()
    comps = {
        "random_k": (C.random_k(SPARSE_RATIO), d),
        "count_sketch": (C.count_sketch(d // 100), d),
    }  # PowerSGD sums only in its two-round protocol (shared P), measured in shoal.parallel
    out: dict[str, Any] = {}
    for key, (comp, n) in comps.items():
        # Distinct worker vectors; every worker starts from the same state (the shared seed
        # that makes the payloads addable).
        payloads = []
        for w in range(workers):
            xw = x[:n].roll(w * 997)
            payloads.append(comp.compress(xw, comp.init(xw))[0])
        t_hom, _ = median_seconds(lambda c=comp, ps=payloads: sum_then_decompress(c, ps), reps, x)
        t_each, _ = median_seconds(lambda c=comp, ps=payloads: decompress_each(c, ps), reps, x)
        hom, each = sum_then_decompress(comp, payloads), decompress_each(comp, payloads)
        out[key] = {
            "workers": workers,
            "input_elements": n,
            "sum_then_decompress_s": t_hom,
            "decompress_each_then_sum_s": t_each,
            "speedup": t_each / t_hom,
            "max_abs_difference": float((hom - each).abs().max()),
        }
    # Count sketch decodes with a median over rows, so the estimate of the sum differs from
    # the sum of estimates (neither is closer in general); random-k agrees exactly.
    out["count_sketch"]["note"] = "median decoding: decompress(sum) is not sum(decompress)"
    return out


def inbox_sum(x: torch.Tensor, shapes: tuple[torch.Size, ...], workers: int, reps: int) -> dict:
    """A data-parallel worker's sum of ``workers`` all-gathered payloads that do not add in
    compressed form: ``shoal.compress.decompress_sum`` (top-k: scatter-add into one buffer;
    PowerSGD: one product of the stacked factors) against decompressing each and adding."""
    n_psgd = sum(s.numel() for s in shapes)
    comps = {
        "top_k": (C.top_k(SPARSE_RATIO), x.numel()),
        "powersgd": (C.powersgd(shapes, 2), n_psgd),
    }
    out: dict[str, Any] = {}
    for key, (comp, n) in comps.items():
        payloads = []
        for w in range(workers):
            xw = x[:n].roll(w * 997)
            payloads.append(comp.compress(xw, C.init_for_worker(comp, xw, w))[0])
        t_sum, _ = median_seconds(lambda c=comp, ps=payloads: C.decompress_sum(c, ps), reps, x)
        t_each, _ = median_seconds(lambda c=comp, ps=payloads: decompress_each(c, ps), reps, x)
        fast, each = C.decompress_sum(comp, payloads), decompress_each(comp, payloads)
        out[key] = {
            "workers": workers,
            "input_elements": n,
            "decompress_sum_s": t_sum,
            "decompress_each_then_sum_s": t_each,
            "speedup": t_each / t_sum,
            "max_abs_difference": float((fast - each).abs().max()),
            "max_abs_sum": float(each.abs().max()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=MIN_SIZE, help=f"vector length (>= {MIN_SIZE:,})")
    ap.add_argument(
        "--reps", type=_args.positive_int, default=7, help="timed calls per figure (median)"
    )
    ap.add_argument("--threads", type=_args.positive_int, default=1, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="3 reps")
    ap.add_argument(
        "--workers", type=_args.positive_int, default=16, help="payloads the server reduces"
    )
    ap.add_argument("--device", type=_args.device, default="cpu", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    a = ap.parse_args()
    if a.size < MIN_SIZE:  # else a ValueError traceback from PowerSGD, mid-run
        ap.error(f"--size must be >= {MIN_SIZE:,} (PowerSGD's inputs), got {a.size:,}")
    reps = 3 if a.quick else a.reps
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    x = torch.randn(a.size, generator=torch.Generator().manual_seed(0)).to(dev)
    where = (
        torch.cuda.get_device_name(dev)
        if x.is_cuda
        else (f"{a.threads} torch thread(s), {platform.processor() or platform.machine()}")
    )
    shapes = transformer_shapes()
    mib = x.numel() * 4 / 2**20
    print(
        f"Compress + decompress of a {a.size:,}-element float32 vector ({mib:.0f} MiB, randn "
        f"seed 0), median of {reps} calls after a warm-up; torch {torch.__version__}, {where}."
    )
    # The bandwidth is measured before every compressor and at the end (other processes share
    # the cores); the yardstick is the median of those measurements.
    bws: list[dict[str, float]] = []
    rows: dict[str, dict[str, Any]] = {}
    for key, label, comp, n in cases(a.size, shapes):
        bws.append(bandwidth(x, reps))
        rows[key] = {"configuration": label, **measure(comp, x[:n], reps)}
    bws.append(bandwidth(x, reps))
    bw = {k: statistics.median(b[k] for b in bws) for k in bws[0]}
    clone_bw = bw["clone_GBps"]
    for r in rows.values():
        r["fraction_of_copy_bandwidth"] = r["GBps"] / clone_bw
    dgc = dgc_vs_topk(x, reps)
    hom = homomorphic_saving(x, a.workers, reps)
    inbox = inbox_sum(x, shapes, a.workers, reps)

    spread = [b["clone_GBps"] for b in bws]
    print(
        f"memory bandwidth, copy = clone() (read + written bytes / time, into fresh memory): "
        f"{clone_bw:.2f} GB/s (median of {len(bws)} measurements, {min(spread):.2f}.."
        f"{max(spread):.2f}); copy_ into an existing buffer: {bw['copy_into_GBps']:.2f} GB/s; "
        f"read-only (sum()): {bw['read_GBps']:.2f} GB/s. Fraction = compressor GB/s / clone GB/s:"
        " a compressor as fast as one copy scores 0.50.\n"
    )
    head = f"| {'compressor':<58} | {'ratio':>7} | {'comp ms':>8} | {'decomp ms':>9} "
    head += f"| {'GB/s':>8} | {'of copy bw':>10} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows.values():
        print(
            f"| {r['configuration']:<58} | {r['compression_ratio']:>6.1f}x "
            f"| {1e3 * r['compress_s']:>8.1f} | {1e3 * r['decompress_s']:>9.1f} "
            f"| {r['GBps']:>8.2f} | {r['fraction_of_copy_bandwidth']:>10.3f} |"
        )
    print(
        f"\nidentity does no work (compress and decompress return the input tensor): its figure "
        f"is Python call overhead. All payloads: nbytes == len(serialize(payload)): "
        f"{all(r['nbytes_equals_serialized'] for r in rows.values())}."
    )
    print(
        f"\nDGC vs exact top-k at density {DGC_RATIO} (k = {dgc['k']:,}): dgc_top_k.compress "
        f"{1e3 * dgc['dgc_top_k_compress_s']:.1f} ms (kept {dgc['dgc_kept']['min']:,}.."
        f"{dgc['dgc_kept']['max']:,}), top_k.compress {1e3 * dgc['exact_top_k_compress_s']:.1f} "
        f"ms -> {dgc['speedup_vs_top_k_compress']:.2f}x; bare torch.topk(|x|, k) "
        f"{1e3 * dgc['bare_torch_topk_abs_s']:.1f} ms -> {dgc['speedup_vs_bare_torch_topk']:.2f}x "
        "(Shoal's exact top_k filters candidates before torch.topk)"
    )
    print(
        f"\nServer-side reduction of {a.workers} workers' payloads (homomorphic compressors): "
        "sum in compressed form + one decompress vs decompress each + dense sum"
    )
    for k, h in hom.items():
        print(
            f"  {k:<13} {1e3 * h['sum_then_decompress_s']:8.1f} ms vs "
            f"{1e3 * h['decompress_each_then_sum_s']:8.1f} ms -> {h['speedup']:.1f}x "
            f"(max |difference| {h['max_abs_difference']:.1e})"
        )
    print(
        f"\nA data-parallel worker's sum of {a.workers} all-gathered payloads (compressors "
        "whose messages do not add): decompress_sum vs decompress each + dense sum"
    )
    for k, h in inbox.items():
        print(
            f"  {k:<13} {1e3 * h['decompress_sum_s']:8.1f} ms vs "
            f"{1e3 * h['decompress_each_then_sum_s']:8.1f} ms -> {h['speedup']:.1f}x "
            f"(max |difference| {h['max_abs_difference']:.1e} of max |sum| {h['max_abs_sum']:.1e})"
        )
    headline: dict[str, Any] = {
        "dgc_speedup_vs_exact_topk": dgc["speedup_vs_bare_torch_topk"],
        "top_k_speedup_vs_torch_topk": dgc["bare_torch_topk_abs_s"] / dgc["exact_top_k_compress_s"],
    }
    headline.update({f"homomorphic_server_speedup_{k}": h["speedup"] for k, h in hom.items()})
    headline.update({f"inbox_sum_speedup_{k}": h["speedup"] for k, h in inbox.items()})
    headline.update(
        {f"bandwidth_fraction_{k}": r["fraction_of_copy_bandwidth"] for k, r in rows.items()}
    )
    report = {
        "statement": (
            f"compress + decompress of a {a.size}-element float32 randn(seed 0) vector, "
            f"{where}, median of {reps} calls; throughput = input bytes / "
            "time; fraction = throughput / clone() bandwidth (read + written bytes / time). "
            "PowerSGD: a 3-layer Transformer encoder (d_model 512, ffn 2048) + 1000x512 "
            "embedding (9,969,152 parameters) and, separately, one [2500, 4000] matrix."
        ),
        "settings": {"size": a.size, "reps": reps, "threads": a.threads, "device": where},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "memory_bandwidth": {**bw, "measurements": bws},
        "compressors": rows,
        "dgc_vs_exact_topk": dgc,
        "homomorphic_server_reduction": hom,
        "inbox_sum": inbox,
        "powersgd_shapes": [list(s) for s in shapes],
        "headline": headline,
    }
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    print("headline:", json.dumps(headline))


if __name__ == "__main__":
    main()
