"""Models by name, for the command line and the trainer: ``build_model("resnet20", ...)``."""

from __future__ import annotations

import math

import torch.nn as nn

from .basicnet import BASICNET_HALF_WIDTHS, basicnet
from .dydensenet import dydensenet74, dydensenet86
from .dyresnet import dyresnet18
from .resnet_cifar import resnet_cifar

__all__ = ["MODEL_NAMES", "build_model"]

MODEL_NAMES = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
               "dydensenet86", "dydensenet74", "dyresnet18", "basicnet", "basicnet-half")


def _replace_stem(model: nn.Module, attr_path: str, in_channels: int) -> None:
    """Give a 3-channel stem conv another number of input channels (same init rule)."""
    parent_path, _, name = attr_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old: nn.Conv2d = getattr(parent, name)
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=False)
    n = old.kernel_size[0] * old.kernel_size[1] * old.out_channels
    nn.init.normal_(new.weight, 0.0, math.sqrt(2.0 / n))
    setattr(parent, name, new)


def build_model(name: str, *, in_channels: int, num_classes: int, width: int = 16,
                conv: str = "dgc", heads: int = 4, pruning_rate: float = 0.75) -> nn.Module:
    """A network by name.

    ``resnetN`` is ``resnet_cifar(N, width, conv, ...)``; ``dydensenet86`` / ``dydensenet74`` /
    ``dyresnet18`` are the paper's DGC networks (``width`` and ``conv`` do not apply; a stem for
    ``in_channels != 3`` is swapped in). ``basicnet`` is the plain net of the sparsity study
    (SPEC §7; ``width``, ``conv``, ``heads`` and ``pruning_rate`` do not apply), and
    ``basicnet-half`` the same at half the widths (``BASICNET_HALF_WIDTHS``).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}")
    if name == "basicnet":
        return basicnet(in_channels=in_channels, num_classes=num_classes)
    if name == "basicnet-half":
        return basicnet(in_channels=in_channels, num_classes=num_classes,
                        widths=BASICNET_HALF_WIDTHS)
    if name.startswith("resnet"):
        return resnet_cifar(int(name[len("resnet"):]), width=width, conv=conv,
                            in_channels=in_channels, num_classes=num_classes, heads=heads,
                            pruning_rate=pruning_rate)
    if conv != "dgc":
        raise ValueError(f"{name} is a DGC network; conv must be 'dgc', got conv={conv!r}")
    if name == "dyresnet18":
        model = dyresnet18(num_classes, pruning_rate=pruning_rate, heads=heads)
        stem = "conv1"
    else:
        make = dydensenet86 if name == "dydensenet86" else dydensenet74
        model = make(num_classes, heads=heads, pruning_rate=pruning_rate)
        stem = "features.init_conv"
    if in_channels != 3:
        _replace_stem(model, stem, in_channels)
    return model
