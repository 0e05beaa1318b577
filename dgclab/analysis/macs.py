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
hooks; DGC layers are counted by the formula above only, never by the ops they happen to run.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal, Sequence

import pandas as pd
import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair
from torch.utils.flop_counter import FlopCounterMode

from dgclab.layers.dgc import DGCConv2d
from dgclab.record import paused

__all__ = [
    "count_macs",
    "dgc_layer_macs",
    "dgc_layer_mac_terms",
    "conv_output_hw",
]

Convention = Literal["paper", "dense"]
CONVENTIONS = ("paper", "dense")
DGC_CONVENTIONS = ("paper", "dense", "realized")

# Modules whose MACs come from FlopCounterMode (conv and matmul work). Conv bias is not counted
# (CondenseNet convention); linear bias is added from the hooks.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = (nn.Linear,)
# Modules counted from their input/output shapes in forward hooks.
RELU_TYPES = (nn.ReLU,)
WINDOW_POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d)  # output elements x kernel area
ADAPTIVE_POOL_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)  # input elements
ZERO_COST_TYPES = (nn.modules.batchnorm._BatchNorm,)  # listed with 0 MACs in the per-layer table

DGC_TERMS = ("relu", "pool", "saliency", "conv")


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def conv_output_hw(
    input_hw: Sequence[int], kernel_size, stride=1, padding=0, dilation=1
) -> tuple[int, int]:
    """(H', W') of a 2-D conv or pool, with the ``nn.Conv2d`` formula.

    ``H' = floor((H + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``, per side.

    Example:
        >>> conv_output_hw((16, 16), 3, stride=1, padding=1)
        (16, 16)
    """
    h, w = _check_hw(input_hw)
    kernel_size, stride = _pair(kernel_size), _pair(stride)
    padding, dilation = _pair(padding), _pair(dilation)
    out = tuple(
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip((h, w), kernel_size, stride, padding, dilation)
    )
    if min(out) <= 0:
        raise ValueError(
            f"input_hw={tuple(input_hw)} is too small for kernel_size={kernel_size}, "
            f"stride={stride}, padding={padding}, dilation={dilation}"
        )
    return out  # type: ignore[return-value]


def dgc_layer_mac_terms(
    layer: DGCConv2d, input_hw: Sequence[int], convention: Convention = "paper"
) -> dict[str, int]:
    """The paper's MAC formula for one DGC layer and one image, term by term (SPEC §1.5).

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
    _check_convention(convention, CONVENTIONS)
    h, w = _check_hw(input_hw)
    c, hidden, heads = layer.in_channels, layer.hidden, layer.heads
    # fc1 (no bias) + fc2 weight + fc2 bias, then three C_in-wide elementwise steps
    # (the paper's ReLU, gate and threshold terms): C_in*h + h + h*C_in + 3*C_in.
    saliency = c * hidden + hidden + hidden * c + 3 * c
    dense_conv = c * _dense_head_conv_per_channel(layer, (h, w))  # one head, all channels
    keep = 1.0 - layer.pruning_rate if convention == "paper" else 1.0
    return {
        "relu": c * h * w,
        "pool": c * h * w,
        "saliency": heads * saliency,
        "conv": round(heads * dense_conv * keep),
    }


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
    _check_convention(convention, DGC_CONVENTIONS)
    if convention != "realized":
        if kept_channels is not None:
            raise ValueError(
                f"kept_channels is only used with convention='realized', got "
                f"convention={convention!r}"
            )
        return sum(dgc_layer_mac_terms(layer, input_hw, convention).values())

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
    terms = dgc_layer_mac_terms(layer, input_hw, "paper")
    fixed = terms["relu"] + terms["pool"] + terms["saliency"]
    per_channel = _dense_head_conv_per_channel(layer, _check_hw(input_hw))
    macs = fixed + kept.long().sum(dim=-1) * per_channel  # () or (N,)
    return int(macs) if macs.dim() == 0 else macs


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
    device and dtype, with the model temporarily in eval mode (every module's mode and every DGC
    layer's ``last_*`` attributes are restored afterwards) and inside ``dgclab.record.paused()``
    (a live ``Recorder`` of the model does not record it). Counts are for the whole batch
    divided by the batch size, i.e. per image.

    What is counted: convs and linear layers from ``FlopCounterMode`` (FLOPs / 2), plus linear
    bias, ReLU and pooling from forward hooks (a module called twice counts twice); matmuls and
    convs run outside any module appear as a ``"(functional)"`` row. DGC layers are counted by
    ``dgc_layer_mac_terms`` only; nothing inside them is counted again. BatchNorm is 0; other
    modules (dropout, flatten, other activations) are not counted.

    Args:
        model: any module; DGC layers inside it use the formula.
        input_size: (B, C, H, W), four positive ints.
        convention: ``"paper"`` (DGC conv term x ``(1 - xi)``) or ``"dense"`` (the DGC conv term
            of the mask execution, no factor).
        per_layer: return a table instead of the total.

    Returns:
        The total as an int, or with ``per_layer`` a DataFrame with one row per counted module
        (``named_modules`` order): ``layer`` (module name), ``type`` (class name), ``calls``,
        ``macs`` (int, per image; the column sums to the total) and, for DGC layers, the parts
        ``dgc_relu``, ``dgc_pool``, ``dgc_saliency``, ``dgc_conv`` (NA elsewhere).

    Example:
        >>> count_macs(nn.Conv2d(128, 128, 3, padding=1, bias=False), (1, 128, 16, 16))
        37748736
    """
    size = _check_input_size(input_size)
    _check_convention(convention, CONVENTIONS)
    batch = size[0]

    modules = dict(model.named_modules())
    dgc_names = [n for n, m in modules.items() if isinstance(m, DGCConv2d)]
    counted = {}  # name -> module whose MACs this function reports, in named_modules order
    for name, module in modules.items():
        if any(_is_inside(name, d) for d in dgc_names):
            continue  # the DGC formula covers it
        if isinstance(
            module,
            (DGCConv2d,)
            + CONV_TYPES
            + LINEAR_TYPES
            + RELU_TYPES
            + WINDOW_POOL_TYPES
            + ADAPTIVE_POOL_TYPES
            + ZERO_COST_TYPES,
        ):
            counted[name] = module
    # Modules that own FlopCounterMode counts; whatever the outermost ones leave of the global
    # count ran outside any of them (functional convs and matmuls).
    flop_modules = [
        n for n, m in counted.items() if isinstance(m, (DGCConv2d,) + CONV_TYPES + LINEAR_TYPES)
    ]
    flop_owners = [n for n in flop_modules if not any(_is_inside(n, o) for o in flop_modules)]

    # Per module: calls and the hook-counted MACs for the whole batch (a DGC layer records its
    # formula terms per image).
    calls: dict[str, int] = defaultdict(int)
    hook_macs: dict[str, int] = defaultdict(int)
    dgc_terms: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(DGC_TERMS, 0))

    def make_hook(name: str, module: nn.Module):
        def hook(mod, inputs, output):
            x = inputs[0]
            calls[name] += 1
            if isinstance(mod, DGCConv2d):
                terms = dgc_layer_mac_terms(mod, x.shape[-2:], convention)
                for key, value in terms.items():
                    dgc_terms[name][key] += value
            elif isinstance(mod, LINEAR_TYPES):
                hook_macs[name] += output.numel() if mod.bias is not None else 0
            elif isinstance(mod, RELU_TYPES):
                hook_macs[name] += x.numel()
            elif isinstance(mod, WINDOW_POOL_TYPES):
                kh, kw = _pair(mod.kernel_size)
                hook_macs[name] += output.numel() * kh * kw
            elif isinstance(mod, ADAPTIVE_POOL_TYPES):
                # Exact when the output size divides the input size (always for a global pool).
                hook_macs[name] += x.numel()

        return hook

    device, dtype = _device_and_dtype(model)
    x = torch.zeros(size, device=device, dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    dgc_state = {
        n: (modules[n].last_lasso, modules[n].last_saliency, modules[n].last_selection)
        for n in dgc_names
    }
    handles = []
    try:
        handles = [m.register_forward_hook(make_hook(n, m)) for n, m in counted.items()]
        model.eval()
        with torch.no_grad(), paused(), FlopCounterMode(display=False) as flop_counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
        for n, (lasso, saliency, selection) in dgc_state.items():
            layer = modules[n]
            layer.last_lasso, layer.last_saliency, layer.last_selection = lasso, saliency, selection

    # FlopCounterMode keys every module by its class-name-rooted path: "ResNet.layer1.0.conv1".
    flops = {k: sum(v.values()) for k, v in flop_counter.get_flop_counts().items()}
    root = type(model).__name__

    def module_flops(name: str) -> int:
        return flops.get(f"{root}.{name}" if name else root, 0)

    rows = []
    for name, module in counted.items():
        if not calls[name]:
            continue
        row = {"layer": name, "type": type(module).__name__, "calls": calls[name]}
        if isinstance(module, DGCConv2d):
            terms = dgc_terms[name]
            row["macs"] = sum(terms.values())
            row.update({f"dgc_{key}": value for key, value in terms.items()})
        else:
            macs = hook_macs[name]
            if isinstance(module, CONV_TYPES + LINEAR_TYPES):
                macs += module_flops(name) // 2  # FLOPs = 2 x MACs
            row["macs"] = macs // batch
        rows.append(row)
    functional = flops.get("Global", 0) - sum(module_flops(n) for n in flop_owners)
    if functional > 0:
        rows.append(
            {
                "layer": "(functional)",
                "type": "functional",
                "calls": 1,
                "macs": functional // 2 // batch,
            }
        )

    if not per_layer:
        return int(sum(row["macs"] for row in rows))
    columns = ["layer", "type", "calls", "macs"] + [f"dgc_{key}" for key in DGC_TERMS]
    table = pd.DataFrame(rows, columns=columns)
    table["calls"] = table["calls"].astype("int64")
    table["macs"] = table["macs"].astype("int64")
    for key in DGC_TERMS:
        table[f"dgc_{key}"] = table[f"dgc_{key}"].astype("Int64")  # NA outside DGC layers
    return table


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _dense_head_conv_per_channel(layer: DGCConv2d, input_hw: tuple[int, int]) -> int:
    """MACs of one head's conv per kept input channel: (C_out/heads) * kh*kw * H'*W'."""
    kh, kw = layer.kernel_size
    ho, wo = conv_output_hw(
        input_hw, layer.kernel_size, layer.stride, layer.padding, layer.dilation
    )
    return layer.out_channels // layer.heads * kh * kw * ho * wo


def _is_inside(name: str, parent: str) -> bool:
    """Whether module ``name`` is a strict descendant of module ``parent`` ("" is the root)."""
    if parent == "":
        return name != ""
    return name.startswith(parent + ".")


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_input_size(input_size) -> tuple[int, int, int, int]:
    size = tuple(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else None
    if size is None or len(size) != 4 or not all(_is_int(s) and s > 0 for s in size):
        raise ValueError(
            f"input_size must be four positive ints (B, C, H, W), got input_size={input_size!r}"
        )
    return size  # type: ignore[return-value]


def _check_hw(input_hw) -> tuple[int, int]:
    hw = None
    if isinstance(input_hw, (tuple, list, torch.Size)):
        hw = tuple(int(s) for s in input_hw)
    if hw is None or len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"input_hw must be two positive ints (H, W), got input_hw={input_hw!r}")
    return hw  # type: ignore[return-value]


def _check_convention(convention, allowed: tuple[str, ...]) -> None:
    if convention not in allowed:
        raise ValueError(f"convention must be one of {allowed}, got convention={convention!r}")
