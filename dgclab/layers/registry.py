"""The conv registry: every convolution kind dgclab can build, by name.

``make_conv(kind, in_channels, out_channels, kernel_size, stride, padding, **options)`` builds
a conv of any registered kind with the geometry of an ``nn.Conv2d``; the models
(``resnet_cifar``), ``convert``, the training config, the CLI's ``--conv`` choices and the
report all take a kind's name from ``CONV_KINDS`` and nothing else. A new method is one layer
file and one ``register_conv`` call (the README's "Adding a method").

The family shares two knobs that a network-level caller (a config, ``resnet_cifar``,
``convert``) sets for every conv at once: the number of groups (``heads`` in the configs, the
name the DGC paper uses) and DGC's ``pruning_rate`` / ``squeeze_rate``. ``kind_options`` maps
them onto a kind's own option names: a kind names its group-count option in
``groups_option``, and takes the others only if it has options of those names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch.nn as nn

from ..checks import check_bool, check_type
from .base import GroupingConv
from .dgc import DGCConv2d
from .group import GroupConv2d
from .lgc import LearnedGroupConv2d
from .scc import DepthwiseSlidingConv2d, SlidingChannelConv2d

__all__ = [
    "ConvKind", "CONV_KINDS", "register_conv", "unregister_conv", "conv_kind", "make_conv",
    "kind_options",
]


@dataclass(frozen=True)
class ConvKind:
    """One registered kind of convolution."""

    name: str
    """Its key in ``CONV_KINDS`` (and ``layer.kind`` for a grouping layer)."""
    build: Callable[..., nn.Module]
    """``build(in_channels, out_channels, kernel_size, stride, padding, dilation, **options)``."""
    layer_type: type
    """The kind's layer class: what ``build`` returns (``nn.Conv2d`` for dense), or the
    grouping layer inside it (``"scc"`` builds a depthwise conv + SCC for a k x k conv)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The kind's own options and their defaults."""
    groups_option: str | None = None
    """Which option sets the number of groups (``"heads"``, ``"groups"``); None for dense."""
    preactivated: bool = False
    """The layer applies its own BN-ReLU to its input (DGC): a ResNet block built from it keeps
    its shortcut BN under the official DyResNet name (``downsample.1.norm``)."""
    doc: str = ""
    """One line for ``--help`` and the README."""

    @property
    def grouping(self) -> bool:
        """Whether its layers implement the layer protocol (``GroupingConv``)."""
        return issubclass(self.layer_type, GroupingConv)


_KINDS: dict[str, ConvKind] = {}
CONV_KINDS: Mapping[str, ConvKind] = MappingProxyType(_KINDS)
"""Name -> ``ConvKind``, read-only: add kinds with ``register_conv``."""


def register_conv(
    name: str,
    build: Callable[..., nn.Module],
    layer_type: type,
    *,
    options: Mapping[str, Any] | None = None,
    groups_option: str | None = None,
    preactivated: bool = False,
    doc: str = "",
    replace: bool = False,
) -> ConvKind:
    """Register a conv kind under ``name`` (see ``ConvKind`` for the fields).

    A grouping ``layer_type`` must say the same ``kind``; ``groups_option`` must be one of
    ``options``.

    Raises:
        TypeError: a field of the wrong type.
        ValueError: ``name`` taken (pass ``replace=True`` to replace it), an empty name, a
            ``layer_type.kind`` that differs, or a ``groups_option`` not among the options.
    """
    check_type("name", name, str)
    check_type("layer_type", layer_type, type)
    options = dict(check_type("options", options, Mapping) if options is not None else {})
    replace = check_bool("replace", replace)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"name must be letters, digits, '-' or '_', got name={name!r}")
    if name in _KINDS and not replace:
        raise ValueError(f"conv kind {name!r} is registered already; pass replace=True")
    if not callable(build):
        raise TypeError(f"build must be callable, got {type(build).__name__}")
    if issubclass(layer_type, GroupingConv) and getattr(layer_type, "kind", None) != name:
        raise ValueError(
            f"{layer_type.__name__}.kind must be the registered name {name!r}, got "
            f"{getattr(layer_type, 'kind', None)!r}"
        )
    if groups_option is not None and groups_option not in options:
        raise ValueError(
            f"groups_option={groups_option!r} is not one of the options {sorted(options)}"
        )
    kind = ConvKind(name, build, layer_type, MappingProxyType(options), groups_option,
                    check_bool("preactivated", preactivated), doc)
    _KINDS[name] = kind
    return kind


def unregister_conv(name: str) -> ConvKind:
    """Remove the kind ``name`` from the registry (a notebook's or a test's own kind); return it.

    Raises:
        ValueError: an unknown kind (the message lists the known ones).
    """
    return _KINDS.pop(conv_kind(name).name)


def conv_kind(name: str) -> ConvKind:
    """The registered kind ``name``; TypeError for a name that is not a str, ValueError listing
    the known kinds for an unknown one."""
    if not isinstance(name, str):
        raise TypeError(f"a conv kind is a str, one of {tuple(_KINDS)}; got {type(name).__name__}")
    if name in _KINDS:
        return _KINDS[name]
    raise ValueError(f"unknown conv kind {name!r}; known kinds: {tuple(_KINDS)}")


def make_conv(
    kind: str,
    in_channels: int,
    out_channels: int,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    **options,
) -> nn.Module:
    """A new conv of the registered ``kind``, without bias.

    Args:
        kind: a key of ``CONV_KINDS`` (``"dense"``, ``"group"``, ``"dgc"``, ...).
        in_channels, out_channels, kernel_size, stride, padding, dilation: as ``nn.Conv2d``.
        options: the kind's own options (``CONV_KINDS[kind].options`` lists them with their
            defaults: ``groups=4`` for ``"group"``, ``heads``, ``pruning_rate``,
            ``squeeze_rate`` and ``execution`` for ``"dgc"``).

    Raises:
        ValueError: an unknown kind (the message lists the known ones), an option the kind
            does not have, or what the layer refuses.
        TypeError: what the layer refuses as a wrong type.

    Example:
        >>> make_conv("group", 64, 64, 3, padding=1, groups=4)
        GroupConv2d(64, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=4, ...)
    """
    spec = conv_kind(kind)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"conv kind {kind!r} has no options {unknown}; its options: {dict(spec.options)}"
        )
    return spec.build(in_channels, out_channels, kernel_size, stride, padding, dilation,
                      **(dict(spec.options) | options))


def kind_options(
    kind: str,
    heads: int | None = None,
    pruning_rate: float | None = None,
    squeeze_rate: int | None = None,
) -> dict[str, Any]:
    """The family's shared knobs as ``kind``'s own options (see the module docstring).

    ``heads`` goes to the kind's ``groups_option``; ``pruning_rate`` and ``squeeze_rate`` to
    a kind that has options of those names; None leaves the kind's default.

    Example:
        >>> kind_options("group", heads=8, pruning_rate=0.75)
        {'groups': 8}
    """
    spec = conv_kind(kind)
    out: dict[str, Any] = {}
    if heads is not None and spec.groups_option is not None:
        out[spec.groups_option] = heads
    for name, value in (("pruning_rate", pruning_rate), ("squeeze_rate", squeeze_rate)):
        if value is not None and name in spec.options:
            out[name] = value
    return out


# --------------------------------------------------------------------------------------------
# The kinds dgclab ships
# --------------------------------------------------------------------------------------------


def _dense(in_channels, out_channels, kernel_size, stride, padding, dilation) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                     bias=False)


def _group(in_channels, out_channels, kernel_size, stride, padding, dilation, *, groups,
           shuffle) -> GroupConv2d:
    return GroupConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                       groups=groups, shuffle=shuffle)


def _scc(in_channels, out_channels, kernel_size, stride, padding, dilation, *, groups,
         overlap) -> nn.Module:
    """SCC for a 1x1 conv; DSXplore's depthwise k x k + SCC for a k x k conv."""
    if _pair_of(kernel_size) == (1, 1) and _pair_of(padding) == (0, 0):
        return SlidingChannelConv2d(in_channels, out_channels, groups, overlap, stride)
    return DepthwiseSlidingConv2d(in_channels, out_channels, kernel_size, stride, padding,
                                  dilation, groups, overlap)


def _pair_of(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _dgc(in_channels, out_channels, kernel_size, stride, padding, dilation, **options
         ) -> DGCConv2d:
    return DGCConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                     **options)


def _lgc(in_channels, out_channels, kernel_size, stride, padding, dilation, **options
         ) -> LearnedGroupConv2d:
    return LearnedGroupConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              **options)


register_conv("dense", _dense, nn.Conv2d, doc="nn.Conv2d, every output reads every input")
register_conv(
    "group", _group, GroupConv2d, options={"groups": 4, "shuffle": True}, groups_option="groups",
    doc="static group conv with a channel shuffle (SPEC §2)",
)
register_conv(
    "dgc", _dgc, DGCConv2d,
    options={"heads": 4, "squeeze_rate": 16, "pruning_rate": 0.75, "execution": "auto"},
    groups_option="heads", preactivated=True,
    doc="dynamic group conv, Su et al. ECCV 2020 (SPEC §1.1)",
)
register_conv(
    "scc", _scc, SlidingChannelConv2d, options={"groups": 2, "overlap": 0.5},
    groups_option="groups",
    doc="sliding-channel conv, DSXplore IPDPS 2021 (SPEC §3); k x k: depthwise + SCC",
)
register_conv(
    "lgc", _lgc, LearnedGroupConv2d,
    options={"groups": 4, "condense_factor": None, "dropout": 0.0, "group_lasso": False},
    groups_option="groups", preactivated=True,
    doc="learned group conv, CondenseNet CVPR 2018 (SPEC §2); k x k: dgclab's extension",
)
