"""Network namespaces joined by a bridge, each link rate-capped with ``tc``: a small shaped LAN.

``with network(4, "100mbit") as net:`` creates the namespaces ``shoal0 .. shoal3``. Namespace
``i`` holds one end of a veth pair, ``shoaln<i>``, with the address ``10.78.0.<i+1>/24``; the
other end, ``shoalh<i>``, is attached to the bridge ``shoalbr`` in the root namespace. A token
bucket (``tc qdisc ... tbf``) caps both directions of every link: the namespace side's egress
(what worker ``i`` sends) and the bridge side's egress (what worker ``i`` receives). Traffic from
``i`` to ``j`` therefore passes two caps, ``i``'s uplink and ``j``'s downlink, like hosts on a
switch whose ports run at the given rate.

``net.exec_prefix(i)`` is the command prefix that runs a program inside namespace ``i``
(``ip netns exec shoal<i>``); ``net.env(i)`` the environment a gloo rank there needs
(``GLOO_SOCKET_IFNAME`` names the veth, ``MASTER_ADDR`` is namespace 0's address);
``net.set_rate(rate)`` changes the caps in place; ``net.tx_bytes(i)`` counts the bytes that
namespace ``i`` has put on its link (IP headers and TCP included).

The kernel of the reference machine has no ``netem``, so only the rate is shaped, not latency
(see ``reference/platform-notes.md``, item 10). Needs root and ``ip``/``tc`` (iproute2).

Setup first removes leftovers of an earlier run with the same names; the context manager always
removes what it created, on an exception, on Ctrl-C and on SIGTERM too.

``python benchmarks/_netns.py`` is a self-check: a 40 MB gloo all-reduce between two namespaces,
unshaped and at 100 Mbit/s (the platform notes measured 34 ms and 3.24 s with tbf on one side,
3.40 s on both), and 10 MB sent one way and both ways at once between the two ranks. The last
shows a property of this emulated link to keep in mind: one large message each way at once over
the connection of a pair of ranks took up to twice the rate bound (0.86-1.55 s against 0.8 s
for 10 MB; with tbf or htb, with BBR or Reno; plain TCP sockets showed it intermittently) when
each rank posted its send before its receive, and 0.83 s when the receive went first; gloo's
all-reduce, which moves the same bytes both ways in pipelined chunks, runs near the rate bound.
``--gossip`` measures it where it matters, a D-PSGD step on a ring of 4 (each rank sends a
model to both neighbours and receives theirs), with the sends posted first and with the
receives posted first (what :class:`shoal.parallel.DistComm` does).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "shoal"
BRIDGE = "shoalbr"
SUBNET = "10.78.0"


class NetnsError(RuntimeError):
    """The shaped network cannot be set up here (not root, no iproute2, a failing command)."""


def check_available() -> None:
    """Raise :class:`NetnsError` with what to do if namespaces cannot be made here."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetnsError(
            f"{' and '.join(missing)} not found: install iproute2, or run with --no-netns "
            "(loopback, no shaping)"
        )
    if os.geteuid() != 0:
        raise NetnsError(
            "network namespaces need root: run as root (e.g. sudo), or with --no-netns "
            "(loopback, no shaping)"
        )


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def parse_rate(rate: str) -> float:
    """``"100mbit"`` -> bits per second (tc's units: kbit, mbit, gbit, bit; decimal)."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    text = rate.strip().lower()
    for unit, scale in units.items():
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * scale
            except ValueError:
                break
    raise ValueError(f"rate must look like '100mbit' or '1gbit', got {rate!r}")


def _tbf_args(rate: str) -> list[str]:
    # The bucket holds 10 ms of traffic (at least 64 KiB): enough that the kernel timer's
    # granularity does not lower the rate at 1 Gbit/s, small enough that bursts stay short.
    # 100 ms of queue before drops, as in the platform notes' measurement.
    burst = max(64 * 1024, int(parse_rate(rate) / 8 * 0.010))
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "100ms"]


@dataclass
class Network:
    """Handle on the namespaces created by :func:`network`."""

    num_hosts: int
    rate: str | None

    def ns(self, i: int) -> str:
        return f"{PREFIX}{i}"

    def ifname(self, i: int) -> str:
        """The veth end inside namespace ``i`` (``GLOO_SOCKET_IFNAME``)."""
        return f"{PREFIX}n{i}"

    def host_ifname(self, i: int) -> str:
        """The veth end on the bridge, in the root namespace."""
        return f"{PREFIX}h{i}"

    def addr(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    def env(self, i: int) -> dict[str, str]:
        return {"GLOO_SOCKET_IFNAME": self.ifname(i), "MASTER_ADDR": self.addr(0)}

    def set_rate(self, rate: str | None) -> None:
        """Cap every link at ``rate`` in both directions; ``None`` removes the caps."""
        for i in range(self.num_hosts):
            for netns, dev in ((self.ns(i), self.ifname(i)), (None, self.host_ifname(i))):
                where = ["-n", netns] if netns else []
                if rate is None:
                    _run("tc", *where, "qdisc", "del", "dev", dev, "root", check=False)
                else:
                    _run("tc", *where, "qdisc", "replace", "dev", dev, "root", *_tbf_args(rate))
        self.rate = rate

    def tx_bytes(self, i: int) -> int:
        """Bytes namespace ``i`` has sent on its link (= what its bridge port received)."""
        path = Path(f"/sys/class/net/{self.host_ifname(i)}/statistics/rx_bytes")
        return int(path.read_text())


def teardown(num_hosts: int) -> None:
    """Delete the namespaces, veths and bridge of this module's naming; missing ones are fine.

    Deleting a namespace deletes the veth end inside it, and with it the pair and its qdiscs.
    """
    for i in range(num_hosts):
        _run("ip", "link", "del", f"{PREFIX}h{i}", check=False)
        _run("ip", "netns", "del", f"{PREFIX}{i}", check=False)
    _run("ip", "link", "del", BRIDGE, check=False)


def leftovers() -> list[str]:
    """Namespaces and links of this module's naming that exist now (should be empty after use)."""
    names = [n.split()[0] for n in _run("ip", "netns", "list").stdout.splitlines() if n.strip()]
    found = [n for n in names if n.startswith(PREFIX) and n[len(PREFIX) :].isdigit()]
    links = _run("ip", "-o", "link", "show").stdout.splitlines()
    for line in links:
        name = line.split(":")[1].strip().split("@")[0]
        if name == BRIDGE or (name.startswith(f"{PREFIX}h") and name[len(PREFIX) + 1 :].isdigit()):
            found.append(name)
    return found


def _setup(num_hosts: int) -> None:
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "link", "set", BRIDGE, "up")
    for i in range(num_hosts):
        ns, inner, outer = f"{PREFIX}{i}", f"{PREFIX}n{i}", f"{PREFIX}h{i}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", outer, "master", BRIDGE)
        _run("ip", "link", "set", outer, "up")
        _run("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", inner)
        _run("ip", "-n", ns, "link", "set", inner, "up")
        # Rank 0 reaches its own TCPStore through its own address, which routes over lo.
        _run("ip", "-n", ns, "link", "set", "lo", "up")


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Wait for every rank; when one fails or the time is up, kill the rest (by their process
    groups: start them with ``start_new_session=True``)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return codes
            if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
                time.sleep(2.0)  # let the others report their own error first
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
                p.wait()
    return [p.returncode if p.returncode is not None else -9 for p in procs]


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def network(num_hosts: int, rate: str | None = None) -> Iterator[Network]:
    """Namespaces ``shoal0..`` on one bridge, links capped at ``rate``; see the module docstring."""
    if not 1 <= num_hosts <= 200:
        raise ValueError(f"num_hosts must be in 1..200, got {num_hosts}")
    check_available()
    teardown(max(num_hosts, 16))  # leftovers of a killed run, idempotent
    previous = signal.getsignal(signal.SIGTERM)
    # SIGTERM would end the interpreter without running the cleanup below.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        _setup(num_hosts)
        net = Network(num_hosts, None)
        net.set_rate(rate)
        yield net
    finally:
        teardown(num_hosts)
        signal.signal(signal.SIGTERM, previous)


# -- self-check: a 40 MB all-reduce between two namespaces -------------------------------------


def _timed(fn: Callable[[], None], repeats: int) -> float:
    import torch.distributed as dist

    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _selfcheck_worker(numel: int, repeats: int) -> None:
    """Rank 0 prints the median seconds of: the all-reduce of ``numel`` floats; a quarter of
    that sent one way (rank 1 to rank 0, timed by the receiver: a send returns once the data is
    in the kernel's buffers); the same quarter sent both ways at once."""
    import torch
    import torch.distributed as dist

    from shoal.runtime.procgroup import shutdown  # gloo's teardown, safe on old torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, peer = dist.get_rank(), 1 - dist.get_rank()
    x = torch.ones(numel)
    part, buf = x[: numel // 4].clone(), torch.empty(numel // 4)
    dist.all_reduce(x)  # warm-up: connections

    def one_way() -> None:
        dist.recv(buf, peer) if rank == 0 else dist.send(part, peer)

    def both_ways() -> None:
        ops = [dist.P2POp(dist.isend, part, peer), dist.P2POp(dist.irecv, buf, peer)]
        for work in dist.batch_isend_irecv(ops):
            work.wait()

    out = [_timed(lambda: dist.all_reduce(x), repeats)]
    out += [_timed(one_way, repeats), _timed(both_ways, repeats)]
    if rank == 0:
        print(" ".join(f"{t:.4f}" for t in out), flush=True)
    shutdown()


def _gossip_worker(numel: int, repeats: int) -> None:
    """Rank 0 prints the median seconds of a ring exchange of ``numel`` floats with both
    neighbours, sends posted first, then receives posted first (alternating, ``repeats`` each)."""
    import torch
    import torch.distributed as dist

    from shoal.runtime.procgroup import shutdown  # gloo's teardown, safe on old torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    peers = [(rank - 1) % world, (rank + 1) % world]
    x, bufs = torch.ones(numel), [torch.empty(numel) for _ in peers]
    sends = [dist.P2POp(dist.isend, x, j) for j in peers]
    recvs = [dist.P2POp(dist.irecv, b, j) for b, j in zip(bufs, peers)]
    dist.all_reduce(torch.ones(1))  # warm-up: connections
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for k, ops in enumerate((sends + recvs, recvs + sends)):
            times[k].append(
                _timed(lambda ops=ops: [w.wait() for w in dist.batch_isend_irecv(ops)], 1)
            )
    if rank == 0:
        print(" ".join(f"{statistics.median(t):.4f}" for t in times), flush=True)
    shutdown()


def _measure(
    net: Network, numel: int, repeats: int, port: int, hosts: int = 2, mode: str = "--worker"
) -> list[float]:
    procs = []
    for i in range(hosts):
        env = dict(
            os.environ, RANK=str(i), WORLD_SIZE=str(hosts), MASTER_PORT=str(port), **net.env(i)
        )
        cmd = [*net.exec_prefix(i), sys.executable, __file__, mode, str(numel), str(repeats)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise NetnsError(f"self-check workers failed: exit codes {[p.returncode for p in procs]}")
    return [float(v) for v in outs[0].strip().splitlines()[-1].split()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=40.0, help="all-reduce size in MB (float32)")
    p.add_argument("--rate", default="100mbit")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--gossip", action="store_true", help="a ring of 4 exchanging --mb with both neighbours"
    )
    p.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--gossip-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _selfcheck_worker(*a.worker)
        return
    if a.gossip_worker:
        _gossip_worker(*a.gossip_worker)
        return
    numel = int(a.mb * 1e6 / 4)
    if a.gossip:
        with network(4, a.rate) as net:
            first = _measure(net, numel, a.repeats, 29413, hosts=4, mode="--gossip-worker")
        bound = 2 * a.mb * 8e6 / parse_rate(a.rate)  # two messages share each uplink
        print(f"ring of 4 at {a.rate}, {a.mb:g} MB to each neighbour, median of {a.repeats}:")
        print(f"  sends posted first     {first[0]:.3f} s  (rate bound {bound:.3f} s)")
        print(f"  receives posted first  {first[1]:.3f} s")
        print("cleanup:", "ok" if not leftovers() else f"LEFT OVER {leftovers()}")
        return
    with network(2) as net:
        unshaped = _measure(net, numel, a.repeats, 29411)
        net.set_rate(a.rate)
        shaped = _measure(net, numel, a.repeats, 29412)
    bound = a.mb * 8e6 / parse_rate(a.rate)  # 2 ranks: each direction carries the tensor
    print(f"gloo between 2 namespaces, median of {a.repeats}:      unshaped   tbf {a.rate}")
    rows = [
        (f"all-reduce of {a.mb:g} MB", 0, bound),
        (f"{a.mb / 4:g} MB sent one way", 1, bound / 4),
        (f"{a.mb / 4:g} MB sent both ways at once", 2, bound / 4),
    ]
    for label, k, rate_bound in rows:
        print(
            f"  {label:<34} {unshaped[k] * 1e3:8.1f} ms {shaped[k] * 1e3:8.1f} ms"
            f"  (rate bound {rate_bound * 1e3:.0f} ms)"
        )
    left = leftovers()
    print("cleanup:", "ok" if not left else f"LEFT OVER {left}")


if __name__ == "__main__":
    try:
        main()
    except NetnsError as err:
        sys.exit(f"error: {err}")
