"""DyDenseNet: the CondenseNet layout with a DGC 1x1 conv in every dense layer.

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242 (SPEC §1.3). The layout is CondenseNet's
(Huang, Liu, van der Maaten, Weinberger, CVPR 2018, arXiv 1711.09224): dense blocks without
compression, transitions that only pool, growth that doubles from block to block.

Module names follow the official ``models/dynamic_densenet.py`` so that the official state dict
maps key for key (``load_official``):

    features.init_conv                                  plain 3x3 conv, 3 -> 2 * growth[0]
    features.denseblock_{i}.denselayer_{j}.conv_1       DGC 1x1, C -> bottleneck * growth
    features.denseblock_{i}.denselayer_{j}.conv_2       BN-ReLU-Conv 3x3 (groups=group_3x3)
    features.transition_{i}                             AvgPool 2x2 (no weights)
    bn_last, relu_last, pool_last, classifier

Differences from the official code, none of which changes a key or a number: ``forward``
returns the logits only (each DGC layer keeps its lasso term, summed by
``dgclab.layers.saliency_loss``); the final pool is adaptive (equal to the official
``AvgPool2d(8)`` on 32x32 CIFAR and ``AvgPool2d(7)`` on 224x224 ImageNet, and it also works on
other input sizes); ReLUs outside the DGC layers are not in-place, so hooks see clean tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from ..checks import check_int, check_type
from ..layers import KernelConv2d, conv_kind, make_conv

__all__ = ["DenseNet", "DyDenseNet", "DenseLayer", "dydensenet", "dydensenet86", "dydensenet74"]

Data = Literal["cifar", "imagenet"]
DATA = ("cifar", "imagenet")


class BNReLUConv(nn.Sequential):
    """BN -> ReLU -> Conv (no bias): the official ``Conv``, keys ``norm.*`` and ``conv.weight``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = KernelConv2d(  # nn.Conv2d; groups > 1: the C++ kernel where it pays
            in_channels, out_channels, kernel_size, padding=padding, groups=groups, bias=False
        )


class DenseLayer(nn.Module):
    """1x1 conv (C -> bottleneck * growth) -> BN-ReLU-GroupConv 3x3 (-> growth) -> concatenate.

    The 1x1 conv is a registered conv kind that carries its own BN-ReLU pre-activation (DGC in
    DyDenseNet, CondenseNet's learned group conv), so the bottleneck has the usual BN-ReLU-Conv
    form twice.

    Args:
        in_channels, growth: C and the channels the layer adds.
        bottleneck: the 1x1 conv widens to ``bottleneck * growth`` channels.
        group_3x3: groups of the static 3x3 conv.
        conv_1x1: a kind of ``dgclab.layers.CONV_KINDS`` registered ``preactivated``.
        options: the kind's own options (``make_conv``).

    Shapes: (B, C, H, W) -> (B, C + growth, H, W).
    """

    def __init__(self, in_channels: int, growth: int, *, bottleneck: int, group_3x3: int,
                 conv_1x1: str = "dgc", **options) -> None:
        super().__init__()
        width = bottleneck * growth
        self.conv_1 = make_conv(conv_1x1, in_channels, width, 1, **options)
        self.conv_2 = BNReLUConv(width, growth, kernel_size=3, padding=1, groups=group_3x3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv_2(self.conv_1(x))  # (B, growth, H, W)
        return torch.cat([x, new], dim=1)  # (B, C + growth, H, W)


class DenseNet(nn.Module):
    """The CondenseNet layout with any pre-activated 1x1 conv kind in its dense layers.

    DyDenseNet (``conv_1x1="dgc"``) and CondenseNet (``"lgc"``, ``condensenet.py``) are this
    network with their own 1x1 layer; the module names are the official ones (module docstring).

    Args:
        stages: dense layers per block, e.g. (14, 14, 14).
        growth: growth rate per block, same length as ``stages``, e.g. (8, 16, 32).
        conv_1x1: the 1x1 conv's kind (registered ``preactivated``: it applies its own BN-ReLU).
        conv_options: that kind's options (``make_conv``).
        bottleneck: the 1x1 conv widens to ``bottleneck * growth`` channels.
        group_3x3: groups of the static 3x3 conv.
        num_classes: outputs of the classifier.
        data: ``"cifar"`` (stem stride 1, for 32x32) or ``"imagenet"`` (stem stride 2, 224x224).

    Shapes: (B, 3, H, W) -> (B, num_classes) logits.
    """

    def __init__(
        self,
        stages: Sequence[int],
        growth: Sequence[int],
        *,
        conv_1x1: str,
        conv_options: dict | None = None,
        bottleneck: int = 4,
        group_3x3: int = 4,
        num_classes: int = 10,
        data: Data = "cifar",
    ) -> None:
        super().__init__()
        for name, values in (("stages", stages), ("growth", growth)):
            check_type(name, values, (list, tuple))
        stages, growth = list(stages), list(growth)
        if not stages or len(stages) != len(growth):
            raise ValueError(
                f"stages and growth must be non-empty and of equal length, got stages={stages}, "
                f"growth={growth}"
            )
        for name, values in (("stages", stages), ("growth", growth)):
            for i, v in enumerate(values):
                check_int(f"{name}[{i}]", v, min=1)
        if data not in DATA:
            raise ValueError(f"data must be one of {DATA}, got data={data!r}")
        if not conv_kind(conv_1x1).preactivated:
            raise ValueError(f"conv_1x1 must be a kind that applies its own BN-ReLU, got "
                             f"conv_1x1={conv_1x1!r}")
        self.stages = stages
        self.growth = growth
        self.data = data

        channels = 2 * growth[0]
        self.features = nn.Sequential()
        self.features.add_module(
            "init_conv",
            nn.Conv2d(
                3, channels, 3, stride=1 if data == "cifar" else 2, padding=1, bias=False
            ),
        )
        for i, (num_layers, rate) in enumerate(zip(stages, growth), start=1):
            block = nn.Sequential()
            for j in range(1, num_layers + 1):
                block.add_module(f"denselayer_{j}", DenseLayer(
                    channels, rate, bottleneck=bottleneck, group_3x3=group_3x3,
                    conv_1x1=conv_1x1, **(conv_options or {})))
                channels += rate
            self.features.add_module(f"denseblock_{i}", block)
            if i < len(stages):
                self.features.add_module(f"transition_{i}", nn.AvgPool2d(2, stride=2))
        self.num_features = channels

        self.bn_last = nn.BatchNorm2d(channels)
        self.relu_last = nn.ReLU()
        self.pool_last = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: convs N(0, sqrt(2 / (k*k*out))), BN 1/0, classifier bias 0.

        A DGC head conv counts its own ``out_channels`` (C_out / heads). The saliency MLPs are
        ``nn.Linear`` and keep the init ``DGCHead`` gave them (fc2 bias 1.0).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, num_features, H', W')
        x = self.pool_last(self.relu_last(self.bn_last(x)))  # (B, num_features, 1, 1)
        return self.classifier(x.flatten(1))  # (B, num_classes)

    def extra_repr(self) -> str:
        return f"stages={self.stages}, growth={self.growth}, data={self.data!r}"


class DyDenseNet(DenseNet):
    """Dynamic DenseNet (SPEC §1.3): the layout with a DGC 1x1. Build it with ``dydensenet`` or
    a preset.

    Args:
        stages, growth, bottleneck, group_3x3, num_classes, data: as ``DenseNet``.
        heads, pruning_rate, squeeze_rate: passed to every DGC layer (``DGCConv2d``).
    """

    def __init__(
        self,
        stages: Sequence[int],
        growth: Sequence[int],
        *,
        bottleneck: int = 4,
        group_3x3: int = 4,
        heads: int = 4,
        pruning_rate: float = 0.75,
        squeeze_rate: int = 16,
        num_classes: int = 10,
        data: Data = "cifar",
    ) -> None:
        dgc = {"heads": heads, "squeeze_rate": squeeze_rate, "pruning_rate": pruning_rate}
        super().__init__(stages, growth, conv_1x1="dgc", conv_options=dgc,
                         bottleneck=bottleneck, group_3x3=group_3x3, num_classes=num_classes,
                         data=data)


def dydensenet(
    stages: Sequence[int],
    growth: Sequence[int],
    bottleneck: int = 4,
    group_3x3: int = 4,
    heads: int = 4,
    pruning_rate: float = 0.75,
    squeeze_rate: int = 16,
    num_classes: int = 10,
    data: Data = "cifar",
) -> DyDenseNet:
    """A DyDenseNet of any layout; see ``DyDenseNet`` for the arguments.

    Example:
        >>> model = dydensenet([2, 2, 2], [8, 16, 32], num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return DyDenseNet(
        stages,
        growth,
        bottleneck=bottleneck,
        group_3x3=group_3x3,
        heads=heads,
        pruning_rate=pruning_rate,
        squeeze_rate=squeeze_rate,
        num_classes=num_classes,
        data=data,
    )


def dydensenet86(num_classes: int = 10, **kwargs) -> DyDenseNet:
    """DyDenseNet-86 for CIFAR: stages 14-14-14, growth 8-16-32 (4,264,810 params at 10 classes).

    ``kwargs`` go to ``dydensenet`` (heads, pruning_rate, ...).
    """
    return dydensenet([14, 14, 14], [8, 16, 32], num_classes=num_classes, data="cifar", **kwargs)


def dydensenet74(num_classes: int = 1000, **kwargs) -> DyDenseNet:
    """The ImageNet DyDenseNet: stages 4-6-8-10-8, growth 8-16-32-64-128, stem stride 2.

    ``kwargs`` go to ``dydensenet`` (heads, pruning_rate, ...).
    """
    return dydensenet(
        [4, 6, 8, 10, 8], [8, 16, 32, 64, 128], num_classes=num_classes, data="imagenet", **kwargs
    )
