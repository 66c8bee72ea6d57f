"""Shoal's network cost model against the step times measured on tc-shaped links.

``benchmarks/shaped_network.py`` trained each configuration on 4 processes, each in its own
network namespace behind a veth link capped by ``tc`` (100 Mbit/s and 1 Gbit/s both ways, no
added delay: this kernel has no netem), and recorded, per configuration, the training seconds
per step on rank 0 and the workers' gradient compute per step. Here every configuration is
rebuilt as there (``_shaped_worker.shoal_algorithm``: the same CNN, mnist5k shards, batch,
learning rate, compressors) and run for ``--steps`` steps in simulation with
``train_parallel(network=...)``: links of the same rate with no latency, and
``seconds_per_sample`` = that configuration's measured compute per step / batch. The simulated
communicators record the exchanges the gloo ones do (tested in ``tests/parallel``), so the
predicted seconds per step is what the cost model says the shaped run should have taken; the
ratio measured / predicted says how far to trust ``sim_seconds``. With ``--probe`` (the JSON of
``transport_probe.py``) each run is also predicted on the link the probe fitted at its rate:
the latency and rate Shoal's exchanges really get there, with nothing else running.

Each compressed configuration is predicted twice: with the network and the compute only, and
with the codec's time too (``CostModel.codec_seconds_per_element``): ``shoal.cost.measure_codec``
of its compressor on the CNN's gradient size here, in this one process, times how much slower
the measured run's workers computed than this process does (4 workers shared 2 cores): the
codec is assumed to get the share of a core the compute got. Not in either: Python's and gloo's
own per-message work; and the kernel's byte counts include TCP/IP headers (~3-4% on
1500-byte frames). PyTorch DDP's row uses the exchanges and compute of Shoal's dense
synchronous SGD with buckets all-reduced during the backward pass (``dense_overlap``: DDP's
buckets for this CNN; DDP's own compute is not recorded separately), or of the one after the
backward pass in runs without it. The overlapped forms (overlap SGP, D-PSGD's
Algorithm 1) are charged ``max(compute, transfer)`` a step, and synchronous SGD's buckets
from the end of the forward pass, which assumes the transfer costs the compute nothing; here
the transport's work shares the 2 cores with it.

    python benchmarks/cost_model_check.py --shaped benchmarks/results/shaped_network_all.json \
        --probe benchmarks/results/transport_probe.json \
        --json benchmarks/results/cost_model_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _args  # noqa: E402
import _shaped_worker as shaped  # noqa: E402
from shoal.cost import CostModel, Link, Network, alpha_beta, measure_codec  # noqa: E402
from shoal.parallel import ParallelConfig, SimComm, train_parallel  # noqa: E402

RATES_BPS = {"100mbit": 100e6 / 8, "1gbit": 1e9 / 8}
# The measured run's hyperparameter names -> its worker's flags.
FLAGS = {
    "topk_ratio": "topk-ratio",
    "powersgd_rank": "powersgd-rank",
    "local_sgd_period": "local-period",
    "easgd_period": "easgd-period",
    "dgc_density": "dgc-density",
}


WARMING_UP = frozenset({"dgc"})
"""Configurations whose step cost changes over the run (DGC's sparsity warm-up)."""

PERIODIC = dict.fromkeys(("local_sgd", "local_sgd_topk", "local_sgd_powersgd"), "local_period")
"""Configurations that average every ``period`` steps (the measured run's flag): simulated for
fewer ``--steps`` they never average, and their prediction is the compute alone. (EASGD's
period is not here: it is not predicted.)"""


def simulation_config(a: argparse.Namespace, steps: int) -> ParallelConfig:
    """``steps`` steps as the shaped run trains them, scored and checkpointed once, at the end."""
    return ParallelConfig(
        steps=steps, batch_size=a.batch_size, seed=a.seed, eval_every=steps, progress=False,
        device="cpu", checkpoint_every=steps,
    )  # fmt: skip


Loaded = tuple[Any, list[Any]]
"""mnist5k and its 4 IID shards (``_shaped_worker.load``), read once per check."""


def predicted_seconds_per_step(
    a: argparse.Namespace, loaded: Loaded, config: str, link: Link, compute_s: float,
    steps: int, codec_s: float = 0.0,
) -> float:  # fmt: skip
    """Simulated seconds per step of ``config`` on ``link`` both ways."""
    data, shards = loaded
    model = shaped.build_model(a.model)
    network = CostModel(
        Network("shaped", link, link),
        seconds_per_sample=compute_s / a.batch_size,
        codec_seconds_per_element=codec_s,
    )
    cfg = simulation_config(a, steps)
    epoch_steps = math.ceil(len(shards[0]) / a.batch_size)
    algorithm = shaped.shoal_algorithm(a, config, model, 4, epoch_steps)
    result = train_parallel(model, data, shards, algorithm, cfg, SimComm(4), network=network)
    return result.metrics[-1]["sim_seconds"] / steps


def own_compute_seconds(a: argparse.Namespace, loaded: Loaded, steps: int = 12) -> float:
    """One worker's gradient compute per step in this process, timed as the shaped run's
    workers time theirs (``_shaped_worker.Timed``: the gradient closure's calls)."""
    data, shards = loaded
    model = shaped.build_model(a.model)
    cfg = simulation_config(a, steps)
    timed = shaped.Timed(shaped.shoal_algorithm(a, "dense", model, 1))
    train_parallel(model, data, shards[:1], timed, cfg, SimComm(1))
    return timed.compute_seconds / timed.steps


def codec_seconds_per_element(
    a: argparse.Namespace, config: str, steps: int, epoch_steps: int
) -> float:
    """``measure_codec`` of ``config``'s compressor here (0 for an uncompressed one); DGC's
    own codec over ``steps`` steps of its warm-up's schedule
    (:func:`dgc_codec_seconds_per_element`)."""
    model = shaped.build_model(a.model)
    numel = sum(p.numel() for p in model.parameters())
    algorithm = shaped.shoal_algorithm(a, config, model, 4, epoch_steps)
    if config == "dgc":
        return dgc_codec_seconds_per_element(algorithm.rule, numel, steps)
    compressor = getattr(algorithm, "compressor", None)
    if compressor is None:
        return 0.0
    return measure_codec(compressor, numel, 4)


def longest_run(summary: dict[str, dict[str, Any]], config: str) -> int:
    """The most steps ``config`` trained at any bandwidth (1 when none is recorded)."""
    runs = [per.get(config) for per in summary.values()]
    return int(max((m["steps"] for m in runs if isinstance(m, dict) and m.get("steps")), default=1))


def dgc_codec_seconds_per_element(rule: Any, numel: int, steps: int, repeats: int = 5) -> float:
    """DGC's work per step and gradient entry beside the gradient, as ``measure_codec`` times a
    compressor's: the selection (with momentum correction and masking), encoding one message
    and summing 4 received ones. Its messages shrink during the warm-up, so each density of
    the first ``steps`` steps is timed (median of ``repeats`` after one untimed) and weighted by
    its steps."""
    from shoal.compress import decompress_sum

    encoding = rule.default_compressor
    first: dict[float, int] = {}  # density -> its first step
    counts: dict[float, int] = {}
    for step in range(steps):
        density = rule.density_at(step)
        first.setdefault(density, step)
        counts[density] = counts.get(density, 0) + 1
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for density, step in first.items():
        u_WD, v_WD, seconds = torch.zeros(1, numel), torch.zeros(1, numel), []
        for _ in range(repeats + 1):
            g_WD = torch.randn(1, numel, generator=gen)
            start = time.perf_counter()
            send_WD, u_WD, v_WD = rule.sparsify(g_WD, u_WD, v_WD, [step])
            payload = encoding.compress(send_WD[0], encoding.init(send_WD[0]))[0]
            decompress_sum(encoding, [payload] * 4, send_WD.dtype)
            seconds.append(time.perf_counter() - start)
        total += statistics.median(seconds[1:]) * counts[density]
    return total / steps / numel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--shaped",
        type=_args.json_of("shaped_network"),
        nargs="+",
        default=[Path("benchmarks/results/shaped_network_all.json")],
        help="measured runs (shaped_network.py --json) of one setup; a later file's "
        "configurations replace an earlier one's (a re-run of some of them)",
    )
    ap.add_argument(
        "--steps", type=_args.positive_int, default=16, help="simulated steps per configuration"
    )
    ap.add_argument(
        "--probe",
        type=_args.json_of("transport_probe"),
        help="transport_probe.py --json of the same links: also predict on its fitted links",
    )
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    args = ap.parse_args()
    runs = [json.loads(path.read_text()) for path in args.shaped]
    setup = runs[0]["setup"]
    if setup["workers"] != 4:
        raise SystemExit(f"{args.shaped[0]}: built for 4 workers, got {setup['workers']}")
    summary: dict[str, dict[str, Any]] = {}
    hyper: dict[str, Any] = {}
    for path, run in zip(args.shaped, runs):
        same = ("model", "batch_size_per_worker", "lr", "momentum", "seed")
        # A later run may record a hyperparameter the earlier ones did not have (a new config's).
        own = run["setup"]["hyperparameters"]
        if any(run["setup"][k] != setup[k] for k in same) or any(
            hyper.get(k, v) != v for k, v in own.items()
        ):
            raise SystemExit(f"{path}: another setup than {args.shaped[0]}'s")
        hyper.update(own)
        for bw, configs in run["summary"].items():
            summary.setdefault(bw, {}).update(configs)
    a = shaped.parse_args(
        ["--config", "dense", "--data-dir", setup["data"], "--model", setup["model"],
         "--batch-size", str(setup["batch_size_per_worker"]), "--lr", str(setup["lr"]),
         "--momentum", str(setup["momentum"]), "--seed", str(setup["seed"]), "--out", "."]
        + [f"--{FLAGS[k]}={v}" for k, v in hyper.items()]
    )  # fmt: skip
    periods = {c: getattr(a, PERIODIC[c]) for cs in summary.values() for c in cs if c in PERIODIC}
    if periods and args.steps < max(periods.values()):
        config = max(periods, key=periods.__getitem__)
        ap.error(
            f"--steps must be >= {periods[config]}, {config}'s averaging period in "
            f"{args.shaped[0]}: with fewer it never averages; got {args.steps}"
        )
    torch.set_num_threads(1)
    print(
        f"Cost model vs {', '.join(map(str, args.shaped))} "
        f"({setup['model']} on mnist5k, 4 workers, batch "
        f"{a.batch_size}): predicted = {args.steps} simulated steps on links of the shaped rate, "
        "no latency, the measured compute per step; measured = training seconds per step to "
        "the target on tc-shaped veth links.\n"
    )
    ideal = {bw: alpha_beta(0.0, rate) for bw, rate in RATES_BPS.items()}
    probed = probed_links(args.probe) if args.probe else {}
    if probed:
        print(
            f"Probed links ({args.probe}): "
            + ", ".join(
                f"{bw} alpha {link.latency_s * 1e3:.2f} ms, beta "
                f"{link.bandwidth_Bps / RATES_BPS[bw]:.3f} of the cap"
                for bw, link in probed.items()
            )
            + ".\n"
        )
    rows: list[dict[str, Any]] = []
    cache: dict[tuple[str, str, Link, float], float] = {}
    t0 = time.perf_counter()
    loaded = shaped.load(a, 4)
    own_compute = own_compute_seconds(a, loaded)
    shoal_configs = {c for cs in summary.values() for c in cs if c in shaped.CONFIGS}
    epoch_steps = math.ceil(len(loaded[1][0]) / a.batch_size)  # DGC's warm-up
    codec = {
        c: codec_seconds_per_element(a, c, longest_run(summary, c), epoch_steps)
        for c in sorted(shoal_configs - {"ddp", "easgd"})
    }
    print(
        f"One worker's compute per step here: {own_compute * 1e3:.1f} ms. Codec per gradient "
        "entry here: " + ", ".join(f"{c} {v * 1e9:.1f} ns" for c, v in codec.items() if v) + ".\n"
    )
    probe_head = " | probed link | measured/probed | probed + codec | measured/probed + codec"
    print(
        f"| {'configuration':44s} | link    | measured s/step | predicted | measured/predicted "
        "| with codec | measured/with codec" + (probe_head if probed else "") + " |"
    )
    print(f"|{'-' * 46}|---------|-----------------|-----------|--------------------|"
          "------------|---------------------|"
          + ("-------------|-----------------|----------------|-------------------------|"
             if probed else ""))  # fmt: skip
    for bw, configs in summary.items():
        for config, m in configs.items():
            if not isinstance(m, dict) or not m.get("seconds_per_step") or bw not in RATES_BPS:
                continue
            # DDP all-reduces the buckets dense_overlap does (tests/parallel/test_buckets.py).
            source = config
            if config == "ddp":
                source = "dense_overlap" if "dense_overlap" in configs else "dense"
            if source not in configs:  # DDP's compute is that of a Shoal run of its buckets
                continue
            compute = configs[source]["compute_seconds_per_step"]
            if config not in shaped.CONFIGS or compute is None or config == "easgd":
                continue
            # The codec shares a core as the compute did: scaled by the run's slowdown.
            codec_s = codec[source] * compute / own_compute
            # DGC's messages shrink during its warm-up: simulated for as many steps as measured.
            steps = int(m["steps"]) if source in WARMING_UP else args.steps
            links = {"": ideal[bw]} | ({"probed_": probed[bw]} if bw in probed else {})
            row = {
                "config": config,
                "label": shaped_label(config),
                "bandwidth": bw,
                "measured_seconds_per_step": m["seconds_per_step"],
                "measured_compute_seconds_per_step": compute,
                "codec_seconds_per_element": codec_s,
            }
            cells = f"{m['seconds_per_step']:15.3f}"
            for name, link in links.items():
                for rate, suffix in ((0.0, ""), (codec_s, "with_codec_")):
                    if (bw, source, link, rate) not in cache:
                        cache[bw, source, link, rate] = predicted_seconds_per_step(
                            a, loaded, source, link, compute, steps, rate
                        )
                    pred = cache[bw, source, link, rate]
                    ratio = m["seconds_per_step"] / pred
                    row[f"predicted_{name}{suffix}seconds_per_step"] = pred
                    row[f"measured_over_predicted_{name}{suffix}".rstrip("_")] = ratio
                    cells += f" | {pred:9.3f} | {ratio:18.2f}"
            print(f"| {row['label']:44s} | {bw:7s} | {cells} |")
            rows.append(row)
    ratios = [r["measured_over_predicted"] for r in rows]
    by = {(r["config"], r["bandwidth"]): r for r in rows}

    def ratio_of(
        config: str, key: str = "measured_over_predicted", bw: str = "100mbit"
    ) -> float | None:
        return by[config, bw][key] if (config, bw) in by else None

    headline = {
        "median_measured_over_predicted": statistics.median(ratios),
        "median_measured_over_predicted_with_codec": statistics.median(
            r["measured_over_predicted_with_codec"] for r in rows
        ),
        "dense_measured_over_predicted_100mbit": ratio_of("dense"),
        "dpsgd_measured_over_predicted_100mbit": ratio_of("dpsgd_ring"),
        "topk_ef_measured_over_predicted_100mbit": ratio_of("topk_ef"),
        "topk_ef_measured_over_predicted_with_codec_100mbit": ratio_of(
            "topk_ef", "measured_over_predicted_with_codec"
        ),
        # Overlapped communication is charged max(compute, transfer): the 1 Gbit/s links are
        # where the two are of a size, so where the assumption shows.
        "sgp_overlap_measured_over_predicted_1gbit": ratio_of("sgp_overlap", bw="1gbit"),
        "dpsgd_lian_measured_over_predicted_1gbit": ratio_of("dpsgd_ring_lian", bw="1gbit"),
        "dense_overlap_measured_over_predicted_1gbit": ratio_of("dense_overlap", bw="1gbit"),
        "dgc_measured_over_predicted_100mbit": ratio_of("dgc"),
        "dgc_measured_over_predicted_with_codec_100mbit": ratio_of(
            "dgc", "measured_over_predicted_with_codec"
        ),
    }
    if probed:
        for key in ("measured_over_predicted_probed", "measured_over_predicted_probed_with_codec"):
            ratios_probed = [r[key] for r in rows if key in r]
            if ratios_probed:
                headline[f"median_{key}"] = statistics.median(ratios_probed)
        headline["dense_measured_over_predicted_probed_100mbit"] = ratio_of(
            "dense", "measured_over_predicted_probed"
        )
        headline["topk_ef_measured_over_predicted_probed_with_codec_100mbit"] = ratio_of(
            "topk_ef", "measured_over_predicted_probed_with_codec"
        )
    median = headline["median_measured_over_predicted"]
    print(f"\nmedian measured/predicted over {len(rows)} rows: {median:.2f}")
    print("headline:", json.dumps(headline))
    if args.json:
        out = {
            "benchmark": "cost_model_check",
            "command": "python benchmarks/cost_model_check.py " + " ".join(sys.argv[1:]),
            "measured_runs": [
                {"file": str(path), "command": run.get("command")}
                for path, run in zip(args.shaped, runs)
            ],
            "steps_simulated": args.steps,
            "probe": None
            if not args.probe
            else {
                "file": str(args.probe),
                "links": {bw: vars(link) for bw, link in probed.items()},
            },
            "own_compute_seconds_per_step": own_compute,
            "codec_seconds_per_element_here": {c: v for c, v in codec.items() if v},
            "torch": torch.__version__,
            "machine": platform.machine(),
            "rows": rows,
            "seconds": time.perf_counter() - t0,
            "headline": headline,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def probed_links(path: Path) -> dict[str, Link]:
    """The link ``transport_probe.py`` fitted at each rate it measured that a shaped run has."""
    probe = json.loads(path.read_text())
    if probe.get("benchmark") != "transport_probe":
        raise SystemExit(f"{path}: not a transport_probe.py --json")
    fits = {bw: r["fit"] for bw, r in probe["rates"].items() if bw in RATES_BPS}
    failed = [f"{bw}: {f['error']}" for bw, f in fits.items() if "error" in f]
    if failed:
        raise SystemExit(f"{path}: no link was fitted at " + "; ".join(failed))
    if not fits:
        raise SystemExit(f"{path}: no rate of {sorted(RATES_BPS)} was probed")
    return {bw: alpha_beta(f["latency_s"], f["bandwidth_Bps"]) for bw, f in fits.items()}


def shaped_label(config: str) -> str:
    from shaped_network import LABELS  # the measured run's names for its configurations

    return LABELS.get(config, config)


if __name__ == "__main__":
    main()
