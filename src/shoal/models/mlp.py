"""The "2NN" multilayer perceptron.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS (arXiv:1602.05629), Sec. 3: two hidden layers of 200 units with ReLU on MNIST,
199,210 parameters in total.

Shapes: ``B`` batch; the input is ``[B, ...]`` and is flattened to ``[B, in_features]``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from torch import nn

from shoal.checks import check_count, is_integer
from shoal.models.split import BodyHead

__all__ = ["mlp"]


def mlp(
    in_features: int = 784,
    hidden: Sequence[int] = (200, 200),
    num_classes: int = 10,
) -> BodyHead:
    """Flatten, then ``Linear + ReLU`` per entry of ``hidden`` (the body), then ``Linear`` (head).

    ``hidden=()`` gives :func:`~shoal.models.mclr`. Returns logits ``[B, num_classes]``.
    """
    # An iterator is read once; None or an int is no sequence (None failed in tuple()).
    hidden = tuple(hidden) if isinstance(hidden, Iterable) else hidden
    if not isinstance(hidden, tuple) or not all(is_integer(h) and h >= 1 for h in hidden):
        raise ValueError(f"mlp: hidden must be a sequence of integers >= 1, got {hidden!r}")
    check_count(in_features, "mlp: in_features")  # mlp(10, 5, 3) failed inside Python
    check_count(num_classes, "mlp: num_classes")
    sizes = [in_features, *hidden]
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [(f"fc{i + 1}", nn.Linear(fan_in, fan_out)), (f"relu{i + 1}", nn.ReLU())]
    return BodyHead(nn.Sequential(OrderedDict(layers)), nn.Linear(sizes[-1], num_classes))
