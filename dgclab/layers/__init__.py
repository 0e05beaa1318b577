"""Layers: the channel-grouping convolutions, their protocol and their registry.

- ``base.py``: the layer protocol (``GroupingConv``) and the functions that walk a model by it.
- ``registry.py``: ``CONV_KINDS``, ``make_conv``, ``register_conv``: every conv kind by name.
- ``dgc.py`` (+ ``dgc_functional.py``, ``dgc_gather.py``, ``dgc_schedule.py``,
  ``dgc_network.py``, ``cpu_kernel.py``, ``dgc_triton.py``): dynamic group convolution (SPEC §1).
- ``group.py``: the static group conv (SPEC §2).
- ``scc.py``: the sliding-channel conv of DSXplore (SPEC §3).
- ``lgc.py``: the learned group conv of CondenseNet and its condensed form (SPEC §2).
- ``gspc.py``: GSPC's packed grouped conv, a function (SPEC §5).
- ``tuning.py``: "auto" executions chosen by measurement once per shape (opt-in, like
  ``torch.backends.cudnn.benchmark``).
"""

from .base import (
    CONVENTIONS,
    INFO_KEYS,
    GroupingConv,
    conv_channel_macs,
    conv_output_hw,
    grouping_layers,
    regularization_loss,
    set_progress,
)
from .dgc import DGCConv2d, dgc_gather_conv, dgc_mask_conv, interleave_heads, select_channels
from .dgc_network import (
    calibrate_threshold,
    dgc_layers,
    follow_threshold,
    mean_pruning_rate,
    saliency_loss,
    scale_saliency_init,
    set_pruning_progress,
    set_threshold,
)
from . import tuning
from .dgc_schedule import pruning_schedule
from .group import GroupConv2d, KernelConv2d, group_conv2d
from .lgc import CondensedConv2d, LearnedGroupConv2d, group_lasso
from .scc import (
    DepthwiseSlidingConv2d,
    SCCBands,
    SlidingChannelConv2d,
    scc_banded_conv2d,
    scc_bands,
    scc_starts,
)
from .registry import (
    CONV_KINDS,
    ConvKind,
    conv_kind,
    kind_options,
    make_conv,
    register_conv,
    unregister_conv,
)

__all__ = [
    "CONVENTIONS",
    "CONV_KINDS",
    "CondensedConv2d",
    "ConvKind",
    "DGCConv2d",
    "DepthwiseSlidingConv2d",
    "SCCBands",
    "SlidingChannelConv2d",
    "GroupConv2d",
    "GroupingConv",
    "KernelConv2d",
    "LearnedGroupConv2d",
    "INFO_KEYS",
    "conv_channel_macs",
    "conv_kind",
    "conv_output_hw",
    "dgc_gather_conv",
    "calibrate_threshold",
    "dgc_layers",
    "dgc_mask_conv",
    "follow_threshold",
    "group_conv2d",
    "group_lasso",
    "grouping_layers",
    "interleave_heads",
    "kind_options",
    "make_conv",
    "mean_pruning_rate",
    "pruning_schedule",
    "regularization_loss",
    "register_conv",
    "saliency_loss",
    "scale_saliency_init",
    "scc_banded_conv2d",
    "scc_bands",
    "scc_starts",
    "select_channels",
    "set_progress",
    "set_pruning_progress",
    "set_threshold",
    "tuning",
    "unregister_conv",
]
