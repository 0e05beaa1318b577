"""Turn any CNN into its dynamic-group (DGC) or static-group twin by swapping its convs.

DGC: Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating
Convolutional Neural Networks", ECCV 2020, arXiv 2007.04242. Static group conv with a channel
shuffle: Zhang, Zhou, Lin, Sun, "ShuffleNet", CVPR 2018, arXiv 1707.01083.

``convert`` replaces, in place, every ``nn.Conv2d`` it can by a conv of a grouping kind of the
conv registry (``dgclab.layers.CONV_KINDS``: ``DGCConv2d``, ``GroupConv2d(shuffle=True)`` or
one registered later) with the same channels, kernel, stride, padding and dilation, and says
why it left the others alone.

The result is a new architecture to train from scratch, not the old network made faster:

* a ``DGCConv2d`` carries its own BN-ReLU pre-activation, so converting to DGC inserts a
  BN-ReLU before every converted conv (in a torchvision ResNet the input of a block's conv1 is
  then normalised and rectified twice);
* neither target can hold a dense conv's weights (a head sees all inputs but owns C_out/heads
  filters; a group sees C_in/groups inputs), so no weight is copied: every new conv starts from
  the layer's own init.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch.nn as nn

from ..checks import check_float, check_int, check_type
from ..layers import CONV_KINDS, GroupingConv, conv_kind, kind_options, make_conv

__all__ = ["Conversion", "convert"]


class Conversion(NamedTuple):
    """What ``convert`` did: ``model, converted, skipped = convert(...)``."""

    model: nn.Module
    """The model, modified in place."""
    converted: list[str]
    """Names (``named_modules``) of the convs that were replaced."""
    skipped: dict[str, str]
    """Name -> reason, for every conv left as it was."""


def _convs(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(name, parent, attribute, conv) for every conv-like module, without entering grouping
    layers (DGC, GroupConv2d, ...: their inner convs are part of them).

    Walks ``_modules`` rather than ``named_children()``, which lists a module registered under
    two names only once: every attribute holding a conv must be rewired.
    """
    for attr, child in module._modules.items():
        if child is None:
            continue
        name = f"{prefix}.{attr}" if prefix else attr
        if isinstance(child, (nn.Conv2d, GroupingConv)):
            yield name, module, attr, child
        else:
            yield from _convs(child, name)


def _skip_reason(conv: nn.Conv2d, divisor: int, divisor_name: str) -> str | None:
    """Why ``conv`` cannot become a grouped or dynamic conv, or None if it can."""
    if isinstance(conv, GroupingConv):
        return f"already a {type(conv).__name__} ({conv.channel_groups} groups)"
    if conv.groups != 1:
        return f"already grouped (groups={conv.groups})"
    if conv.bias is not None:
        return "has a bias (the DGC and group convs have none)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} is a string; only explicit padding is converted"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}; only zero padding is converted"
    for side in ("in_channels", "out_channels"):
        channels = getattr(conv, side)
        if channels % divisor:
            return f"{side}={channels} is not divisible by {divisor_name}={divisor}"
    return None


def convert(
    model: nn.Module,
    to: str = "dgc",
    heads: int = 4,
    groups: int | None = None,
    pruning_rate: float = 0.75,
    squeeze_rate: int = 16,
    skip: Iterable[str] = (),
) -> Conversion:
    """Replace every convertible ``nn.Conv2d`` of ``model`` by a DGC or static group conv.

    Each replacement keeps in/out channels, kernel, stride, padding and dilation, so every
    activation keeps its shape; it lands on the old weight's device and dtype and in the old
    module's train/eval mode. A conv shared by several parents is replaced by one shared new
    layer. No weights are copied (see the module docstring: this is a new network to train;
    for DGC it also adds a BN-ReLU before each converted conv).

    Skipped, with the reason recorded: convs named in ``skip``; already grouped ones
    (``groups != 1``, ``GroupConv2d``, ``DGCConv2d``, whose insides are never entered); convs
    with a bias; string padding (``"same"``) or non-zero padding modes; channels not divisible
    by ``heads`` (DGC) or ``groups``; and any conv for which ``DGCConv2d`` itself refuses the
    configuration (e.g. a 0-wide saliency MLP; its message becomes the reason).

    Args:
        model: any ``nn.Module`` holding ``nn.Conv2d`` layers (not a bare conv: it cannot be
            replaced in place).
        to: a grouping kind of ``CONV_KINDS``: ``"dgc"`` (``DGCConv2d``), ``"group"``
            (``GroupConv2d``, shuffle=True) or one registered later.
        heads: DGC heads (the number of groups of a kind other than ``"group"``).
        groups: groups of ``GroupConv2d``; defaults to ``heads``.
        pruning_rate, squeeze_rate: of every new DGC layer.
        skip: module names (as in ``model.named_modules()``) to leave alone.

    Returns:
        ``Conversion(model, converted, skipped)``: the same model object, the names replaced,
        and name -> reason for the convs left alone.

    Example:
        >>> import torchvision
        >>> model, converted, skipped = convert(torchvision.models.resnet18(num_classes=10))
        >>> skipped
        {'conv1': 'in_channels=3 is not divisible by heads=4'}
    """
    check_type("model", model, nn.Module)
    targets = tuple(name for name, spec in CONV_KINDS.items() if spec.grouping)
    if to not in targets:
        raise ValueError(f"to must be one of {targets}, got to={to!r}")
    if isinstance(model, (nn.Conv2d, GroupingConv)):
        raise ValueError(
            f"convert replaces the convs inside a model, got a bare {type(model).__name__}; "
            "wrap it, e.g. nn.Sequential(conv)"
        )
    heads = check_int("heads", heads, min=1)
    groups = heads if groups is None else check_int("groups", groups, min=1)
    check_float("pruning_rate", pruning_rate, min=0, max=1, max_inclusive=False)
    check_int("squeeze_rate", squeeze_rate, min=1)
    divisor_name = conv_kind(to).groups_option
    count = groups if divisor_name == "groups" else heads
    options = kind_options(to, count, pruning_rate, squeeze_rate)
    divisor = options.get(divisor_name, 1)
    skip = {skip} if isinstance(skip, str) else set(skip)
    unknown = skip - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"skip names modules that model does not have: {sorted(unknown)}")

    converted: list[str] = []
    skipped: dict[str, str] = {}
    replaced: dict[int, nn.Module] = {}  # id(old conv) -> its replacement, for shared convs
    for name, parent, attr, conv in list(_convs(model)):
        if id(conv) in replaced:
            setattr(parent, attr, replaced[id(conv)])
            converted.append(name)
            continue
        reason = "listed in skip" if name in skip else _skip_reason(conv, divisor, divisor_name)
        if reason is None:
            try:
                new = make_conv(to, conv.in_channels, conv.out_channels, conv.kernel_size,
                                conv.stride, conv.padding, conv.dilation, **options)
            except ValueError as err:  # e.g. DGC's 0-wide saliency MLP
                reason = str(err)
        if reason is not None:
            skipped[name] = reason
            continue
        new = new.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)
        setattr(parent, attr, new)
        replaced[id(conv)] = new
        converted.append(name)
    return Conversion(model, converted, skipped)

