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

from ..checks import check_type
from ..layers.dgc import DGCConv2d, check_inactive_channels

__all__ = ["load_official"]

_PREFIX = "module."
_SHOWN = 5  # keys quoted per kind of mismatch in error messages


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _read(path: str | os.PathLike) -> object:
    """``torch.load`` of a checkpoint file; a file that is not one is a ValueError naming it.

    OSErrors (a missing file, a directory, no permission) pass as they are: they name the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # truncated zip, garbage, empty file, a pickle weights_only refuses
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"{os.fspath(path)} is not a readable PyTorch checkpoint "
            f"({type(error).__name__}: {reason})"
        ) from error


def _state_dict(source: str | os.PathLike | Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """The bare state dict inside a path, a released checkpoint dict or a state dict, and what
    error messages call its source (the file, or "checkpoint")."""
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        source = _read(source)
        if not isinstance(source, Mapping):
            raise ValueError(
                f"{where} holds a {type(source).__name__}, not a checkpoint dict or a state dict"
            )
    elif isinstance(source, Mapping):
        where = "checkpoint"
    else:
        raise TypeError(
            "state_dict_or_path must be a path, a checkpoint dict or a state dict, got "
            f"{type(source).__name__}"
        )
    if "state_dict" in source:  # {epoch, state_dict, best_prec1, optimizer}
        source = source["state_dict"]
        if not isinstance(source, Mapping):
            raise ValueError(
                f"{where}: its 'state_dict' entry is a {type(source).__name__}, not a state dict"
            )
    not_tensors = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{where} holds no state dict: no 'state_dict' entry, and {len(not_tensors)} "
            f"entries are not tensors ({_examples(sorted(map(str, not_tensors)))})"
        )
    return dict(source), where


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
        TypeError: ``model`` is not a module, or ``state_dict_or_path`` neither a path nor a
            mapping.
        FileNotFoundError: the file does not exist (other OSErrors pass as well).
        ValueError: a file that is not a PyTorch checkpoint (truncated, garbage), one that holds
            no state dict; keys missing from or unexpected by ``model`` (listed, with counts),
            tensors whose shapes differ (key and both shapes), or a DGC layer's k outside
            [0, C_in). Messages name the file; nothing is loaded then.

    Example:
        >>> from dgclab.models import dydensenet86
        >>> model = load_official(dydensenet86(10), "checkpoint.pth.tar")  # doctest: +SKIP
    """
    check_type("model", model, nn.Module)
    state, where = _state_dict(state_dict_or_path)
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
        raise ValueError(f"{where} does not match {type(model).__name__}: " + "; ".join(parts))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} shape mismatches between {where} and "
            f"{type(model).__name__}: {_examples(mismatched)}"
        )
    # Every DGC layer checks its k as it loads; checking all of them first loads nothing
    # when one is bad (load_state_dict would have loaded the layers before it).
    for name, layer in model.named_modules():
        if isinstance(layer, DGCConv2d):
            key = f"{name}._inactive_channels" if name else "_inactive_channels"
            try:
                check_inactive_channels(state[key].item(), layer.in_channels, key)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from error
    model.load_state_dict(state, strict=True)
    return model
