"""BasicNet: the plain conv-BN-ReLU chain of dgclab's implicit-sparsity study (SPEC §7).

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495, study a small "BasicNet". Its exact definition was not
retrievable; this is dgclab's own BasicNet-like net, as SPEC §7 fixes it: seven 3x3 conv-BN-ReLU
layers of widths 32-64-64-128-128-256-256, a 2x2 max pool after layers 2, 4 and 6, a global
average pool and one linear layer.

The whole net is one ``nn.Sequential`` (``features``, ``pool``, ``flatten``, ``fc``), and
``features`` is a flat chain of named modules (``conv1, bn1, relu1, conv2, bn2, relu2, pool2,
...``), so the order in which modules run is the order in which they are registered: that is
what lets ``dgclab.analysis.remove_dead_filters`` walk it and cut dead filters out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn as nn

from .dyresnet import init_resnet_

__all__ = ["BasicNet", "basicnet", "BASICNET_WIDTHS", "BASICNET_HALF_WIDTHS", "BASICNET_POOL_AFTER"]

BASICNET_WIDTHS = (32, 64, 64, 128, 128, 256, 256)  # SPEC §7
# Half the widths (464 BN-ReLU filters, a quarter of the MACs): the sparsity pilot's net, and the
# model ``basicnet-half`` of the study's pilot budget (data/sparsity-fmnist/PILOT.md).
BASICNET_HALF_WIDTHS = tuple(w // 2 for w in BASICNET_WIDTHS)
BASICNET_POOL_AFTER = (2, 4, 6)  # 2x2/2 max pool after these layers (1-based)


class BasicNet(nn.Sequential):
    """Conv3x3-BN-ReLU layers with max pools, global average pool, linear.

    See ``basicnet`` for the arguments. Children: ``features`` (``nn.Sequential`` of
    ``conv{i}``, ``bn{i}``, ``relu{i}`` and ``pool{i}`` after the layers of ``pool_after``),
    ``pool`` (``AdaptiveAvgPool2d(1)``), ``flatten``, ``fc``.

    Shapes: (B, in_channels, H, W) -> (B, num_classes); H and W must survive the pools (>= 8
    for the default three pools).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = BASICNET_WIDTHS,
        pool_after: Sequence[int] = BASICNET_POOL_AFTER,
    ) -> None:
        widths = tuple(widths)
        pool_after = tuple(pool_after)
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(f"widths must be positive ints, got widths={widths!r}")
        if not all(isinstance(p, int) and 1 <= p <= len(widths) for p in pool_after):
            raise ValueError(
                f"pool_after must name layers 1..{len(widths)}, got pool_after={pool_after!r}"
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, width in enumerate(widths, start=1):
            # No conv bias: the BN's beta plays that role.
            layers[f"conv{i}"] = nn.Conv2d(channels, width, 3, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"relu{i}"] = nn.ReLU()
            if i in pool_after:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            channels = width
        super().__init__(
            OrderedDict(
                features=nn.Sequential(layers),
                pool=nn.AdaptiveAvgPool2d(1),  # (B, C, 1, 1)
                flatten=nn.Flatten(1),  # (B, C)
                fc=nn.Linear(channels, num_classes),
            )
        )
        self.widths = widths
        self.pool_after = pool_after
        init_resnet_(self)  # torchvision's init, as the ResNets here

    def extra_repr(self) -> str:
        return f"widths={self.widths}, pool_after={self.pool_after}"


def basicnet(
    in_channels: int = 1,
    num_classes: int = 10,
    widths: Sequence[int] = BASICNET_WIDTHS,
    pool_after: Sequence[int] = BASICNET_POOL_AFTER,
) -> BasicNet:
    """The BasicNet-like net of SPEC §7.

    Args:
        in_channels: 1 for Fashion-MNIST, 3 for CIFAR.
        num_classes: outputs of ``fc``.
        widths: output channels of the conv layers (SPEC §7: 32-64-64-128-128-256-256).
        pool_after: 1-based layers followed by a 2x2/2 max pool (SPEC §7: 2, 4, 6).

    Returns:
        A ``BasicNet``: (B, in_channels, H, W) -> (B, num_classes) logits.

    Example:
        >>> model = basicnet(in_channels=1)
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return BasicNet(in_channels, num_classes, widths, pool_after)
