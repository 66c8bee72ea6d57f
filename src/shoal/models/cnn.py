"""The CNN of FedAvg.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS (arXiv:1602.05629), Sec. 3: conv 5x5 with 32 channels, ReLU, 2x2 max pool,
conv 5x5 with 64 channels, ReLU, 2x2 max pool, a fully connected layer of 512 units with ReLU and
a softmax output layer; 1,663,370 parameters on MNIST. That count implies "same" padding (a
7x7x64 = 3136 input to the fully connected layer). Many reimplementations use no padding
instead, which gives a 4x4x64 = 1024 input and 582,026 parameters. ``padding`` selects either.

Shapes: ``B`` batch, ``C`` input channels, ``S`` image side; input ``[B, C, S, S]``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import nn

from shoal.checks import check_count
from shoal.models.split import BodyHead

__all__ = ["cnn"]

_KERNEL = 5


def cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    padding: Literal["same", "valid"] | int = "same",
) -> BodyHead:
    """McMahan et al.'s CNN; body = convolutions and the 512-unit layer, head = the last ``Linear``.

    ``padding`` is ``"same"`` (2 pixels, the paper's count), ``"valid"`` (none) or an int.
    Returns logits ``[B, num_classes]``.
    """
    if padding == "same":
        pad = _KERNEL // 2
    elif padding == "valid":
        pad = 0
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        pad = padding
    else:
        raise ValueError(f"padding must be 'same', 'valid' or an int >= 0, got {padding!r}")
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        check_count(value, f"cnn: {name}")  # 10.0 failed inside torch
    check_count(image_size, "cnn: image_size")

    side = image_size
    for _ in range(2):  # conv (stride 1) then 2x2 max pool, floor as in PyTorch
        side = (side + 2 * pad - _KERNEL + 1) // 2
    if side < 1:
        raise ValueError(
            f"image_size={image_size} is too small for two 5x5 convolutions and pools with "
            f"padding {pad}; use a larger image"
            + ("" if pad >= _KERNEL // 2 else " or padding='same'")
        )

    body = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 32, _KERNEL, padding=pad)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(32, 64, _KERNEL, padding=pad)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(64 * side * side, 512)),
                ("relu3", nn.ReLU()),
            ]
        )
    )
    return BodyHead(body, nn.Linear(512, num_classes))
