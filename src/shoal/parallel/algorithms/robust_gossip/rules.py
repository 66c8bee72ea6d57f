"""The robust gossip rules: what a node makes of its own model and its in-neighbours'.

Each rule is a small frozen dataclass called as ``rule(own_WD, received, graph, workers)``
(``received``: :class:`~shoal.parallel.graph.Neighbors` from ``comm.neighbors``; ``graph``:
the in-neighbour tables with the mixing weights; ``workers``: the local workers' node ids),
with ``check(topology)`` raising when some node has too few in-neighbours for the rule, and
``tolerates``: how many Byzantine in-neighbours a node may have and still be protected (``b``
or ``f``; ``None`` when the rule makes no such claim). The papers and the deviations are in
:mod:`shoal.parallel.algorithms.robust_gossip`.

Shape suffixes: ``W`` local workers, ``K`` in-neighbour slots, ``D`` flat parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from shoal.aggregate import monna, trimmed_mean
from shoal.aggregate._common import row_norms
from shoal.aggregate.base import NonFiniteInbox
from shoal.checks import check_count, is_real
from shoal.parallel.graph import InGraph, Neighbors, mix
from shoal.topology import Topology


class GossipRule(Protocol):
    """``rule(own_WD, received, graph, workers) -> x_WD`` for the local workers."""

    name: str

    def check(self, topology: Topology) -> None:
        """Raise a ValueError if some node has too few in-neighbours for this rule."""
        ...

    def __call__(
        self, own_WD: torch.Tensor, received: Neighbors, graph: InGraph, workers: tuple[int, ...]
    ) -> torch.Tensor: ...


def _by_degree(own_WD: torch.Tensor, received: Neighbors) -> Iterator[tuple[list[int], Tensor]]:
    """Local workers grouped by in-degree ``d``: their ids and ``[G, 1 + d, D]`` rows, own
    first (one batched rule call per group instead of one per worker)."""
    mask_WK = received.mask_WK
    deg_W = mask_WK.sum(1)
    # Slots are filled in order (see shoal.parallel.graph): worker w's rows are [:deg_w].
    assert bool(
        (mask_WK == (torch.arange(mask_WK.shape[1], device=deg_W.device) < deg_W[:, None])).all()
    )
    degrees = deg_W.tolist()
    for d in sorted(set(degrees)):
        ids = [w for w, dw in enumerate(degrees) if dw == d]
        rows = torch.cat([own_WD[ids, None], received.rows_WKD[ids, :d]], dim=1)
        yield ids, rows


def _sorted_rows(x_GND: torch.Tensor) -> torch.Tensor:
    """``x_GND`` sorted along ``N``. Neighbourhoods are small: an odd-even transposition sort
    of elementwise min/max (exact, ``N^2/2`` passes over ``[G, D]``) is 2-3x faster there than
    ``torch.sort`` along a short strided axis (measured for N = 3 and 5, D = 199,210)."""
    n = x_GND.shape[1]
    if n > 12:
        return torch.sort(x_GND, dim=1).values
    rows = list(x_GND.unbind(1))
    for p in range(n):
        for j in range(p % 2, n - 1, 2):
            rows[j], rows[j + 1] = (
                torch.minimum(rows[j], rows[j + 1]),
                torch.maximum(rows[j], rows[j + 1]),
            )
    return torch.stack(rows, dim=1)


def _need_degree(who: str, topology: Topology, least: int, why: str) -> None:
    for g in topology.cycle or (topology,):
        for i in range(g.num_nodes):
            deg = len(g.in_neighbors(i))
            if deg < least:
                raise ValueError(
                    f"{who} needs every node to have at least {least} in-neighbours ({why}); "
                    f"node {i} of {g.name!r} has {deg}: lower it or use a denser graph"
                )


@dataclass(frozen=True)
class PlainGossip:
    name: str = "plain"

    def check(self, topology: Topology) -> None:
        pass

    def __call__(
        self, own_WD: torch.Tensor, received: Neighbors, graph: InGraph, workers: tuple[int, ...]
    ) -> torch.Tensor:
        return mix(own_WD, received, graph, workers)


@dataclass(frozen=True)
class ClippedGossip:
    tau: float = math.inf
    b: int | None = None
    name: str = "clipped"

    def __post_init__(self) -> None:
        if not (is_real(self.tau) and self.tau > 0):  # 'a' > 0 was a bare TypeError
            raise ValueError(
                f"clipped_gossip: tau must be a number > 0 (inf: no clipping), got {self.tau!r}"
            )
        if self.b is not None:
            check_count(self.b, "clipped_gossip: b", least=0)
        if self.b is not None and (self.b < 0 or self.tau != math.inf):
            raise ValueError("clipped_gossip: give either tau (a radius) or b >= 0, not both")

    @property
    def tolerates(self) -> int | None:
        """``b`` (the farthest ``b`` are clipped); a fixed ``tau`` makes no such claim."""
        return self.b

    def check(self, topology: Topology) -> None:
        if self.b is not None:  # with b or fewer, every message is clipped to 0: no mixing
            _need_degree("clipped_gossip", topology, self.b + 1, f"b+1 with b={self.b}")

    def radius(self, dist_WK: torch.Tensor, mask_WK: torch.Tensor) -> torch.Tensor:
        """``tau_i`` per worker, ``[W, 1]``."""
        if self.b is None:
            return torch.full_like(dist_WK[:, :1], self.tau)
        if self.b >= dist_WK.shape[1]:  # nobody has more than b neighbours: clip all to 0
            return torch.zeros_like(dist_WK[:, :1])
        desc = torch.where(mask_WK, dist_WK, -1.0).sort(dim=1, descending=True).values
        # With b or fewer neighbours the slot holds the -1 padding: every message clipped to 0.
        return desc[:, self.b : self.b + 1].clamp_min(0.0)

    def __call__(
        self, own_WD: torch.Tensor, received: Neighbors, graph: InGraph, workers: tuple[int, ...]
    ) -> torch.Tensor:
        rows_WKD, mask_WK = received
        diff_WKD = rows_WKD - own_WD[:, None]
        dist_WK = torch.linalg.vector_norm(diff_WKD, dim=2)
        # A NaN or inf in a row or in the node's own model makes a distance NaN or inf, so the
        # models are read again only then (a check of every entry doubled the rule's time).
        if not bool(torch.isfinite(dist_WK).all()):
            # As the other rules: a NaN row was never "> tau" and went through as received,
            # and an inf one was scaled by tau / inf = 0 into 0 * inf = NaN.
            if not bool(torch.isfinite(rows_WKD).all() & torch.isfinite(own_WD).all()):
                raise NonFiniteInbox("clipped_gossip: NaN or inf in the models a node mixes")
            # A far but finite row overflowed the sum of squares to inf, and tau / inf = 0
            # dropped it instead of clipping it to tau: centered_clip's float64 distances.
            dist_WK = torch.stack([row_norms(r, o) for r, o in zip(rows_WKD, own_WD)])
            diff_WKD = rows_WKD.to(dist_WK.dtype) - own_WD.to(dist_WK.dtype)[:, None]
        tau_W1 = self.radius(dist_WK, mask_WK)
        clipped = mask_WK & (dist_WK > tau_W1)
        scale_WK = tau_W1 / torch.where(clipped, dist_WK, 1.0)
        # Unclipped messages are used as received (not x_i + (x_j - x_i)), so that tau = inf
        # reproduces D-PSGD's mixing bit for bit.
        forged = (own_WD[:, None] + scale_WK[..., None] * diff_WKD).to(own_WD.dtype)
        rows_WKD = torch.where(clipped[..., None], forged, rows_WKD)
        return mix(own_WD, Neighbors(rows_WKD, mask_WK), graph, workers)


@dataclass(frozen=True)
class TrimmedGossip:
    b: int
    name: str = "trimmed"

    def __post_init__(self) -> None:
        trimmed_mean(self.b)  # the same checks of b

    @property
    def tolerates(self) -> int:
        return self.b

    def check(self, topology: Topology) -> None:
        _need_degree("trimmed_gossip", topology, 2 * self.b, f"2b with b={self.b}")

    def __call__(
        self, own_WD: torch.Tensor, received: Neighbors, graph: InGraph, workers: tuple[int, ...]
    ) -> torch.Tensor:
        out = torch.empty_like(own_WD)
        for ids, x_GND in _by_degree(own_WD, received):
            # As nna_gossip and the trimmed mean refuse it: the min/max network of small
            # neighbourhoods spread a NaN to every node, torch.sort of larger ones trimmed it.
            if not bool(torch.isfinite(x_GND).all()):
                raise NonFiniteInbox("trimmed_gossip: NaN or inf in the models a node mixes")
            n = x_GND.shape[1]
            out[ids] = _sorted_rows(x_GND)[:, self.b : n - self.b].mean(dim=1)
        return out


@dataclass(frozen=True)
class NNAGossip:
    f: int
    name: str = "nna"

    def __post_init__(self) -> None:
        monna(self.f)

    @property
    def tolerates(self) -> int:
        return self.f

    def check(self, topology: Topology) -> None:
        _need_degree("nna_gossip", topology, 2 * self.f, f"2f with f={self.f}")

    def __call__(
        self, own_WD: torch.Tensor, received: Neighbors, graph: InGraph, workers: tuple[int, ...]
    ) -> torch.Tensor:
        rule = monna(self.f)
        out = torch.empty_like(own_WD)
        for ids, x_GND in _by_degree(own_WD, received):
            out[ids] = rule.batched(x_GND[:, 0], x_GND[:, 1:])
        return out


def plain_gossip() -> PlainGossip:
    """The weighted neighbour average of D-PSGD (not robust): the baseline."""
    return PlainGossip()


def clipped_gossip(tau: float = math.inf, *, b: int | None = None) -> ClippedGossip:
    """ClippedGossip (He et al. 2022) with radius ``tau``, or clipping the ``b`` farthest."""
    return ClippedGossip(tau, b)


def trimmed_gossip(b: int) -> TrimmedGossip:
    """Coordinate-wise trimmed mean of own + in-neighbours' models, ``b`` cut per side."""
    return TrimmedGossip(b)


def nna_gossip(f: int) -> NNAGossip:
    """MoNNA's nearest-neighbour averaging (Farhadkhani et al. 2023) over the neighbourhood."""
    return NNAGossip(f)
