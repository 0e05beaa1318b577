"""CondenseNet: the DenseNet layout with a learned group conv 1x1 in every dense layer.

Huang, Liu, van der Maaten, Weinberger, "CondenseNet: An Efficient DenseNet using Learned Group
Convolutions", CVPR 2018, arXiv 1711.09224 (SPEC §2). DGC's DyDenseNet (``dydensenet.py``)
took this layout and put a DGC 1x1 where CondenseNet has its LGC 1x1, so the two networks
differ in that layer alone and are built from the same parts here: the static
BN-ReLU-GroupConv 3x3 (``BNReLUConv``) and DyDenseNet's init.

    features.init_conv                                  plain 3x3 conv, 3 -> 2 * growth[0]
    features.denseblock_{i}.denselayer_{j}.conv_1       LGC 1x1, C -> bottleneck * growth
    features.denseblock_{i}.denselayer_{j}.conv_2       BN-ReLU-Conv 3x3 (groups=group_3x3)
    features.transition_{i}                             AvgPool 2x2 (no weights)
    bn_last, relu_last, pool_last, classifier

``condense(model)`` turns a trained (or any) CondenseNet, or any model with LGC layers, into
its real group conv form (``CondensedConv2d``). The official conversion also drops half of the
classifier's inputs by L1 norm without retraining (CondensingLinear); dgclab does not.

CIFAR CondenseNet-86 (``condensenet86``): 65.8M MACs and 0.52M parameters in CondenseNet's
README, under its conventions: an LGC counts its dense conv's MACs and weights divided by C
(what the condensed network computes and stores), its ReLU over the input, BN no MACs
(``count_macs`` counts it so; ``official_param_count`` counts the parameters so).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..checks import check_type
from ..layers.lgc import CondensedConv2d, LearnedGroupConv2d
from .dydensenet import BNReLUConv, DyDenseNet

__all__ = [
    "CondenseNet",
    "CondenseLayer",
    "condensenet",
    "condensenet86",
    "condense",
    "official_param_count",
]


class CondenseLayer(nn.Module):
    """LGC 1x1 (C -> bottleneck * growth) -> BN-ReLU-GroupConv 3x3 (-> growth) -> concatenate.

    Shapes: (B, C, H, W) -> (B, C + growth, H, W).
    """

    def __init__(self, in_channels: int, growth: int, *, bottleneck: int, group_1x1: int,
                 group_3x3: int, condense_factor: int | None, dropout: float,
                 group_lasso: bool) -> None:
        super().__init__()
        width = bottleneck * growth
        self.conv_1 = LearnedGroupConv2d(in_channels, width, kernel_size=1, groups=group_1x1,
                                         condense_factor=condense_factor, dropout=dropout,
                                         group_lasso=group_lasso)
        self.conv_2 = BNReLUConv(width, growth, kernel_size=3, padding=1, groups=group_3x3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv_2(self.conv_1(x))  # (B, growth, H, W)
        return torch.cat([x, new], dim=1)  # (B, C + growth, H, W)


class CondenseNet(nn.Module):
    """CondenseNet for CIFAR (SPEC §2). Build it with ``condensenet`` or ``condensenet86``.

    Args:
        stages: dense layers per block, e.g. (14, 14, 14).
        growth: growth rate per block, same length as ``stages``, e.g. (8, 16, 32).
        bottleneck: the 1x1 LGC widens to ``bottleneck * growth`` channels.
        group_1x1: G of every LGC layer.
        group_3x3: groups of the static 3x3 conv.
        condense_factor: C of every LGC layer (default G).
        dropout: the LGC layers' dropout rate.
        group_lasso: whether the LGC layers add their group lasso to the loss.
        num_classes: outputs of the classifier.

    The stem is a stride-1 3x3 conv to ``2 * growth[0]`` channels; the init is DyDenseNet's
    (``DyDenseNet.reset_parameters``): convs N(0, sqrt(2 / (k*k*out))), BN 1/0, classifier
    bias 0.

    Shapes: (B, 3, H, W) -> (B, num_classes) logits.
    """

    def __init__(self, stages: Sequence[int], growth: Sequence[int], *, bottleneck: int = 4,
                 group_1x1: int = 4, group_3x3: int = 4, condense_factor: int | None = None,
                 dropout: float = 0.0, group_lasso: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        stages, growth = list(stages), list(growth)
        if not stages or len(stages) != len(growth):
            raise ValueError(f"stages and growth must be non-empty and of equal length, got "
                             f"stages={stages}, growth={growth}")
        for name, values in (("stages", stages), ("growth", growth)):
            if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"{name} must hold positive ints, got {name}={values}")
        self.stages, self.growth = stages, growth

        channels = 2 * growth[0]
        self.features = nn.Sequential()
        self.features.add_module("init_conv", nn.Conv2d(3, channels, 3, padding=1, bias=False))
        for i, (num_layers, rate) in enumerate(zip(stages, growth), start=1):
            block = nn.Sequential()
            for j in range(1, num_layers + 1):
                block.add_module(f"denselayer_{j}", CondenseLayer(
                    channels, rate, bottleneck=bottleneck, group_1x1=group_1x1,
                    group_3x3=group_3x3, condense_factor=condense_factor, dropout=dropout,
                    group_lasso=group_lasso))
                channels += rate
            self.features.add_module(f"denseblock_{i}", block)
            if i < len(stages):
                self.features.add_module(f"transition_{i}", nn.AvgPool2d(2, stride=2))
        self.num_features = channels

        self.bn_last = nn.BatchNorm2d(channels)
        self.relu_last = nn.ReLU()
        self.pool_last = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        DyDenseNet.reset_parameters(self)  # the same init, module by module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, num_features, H', W')
        x = self.pool_last(self.relu_last(self.bn_last(x)))  # (B, num_features, 1, 1)
        return self.classifier(x.flatten(1))  # (B, num_classes)

    def extra_repr(self) -> str:
        return f"stages={self.stages}, growth={self.growth}"


def condensenet(stages: Sequence[int], growth: Sequence[int], bottleneck: int = 4,
                group_1x1: int = 4, group_3x3: int = 4, condense_factor: int | None = None,
                dropout: float = 0.0, group_lasso: bool = False,
                num_classes: int = 10) -> CondenseNet:
    """A CondenseNet of any layout; see ``CondenseNet`` for the arguments.

    Example:
        >>> model = condensenet([2, 2, 2], [8, 16, 32])
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return CondenseNet(stages, growth, bottleneck=bottleneck, group_1x1=group_1x1,
                       group_3x3=group_3x3, condense_factor=condense_factor, dropout=dropout,
                       group_lasso=group_lasso, num_classes=num_classes)


def condensenet86(num_classes: int = 10, **kwargs) -> CondenseNet:
    """CondenseNet-86 for CIFAR: stages 14-14-14, growth 8-16-32, G = C = 4 (SPEC §2).

    65.8M MACs and 0.52M parameters under CondenseNet's conventions (module docstring).
    ``kwargs`` go to ``condensenet``.
    """
    return condensenet([14, 14, 14], [8, 16, 32], num_classes=num_classes, **kwargs)


def condense(model: nn.Module) -> nn.Module:
    """A copy of ``model`` where every ``LearnedGroupConv2d`` is its ``CondensedConv2d``.

    ``model`` is left unchanged. In eval mode the copy computes what ``model`` computes (with
    the masks in force, at any stage) with real group convs; the classifier is kept whole.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: an LGC layer whose groups read different numbers of channels.

    Example:
        >>> from dgclab.layers import set_progress
        >>> model = condensenet([2, 2, 2], [8, 16, 32]).eval()
        >>> set_progress(model, 1.0)  # every stage applied
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(condense(model)(x), model(x), atol=1e-5)
        True
    """
    check_type("model", model, nn.Module)
    if isinstance(model, LearnedGroupConv2d):
        return CondensedConv2d.from_learned(model)
    new = copy.deepcopy(model)
    names = [name for name, m in new.named_modules() if isinstance(m, LearnedGroupConv2d)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name)
        setattr(parent, child, CondensedConv2d.from_learned(getattr(parent, child)))
    return new


def official_param_count(model: nn.Module) -> int:
    """Parameters under CondenseNet's convention: an LGC's conv weight counts 1 / C of itself.

    What the condensed network stores in its convs (its BN keeps one copy of each kept channel
    here, C_in per LGC; the condensed BN duplicates shared ones). Every other parameter counts
    once; buffers (the masks) do not count.
    """
    check_type("model", model, nn.Module)
    total = 0
    lgc_weights = {}
    for m in model.modules():
        if isinstance(m, LearnedGroupConv2d):
            lgc_weights[id(m.conv.weight)] = m.condense_factor
    for p in model.parameters():
        c = lgc_weights.get(id(p))
        total += p.numel() // c if c else p.numel()
    return total
