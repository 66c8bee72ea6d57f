"""Who talks to whom: communication graphs as mixing matrices.

A :class:`Topology` over ``n`` nodes is a mixing matrix ``M`` (``[n, n]``, float64) whose row
``i`` holds the weights node ``i`` gives to what it receives: one gossip step is
``x_i <- sum_j M[i, j] x_j``. Undirected graphs get Metropolis-Hastings weights
(Xiao & Boyd, "Fast linear iterations for distributed averaging", 2004), which are symmetric
and doubly stochastic, as D-PSGD requires (Lian et al., NeurIPS 2017). Directed graphs, as
Stochastic Gradient Push uses them (Assran et al., ICML 2019), are column-stochastic: node
``j`` splits its mass over itself and its out-neighbours, and push-sum weights correct the bias.

Time-varying graphs (SGP's one-peer exponential graph) are a cycle of topologies:
``topology.at(step)`` gives the graph used at a step; a static graph returns itself.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from shoal.checks import check_count

STOCHASTIC_ATOL = 1e-6
"""How far a mixing matrix's column (and, for doubly stochastic, row) sums may be from 1.
Absolute, with no relative part: the default ``rtol=1e-5`` of ``torch.allclose`` decided alone
and let rows summing to ``1 +- 4e-6`` pass as doubly stochastic. ``1e-6`` still admits weights
rounded to float32 (e.g. thirds), whose sums are within about ``6e-8`` of 1; the built-in
graphs are float64 and sum to 1 within about ``1e-15``."""


@dataclass(frozen=True, eq=False, repr=False)
class Topology:
    """A mixing matrix ``mixing_WW`` (see the module docstring) and, for stars, the hub."""

    name: str
    mixing_WW: torch.Tensor
    hub: int | None = None
    """The server of a star (federated) topology; ``None`` for peer-to-peer graphs."""
    cycle: tuple[Topology, ...] = field(default=(), repr=False)
    """For time-varying graphs: the topologies used at steps ``0, 1, ...`` (repeating)."""

    def __post_init__(self) -> None:
        m = self.mixing_WW
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{self.name}: the mixing matrix must be square, got {tuple(m.shape)}")
        if not bool(torch.isfinite(m).all()):  # NaN failed the column sums, with that message
            bad = m[~torch.isfinite(m)][0].item()
            raise ValueError(f"{self.name}: mixing weights must be finite, got {bad}")
        if (m < 0).any():
            raise ValueError(f"{self.name}: mixing weights must be non-negative")
        if not _sums_to_one(m.sum(0)):
            raise ValueError(f"{self.name}: columns must sum to 1 (every node keeps its mass)")

    # The generated == compared the matrices as tensors ("Boolean value of Tensor ... is
    # ambiguous"), and the generated repr abbreviated a matrix of over 1,000 entries, so a
    # resume's check of the setup took two such graphs of one name for the same.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topology):
            return NotImplemented
        return (
            (self.name, self.hub, self.cycle) == (other.name, other.hub, other.cycle)
            and self.mixing_WW.shape == other.mixing_WW.shape
            and torch.equal(self.mixing_WW.cpu(), other.mixing_WW.cpu())
        )

    def __hash__(self) -> int:
        return hash((self.name, self.num_nodes, self.hub))

    def __repr__(self) -> str:
        digest = hashlib.sha256()
        for g in (self, *self.cycle):  # a time-varying graph's every step
            digest.update(g.mixing_WW.detach().cpu().double().contiguous().numpy().tobytes())
        hub = "" if self.hub is None else f", hub={self.hub}"
        return (
            f"Topology({self.name!r}, {self.num_nodes} nodes{hub}, mixing sha256 "
            f"{digest.hexdigest()[:12]})"
        )

    @property
    def num_nodes(self) -> int:
        return int(self.mixing_WW.shape[0])

    @property
    def doubly_stochastic(self) -> bool:
        return _sums_to_one(self.mixing_WW.sum(1))

    def at(self, step: int) -> Topology:
        """The graph used at ``step`` (itself for a static graph)."""
        return self.cycle[step % len(self.cycle)] if self.cycle else self

    def in_neighbors(self, node: int) -> list[int]:
        """Nodes whose messages ``node`` mixes in (excluding itself)."""
        row = self.mixing_WW[node]
        return [int(j) for j in torch.nonzero(row).flatten() if int(j) != node]

    def out_neighbors(self, node: int) -> list[int]:
        """Nodes that mix in what ``node`` sends (excluding itself)."""
        col = self.mixing_WW[:, node]
        return [int(i) for i in torch.nonzero(col).flatten() if int(i) != node]

    def spectral_gap(self) -> float:
        """``1 - |lambda_2|`` of the mixing matrix: how fast gossip averages (1 for complete,
        0 for a disconnected undirected graph, whose ``lambda_2`` is 1).

        For a time-varying graph, of the product ``M_{T-1} ... M_1 M_0`` of one cycle's
        matrices: the contraction over one period, which is what decides consensus (each step's
        graph alone may be disconnected; the one-peer exponential graph's cycle averages
        exactly at a power of two, gap 1). Clamped at 0: rounding gave ``|lambda_2| = 1 + 2e-16``
        and a gap of -0.0000."""
        if self.num_nodes == 1:
            return 1.0
        m = self.mixing_WW
        period = torch.eye(self.num_nodes, dtype=m.dtype, device=m.device)
        for g in self.cycle or (self,):
            period = g.mixing_WW @ period
        ev = torch.linalg.eigvals(period).abs().sort(descending=True).values
        return max(0.0, float(1.0 - ev[1]))

    def components(self) -> list[list[int]]:
        """The groups of nodes whose models all reach one another, in increasing order.

        An edge ``j -> i`` is a weight ``M[i, j] > 0`` at any step of the cycle: a time-varying
        graph is judged by the union of its steps' edges (the one-peer exponential graph is
        disconnected at every step but mixes everyone over a cycle). Directed graphs get their
        strongly connected components, since push-sum reaches consensus only when every node's
        mass reaches every other (Assran et al. 2019, Assumption 3, over a bounded window);
        for an undirected graph these are its connected components. One group: connected
        (a single node is)."""
        union = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.bool)
        for g in self.cycle or (self,):
            union |= (g.mixing_WW > 0).cpu()
        outs = [torch.nonzero(union[:, j]).flatten().tolist() for j in range(self.num_nodes)]
        ins = [torch.nonzero(union[i]).flatten().tolist() for i in range(self.num_nodes)]
        groups, left = [], set(range(self.num_nodes))
        while left:
            start = min(left)
            group = _reach(outs, start) & _reach(ins, start)
            groups.append(sorted(group))
            left -= group
        return groups


def _sums_to_one(sums: torch.Tensor) -> bool:
    return bool(torch.allclose(sums, torch.ones_like(sums), rtol=0.0, atol=STOCHASTIC_ATOL))


def _reach(links: list[list[int]], start: int) -> set[int]:
    """The nodes reached from ``start`` along ``links`` (``links[j]``: where ``j`` leads)."""
    seen, todo = {start}, [start]
    while todo:
        for k in links[todo.pop()]:
            if k not in seen:
                seen.add(k)
                todo.append(k)
    return seen


def _check_n(n: int, who: str) -> None:
    """A node count: ``ring(2.5)`` failed inside ``range``, ``ring(True)`` built one node."""
    check_count(n, f"{who}: n")


def from_edges(n: int, edges: Sequence[tuple[int, int]], name: str = "graph") -> Topology:
    """An undirected graph from its edge list, with Metropolis-Hastings weights."""
    _check_n(n, name)
    adj = torch.zeros(n, n, dtype=torch.bool)
    for i, j in edges:
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"{name}: edge ({i}, {j}) names a node outside [0, {n})")
        if i != j:
            adj[i, j] = adj[j, i] = True
    deg = adj.sum(1)
    m = torch.zeros(n, n, dtype=torch.float64)
    for i, j in adj.nonzero().tolist():
        m[i, j] = 1.0 / (1.0 + max(int(deg[i]), int(deg[j])))
    m += torch.diag(1.0 - m.sum(1))
    return Topology(name, m)


def from_matrix(mixing_WW: torch.Tensor, name: str = "custom") -> Topology:
    """A user-given mixing matrix (column-stochastic; doubly stochastic for D-PSGD), kept on
    the CPU like every topology (the communicators build their tables there)."""
    return Topology(name, torch.as_tensor(mixing_WW, dtype=torch.float64, device="cpu").clone())


def complete(n: int) -> Topology:
    """Everyone averages with everyone: one gossip step is the exact mean."""
    _check_n(n, "complete")
    return Topology("complete", torch.full((n, n), 1.0 / n, dtype=torch.float64))


def star(n: int, hub: int = 0) -> Topology:
    """The federated server-client graph. Averaging through the hub gives every node the mean,
    so the mixing matrix is the complete graph's; ``hub`` names the server node (recorded for
    the caller; nothing in the mixing reads it)."""
    _check_n(n, "star")
    if not 0 <= hub < n:
        raise ValueError(f"star: hub must be a node in 0..{n - 1}, got {hub}")
    return Topology("star", complete(n).mixing_WW, hub=hub)


def ring(n: int) -> Topology:
    """Each node with its two ring neighbours, weights 1/3 (for n >= 3; two nodes average
    half-half, one node keeps its own)."""
    _check_n(n, "ring")
    return from_edges(n, [(i, (i + 1) % n) for i in range(n)], "ring")


def torus(rows: int, cols: int) -> Topology:
    """A 2-D torus (each node with 4 neighbours when rows, cols >= 3)."""
    # Each side on its own: the product alone let torus(-2, -3) through, as 6 isolated nodes.
    check_count(rows, "torus: rows")
    check_count(cols, "torus: cols")
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges += [(i, r * cols + (c + 1) % cols), (i, ((r + 1) % rows) * cols + c)]
    return from_edges(rows * cols, edges, "torus")


def exponential(n: int) -> Topology:
    """The static exponential graph: node ``i`` linked to ``i +- 2^k`` (undirected).

    Undirected, a node has up to ``2 ceil(log2 n)`` neighbours (6 at n = 7; ``2 log2 n - 1``
    when ``n`` is a power of two, where ``+n/2`` and ``-n/2`` are one node: 5 at n = 8),
    about twice the directed exponential graph's ``log2 n`` (``i + 2^k`` only): twice the bytes
    a gossip step sends, and a larger spectral gap."""
    _check_n(n, "exponential")
    hops = [2**k for k in range(max(1, math.ceil(math.log2(max(n, 2)))))]
    return from_edges(n, [(i, (i + h) % n) for i in range(n) for h in hops], "exponential")


def one_peer_exponential(n: int) -> Topology:
    """SGP's time-varying directed graph: at step ``t`` node ``i`` keeps half its mass and
    pushes half to ``i + 2^(t mod log2 n)``. For ``n`` a power of two, ``log2 n`` consecutive
    steps average exactly (Assran et al. 2019, Sec. 5). Forward pushes only, as the code's
    ``graph_type 5`` (facebookresearch/stochastic_gradient_push); the paper's ImageNet job
    script uses ``graph_type 0``, which alternates ``+2^k`` and ``-2^k`` and needs ``2 log2 n``
    steps to average exactly."""
    _check_n(n, "one_peer_exponential")
    periods = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    graphs = []
    for k in range(periods):
        m = torch.zeros(n, n, dtype=torch.float64)
        for j in range(n):
            m[j, j] += 0.5 if n > 1 else 1.0
            if n > 1:
                m[(j + 2**k) % n, j] += 0.5
        graphs.append(Topology(f"one_peer_exponential[{k}]", m))
    return Topology("one_peer_exponential", graphs[0].mixing_WW, cycle=tuple(graphs))


TOPOLOGIES = {
    "complete": complete,
    "ring": ring,
    "exponential": exponential,
    "one_peer_exponential": one_peer_exponential,
    "star": star,
}
"""Topologies built from the node count alone (``torus`` also needs its shape)."""
