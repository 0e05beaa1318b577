"""dgclab: learn, run and dissect dynamic group convolution and its channel-grouping family.

The public API lives here; implementations sit in the subpackages:

- ``dgclab.layers``: ``DGCConv2d`` (SPEC §1.1), ``GroupConv2d``, the pruning schedule.
- ``dgclab.models``: the paper's networks, small CIFAR/Fashion-MNIST ResNets, ``convert``,
  ``load_official``.
- ``dgclab.analysis``: MAC counting (paper convention and per-sample realized).
"""

from .layers import (
    DGCConv2d,
    GroupConv2d,
    pruning_schedule,
    saliency_loss,
    set_pruning_progress,
)
from .record import Recorder, load_recording, paused

__version__ = "0.1.0"

__all__ = [
    "DGCConv2d",
    "GroupConv2d",
    "Recorder",
    "load_recording",
    "paused",
    "pruning_schedule",
    "saliency_loss",
    "set_pruning_progress",
]
