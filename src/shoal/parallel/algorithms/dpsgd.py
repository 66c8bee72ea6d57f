"""D-PSGD: decentralized parallel SGD by gossip over a graph.

Lian, Zhang, Zhang, Hsieh, Zhang, Liu, "Can Decentralized Algorithms Outperform Centralized
Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017.
Each worker mixes with its graph neighbours through a doubly stochastic mixing matrix ``M``
(``topology.mixing_WW``; ``topology.at(step)`` for time-varying graphs), by point-to-point
messages only. The paper assumes ``M`` symmetric; directed graphs such as the one-peer
exponential are accepted when doubly stochastic. Two orders:

- ``"adapt_then_combine"`` (default): ``x_i <- sum_j M_ij (x_j - lr g_j(x_j))``. On
  ``complete(n)`` this is FedAvg with every client taking one local step every round.
- ``"lian"``: the paper's Algorithm 1, ``x_i <- sum_j M_ij x_j - lr g_i(x_i)``. The gradient
  is taken at the pre-mixing model, so the models are sent (non-blocking) before it is
  computed and travel while it is (the paper's point: computation and communication
  overlap); the cost model charges such a step ``max(compute, transfer)``.

Deviation, named: the local step may use momentum / Nesterov / weight decay
(``torch.optim.SGD`` semantics, buffers local), as SGP's experiments do for D-PSGD; the paper
analyses plain SGD, which is the default.

Shape suffixes: ``W`` local workers, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from shoal.parallel.algorithms.sync_sgd import check_optimizer
from shoal.parallel.base import GradFn, OwnModel, State, sgd_direction
from shoal.parallel.comm import Comm
from shoal.parallel.graph import mix
from shoal.topology import Topology

ORDERS = ("adapt_then_combine", "lian")


def check_topology(who: str, topology: Topology, comm: Comm) -> None:
    if topology.num_nodes != comm.world_size:
        raise ValueError(
            f"{who}: the topology has {topology.num_nodes} nodes but there are "
            f"{comm.world_size} workers; build it for {comm.world_size} nodes"
        )


def check_connected(who: str, topology: Topology) -> None:
    """Gossip reaches consensus only on a connected graph (over a time-varying graph's cycle;
    strongly connected for a directed one: :meth:`~shoal.topology.Topology.components`).
    On separate islands the workers never agree, and the scored average model averages
    models that never met."""
    groups = topology.components()
    if len(groups) > 1:
        shown = "; ".join(_nodes(g) for g in groups[:3]) + ("; ..." if len(groups) > 3 else "")
        raise ValueError(
            f"{who}: topology {topology.name!r} is not connected: its nodes form "
            f"{len(groups)} groups that do not reach one another ({shown}), so the workers "
            "would never agree on a model; add edges between them"
        )


def _nodes(group: list[int], most: int = 6) -> str:
    return "{" + ", ".join(map(str, group[:most])) + (", ..." if len(group) > most else "") + "}"


@dataclass(frozen=True)
class DPSGD(OwnModel):
    """Gossip SGD on a doubly stochastic graph; see the module docstring."""

    lr: float
    topology: Topology
    order: Literal["adapt_then_combine", "lian"] = "adapt_then_combine"
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    name: str = "dpsgd"

    def __post_init__(self) -> None:
        check_optimizer("dpsgd", self.lr, self.momentum, self.weight_decay, self.nesterov)
        if not isinstance(self.topology, Topology):
            raise TypeError(f"dpsgd: topology must be a Topology, got {type(self.topology)}")
        if self.order not in ORDERS:
            raise ValueError(f"dpsgd: order must be one of {ORDERS}, got {self.order!r}")
        for g in self.topology.cycle or (self.topology,):
            if not g.doubly_stochastic:
                raise ValueError(
                    f"dpsgd: topology {g.name!r} is not doubly stochastic, so gossip would not "
                    "preserve the average; use sgp (push-sum) for directed graphs"
                )
        check_connected("dpsgd", self.topology)

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        check_topology("dpsgd", self.topology, comm)
        return {"momentum_WD": torch.zeros_like(params_WD)} if self.momentum else {}

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        graph = self.topology.at(step)
        if self.order == "lian":  # the models leave before the gradient is computed
            sending = comm.start_neighbors(params_WD, graph)
        direction_WD, m_WD = sgd_direction(
            grad_fn(params_WD),
            params_WD,
            state.get("momentum_WD"),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        if self.order == "adapt_then_combine":
            params_WD = comm.gossip(params_WD - self.lr * direction_WD, graph)
        else:
            received = sending.wait()
            mixed_WD = mix(params_WD, received, comm.graph(graph), comm.workers)
            params_WD = mixed_WD - self.lr * direction_WD
        return params_WD, ({"momentum_WD": m_WD} if m_WD is not None else state)


def dpsgd(
    lr: float,
    topology: Topology,
    order: Literal["adapt_then_combine", "lian"] = "adapt_then_combine",
    *,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> DPSGD:
    """D-PSGD on ``topology`` (doubly stochastic and connected, over its cycle when it varies
    in time; any graph of :mod:`shoal.topology`)."""
    return DPSGD(lr, topology, order, momentum, weight_decay, nesterov)
