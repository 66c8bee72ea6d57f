"""In-neighbour tables of a topology, and the mixing step that uses them.

Both communicators deliver the same thing to worker ``i``: the rows of its in-neighbours
``j`` (the nodes with ``M[i, j] > 0``, ``j != i``), in increasing ``j``, padded to the largest
in-degree ``K`` of the graph. Gossip is then ``x_i <- M_ii x_i + sum_k M_i,j_k x_j_k``, summed
in that fixed order, so simulation and distributed runs add the same numbers in the same order.

Shape suffixes: ``N`` all workers, ``W`` local workers, ``K`` in-neighbour slots, ``D`` flat
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from shoal.topology import Topology


class Neighbors(NamedTuple):
    """What each local worker received: ``rows_WKD`` (zeros where ``mask_WK`` is False)."""

    rows_WKD: torch.Tensor
    mask_WK: torch.Tensor


@dataclass(frozen=True)
class InGraph:
    """``source_NK`` (in-neighbour ids; padding repeats the node itself), ``mask_NK``,
    ``weight_NK`` (``M[i, j_k]``, 0 on padding), ``self_N`` (``M[i, i]``), and per node the
    out-neighbours (who receives what it sends)."""

    source_NK: torch.Tensor
    mask_NK: torch.Tensor
    weight_NK: torch.Tensor
    self_N: torch.Tensor
    outs: tuple[tuple[int, ...], ...]
    ins: tuple[tuple[int, ...], ...]

    @property
    def max_in_degree(self) -> int:
        return int(self.source_NK.shape[1])

    @staticmethod
    def of(topology: Topology) -> InGraph:
        n = topology.num_nodes
        ins = tuple(tuple(topology.in_neighbors(i)) for i in range(n))
        outs = tuple(tuple(topology.out_neighbors(i)) for i in range(n))
        k = max((len(s) for s in ins), default=0)
        source = torch.arange(n).unsqueeze(1).repeat(1, k)
        mask = torch.zeros(n, k, dtype=torch.bool)
        for i, srcs in enumerate(ins):
            source[i, : len(srcs)] = torch.tensor(srcs, dtype=torch.long)
            mask[i, : len(srcs)] = True
        m = topology.mixing_WW
        weight = torch.where(mask, m.gather(1, source), torch.zeros((), dtype=m.dtype))
        return InGraph(source, mask, weight, m.diagonal().clone(), outs, ins)


class GraphCache:
    """In-graphs by topology object (time-varying graphs reuse a few objects every step)."""

    def __init__(self) -> None:
        self._graphs: dict[int, tuple[Topology, InGraph]] = {}

    def get(self, topology: Topology, world_size: int) -> InGraph:
        if not isinstance(topology, Topology):
            raise TypeError(f"expected a shoal.topology.Topology, got {type(topology).__name__}")
        if topology.num_nodes != world_size:
            raise ValueError(
                f"topology {topology.name!r} has {topology.num_nodes} nodes but there are "
                f"{world_size} workers; build it for {world_size} nodes"
            )
        hit = self._graphs.get(id(topology))
        if hit is not None and hit[0] is topology:
            return hit[1]
        if len(self._graphs) > 64:  # user code building a new Topology every step
            self._graphs.clear()
        graph = InGraph.of(topology)
        # Holding the topology keeps its id from being reused by another object.
        self._graphs[id(topology)] = (topology, graph)
        return graph


def mix(
    x_WD: torch.Tensor, received: Neighbors, graph: InGraph, workers: tuple[int, ...]
) -> torch.Tensor:
    """``x_i <- M_ii x_i + sum_k M_i,j_k x_j_k`` for the local workers (see module docstring)."""
    return retained(x_WD, graph, workers) + mix_received(received, graph, workers, x_WD)


def retained(x_WD: torch.Tensor, graph: InGraph, workers: tuple[int, ...]) -> torch.Tensor:
    """``M_ii x_i``: what each worker keeps of its own message."""
    ids = torch.tensor(workers, dtype=torch.long)
    return graph.self_N[ids].to(x_WD.device, x_WD.dtype).unsqueeze(1) * x_WD


def mix_received(
    received: Neighbors, graph: InGraph, workers: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """``sum_k M_i,j_k x_j_k``: the weighted sum of what arrived (zero with no in-neighbours)."""
    ids = torch.tensor(workers, dtype=torch.long)
    weight_WK = graph.weight_NK[ids].to(like.device, like.dtype)
    out_WD = torch.zeros_like(like)
    for k in range(received.rows_WKD.shape[1]):
        out_WD = out_WD + weight_WK[:, k : k + 1] * received.rows_WKD[:, k]
    return out_WD
