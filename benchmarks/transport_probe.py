"""The links of ``benchmarks/shaped_network.py``, measured: the alpha and beta of Shoal's exchanges.

``cost_model_check.py`` predicts the shaped runs on ideal links: no latency and exactly the tc
rate. This probe measures what the links really give Shoal's transport: four processes, each in
its own network namespace behind a tc-capped veth link (``_netns.py``, as the shaped runs), run
:func:`shoal.parallel.probe.probe` (what ``shoal probe`` runs) with nothing else running. It
times ``DistComm``'s all-reduce, all-gather and ring gossip of 1 KB to 16 MB, and fits the cost
model's alpha-beta link to them (:func:`shoal.parallel.probe.fit_link`: the latency from the
messages small enough to pass in tbf's burst, the rate from the slope between the two largest
messages of each kind, so the burst cancels), over every kind at once and per kind, to show
where one link does not describe all three.

What the fitted link holds that the ideal one does not: the transport's per-message work
(Python, gloo's handshakes per collective, a peer process waiting to be scheduled, the kernel's
veth and qdisc) as latency, and the TCP/IP headers and tbf's pacing as a lower rate. Run idle,
so not in it: the transport's work competing with training for the CPU (4 workers on 2 cores).

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _args  # noqa: E402
import _netns  # noqa: E402
from shoal.parallel.probe import DEFAULT_SIZES, probe, report, summarize  # noqa: E402
from shoal.runtime.spawn import free_port  # noqa: E402

WORKERS = 4


# -- one rank ------------------------------------------------------------------------------------


def worker(sizes: list[int], repeats: int, out: Path) -> None:
    """One rank: :func:`shoal.parallel.probe.probe`; rank 0 writes the rows to ``out``."""
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env, shutdown

    torch.set_num_threads(1)
    comm = DistComm(init_from_env(device="cpu"))
    rows = probe(comm, sizes, repeats)
    if comm.rank == 0:
        out.write_text(json.dumps(rows))
    shutdown()


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
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        codes = _netns.wait_all(procs, 1800)  # a failed rank stops the others at once
        if any(codes):
            raise SystemExit(f"probe workers failed at {rate}: exit codes {codes}")
        return list(json.loads(out.read_text()))


def summarize_rate(rows: list[dict[str, Any]], rate: str | None) -> dict[str, Any]:
    nominal = _netns.parse_rate(rate) / 8 if rate else None
    return {"rate": rate, "nominal_Bps": nominal, **summarize(rows, nominal)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="100mbit,1gbit", help="tc caps, or 'none' (uncapped)")
    p.add_argument(
        "--sizes",
        type=_args.int_list(1, None, "message bytes"),
        default=",".join(map(str, DEFAULT_SIZES)),
        help="message bytes, comma-separated",
    )
    p.add_argument("--repeats", type=_args.positive_int, default=7)
    p.add_argument("--no-netns", action="store_true", help="loopback, no namespaces or caps")
    p.add_argument("--json", type=_args.json_path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker([int(s) for s in a.worker.split(",")], a.repeats, a.out)
        return
    sizes = a.sizes
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
                # Each namespace has its own ports; loopback shares the machine's: take a free one.
                port = 29620 + k if net is not None else free_port()
                result = summarize_rate(measure(net, rate, sizes, a.repeats, port), rate)
                print("\n" + report(result, f"{rate or 'uncapped'}, 4 ranks"))
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
