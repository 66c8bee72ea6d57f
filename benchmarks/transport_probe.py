"""The links of ``benchmarks/shaped_network.py``, measured: the alpha and beta of Shoal's exchanges.

``cost_model_check.py`` predicts the shaped runs on ideal links: no latency and exactly the tc
rate. This probe measures what the links really give Shoal's transport. Four processes, each in
its own network namespace behind a tc-capped veth link (``_netns.py``, as the shaped runs),
time :class:`shoal.parallel.DistComm`'s three exchanges with nothing else running:

- ``all_reduce``: ``all_reduce_mean`` of a dense float32 vector (synchronous SGD);
- ``all_gather``: ``all_gather_payloads`` of one float32 payload (compressed messages that do
  not add: the lengths and layout travel with the data, a second gather when a block outgrows
  the capacity the last one set);
- ``p2p``: ``neighbors`` on a ring of 4 (D-PSGD: each rank sends its vector to both neighbours).

Each size is timed ``--repeats`` times after one untimed call (a barrier before each; the time
of a call is the slowest rank's; the median is kept). Every call also records the
:class:`shoal.cost.Exchange` the communicator charges for it, so the cost model's time of that
exchange on a link ``(alpha, beta)`` is ``a * alpha + b / beta`` with coefficients ``a`` and
``b`` that the model itself gives (:func:`coefficients`: the model evaluated on two unit
links). The fit is Hockney's: the latency from the small messages, the rate from the large
ones (:func:`fit_link`), over every kind at once, and per kind, to show where one link does not
describe all three.

What the fitted link holds that the ideal one does not: the transport's per-message work
(Python, serializing, gloo's TCP handshakes per collective, the kernel's veth and qdisc) as
latency, and the TCP/IP headers and tbf's pacing as a lower rate. Run idle, so not in it: the
transport's work competing with training for the CPU (4 workers on 2 cores).

    sudo python benchmarks/transport_probe.py --json benchmarks/results/transport_probe.json
    python benchmarks/transport_probe.py --no-netns --rates none     # loopback, no root

``cost_model_check.py --probe benchmarks/results/transport_probe.json`` predicts each shaped
run on the fitted link of its rate as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _netns  # noqa: E402
from shoal.cost import CostModel, Exchange, Link, Network  # noqa: E402

WORKERS = 4
KINDS = ("all_reduce", "all_gather", "p2p")
DEFAULT_SIZES = "1024,16384,131072,1048576,6650000,16777216"  # the CNN's gradient: 6.65 MB


# -- the fit ------------------------------------------------------------------------------------


def coefficients(exchanges: Sequence[Exchange], num_workers: int) -> tuple[float, float]:
    """``(a, b)`` such that the cost model charges ``exchanges`` ``a * alpha + b / beta``
    seconds on links of latency ``alpha`` and rate ``beta`` (no compute): the model on a link
    of unit latency and no transfer time, and on one of no latency and unit rate."""
    no_compute = np.zeros(num_workers)

    def charge(link: Link) -> float:
        model = CostModel(Network("probe", link, link))
        return model.step_seconds(list(exchanges), no_compute, 0)

    return charge(Link(1.0, 1e300)), charge(Link(0.0, 1.0))


SMALL_BYTES = 16384
"""Messages up to this size set the latency: at either cap they fit in tbf's burst (64 KiB at
100 Mbit/s, 1.25 MB at 1 Gbit/s), so they leave unpaced and their time is the transport's
per-message work."""


def _slope(rows: Sequence[dict[str, Any]]) -> float:
    """Seconds per unit of ``b`` between the two largest messages: the burst a full token
    bucket lets through unpaced, and the latency, are the same for both and cancel."""
    big, bigger = sorted(rows, key=lambda r: r["b"])[-2:]
    return float((bigger["seconds"] - big["seconds"]) / (bigger["b"] - big["b"]))


def fit_link(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``(alpha, beta)`` of ``seconds ~ a * alpha + b / beta`` over ``rows`` (keys ``kind``,
    ``nbytes``, ``a``, ``b``, ``seconds``), in Hockney's manner: ``alpha`` the median of
    ``seconds / a`` over the small messages, ``1 / beta`` the median over the kinds of the
    slope between their two largest messages. Also the median and largest ``|measured /
    fitted - 1|`` over every row; a large message's time sits below the fitted line by the
    burst, and a middle-sized one's may sit far below it (most of it passes in the burst)."""
    small = [r for r in rows if r["nbytes"] <= SMALL_BYTES]
    kinds = sorted({r["kind"] for r in rows})
    by_kind = [[r for r in rows if r["kind"] == k and r["nbytes"] > SMALL_BYTES] for k in kinds]
    if not small or any(len(group) < 2 for group in by_kind):
        raise ValueError(
            f"need messages of at most {SMALL_BYTES} bytes, and two larger ones of each kind"
        )
    alpha = statistics.median(r["seconds"] / r["a"] for r in small)
    inv_beta = statistics.median(_slope(group) for group in by_kind)
    if inv_beta <= 0:
        raise ValueError("the largest messages took no longer than smaller ones: no rate to fit")
    errors = [abs(r["seconds"] / (r["a"] * alpha + r["b"] * inv_beta) - 1) for r in rows]
    return {
        "latency_s": alpha,
        "bandwidth_Bps": 1 / inv_beta,
        "median_relative_error": statistics.median(errors),
        "max_relative_error": max(errors),
    }


# -- one rank ------------------------------------------------------------------------------------


def _slowest(seconds: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def worker(sizes: list[int], repeats: int, out: Path) -> None:
    """One rank: time every kind at every size; rank 0 writes the rows to ``out``."""
    import torch.distributed as dist

    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env
    from shoal.topology import ring

    torch.set_num_threads(1)
    comm = DistComm(init_from_env(device="cpu"))
    topology = ring(comm.world_size)
    rows = []
    for nbytes in sizes:
        x_WD = torch.randn(1, max(1, nbytes // 4))
        calls: dict[str, Callable[[], object]] = {
            "all_reduce": lambda x_WD=x_WD: comm.all_reduce_mean(x_WD),
            "all_gather": lambda x_WD=x_WD: comm.all_gather_payloads([{"values": x_WD[0]}]),
            "p2p": lambda x_WD=x_WD: comm.neighbors(x_WD, topology),
        }
        for kind in KINDS:
            seconds = []
            for i in range(repeats + 1):
                comm.exchanges.clear()
                dist.barrier()
                start = time.perf_counter()
                calls[kind]()
                elapsed = _slowest(time.perf_counter() - start)
                if i:  # the first call connects and sizes the gather's capacity
                    seconds.append(elapsed)
            a, b = coefficients(comm.exchanges, comm.world_size)
            row = {"kind": kind, "nbytes": x_WD.numel() * 4, "a": a, "b": b}
            rows.append(row | {"seconds": statistics.median(seconds), "all_seconds": seconds})
    if comm.rank == 0:
        out.write_text(json.dumps(rows))
    dist.destroy_process_group()


# -- the driver ----------------------------------------------------------------------------------


@contextmanager
def links(no_netns: bool) -> Iterator[_netns.Network | None]:
    if no_netns:
        yield None
        return
    with _netns.network(WORKERS) as net:
        yield net


def measure(
    net: _netns.Network | None, rate: str | None, sizes: list[int], repeats: int, port: int
) -> list[dict[str, Any]]:
    """Every kind at every size on 4 ranks, links capped at ``rate`` (``None``: uncapped)."""
    if net is not None:
        net.set_rate(rate)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        procs = []
        for i in range(WORKERS):
            env = dict(os.environ, RANK=str(i), WORLD_SIZE=str(WORKERS), MASTER_PORT=str(port))
            env |= net.env(i) if net is not None else {"MASTER_ADDR": "127.0.0.1"}
            prefix = net.exec_prefix(i) if net is not None else []
            cmd = [*prefix, sys.executable, __file__, "--worker", ",".join(map(str, sizes))]
            cmd += ["--repeats", str(repeats), "--out", str(out)]
            procs.append(subprocess.Popen(cmd, env=env))
        codes = [p.wait(timeout=1800) for p in procs]
        if any(codes):
            raise SystemExit(f"probe workers failed at {rate}: exit codes {codes}")
        return list(json.loads(out.read_text()))


def summarize(rows: list[dict[str, Any]], rate: str | None) -> dict[str, Any]:
    nominal = _netns.parse_rate(rate) / 8 if rate else None

    def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
        try:  # noisy timings (loopback, a busy machine) can leave no rate to fit
            link: dict[str, Any] = fit_link(rows)
        except ValueError as err:
            return {"error": str(err)}
        link["rate_fraction"] = link["bandwidth_Bps"] / nominal if nominal else None
        return link

    joint = fit(rows)
    per_kind = {k: fit([r for r in rows if r["kind"] == k]) for k in KINDS}
    return {"rate": rate, "nominal_Bps": nominal, "fit": joint, "fit_per_kind": per_kind,
            "rows": rows}  # fmt: skip


def print_rate(result: dict[str, Any]) -> None:
    fit, nominal = result["fit"], result["nominal_Bps"]
    print(f"\n{result['rate'] or 'uncapped'}: median seconds of each exchange, 4 ranks")
    print(f"| {'bytes':>9} | " + " | ".join(f"{k:>10}" for k in KINDS) + " |")
    print(f"|{'-' * 11}|" + "|".join("-" * 12 for _ in KINDS) + "|")
    for nbytes in sorted({r["nbytes"] for r in result["rows"]}):
        cells = {r["kind"]: r["seconds"] for r in result["rows"] if r["nbytes"] == nbytes}
        print(f"| {nbytes:9d} | " + " | ".join(f"{cells[k]:10.5f}" for k in KINDS) + " |")
    for name, f in [("all kinds", fit), *result["fit_per_kind"].items()]:
        if "error" in f:
            print(f"  fit, {name:10s}: {f['error']}")
            continue
        share = f" = {f['rate_fraction']:.3f} of the cap" if nominal else ""
        print(
            f"  fit, {name:10s}: alpha {f['latency_s'] * 1e3:7.3f} ms, beta "
            f"{f['bandwidth_Bps'] / 1e6:8.2f} MB/s{share}; |measured/fitted - 1| median "
            f"{f['median_relative_error']:.3f}, max {f['max_relative_error']:.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="100mbit,1gbit", help="tc caps, or 'none' (uncapped)")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="message bytes, comma-separated")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-netns", action="store_true", help="loopback, no namespaces or caps")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker([int(s) for s in a.worker.split(",")], a.repeats, a.out)
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    rates = [None if r == "none" else r for r in a.rates.split(",")]
    if a.no_netns and any(rates):
        raise SystemExit("--no-netns cannot cap the links: use --rates none")
    print(
        f"Shoal's DistComm exchanges on {WORKERS} gloo processes"
        + (" on loopback" if a.no_netns else ", each in a network namespace behind a veth link")
        + f", sizes {sizes} bytes, median of {a.repeats} (slowest rank); fitted to the cost "
        "model's formulas."
    )
    t0 = time.perf_counter()
    results = {}
    try:
        with links(a.no_netns) as net:
            for k, rate in enumerate(rates):
                result = summarize(measure(net, rate, sizes, a.repeats, 29620 + k), rate)
                print_rate(result)
                results[rate or "none"] = result
    except _netns.NetnsError as err:
        raise SystemExit(f"error: {err}") from None
    headline = {}
    for name, r in results.items():
        latency = r["fit"].get("latency_s")
        headline[f"latency_ms_{name}"] = None if latency is None else latency * 1e3
        headline[f"rate_fraction_{name}"] = r["fit"].get("rate_fraction")
    print("headline:", json.dumps(headline))
    if a.json:
        record = {
            "benchmark": "transport_probe",
            "command": "python benchmarks/transport_probe.py " + " ".join(sys.argv[1:]),
            "workers": WORKERS,
            "netns": not a.no_netns,
            "repeats": a.repeats,
            "torch": torch.__version__,
            "machine": platform.machine(),
            # The CPU's kernels and speed set the per-message work: as shaped_network.py records.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "seconds": time.perf_counter() - t0,
            "rates": results,
            "headline": headline,
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
