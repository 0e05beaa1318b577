"""Multiply-accumulate (MAC) counts, the way the DGC paper counts them (SPEC §1.5).

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242. The paper's "FLOPs" are multiply-adds for one
image, counted with the CondenseNet convention:

* conv: ``C_in / groups * C_out * kh * kw * H' * W'`` (no bias term);
* linear: ``in * out`` plus one per output for the bias;
* ReLU: one per element of its input; pooling: output elements x kernel area (a 2x2/2 average
  pool and a global pool both cost their input size); BatchNorm: 0 (it folds into the conv);
* a DGC layer, with input ``C_in x H x W``, output ``H' x W'`` and ``h`` the saliency MLP width::

      ReLU C_in*H*W + pool C_in*H*W
      + sum over heads [ C_in*h + h + h*C_in + C_in + C_in + C_in              (saliency MLP)
                         + C_in * (C_out/heads) * kh*kw * H'*W' * (1 - xi) ]    (head conv)

  BN, the gating multiply and the top-k are not counted, and the conv term uses the target keep
  ratio ``1 - xi``, not the channels a given image kept.

Three conventions for the DGC conv term:

* ``"paper"``: ``(1 - xi)`` of dense, the number to compare with the paper (DyDenseNet-86 on
  CIFAR-10: 71.04M).
* ``"dense"``: what the reference mask execution computes, a dense conv over the zeroed input.
* ``"realized"`` (``dgc_layer_macs`` only): the channels each head really kept for a given image.

``count_macs`` takes the conv and linear MACs from ``torch.utils.flop_counter.FlopCounterMode``
(FLOPs = 2 x MACs per module) and adds what it skips (linear bias, ReLU, pooling) from forward
hooks (``HOOK_COSTS``); every layer of the layer protocol (``dgclab.layers.GroupingConv``: DGC,
the group conv, the rest of the family) is counted by its own formula
(``mac_terms_from_info``) only, never by the ops it happens to run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Literal, Sequence

import pandas as pd
import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair
from torch.utils.flop_counter import FlopCounterMode

from dgclab.checks import check_choice
from dgclab.layers import (CONVENTIONS, GroupingConv, conv_channel_macs, conv_kind,
                           conv_output_hw, cpu_kernel)
from dgclab.layers.dgc import DGCConv2d
from dgclab.modes import eval_mode, last_forward_kept
from dgclab.record import paused

from .sparsity import device_and_dtype

__all__ = [
    "count_macs",
    "dgc_layer_macs",
    "dgc_layer_mac_terms",
    "info_macs",
    "conv_output_hw",
    "HOOK_COSTS",
]

Convention = Literal["paper", "dense"]
DGC_CONVENTIONS = ("paper", "dense", "realized")
DGC_TERMS = ("relu", "pool", "saliency", "conv")

# Modules whose MACs come from FlopCounterMode (conv and matmul work). Conv bias is not counted
# (CondenseNet convention); linear bias is added from the hooks.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = (nn.Linear,)
ZERO_COST_TYPES = (nn.modules.batchnorm._BatchNorm,)  # listed with 0 MACs in the per-layer table


def _window_pool(module, x, output) -> int:
    kh, kw = _pair(module.kernel_size)
    return output.numel() * kh * kw


# What forward hooks add per call, for the whole batch: (module types, cost(module, x, output)).
# Matmul work is FlopCounterMode's; these are the parts it does not see.
HOOK_COSTS: tuple[tuple[tuple[type, ...], Callable[[nn.Module, torch.Tensor, torch.Tensor], int]],
                  ...] = (
    (LINEAR_TYPES, lambda m, x, out: out.numel() if m.bias is not None else 0),  # the bias
    ((nn.ReLU,), lambda m, x, out: x.numel()),
    ((nn.MaxPool2d, nn.AvgPool2d), _window_pool),  # output elements x kernel area
    # input elements: exact when the output size divides the input (always for a global pool)
    ((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), lambda m, x, out: x.numel()),
    (ZERO_COST_TYPES, lambda m, x, out: 0),
)
_HOOKED = tuple(t for types, _ in HOOK_COSTS for t in types)


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------


def dgc_layer_mac_terms(
    layer: DGCConv2d, input_hw: Sequence[int], convention: Convention = "paper"
) -> dict[str, int]:
    """The paper's MAC formula for one DGC layer and one image, term by term (SPEC §1.5).

    The layer's own formula, ``layer.mac_terms(input_hw, convention)``
    (``DGCConv2d.mac_terms_from_info``).

    Args:
        layer: the DGC layer (its channels, kernel, stride, padding, dilation, heads, hidden
            width and pruning rate are read; its k is not).
        input_hw: (H, W) of the layer's input.
        convention: ``"paper"`` (conv term x ``(1 - xi)``) or ``"dense"`` (no factor: the mask
            execution's dense conv over the zeroed input).

    Returns:
        ``{"relu", "pool", "saliency", "conv"}`` -> MACs, summed over heads. ``conv`` is rounded
        to an int (it is exact whenever ``(1 - xi) * C_in`` is an integer).

    Example:
        >>> layer = DGCConv2d(128, 128, 3, padding=1, heads=4, pruning_rate=0.75)
        >>> sum(dgc_layer_mac_terms(layer, (16, 16)).values())
        9512480
    """
    _check_dgc(layer)
    return layer.mac_terms(input_hw, convention)


def dgc_layer_macs(
    layer: DGCConv2d,
    input_hw: Sequence[int],
    convention: str = "paper",
    kept_channels: torch.Tensor | None = None,
) -> int | torch.Tensor:
    """MACs of one DGC layer for one image.

    ``"paper"`` and ``"dense"`` are the sums of ``dgc_layer_mac_terms``. ``"realized"`` counts
    what an execution that skips every dropped channel would compute for each image: the same
    non-conv terms as ``"paper"`` and the conv term
    ``sum over heads (channels that head kept) * (C_out/heads) * kh*kw * H'*W'``.

    Realized MACs are at most the k-based count (``C_in - k`` channels per head): ties at the
    threshold and saliencies the ReLU zeroed drop together, so a head can keep fewer than
    ``C_in - k`` channels. (The gather execution still convolves ``C_in - k`` channels per head,
    the extra ones with a gate of 0; "realized" counts only the useful ones.)

    Args:
        layer: the DGC layer.
        input_hw: (H, W) of the layer's input.
        convention: ``"paper"``, ``"dense"`` or ``"realized"``.
        kept_channels: realized only. Channels kept per head, int tensor of shape (heads,) for
            one image or (N, heads) for N images. Default: ``layer.last_selection.sum(-1)``,
            the images of the layer's last forward.

    Returns:
        An int, or for ``kept_channels`` of shape (N, heads) a LongTensor (N,) on the same
        device.

    Example:
        >>> layer = DGCConv2d(128, 128, 3, padding=1, heads=4, pruning_rate=0.75)
        >>> dgc_layer_macs(layer, (16, 16), "realized", torch.tensor([32, 32, 32, 32]))
        9512480
    """
    _check_dgc(layer)
    check_choice("convention", convention, DGC_CONVENTIONS)
    if convention != "realized":
        if kept_channels is not None:
            raise ValueError(
                f"kept_channels is only used with convention='realized', got "
                f"convention={convention!r}"
            )
        return layer.macs(input_hw, convention)

    if kept_channels is None:
        if layer.last_selection is None:
            raise ValueError(
                "convention='realized' needs kept_channels, or a layer that has run a forward "
                "(its last_selection is None)"
            )
        kept_channels = layer.last_selection.sum(dim=-1)  # (B, heads)
    kept = torch.as_tensor(kept_channels)
    if kept.dtype.is_floating_point or kept.dtype == torch.bool or kept.dim() not in (1, 2):
        raise ValueError(
            f"kept_channels must be an int tensor of shape (heads,) or (N, heads), got "
            f"dtype={kept.dtype}, shape={tuple(kept.shape)}"
        )
    if kept.shape[-1] != layer.heads:
        raise ValueError(
            f"kept_channels must have heads={layer.heads} entries in its last dim, got shape "
            f"{tuple(kept.shape)}"
        )
    if kept.numel() and (kept.min() < 0 or kept.max() > layer.in_channels):
        raise ValueError(
            f"kept_channels must lie in [0, in_channels={layer.in_channels}], got "
            f"min={int(kept.min())}, max={int(kept.max())}"
        )
    macs = info_macs(layer.layer_info(input_hw), kept.long())  # () or (N,)
    return int(macs) if macs.dim() == 0 else macs


def info_macs(info: Mapping, kept_channels: torch.Tensor | None = None):
    """MACs of one image in a grouping layer described by a ``layer_info`` (with ``input_hw``).

    The layer's own formula (``mac_terms_from_info`` of its kind's class) at the paper
    convention; with ``kept_channels`` (..., G) ints, the channels each group really read, the
    conv term counts those instead (the "realized" count; the other terms, the cost of choosing
    them, stay).

    Returns:
        An int, or with ``kept_channels`` a LongTensor of its leading shape.
    """
    layer_type = conv_kind(info["kind"]).layer_type
    terms = layer_type.mac_terms_from_info(info, "paper")
    if kept_channels is None:
        return int(sum(terms.values()))
    fixed = sum(v for key, v in terms.items() if key != "conv")
    return fixed + kept_channels.sum(dim=-1) * conv_channel_macs(info)


# --------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------


def count_macs(
    model: nn.Module,
    input_size: Sequence[int],
    convention: Convention = "paper",
    per_layer: bool = False,
) -> int | pd.DataFrame:
    """MACs per image of ``model``, counted as the DGC paper counts them (SPEC §1.5).

    Runs one forward of zeros of shape ``input_size`` under ``torch.no_grad()``, on the model's
    device and dtype, with the model temporarily in eval mode (every module's mode and every
    grouping layer's ``last_*`` attributes are restored afterwards) and inside
    ``dgclab.record.paused()`` (a live ``Recorder`` of the model does not record it), with
    dgclab's C++ kernel off (``cpu_kernel.use(False)``: every layer takes its PyTorch
    execution, which computes the same). Counts are for the whole batch divided by the batch
    size, i.e. per image.

    What is counted: convs and linear layers from ``FlopCounterMode`` (FLOPs / 2), plus linear
    bias, ReLU and pooling from forward hooks (``HOOK_COSTS``; a module called twice counts
    twice); matmuls and convs run outside any module appear as a ``"(functional)"`` row.
    Layers of the layer protocol (DGC, the group conv, ...) are counted by their own formula
    only; nothing inside them is counted again. BatchNorm is 0; other modules (dropout,
    flatten, other activations) are not counted.

    Args:
        model: any module.
        input_size: (B, C, H, W), four positive ints.
        convention: ``"paper"`` (DGC conv term x ``(1 - xi)``) or ``"dense"`` (the DGC conv term
            of the mask execution, no factor).
        per_layer: return a table instead of the total.

    Returns:
        The total as an int, or with ``per_layer`` a DataFrame with one row per counted module
        (``named_modules`` order): ``layer`` (module name), ``type`` (class name), ``kind`` (a
        grouping layer's kind, NA elsewhere), ``calls``, ``macs`` (int, per image; the column
        sums to the total) and the grouping layers' terms as ``<kind>_<term>`` columns
        (``dgc_relu``, ``dgc_pool``, ``dgc_saliency``, ``dgc_conv`` always; NA elsewhere).

    Example:
        >>> count_macs(nn.Conv2d(128, 128, 3, padding=1, bias=False), (1, 128, 16, 16))
        37748736
    """
    size = _check_input_size(input_size)
    check_choice("convention", convention, CONVENTIONS)
    modules = dict(model.named_modules())
    grouping = [n for n, m in modules.items() if isinstance(m, GroupingConv)]
    counted = {  # name -> module whose MACs this function reports, in named_modules order
        name: module for name, module in modules.items()
        if not any(_is_inside(name, g) for g in grouping)  # its layer's formula covers it
        and isinstance(module, (GroupingConv,) + CONV_TYPES + LINEAR_TYPES + _HOOKED)
    }
    calls, hook_macs, terms, flops = _probe(model, size, counted, convention)
    rows = _rows(model, size[0], counted, calls, hook_macs, terms, flops)
    if not per_layer:
        return int(sum(row["macs"] for row in rows))
    term_columns = [f"dgc_{t}" for t in DGC_TERMS]
    base = ["layer", "type", "kind", "calls", "macs"]
    term_columns += sorted({c for row in rows for c in row} - set(base) - set(term_columns))
    table = pd.DataFrame(rows, columns=base + term_columns)
    table["calls"] = table["calls"].astype("int64")
    table["macs"] = table["macs"].astype("int64")
    for column in term_columns:
        table[column] = table[column].astype("Int64")  # NA outside the kind's layers
    return table


def _probe(model: nn.Module, size: tuple, counted: dict[str, nn.Module], convention: str):
    """One forward of zeros with a hook on every counted module.

    Returns:
        ``calls`` (name -> calls), ``hook_macs`` (name -> ``HOOK_COSTS`` MACs of the whole
        batch), ``terms`` (grouping layer name -> its formula's terms per image, summed over
        calls) and ``flops`` (FlopCounterMode's FLOPs per module path, "Global" the total).
    """
    calls: dict[str, int] = defaultdict(int)
    hook_macs: dict[str, int] = defaultdict(int)
    terms: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def make_hook(name: str):
        def hook(mod, inputs, output):
            x = inputs[0]
            calls[name] += 1
            if isinstance(mod, GroupingConv):
                for key, value in mod.mac_terms(x.shape[-2:], convention).items():
                    terms[name][key] += value
                return
            for types, cost in HOOK_COSTS:
                if isinstance(mod, types):
                    hook_macs[name] += cost(mod, x, output)
                    return

        return hook

    device, dtype = device_and_dtype(model)
    x = torch.zeros(size, device=device, dtype=dtype)
    handles = []
    try:
        handles = [m.register_forward_hook(make_hook(n)) for n, m in counted.items()]
        # the C++ kernel off: FlopCounterMode sees PyTorch's convs (a self-grouped conv's loop
        # of small convs, the same MACs as its kernel call), never an op it cannot count
        with eval_mode(model), last_forward_kept(model), torch.no_grad(), paused(), \
                cpu_kernel.use(False), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    flops = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    return calls, hook_macs, terms, flops


def _rows(model, batch, counted, calls, hook_macs, terms, flops) -> list[dict]:
    """Per module MACs per image: the formula for grouping layers, FLOPs + hooks for the rest.

    Whatever the outermost FLOP-owning modules leave of FlopCounterMode's global count ran
    outside any of them: a ``"(functional)"`` row.
    """
    root = type(model).__name__  # FlopCounterMode keys modules "ResNet.layer1.0.conv1"

    def module_flops(name: str) -> int:
        return flops.get(f"{root}.{name}" if name else root, 0)

    rows = []
    for name, module in counted.items():
        if not calls[name]:
            continue
        row = {"layer": name, "type": type(module).__name__, "kind": None, "calls": calls[name]}
        if isinstance(module, GroupingConv):
            row["kind"] = module.kind
            row["macs"] = sum(terms[name].values())
            row.update({f"{module.kind}_{key}": v for key, v in terms[name].items()})
        else:
            macs = hook_macs[name]
            if isinstance(module, CONV_TYPES + LINEAR_TYPES):
                macs += module_flops(name) // 2  # FLOPs = 2 x MACs
            row["macs"] = macs // batch
        rows.append(row)
    owners = [n for n, m in counted.items()
              if isinstance(m, (GroupingConv,) + CONV_TYPES + LINEAR_TYPES)]
    owners = [n for n in owners if not any(_is_inside(n, o) for o in owners)]
    functional = flops.get("Global", 0) - sum(module_flops(n) for n in owners)
    if functional > 0:
        rows.append({"layer": "(functional)", "type": "functional", "kind": None, "calls": 1,
                     "macs": functional // 2 // batch})
    return rows


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_dgc(layer) -> None:
    if not isinstance(layer, DGCConv2d):
        raise TypeError(f"layer must be a DGCConv2d, got {type(layer).__name__}")


def _is_inside(name: str, parent: str) -> bool:
    """Whether module ``name`` is a strict descendant of module ``parent`` ("" is the root)."""
    if parent == "":
        return name != ""
    return name.startswith(parent + ".")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_input_size(input_size) -> tuple[int, int, int, int]:
    size = tuple(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else None
    if size is None or len(size) != 4 or not all(_is_int(s) and s > 0 for s in size):
        raise ValueError(
            f"input_size must be four positive ints (B, C, H, W), got input_size={input_size!r}"
        )
    return size  # type: ignore[return-value]
