"""The DGC pruning schedule and the lasso term (SPEC §1.2, §1.1 step 7).

The official code moves k inside ``forward`` from a class-level global progress. dgclab has no
global: k changes only when the user or the trainer calls ``set_pruning_progress`` (or sets
``layer.inactive_channels``), in any mode, and ``forward`` never changes it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checks import check_float, check_type
from .dgc import DGCConv2d, final_inactive_channels

__all__ = ["pruning_schedule", "set_pruning_progress", "saliency_loss", "dgc_layers"]


def pruning_schedule(progress: float, in_channels: int, pruning_rate: float) -> int:
    """k (inactive channels) at training progress p, with the official expressions.

    ``p <= 1/12``: 0 (warm-up); ``1/12 < p < 3/4``: a linear ramp; ``p >= 3/4``: the final
    ``round(C_in * xi)``. Evaluated in the official order with Python's banker's rounding, so
    ties round as they do there. For C_in = 128, xi = 0.75: p = .1 -> 2, .5 -> 60, .75 -> 96.

    Args:
        progress: p in [0, 1], (epoch * batches + batch) / (epochs * batches).
        in_channels: C_in of the layer.
        pruning_rate: xi in [0, 1), and small enough to keep a channel: the final k, which
            bounds the ramp, must stay below C_in.

    Returns:
        k as an int, 0 <= k < C_in.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``progress`` outside [0, 1] (NaN included), ``in_channels < 1``,
            ``pruning_rate`` outside [0, 1) or one that would drop every channel.
    """
    progress = check_float("progress", progress, min=0, max=1)
    final = final_inactive_channels(in_channels, pruning_rate)  # checks C_in and the rate
    gate_factor = 1 - float(pruning_rate)  # the official code's parameter
    if progress >= 3.0 / 4:
        return final  # round(in_channels * (1 - gate_factor))
    if progress > 1.0 / 12:
        return round(in_channels * (1 - gate_factor) * 3.0 / 2 * (progress - 1.0 / 12))
    return 0


def dgc_layers(model: nn.Module) -> list[tuple[str, DGCConv2d]]:
    """(name, layer) for every DGC layer of ``model`` (the model itself included)."""
    check_type("model", model, nn.Module)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DGCConv2d)]


def set_pruning_progress(model: nn.Module, progress: float) -> dict[str, int]:
    """Set k on every DGC layer of ``model`` from training progress p in [0, 1].

    Works in any mode and on wrapped models (DistributedDataParallel, nn.Sequential, a single
    layer). Returns the k now set, keyed by module name.

    Raises:
        TypeError: ``model`` is not a module or ``progress`` not a real number.
        ValueError: ``progress`` outside [0, 1] (NaN included), or a layer whose
            ``pruning_rate`` the schedule refuses (``pruning_schedule``).
    """
    check_type("model", model, nn.Module)
    progress = check_float("progress", progress, min=0, max=1)
    ks = {}
    for name, layer in dgc_layers(model):
        k = pruning_schedule(progress, layer.in_channels, layer.pruning_rate)
        layer.inactive_channels = k
        ks[name] = k
    return ks


def saliency_loss(model: nn.Module) -> torch.Tensor:
    """The unscaled lasso term of the last forward: sum over layers and heads of mean(g).

    The trainer adds ``lambda * saliency_loss(model)`` to the loss (lambda = 1e-5 in the paper).

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
