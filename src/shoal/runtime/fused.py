"""A fused local-SGD step for multilayer perceptrons trained with cross-entropy.

Most models of the federated-learning literature's small benchmarks are chains of
``Linear`` and ``ReLU`` layers: multinomial logistic regression (FedProx's Synthetic data,
LEAF) and McMahan et al.'s 2NN. For such a chain the backward pass is a handful of matrix
products, written out here by hand (the textbook back-propagation of a ReLU network under
softmax cross-entropy), and each weight's SGD update is *fused* into the product that computes
its gradient (``W.addmm_(delta.T, h, alpha=-lr)``): the gradient is never materialized and
autograd's graph is never built. On one CPU core a batch-10 step of the 2NN takes about
0.5 ms this way against 1.0 ms through autograd (``benchmarks/vs_flower.py`` measures the effect
end to end).

:func:`linear_chain` recognizes the models it applies to — ``nn.Sequential`` /
:class:`~shoal.models.BodyHead` compositions of ``Flatten``, ``Linear``, ``ReLU`` and
``Identity``, every parameter trainable, with :func:`shoal.functional.cross_entropy` as the
loss — and anything else goes through autograd. The result is the same SGD step: the tests
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
        for name, child in module.named_children():
            yield from _ops(child, f"{prefix}{name}.")
    elif isinstance(module, BodyHead) and type(module).forward is BodyHead.forward:
        yield from _ops(module.body, f"{prefix}body.")
        yield from _ops(module.head, f"{prefix}head.")
    else:
        yield prefix, module


def client_batches(
    task: RoundTask, plan, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Every local step's batch of one client in one gather (``[T, B, ...]``), and how many
    real rows each step holds."""
    index = torch.from_numpy(plan.index_TB).to(dev)
    return task.x[index], task.y[index], plan.mask_TB.sum(axis=1)


def summed_loss(loss_T: torch.Tensor, counts: np.ndarray) -> tuple[float, float]:
    """(summed per-sample loss, samples) from each step's mean loss: one device-to-host
    transfer per client, not one per step."""
    mean_T = loss_T.double().cpu().numpy()
    return float(mean_T @ counts.astype(np.float64)), float(counts.sum())


def linear_chain(task: RoundTask) -> list[Layer] | None:
    """The model as a list of layers if the fused step applies to it, else ``None``."""
    if task.loss_fn is not cross_entropy or not task.x.is_floating_point():
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


def fused_client(
    task: RoundTask,
    layers: list[Layer],
    flat: torch.Tensor,
    views: dict[str, torch.Tensor],
    plan,
    row: ClientState,
    corrected: bool,
) -> tuple[float, float]:
    """One client's local SGD on ``flat`` (its views by name); returns (loss sum, samples)."""
    lr = task.algorithm.lr
    dev = flat.device
    flat.copy_(task.params_D)
    x_TB, y_TB, counts = client_batches(task, plan, dev)
    T, B = plan.index_TB.shape
    x_TBF = x_TB.reshape(T, B, -1)
    # Per-row weight of the mean loss: 1/count on real rows, 0 on padding; and the targets
    # one-hot, weighted alike, so that d(mean loss)/d(logits) = softmax * w - target_w.
    scale_TB1 = torch.from_numpy(plan.mask_TB / np.maximum(counts, 1.0)[:, None]).to(dev)
    scale_TB1 = scale_TB1.to(flat.dtype).unsqueeze(-1)
    width = views[next(la.weight for la in reversed(layers) if la.kind == "linear")].shape[0]
    target_TBC = torch.nn.functional.one_hot(y_TB, width).to(flat.dtype).mul_(scale_TB1)
    ones_B = torch.ones(B, dtype=flat.dtype, device=dev)
    minus_loss = []  # -(mean loss) per step
    with torch.no_grad():
        for t in range(plan.num_steps):
            corr = None
            if corrected:  # evaluated before the step, like the gradient
                corr = task.algorithm.correction(flat.unsqueeze(0), task.down, row)
            # Forward: keep each linear layer's input and each ReLU's output.
            h = x_TBF[t]
            inputs: list[torch.Tensor] = []
            for layer in layers:
                if layer.kind == "linear":
                    inputs.append(h)
                    w = views[layer.weight]
                    h = torch.addmm(views[layer.bias], h, w.t()) if layer.bias else h @ w.t()
                else:
                    h = h.clamp_min(0)
                    inputs.append(h)
            logp = torch.log_softmax(h, dim=1)
            minus_loss.append(torch.vdot(logp.view(-1), target_TBC[t].view(-1)))
            delta = logp.exp_().mul_(scale_TB1[t]).sub_(target_TBC[t])
            for i in range(len(layers) - 1, -1, -1):
                layer, h_in = layers[i], inputs[i]
                if layer.kind == "relu":
                    delta = torch.ops.aten.threshold_backward(delta, h_in, 0)
                    continue
                w = views[layer.weight]
                back = delta @ w if i > 0 else None  # with the weight before its update
                w.addmm_(delta.t(), h_in, alpha=-lr)
                if layer.bias:
                    views[layer.bias].addmv_(delta.t(), ones_B, alpha=-lr)
                if back is not None:
                    delta = back
            if corr is not None:
                flat.sub_(corr[0], alpha=lr)
    return summed_loss(-torch.stack(minus_loss), counts)
