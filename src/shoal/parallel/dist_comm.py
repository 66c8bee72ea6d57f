"""DistComm: one worker per ``torch.distributed`` process (gloo on CPU, NCCL on GPU).

The collective operations are ``torch.distributed`` collectives on this process's row. Gossip
and ``neighbors`` are point-to-point: each process posts one ``isend`` per out-neighbour and one
``irecv`` per in-neighbour in a single ``batch_isend_irecv`` (grouped for NCCL, so the order in
which peers post cannot deadlock), and nothing else travels: on a ring every process talks to
two peers, never to the whole group. Compressed payloads of unequal sizes (a threshold
sparsifier) are gathered as raw bytes (``Tensor.view(torch.uint8)`` on the device, no host
round trip for the data) behind their lengths and layouts (the wire format's framing), in one
all-gather of blocks padded to a capacity every process derives from the previous gather (the
largest block plus 1/32); a step whose largest block outgrows it gathers again at its size.
Gathering the lengths first would cost a collective's latency every step (8 ms, as much as
gathering 100 KB, for 4 processes on 2 cores). See :mod:`shoal.parallel.comm` for the
semantics and for what ``bytes_sent`` counts.

Shape suffixes: ``W`` local workers (1 here), ``N`` all workers, ``K`` in-neighbour slots,
``D`` flat parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist

from shoal.compress.base import Payload
from shoal.compress.wire import Layout, parse_layout, payload_nbytes, serialize_layout
from shoal.cost import Exchange
from shoal.evaluate import predict_shared
from shoal.parallel.graph import GraphCache, InGraph, Neighbors, mix
from shoal.parallel.messages import check_rows, dense_nbytes
from shoal.runtime.procgroup import DistContext
from shoal.topology import Topology


class _Pending:
    """Point-to-point messages posted by :meth:`DistComm.start_neighbors`."""

    def __init__(
        self, works: list[Any], bufs: list[torch.Tensor], sent: torch.Tensor, k: int, mask_WK
    ) -> None:
        self._works, self._bufs, self._sent = works, bufs, sent  # keep the send buffer alive
        self._k, self._mask = k, mask_WK
        self._received: Neighbors | None = None

    def wait(self) -> Neighbors:
        if self._received is None:
            for w in self._works:
                w.wait()
            rows = self._sent.new_zeros(1, self._k, self._sent.numel())
            for slot, buf in enumerate(self._bufs):
                rows[0, slot] = buf
            self._received = Neighbors(rows, self._mask)
            self._works, self._bufs = [], []
        return self._received


class _Averaging:
    """An all-reduce in flight (:meth:`DistComm.start_all_reduce_mean_`)."""

    def __init__(self, work: Any, row_B: torch.Tensor, world_size: int) -> None:
        self._work, self._row, self._n = work, row_B, world_size

    def wait(self) -> None:
        if self._work is not None:
            self._work.wait()
            self._row.div_(self._n)
            self._work = None


class DistComm:
    """This process's one worker in a process group joined with
    :func:`shoal.runtime.procgroup.init_from_env` (see the module docstring)."""

    def __init__(self, ctx: DistContext) -> None:
        if not dist.is_initialized():
            raise ValueError(
                "DistComm needs a process group: call shoal.runtime.procgroup.init_from_env() "
                "first (under torchrun, shoal launch or spawn_local)"
            )
        if ctx.world_size != dist.get_world_size() or ctx.rank != dist.get_rank():
            raise ValueError("the DistContext does not describe the current process group")
        self.ctx = ctx
        self.rank = ctx.rank
        self.world_size = ctx.world_size
        self.workers: tuple[int, ...] = (ctx.rank,)
        self.bytes_sent = 0
        self.exchanges: list[Exchange] = []
        self._graphs = GraphCache()
        self._capacity = _LENGTHS  # of an all-gathered payload block: see all_gather_payloads
        # One collective up front: NCCL's first batched point-to-point call must otherwise
        # involve every rank, which a sparse gossip graph does not.
        dist.all_reduce(torch.zeros(1, device=ctx.device))

    def __repr__(self) -> str:
        return f"DistComm(rank={self.rank}, world_size={self.world_size}, {self.ctx.backend})"

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _row(self, x_WD: torch.Tensor, who: str) -> torch.Tensor:
        check_rows(x_WD, 1, who)
        if x_WD.device != self.device:
            raise ValueError(f"{who}: tensor on {x_WD.device}, this process uses {self.device}")
        return x_WD[0].detach().clone()  # contiguous, and safe to send while the caller goes on

    # ---- collectives ---------------------------------------------------------------------

    def _collective(
        self,
        kind: Literal["all_reduce", "all_gather"],
        nbytes: int,
        codec: int = 0,
        overlapped: bool = False,
    ) -> None:
        """Count this worker's contribution (every worker's has this size; none alone)."""
        if self.world_size > 1:
            self.bytes_sent += nbytes
        sizes = (nbytes,) * self.world_size
        self.exchanges.append(Exchange(kind, sizes, codec_elements=codec, overlapped=overlapped))

    def all_reduce_mean(self, x_WD: torch.Tensor) -> torch.Tensor:
        buf_D = self._row(x_WD, "all_reduce_mean")
        self._collective("all_reduce", dense_nbytes(buf_D))
        dist.all_reduce(buf_D)
        return (buf_D / self.world_size).unsqueeze(0)

    def start_all_reduce_mean_(self, x_WB: torch.Tensor) -> _Averaging:
        check_rows(x_WB, 1, "start_all_reduce_mean_")
        row_B = x_WB[0]
        if row_B.device != self.device or not row_B.is_contiguous():
            raise ValueError(
                f"start_all_reduce_mean_: needs a contiguous row on {self.device}, got one "
                f"on {row_B.device} with strides {row_B.stride()}"
            )
        self._collective("all_reduce", dense_nbytes(row_B), overlapped=True)
        return _Averaging(dist.all_reduce(row_B, async_op=True), row_B, self.world_size)

    def all_gather(self, x_WD: torch.Tensor) -> torch.Tensor:
        row_D = self._row(x_WD, "all_gather")
        self._collective("all_gather", dense_nbytes(row_D))
        out = [torch.empty_like(row_D) for _ in range(self.world_size)]
        dist.all_gather(out, row_D)
        return torch.stack(out)

    def all_reduce_payloads(self, payloads: Sequence[Payload], codec_elements: int = 0) -> Payload:
        (payload,) = self._one(payloads)
        # Payloads that add have one layout on every worker, hence one size.
        self._collective("all_reduce", payload_nbytes(payload), codec_elements)
        out = dict(payload)
        by_dtype: dict[torch.dtype, list[str]] = {}
        for key, t in payload.items():
            if t.is_floating_point():
                by_dtype.setdefault(t.dtype, []).append(key)
        for keys in by_dtype.values():  # one collective per dtype, not per entry
            flat = torch.cat([payload[k].reshape(-1) for k in keys])
            dist.all_reduce(flat)
            at = 0
            for k in keys:
                n = payload[k].numel()
                out[k] = flat[at : at + n].view_as(payload[k])
                at += n
        return out

    def all_gather_payloads(
        self, payloads: Sequence[Payload], codec_elements: int = 0
    ) -> list[Payload]:
        (payload,) = self._one(payloads)
        dev = self.device
        # Workers' payloads may differ in length, and even in entries and dtypes (a threshold
        # sparsifier keeps a different count; few kept entries use flat indices, many the
        # blocked ones), so each sends its layout (the wire framing) ahead of its data, behind
        # the two lengths. Layout and data are exactly the serialized message, and the data
        # stays on the device.
        head = torch.frombuffer(bytearray(serialize_layout(payload)), dtype=torch.uint8)
        data = _to_bytes(payload, dev)
        lengths = torch.tensor([head.numel(), data.numel()], dtype=torch.int64)
        block = torch.cat([lengths.view(torch.uint8), head]).to(dev)
        block = torch.cat([block, data])
        # One collective when every block fits the capacity every process derived from the
        # last gather; otherwise each process sees who overflowed (the lengths always fit) and
        # all gather again, padded to the largest block.
        bufs = self._gather_padded(block, self._capacity)
        sizes = torch.stack([b[:_LENGTHS] for b in bufs]).cpu().view(torch.int64).tolist()
        largest = max(_LENGTHS + h + n for h, n in sizes)
        if largest > self._capacity:
            bufs = self._gather_padded(block, largest)
        self._capacity = largest + largest // _SPARE
        # Layout plus data is each worker's serialized message, so every size is known here.
        if self.world_size > 1:
            self.bytes_sent += payload_nbytes(payload)
        nbytes_N = tuple(h + n for h, n in sizes)
        self.exchanges.append(Exchange("all_gather", nbytes_N, codec_elements=codec_elements))
        out = []
        for buf, (h, n) in zip(bufs, sizes):
            layout = parse_layout(buf[_LENGTHS : _LENGTHS + h].cpu().numpy().tobytes())
            out.append(_from_bytes(buf[_LENGTHS + h : _LENGTHS + h + n], layout))
        return out

    def _gather_padded(self, block: torch.Tensor, capacity: int) -> list[torch.Tensor]:
        """Every process's ``block``, cut or zero-padded to ``capacity`` bytes."""
        padded = torch.zeros(capacity, dtype=torch.uint8, device=block.device)
        n = min(capacity, block.numel())
        padded[:n] = block[:n]
        bufs = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(bufs, padded)
        return bufs

    def sum_stats(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def broadcast(self, x_D: torch.Tensor) -> torch.Tensor:
        out = x_D.detach().clone()
        dist.broadcast(out, src=0)
        return out

    def average(self, x_WD: torch.Tensor, keep_W: torch.Tensor | None = None) -> torch.Tensor:
        row_D = self._row(x_WD, "average")
        if keep_W is None:
            dist.all_reduce(row_D)
            return row_D / self.world_size
        # The kept rows' sum and their count, in one collective.
        kept = keep_W.to(row_D.dtype).reshape(1)
        buf = torch.cat([row_D * kept, kept])
        dist.all_reduce(buf)
        return buf[:-1] / buf[-1]

    predict = staticmethod(predict_shared)

    # ---- point to point ------------------------------------------------------------------

    def graph(self, topology: Topology) -> InGraph:
        return self._graphs.get(topology, self.world_size)

    def start_neighbors(self, x_WD: torch.Tensor, topology: Topology) -> _Pending:
        return self._post(x_WD, topology, overlapped=True)

    def neighbors(self, x_WD: torch.Tensor, topology: Topology) -> Neighbors:
        return self._post(x_WD, topology, overlapped=False).wait()

    def _post(self, x_WD: torch.Tensor, topology: Topology, overlapped: bool) -> _Pending:
        """Post this rank's row to its out-neighbours and the receives from its
        in-neighbours; ``overlapped``: to travel while this rank computes."""
        row_D = self._row(x_WD, "neighbors")
        graph = self.graph(topology)
        ins, outs = graph.ins[self.rank], graph.outs[self.rank]
        bufs = [torch.empty_like(row_D) for _ in ins]
        # Receives posted before sends: with sends first, two ranks sending each other a model
        # at once took 1.5x longer on rate-capped links (benchmarks/_netns.py --gossip --mb 6.65: a
        # ring of 4 at 100 Mbit/s, 1.94 s against 1.25 s; the rate bound is 1.06 s).
        ops = [dist.P2POp(dist.irecv, b, j) for b, j in zip(bufs, ins)]
        ops += [dist.P2POp(dist.isend, row_D, j) for j in outs]
        works = dist.batch_isend_irecv(ops) if ops else []
        row_bytes = dense_nbytes(row_D)  # every rank's row has this size
        self.bytes_sent += len(outs) * row_bytes
        sizes = (row_bytes,) * self.world_size
        self.exchanges.append(Exchange("p2p", sizes, topology, overlapped=overlapped))
        mask_WK = graph.mask_NK[self.rank : self.rank + 1].to(self.device)
        return _Pending(list(works), bufs, row_D, graph.max_in_degree, mask_WK)

    def gossip(self, x_WD: torch.Tensor, topology: Topology) -> torch.Tensor:
        received = self.neighbors(x_WD, topology)
        return mix(x_WD, received, self.graph(topology), self.workers)

    def send(self, payload: Payload, dst: int) -> None:
        """Blocking send of a payload's tensors, in order, to rank ``dst``."""
        for t in payload.values():
            dist.send(t.contiguous(), dst)
        self.bytes_sent += payload_nbytes(payload)

    def recv(self, like: Payload, src: int) -> Payload:
        """Blocking receive of a payload shaped like ``like`` from rank ``src``."""
        out = {k: torch.empty_like(v) for k, v in like.items()}
        for t in out.values():
            dist.recv(t, src)
        return out

    def _one(self, payloads: Sequence[Payload]) -> Sequence[Payload]:
        if len(payloads) != 1:
            raise ValueError(f"DistComm holds one worker: expected 1 payload, got {len(payloads)}")
        return payloads


_LENGTHS = 16  # bytes that open an all-gathered block: its layout's and its data's (int64)
_SPARE = 32  # the next gather's capacity: the largest block plus 1/32, for sizes that wobble


def _to_bytes(payload: Payload, device: torch.device) -> torch.Tensor:
    parts = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in payload.values()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8, device=device)


def _from_bytes(buf: torch.Tensor, layout: Layout) -> Payload:
    out, at = {}, 0
    for key, dtype, shape in layout:
        n = math.prod(shape) * dtype.itemsize
        # clone(): a view to a wider dtype needs an aligned storage offset
        out[key] = buf[at : at + n].clone().view(dtype).reshape(shape)
        at += n
    return out
