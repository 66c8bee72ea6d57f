"""A fused local-SGD step for multilayer perceptrons trained with cross-entropy.

Most models of the federated-learning literature's small benchmarks are chains of
``Linear`` and ``ReLU`` layers: multinomial logistic regression (FedProx's Synthetic data,
LEAF) and McMahan et al.'s 2NN. For such a chain the backward pass is a handful of matrix
products, written out here by hand (the textbook back-propagation of a ReLU network under
softmax cross-entropy), and each weight's SGD update is *fused* into the product that computes
its gradient (``W.baddbmm_(delta.T, h, alpha=-lr)``): the gradient is never materialized and
autograd's graph is never built. :func:`fused_train` steps a whole chunk of clients at once
(every product batched over the clients still training, ``bmm``), so the interpreter's cost is
paid once per step of the chunk and PyTorch spreads each product over the cores; the looped
runtime calls it with one client at a time. For W's 2NN at batch 10 a client-step costs about
0.25 ms stacked over 32 clients on 2 cores (0.38 ms on one), 0.55 ms alone, against 1.0 ms
through autograd (``benchmarks/vs_flower.py`` and ``benchmarks/scale.py`` measure the effect
end to end).

:func:`linear_chain` recognizes the models it applies to — ``nn.Sequential`` /
:class:`~shoal.models.BodyHead` compositions of ``Flatten``, ``Linear``, ``ReLU`` and
``Identity``, every parameter trainable, no hooks, with :func:`shoal.functional.cross_entropy` as
the loss — and anything else goes through autograd. The result is the same SGD step: the tests
compare it with autograd on every algorithm to 1e-5 (only the summation order differs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shoal.functional import cross_entropy
from shoal.models.split import BodyHead
from shoal.runtime.base import RoundTask
from shoal.types import ClientState


@dataclass(frozen=True)
class Layer:
    """One op of the chain: a linear map (``weight``/``bias`` parameter names) or a ReLU."""

    kind: str  # "linear" | "relu"
    weight: str = ""
    bias: str | None = None


def _ops(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """The leaf modules of a Sequential/BodyHead composition in forward order."""
    plain_sequential = type(module).forward is nn.Sequential.forward
    if isinstance(module, nn.Sequential) and plain_sequential:
        # Every entry, as Sequential.forward runs them: named_children() yields a module placed
        # twice (one ReLU reused between layers) only once, and the chain would lose a layer.
        for name, child in module._modules.items():
            yield from _ops(child, f"{prefix}{name}.")
    elif isinstance(module, BodyHead) and type(module).forward is BodyHead.forward:
        yield from _ops(module.body, f"{prefix}body.")
        yield from _ops(module.head, f"{prefix}head.")
    else:
        yield prefix, module


def _hooked(m: nn.Module) -> bool:
    """Whether the module has forward or backward hooks, which may change its output or its
    gradients: the fused step never calls the module, so it would skip them."""
    hooks = (m._forward_pre_hooks, m._forward_hooks, m._backward_pre_hooks, m._backward_hooks)
    return any(hooks)


def _global_hooks() -> bool:
    """Whether hooks registered for every module (``nn.modules.module.register_module_*``)
    are in place: autograd's forward calls them, the fused step would not."""
    from torch.nn.modules import module as m

    hooks = (
        m._global_forward_pre_hooks,
        m._global_forward_hooks,
        m._global_backward_pre_hooks,
        m._global_backward_hooks,
    )
    return any(hooks)


def linear_chain(task: RoundTask) -> list[Layer] | None:
    """The model as a list of layers if the fused step applies to it, else ``None``."""
    if task.loss_fn is not cross_entropy or not task.x.is_floating_point():
        return None
    if _global_hooks() or any(_hooked(m) for m in task.model.modules()):
        return None
    layers: list[Layer] = []
    flattens = False
    for prefix, module in _ops(task.model, ""):
        if type(module) is nn.Linear:
            bias = f"{prefix}bias" if module.bias is not None else None
            layers.append(Layer("linear", f"{prefix}weight", bias))
        elif type(module) is nn.ReLU:
            layers.append(Layer("relu"))
        elif type(module) is nn.Flatten and not layers and module.start_dim == 1:
            if module.end_dim != -1:
                return None
            flattens = True
        elif type(module) is not nn.Identity:
            return None
    if not flattens and task.x.dim() != 2:
        return None  # the step flattens each sample: only where the model itself does
    named = [n for layer in layers for n in (layer.weight, layer.bias) if n]
    if not named or sorted(named) != sorted(task.spec.names):
        return None  # frozen or extra parameters: leave them to autograd
    return layers


def stacked_plan(plans: list, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The minibatch indices ``[W, T, B]`` and masks of clients sorted by decreasing steps
    (padded with the client's first row, masked out), and how many clients are still training
    at each step (a prefix)."""
    W, T = len(plans), plans[0].num_steps
    B = max(p.index_TB.shape[1] for p in plans)
    index = np.zeros((W, T, B), dtype=np.int64)
    mask = np.zeros((W, T, B), dtype=np.float32)
    for w, p in enumerate(plans):
        t, b = p.index_TB.shape
        if t and b:  # padding: one of the client's own rows (masked out), as in make_plan
            index[w] = p.index_TB[0, 0]
        index[w, :t, :b], mask[w, :t, :b] = p.index_TB, p.mask_TB
    num_steps = np.array([p.num_steps for p in plans])
    active_T = (num_steps[None, :] > np.arange(T)[:, None]).sum(axis=1)
    return torch.from_numpy(index).to(dev), torch.from_numpy(mask).to(dev), active_T


def fused_train(
    task: RoundTask,
    layers: list[Layer],
    params_WD: torch.Tensor,
    plans: list,
    cstate: ClientState,
    corrected: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Local SGD of the clients of ``plans`` (sorted by decreasing steps; state rows
    ``cstate``), all at once and in place in ``params_WD``, which starts as the global model.
    Each product is batched over the clients still training (``bmm``), so one step of 32
    clients costs one pass of the interpreter and PyTorch spreads it over the cores.
    Returns each client's summed per-sample loss and its number of samples."""
    lr, alg = task.algorithm.lr, task.algorithm
    dev, dtype = params_WD.device, params_WD.dtype
    params_WD.copy_(task.params_D.expand_as(params_WD))
    views = task.spec.unflatten(params_WD)  # [W, *shape] each, rows ``D`` apart
    index_WTB, mask_WTB, active_T = stacked_plan(plans, dev)
    W, T, B = index_WTB.shape
    counts_WT = mask_WTB.sum(2)
    # Per-row weight of each client's mean loss: 1/count on real rows, 0 on padding; and the
    # targets one-hot, weighted alike, so that d(mean loss)/d(logits) = softmax * w - target_w.
    # Divided in the parameters' dtype: a float32 1/3 put float64 runs 1e-8 off autograd's.
    mask_WTB1 = mask_WTB.to(dtype).unsqueeze(-1)
    scale_WTB1 = mask_WTB1 / counts_WT.to(dtype).clamp_min(1.0)[:, :, None, None]
    width = views[next(la.weight for la in reversed(layers) if la.kind == "linear")].shape[1]
    loss_W = torch.zeros(W, dtype=torch.float64, device=dev)
    with torch.no_grad():
        for t in range(T):
            a = int(active_T[t])
            idx = index_WTB[:a, t]
            corr = None
            if corrected:  # evaluated before the step, like the gradient
                sub = {k: v[:a] for k, v in cstate.items()}
                corr = alg.correction(params_WD[:a], task.down, sub)
            # Forward: keep each linear layer's input and each ReLU's output.
            h = task.x[idx].reshape(a, B, -1)
            inputs: list[torch.Tensor] = []
            for layer in layers:
                if layer.kind == "linear":
                    inputs.append(h)
                    w_T = views[layer.weight][:a].transpose(1, 2)
                    if layer.bias:
                        h = torch.baddbmm(views[layer.bias][:a].unsqueeze(1), h, w_T)
                    else:
                        h = torch.bmm(h, w_T)
                else:
                    h = h.clamp_min(0)
                    inputs.append(h)
            logp = torch.log_softmax(h, dim=2)
            scale = scale_WTB1[:a, t]
            target = torch.nn.functional.one_hot(task.y[idx], width).to(dtype).mul_(scale)
            mean_loss = -(logp * target).sum((1, 2))
            loss_W[:a] += mean_loss.double() * counts_WT[:a, t].double()
            delta = logp.exp_().mul_(scale).sub_(target)
            for i in range(len(layers) - 1, -1, -1):
                layer, h_in = layers[i], inputs[i]
                if layer.kind == "relu":
                    delta = torch.ops.aten.threshold_backward(delta, h_in, 0)
                    continue
                w = views[layer.weight][:a]
                back = torch.bmm(delta, w) if i > 0 else None  # the weight before its update
                w.baddbmm_(delta.transpose(1, 2), h_in, alpha=-lr)
                if layer.bias:
                    views[layer.bias][:a].sub_(delta.sum(1), alpha=lr)
                if back is not None:
                    delta = back
            if corr is not None:
                params_WD[:a].sub_(corr, alpha=lr)
    return loss_W.cpu().numpy(), counts_WT.sum(1).double().cpu().numpy()
