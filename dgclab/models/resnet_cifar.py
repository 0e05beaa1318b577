"""The CIFAR ResNet with dense, static-group or dynamic-group (DGC) convolutions.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv
1512.03385, §4.2: a 3x3 stem, three stages of n BasicBlocks at width, 2*width and 4*width
channels (stride 2 at the start of stages 2 and 3), global average pool, linear; depth = 6n + 2.
Shortcuts that change shape are a 1x1 conv + BN (option B of the paper).

``conv`` picks the convolution of the blocks, so that the three variants differ in one
argument and can be compared at equal depth and width:

* ``"dense"``: ``nn.Conv2d``.
* ``"group"``: ``GroupConv2d(groups=heads, shuffle=True)``, the static baseline (1/heads of
  the MACs and weights).
* ``"dgc"``: the DyResNet block of Su et al., ECCV 2020, arXiv 2007.04242 (``DGCBasicBlock``):
  every block conv and shortcut conv is a ``DGCConv2d`` with its own BN-ReLU pre-activation.

The stem stays a plain conv in all three. Init is torchvision's (kaiming fan_out, BN 1/0).
Every ReLU is its own module, called once per forward, so forward hooks see each activation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn

from ..layers import GroupConv2d
from .dyresnet import DGCBasicBlock, init_resnet_

__all__ = ["ResNetCifar", "BasicBlock", "resnet_cifar", "resnet8", "resnet14", "resnet20"]

ConvKind = Literal["dense", "group", "dgc"]
CONV_KINDS = ("dense", "group", "dgc")

# (in_channels, out_channels, kernel_size, stride, padding) -> conv module without bias
ConvFactory = Callable[[int, int, int, int, int], nn.Module]


class BasicBlock(nn.Module):
    """``conv3x3 -> bn1 -> relu1 -> conv3x3 -> bn2 -> + shortcut -> relu2``.

    Args:
        in_channels, out_channels: C_in, C_out.
        stride: of the first conv and of the shortcut.
        conv: builds the block's convs (the 3x3s and the 1x1 shortcut conv).

    Shapes: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, conv: ConvFactory
    ) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(out_channels, out_channels, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, 1, stride, 0), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth 6n + 2; see ``resnet_cifar`` for the arguments.

    Shapes: (B, in_channels, H, W) -> (B, num_classes) logits; any H, W >= 4 works (32x32
    CIFAR, 28x28 Fashion-MNIST).
    """

    def __init__(
        self,
        depth: int,
        *,
        width: int = 16,
        conv: ConvKind = "dense",
        in_channels: int = 3,
        num_classes: int = 10,
        heads: int = 4,
        pruning_rate: float = 0.75,
        squeeze_rate: int = 16,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got depth={depth!r}"
            )
        if conv not in CONV_KINDS:
            raise ValueError(f"conv must be one of {CONV_KINDS}, got conv={conv!r}")
        if not isinstance(width, int) or width <= 0:
            raise ValueError(f"width must be a positive int, got width={width!r}")
        self.depth = depth
        self.conv = conv
        n = (depth - 2) // 6

        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        channels = width
        for i, stage_width in enumerate((width, 2 * width, 4 * width), start=1):
            stride = 1 if i == 1 else 2
            blocks = [self._block(channels, stage_width, stride, heads, pruning_rate, squeeze_rate)]
            blocks += [
                self._block(stage_width, stage_width, 1, heads, pruning_rate, squeeze_rate)
                for _ in range(n - 1)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            channels = stage_width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_(self)

    def _block(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        heads: int,
        pruning_rate: float,
        squeeze_rate: int,
    ) -> nn.Module:
        if self.conv == "dgc":
            return DGCBasicBlock(
                in_channels,
                out_channels,
                stride,
                heads=heads,
                pruning_rate=pruning_rate,
                squeeze_rate=squeeze_rate,
            )
        if self.conv == "group":

            def factory(c_in: int, c_out: int, k: int, s: int, p: int) -> nn.Module:
                return GroupConv2d(c_in, c_out, k, s, p, groups=heads, shuffle=True)

        else:

            def factory(c_in: int, c_out: int, k: int, s: int, p: int) -> nn.Module:
                return nn.Conv2d(c_in, c_out, k, s, p, bias=False)

        return BasicBlock(in_channels, out_channels, stride, conv=factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 4*width, H/4, W/4)
        return self.fc(self.avgpool(x).flatten(1))  # (B, num_classes)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, conv={self.conv!r}"


def resnet_cifar(
    depth: int,
    width: int = 16,
    conv: ConvKind = "dense",
    in_channels: int = 3,
    num_classes: int = 10,
    heads: int = 4,
    pruning_rate: float = 0.75,
    squeeze_rate: int = 16,
) -> ResNetCifar:
    """The CIFAR ResNet (He et al. 2016) with dense, static-group or DGC block convs.

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...); n BasicBlocks per stage.
        width: channels of the stem and the first stage (16 in the paper); stages 2 and 3
            have 2x and 4x. Must be divisible by ``heads`` for ``"group"`` and ``"dgc"``.
        conv: ``"dense"``, ``"group"`` (``GroupConv2d``, groups=heads, shuffle) or ``"dgc"``
            (``DGCConv2d`` blocks as in DyResNet).
        in_channels: 3 for CIFAR, 1 for Fashion-MNIST.
        num_classes: outputs of ``fc``.
        heads: DGC heads, or the number of groups for ``"group"``.
        pruning_rate, squeeze_rate: of every DGC layer (``"dgc"`` only).

    Returns:
        A ``ResNetCifar``; its forward maps (B, in_channels, H, W) to (B, num_classes).

    Example:
        >>> model = resnet_cifar(20, conv="dgc", in_channels=1)
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return ResNetCifar(
        depth,
        width=width,
        conv=conv,
        in_channels=in_channels,
        num_classes=num_classes,
        heads=heads,
        pruning_rate=pruning_rate,
        squeeze_rate=squeeze_rate,
    )


def resnet8(**kwargs) -> ResNetCifar:
    """``resnet_cifar(8, **kwargs)``: one block per stage."""
    return resnet_cifar(8, **kwargs)


def resnet14(**kwargs) -> ResNetCifar:
    """``resnet_cifar(14, **kwargs)``: two blocks per stage."""
    return resnet_cifar(14, **kwargs)


def resnet20(**kwargs) -> ResNetCifar:
    """``resnet_cifar(20, **kwargs)``: three blocks per stage."""
    return resnet_cifar(20, **kwargs)
