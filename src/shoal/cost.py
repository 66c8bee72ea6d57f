"""Simulated time: what a round would take on a given network, from the bytes it really sent.

Links follow the alpha-beta (latency-bandwidth) model of Hockney ("The communication challenge
for MPP: Intel Paragon and Meiko CS-2", Parallel Computing 20(3), 1994): a message of ``n``
bytes takes ``alpha + n / beta`` seconds; no message takes no time. Computation takes
``seconds_per_sample`` times the samples a worker processed, times its slowdown: a number you
can measure (the wall time of one local epoch on the target device over its sample count).

How a round's time follows the topology:

- federated (a star): every sampled client downloads, trains and uploads on its own link;
  the server waits for the slowest, so the round takes ``max_k (down_k + compute_k + up_k)``.
  The server's own link is assumed not to be the bottleneck (the clients' access links are).
- data-parallel (a ring all-reduce of ``n`` bytes over ``W`` workers): ``2 (W-1)/W * n / beta +
  2 (W-1) alpha`` after the slowest worker's compute, on the slowest link (Thakur, Rabenseifner,
  Gropp, "Optimization of collective communication operations in MPICH", IJHPCA 2005, Sec. 4;
  Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms for clusters of workstations",
  JPDC 2009).
- an all-gather (every worker ends with every worker's block; compressed messages that do not
  add, e.g. top-k): ``(W-1) (alpha + n_max / beta)``, the ring's ``W-1`` steps each paced by
  the largest block (Thakur et al., Sec. 4).
- gossip: node ``i`` sends to all its out-neighbours at once, sharing its uplink equally among
  those messages, and a receiver shares its downlink equally among the messages arriving;
  each message goes at the smaller of its two shares, so on a ring a node's two messages take
  twice as long as a one-peer graph's one (the bytes SGP's one-peer graph saves). A
  synchronous step waits for the slowest node.
- a data-parallel step of several exchanges (:meth:`CostModel.step_seconds`, the
  :class:`Exchange` records of :mod:`shoal.parallel`'s communicators): each worker's clock
  starts at its compute time; a collective starts when the last worker joins it and ends
  together for all; a point-to-point message leaves at its sender's clock and moves both
  ends' clocks to its arrival; the step takes the last clock. Exchanges of one step happen
  one after another, except messages that travel while the workers compute (an
  :class:`Exchange` with ``overlapped=True``): they leave when the step starts, so a node's
  clock becomes the later of its compute and its messages' transfers, ``max(compute,
  transfer)`` instead of their sum. That is exact for D-PSGD's Algorithm 1 (``order="lian"``:
  the models are sent before the gradient is computed) and the steady state of Overlap SGP's
  pipeline (each step's messages are mixed in a step later, so they travel during the next
  step's compute). Each step is charged on its own (resume-safe), so a straggler's late
  message is not carried into the next step.
- gradient buckets all-reduced during the backward pass (synchronous SGD's default, as PyTorch
  DDP; all-reduce :class:`Exchange` records with ``overlapped=True``, one per bucket in the
  order they were started): the ring takes them one after another, the first ones from the
  end of the slowest worker's forward pass (``FORWARD_SHARE``, a third of its compute) and the
  last one, which holds the first layers, from the end of its backward pass; the step ends at
  the later of the compute and the last bucket's arrival. The ready times of the buckets in
  between are not known, so they are charged as if ready after the forward pass (optimistic
  by at most their transfer).

Compressing and decompressing take ``codec_seconds_per_element`` times the entries a worker
compressed for an exchange (the :class:`Exchange`'s ``codec_elements``: its own message out
and the sum of the messages in), times its slowdown, before that exchange; 0 (the default)
charges none. It depends on the compressor and the device, not on the network: measure it with
:func:`measure_codec`. Federated rounds do not take it (a client compresses once per local
training; fold that into ``seconds_per_sample``). The transport's own work per message
(Python, the collective library's handshakes, the kernel) is the link's latency: a link's
``(alpha, beta)`` should be what the transport achieves on it, not the wire's nominal figures
(``shoal probe`` measures them on a live network: :mod:`shoal.parallel.probe`). Against step
times measured on tc-shaped links (``benchmarks/cost_model_check.py``), on links of the nominal
rate with no latency, dense all-reduces after the backward pass come within 12-14% and gossip
within 20-28%; on the links the probe fitted, within 7% and 10-13%. The overlapped forms
(bucketed all-reduces included) are within 16-24% at 100 Mbit/s but 43-52% at 1 Gbit/s, where the
transport's work shares the CPU with the compute (charging the two side by side assumes it
costs the compute nothing). See there for compressed synchronous SGD with and without the
codec's time.

Heterogeneity is optional and seeded: per client, a persistent compute slowdown and a
bandwidth factor, each log-normal with median 1 (positive and right-skewed; a modelling choice,
not fitted to traces: FedScale, Lai et al. ICML 2022, ships measured ones), and per round,
stragglers: each sampled client is ``straggler_slowdown`` times slower with probability
``straggler_probability``. Every draw depends only on ``(seed, client)`` or
``(seed, round, client)``, so a resumed run charges the same time.

Shape suffix: ``W`` the workers (sampled clients) of a round.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from shoal.checks import check_count, check_instance, check_number, is_real
from shoal.streams import COST_BANDWIDTH, COST_SPEED, COST_STRAGGLE, keyed_rng
from shoal.topology import Topology

__all__ = [
    "CostModel",
    "Exchange",
    "FORWARD_SHARE",
    "Heterogeneity",
    "MBIT_S",
    "Link",
    "Network",
    "alpha_beta",
    "cellular_4g",
    "datacenter",
    "ethernet_1g",
    "measure_codec",
    "ring_all_gather_seconds",
    "ring_all_reduce_seconds",
    "wifi",
]

MBIT_S = 1e6 / 8
"""One Mbit/s in bytes per second."""


FORWARD_SHARE = 1 / 3
"""The forward pass's share of a step's compute: the backward pass costs about twice the
forward's FLOPs (a gradient w.r.t. both the inputs and the weights of every layer)."""


def _counts(values: Any, what: str, n: int | None = None) -> np.ndarray:
    """``values`` (samples or bytes, one per worker) as a float array: 1-D, finite, >= 0, and
    ``n`` long when given."""
    out = np.asarray(values, dtype=np.float64)
    if out.ndim > 1 or (n is not None and out.size != n):
        many = "values" if n is None else f"{n} values"
        raise ValueError(f"{what}: expected {many}, one per worker, got shape {out.shape}")
    if not (np.isfinite(out).all() and (out >= 0).all()):
        raise ValueError(f"{what} must be finite numbers >= 0, got {out.tolist()}")
    return out


@dataclass(frozen=True)
class Link:
    """One direction of a link: ``seconds(n) = latency_s + n / bandwidth_Bps`` (0 for n = 0)."""

    latency_s: float
    bandwidth_Bps: float

    def __post_init__(self) -> None:
        check_number(self.latency_s, "latency_s", positive=False)
        check_number(self.bandwidth_Bps, "bandwidth_Bps", positive=True)

    def seconds(self, nbytes: np.ndarray, factor_W: np.ndarray | float = 1.0) -> np.ndarray:
        """Per message: its time over this link with bandwidth scaled by ``factor_W``."""
        n = _counts(nbytes, "nbytes")
        t = self.latency_s + n / (self.bandwidth_Bps * np.asarray(factor_W, dtype=np.float64))
        return np.where(n > 0, t, 0.0)


def alpha_beta(latency_s: float, bandwidth_Bps: float) -> Link:
    """A link with ``latency_s`` seconds per message and ``bandwidth_Bps`` bytes per second."""
    return Link(latency_s, bandwidth_Bps)


@dataclass(frozen=True)
class Network:
    """A device profile: the uplink (client to server) and the downlink (server to client)."""

    name: str
    uplink: Link
    downlink: Link

    def __post_init__(self) -> None:  # a wrong object failed in round 1 with an AttributeError
        for side in ("uplink", "downlink"):
            check_instance(getattr(self, side), Link, f"Network.{side}", " (see alpha_beta)")


# Typical values, not measurements; one-way latency is half a round trip (ping).
# - datacenter: 25 Gbit/s Ethernet (IEEE 802.3by), a common cloud-instance NIC; 0.25 ms is half
#   the 0.5 ms "round trip within the same datacenter" of Jeff Dean's "Numbers everyone should
#   know" (LADIS 2009 keynote), an older, TCP-through-switches figure.
# - ethernet_1g: 1 Gbit/s (IEEE 802.3ab, 1000BASE-T) commodity LAN, the same latency.
# - wifi: a phone or laptop on home Wi-Fi, limited by the broadband line behind it. OpenSignal's
#   "The State of Wifi vs Mobile Network Experience as 5G Arrives" (Nov. 2018) measured
#   smartphone Wi-Fi downloads at tens of Mbit/s (21.6 in Australia, 72.8 in Singapore): 50 down;
#   the 10 up (a fifth, as on asymmetric cable/DSL lines) and 10 ms are assumptions.
# - 4g: OpenSignal's US "Mobile Network Experience" report (2019): 4G downloads 14-21 Mbit/s,
#   uploads 2.4-7 Mbit/s, latency 58-70 ms round trip; so 20 down, 5 up, 30 ms. Uploads several
#   times slower than downloads is why federated learning compresses uplinks first (Konecny et
#   al., "Federated learning: strategies for improving communication efficiency", 2016).


def datacenter() -> Network:
    """25 Gbit/s each way, 0.25 ms (typical values; see the comment above)."""
    link = Link(0.25e-3, 25_000 * MBIT_S)
    return Network("datacenter", link, link)


def ethernet_1g() -> Network:
    """1 Gbit/s each way, 0.25 ms (typical values)."""
    link = Link(0.25e-3, 1_000 * MBIT_S)
    return Network("ethernet_1g", link, link)


def wifi() -> Network:
    """10 Mbit/s up, 50 Mbit/s down, 10 ms (typical values)."""
    return Network("wifi", Link(10e-3, 10 * MBIT_S), Link(10e-3, 50 * MBIT_S))


def cellular_4g() -> Network:
    """5 Mbit/s up, 20 Mbit/s down, 30 ms (typical values)."""
    return Network("4g", Link(30e-3, 5 * MBIT_S), Link(30e-3, 20 * MBIT_S))


def _normal(seed: int, stream: int, clients_W: np.ndarray) -> np.ndarray:
    """One standard normal per client, a function of ``(seed, stream, client)`` only: the same
    whichever other clients are sampled with it, and in every round."""
    return np.array([keyed_rng(seed, stream, int(c)).standard_normal() for c in clients_W])


MAX_SIGMA = 10.0
"""The largest log-normal sigma :class:`Heterogeneity` takes."""


@dataclass(frozen=True)
class Heterogeneity:
    """Seeded per-client slowdowns and bandwidth factors, and per-round stragglers.

    Client ``c``'s speed and bandwidth factors are ``exp(sigma z)``, ``z`` the first standard
    normal of :func:`shoal.streams.keyed_rng` ``(seed, COST_SPEED or COST_BANDWIDTH, c)``; it
    straggles in round ``r`` when the first uniform of ``(seed, COST_STRAGGLE, r, c)`` is below
    ``straggler_probability``. These streams are apart from the rounds' (sampling, batches)
    even when ``seed`` is the run's seed.
    """

    speed_sigma: float = 0.0
    """Log-normal sigma of each client's persistent compute slowdown (0: all equal)."""
    bandwidth_sigma: float = 0.0
    """Log-normal sigma of each client's persistent bandwidth factor, up and down (0: equal)."""
    straggler_probability: float = 0.0
    """Chance that a sampled client is a straggler in a round."""
    straggler_slowdown: float = 10.0
    """How many times longer a straggler computes (an order of magnitude: an assumption)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("speed_sigma", "bandwidth_sigma"):
            sigma = getattr(self, name)
            check_number(sigma, name, positive=False)
            # exp(sigma z) overflowed to inf seconds (numpy's warning only) from sigma ~ 150;
            # at 10 one client in a thousand is already e^30 times slower than the median.
            if sigma > MAX_SIGMA:
                raise ValueError(f"{name} must be <= {MAX_SIGMA:g} (log-normal), got {sigma!r}")
        p, slow = self.straggler_probability, self.straggler_slowdown
        if not (is_real(p) and 0.0 <= p <= 1.0):  # True was 1: every client straggled
            raise ValueError(f"straggler_probability must be in [0, 1], got {p!r}")
        if not (is_real(slow) and math.isfinite(slow) and slow >= 1.0):
            raise ValueError(f"straggler_slowdown must be >= 1, got {slow!r}")
        check_count(self.seed, "heterogeneity seed", least=0)

    def slowdown(self, clients_W: np.ndarray, round_idx: int) -> np.ndarray:
        """Compute-time multiplier of each client in round ``round_idx`` (>= 0)."""
        out: np.ndarray = np.ones(len(clients_W))
        if self.speed_sigma > 0:
            out *= np.exp(self.speed_sigma * _normal(self.seed, COST_SPEED, clients_W))
        if self.straggler_probability > 0:
            u = np.array(
                [keyed_rng(self.seed, COST_STRAGGLE, round_idx, int(c)).random() for c in clients_W]
            )
            out = np.where(u < self.straggler_probability, out * self.straggler_slowdown, out)
        return out

    def bandwidth(self, clients_W: np.ndarray) -> np.ndarray:
        """Bandwidth multiplier of each client (its link's up and down speeds scale together)."""
        if self.bandwidth_sigma == 0:
            return np.ones(len(clients_W))
        return np.exp(self.bandwidth_sigma * _normal(self.seed, COST_BANDWIDTH, clients_W))


def _ring_args(num_workers: int, nbytes: float, who: str) -> tuple[int, float]:
    """Checked: a NaN byte count gave NaN seconds and a negative one 0, silently."""
    check_count(num_workers, f"{who}: num_workers", least=0)
    return num_workers, float(_counts([nbytes], f"{who}: nbytes")[0])


def ring_all_reduce_seconds(num_workers: int, nbytes: float, link: Link) -> float:
    """A ring all-reduce of ``nbytes`` per worker: ``2(W-1)/W n/beta + 2(W-1) alpha``."""
    w, nbytes = _ring_args(num_workers, nbytes, "ring_all_reduce_seconds")
    if w <= 1 or nbytes == 0:
        return 0.0
    return 2 * (w - 1) / w * nbytes / link.bandwidth_Bps + 2 * (w - 1) * link.latency_s


def ring_all_gather_seconds(num_workers: int, nbytes: float, link: Link) -> float:
    """A ring all-gather of blocks of at most ``nbytes``: ``(W-1) (alpha + n / beta)``."""
    w, nbytes = _ring_args(num_workers, nbytes, "ring_all_gather_seconds")
    if w <= 1 or nbytes == 0:
        return 0.0
    return (w - 1) * (link.latency_s + nbytes / link.bandwidth_Bps)


@dataclass(frozen=True)
class Exchange:
    """One communication of a data-parallel step, as :meth:`CostModel.step_seconds` charges it.

    ``kind``: ``"all_reduce"`` or ``"all_gather"`` (collectives over all workers; worker ``i``
    contributes ``nbytes_N[i]``), or ``"p2p"`` (worker ``i`` sends ``nbytes_N[i]`` to each of
    its out-neighbours in ``topology``).
    """

    kind: Literal["all_reduce", "all_gather", "p2p"]
    nbytes_N: tuple[int, ...]
    topology: Topology | None = None
    codec_elements: int = 0
    """Entries each worker compressed for this exchange (0: sent as they are)."""
    overlapped: bool = False
    """The messages travel while the workers compute: p2p messages sent before the gradient or
    mixed in a step later, all-reduces of gradient buckets started during the backward pass
    (the module docstring says how each is charged)."""

    def __post_init__(self) -> None:
        if self.kind not in ("all_reduce", "all_gather", "p2p"):
            raise ValueError(f"Exchange kind must be all_reduce, all_gather or p2p: {self.kind!r}")
        if (self.kind == "p2p") != (self.topology is not None):
            raise ValueError("a p2p Exchange needs its topology, and only it takes one")
        _counts(self.nbytes_N, f"{self.kind} nbytes_N")
        check_count(self.codec_elements, "codec_elements", least=0)
        if self.overlapped and self.kind == "all_gather":
            raise ValueError("an all_gather cannot be overlapped (p2p and all_reduce can)")


@dataclass(frozen=True)
class CostModel:
    """A network, a compute speed and optional heterogeneity: bytes and samples -> seconds."""

    network: Network
    seconds_per_sample: float = 0.0
    """Reference compute time per trained sample (forward + backward); 0 counts only the
    network. Measure it on the device you simulate."""
    heterogeneity: Heterogeneity = field(default_factory=Heterogeneity)
    codec_seconds_per_element: float = 0.0
    """Reference time to compress a message and decompress the incoming ones, per entry
    compressed (data-parallel exchanges only; :func:`measure_codec` measures it); 0 charges
    none."""

    def __post_init__(self) -> None:
        # Refused here, not at the first round's AttributeError: the profiles are factories,
        # and CostModel(wifi) for CostModel(wifi()) is an easy slip.
        if not isinstance(self.network, Network):
            raise TypeError(
                f"network must be a Network (a profile called: wifi(), ...), got {self.network!r}"
            )
        if not isinstance(self.heterogeneity, Heterogeneity):
            raise TypeError(
                f"heterogeneity must be a Heterogeneity, got {type(self.heterogeneity).__name__}"
            )
        check_number(self.seconds_per_sample, "seconds_per_sample", positive=False)
        check_number(self.codec_seconds_per_element, "codec_seconds_per_element", positive=False)
        het = self.heterogeneity
        slows = het.speed_sigma > 0 or het.straggler_probability > 0
        if slows and self.seconds_per_sample == 0 and self.codec_seconds_per_element == 0:
            warnings.warn(
                "network: slower workers and stragglers multiply compute time, and "
                "seconds_per_sample is 0 (no compute time), so they change nothing; set "
                "seconds_per_sample to the time a worker takes per training sample",
                stacklevel=3,
            )

    def compute_seconds(
        self, clients_W: np.ndarray, samples_W: np.ndarray, round_idx: int
    ) -> np.ndarray:
        clients_W = np.asarray(clients_W)
        samples_W = _counts(samples_W, "samples", len(clients_W))
        slow_W = self.heterogeneity.slowdown(clients_W, round_idx)
        return samples_W * self.seconds_per_sample * slow_W

    def client_seconds(
        self,
        clients_W: np.ndarray,
        samples_W: np.ndarray,
        uplink_bytes_W: np.ndarray,
        downlink_bytes_W: np.ndarray,
        round_idx: int,
    ) -> np.ndarray:
        """Download + compute + upload of each client of a federated round."""
        clients_W = np.asarray(clients_W)
        bw_W = self.heterogeneity.bandwidth(clients_W)
        down_W = self.network.downlink.seconds(
            _counts(downlink_bytes_W, "downlink bytes", len(bw_W)), bw_W
        )
        up_W = self.network.uplink.seconds(_counts(uplink_bytes_W, "uplink bytes", len(bw_W)), bw_W)
        return down_W + self.compute_seconds(clients_W, samples_W, round_idx) + up_W

    def federated_round(
        self,
        clients_W: np.ndarray,
        samples_W: np.ndarray,
        uplink_bytes_W: np.ndarray,
        downlink_bytes_W: np.ndarray,
        round_idx: int,
    ) -> float:
        """A server round: the server waits for the slowest of these clients (``train`` gives
        the ones it keeps: not the stragglers it drops)."""
        per_client = self.client_seconds(
            clients_W, samples_W, uplink_bytes_W, downlink_bytes_W, round_idx
        )
        return float(per_client.max()) if len(per_client) else 0.0

    def _slowest_link(self, workers_W: np.ndarray) -> Link:
        """The ring's bottleneck: the slowest direction of the slowest worker's link."""
        factors = self.heterogeneity.bandwidth(workers_W)
        factor = float(factors.min()) if factors.size else 1.0  # no workers: nothing to send
        up, down = self.network.uplink, self.network.downlink
        return Link(
            max(up.latency_s, down.latency_s),
            min(up.bandwidth_Bps, down.bandwidth_Bps) * factor,
        )

    def all_reduce(
        self, workers_W: np.ndarray, nbytes: float, samples_W: np.ndarray, round_idx: int
    ) -> float:
        """A data-parallel step: the slowest worker's compute, then a ring all-reduce."""
        workers_W = np.asarray(workers_W)
        compute = self.compute_seconds(workers_W, samples_W, round_idx)
        link = self._slowest_link(workers_W)
        return float(compute.max(initial=0.0)) + ring_all_reduce_seconds(
            len(workers_W), nbytes, link
        )

    def gossip(
        self, topology: Topology, nbytes_W: np.ndarray, samples_W: np.ndarray, round_idx: int
    ) -> float:
        """A synchronous gossip step: each node computes, then sends ``nbytes_W[i]`` to every
        out-neighbour at once (sharing its links: the module docstring); a node is done when
        its last exchange has arrived, and the step waits for the slowest node."""
        nbytes = tuple(int(n) for n in np.asarray(nbytes_W))
        return self.step_seconds([Exchange("p2p", nbytes, topology)], samples_W, round_idx)

    def step_seconds(
        self, exchanges: Sequence[Exchange], samples_N: np.ndarray, step: int
    ) -> float:
        """A data-parallel step of workers ``0..N-1``: compute, then ``exchanges`` in order
        (how their clocks combine: the module docstring)."""
        nodes = np.arange(len(samples_N))
        clock_N = self.compute_seconds(nodes, samples_N, step)
        computed = float(clock_N.max(initial=0.0))
        codec_N = self.codec_seconds_per_element * self.heterogeneity.slowdown(nodes, step)
        link_free = 0.0  # when the step's overlapped all-reduces have the ring to themselves
        for i, ex in enumerate(exchanges):
            if len(ex.nbytes_N) != len(nodes):
                raise ValueError(
                    f"{ex.kind}: {len(ex.nbytes_N)} byte counts for {len(nodes)} workers"
                )
            clock_N = clock_N + ex.codec_elements * codec_N
            if ex.topology is not None:
                if ex.topology.num_nodes != len(nodes):
                    raise ValueError(
                        f"p2p: a topology of {ex.topology.num_nodes} nodes for {len(nodes)} workers"
                    )
                # Overlapped messages leave with the step, not after this worker's compute.
                start_N = np.zeros_like(clock_N) if ex.overlapped else clock_N
                clock_N = self._point_to_point(ex.topology, ex.nbytes_N, clock_N, start_N)
                continue
            charge = ring_all_reduce_seconds if ex.kind == "all_reduce" else ring_all_gather_seconds
            seconds = charge(len(nodes), max(ex.nbytes_N, default=0), self._slowest_link(nodes))
            if ex.overlapped:  # a gradient bucket, all-reduced during the backward pass
                nxt = exchanges[i + 1] if i + 1 < len(exchanges) else None
                last = nxt is None or not (nxt.overlapped and nxt.kind == "all_reduce")
                ready = computed if last else computed * FORWARD_SHARE
                link_free = max(link_free, ready) + seconds
                if last:
                    clock_N = np.full_like(clock_N, max(clock_N.max(initial=0.0), link_free))
                continue
            clock_N = np.full_like(clock_N, clock_N.max(initial=0.0) + seconds)
        return float(clock_N.max(initial=0.0))

    def _point_to_point(
        self,
        topology: Topology,
        nbytes_N: Sequence[int],
        clock_N: np.ndarray,
        start_N: np.ndarray,
    ) -> np.ndarray:
        """Clocks after each node sends ``nbytes_N[i]`` to each of its out-neighbours, node
        ``i``'s messages leaving at ``start_N[i]``."""
        n = len(clock_N)
        bw_N = self.heterogeneity.bandwidth(np.arange(n))
        up, down = self.network.uplink, self.network.downlink
        latency = max(up.latency_s, down.latency_s)
        messages = [(i, j) for i in range(n) if nbytes_N[i] > 0 for j in topology.out_neighbors(i)]
        sending_N, receiving_N = np.zeros(n), np.zeros(n)
        for i, j in messages:
            sending_N[i] += 1
            receiving_N[j] += 1
        done_N = clock_N.copy()
        for i, j in messages:
            # Equal shares of i's uplink and of j's downlink; the smaller sets the pace.
            beta = min(
                up.bandwidth_Bps * bw_N[i] / sending_N[i],
                down.bandwidth_Bps * bw_N[j] / receiving_N[j],
            )
            arrival = float(start_N[i]) + latency + nbytes_N[i] / beta
            done_N[i], done_N[j] = max(done_N[i], arrival), max(done_N[j], arrival)
        return done_N


def measure_codec(
    compressor: Any,
    numel: int,
    world_size: int,
    *,
    device: str | torch.device = "cpu",
    repeats: int = 7,
    seed: int = 0,
) -> float:
    """Seconds per entry of a worker's codec work in a step of synchronous SGD: compress one
    ``numel``-entry message, then, as its exchange does, either sum ``world_size`` received
    ones (:func:`shoal.compress.decompress_sum`, after an all-gather) or, for payloads an
    all-reduce adds (random-k's shared seed, :func:`shoal.parallel.algorithms.sync_sgd.
    reduction`), decompress the one sum: timing ``world_size`` decompressions there charged
    random-k ~17x its work at 16 workers. The median of ``repeats`` timed steps (after one
    untimed warm-up, the compressor's state carried as in training) over ``numel``. A property
    of this machine and device, like ``seconds_per_sample``: pass it as :class:`CostModel`'s
    ``codec_seconds_per_element``.
    """
    from shoal import compress
    from shoal.parallel.algorithms.sync_sgd import reduction

    if not isinstance(compressor, compress.Compressor):
        raise TypeError(f"measure_codec needs a compressor, got {type(compressor).__name__}")
    for name, value in (("numel", numel), ("world_size", world_size), ("repeats", repeats)):
        check_count(value, f"measure_codec: {name}")
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = [torch.randn(numel, generator=gen).to(dev) for _ in range(repeats + 1)]
    state = compress.init_for_worker(compressor, inputs[0], 0)
    summed = reduction(compressor, inputs[0], "auto") == "sum"
    seconds = []
    for x_D in inputs:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        payload, state = compressor.compress(x_D, state)
        if summed:  # the network added the payloads (the all-reduce's own arithmetic)
            compressor.decompress(payload)
        else:
            compress.decompress_sum(compressor, [payload] * world_size)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:]) / numel
