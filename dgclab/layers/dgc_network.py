"""DGC across a network: its DGC layers, their k from training progress, their lasso term.

The protocol's ``set_progress`` and ``regularization_loss`` (``base.py``) drive every grouping
layer of a model, whatever its kind; these keep DGC's own names and return values (the k now
set, per layer; the lasso of DGC layers alone), as the paper and the README use them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checks import check_float, check_type
from .base import grouping_layers
from .dgc import DGCConv2d

__all__ = ["dgc_layers", "set_pruning_progress", "saliency_loss"]


def dgc_layers(model: nn.Module) -> list[tuple[str, DGCConv2d]]:
    """(name, layer) for every DGC layer of ``model`` (the model itself included)."""
    return [(n, m) for n, m in grouping_layers(model) if isinstance(m, DGCConv2d)]


def set_pruning_progress(model: nn.Module, progress: float) -> dict[str, int]:
    """Set k on every DGC layer of ``model`` from training progress p in [0, 1].

    Works in any mode and on wrapped models (DistributedDataParallel, nn.Sequential, a single
    layer). Returns the k now set, keyed by module name.

    Raises:
        TypeError: ``model`` is not a module or ``progress`` not a real number.
        ValueError: ``progress`` outside [0, 1] (NaN included).
    """
    check_type("model", model, nn.Module)
    progress = check_float("progress", progress, min=0, max=1)
    ks = {}
    for name, layer in dgc_layers(model):
        layer.set_progress(progress)
        ks[name] = layer.inactive_channels
    return ks


def saliency_loss(model: nn.Module) -> torch.Tensor:
    """The unscaled lasso term of the last forward: sum over layers and heads of mean(g).

    The trainer adds ``lambda * regularization_loss(model)`` to the loss (lambda = 1e-5 in the
    paper), which for a model whose only grouping layers are DGC layers is this.

    Returns:
        A 0-d tensor (0 for a model without DGC layers).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a DGC layer has not run a forward yet.
    """
    layers = dgc_layers(model)
    if not layers:
        return torch.zeros(())
    missing = [name or "<model>" for name, layer in layers if layer.last_lasso is None]
    if missing:
        raise ValueError(
            f"saliency_loss needs a forward first; DGC layers without one: {missing[:5]}"
        )
    return torch.stack([layer.last_lasso for _, layer in layers]).sum()
