"""The CIFAR ResNet with dense, static-group or dynamic-group (DGC) convolutions.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv
1512.03385, §4.2: a 3x3 stem, three stages of n BasicBlocks at width, 2*width and 4*width
channels (stride 2 at the start of stages 2 and 3), global average pool, linear; depth = 6n + 2.
Shortcuts that change shape are a 1x1 conv + BN (option B of the paper).

``conv`` picks the convolution of the blocks by its name in the conv registry
(``dgclab.layers.CONV_KINDS``), so that the variants differ in one argument and can be compared
at equal depth and width; every block conv and shortcut conv is ``make_conv(conv, ...)``:

* ``"dense"``: ``nn.Conv2d``.
* ``"group"``: ``GroupConv2d(groups=heads, shuffle=True)``, the static baseline (1/heads of
  the MACs and weights).
* ``"dgc"``: the DyResNet block of Su et al., ECCV 2020, arXiv 2007.04242: every block conv and
  shortcut conv is a ``DGCConv2d`` with its own BN-ReLU pre-activation, and the shortcut's BN
  keeps the official name ``downsample.1.norm`` (``ShortcutNorm``), as for every kind that
  registers itself ``preactivated``.
* any kind registered later, with ``heads`` as its number of groups (``kind_options``).

The stem stays a plain conv in all three. Init is torchvision's (kaiming fan_out, BN 1/0).
Every ReLU is its own module, called once per forward, so forward hooks see each activation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..checks import check_int
from ..layers import conv_kind, kind_options, make_conv
from .dyresnet import ShortcutNorm, init_resnet_

__all__ = ["ResNetCifar", "BasicBlock", "resnet_cifar", "resnet8", "resnet14", "resnet20"]

# (in_channels, out_channels, kernel_size, stride, padding) -> conv module without bias
ConvFactory = Callable[[int, int, int, int, int], nn.Module]


class BasicBlock(nn.Module):
    """``conv3x3 -> bn1 -> relu1 -> conv3x3 -> bn2 -> + shortcut -> relu2``.

    Args:
        in_channels, out_channels: C_in, C_out.
        stride: of the first conv and of the shortcut.
        conv: builds the block's convs (the 3x3s and the 1x1 shortcut conv).
        shortcut_norm: builds the shortcut conv's BN from its channel count (``ShortcutNorm``
            for convs with their own pre-activation, whose official blocks name it
            ``downsample.1.norm``).

    Shapes: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, conv: ConvFactory,
        shortcut_norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
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
                conv(in_channels, out_channels, 1, stride, 0), shortcut_norm(out_channels)
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
        conv: str = "dense",
        in_channels: int = 3,
        num_classes: int = 10,
        heads: int = 4,
        pruning_rate: float = 0.75,
        squeeze_rate: int = 16,
    ) -> None:
        super().__init__()
        spec = conv_kind(conv)  # ValueError listing the known kinds
        depth = check_int("depth", depth)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got depth={depth!r}"
            )
        if not isinstance(width, int) or width <= 0:
            raise ValueError(f"width must be a positive int, got width={width!r}")
        self.depth = depth
        self.conv = conv
        n = (depth - 2) // 6

        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        options = kind_options(conv, heads, pruning_rate, squeeze_rate)

        def factory(c_in: int, c_out: int, k: int, s: int, p: int) -> nn.Module:
            return make_conv(conv, c_in, c_out, k, s, p, **options)

        norm = ShortcutNorm if spec.preactivated else nn.BatchNorm2d
        channels = width
        for i, stage_width in enumerate((width, 2 * width, 4 * width), start=1):
            stride = 1 if i == 1 else 2
            blocks = [BasicBlock(channels, stage_width, stride, conv=factory, shortcut_norm=norm)]
            blocks += [
                BasicBlock(stage_width, stage_width, 1, conv=factory, shortcut_norm=norm)
                for _ in range(n - 1)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            channels = stage_width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 4*width, H/4, W/4)
        return self.fc(self.avgpool(x).flatten(1))  # (B, num_classes)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, conv={self.conv!r}"


def resnet_cifar(
    depth: int,
    width: int = 16,
    conv: str = "dense",
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
        conv: a kind of ``dgclab.layers.CONV_KINDS``: ``"dense"``, ``"group"``
            (``GroupConv2d``, groups=heads, shuffle), ``"dgc"`` (``DGCConv2d`` blocks as in
            DyResNet) or one registered later.
        in_channels: 3 for CIFAR, 1 for Fashion-MNIST.
        num_classes: outputs of ``fc``.
        heads: DGC heads, or the number of groups of any other grouping kind.
        pruning_rate, squeeze_rate: of every DGC layer (kinds that have these options).

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
