"""Minibatches and gradients of the workers held by one process.

Worker ``w`` draws its step-``t`` minibatch from its own shard with a generator seeded by
``(seed, t, w)`` alone, so a simulation (all workers here), a distributed run (one worker per
process) and a resumed run see the same batches. A batch is ``batch_size`` distinct rows of the
shard (the whole shard when it is smaller); rows are drawn afresh every step.

Gradients: stacked workers go through one ``vmap`` of the model's loss and one backward pass
(the losses are independent, so the gradient of their sum w.r.t. worker ``w``'s parameters is
worker ``w``'s gradient); convolutional models on the CPU, where ``vmap`` makes grouped
convolutions that are no faster than a loop, and single workers use plain autograd per worker
(see :class:`shoal.runtime.sim.SimRuntime`).

Shape suffixes: ``W`` local workers, ``B`` batch, ``D`` flat parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from shoal.functional import (
    LossFn,
    ParamSpec,
    batch_loss,
    channels_last,
    channels_last_fits,
    rnn_backward_backends,
    unbatchable,
)
from shoal.parallel.base import Buckets, bucket_ranges

_BATCH_STREAM = 11  # keeps these generators apart from any other use of (seed, step, worker)


def draw_positions(seed: int, step: int, worker: int, shard_size: int, batch_size: int):
    """Positions (into the worker's shard) of its step-``step`` minibatch."""
    rng = np.random.default_rng([seed, step, worker, _BATCH_STREAM])
    return rng.choice(shard_size, size=min(batch_size, shard_size), replace=False)


def uses_vmap(model: nn.Module, device: torch.device, num_local: int) -> bool:
    if num_local == 1 or unbatchable(model) is not None:
        return False
    conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return not (conv and device.type == "cpu")


class LocalBatches:
    """The rows of this process's workers' shards, on the device, and their minibatches."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        shards: Sequence[np.ndarray],
        workers: Sequence[int],
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        local = [np.asarray(shards[w], dtype=np.int64) for w in workers]
        rows = torch.from_numpy(np.concatenate(local)) if local else torch.zeros(0).long()
        self.x, self.y = x[rows].to(device), y[rows].to(device)
        self.offsets = np.cumsum([0] + [len(s) for s in local])[:-1]
        self.sizes = [len(s) for s in local]
        self.workers = tuple(workers)
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.channels_last: bool | None = None  # see Gradients._channels_last

    def samples(self) -> list[int]:
        """Rows per step of each local worker."""
        return [min(self.batch_size, n) for n in self.sizes]

    def index(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index_WB, mask_WB)`` into ``self.x``: padding rows (shards smaller than the
        batch) repeat row 0 of the shard and are masked out of the loss."""
        b = max(self.samples())
        index = np.zeros((len(self.workers), b), dtype=np.int64)
        mask = np.zeros((len(self.workers), b), dtype=np.float32)
        for i, (w, n, off) in enumerate(zip(self.workers, self.sizes, self.offsets)):
            pos = draw_positions(self.seed, step, w, n, self.batch_size)
            index[i, :] = off
            index[i, : len(pos)] = off + pos
            mask[i, : len(pos)] = 1.0
        return torch.from_numpy(index).to(self.device), torch.from_numpy(mask).to(self.device)


class Stretch:
    """A straggler's clock: ``stretch()`` sleeps until ``factor`` times the work done since
    ``start()`` has passed, so every event after a call happens ``factor`` times later, as on
    a uniformly slower device (``factor`` 1: never sleeps)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._start = self._slept = 0.0

    def start(self) -> None:
        self._start, self._slept = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def __call__(self) -> None:
        if self.factor > 1.0:
            owed = (self.factor - 1.0) * (self.elapsed() - self._slept) - self._slept
            if owed > 0:
                time.sleep(owed)
                self._slept += owed


class Gradients:
    """``grad_fn(at_WD) -> grads_WD`` on one step's minibatches (see :mod:`shoal.parallel.base`).

    Also measures the compute time of each call, and emulates stragglers (``slowdown`` is the
    largest factor of the local workers) with a :class:`Stretch` before each bucket is handed
    over and at the end.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ParamSpec,
        loss_fn: LossFn,
        batches: LocalBatches,
        index_WB: torch.Tensor,
        mask_WB: torch.Tensor,
        vectorize: bool,
        slowdown: float = 1.0,
    ) -> None:
        self.model, self.spec, self.loss_fn = model, spec, loss_fn
        self.batches, self.index_WB, self.mask_WB = batches, index_WB, mask_WB
        self.vectorize = vectorize
        self.loss_W: torch.Tensor | None = None
        self.compute_seconds = 0.0
        self._stretch = Stretch(slowdown)

    def _loss(
        self, named: dict[str, torch.Tensor], x_B: torch.Tensor, y_B: torch.Tensor, mask_B
    ) -> torch.Tensor:
        return batch_loss(self.model, self.loss_fn, named, x_B, y_B, mask_B)

    def _channels_last(self, named: dict[str, torch.Tensor]) -> bool:
        """Whether the kernels go in channels-last layout: on the CPU, for a model that runs
        so (:func:`shoal.functional.channels_last_fits`), decided once for the run."""
        if self.batches.channels_last is None:
            cpu = self.batches.device.type == "cpu"
            fits = cpu and channels_last_fits(self.model, named, self.batches.x)
            self.batches.channels_last = fits
        return self.batches.channels_last

    def __call__(self, at_WD: torch.Tensor, buckets: Buckets | None = None) -> torch.Tensor:
        self._stretch.start()
        out_WD = torch.empty_like(at_WD)
        handover = None if buckets is None else _Handover(self.spec, out_WD, buckets, self._stretch)
        with rnn_backward_backends(self.model, at_WD.device):
            if self.vectorize:
                self._vmapped(at_WD, out_WD, handover)
            else:
                self._looped(at_WD, out_WD, handover)
        if out_WD.is_cuda:
            torch.cuda.synchronize(out_WD.device)  # measure the compute, not the launch
        self._stretch()
        self.compute_seconds += self._stretch.elapsed()
        return out_WD

    def _vmapped(
        self, at_WD: torch.Tensor, out_WD: torch.Tensor, handover: _Handover | None
    ) -> None:
        leaves = self.spec.leaves(at_WD)  # per-parameter [W, *shape] views, autograd leaves
        x, y = self.batches.x[self.index_WB], self.batches.y[self.index_WB]
        loss_W = torch.func.vmap(self._loss)(leaves, x, y, self.mask_WB)
        self.loss_W = loss_W.detach()
        _backward(loss_W.sum(), leaves, self.spec.unflatten(out_WD), handover)

    def _looped(
        self, at_WD: torch.Tensor, out_WD: torch.Tensor, handover: _Handover | None
    ) -> None:
        losses = []
        for i in range(at_WD.shape[0]):
            leaves = self.spec.leaves(at_WD[i])
            idx = self.index_WB[i]
            named = channels_last(leaves) if self._channels_last(leaves) else leaves
            loss = self._loss(named, self.batches.x[idx], self.batches.y[idx], self.mask_WB[i])
            outs = self.spec.unflatten(out_WD[i])
            # A bucket is final once the last worker's backward pass has produced it.
            last = handover if i == at_WD.shape[0] - 1 else None
            _backward(loss, leaves, outs, last)
            losses.append(loss.detach())
        self.loss_W = torch.stack(losses)


class _Handover:
    """Calls ``buckets.ready`` for each bucket (:func:`shoal.parallel.base.bucket_ranges`) as
    soon as the backward pass has produced all of its parameter tensors (after ``before``)."""

    def __init__(
        self,
        spec: ParamSpec,
        out_WD: torch.Tensor,
        buckets: Buckets,
        before: Callable[[], None],
    ) -> None:
        numels = [math.prod(shape) for shape in spec.shapes]
        caps = buckets.cap_bytes, buckets.first_cap_bytes
        self.ranges = bucket_ranges(numels, spec.offsets, *caps, out_WD.element_size())
        self.out_WD, self.ready, self.before = out_WD, buckets.ready, before
        # Each parameter tensor's bucket, and how many tensors each bucket still waits for.
        self.bucket_of = {
            name: next(b for b, (lo, hi) in enumerate(self.ranges) if lo <= off < hi)
            for name, off in zip(spec.names, spec.offsets)
        }
        self.missing = [list(self.bucket_of.values()).count(b) for b in range(len(self.ranges))]

    def arrived(self, name: str) -> None:
        b = self.bucket_of[name]
        self.missing[b] -= 1
        if self.missing[b] == 0:
            self.before()
            lo, hi = self.ranges[b]
            self.ready(self.out_WD, lo, hi)


def _backward(
    loss: torch.Tensor,
    leaves: dict[str, torch.Tensor],
    outs: dict[str, torch.Tensor],
    handover: _Handover | None,
) -> None:
    """Gradients of ``loss`` w.r.t. ``leaves`` written into ``outs`` (views of the output
    rows, shaped like the leaves); with a ``handover``, each one as soon as the backward pass
    produces it (a leaf's tensor hook sees its gradient once, summed over all its uses).

    A parameter the forward does not use gets a zero gradient (autograd's error otherwise), so
    plain SGD leaves it as ``torch.optim`` does; weight decay still shrinks it, where
    ``torch.optim`` skips a parameter without a gradient. With a ``handover`` its bucket is
    handed over after the backward pass, as DDP's ``find_unused_parameters`` marks it ready."""
    if handover is None:
        grads = torch.autograd.grad(loss, tuple(leaves.values()), materialize_grads=True)
        # Before torch 2.10 the zeros made for unused leaves have requires_grad=True, and
        # autograd then refuses the copy into the output rows ("a leaf Variable that requires
        # grad is being used in an in-place operation"). The gradients are plain values here.
        with torch.no_grad():
            for name, g in zip(leaves, grads):
                outs[name].copy_(g)
        return
    unused = set(leaves)

    def hook(name: str) -> Callable[[torch.Tensor], None]:
        def write(g: torch.Tensor) -> None:
            outs[name].copy_(g)
            unused.discard(name)
            handover.arrived(name)

        return write

    handles = [leaf.register_hook(hook(name)) for name, leaf in leaves.items()]
    try:
        torch.autograd.grad(loss, tuple(leaves.values()), materialize_grads=True)
    finally:
        for h in handles:
            h.remove()
    # In the leaves' order (not the set's, which string hashing makes differ between
    # processes), so every process starts the same collectives in the same order.
    for name in [n for n in leaves if n in unused]:
        outs[name].zero_()
        handover.arrived(name)
