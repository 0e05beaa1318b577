"""Layers: dynamic group convolution and its static baseline."""

from .dgc import DGCConv2d, dgc_gather_conv, dgc_mask_conv, interleave_heads, select_channels
from .group import GroupConv2d
from .pruning import dgc_layers, pruning_schedule, saliency_loss, set_pruning_progress

__all__ = [
    "DGCConv2d",
    "GroupConv2d",
    "dgc_gather_conv",
    "dgc_layers",
    "dgc_mask_conv",
    "interleave_heads",
    "pruning_schedule",
    "saliency_loss",
    "select_channels",
    "set_pruning_progress",
]
