"""``shoal probe``: measure the latency and rate Shoal's exchanges get on a network.

``shoal probe --nproc-per-node 4`` starts 4 local processes; under ``torchrun`` (``torchrun
--nnodes 2 --nproc-per-node 4 ... -m shoal probe``) every process of the job takes part, so
the links between machines are what is measured. Rank 0 prints the timings, the fitted link
(:mod:`shoal.parallel.probe`) and the ``[network]`` keys that give a config's cost model that
link instead of a profile's typical figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

import torch

from shoal.cli import UsageError, file_arg

MAX_FIT_ERROR = 0.5
"""The median relative error of a fit beyond which ``shoal probe`` offers no ``[network]``
keys: on shaped links the fits are within a few percent, and a 0.999 one (sizes too close)
printed a rate of 0.02 MB/s to paste."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="measure the latency and rate of Shoal's exchanges on this network",
        description="Time all-reduce, all-gather and ring gossip of 1 KB to 16 MB between "
        "processes and fit the cost model's alpha-beta link to them. Without torchrun it "
        "starts --nproc-per-node local processes; under torchrun every process of the job "
        "takes part.",
    )
    p.add_argument("--nproc-per-node", type=int, default=2, help="local processes (no torchrun)")
    p.add_argument("--sizes", help="message bytes, comma-separated (default: 1 KB to 16 MB)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per size and exchange")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (NCCL on CUDA)")
    p.add_argument("--json", metavar="PATH", help="also write the timings and fits here")
    p.set_defaults(func=cmd_probe)


def _sizes(text: str | None) -> list[int]:
    from shoal.parallel.probe import DEFAULT_SIZES, SMALL_BYTES

    if text is None:
        return list(DEFAULT_SIZES)
    try:
        given = [int(s) for s in text.split(",")]
    except ValueError:
        raise UsageError(f"--sizes must be byte counts separated by commas, got {text!r}") from None
    sizes = sorted(set(given))
    if len(sizes) < len(given):  # a repeated size was timed once, and fitted as one point
        twice = sorted({s for s in given if given.count(s) > 1})
        raise UsageError(f"--sizes must be distinct, got {twice} more than once in {text!r}")
    if sizes[0] < 4 or sizes[0] > SMALL_BYTES or len([s for s in sizes if s > SMALL_BYTES]) < 2:
        raise UsageError(
            f"--sizes needs one size of 4 to {SMALL_BYTES} bytes (the latency) and two above "
            f"it (the rate), got {text!r}"
        )
    # The messages are float32 vectors of size // 4 entries: 20001 and 20002 were both 20000
    # bytes (a zero slope: ZeroDivisionError in the fit), and 7 was measured as 4 bytes.
    odd = [s for s in sizes if s % 4]
    if odd:
        raise UsageError(
            f"--sizes must be multiples of 4 bytes (float32 messages), got {odd} in {text!r}"
        )
    # The rate is the slope between the two largest: 16388 and 16392 gave 0.02 MB/s.
    if sizes[-1] < 1.5 * sizes[-2]:
        raise UsageError(
            f"--sizes: the two largest (the rate) must be at least 1.5x apart, got {sizes[-2]} "
            f"and {sizes[-1]}"
        )
    return sizes


def _probe_rank(
    sizes: list[int], repeats: int, device: str
) -> tuple[list[dict], dict[str, str]] | None:
    """One process of the probe: every rank measures, rank 0 returns the rows and what
    carried them (the backend and device that ``--device`` resolved to)."""
    from shoal.parallel import DistComm
    from shoal.parallel.probe import probe, transport
    from shoal.runtime.procgroup import init_from_env, shutdown

    comm = DistComm(init_from_env(device=device))
    try:
        rows = probe(comm, sizes, repeats)
    finally:
        shutdown()
    return (rows, transport(comm)) if comm.rank == 0 else None


def cmd_probe(args: argparse.Namespace) -> int:
    from shoal.parallel.probe import network_keys, report, summarize
    from shoal.runtime.procgroup import in_distributed_env
    from shoal.runtime.spawn import spawn_local

    sizes = _sizes(args.sizes)
    json_path = file_arg(args.json, "--json") if args.json else None
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    if args.device not in ("auto", "cpu", "cuda"):  # each process takes its own local GPU
        raise UsageError(f"--device must be auto, cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    if in_distributed_env():
        measured = _probe_rank(sizes, args.repeats, args.device)
        where = f"the {os.environ['WORLD_SIZE']} processes of a torchrun job"
        if measured is None:  # not rank 0: it reports
            return 0
    else:
        if args.nproc_per_node < 2:
            raise UsageError(f"--nproc-per-node must be >= 2, got {args.nproc_per_node}")
        ranks = spawn_local(_probe_rank, args.nproc_per_node, sizes, args.repeats, args.device)
        measured = ranks[0]
        where = f"{args.nproc_per_node} local processes"
    rows, carried = measured
    result = summarize(rows)
    over = f"{carried['backend']} on {carried['device']}"
    over += f" ({carried['gpu']})" if "gpu" in carried else ""
    print(report(result, f"Shoal's exchanges between {where}, {over}, median of {args.repeats}"))
    fit = result["fit"]
    missed = "error" not in fit and fit["median_relative_error"] > MAX_FIT_ERROR
    if missed:
        print(
            f"\nThe alpha-beta link fits these timings badly (|measured/fitted - 1| median "
            f"{fit['median_relative_error']:.2f} > {MAX_FIT_ERROR}): no cost-model keys from it; "
            "probe again with more --repeats or sizes further apart"
        )
    elif "error" not in fit:
        print("\nFor the cost model of a config (simulated time on this link, both ways):")
        print(network_keys(fit))
    if json_path is not None:
        # "device": what --device resolved to (it held the option, "auto", which said nothing).
        record = {"processes": where, **carried, "device_option": args.device, "sizes": sizes,
                  "repeats": args.repeats, "torch": torch.__version__,
                  "machine": platform.machine(), **result}  # fmt: skip
        json_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 1 if "error" in fit or missed else 0
