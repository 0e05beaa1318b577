"""Load the official DGC checkpoints (github zhuogege1943/dgc, mirror hellozhuo/dgc).

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242.

dgclab's ``DGCConv2d``, ``DyDenseNet`` and ``DyResNet`` use the official module names, so a
released state dict loads key for key; the only translation is dropping DataParallel's
``module.`` prefix. The per-layer ``_inactive_channels`` buffers come along, so a loaded model
prunes exactly as the released one did at the end of training.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

__all__ = ["load_official"]

_PREFIX = "module."
_SHOWN = 5  # keys quoted per kind of mismatch in error messages


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _state_dict(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """The bare state dict inside a path, a released checkpoint dict or a state dict."""
    if isinstance(source, (str, os.PathLike)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ValueError(
            f"expected a path, a checkpoint dict or a state dict, got {type(source).__name__}"
        )
    if isinstance(source.get("state_dict"), Mapping):  # {epoch, state_dict, best_prec1, ...}
        source = source["state_dict"]
    not_tensors = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"not a state dict: {len(not_tensors)} entries are not tensors "
            f"({_examples(sorted(map(str, not_tensors)))})"
        )
    return dict(source)


def load_official(
    model: nn.Module, state_dict_or_path: str | os.PathLike | Mapping
) -> nn.Module:
    """Load an official DGC checkpoint into ``model`` with strict semantics.

    Args:
        model: a ``DyDenseNet`` or ``DyResNet`` of the checkpoint's configuration, a single
            ``DGCConv2d``, or any module whose keys match.
        state_dict_or_path: a file (read with ``torch.load(map_location="cpu",
            weights_only=True)``), a released checkpoint ``{epoch, state_dict, best_prec1,
            optimizer}``, or a bare state dict. Keys may carry DataParallel's ``module.``.

    Returns:
        ``model``, loaded (including every DGC layer's k).

    Raises:
        ValueError: keys missing from or unexpected by ``model`` (listed, with counts), or
            tensors whose shapes differ (key and both shapes); nothing is loaded then.

    Example:
        >>> from dgclab.models import dydensenet86
        >>> model = load_official(dydensenet86(10), "checkpoint.pth.tar")  # doctest: +SKIP
    """
    state = _state_dict(state_dict_or_path)
    expected = model.state_dict()
    # Strip DataParallel's prefix unless the model itself is wrapped and expects it.
    if (
        state
        and all(k.startswith(_PREFIX) for k in state)
        and not all(k.startswith(_PREFIX) for k in expected)
    ):
        state = {k[len(_PREFIX) :]: v for k, v in state.items()}

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_examples(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_examples(unexpected)}")
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: " + "; ".join(parts)
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} shape mismatches between checkpoint and "
            f"{type(model).__name__}: {_examples(mismatched)}"
        )
    model.load_state_dict(state, strict=True)
    return model
