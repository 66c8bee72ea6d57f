"""The looped trainer: each client's local SGD in plain PyTorch, one client after another.

This is the reference the vectorized path is tested against, and on a CPU it is also the
faster one for small models: a client's parameters stay in the cache for all its steps,
where the stacked path streams every active client's parameters through memory each step.

It trains a *work copy* of the model whose trainable parameters are views of one flat buffer
(the flat-parameter trick of Apex and FSDP): a client starts with one copy into that buffer,
each step is an ordinary ``module(x)`` + ``autograd.grad`` + one fused ``_foreach_add_``, and
algorithm corrections read the flat buffer directly. Calling the module itself, instead of
:func:`torch.func.functional_call` on every step, saves about 0.8 ms of Python per step
(measured on workload W's MLP: 1.0 ms per step instead of 1.8 ms).

Buffers and frozen parameters are *shared* with the user's model, not copied, so the work
copy always computes what ``functional_call(model, params, x)`` would. On the CPU its 2-D
convolution kernels reach the convolutions in channels-last layout (a parametrization; see
:func:`shoal.functional.channels_last`), unless the model cannot run so
(:func:`shoal.functional.channels_last_fits`).
"""

from __future__ import annotations

import copy
import weakref

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from shoal.functional import channels_last, channels_last_fits, rnn_backward_backends
from shoal.runtime.base import RoundTask, corrects
from shoal.runtime.fused import fused_train, linear_chain
from shoal.types import ClientState


class _ChannelsLast(nn.Module):
    """A parametrization: the kernel as the module sees it, in channels-last layout."""

    def forward(self, kernel: torch.Tensor) -> torch.Tensor:
        return channels_last({"k": kernel})["k"]


def _shared(task: RoundTask) -> list[torch.Tensor]:
    """The model's buffers and frozen parameters: the work copy shares them, not copies."""
    trainable = {id(task.model.get_parameter(n)) for n in task.spec.names}
    return [t for t in [*task.model.parameters(), *task.model.buffers()] if id(t) not in trainable]


class FlatModule:
    """A work copy of ``model`` whose trainable parameters are views of ``self.flat``."""

    def __init__(self, task: RoundTask) -> None:
        model, spec = task.model, task.spec
        shared = _shared(task)
        # deepcopy with the shared tensors pre-seeded in its memo keeps them shared.
        self.module = copy.deepcopy(model, memo={id(t): t for t in shared})
        self.spec = spec
        self.flat = torch.empty_like(task.params_D)
        self.params: list[torch.Tensor] = []
        cpu = self.flat.device.type == "cpu"
        fits = cpu and channels_last_fits(model, spec.unflatten(task.params_D), task.x)
        kernels = []
        for name, view in spec.unflatten(self.flat).items():
            p = self.module.get_parameter(name)
            p.data = view
            self.params.append(p)
            if p.dim() == 4 and fits:
                kernels.append(name)
        for name in kernels:  # see shoal.functional.channels_last (after the loop: renames)
            owner, _, attr = name.rpartition(".")
            parametrize.register_parametrization(
                self.module.get_submodule(owner), attr, _ChannelsLast(), unsafe=True
            )
        # The round it was made for, weakly (a cached copy must not keep the model alive).
        self.task = weakref.ref(task)


class ClientLoop:
    """Trains clients one at a time with a cached :class:`FlatModule`; chains of linear
    layers take the fused step of :mod:`shoal.runtime.fused` unless ``fused=False`` (one
    client at a time too, in place in its row of the output)."""

    def __init__(self, fused: bool = True) -> None:
        self.fused = fused
        self._work: FlatModule | None = None

    def train(
        self, task: RoundTask, plans: list, cstate: ClientState
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Local SGD for each client of ``plans`` (state rows ``cstate``); ``params_WD``."""
        corrected = corrects(task, cstate)
        params = task.params_D.new_empty(len(plans), task.spec.num_params)
        loss_sum = np.zeros(len(plans))
        samples = np.zeros(len(plans))
        layers = linear_chain(task) if self.fused else None
        work = self._work_copy(task) if layers is None else None
        for w, plan in enumerate(plans):
            row = {k: v[w : w + 1] for k, v in cstate.items()}
            if layers is not None:
                loss, n = fused_train(task, layers, params[w : w + 1], [plan], row, corrected)
                loss_sum[w], samples[w] = loss[0], n[0]
            elif work is not None:
                loss_sum[w], samples[w] = self._client(task, work, plan, row, corrected)
                params[w].copy_(work.flat)
        return params, loss_sum, samples

    def _work_copy(self, task: RoundTask) -> FlatModule:
        # A fresh copy each round (~5 ms for McMahan's CNN), reused by its chunks: one kept
        # across runs missed what changed in the model between them (an attribute such as a
        # LeakyReLU's slope, a hook), trained the stale copy and scored the new model.
        if self._work is None or self._work.task() is not task:
            self._work = FlatModule(task)
        # Every submodule in the mode the user's has, set one by one: work.train(flag) would put
        # a BatchNorm or Dropout the user froze with .eval() back in training mode.
        for name, m in task.model.named_modules():
            self._work.module.get_submodule(name).training = m.training
        return self._work

    @staticmethod
    def _client(
        task: RoundTask, work: FlatModule, plan, row: ClientState, corrected: bool
    ) -> tuple[float, float]:
        dev, lr = work.flat.device, task.algorithm.lr
        work.flat.copy_(task.params_D)
        index_TB = torch.from_numpy(plan.index_TB).to(dev)  # every step's batch in one gather
        x_TB, y_TB, counts = task.x[index_TB], task.y[index_TB], plan.mask_TB.sum(axis=1)
        mask_TB = torch.from_numpy(plan.mask_TB).to(dev)
        losses = []
        with rnn_backward_backends(work.module, dev):
            for t in range(plan.num_steps):
                per_sample = task.loss_fn(work.module(x_TB[t]), y_TB[t])
                if counts[t] == per_sample.shape[0]:
                    loss = per_sample.mean()
                else:  # a short last batch: average over its real rows, as the vectorized path
                    loss = (per_sample * mask_TB[t]).sum() / max(float(counts[t]), 1.0)
                # An unused parameter: a zero gradient (torch.optim leaves it), not an error.
                grads = torch.autograd.grad(loss, work.params, materialize_grads=True)
                with torch.no_grad():
                    if corrected:  # at the parameters before this step, like the gradient
                        corr = task.algorithm.correction(work.flat.unsqueeze(0), task.down, row)
                        assert corr is not None
                        work.flat.sub_(corr[0], alpha=lr)
                    torch._foreach_add_(work.params, list(grads), alpha=-lr)
                losses.append(loss.detach())
        # One device-to-host transfer per client, not one per step.
        mean_T = torch.stack(losses).double().cpu().numpy()
        return float(mean_T @ counts.astype(np.float64)), float(counts.sum())
