"""CondenseNet: the DenseNet layout with a learned group conv 1x1 in every dense layer.

Huang, Liu, van der Maaten, Weinberger, "CondenseNet: An Efficient DenseNet using Learned Group
Convolutions", CVPR 2018, arXiv 1711.09224 (SPEC §2). DGC's DyDenseNet (``dydensenet.py``)
took this layout and put a DGC 1x1 where CondenseNet has its LGC 1x1, so the two networks
differ in that layer alone and are one class here, ``DenseNet`` (``dydensenet.py``), with the
1x1 conv's kind from the conv registry.

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

import torch.nn as nn

from ..checks import check_type
from ..layers.lgc import CondensedConv2d, LearnedGroupConv2d
from .dydensenet import DenseNet

__all__ = [
    "CondenseNet",
    "condensenet",
    "condensenet86",
    "condense",
    "official_param_count",
]


class CondenseNet(DenseNet):
    """CondenseNet for CIFAR (SPEC §2): ``DenseNet`` with an LGC 1x1. Build it with
    ``condensenet`` or ``condensenet86``.

    Args:
        stages, growth, bottleneck, group_3x3, num_classes: as ``DenseNet``.
        group_1x1: G of every LGC layer.
        condense_factor: C of every LGC layer (default G).
        dropout: the LGC layers' dropout rate.
        group_lasso: whether the LGC layers add their group lasso to the loss.

    The stem is a stride-1 3x3 conv to ``2 * growth[0]`` channels; the init is DyDenseNet's
    (``DenseNet.reset_parameters``): convs N(0, sqrt(2 / (k*k*out))), BN 1/0, classifier
    bias 0.
    """

    def __init__(self, stages: Sequence[int], growth: Sequence[int], *, bottleneck: int = 4,
                 group_1x1: int = 4, group_3x3: int = 4, condense_factor: int | None = None,
                 dropout: float = 0.0, group_lasso: bool = False, num_classes: int = 10) -> None:
        lgc = {"groups": group_1x1, "condense_factor": condense_factor, "dropout": dropout,
               "group_lasso": group_lasso}
        super().__init__(stages, growth, conv_1x1="lgc", conv_options=lgc,
                         bottleneck=bottleneck, group_3x3=group_3x3, num_classes=num_classes,
                         data="cifar")


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
        new.set_submodule(name, CondensedConv2d.from_learned(new.get_submodule(name)))
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
