"""Byzantine-robust gossip: D-PSGD whose neighbour averaging is a robust rule.

Every node ``i`` takes a local momentum step and then, instead of the plain weighted average
of D-PSGD (Lian et al., NeurIPS 2017), applies a robust rule to its own half-step model and
those of its in-neighbours (received with ``comm.neighbors``, over any topology)::

    x_i^+ = x_i - lr * d_i                      d_i: torch.optim.SGD direction (momentum)
    x_i   <- rule(x_i^+, {x_j^+ : j in-neighbour of i})

Rules (``W_ij`` = ``topology.mixing_WW``):

- :func:`clipped_gossip` (He, Karimireddy, Jaggi, "Byzantine-robust decentralized learning
  via ClippedGossip", 2022, also titled "...via self-centered clipping"):
  ``x_i + sum_j W_ij clip(x_j - x_i, tau_i)``, ``clip(v, tau) = v min(1, tau / ||v||)``.
  A fixed ``tau``, or ``b=``: ``tau_i`` is the ``(b+1)``-th largest distance
  ``||x_j - x_i||``, so exactly the ``b`` farthest neighbours are clipped (to the distance of
  the next one). **Deviation, named**: the paper's adaptive ``tau_i`` is computed from the
  *honest* neighbours' distances, which a node cannot know; ``b=`` is what a node can compute.
  With ``b=`` every node needs at least ``b + 1`` in-neighbours (refused otherwise: all its
  messages would be clipped to 0 and it would never mix).
  ``tau = inf`` with no Byzantine nodes is D-PSGD with the same momentum, bit for bit (tested;
  the default momentum here is 0.9, :func:`shoal.parallel.dpsgd`'s is 0).
- :func:`trimmed_gossip`: the coordinate-wise trimmed mean (Yin et al., ICML 2018) of
  ``{x_i} U {x_j}``, ``b`` values cut from each side; needs ``deg_i >= 2b``. Each output
  coordinate stays in the range of the honest values when at most ``b`` in-neighbours are
  Byzantine. (BRIDGE-T, Fang, Yang, Bajwa 2022, trims the neighbours only and always keeps
  the own value; on a ring with ``b = 1`` that would ignore both neighbours.)
- :func:`nna_gossip`: MoNNA's nearest-neighbour averaging (Farhadkhani et al., ICML 2023,
  Alg. 1; :func:`shoal.aggregate.monna`): the mean of the ``deg_i + 1 - f`` models nearest to
  ``x_i``; needs ``deg_i >= 2f``. MoNNA's momentum ``m <- beta m + (1 - beta) g`` with step
  ``gamma`` is ``momentum=beta, lr=gamma (1 - beta)`` here (PyTorch's undampened buffer).
- :func:`plain_gossip`: the weighted average (D-PSGD), the baseline under attack.

Trimmed mean and NNA ignore the mixing weights, as their papers do.

**Byzantine nodes** (``byzantine=shoal.attacks.byzantine(num, n, attack, seed)`` or a
``Byzantine(frozenset(ids), attack)``) train like everyone else, but what each honest node
``i`` receives from them is forged, per receiver, from ``i``'s neighbourhood: the omniscient
threat model of He et al. (a Byzantine node may send different models to different
neighbours). Any update attack of :mod:`shoal.attacks` is applied to what ``i`` averages,
the displacements ``x_k - x_i`` of its honest neighbourhood (its own row, 0, included):
a Byzantine neighbour sends ``x_i + attack(displacements, f_i)``. So ``sign_flip()`` sends
``x_i - mean(x_k - x_i)``, ``gaussian(sigma)`` ``x_i + N(0, sigma^2 I)`` (seeded by
``(seed, step, receiver)``, so every runtime draws the same noise), ``alie()``
``mean - z std`` of the neighbourhood. ALIE's ``z_max(n, f)`` is 0 or undefined in the
small neighbourhoods of sparse graphs (``n = 3`` on a ring); there it uses ``z = 0``, so
pass ``alie(z=...)`` for a real shift. :func:`dissensus` is He et al.'s gossip attack.
Label flipping is a data attack and is not supported here.

Runs with :class:`~shoal.parallel.SimComm` (all nodes in one process) and with
:class:`~shoal.parallel.DistComm` (one node per process; the receiving process forges its
Byzantine neighbours' rows, so the numbers are the same). The evaluated model is the mean of
the honest nodes' models, in both.

Shape suffixes: ``W`` local workers, ``K`` in-neighbour slots, ``H`` honest rows, ``F``
Byzantine rows, ``D`` flat parameters.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from shoal.attacks import Byzantine, LabelFlip
from shoal.attacks.mimic import Mimic
from shoal.parallel.algorithms.dpsgd import check_connected, check_topology
from shoal.parallel.algorithms.robust_gossip.attacks import Dissensus, dissensus, forge
from shoal.parallel.algorithms.robust_gossip.rules import (
    ClippedGossip,
    GossipRule,
    NNAGossip,
    PlainGossip,
    TrimmedGossip,
    clipped_gossip,
    nna_gossip,
    plain_gossip,
    trimmed_gossip,
)
from shoal.parallel.algorithms.sync_sgd import check_optimizer
from shoal.parallel.base import GradFn, State, sgd_direction
from shoal.parallel.comm import Comm
from shoal.parallel.graph import InGraph, Neighbors
from shoal.topology import Topology

__all__ = [
    "ClippedGossip",
    "Dissensus",
    "GossipRule",
    "NNAGossip",
    "PlainGossip",
    "RobustGossip",
    "TrimmedGossip",
    "clipped_gossip",
    "dissensus",
    "nna_gossip",
    "plain_gossip",
    "robust_gossip",
    "trimmed_gossip",
]


@dataclass(frozen=True)
class RobustGossip:
    """Decentralized momentum SGD with a robust gossip rule; see the module docstring."""

    lr: float
    topology: Topology
    rule: GossipRule
    momentum: float = 0.9
    weight_decay: float = 0.0
    byzantine: Byzantine | None = None
    name: str = field(default="robust_gossip")
    setting_keys: ClassVar[tuple[str, ...]] = ("honest_W",)
    """State made from the setting, not by training: a resume takes this run's."""

    def __post_init__(self) -> None:
        check_optimizer("robust_gossip", self.lr, self.momentum, self.weight_decay)
        if not isinstance(self.topology, Topology):
            raise TypeError(f"robust_gossip: topology must be a Topology, got {self.topology!r}")
        if not callable(getattr(self.rule, "check", None)):
            raise TypeError(
                "robust_gossip: rule must be clipped_gossip(...), trimmed_gossip(b), "
                f"nna_gossip(f) or plain_gossip(), got {self.rule!r}"
            )
        for g in self.topology.cycle or (self.topology,):
            if not g.doubly_stochastic:
                raise ValueError(
                    f"robust_gossip: topology {g.name!r} is not doubly stochastic; the rules "
                    "mix like D-PSGD, which needs a doubly stochastic matrix"
                )
        check_connected("robust_gossip", self.topology)
        self.rule.check(self.topology)
        byz = self.byzantine
        if byz is not None:
            if isinstance(byz.behaviour, LabelFlip):
                raise TypeError(
                    "robust_gossip: label_flip poisons a node's data; Byzantine gossip nodes "
                    "send forged models (an update attack of shoal.attacks, or dissensus())"
                )
            n = self.topology.num_nodes
            bad = sorted(i for i in byz.clients if i >= n)  # Byzantine takes integers >= 0
            if bad:
                raise ValueError(f"robust_gossip: Byzantine node(s) {bad} not in 0..{n - 1}")
            if len(byz.clients) >= n:
                raise ValueError("robust_gossip: every node is Byzantine; none is left to train")
            self._check_mimic()
            self._warn_unprotected()

    def _check_mimic(self) -> None:
        """``mimic(target)`` copies a receiver's ``target``-th honest in-neighbour (its own
        model when it has none): a target that some receiver lacks failed at step 0 with
        "there are 1 honest updates", naming no node."""
        attack, bad = self.byzantine.behaviour if self.byzantine else None, self.byzantine_nodes
        if not isinstance(attack, Mimic) or attack.target is None:
            return
        for g in self.topology.cycle or (self.topology,):
            for i in range(g.num_nodes):
                inn = g.in_neighbors(i)
                honest = max(1, sum(j not in bad for j in inn))
                if (
                    i not in bad
                    and any(j in bad for j in inn)
                    and not -honest <= attack.target < honest
                ):
                    raise ValueError(
                        f"robust_gossip: mimic(target={attack.target}) copies the target-th "
                        f"honest in-neighbour of each node a Byzantine one sends to, and node {i} "
                        f"has {honest} on {g.name}: use a target below {honest}, or mimic(None)"
                    )

    def _warn_unprotected(self) -> None:
        """Warn when an honest node has more Byzantine in-neighbours (at some step of the
        cycle) than the rule tolerates: the rule's guarantee does not cover it."""
        tolerated = getattr(self.rule, "tolerates", None)
        if tolerated is None:
            return
        bad = self.byzantine_nodes
        most: dict[int, int] = {}
        for g in self.topology.cycle or (self.topology,):
            for i in range(g.num_nodes):
                k = sum(j in bad for j in g.in_neighbors(i))
                if i not in bad and k > tolerated:
                    most[i] = max(most.get(i, 0), k)
        if most:
            shown = ", ".join(f"node {i} has {k}" for i, k in sorted(most.items())[:8])
            warnings.warn(
                f"robust_gossip: the {self.rule.name} rule tolerates {tolerated} Byzantine "
                f"in-neighbour(s) per node, but {shown}{', ...' if len(most) > 8 else ''}: "
                "those nodes are not protected",
                UserWarning,
                stacklevel=5,  # the caller of robust_gossip(...)
            )

    @property
    def byzantine_nodes(self) -> frozenset[int]:
        return frozenset() if self.byzantine is None else frozenset(self.byzantine.clients)

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        check_topology("robust_gossip", self.topology, comm)
        honest = [w not in self.byzantine_nodes for w in comm.workers]
        state: State = {"honest_W": torch.tensor(honest, device=params_WD.device)}
        if self.momentum:
            state["momentum_WD"] = torch.zeros_like(params_WD)
        return state

    @staticmethod
    def model(params_WD: torch.Tensor, state: State) -> torch.Tensor:
        return params_WD

    @staticmethod
    def evaluated_W(state: State) -> torch.Tensor:
        """The metrics score the honest nodes' average model."""
        return state["honest_W"]

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        topology = self.topology.at(step)
        direction_WD, m_WD = sgd_direction(
            grad_fn(params_WD),
            params_WD,
            state.get("momentum_WD"),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=False,
        )
        half_WD = params_WD - self.lr * direction_WD
        received = comm.neighbors(half_WD, topology)
        graph = comm.graph(topology)
        if self.byzantine is not None and self.byzantine_nodes:
            received = self._attacked(half_WD, received, graph, comm.workers, step)
        params_WD = self.rule(half_WD, received, graph, comm.workers)
        return params_WD, ({**state, "momentum_WD": m_WD} if m_WD is not None else state)

    def _attacked(
        self,
        own_WD: torch.Tensor,
        received: Neighbors,
        graph: InGraph,
        workers: tuple[int, ...],
        step: int,
    ) -> Neighbors:
        """``received`` with every honest node's Byzantine in-neighbours' rows forged."""
        assert self.byzantine is not None
        attack = self.byzantine.behaviour
        assert not isinstance(attack, LabelFlip)  # refused in __post_init__
        bad = self.byzantine_nodes
        rows_WKD = received.rows_WKD.clone()
        for w, i in enumerate(workers):
            if i in bad:  # Byzantine nodes collude: their own inbox is left alone
                continue
            deg = len(graph.ins[i])
            src = graph.source_NK[i, :deg].tolist()
            byz = [k for k in range(deg) if src[k] in bad]
            if not byz:
                continue
            ok = [k for k in range(deg) if src[k] not in bad]
            weight_K = graph.weight_NK[i].to(own_WD.device, own_WD.dtype)
            rows_WKD[w, byz] = forge(
                attack,
                own_WD[w],
                received.rows_WKD[w, ok],
                weight_K[ok],
                float(weight_K[byz].sum()),
                len(byz),
                step,
                i,
            ).to(own_WD.dtype)
        return Neighbors(rows_WKD, received.mask_WK)


def robust_gossip(
    lr: float,
    topology: Topology,
    rule: GossipRule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    byzantine: Byzantine | None = None,
) -> RobustGossip:
    """Robust decentralized SGD on ``topology`` with ``rule`` (see the module docstring)."""
    return RobustGossip(lr, topology, rule, momentum, weight_decay, byzantine)
