"""DyResNet-18: ResNet-18 whose block convs and downsample convs are DGC layers.

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242 (SPEC §1.3), on ResNet-18 (He, Zhang, Ren, Sun,
"Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385).

Module names follow the official ``models/dynamic_resnet.py`` (itself torchvision's layout) so
that the official state dict maps key for key: ``conv1, bn1`` (stem), ``layer{1..4}.{0,1}``
(blocks with ``conv1, bn1, conv2, bn2``, and ``downsample.0`` = DGC 1x1,
``downsample.1.norm`` = its BN), ``fc``.

Fidelity quirk kept on purpose: every DGC layer has its own BN-ReLU pre-activation, and the
blocks keep their BNs after the convs, so two BNs sit between consecutive convs and the
downsample shortcut contains a ReLU (inside its DGC layer).

Differences from the official code that change no key and no number: ``forward`` returns the
logits only (the lasso terms stay on the DGC layers, see ``dgclab.layers.saliency_loss``), and
each ReLU outside the DGC layers is its own non-in-place module, called once per forward, so
forward hooks (MAC counters, recorders, Captum) see every activation under its own name.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import DGCConv2d

__all__ = ["DyResNet", "DGCBasicBlock", "ShortcutNorm", "dyresnet18"]


class ShortcutNorm(nn.Module):
    """The BN after a DGC downsample conv, wrapped so that its keys read ``downsample.1.norm.*``
    (the official ``Norm_after_downsample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class DGCBasicBlock(nn.Module):
    """ResNet BasicBlock with DGC convs, as in the official DyResNet.

    ``DGC conv1 (own BN-ReLU inside) -> bn1 -> relu1 -> DGC conv2 -> bn2 -> + shortcut -> relu2``;
    where the shape changes the shortcut is ``DGC 1x1 (stride) -> BN``.

    Args:
        in_channels, out_channels: C_in, C_out (both divisible by ``heads``).
        stride: of conv1 and of the shortcut conv.
        heads, pruning_rate, squeeze_rate: passed to every DGC layer.

    Shapes: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        heads: int = 4,
        pruning_rate: float = 0.55,
        squeeze_rate: int = 16,
    ) -> None:
        super().__init__()
        dgc = dict(heads=heads, squeeze_rate=squeeze_rate, pruning_rate=pruning_rate)
        self.conv1 = DGCConv2d(in_channels, out_channels, 3, stride=stride, padding=1, **dgc)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = DGCConv2d(out_channels, out_channels, 3, padding=1, **dgc)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                DGCConv2d(in_channels, out_channels, 1, stride=stride, **dgc),
                ShortcutNorm(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


def init_resnet_(model: nn.Module) -> None:
    """torchvision's ResNet init: convs kaiming-normal fan_out (ReLU gain), BN weight 1 bias 0.

    A DGC head conv counts its own ``out_channels`` (C_out / heads) as fan_out; the saliency MLPs
    are ``nn.Linear`` and keep their init (fc2 bias 1.0), as does the classifier.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DyResNet(nn.Module):
    """ImageNet ResNet with DGC BasicBlocks (SPEC §1.3 "DyResNet-18 in detail").

    Stem: Conv 7x7/2 (3 -> 64, no bias) + BN + ReLU + MaxPool 3x3/2 pad 1 (all plain); four
    stages of ``blocks[i]`` DGC BasicBlocks at 64, 128, 256, 512 channels (stride 2 from the
    second stage); adaptive average pool; ``fc``.

    Args:
        blocks: BasicBlocks per stage, (2, 2, 2, 2) for ResNet-18.
        num_classes: outputs of ``fc``.
        heads, pruning_rate, squeeze_rate: passed to every DGC layer.

    Shapes: (B, 3, H, W) -> (B, num_classes) logits.
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        *,
        num_classes: int = 1000,
        heads: int = 4,
        pruning_rate: float = 0.55,
        squeeze_rate: int = 16,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(not isinstance(n, int) or n <= 0 for n in blocks):
            raise ValueError(f"blocks must be 4 positive ints, got blocks={blocks}")
        dgc = dict(heads=heads, squeeze_rate=squeeze_rate, pruning_rate=pruning_rate)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stride = 1 if i == 1 else 2
            stage = [DGCBasicBlock(channels, width, stride, **dgc)]
            stage += [DGCBasicBlock(width, width, **dgc) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        init_resnet_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, H/32, W/32)
        return self.fc(self.avgpool(x).flatten(1))  # (B, num_classes)


def dyresnet18(
    num_classes: int = 1000,
    pruning_rate: float = 0.55,
    heads: int = 4,
    squeeze_rate: int = 16,
) -> DyResNet:
    """DyResNet-18 as released (ImageNet, pruning rate 0.55): 521 state-dict entries.

    Example:
        >>> model = dyresnet18(num_classes=10)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """
    return DyResNet(
        (2, 2, 2, 2),
        num_classes=num_classes,
        heads=heads,
        pruning_rate=pruning_rate,
        squeeze_rate=squeeze_rate,
    )
