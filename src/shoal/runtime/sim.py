"""SimRuntime: every client of a round in one process, looped or vectorized.

``vectorize=False`` trains the sampled clients one after another (the reference).
``vectorize=True`` stacks their parameters into ``params_WD`` and trains them together:
one ``vmap`` of :func:`torch.func.functional_call` computes every client's loss, and a
single backward pass gives every client's gradient (the losses are independent, so the
gradient of their sum w.r.t. client ``w``'s row is client ``w``'s own gradient). This is the
"vmap forward + one backward" design; ``benchmarks/scale.py`` times it against the loop.

Unequal local work is handled by *compaction*: clients are sorted by number of local steps,
so at step ``t`` the clients still training are a prefix ``params_WD[:a]``, stepped in place
as a zero-copy view; nobody computes padded steps.

Memory is bounded by chunking: the sampled clients are trained ``chunk`` at a time, where
``chunk`` is sized to ``memory_budget_mb`` from the model size and a probe of its activation
size, and linear aggregators (the mean) keep only running sums of the messages.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from shoal.checks import check_count, check_flag, is_real
from shoal.evaluate import predict
from shoal.functional import batch_loss, unbatchable
from shoal.runtime.base import (
    ClientStore,
    RoundResult,
    RoundTask,
    corrects,
    honest_train_loss,
    inbox_order,
    stack_states,
)
from shoal.runtime.fused import fused_train, linear_chain, stacked_plan
from shoal.runtime.inbox import Inbox
from shoal.runtime.loop import ClientLoop
from shoal.runtime.transmit import statistics_of, track, transmit_each
from shoal.types import ClientState, Message


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch's message lists its two dozen device types
        raise ValueError(f"device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here")
    return dev


def _activation_numel_per_sample(model: nn.Module, x_1: torch.Tensor) -> int:
    """Elements produced by the model's leaf modules for one sample (a forward-hook probe)."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x_1)
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


@dataclass(frozen=True)
class Chunk:
    """What the server receives from one chunk of clients (see ``SimRuntime.train_clients``)."""

    positions: np.ndarray
    """The clients' places in the round's task."""
    msg: Message
    weights: torch.Tensor
    uplink_bytes: int
    loss_sum: np.ndarray
    """Per client: summed per-sample loss over its local minibatches."""
    samples: np.ndarray
    """Per client: how many samples those minibatches held."""
    client_uplink_bytes: np.ndarray
    """Per client: the bytes it sent (they sum to ``uplink_bytes``)."""


MAX_PADDED_SHARE = 0.75
"""Above this share of padding rows a CPU round is looped under ``vectorize="auto"``."""


def padded_share(plans: Sequence[Any]) -> float:
    """The share of a stacked round's minibatch rows that would be padding: every client's
    batches are padded to the round's widest. Full-batch work (FedSGD, ``batch_size=None``)
    on clients of unequal size pads the small ones to the largest: on 1,000 log-normal
    clients (median 34 samples, largest 3,751) the stacked round took 4.7x the time of the
    loop and 15x its memory, for the same result."""
    widest = max((p.index_TB.shape[1] for p in plans), default=0)
    rows = sum(p.num_steps * widest for p in plans)
    return 1 - sum(float(p.mask_TB.sum()) for p in plans) / rows if rows else 0.0


@dataclass
class SimRuntime:
    """In-process runtime. See the module docstring for how the vectorized mode works."""

    vectorize: bool | Literal["auto"] = "auto"
    """``"auto"`` vectorizes except on the CPU for convolutional models, where ``vmap`` turns
    each convolution into a grouped convolution that measured no faster than the loop (which keeps a
    client's parameters in the cache for all its steps), and except for models with ``nn.LSTM``,
    ``nn.GRU`` or ``nn.RNN`` layers, whose fused kernels ``vmap`` cannot batch, ``nn.RReLU``, or
    an ``nn.Embedding`` with a ``padding_idx`` (see :func:`shoal.functional.unbatchable`;
    ``True`` refuses those; :func:`shoal.models.char_lstm` is written to be batched, but on a
    CPU it too is looped, measured faster: a module's ``loop_on_cpu = True`` says so), and except
    a CPU round whose stacked batches would be mostly padding (:func:`padded_share`). Otherwise,
    and on a GPU, it vectorizes."""
    memory_budget_mb: float = 1024.0
    """Working-set budget for one chunk of clients trained together (vectorized mode)."""
    max_chunk: int | Literal["auto"] | None = "auto"
    """Upper bound on clients per chunk. ``"auto"``: 32 on a CPU, where a chunk whose
    parameters and gradients stay near the last-level cache trains fastest (measured 3.4 s
    against 4.6 s per 1,000-client MLP round with 200-client chunks), none on a GPU, which wants
    the largest batch that fits; ``None``: only the memory budget decides."""
    fused: bool = True
    """Train chains of ``Linear``/``ReLU`` layers under cross-entropy with the hand-written
    fused step of :mod:`shoal.runtime.fused` instead of autograd (same result), stacked over
    a chunk's clients when vectorized, one client at a time when looped."""
    # Activations per sample, per model and input shape. Weak keys: a model id() could be
    # reused by the next train() call's model once this one is collected.
    _act_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], int]] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )
    _loop: ClientLoop = field(init=False, repr=False)
    _warned_budget: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        check_flag(self.fused, "fused")  # "False" took the fused path
        self._loop = ClientLoop(self.fused)
        budget = self.memory_budget_mb  # NaN failed in round 1, True was 1 MB
        if not (is_real(budget) and 0 < budget < math.inf):
            raise ValueError(f"memory_budget_mb must be a finite number > 0, got {budget!r}")
        # A chunk of 0 or fewer clients failed in round 1 (range() with step 0, or no chunk
        # trained and an empty torch.cat), a float one with a TypeError.
        if self.max_chunk not in ("auto", None):
            check_count(self.max_chunk, "max_chunk")
        if self.vectorize not in (True, False, "auto"):
            raise ValueError(f"vectorize must be True, False or 'auto', got {self.vectorize!r}")

    def chunk_size(self, task: RoundTask, batch: int) -> int:
        """How many clients fit the memory budget together."""
        per_shape = self._act_cache.setdefault(task.model, {})
        shape = tuple(task.x.shape[1:])
        if shape not in per_shape:
            per_shape[shape] = _activation_numel_per_sample(task.model, task.x[:1])
        elem = task.params_D.element_size()
        num_state = len(task.algorithm.client_init(task.params_D)) + 4
        # params, grads, the correction, the views' copies and the client state rows;
        # activations are kept for backward and their gradients flow back once (x3 margin).
        per_client = task.spec.num_params * elem * num_state
        per_client += 3 * per_shape[shape] * batch * elem
        fit = max(1, int(self.memory_budget_mb * 2**20 // per_client))
        if per_client > self.memory_budget_mb * 2**20 and not self._warned_budget:
            self._warned_budget = True  # once a runtime: every round would say the same
            warnings.warn(
                f"one client's working set is about {per_client / 2**20:.3g} MB, above "
                f"memory_budget_mb = {self.memory_budget_mb:g}: clients are trained one at a "
                "time and the budget is exceeded; raise it (or use smaller batches)",
                stacklevel=2,
            )
        cap = self.max_chunk
        if cap == "auto":
            cap = 32 if task.params_D.device.type == "cpu" else None
        return fit if cap is None else min(fit, cap)

    def run_round(self, task: RoundTask, store: ClientStore) -> RoundResult:
        acc = Inbox.of(task)
        losses = np.zeros(len(task.plans))
        samples = np.zeros(len(task.plans))
        uplink = np.zeros(len(task.plans), dtype=np.int64)
        for ch in self.train_clients(task, store, np.arange(len(task.plans))):
            acc.add(ch.msg, ch.weights, ch.positions)
            losses[ch.positions], samples[ch.positions] = ch.loss_sum, ch.samples
            uplink[ch.positions] = ch.client_uplink_bytes
        mean_msg = acc.result()
        for pos, sent in acc.sent.items():  # what the Byzantine clients sent instead
            uplink[pos] = sent
        return RoundResult(
            mean_msg=mean_msg,
            train_loss=honest_train_loss(losses, samples, task.byzantine),
            uplink_bytes=int(uplink.sum()),
            client_train_loss=losses / np.maximum(samples, 1.0),
            client_uplink_bytes=uplink,
        )

    def train_clients(
        self, task: RoundTask, store: ClientStore, positions: np.ndarray
    ) -> Iterator[Chunk]:
        """Train the task's clients at ``positions``, a chunk at a time, and transmit their
        messages; yields what the server receives from each chunk."""
        steps = np.array([p.num_steps for p in task.plans])
        # Longest-working clients first, so the still-active clients are always a prefix.
        order = inbox_order(task, positions)
        dev = task.params_D.device
        if len(order) == 0:
            return
        batch = max(task.plans[i].index_TB.shape[1] for i in order)
        vectorize = self.vectorized(task)
        chunk = self.chunk_size(task, batch)
        for start in range(0, len(order), chunk):
            pos = order[start : start + chunk]
            ids = [int(task.clients[i]) for i in pos]
            states = [store.get(c, task.algorithm, task.params_D) for c in ids]
            cstate = stack_states(states)
            plans = [task.plans[i] for i in pos]
            if vectorize:
                params, loss_sum, n = self._train(task, plans, cstate)
            else:
                params, loss_sum, n = self._loop.train(task, plans, cstate)
            steps_W1 = torch.tensor(steps[pos], dtype=params.dtype, device=dev).unsqueeze(1)
            msg, new_state = task.algorithm.upload(params, task.down, cstate, steps_W1)
            tracked = getattr(task.algorithm, "tracks", None)
            received, sent_W = transmit_each(
                task.compressor,
                msg,
                ids,
                store.compressor,
                task.spec.num_params,
                tracked,
                statistics=statistics_of(task.algorithm),
            )
            new_state = track(tracked, cstate, new_state, received, task.compressor)
            for j, c in enumerate(ids):
                store.put(c, {k: v[j].clone() for k, v in new_state.items()})
            weights = torch.as_tensor(task.weights[pos], dtype=params.dtype, device=dev)
            yield Chunk(pos, received, weights, int(sent_W.sum()), loss_sum, n, sent_W)

    @property
    def is_main(self) -> bool:
        return True

    def gather_store(self, store: ClientStore) -> ClientStore:
        return store

    def sync(self) -> None:
        pass

    predict = staticmethod(predict)  # one process scores every row

    def vectorized(self, task: RoundTask) -> bool:
        """Whether this round's clients are trained stacked (see ``vectorize``)."""
        loop_only = unbatchable(task.model)
        if self.vectorize != "auto":
            if self.vectorize and loop_only is not None:
                why = (
                    "vmap's rule for it gives every stacked client but the first a gradient "
                    "on the padding row"
                    if isinstance(loop_only, nn.Embedding)
                    else "vmap has no rule for its kernel"
                )
                hint = (
                    ", or a recurrence written with nn.Linear like shoal.models.char_lstm"
                    if isinstance(loop_only, nn.RNNBase)
                    else ""
                )
                raise ValueError(
                    "vectorize=True cannot stack clients of a model with "
                    f"{type(loop_only).__name__}: {why}; use "
                    f"vectorize=False or 'auto' (which loops it){hint}"
                )
            return bool(self.vectorize)
        if loop_only is not None:
            return False
        if task.params_D.device.type != "cpu":
            return True
        if padded_share(task.plans) > MAX_PADDED_SHARE:
            return False
        # Measured slower stacked on a CPU: convolutions, and modules that say so (loop_on_cpu:
        # the hand-written LSTM of shoal.models.char_lstm).
        return not any(
            isinstance(m, nn.modules.conv._ConvNd) or getattr(m, "loop_on_cpu", False)
            for m in task.model.modules()
        )

    def _train(
        self, task: RoundTask, plans: list, cstate: ClientState
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Stacked local SGD for clients sorted by decreasing steps; returns ``params_WD``."""
        dev = task.params_D.device
        corrected = corrects(task, cstate)
        layers = linear_chain(task) if self.fused else None
        # Filled by training in place (fused) or from the training buffers at the end.
        params = torch.empty(
            len(plans), task.spec.num_params, dtype=task.params_D.dtype, device=dev
        )
        if layers is not None:
            return (params, *fused_train(task, layers, params, plans, cstate, corrected))
        index_t, mask_t, active = stacked_plan(plans, dev)
        W, T, _ = index_t.shape
        start = list(task.spec.unflatten(task.params_D).values())
        loss_sum = torch.zeros(W, dtype=torch.float64, device=dev)

        def client_loss(
            named: dict[str, torch.Tensor], x_B: torch.Tensor, y_B: torch.Tensor, m_B: torch.Tensor
        ) -> torch.Tensor:
            return batch_loss(task.model, task.loss_fn, named, x_B, y_B, m_B)

        batched_loss = torch.func.vmap(client_loss)
        alg, lr, names = task.algorithm, task.algorithm.lr, task.spec.names
        # Per-parameter training buffers [W, *shape], created at the first step with the memory
        # layout autograd gives the gradients (a linear layer's weight gradient comes out
        # transposed under vmap): every later update then streams instead of transposing.
        blocks: list[torch.Tensor] = []
        for t in range(T):
            a = int(active[t])
            idx, m = index_t[:a, t], mask_t[:a, t]
            # Step 0 trains from the broadcast global model (a read-only expanded view).
            cur = [b[:a] for b in blocks] or [v.expand(a, *v.shape) for v in start]
            leaves = {n: v.detach().requires_grad_(True) for n, v in zip(names, cur)}
            try:
                loss_W = batched_loss(leaves, task.x[idx], task.y[idx], m)
            except RuntimeError as e:  # .item(), data-dependent control flow, ...
                if "vmap" not in str(e):
                    raise
                raise ValueError(
                    f"the vectorized runtime cannot stack this model's clients ({e}); train it "
                    "with SimRuntime(vectorize=False), in a config [runtime] vectorize = false"
                ) from None
            # A parameter the forward does not use gets a zero gradient, as torch.optim
            # leaves it, instead of autograd's error.
            grads = torch.autograd.grad(
                loss_W.sum(), tuple(leaves.values()), materialize_grads=True
            )
            with torch.no_grad():
                corr = None
                if corrected:
                    now = params[:a] if blocks else task.params_D.expand(a, -1)
                    if blocks:  # the correction reads the current parameters, flat
                        for flat, b in zip(task.spec.unflatten(now).values(), cur):
                            flat.copy_(b)
                    sub = {k: v[:a] for k, v in cstate.items()}
                    corr = alg.correction(now, task.down, sub)
                if not blocks:  # first step: every client is active (a == W)
                    blocks = [torch.empty_like(g).copy_(v) for g, v in zip(grads, cur)]
                for b, g in zip(blocks, grads):
                    b[:a].sub_(g, alpha=lr)
                if corr is not None:
                    for b, c in zip(blocks, task.spec.unflatten(corr).values()):
                        b[:a].sub_(c, alpha=lr)
                loss_sum[:a] += loss_W.detach().double() * m.sum(1).double()
            del leaves, grads
        with torch.no_grad():
            for flat, b in zip(task.spec.unflatten(params).values(), blocks):
                flat.copy_(b)
        return params, loss_sum.cpu().numpy(), mask_t.sum((1, 2)).double().cpu().numpy()
