"""Communication between workers, on stacked per-worker tensors.

A :class:`Comm` moves rows of ``x_WD``, one row per worker held by this process:
:class:`SimComm` holds every worker (``W = N``, one process), :class:`DistComm` holds one
(``W = 1``, one ``torch.distributed`` process per worker). Algorithms written against
``Comm`` therefore run unchanged in simulation and in real distributed training.

Operations:

- ``all_reduce_mean(x_WD) -> x_WD``: every row becomes the mean over all ``N`` workers.
- ``start_all_reduce_mean_(x_WB)``: non-blocking and in place: after ``.wait()`` every row
  of ``x_WB`` (a contiguous slice of the caller's rows, which it leaves alone until then) is
  the mean over all workers. Synchronous SGD's gradient buckets, all-reduced while the backward
  pass goes on (the cost model charges them beside the compute: ``Exchange.overlapped``).
- ``all_gather(x_WD) -> x_ND``: every worker's row, in worker order.
- ``all_reduce_payloads`` / ``all_gather_payloads``: the same for compressor payloads (sum of
  the floating-point entries of summable payloads; every worker's payload, exactly as sent).
- ``gossip(x_WD, topology) -> x_WD``: ``x_i <- sum_j M_ij x_j`` with ``M = topology.mixing_WW``,
  by point-to-point messages to the graph's neighbours only.
- ``neighbors(x_WD, topology)``: each worker's in-neighbours' rows, padded to the largest
  in-degree, with a mask (for robust gossip, which aggregates them itself).
- ``start_neighbors(x_WD, topology)``: the same, non-blocking: ``.wait()`` later gives the rows
  (D-PSGD's Algorithm 1 sends before computing its gradient, Overlap SGP consumes its messages
  one step late; the cost model charges their transfer beside the compute:
  ``Exchange.overlapped``).

``bytes_sent`` counts exactly the payload bytes this process's workers have sent, in the wire
format of :mod:`shoal.compress.wire` (dense rows are an identity payload ``{"values": x_D}``):
one payload per destination for point-to-point messages, and one per worker for a collective
(the payload it contributes; how the collective library relays it, e.g. ring all-reduce's
``2(N-1)/N`` factor, is not counted), so a collective of one worker, which sends nothing, counts
nothing. :class:`SimComm` counts all workers, :class:`DistComm`
its own process; the loop sums them. Every counted operation also appends a
:class:`shoal.cost.Exchange` to ``exchanges`` (its kind and every worker's bytes, which each
process knows: collectives of dense rows and summable payloads have one size, and an
all-gather delivers every payload, and the payload collectives take from the caller how many
entries each worker compressed, ``codec_elements``), from which ``train_parallel(network=...)``
charges a step simulated seconds; the loop empties the list after every step. Metrics
bookkeeping is not counted: ``sum_stats`` (a few numbers summed over processes), ``average``
(the workers' mean model, which is what gets evaluated) and ``predict`` (the test set scored,
shared among the processes); nor is ``broadcast`` (the initial model, once).

Shape suffixes: ``W`` local workers, ``N`` all workers, ``K`` in-neighbour slots, ``D`` flat
parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from shoal.checks import check_count
from shoal.compress.base import Payload
from shoal.compress.wire import payload_nbytes
from shoal.cost import Exchange
from shoal.evaluate import predict
from shoal.functional import LossFn, ParamSpec
from shoal.parallel.dist_comm import DistComm
from shoal.parallel.graph import GraphCache, InGraph, Neighbors, mix
from shoal.parallel.messages import check_rows, dense_nbytes, sum_floats
from shoal.topology import Topology

__all__ = [
    "Comm",
    "Delivered",
    "DistComm",
    "Done",
    "InFlight",
    "Neighbors",
    "Reducing",
    "SimComm",
    "dense_nbytes",
]


class Reducing(Protocol):
    """An in-place collective on its way: ``wait()`` returns once it has completed."""

    def wait(self) -> None: ...


class InFlight(Protocol):
    """Messages on their way: ``wait()`` gives what each local worker received."""

    def wait(self) -> Neighbors: ...


@runtime_checkable
class Comm(Protocol):
    """See the module docstring."""

    world_size: int
    workers: tuple[int, ...]
    bytes_sent: int
    exchanges: list[Exchange]

    @property
    def device(self) -> torch.device | None:
        """Where this process's tensors live (``None``: wherever the caller puts them)."""
        ...

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and reports (rank 0; always in simulation)."""
        ...

    def all_reduce_mean(self, x_WD: torch.Tensor) -> torch.Tensor: ...

    def start_all_reduce_mean_(self, x_WB: torch.Tensor) -> Reducing: ...

    def all_gather(self, x_WD: torch.Tensor) -> torch.Tensor: ...

    def all_reduce_payloads(
        self, payloads: Sequence[Payload], codec_elements: int = 0
    ) -> Payload: ...

    def all_gather_payloads(
        self, payloads: Sequence[Payload], codec_elements: int = 0
    ) -> list[Payload]: ...

    def gossip(self, x_WD: torch.Tensor, topology: Topology) -> torch.Tensor: ...

    def neighbors(self, x_WD: torch.Tensor, topology: Topology) -> Neighbors: ...

    def start_neighbors(self, x_WD: torch.Tensor, topology: Topology) -> InFlight: ...

    def graph(self, topology: Topology) -> InGraph:
        """The in-neighbour tables of ``topology`` (checked against the number of workers)."""
        ...

    def sum_stats(self, values: Sequence[float]) -> list[float]:
        """Sums over all processes of a few numbers (metrics bookkeeping, not counted)."""
        ...

    def broadcast(self, x_D: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``x_D`` on every process (setting up the initial model, not counted)."""
        ...

    def average(self, x_WD: torch.Tensor, keep_W: torch.Tensor | None = None) -> torch.Tensor:
        """The mean over all workers (or those with ``keep_W`` set) of their rows, ``x_D``, on
        every process (the model a metrics row evaluates; not counted)."""
        ...

    def predict(
        self,
        model: nn.Module,
        spec: ParamSpec,
        params_D: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(loss_N, correct_N)`` of ``params_D`` (the same on every process) on
        ``(x, y)``, on every process (:func:`shoal.evaluate.predict`; shared out among the
        processes in distributed runs)."""
        ...


class Delivered:
    """A message exchange that has already completed (simulation)."""

    def __init__(self, received: Neighbors) -> None:
        self.received = received

    def wait(self) -> Neighbors:
        return self.received


class Done:
    """An in-place collective that has already completed (simulation)."""

    def wait(self) -> None:
        return None


class SimComm:
    """Every worker in this process; messages are tensor indexing (see the module docstring)."""

    def __init__(self, world_size: int) -> None:
        check_count(world_size, "world_size")
        self.world_size = world_size
        self.workers = tuple(range(world_size))
        self.bytes_sent = 0
        self.exchanges: list[Exchange] = []
        self._graphs = GraphCache()

    device = None
    is_main = True

    def __repr__(self) -> str:
        return f"SimComm(world_size={self.world_size})"

    def _collective(
        self,
        kind: Literal["all_reduce", "all_gather"],
        nbytes_N: list[int],
        codec: int = 0,
        overlapped: bool = False,
    ) -> None:
        if self.world_size > 1:  # one worker's collective sends nothing
            self.bytes_sent += sum(nbytes_N)
        sizes = tuple(nbytes_N)
        self.exchanges.append(Exchange(kind, sizes, codec_elements=codec, overlapped=overlapped))

    def all_reduce_mean(self, x_WD: torch.Tensor) -> torch.Tensor:
        check_rows(x_WD, self.world_size, "all_reduce_mean")
        self._collective("all_reduce", [dense_nbytes(x_WD[0])] * self.world_size)
        return x_WD.mean(0, keepdim=True).expand_as(x_WD).clone()

    def start_all_reduce_mean_(self, x_WB: torch.Tensor) -> Reducing:
        check_rows(x_WB, self.world_size, "start_all_reduce_mean_")
        self._collective("all_reduce", [dense_nbytes(x_WB[0])] * self.world_size, overlapped=True)
        x_WB.copy_(x_WB.mean(0, keepdim=True).expand_as(x_WB))
        return Done()

    def all_gather(self, x_WD: torch.Tensor) -> torch.Tensor:
        check_rows(x_WD, self.world_size, "all_gather")
        self._collective("all_gather", [dense_nbytes(x_WD[0])] * self.world_size)
        return x_WD.clone()

    def all_reduce_payloads(self, payloads: Sequence[Payload], codec_elements: int = 0) -> Payload:
        if len(payloads) != self.world_size:
            raise ValueError(f"expected {self.world_size} payloads, got {len(payloads)}")
        self._collective("all_reduce", [payload_nbytes(p) for p in payloads], codec_elements)
        return sum_floats(payloads)

    def all_gather_payloads(
        self, payloads: Sequence[Payload], codec_elements: int = 0
    ) -> list[Payload]:
        if len(payloads) != self.world_size:
            raise ValueError(f"expected {self.world_size} payloads, got {len(payloads)}")
        self._collective("all_gather", [payload_nbytes(p) for p in payloads], codec_elements)
        return list(payloads)

    def neighbors(self, x_WD: torch.Tensor, topology: Topology) -> Neighbors:
        return self._send(x_WD, topology, overlapped=False)

    def start_neighbors(self, x_WD: torch.Tensor, topology: Topology) -> InFlight:
        return Delivered(self._send(x_WD, topology, overlapped=True))

    def _send(self, x_WD: torch.Tensor, topology: Topology, overlapped: bool) -> Neighbors:
        """Every worker's row to its out-neighbours; ``overlapped``: sent to travel while the
        workers compute."""
        check_rows(x_WD, self.world_size, "neighbors")
        graph = self._graphs.get(topology, self.world_size)
        row_bytes = dense_nbytes(x_WD[0])
        self.bytes_sent += sum(len(o) for o in graph.outs) * row_bytes
        sizes = (row_bytes,) * self.world_size
        self.exchanges.append(Exchange("p2p", sizes, topology, overlapped=overlapped))
        source = graph.source_NK.to(x_WD.device)
        mask = graph.mask_NK.to(x_WD.device)
        rows_WKD = torch.where(mask.unsqueeze(-1), x_WD[source], 0.0)
        return Neighbors(rows_WKD, mask)

    def gossip(self, x_WD: torch.Tensor, topology: Topology) -> torch.Tensor:
        received = self.neighbors(x_WD, topology)
        return mix(x_WD, received, self._graphs.get(topology, self.world_size), self.workers)

    def graph(self, topology: Topology) -> InGraph:
        return self._graphs.get(topology, self.world_size)

    def sum_stats(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def broadcast(self, x_D: torch.Tensor) -> torch.Tensor:
        return x_D

    def average(self, x_WD: torch.Tensor, keep_W: torch.Tensor | None = None) -> torch.Tensor:
        check_rows(x_WD, self.world_size, "average")
        return (x_WD if keep_W is None else x_WD[keep_W]).mean(0)

    predict = staticmethod(predict)
