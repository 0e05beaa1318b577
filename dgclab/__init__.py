"""dgclab: learn, run and dissect dynamic group convolution and its channel-grouping family.

The public API lives here; implementations sit in the subpackages:

- ``dgclab.layers``: the layer protocol (``GroupingConv``), the conv registry (``CONV_KINDS``,
  ``make_conv``, ``register_conv``), ``DGCConv2d`` (SPEC §1.1), ``GroupConv2d``, the pruning
  schedule.
- ``dgclab.models``: the paper's networks, small CIFAR/Fashion-MNIST ResNets, ``convert``,
  ``load_official``.
- ``dgclab.record``: ``Recorder``, ``record`` (a loader through a ``Recorder``),
  ``load_recording``.
- ``dgclab.analysis``: MAC counting (paper convention and per-sample realized), selection and
  filter-sparsity analyses.
- ``dgclab.train``: ``Trainer``, ``TrainConfig``, ``evaluate_model``, run folders (``load_run``) and
  exported models (``load_model``).

``count_macs``, ``load_model`` and ``load_run`` are imported on first use (they pull in pandas,
scipy and torchvision), so that ``import dgclab`` stays light.
"""

from importlib import import_module

from .layers import (
    CONV_KINDS,
    DGCConv2d,
    GroupConv2d,
    GroupingConv,
    calibrate_threshold,
    make_conv,
    pruning_schedule,
    register_conv,
    regularization_loss,
    saliency_loss,
    set_progress,
    set_pruning_progress,
    set_threshold,
)
from .modes import eval_mode
from .record import Recorder, Recording, load_recording, paused

__version__ = "0.1.0"

# name -> module that defines it, imported when the name is first used (PEP 562)
_LAZY = {"count_macs": "dgclab.analysis", "load_model": "dgclab.train",
         "load_run": "dgclab.train", "evaluate_model": "dgclab.train"}

__all__ = [
    "CONV_KINDS",
    "DGCConv2d",
    "GroupConv2d",
    "GroupingConv",
    "Recorder",
    "Recording",
    "calibrate_threshold",
    "count_macs",
    "eval_mode",
    "evaluate_model",
    "load_model",
    "load_recording",
    "load_run",
    "make_conv",
    "paused",
    "pruning_schedule",
    "register_conv",
    "regularization_loss",
    "saliency_loss",
    "set_progress",
    "set_pruning_progress",
    "set_threshold",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dgclab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
