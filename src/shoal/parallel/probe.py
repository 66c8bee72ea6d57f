"""What a live network gives Shoal's exchanges: their latency and rate, for the cost model.

The cost model (:mod:`shoal.cost`) charges an exchange on alpha-beta links. Its named profiles
hold typical figures; a link you can run on has measurable ones, and those include what the
wire's nominal figures leave out: the transport's per-message work (Python, the collective
library's handshakes, the kernel) as latency, and protocol headers and pacing as a lower rate.

:func:`probe` times :class:`~shoal.parallel.DistComm`'s three exchanges on the current process
group: ``all_reduce`` (``all_reduce_mean`` of a dense float32 vector: synchronous SGD),
``all_gather`` (``all_gather_payloads`` of one float32 payload: compressed messages that do
not add) and ``p2p`` (``neighbors`` on a ring: gossip). Each size is timed ``repeats`` times
after one untimed call (a barrier before each; a call's time is the slowest rank's; the median
is kept). Each call also records the :class:`~shoal.cost.Exchange` the communicator charges, so
the model's time for it on a link ``(alpha, beta)`` is ``a * alpha + b / beta`` with
coefficients the model itself gives (:func:`coefficients`). :func:`fit_link` then fits
``(alpha, beta)`` in Hockney's manner ("The communication challenge for MPP", Parallel
Computing 20(3), 1994: latency from short messages, rate from long ones).

``shoal probe`` runs it on local processes, or on every process of a ``torchrun`` job, and
prints the ``[network]`` keys that put the fitted link into a config.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from shoal.checks import check_count
from shoal.cost import CostModel, Exchange, Link, Network

KINDS = ("all_reduce", "all_gather", "p2p")

SMALL_BYTES = 16384
"""Messages up to this size set the latency. Their transfer time is negligible on fast links,
and on a link shaped by a token bucket (``tc``'s tbf) they pass whole in its burst, unpaced."""

DEFAULT_SIZES = (1024, 16384, 131072, 1048576, 6650000, 16777216)
"""Message bytes: two small ones for the latency, the largest two (at 16 MB, many bursts of a
shaped link) for the rate; 6.65 MB is the gradient of the McMahan et al. CNN."""


def coefficients(exchanges: Sequence[Exchange], num_workers: int) -> tuple[float, float]:
    """``(a, b)`` such that the cost model charges ``exchanges`` ``a * alpha + b / beta``
    seconds on links of latency ``alpha`` and rate ``beta`` (no compute): the model on a link
    of unit latency and no transfer time, and on one of no latency and unit rate."""
    no_compute = np.zeros(num_workers)

    def charge(link: Link) -> float:
        model = CostModel(Network("probe", link, link))
        return model.step_seconds(list(exchanges), no_compute, 0)

    return charge(Link(1.0, 1e300)), charge(Link(0.0, 1.0))


def _slope(rows: Sequence[dict[str, Any]]) -> float:
    """Seconds per unit of ``b`` between the two largest messages: the latency, and the burst
    a full token bucket lets through unpaced, are the same for both and cancel."""
    big, bigger = sorted(rows, key=lambda r: r["b"])[-2:]
    return float((bigger["seconds"] - big["seconds"]) / (bigger["b"] - big["b"]))


def fit_link(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``latency_s`` and ``bandwidth_Bps`` of ``seconds ~ a * alpha + b / beta`` over ``rows``
    (keys ``kind``, ``nbytes``, ``a``, ``b``, ``seconds``): ``alpha`` the median of
    ``seconds / a`` over the messages of at most :data:`SMALL_BYTES`, ``1 / beta`` the median
    over the kinds of the slope between their two largest messages. Also the median and
    largest ``|measured / fitted - 1|`` over every row (on a shaped link a middle-sized
    message may pass mostly in the burst and sit far below the line)."""
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


def _slowest(seconds: float, device: torch.device) -> float:
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(comm: Any, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 7) -> list[dict]:
    """Time every kind at every size on ``comm`` (a :class:`~shoal.parallel.DistComm`); every
    rank returns the same rows: ``kind``, ``nbytes``, ``a``, ``b`` (:func:`coefficients` of
    the exchange the communicator recorded), ``seconds`` (the median) and ``all_seconds``."""
    from shoal.topology import ring

    check_count(repeats, "repeats")
    if comm.world_size < 2:
        raise ValueError("probing a network needs at least 2 processes")
    topology = ring(comm.world_size)
    rows = []
    for nbytes in sizes:
        x_WD = torch.randn(1, max(1, int(nbytes) // 4)).to(comm.device)
        calls: dict[str, Callable[[], object]] = {
            "all_reduce": partial(comm.all_reduce_mean, x_WD),
            "all_gather": partial(comm.all_gather_payloads, [{"values": x_WD[0]}]),
            "p2p": partial(comm.neighbors, x_WD, topology),
        }
        for kind in KINDS:
            seconds = []
            for i in range(repeats + 1):
                comm.exchanges.clear()
                dist.barrier()
                _sync(comm.device)
                start = time.perf_counter()
                calls[kind]()
                _sync(comm.device)
                elapsed = _slowest(time.perf_counter() - start, comm.device)
                if i:  # the first call connects, and sizes the gather's capacity
                    seconds.append(elapsed)
            a, b = coefficients(comm.exchanges, comm.world_size)
            rows.append(
                {"kind": kind, "nbytes": x_WD.numel() * 4, "a": a, "b": b,
                 "seconds": statistics.median(seconds), "all_seconds": seconds}
            )  # fmt: skip
    comm.exchanges.clear()
    return rows


def transport(comm: Any) -> dict[str, str]:
    """What carried the exchanges on ``comm`` (a :class:`~shoal.parallel.DistComm`): the
    process group's ``backend`` (``gloo`` or ``nccl``) and the ``device`` type the messages
    lived on (``cpu`` or ``cuda``, with the GPU's name in ``gpu``), as ``device="auto"``
    resolved them on this process."""
    out = {"backend": str(comm.ctx.backend), "device": comm.device.type}
    if comm.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(comm.device)
    return out


def summarize(rows: list[dict[str, Any]], nominal_Bps: float | None = None) -> dict[str, Any]:
    """The link fitted over every kind (``fit``) and per kind (``fit_per_kind``), each with
    ``rate_fraction`` (of ``nominal_Bps``, when given) or the ``error`` that kept it from
    fitting (noisy timings can leave no rate)."""

    def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            link: dict[str, Any] = fit_link(rows)
        except ValueError as err:
            return {"error": str(err)}
        link["rate_fraction"] = link["bandwidth_Bps"] / nominal_Bps if nominal_Bps else None
        return link

    per_kind = {k: fit([r for r in rows if r["kind"] == k]) for k in KINDS}
    return {"fit": fit(rows), "fit_per_kind": per_kind, "rows": rows}


def report(result: dict[str, Any], title: str) -> str:
    """The timings as a table, and the fits."""
    lines = [f"{title}: median seconds of each exchange (the slowest rank's)"]
    lines.append(f"| {'bytes':>9} | " + " | ".join(f"{k:>10}" for k in KINDS) + " |")
    lines.append(f"|{'-' * 11}|" + "|".join("-" * 12 for _ in KINDS) + "|")
    for nbytes in sorted({r["nbytes"] for r in result["rows"]}):
        cells = {r["kind"]: r["seconds"] for r in result["rows"] if r["nbytes"] == nbytes}
        lines.append(f"| {nbytes:9d} | " + " | ".join(f"{cells[k]:10.5f}" for k in KINDS) + " |")
    for name, f in [("all kinds", result["fit"]), *result["fit_per_kind"].items()]:
        if "error" in f:
            lines.append(f"  fit, {name:10s}: {f['error']}")
            continue
        share = f" = {f['rate_fraction']:.3f} of the cap" if f.get("rate_fraction") else ""
        lines.append(
            f"  fit, {name:10s}: alpha {f['latency_s'] * 1e3:7.3f} ms, beta "
            f"{f['bandwidth_Bps'] / 1e6:8.2f} MB/s{share}; |measured/fitted - 1| median "
            f"{f['median_relative_error']:.3f}, max {f['max_relative_error']:.3f}"
        )
    return "\n".join(lines)


def network_keys(fit: dict[str, Any]) -> str:
    """The ``[network]`` keys that give a config's cost model the fitted link both ways (a
    profile is needed to set them; they replace its link)."""
    mbit = fit["bandwidth_Bps"] * 8 / 1e6
    return (
        '[network]\nprofile = "ethernet_1g"  # any profile: the keys below replace its link\n'
        f"latency_ms = {fit['latency_s'] * 1e3:.3g}\n"
        f"uplink_mbit_s = {mbit:.4g}\ndownlink_mbit_s = {mbit:.4g}"
    )
