"""The layer protocol: what every channel-grouping convolution can say about itself.

Every method of the family (static and learned group conv, sliding-channel conv, DGC, ...)
splits its output channels among ``G`` groups, and each group reads a subset of the input
channels: the same subset for every image (a static layer), or one chosen per image (a dynamic
layer, DGC). ``GroupingConv`` is the mixin such a layer inherits, next to its ``nn.Module``
base, and the rest of dgclab works from it, never from a class: the recorder records every
dynamic layer, ``count_macs`` asks each layer for its MACs, the trainer drives every layer's
schedule and regularisation term, and the report and the viz read what a recording stored.

A layer that implements the protocol has:

* the geometry of a conv: ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``,
  ``padding``, ``dilation`` (ints as pairs, as ``nn.Conv2d`` keeps them);
* ``kind``, its name in the conv registry (``dgclab.layers.CONV_KINDS``), and ``dynamic``;
* ``channel_groups``, G, and which input channels each group reads: ``connectivity()``, a
  (G, C_in) bool, for a static layer; ``last_selection``, a (B, G, C_in) bool of the images of
  the last forward, for a dynamic one;
* ``layer_info()``, what a recording keeps about it (``INFO_KEYS`` plus the layer's own
  ``EXTRA_INFO_KEYS``), and ``mac_terms_from_info(info, convention)``, its MAC formula per
  image as a function of that info alone, so that a recording's MACs count without the model;
* where it has them, ``set_progress(p)`` (how it follows training progress p in [0, 1]: DGC's
  k schedule, a condensing stage) and ``regularization()`` (the unscaled term it adds to the
  loss after a forward: DGC's lasso).

The module functions walk a model by the protocol: ``grouping_layers``, ``set_progress``,
``regularization_loss``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair

from ..checks import check_choice, check_float, check_type

__all__ = [
    "GroupingConv",
    "INFO_KEYS",
    "CONVENTIONS",
    "Convention",
    "conv_output_hw",
    "conv_channel_macs",
    "grouping_layers",
    "set_progress",
    "regularization_loss",
]

Convention = Literal["paper", "dense"]
# "paper": the method's own count (DGC: the conv term at the target keep ratio 1 - xi);
# "dense": what the reference execution computes (DGC's mask execution: a dense conv).
CONVENTIONS = ("paper", "dense")

# What a recording keeps about every grouping layer; ``heads`` is G, the number of groups (a
# DGC layer's heads, a group conv's groups), the name the recordings have always used.
INFO_KEYS = (
    "kind", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
    "heads", "input_hw",
)


def conv_output_hw(
    input_hw: Sequence[int], kernel_size, stride=1, padding=0, dilation=1
) -> tuple[int, int]:
    """(H', W') of a 2-D conv or pool, with the ``nn.Conv2d`` formula.

    ``H' = floor((H + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``, per side.

    Raises:
        ValueError: ``input_hw`` is not two positive ints, or the kernel does not fit.

    Example:
        >>> conv_output_hw((16, 16), 3, stride=1, padding=1)
        (16, 16)
    """
    hw = None
    if isinstance(input_hw, (tuple, list, torch.Size)):
        hw = tuple(int(s) for s in input_hw)
    if hw is None or len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"input_hw must be two positive ints (H, W), got input_hw={input_hw!r}")
    kernel_size, stride = _pair(kernel_size), _pair(stride)
    padding, dilation = _pair(padding), _pair(dilation)
    out = tuple(
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(hw, kernel_size, stride, padding, dilation)
    )
    if min(out) <= 0:
        raise ValueError(
            f"input_hw={tuple(input_hw)} is too small for kernel_size={kernel_size}, "
            f"stride={stride}, padding={padding}, dilation={dilation}"
        )
    return out  # type: ignore[return-value]


class GroupingConv:
    """Mixin of every convolution whose output groups read subsets of the input channels.

    Inherit it before the ``nn.Module`` base (``class MyConv(GroupingConv, nn.Conv2d)``), set
    ``kind`` and ``dynamic``, and implement ``channel_groups`` and ``connectivity`` (static) or
    ``last_selection`` (dynamic). The MAC formula defaults to a grouped conv's
    (``C_in / G * C_out * kh * kw * H' * W'``, no bias term); a layer with other costs
    overrides ``mac_terms_from_info``, and a layer with more to record adds
    ``EXTRA_INFO_KEYS`` and overrides ``layer_info`` and ``check_info``.
    """

    kind: ClassVar[str]
    """The layer's name in the conv registry, also stored in recordings."""
    dynamic: ClassVar[bool] = False
    """True when the channels a group reads change from image to image."""
    EXTRA_INFO_KEYS: ClassVar[tuple[str, ...]] = ()
    """The layer's own keys in ``layer_info``, after ``INFO_KEYS``."""

    # ---- which channels each group reads -----------------------------------------------------

    @property
    def channel_groups(self) -> int:
        """G, the number of groups (a DGC layer's heads, a group conv's groups)."""
        raise NotImplementedError(f"{type(self).__name__} must define channel_groups")

    def connectivity(self) -> torch.Tensor:
        """(G, C_in) bool: the input channels each group reads, for every image.

        Dynamic layers have none (their choice is per image: ``last_selection``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} is dynamic: its groups read other channels for every image; "
            "see last_selection after a forward"
            if self.dynamic
            else f"{type(self).__name__} must define connectivity()"
        )

    # ---- what a recording keeps ---------------------------------------------------------------

    def layer_info(self, input_hw: Sequence[int] | None = None) -> dict:
        """What a recording keeps about this layer: ``INFO_KEYS`` then ``EXTRA_INFO_KEYS``.

        Args:
            input_hw: (H, W) of the input it ran on; None where not known.

        Raises:
            ValueError: an ``input_hw`` that is not two positive ints or too small for the
                kernel.
        """
        if input_hw is not None:
            conv_output_hw(input_hw, self.kernel_size, self.stride, self.padding, self.dilation)
        info = {
            "kind": self.kind,
            "in_channels": int(self.in_channels),
            "out_channels": int(self.out_channels),
            "kernel_size": tuple(int(v) for v in _pair(self.kernel_size)),
            "stride": tuple(int(v) for v in _pair(self.stride)),
            "padding": tuple(int(v) for v in _pair(self.padding)),
            "dilation": tuple(int(v) for v in _pair(self.dilation)),
            "heads": int(self.channel_groups),
            "input_hw": None if input_hw is None else tuple(int(v) for v in input_hw),
        }
        return info | self.extra_info()

    def extra_info(self) -> dict:
        """The values of ``EXTRA_INFO_KEYS`` (JSON scalars)."""
        return {}

    @classmethod
    def check_info(cls, info: dict) -> dict:
        """The layer's own checks of a recorded ``info`` (``INFO_KEYS`` are checked already).

        Returns ``info`` with the ``EXTRA_INFO_KEYS`` values in their canonical types;
        TypeError or ValueError naming the key otherwise.
        """
        return info

    # ---- cost ---------------------------------------------------------------------------------

    @classmethod
    def mac_terms_from_info(cls, info: Mapping, convention: Convention = "paper") -> dict:
        """MACs of one image, term by term, from a ``layer_info`` with its ``input_hw``.

        The ``"conv"`` term must be the conv over the channels the groups read; the rest (the
        cost of choosing them) is the same for every image. The default is a grouped conv:
        ``{"conv": C_in / G * C_out * kh * kw * H' * W'}`` in both conventions.
        """
        channels = int(info["heads"]) * cls.computed_channels_from_info(info)  # over groups
        return {"conv": channels * conv_channel_macs(info)}

    @classmethod
    def computed_channels_from_info(cls, info: Mapping) -> int:
        """Input channels one group's conv reads in an execution that skips what it drops."""
        return int(info["in_channels"]) // int(info["heads"])

    def mac_terms(self, input_hw: Sequence[int], convention: Convention = "paper") -> dict:
        """``mac_terms_from_info`` of this layer on an input of size ``input_hw``."""
        check_choice("convention", convention, CONVENTIONS)
        return self.mac_terms_from_info(self.layer_info(input_hw), convention)

    def macs(self, input_hw: Sequence[int], convention: Convention = "paper") -> int:
        """MACs of one image on an input of size ``input_hw`` (the sum of ``mac_terms``)."""
        return int(sum(self.mac_terms(input_hw, convention).values()))

    # ---- training -----------------------------------------------------------------------------

    def set_progress(self, progress: float) -> None:
        """Follow training progress p in [0, 1] (a schedule); nothing by default."""

    def regularization(self) -> torch.Tensor | None:
        """The unscaled term this layer adds to the loss after its last forward; None if none."""
        return None


def conv_channel_macs(info: Mapping) -> int:
    """MACs per image of one group's conv per input channel it reads.

    ``(C_out / G) * kh * kw * H' * W'`` for the geometry and ``input_hw`` of a ``layer_info``.
    """
    kh, kw = _pair(info["kernel_size"])
    ho, wo = conv_output_hw(
        info["input_hw"], info["kernel_size"], info["stride"], info["padding"], info["dilation"]
    )
    return int(info["out_channels"]) // int(info["heads"]) * kh * kw * ho * wo


def grouping_layers(model: nn.Module) -> list[tuple[str, GroupingConv]]:
    """(name, layer) for every layer of ``model`` that implements the protocol, itself included.

    Names are ``model.named_modules()`` names, in that order; a grouping layer's insides are
    never listed.
    """
    check_type("model", model, nn.Module)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, GroupingConv) and not any(
            name.startswith(outer + ".") or outer == "" for outer, _ in found
        ):
            found.append((name, module))
    return found


def set_progress(model: nn.Module, progress: float) -> None:
    """Tell every grouping layer of ``model`` the training progress p in [0, 1].

    Works in any mode and on wrapped models (DistributedDataParallel, nn.Sequential, a single
    layer).

    Raises:
        TypeError: ``model`` is not a module or ``progress`` not a real number.
        ValueError: ``progress`` outside [0, 1] (NaN included).
    """
    check_type("model", model, nn.Module)
    progress = check_float("progress", progress, min=0, max=1)
    for _, layer in grouping_layers(model):
        layer.set_progress(progress)


def regularization_loss(model: nn.Module) -> torch.Tensor:
    """Sum of every grouping layer's ``regularization()`` term of the last forward.

    The trainer adds ``lasso_lambda * regularization_loss(model)`` to the loss.

    Returns:
        A 0-d tensor (0 for a model whose layers add none).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a layer that adds a term has not run a forward yet (its error).
    """
    terms, missing = [], []
    for name, layer in grouping_layers(model):
        try:
            term = layer.regularization()
        except ValueError:  # a layer whose term needs a forward it has not run
            missing.append(name or "<model>")
            continue
        if term is not None:
            terms.append(term)
    if missing:
        raise ValueError(
            f"the regularisation term needs a forward first; layers without one: {missing[:5]}"
        )
    return torch.stack(terms).sum() if terms else torch.zeros(())
