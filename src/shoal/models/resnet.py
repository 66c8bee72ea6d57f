"""A small CIFAR ResNet with GroupNorm.

He et al. 2016, "Deep Residual Learning for Image Recognition", CVPR (arXiv:1512.03385),
Sec. 4.2: the CIFAR ResNets (ResNet-20 is three stages of three basic blocks, widths 16/32/64).
BatchNorm is replaced by GroupNorm (Wu & He 2018, arXiv:1803.08494) as in Hsieh et al. 2020,
"The Non-IID Data Quagmire of Decentralized Machine Learning", ICML (arXiv:1910.00189), Sec. 5,
with 2 groups: batch statistics are wrong under non-IID clients, and GroupNorm has no running
buffers, which also keeps the model a pure function of its parameters under ``vmap``.

Shapes: ``B`` batch, ``C`` channels, ``H``/``W`` height and width; input ``[B, C, H, W]``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from shoal.checks import check_count, is_integer
from shoal.models.split import BodyHead

__all__ = ["resnet_small"]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the normalization that follows would cancel it.
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, Fig. 2).

    When the shape changes the shortcut is a 1x1 convolution with a norm (option B of the paper).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.GroupNorm(groups, out_ch),
            )

    def forward(self, x_BCHW: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x_BCHW)))
        out = self.norm2(self.conv2(out))
        # Out of place: vmap and autograd both need the pre-activation tensors intact.
        return self.relu(out + self.shortcut(x_BCHW))


def resnet_small(
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    blocks_per_stage: Sequence[int] = (2, 2, 2),
    groups: int = 2,
) -> BodyHead:
    """A CIFAR ResNet: stem conv, stages of basic blocks, global average pooling, ``Linear`` head.

    Stage ``i`` has ``width * 2**i`` channels and, for ``i > 0``, starts with stride 2.
    ``blocks_per_stage=(3, 3, 3)`` is ResNet-20; the default ``(2, 2, 2)`` is a lighter ResNet-14.
    ``groups`` is the number of GroupNorm groups and must divide ``width``.
    Returns logits ``[B, num_classes]``.
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        check_count(value, f"resnet_small: {name}")
    check_count(width, "resnet_small: width")
    check_count(groups, "resnet_small: groups")
    if groups < 1 or width % groups != 0:
        raise ValueError(f"resnet_small: groups must divide width = {width}, got {groups}")
    stages = blocks_per_stage  # an int failed as "'int' object is not iterable"
    if (
        not isinstance(stages, Sequence)
        or not stages
        or not all(is_integer(n) and n >= 1 for n in stages)
    ):
        raise ValueError(
            f"resnet_small: blocks_per_stage must be a non-empty sequence of ints >= 1, got "
            f"{blocks_per_stage!r}"
        )

    layers: list[tuple[str, nn.Module]] = [
        ("conv", _conv3x3(in_channels, width)),
        ("norm", nn.GroupNorm(groups, width)),
        ("relu", nn.ReLU()),
    ]
    in_ch = width
    for stage, num_blocks in enumerate(blocks_per_stage):
        out_ch = width * 2**stage
        blocks = []
        for b in range(num_blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            blocks.append(BasicBlock(in_ch, out_ch, stride, groups))
            in_ch = out_ch
        layers.append((f"stage{stage + 1}", nn.Sequential(*blocks)))
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    body = nn.Sequential(OrderedDict(layers))

    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            # He initialization, as in the paper (and torchvision's ResNets).
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return BodyHead(body, nn.Linear(in_ch, num_classes))
