"""The character LSTM of LEAF's Shakespeare task.

Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings" (arXiv:1812.01097), and
Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx, arXiv:1812.06127):
an 8-dimensional character embedding, a 2-layer LSTM with 256 units and a dense layer to the
80-character vocabulary, predicting the character that follows the input sequence (80 long in
LEAF). The LSTM equations are those of ``torch.nn.LSTM`` (Hochreiter & Schmidhuber 1997, with
a forget gate, Gers et al. 2000).

The recurrence is written with ``nn.Linear`` and a Python loop over time steps rather than
``nn.LSTM``: the fused (cuDNN) kernel has no ``vmap`` batching rule and its flattened weight
buffer does not survive ``functional_call``. The loop length is the sequence length, a shape, so
it is the same for every client.

Shapes: ``B`` batch, ``L`` sequence length, ``E`` embedding size, ``I`` input size,
``H`` hidden size, ``G = 4H`` the stacked gates.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import ClassVar

import torch
from torch import Tensor, nn

from shoal.checks import check_count
from shoal.models.split import BodyHead

__all__ = ["LSTM", "LSTMCell", "char_lstm"]


class LSTMCell(nn.Module):
    """One LSTM layer's parameters, laid out like ``nn.LSTM``'s ``*_l{k}`` tensors.

    ``ih.weight``/``ih.bias`` are ``weight_ih_l{k}``/``bias_ih_l{k}`` and ``hh.*`` are
    ``*_hh_l{k}``; the gates are stacked in PyTorch's order (input, forget, cell, output).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)
        # nn.LSTM's initialization: every tensor uniform in +-1/sqrt(H).
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def step(self, gx_BG: Tensor, h_BH: Tensor, c_BH: Tensor) -> tuple[Tensor, Tensor]:
        """One time step, given the input part of the gates ``gx_BG = ih(x_t)``."""
        i, f, g, o = (gx_BG + self.hh(h_BH)).chunk(4, dim=-1)
        c_BH = torch.sigmoid(f) * c_BH + torch.sigmoid(i) * torch.tanh(g)
        h_BH = torch.sigmoid(o) * torch.tanh(c_BH)
        return h_BH, c_BH

    def forward(self, x_BLI: Tensor) -> Tensor:
        """Run over a sequence from zero state; returns every hidden state ``[B, L, H]``."""
        # The input projection does not depend on the recurrence: one matmul for all steps.
        if x_BLI.shape[1] == 0:  # torch.stack([]) said "expects a non-empty TensorList"
            raise ValueError("the LSTM needs sequences of length >= 1, got length 0")
        gx_BLG = self.ih(x_BLI)
        h_BH = gx_BLG.new_zeros(gx_BLG.shape[0], self.hidden_size)
        c_BH = h_BH
        hs = []
        for t in range(gx_BLG.shape[1]):
            h_BH, c_BH = self.step(gx_BLG[:, t], h_BH, c_BH)
            hs.append(h_BH)
        return torch.stack(hs, dim=1)


class LSTM(nn.Module):
    """A stack of :class:`LSTMCell` layers, batch first, zero initial state.

    Computes what ``nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)(x)[0]`` does.
    """

    loop_on_cpu: ClassVar[bool] = True
    """Read by ``SimRuntime(vectorize="auto")``: on a CPU, clients of a model holding this
    recurrence are trained one at a time. Stacked, LEAF's ``char_lstm`` (hidden 256, batch 10,
    15 clients) took 2.6x the loop's time for the same result, most of it the system's time
    for the chunk's large short-lived buffers; only a small model (hidden 64, batch 10) was
    faster stacked (1.5x)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        sizes = [input_size] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(LSTMCell(i, hidden_size) for i in sizes[:-1])

    def forward(self, x_BLI: Tensor) -> Tensor:
        for layer in self.layers:
            x_BLI = layer(x_BLI)
        return x_BLI


class LastStep(nn.Module):
    """``[B, L, H] -> [B, H]``: the output at the last time step."""

    def forward(self, x_BLH: Tensor) -> Tensor:
        return x_BLH[:, -1]


def char_lstm(
    vocab_size: int = 80,
    embed_dim: int = 8,
    hidden: int = 256,
    num_layers: int = 2,
    num_classes: int = 80,
) -> BodyHead:
    """LEAF's Shakespeare next-character model; body = embedding + LSTM, head = ``Linear``.

    Input: int64 token ids ``[B, L]`` with ``L >= 1``; returns next-character logits
    ``[B, num_classes]`` from the last time step. 819,920 parameters with the defaults.
    """
    sizes = {"vocab_size": vocab_size, "embed_dim": embed_dim, "hidden": hidden}
    for name, value in {**sizes, "num_layers": num_layers, "num_classes": num_classes}.items():
        check_count(value, f"char_lstm: {name}")
    body = nn.Sequential(
        OrderedDict(
            [
                ("embed", nn.Embedding(vocab_size, embed_dim)),
                ("lstm", LSTM(embed_dim, hidden, num_layers)),
                ("last", LastStep()),
            ]
        )
    )
    return BodyHead(body, nn.Linear(hidden, num_classes))
