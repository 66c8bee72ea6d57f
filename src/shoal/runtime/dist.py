"""DistRuntime: a federated round across ``torch.distributed`` processes.

Every process runs the same driver (:func:`shoal.train.train`) with the same seed, so all of
them sample the same clients and plan the same batches; the runtime is the only code that
differs from simulation. Which rank trains which client:

- clients that keep state between rounds (SCAFFOLD's ``c_k``, DGC's momentum, an
  error-feedback residual, a random-k counter): client ``k`` on rank ``k mod world_size``, so
  its state stays on the process that needs it, round after round;
- otherwise (FedAvg, FedProx, FedNova, the FedOpt family with a stateless compressor) the
  round's clients are spread by their local steps, longest first, each to the rank with the
  least work so far (Graham's LPT rule, within 4/3 of the best split). A round lasts as long
  as its busiest rank: on workload W's partition (10 of 100 clients per round) the busiest
  rank does 1.25x / 1.67x / 2.05x its fair share of steps under ``k mod world`` on 2 / 4 / 8
  ranks, 1.02x / 1.12x / 1.13x under LPT (``benchmarks/dist_balance.py``).

Each rank trains its share with
:class:`~shoal.runtime.sim.SimRuntime`'s machinery, then the server's inbox is formed
collectively:

- a linear rule (the weighted mean) with no attack: each rank sums its weighted messages and
  one ``all_reduce`` adds the partial sums — the data-parallel pattern;
- robust rules and attacks need every message: the rows are all-gathered, put back in the
  round's client order, and every rank applies the same aggregator (so every rank holds the
  same global model without a broadcast).

The server update then runs identically on every rank. Evaluation is shared too: each rank
scores a slice of the test rows and one all-gather gives all of them every score (on rank 0
alone, it made the other ranks wait every round). Rank 0 writes the files.
Processes are started by ``shoal launch`` / ``torchrun`` (or
:func:`shoal.runtime.spawn.spawn_local`); gloo on CPU, NCCL on GPU. Each leaves the group
with :func:`shoal.runtime.procgroup.shutdown` before it exits (``shoal run`` does).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from shoal.algorithms.base import StatelessClient
from shoal.checks import check_flag, check_instance, check_number
from shoal.evaluate import predict_shared
from shoal.functional import LossFn, ParamSpec
from shoal.runtime.base import ClientStore, RoundResult, RoundTask, honest_train_loss, inbox_order
from shoal.runtime.inbox import Inbox
from shoal.runtime.procgroup import DEFAULT_TIMEOUT_S, DistContext, init_from_env
from shoal.runtime.sim import Chunk, SimRuntime
from shoal.types import Message


@dataclass
class DistRuntime:
    """Federated rounds across processes; see the module docstring."""

    local: SimRuntime = field(default_factory=SimRuntime)
    """How each rank trains its own clients (vectorized or looped, memory budget)."""
    backend: str = "auto"
    device: str = "auto"
    timeout_s: float = DEFAULT_TIMEOUT_S
    """How long a collective may wait for a peer before failing (a dead rank)."""
    balance: bool = True
    """Spread stateless rounds' clients by their work (LPT); ``False``: always ``k mod world``."""
    _ctx: DistContext | None = field(default=None, repr=False)
    _stateless: tuple[Any, Any, bool] | None = field(default=None, repr=False)
    _checked_model: Any = field(default=None, repr=False)  # the model the first check saw

    def __post_init__(self) -> None:
        # Checked where given, as SimRuntime's are: "gpu" ran on the CPU, local="loop" failed
        # in round 1 (AttributeError), a negative timeout in a C++ store error, "False" was true.
        check_instance(self.local, SimRuntime, "DistRuntime: local", " (e.g. SimRuntime())")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(
                f"DistRuntime: backend must be 'auto', 'gloo' or 'nccl', got {self.backend!r}"
            )
        # cuda:N as a config may say; each rank still takes its local GPU (init_from_env).
        if not isinstance(self.device, str) or not re.fullmatch(
            r"auto|cpu|cuda(:\d+)?", self.device
        ):
            raise ValueError(
                f"DistRuntime: device must be 'auto', 'cpu' or 'cuda' (each rank takes its "
                f"local GPU), got {self.device!r}"
            )
        check_number(self.timeout_s, "DistRuntime: timeout_s", positive=True)
        check_flag(self.balance, "DistRuntime: balance")

    @property
    def ctx(self) -> DistContext:
        if self._ctx is None:
            self._ctx = init_from_env(self.backend, self.device, self.timeout_s)
        return self._ctx

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def compute_device(self) -> torch.device:
        """Where this rank trains: its own GPU, or the CPU when the group runs gloo there
        (``train`` takes it for ``TrainConfig.device = "auto"``)."""
        return self.ctx.device

    def assign(self, task: RoundTask) -> np.ndarray:
        """The rank that trains each of the round's clients (task order); see the module
        docstring. Every rank computes the same answer from the same task."""
        world = self.ctx.world_size
        if self.balance and self._keeps_no_state(task):
            return lpt([p.num_steps for p in task.plans], world)
        return owner(np.asarray(task.clients), world)

    def _check_agreement(self, task: RoundTask) -> None:
        """Refuse a round that the ranks did not plan alike. Each rank builds its own task and
        only sums are exchanged, so ranks with another initial model (built without a seed),
        seed or partition trained on silently: every round mixed two samples of clients, or
        two models. The round's clients, steps and weights are compared every round (8 bytes
        a rank); the global model the first time only (hashing it costs a copy to the CPU)."""
        digest = hashlib.blake2b(digest_size=8)
        for part in (task.clients, [p.num_steps for p in task.plans], task.weights):
            digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
        digest.update(str(task.round_idx).encode())
        model = self._checked_model is not task.model  # a run's first round (or a new run)
        if model:
            digest.update(task.params_D.detach().cpu().numpy().tobytes())
        mine = int.from_bytes(digest.digest(), "little", signed=True)
        dev = task.params_D.device
        got = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(self.ctx.world_size)]
        dist.all_gather(got, torch.tensor([mine], dtype=torch.int64, device=dev))
        differ = [r for r, g in enumerate(got) if int(g) != int(got[0])]
        if differ:
            what = "initial model, " if model else ""
            raise ValueError(
                f"round {task.round_idx + 1}: rank(s) {differ} planned it unlike rank 0 (their "
                f"{what}seed, clients or config differ): every process must build the same "
                "model (seed it, e.g. shoal.init_params), data, partition and TrainConfig"
            )
        self._checked_model = task.model

    def _keeps_no_state(self, task: RoundTask) -> bool:
        """Whether neither the algorithm nor the compressor keeps per-client state (asked
        once per pair: a compressor's ``init`` may allocate a model-sized residual)."""
        alg, comp = task.algorithm, task.compressor
        known = self._stateless
        if known is None or known[0] is not alg or known[1] is not comp:
            stateless = isinstance(alg, StatelessClient) and comp.init(task.params_D) is None
            known = self._stateless = (alg, comp, stateless)
        return known[2]

    def run_round(self, task: RoundTask, store: ClientStore) -> RoundResult:
        ctx = self.ctx
        n = len(task.plans)
        mine = np.nonzero(self.assign(task) == ctx.rank)[0]
        chunks = list(self.local.train_clients(task, store, mine))
        if store.states and self.balance and self._keeps_no_state(task):
            # A moved client would lose it: the LPT rule is only for stateless clients.
            raise RuntimeError(
                f"{task.algorithm.name} derives from StatelessClient but kept client state; "
                "drop the mixin, or run DistRuntime(balance=False)"
            )
        self._check_agreement(task)  # before the round's first collective
        dev = task.params_D.device
        # Per-client losses, sample counts and uplink bytes; each rank fills its own clients.
        stats = torch.zeros(3, n, dtype=torch.float64, device=dev)
        for ch in chunks:
            pos = torch.as_tensor(ch.positions, device=dev)
            for row, value in enumerate((ch.loss_sum, ch.samples, ch.client_uplink_bytes)):
                stats[row, pos] = torch.as_tensor(value, dtype=torch.float64, device=dev)
        dist.all_reduce(stats)
        acc = Inbox.of(task)
        layout = _layout(chunks)
        if acc.streaming:
            mean_msg = self._reduce_mean(acc, chunks, layout, dev)
        else:
            mean_msg = self._gather_rows(acc, chunks, layout, n, task, dev)
        losses, samples, sent = stats.cpu().numpy()
        uplink = np.rint(sent).astype(np.int64)  # byte counts are exact in float64 below 2^53
        for where, byz in acc.sent.items():  # what the Byzantine clients sent instead
            uplink[where] = byz
        return RoundResult(
            mean_msg=mean_msg,
            train_loss=honest_train_loss(losses, samples, task.byzantine),
            uplink_bytes=int(uplink.sum()),
            client_train_loss=losses / np.maximum(samples, 1.0),
            client_uplink_bytes=uplink,
        )

    def _reduce_mean(
        self, acc: Inbox, chunks: list[Chunk], layout: dict[str, Any], dev: torch.device
    ) -> Message:
        """Weighted mean: local weighted sums, then one all-reduce per message key."""
        for ch in chunks:
            acc.add(ch.msg, ch.weights, ch.positions)
        shapes, dtype = _agree_on_layout(layout)
        total = acc.total_weight() if chunks else torch.zeros((), dtype=dtype, device=dev)
        total = total.reshape(1).to(dtype)
        dist.all_reduce(total)
        out: Message = {}
        for key, shape in shapes.items():
            part = acc.sums.get(key)
            buf = part.clone() if part is not None else torch.zeros(shape, dtype=dtype, device=dev)
            dist.all_reduce(buf)
            out[key] = buf / total[0]
        return out

    def _gather_rows(
        self,
        acc: Inbox,
        chunks: list[Chunk],
        layout: dict[str, Any],
        n: int,
        task: RoundTask,
        dev: torch.device,
    ) -> Message:
        """Every message row to every rank (padded all-gather), in the simulator's inbox order
        (:func:`~shoal.runtime.base.inbox_order`)."""
        shapes, dtype = _agree_on_layout(layout)
        world = self.ctx.world_size
        owned = np.concatenate([ch.positions for ch in chunks]) if chunks else np.zeros(0, int)
        counts = torch.zeros(world, dtype=torch.int64, device=dev)
        counts[self.ctx.rank] = len(owned)
        dist.all_reduce(counts)
        most = int(counts.max())
        pos = torch.full((most,), -1, dtype=torch.int64, device=dev)
        pos[: len(owned)] = torch.as_tensor(owned, device=dev)
        all_pos = torch.cat(_all_gather(pos, world))
        valid = all_pos >= 0
        order = torch.argsort(all_pos[valid])  # back to the task's client order
        received: Message = {}
        for key, shape in shapes.items():
            rows = torch.zeros(most, *shape, dtype=dtype, device=dev)
            if chunks:
                rows[: len(owned)] = torch.cat([ch.msg[key] for ch in chunks])
            received[key] = torch.cat(_all_gather(rows, world))[valid][order]
        inbox = inbox_order(task, np.arange(n))
        index = torch.as_tensor(inbox, device=dev)
        weights = torch.as_tensor(task.weights[inbox], dtype=dtype, device=dev)
        acc.add({k: v[index] for k, v in received.items()}, weights, inbox)
        return acc.result()

    def sync(self) -> None:
        dist.barrier()

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
        """Each rank scores a slice of the rows; one all-gather gives every rank all of them
        (:func:`shoal.evaluate.predict_shared`, once this process has joined the group)."""
        self.ctx  # noqa: B018 -- the property joins the group on first use
        return predict_shared(model, spec, params_D, x, y, loss_fn, batch_size)

    def gather_store(self, store: ClientStore) -> ClientStore:
        """Rank 0 receives every rank's client states (on the CPU); others keep their own.

        Each rank sends only the clients it trains. A resumed run loads every client's state on
        every rank, and the copies of clients another rank trains go stale there: merged in
        rank order, they overwrote the owner's fresh state in the next checkpoint."""
        ctx = self.ctx
        world, rank = ctx.world_size, ctx.rank
        mine = (
            _to_cpu({c: v for c, v in store.states.items() if owner(c, world) == rank}),
            _to_cpu({c: v for c, v in store.compressor.items() if owner(c, world) == rank}),
        )
        parts: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
        dist.gather_object(mine, parts, dst=0)
        if parts is None:
            return store
        merged = ClientStore()
        for states, comp in parts:
            merged.states.update(states)
            merged.compressor.update(comp)
        return merged


def owner(client: Any, world: int) -> Any:
    """The rank that trains a client with per-client state, every round (an int, or an array
    of them)."""
    return client % world


def lpt(work: Sequence[float], world: int) -> np.ndarray:
    """Graham's longest-processing-time rule (1969): jobs in decreasing ``work``, each to the
    rank with the least work so far (ties: the lowest rank; equal jobs keep their order).
    Returns each job's rank. Its busiest rank is within ``4/3 - 1/(3 world)`` of the best."""
    load = np.zeros(world)
    rank = np.empty(len(work), dtype=np.int64)
    for j in np.argsort(-np.asarray(work, dtype=np.float64), kind="stable"):
        rank[j] = int(np.argmin(load))
        load[rank[j]] += work[int(j)]
    return rank


def _layout(chunks: list[Chunk]) -> dict[str, Any]:
    """Shapes (per client) and dtype of this rank's message keys; empty without clients."""
    if not chunks:
        return {}
    msg = chunks[0].msg
    return {
        "shapes": {k: tuple(v.shape[1:]) for k, v in msg.items()},
        "dtype": next(iter(msg.values())).dtype,
    }


def _agree_on_layout(layout: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], torch.dtype]:
    """Ranks without clients this round learn the message layout from those with some."""
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, layout)
    known = next(x for x in everyone if x)  # someone trained: the round has >= 1 client
    return known["shapes"], known["dtype"]


def _all_gather(t: torch.Tensor, world: int) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous())
    return out


def _to_cpu(obj: Any) -> Any:
    """Tensors (in nested dicts, lists and tuples) moved to the CPU, for pickling to rank 0."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
