"""What removing dead filters changed: the outputs and accuracy of a network before and after.

``remove_dead_filters`` (``dead_filters.py``) is exact up to float rounding when the filters it
removes are dead; ``pruning_effect`` measures that on data (SPEC §7).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from dgclab.checks import check_int, check_type
from dgclab.modes import eval_mode
from dgclab.record import paused

from .dead_filters import model_device

__all__ = ["pruning_effect"]


@torch.no_grad()
def pruning_effect(
    model: nn.Module, pruned: nn.Module, loader: Iterable, max_batches: int | None = None
) -> dict:
    """How much removing filters changed the outputs on some data (eval mode, modes restored).

    Its forwards run inside ``dgclab.record.paused()``: a live ``Recorder`` does not record them.

    Args:
        model, pruned: the network before and after ``remove_dead_filters``.
        loader: batches of ``(x, y)`` (labels are needed for the accuracies).
        max_batches: use only the first batches.

    Returns:
        ``{"images", "max_logit_change", "mean_logit_change", "accuracy", "accuracy_pruned",
        "agreement"}``: the largest and mean ``|logits_pruned - logits|``, both accuracies, and
        the fraction of images whose predicted class is the same.
    """
    check_type("model", model, nn.Module)
    check_type("pruned", pruned, nn.Module)
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, min=1)
    device = model_device(model)
    images = correct = correct_pruned = same = 0
    max_change, sum_change, entries = 0.0, 0.0, 0
    with eval_mode(model, pruned), paused():
        for i, (x, y, *_) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            a, b = model(x), pruned(x)  # (B, classes)
            diff = (a - b).abs()
            max_change = max(max_change, float(diff.max()))
            sum_change += float(diff.double().sum())
            entries += diff.numel()
            correct += int((a.argmax(1) == y).sum())
            correct_pruned += int((b.argmax(1) == y).sum())
            same += int((a.argmax(1) == b.argmax(1)).sum())
            images += len(y)
    if not images:
        raise ValueError("the loader yielded no batch")
    return {
        "images": images,
        "max_logit_change": max_change,
        "mean_logit_change": sum_change / entries,
        "accuracy": correct / images,
        "accuracy_pruned": correct_pruned / images,
        "agreement": same / images,
    }
