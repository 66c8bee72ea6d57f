"""Stochastic Gradient Push: push-sum gossip SGD on directed, time-varying graphs.

Assran, Loizou, Ballas, Rabbat, "Stochastic Gradient Push for Distributed Deep Learning",
ICML 2019 (Algorithm 1; ``facebookresearch/stochastic_gradient_push``). Each worker keeps a
numerator ``x_i`` and a push-sum weight ``w_i`` (initially 1) and, with a column-stochastic
``P`` (``topology.at(step).mixing_WW``; by default the one-peer exponential graph, one peer
per step)::

    z_i = x_i / w_i                                   (de-biased model: the gradient is taken here)
    x_i <- sum_j P_ij (x_j - lr g_j(z_j)),   w_i <- sum_j P_ij w_j

``sum_i x_i`` and ``sum_i w_i`` are conserved by mixing, so every ``z_i`` tends to the average.
``x`` and ``w`` travel as one message ``[x_i, w_i]``.

``overlap=True`` is Overlap SGP with staleness 1 (the paper's Sec. 3, ``overlap`` in the code):
the part a worker keeps (``P_ii``) is applied at once, the parts it pushes are sent without
blocking and mixed in by the receivers one step later, so communication overlaps the next
gradient computation; mass in flight is counted when it arrives, and ``z = x / w`` stays
unbiased. In :class:`~shoal.parallel.DistComm` these are non-blocking ``isend``/``irecv``.

Deviations, named: the push-sum weight is always sent (the code skips it on regular graphs,
where it stays 1); the local step is ``torch.optim.SGD``'s (momentum, Nesterov, weight decay
on ``z``; the paper's experiments use Nesterov momentum) applied to the numerator as in
Algorithm 1, whereas the reference code steps the de-biased parameters (the same when
``w_i = 1``, i.e. on regular graphs such as the default one).

Shape suffixes: ``W`` local workers, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from shoal.checks import check_flag
from shoal.parallel.algorithms.dpsgd import check_connected, check_topology
from shoal.parallel.algorithms.sync_sgd import check_optimizer
from shoal.parallel.base import GradFn, State, resolve, sgd_direction
from shoal.parallel.comm import Comm
from shoal.parallel.graph import mix_received, retained
from shoal.topology import Topology, one_peer_exponential


@dataclass(frozen=True)
class SGP:
    """Push-sum SGD; see the module docstring. ``topology=None``: one-peer exponential."""

    lr: float
    topology: Topology | None = None
    overlap: bool = False
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    name: str = "sgp"
    setting_keys: ClassVar[tuple[str, ...]] = ("topology",)
    """State made from the setting, not by training: a resume takes this run's (the graph)."""

    def __post_init__(self) -> None:
        check_optimizer("sgp", self.lr, self.momentum, self.weight_decay, self.nesterov)
        check_flag(self.overlap, "sgp: overlap")  # "no" ran Overlap SGP
        if self.topology is not None and not isinstance(self.topology, Topology):
            raise TypeError(f"sgp: topology must be a Topology, got {type(self.topology)}")
        if self.topology is not None:  # the default graph is checked when the world is known
            self._check_mass(self.topology)

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        topology = self.topology
        if topology is None:
            topology = one_peer_exponential(comm.world_size)
        check_topology("sgp", topology, comm)
        self._check_mass(topology)
        state: State = {
            "weight_W1": torch.ones_like(params_WD[:, :1]),
            "topology": topology,
            "in_flight": None,  # Overlap SGP: last step's pushes, still on their way
            "in_flight_step": -1,
        }
        if self.momentum:
            state["momentum_WD"] = torch.zeros_like(params_WD)
        return state

    def _check_mass(self, topology: Topology) -> None:
        """Every node must hold push-sum weight after each step, or ``z = x / w`` is 0 / 0:
        it must receive something, and with ``overlap`` (pushes arrive a step late) keep part
        of its own mass, ``P_ii > 0``. And every node's mass must reach every other over a
        cycle (the union of its steps' edges strongly connected), or there is no consensus."""
        for t, graph in enumerate(topology.cycle or (topology,)):
            m = graph.mixing_WW
            starved = (m.diagonal() == 0) if self.overlap else (m.sum(1) == 0)
            if starved.any():
                node = int(torch.nonzero(starved)[0])
                why = "keeps none of its own mass" if self.overlap else "receives no mass"
                fix = " (overlap=True needs P_ii > 0)" if self.overlap else ""
                raise ValueError(
                    f"sgp: at step {t} of {topology.name}, node {node} {why}{fix}: its push-sum "
                    "weight would be 0 and its model x / w undefined"
                )
        check_connected("sgp", topology)

    @staticmethod
    def model(params_WD: torch.Tensor, state: State) -> torch.Tensor:
        return params_WD / state["weight_W1"]

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        state = dict(state)
        w_W1, topology = state["weight_W1"], state["topology"]
        z_WD = params_WD / w_W1
        direction_WD, m_WD = sgd_direction(
            grad_fn(z_WD),
            z_WD,
            state.get("momentum_WD"),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        if m_WD is not None:
            state["momentum_WD"] = m_WD
        msg_WD = torch.cat([params_WD - self.lr * direction_WD, w_W1], dim=1)
        graph = topology.at(step)
        if not self.overlap:
            mixed_WD = comm.gossip(msg_WD, graph)
        else:
            sending = comm.start_neighbors(msg_WD, graph)
            mixed_WD = retained(msg_WD, comm.graph(graph), comm.workers)
            if state["in_flight"] is not None:  # last step's pushes arrive now
                received = resolve(state["in_flight"])
                # The graph they were sent on, even when a resume changed the topology.
                sent = state.get("in_flight_graph") or topology.at(state["in_flight_step"])
                mixed_WD = mixed_WD + mix_received(received, comm.graph(sent), comm.workers, msg_WD)
            state["in_flight"], state["in_flight_step"] = sending, step
            state["in_flight_graph"] = graph
        state["weight_W1"] = mixed_WD[:, -1:]
        return mixed_WD[:, :-1], state


def sgp(
    lr: float,
    topology: Topology | None = None,
    *,
    overlap: bool = False,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> SGP:
    """Stochastic Gradient Push (default graph: one-peer exponential; see module docstring)."""
    return SGP(lr, topology, overlap, momentum, weight_decay, nesterov)
