"""Dynamic Group Convolution (DGC).

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242. Official code: github zhuogege1943/dgc, whose
class ``DynamicMultiHeadConv`` this layer reproduces key for key (SPEC §1.1).

A DGC layer splits its output channels among ``heads`` groups of filters. For every image, each
head's small saliency generator scores the input channels; the head keeps the ``C_in - k``
most salient ones, scales them by their saliency and convolves only those. ``k`` (the number of
inactive channels) grows during training along the official schedule (``dgc_schedule.py``).
A DGC layer is a dynamic layer of the layer protocol (``base.py``): ``last_selection`` says
which channels each head read for each image of the last forward.

Two selection rules: the official head-wise one (``threshold`` None, the default) and the
global threshold of the paper's supplementary material (DGC-G, ``threshold`` a number: a head
keeps every channel whose saliency exceeds it, at least one), under which the compute varies
per image, head and layer; ``calibrate_threshold`` (``dgc_network.py``) picks one threshold for
a whole model. Every execution below takes either rule.

Two executions compute the same numbers, NaN and Inf included:

* ``"mask"`` is the paper's reference formulation: every head convolves the full input with the
  dropped channels zeroed (dense cost). The official code gates a copy of the input per head
  (``heads``x the activation memory); ``dgc_mask_conv`` gates the filters instead (one bank per
  image) where that copy is the smaller one.
* ``"gather"`` gathers, per image and head, only the kept channels and the matching filter
  columns, then runs one batched matmul (1x1) or one grouped conv (kxk) over ``batch*heads``
  groups: the MACs really fall to ``(C_in - k) / C_in`` of dense. In CPU float32 inference a
  fused C++ kernel does the same per image and head, BN-ReLU included (``cpu_kernel.py``), and
  convolves each image-head's own kept channels however many; the PyTorch gather runs equal
  groups, so under the threshold rule it pads every image-head to the batch's largest keep
  (the padding's gates are 0). On CUDA a Triton kernel (``dgc_triton.py``) does it as an
  implicit GEMM over each image-head's own kept channels, float32, float16 and bfloat16; its
  backward is the PyTorch gather's. Until a GPU has measured it, "auto" on CUDA follows the
  PyTorch gather's keep-fraction rule below (README, "GPU").

This file is the layer alone (about 520 lines: its state, its layer-protocol methods and its
forward read best in one place). The functional core (``select_channels``, ``dgc_mask_conv``:
``dgc_functional.py``) and the gather execution (``dgc_gather_conv``: ``dgc_gather.py``) sit in
modules of their own so that the maths can be tested without a Module; this one re-exports
them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import (
    check_bool, check_choice, check_conv_geometry, check_float, check_int
)
from . import cpu_kernel, tuning
from .base import GroupingConv, conv_channel_macs, conv_output_hw

# Everything below is re-exported: ``from dgclab.layers.dgc import X`` works as before the split.
from .dgc_functional import (
    check_inactive_channels,
    dgc_mask_conv,
    effective_squeeze_rate,
    final_inactive_channels,
    interleave_heads,
    select_above_threshold,
    select_channels,
    select_top_channels,
)
from .dgc_gather import dgc_gather_conv, release_scratch
from .dgc_schedule import pruning_schedule

__all__ = [
    "DGCConv2d",
    "DGCHead",
    "select_channels",
    "select_top_channels",
    "dgc_mask_conv",
    "dgc_gather_conv",
    "interleave_heads",
    "effective_squeeze_rate",
    "final_inactive_channels",
    "check_inactive_channels",
    "release_scratch",
]

Execution = Literal["auto", "mask", "gather"]
EXECUTIONS = ("auto", "mask", "gather")

# "auto" gathers when a head keeps at most this fraction of its input channels, where the fused
# CPU kernel does not apply (CUDA, the kernel off). Measured with `python -m dgclab.bench layer`
# for the PyTorch gather: above it the per-sample weight gather costs more than the MACs it
# saves, so the dense masked conv wins (k = 0 during warm-up is the typical case). Where the
# kernel applies (CPU float32 inference), "auto" gathers at every k except on small maps at
# large batches, where a head keeping more than half its channels is better served by the
# masked dense conv (``python -m dgclab.bench layer --auto``; README, "Two executions").
AUTO_GATHER_MAX_KEEP = 0.75
KERNEL_MASK_MIN_BATCH = 9  # the kernel's exception: batch >= this,
KERNEL_MASK_MAX_PIXELS = 63  # output maps of at most this many pixels,
KERNEL_MASK_MIN_KEEP = 0.5  # and a head keeping more than this fraction of its channels
# The same under autograd, where the gather's backward (index_add of filter columns, a grouped
# conv's weight gradient over batch*heads tiny groups) costs more. Training steps of resnet8 w32 on
# 28x28 inputs, batch 128, 2 threads (2026-11-22), mask (gating weights or inputs, whichever is
# smaller: ``dgc_mask_conv``) vs gather per step: 0.43 vs 0.64 s at keep 0.42 C, 0.39 vs 0.58 s at
# keep 0.30 C, 0.42 vs 0.32 s at keep 0.25 C (per layer, gather broke even at 0.25 C on the first
# stage and won by 1.7x on the second).
AUTO_GATHER_MAX_KEEP_AUTOGRAD = 0.25


def _kept_first(saliency: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """(B, heads, K) indices with every image-head's kept channels first, K the largest keep
    count of the batch; the rest of a row are dropped channels (gate 0), the padding that lets
    the PyTorch gather run equal groups. NaN saliencies that are kept sort first too. Sorted,
    so that the first ``keep_mask.sum(-1)`` entries of a row are its kept channels (the Triton
    kernel reads no further)."""
    width = int(keep_mask.sum(-1).max()) if keep_mask.numel() else 1
    key = torch.where(keep_mask, saliency.detach(), float("-inf"))  # a kept NaN stays NaN
    return key.topk(max(width, 1), dim=-1, sorted=True).indices


def _autocast(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (inputs of another float dtype are fine then)."""
    try:
        return torch.is_autocast_enabled(device_type)  # torch >= 2.4
    except TypeError:
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class DGCHead(nn.Module):
    """One head: its filter bank and its saliency generator (official ``HeadConv``).

    Only holds parameters; ``DGCConv2d.forward`` evaluates all heads at once.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride,
        padding,
        dilation,
        hidden: int,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False
        )
        self.fc1 = nn.Linear(in_channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, in_channels, bias=True)
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.kaiming_normal_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, 1.0)  # every channel starts salient


def _threshold_value(buffer: torch.Tensor, name: str) -> float | None:
    """The threshold a ``_threshold`` buffer holds: NaN means None (the head-wise rule)."""
    value = float(buffer.item())
    return None if value != value else value


class DGCConv2d(GroupingConv, nn.Module):
    """Dynamic group convolution, faithful to the official ``DynamicMultiHeadConv``.

    Forward for x of shape (B, C_in, H, W):
    ``x = ReLU(BN(x))``; ``p = avgpool(x)`` shared by all heads; per head
    ``g_i = ReLU(fc2_i(ReLU(fc1_i(p))))``; the k least salient channels of ``g_i`` are dropped
    (ties together), kept ones are scaled by ``g_i``; head i convolves its gated input into
    ``C_out / heads`` channels; heads are interleaved (head i channel j -> ``j*heads + i``).

    Args:
        in_channels: C_in, divisible by ``heads``.
        out_channels: C_out, divisible by ``heads``.
        kernel_size, stride, padding, dilation: as ``nn.Conv2d``, an int or a pair of ints
            (no string padding).
        heads: number of filter groups, each with its own saliency generator.
        squeeze_rate: hidden width of the saliency MLP is ``C_in // squeeze_rate`` (halved rate
            when ``C_in < 80``, as in the official code).
        pruning_rate: xi, the target fraction of input channels each head drops (the official
            code's ``1 - gate_factor``).
        execution: ``"mask"`` (reference), ``"gather"`` (computes only the kept channels) or
            ``"auto"`` (where the fused CPU kernel applies, gather at every k but on small
            maps at large batches; elsewhere gather when a head keeps at most 3/4 of its
            channels, at most 1/4 of them under autograd, else mask; with
            ``dgclab.layers.tuning`` on, eval-mode CPU inference measures the two per shape
            instead; ``resolved_execution`` says which).

    Every argument is checked here (TypeError for a wrong type, ValueError for a bad value),
    and so is k wherever it enters: the ``inactive_channels`` setter, ``load_state_dict``
    (a checkpoint's ``_inactive_channels`` buffer) and every forward, which also refuses an
    input of another dtype than the parameters' (outside autocast) or too small for the kernel.

    Attributes set by every forward (detached except the lasso):
        last_lasso: 0-d tensor, sum over heads of mean(g_i) (the paper's lasso term); 0 for an
            empty batch, which has no saliencies (a mean over none would be NaN).
        last_saliency: (B, heads, C_in) the saliencies g.
        last_selection: (B, heads, C_in) bool, the channels each head actually kept.

    Example:
        >>> layer = DGCConv2d(64, 64, 3, padding=1, heads=4, pruning_rate=0.75)
        >>> layer.inactive_channels = 48
        >>> layer(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        heads: int = 4,
        squeeze_rate: int = 16,
        pruning_rate: float = 0.75,
        execution: Execution = "auto",
    ) -> None:
        super().__init__()
        in_channels, out_channels, kernel_size, stride, padding, dilation = check_conv_geometry(
            in_channels, out_channels, kernel_size, stride, padding, dilation)
        heads = check_int("heads", heads, min=1)
        check_choice("execution", execution, EXECUTIONS)
        if in_channels % heads:
            raise ValueError(
                f"heads must divide in_channels, got heads={heads}, in_channels={in_channels}"
            )
        if out_channels % heads:
            raise ValueError(
                f"heads must divide out_channels, got heads={heads}, out_channels={out_channels}"
            )
        final_inactive_channels(in_channels, pruning_rate)  # checks the rate, refuses k = C_in
        squeeze_rate = check_int("squeeze_rate", squeeze_rate, min=1)
        sr = effective_squeeze_rate(in_channels, squeeze_rate)
        hidden = in_channels // sr if sr > 0 else 0
        if hidden <= 0:
            raise ValueError(
                f"squeeze_rate={squeeze_rate} leaves a 0-wide saliency MLP for "
                f"in_channels={in_channels} (effective rate {sr}); use a smaller squeeze_rate"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.heads = heads
        self.squeeze_rate = squeeze_rate
        self.hidden = hidden
        self.pruning_rate = float(pruning_rate)
        self.execution = execution

        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        # k as the official float buffer of shape (1,): checkpoints carry it, a fresh model
        # prunes nothing.
        self.register_buffer("_inactive_channels", torch.zeros(1))
        # the DGC-G threshold, NaN for the head-wise rule; a buffer so that checkpoints carry it
        # (only when set, see _save_to_state_dict)
        self.register_buffer("_threshold", torch.full((1,), float("nan")))
        for i in range(heads):
            self.add_module(
                f"headconv_{i}",
                DGCHead(
                    in_channels,
                    out_channels // heads,
                    self.kernel_size,
                    self.stride,
                    self.padding,
                    self.dilation,
                    hidden,
                ),
            )

        self.last_lasso: torch.Tensor | None = None
        self.last_saliency: torch.Tensor | None = None
        self.last_selection: torch.Tensor | None = None

    # ---- state ------------------------------------------------------------------------------

    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        self._execution = check_choice("execution", value, EXECUTIONS)

    @property
    def inactive_channels(self) -> int:
        """k, the number of input channels each head drops (0 <= k < in_channels).

        Read from the ``_inactive_channels`` buffer, which is checked on every read: a value
        written to it directly is refused here (ValueError) rather than used. (The checked
        value is remembered until the buffer changes, as its version counter and storage say:
        at batch 1 the check cost a tenth of a layer's time.)
        """
        return self._buffer_value("_inactive_channels", self._checked_k)

    @inactive_channels.setter
    def inactive_channels(self, k: int) -> None:
        k = check_inactive_channels(k, self.in_channels)
        self._inactive_channels.fill_(k)

    @property
    def threshold(self) -> float | None:
        """The selection rule: None for the official head-wise rule (each head drops its k least
        salient channels), or tau >= 0 for the global-threshold rule (DGC-G: keep every channel
        whose saliency exceeds tau, at least one per head; ``select_above_threshold``). Kept in
        the ``_threshold`` buffer (NaN for None), so checkpoints carry it. Under the threshold
        rule k still sets the pruning schedule's target and the "auto" execution's choice.
        """
        return self._buffer_value("_threshold", _threshold_value)

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        if value is None:
            self._threshold.fill_(float("nan"))
        else:
            self._threshold.fill_(check_float("threshold", value, min=0))

    def _buffer_value(self, name: str, read):
        """``read(buffer, name)``, remembered while the buffer is the same tensor, unchanged
        in place (its version counter) and over the same storage."""
        buffer = self._buffers[name]
        cache = self.__dict__.setdefault("_buffer_values", {})
        seen = cache.get(name)  # (buffer, version, data_ptr, value)
        if (seen is None or seen[0] is not buffer or seen[1] != buffer._version
                or seen[2] != buffer.data_ptr()):
            seen = cache[name] = (buffer, buffer._version, buffer.data_ptr(), read(buffer, name))
        return seen[3]

    def _checked_k(self, value, name: str) -> int:
        """k held by a (1,) buffer or a number, checked (``check_inactive_channels``)."""
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name} must hold one value, k, got shape {tuple(value.shape)}")
            value = value.item()
        return check_inactive_channels(value, self.in_channels, name)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
        error_msgs,
    ) -> None:
        # k enters from a file here (load_state_dict, a checkpoint, load_official): refuse a
        # bad one before this layer loads anything, naming the key.
        key = prefix + "_inactive_channels"
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and not value.is_meta:
            self._checked_k(value, key)
        # A layer's state without a threshold (the official code's, dgclab's before the rule,
        # any head-wise layer's: see _save_to_state_dict) selects head-wise.
        key = prefix + "_threshold"
        if key not in state_dict and prefix + "_inactive_channels" in state_dict:
            state_dict[key] = torch.full((1,), float("nan"))
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and not value.is_meta:
            if value.numel() != 1:
                raise ValueError(f"{key} must hold one value, got shape {tuple(value.shape)}")
            if value.item() == value.item():  # NaN: head-wise
                check_float(key, value.item(), min=0)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        # The threshold is saved only where it is set: a head-wise layer's state dict keeps the
        # official code's keys, key for key (a missing threshold loads as the head-wise rule).
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.threshold is None:
            destination.pop(prefix + "_threshold", None)

    @property
    def heads_list(self) -> list[DGCHead]:
        return [getattr(self, f"headconv_{i}") for i in range(self.heads)]

    def resolved_execution(self, k: int | None = None, autograd: bool | None = None,
                           input: torch.Tensor | None = None) -> str:
        """The execution a forward with the current k uses ("mask" or "gather").

        Args:
            k: inactive channels, in [0, in_channels); default the layer's current k.
            autograd: whether the forward records a graph; default ``torch.is_grad_enabled()``.
            input: the forward's input, if known: where the fused CPU kernel applies to it
                (CPU, float32, no autograd), "auto" follows the kernel's own rule (gather at
                every k, except at batches of 9 or more on maps of at most 63 output pixels
                where a head keeps more than half its channels); with ``tuning`` on, in eval
                mode, the choice measured for this input's shape where one was. The repr
                shows the rule without an input.
        """
        if k is None:
            k = self.inactive_channels
        else:
            k = check_inactive_channels(k, self.in_channels, "k")
        autograd = torch.is_grad_enabled() if autograd is None else check_bool("autograd", autograd)
        if input is not None and not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a Tensor or None, got {type(input).__name__}")
        kernel = input is not None and not autograd and cpu_kernel.applies(input)
        if kernel and self._tunes(self.threshold):
            measured = tuning.remembered(self._tuning_key(input, k))
            if measured is not None:
                return measured
        return self._resolve(k, autograd, input, kernel)

    def _resolve(self, k: float, autograd: bool, x: torch.Tensor | None = None,
                 kernel: bool = False, out_hw: tuple[int, int] | None = None) -> str:
        """``resolved_execution`` for arguments taken as they are; ``kernel``: whether the fused
        CPU kernel applies to the input ``x`` (``out_hw``: its output's size, if known). With
        the kernel, "auto" gathers, except at large batches on small maps where a head keeps
        more than half its channels (the KERNEL_MASK_* constants)."""
        if self._execution != "auto":
            return self._execution
        keep = self.in_channels - k
        if kernel:
            h, w = out_hw or conv_output_hw(x.shape[-2:], self.kernel_size, self.stride,
                                            self.padding, self.dilation)
            small = (x.shape[0] >= KERNEL_MASK_MIN_BATCH and h * w <= KERNEL_MASK_MAX_PIXELS
                     and keep > KERNEL_MASK_MIN_KEEP * self.in_channels)
            return "mask" if small else "gather"
        max_keep = AUTO_GATHER_MAX_KEEP_AUTOGRAD if autograd else AUTO_GATHER_MAX_KEEP
        return "gather" if keep <= max_keep * self.in_channels else "mask"

    def extra_repr(self) -> str:
        k = self._inactive_channels.item()  # unchecked: printing a model must not fail
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        execution = self._execution
        if execution == "auto":
            inference, training = self._resolve(k, False), self._resolve(k, True)
            execution = (
                f"auto({inference})"
                if inference == training
                else f"auto({inference}; {training} under autograd)"
            )
        threshold = self._threshold.item()
        rule = f", threshold={threshold:.4g}" if threshold == threshold else ""
        return (
            s + f", heads={self.heads}, pruning_rate={self.pruning_rate}, "
            f"k={k:g}/{self.in_channels}{rule}, execution={execution}"
        )

    # ---- the layer protocol (base.py) ------------------------------------------------------

    kind = "dgc"
    dynamic = True
    EXTRA_INFO_KEYS = ("hidden", "pruning_rate", "inactive_channels")

    @property
    def channel_groups(self) -> int:
        return self.heads

    def extra_info(self) -> dict:
        return {"hidden": self.hidden, "pruning_rate": self.pruning_rate,
                "inactive_channels": self.inactive_channels}

    @classmethod
    def check_info(cls, info: dict) -> dict:
        """A positive hidden width, a pruning rate in [0, 1) that keeps a channel, 0 <= k < C_in."""
        c = info["in_channels"]
        out = dict(info)
        out["hidden"] = check_int("hidden", info["hidden"], min=1)
        rate = check_float("pruning_rate", info["pruning_rate"], min=0, max=1,
                           max_inclusive=False)
        if final_inactive_channels(c, rate) >= c:
            raise ValueError(f"pruning_rate={rate} would drop all {c} input channels")
        out["pruning_rate"] = rate
        out["inactive_channels"] = check_int("inactive_channels", info["inactive_channels"],
                                             min=0, max=c - 1)
        return out

    @classmethod
    def mac_terms_from_info(cls, info, convention="paper") -> dict[str, int]:
        """The paper's MAC formula for one image, term by term (SPEC §1.5).

        With ``h`` the saliency MLP width, per image: ReLU ``C_in*H*W``, pool ``C_in*H*W``,
        per head the saliency MLP ``C_in*h + h + h*C_in + 3*C_in`` (fc1, fc2 with its bias,
        then the paper's ReLU, gate and threshold terms) and the head's conv over its kept
        channels, ``C_in * (C_out/heads) * kh*kw * H'*W'`` times ``1 - xi`` (``"paper"``) or
        not (``"dense"``: the mask execution). BN, the gating multiply and the top-k are not
        counted, and the conv term uses the target keep ratio, not k. ``conv`` is rounded to
        an int (exact whenever ``(1 - xi) * C_in`` is an integer).
        """
        c, hidden, heads = info["in_channels"], info["hidden"], info["heads"]
        h, w = info["input_hw"]
        keep = 1.0 - info["pruning_rate"] if convention == "paper" else 1.0
        return {
            "relu": c * h * w,
            "pool": c * h * w,
            "saliency": heads * (c * hidden + hidden + hidden * c + 3 * c),
            "conv": round(heads * c * conv_channel_macs(info) * keep),
        }

    @classmethod
    def computed_channels_from_info(cls, info) -> int:
        return info["in_channels"] - info["inactive_channels"]  # what the gather convolves

    def set_progress(self, progress: float) -> None:
        """Set k from training progress p along the official schedule (``pruning_schedule``)."""
        self.inactive_channels = pruning_schedule(progress, self.in_channels, self.pruning_rate)

    def regularization(self) -> torch.Tensor:
        """The lasso term of the last forward (``last_lasso``); ValueError before any."""
        if self.last_lasso is None:
            raise ValueError("a DGC layer's lasso term needs a forward first")
        return self.last_lasso

    # ---- forward ----------------------------------------------------------------------------

    def saliency(self, pooled: torch.Tensor) -> torch.Tensor:
        """All heads' saliency generators at once.

        Args:
            pooled: (B, C_in) globally pooled input.

        Returns:
            (B, heads, C_in) non-negative saliencies g.
        """
        heads = self.heads_list
        w1 = torch.cat([h.fc1.weight for h in heads])  # (heads*hidden, C)
        w2 = torch.stack([h.fc2.weight for h in heads])  # (heads, C, hidden)
        b2 = torch.stack([h.fc2.bias for h in heads])  # (heads, C)
        hidden = F.relu(F.linear(pooled, w1))  # (B, heads*hidden)
        hidden = hidden.view(len(pooled), self.heads, self.hidden).transpose(0, 1)  # (heads, B, h)
        g = torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2))  # (heads, B, C)
        return F.relu(g).transpose(0, 1)  # (B, heads, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_hw = self._check_input(x)
        k = self.inactive_channels
        autograd = torch.is_grad_enabled()
        kernel = not autograd and cpu_kernel.applies(x)
        execution = self._resolve(k, autograd, x, kernel, out_hw)  # resolved_execution
        threshold = self.threshold
        if kernel and self._tunes(threshold):
            execution = tuning.choose(self._tuning_key(x, k), {
                "gather": lambda: self._kernel_forward(x, k, None),
                "mask": lambda: self._pytorch_forward(x, k, "mask", None),
            })
        if execution == "gather" and kernel:
            return self._kernel_forward(x, k, threshold)
        return self._pytorch_forward(x, k, execution, threshold)

    def _tunes(self, threshold: float | None) -> bool:
        """Whether this inference forward's execution is chosen by measurement (``tuning.py``):
        tuning on, "auto", eval mode (a training-mode forward updates BN statistics, which timing
        would repeat) and the head-wise rule (under a threshold the keep counts vary with the
        images, so no shape key stands for them)."""
        return (tuning.enabled() and self._execution == "auto" and not self.training
                and threshold is None)

    def _tuning_key(self, x: torch.Tensor, k: int) -> tuple:
        """What the measured choice depends on: the layer's and the input's shapes, k, whether
        the kernel folds the BN, and the thread count."""
        return ("DGCConv2d", self.in_channels, self.out_channels, self.heads, self.kernel_size,
                self.stride, self.padding, self.dilation, tuple(x.shape), k, self._fuse_norm(),
                tuning.threads())

    def _pytorch_forward(self, x: torch.Tensor, k: int, execution: str,
                         threshold: float | None) -> torch.Tensor:
        """The PyTorch formulation of ``execution`` ("mask" or "gather")."""
        x = self.relu(self.norm(x))
        pooled = x.mean(dim=(2, 3))
        g = self.saliency(pooled)  # (B, heads, C)
        # before pruning, as the official code; an empty batch adds 0 (still in the graph)
        self.last_lasso = g.mean(dim=(0, 2)).sum() if len(g) else g.sum()

        weight = torch.stack([h.conv.weight for h in self.heads_list])  # (heads, Co_h, C, kh, kw)
        counts = None  # (B, heads) kept channels per image-head, where they vary
        if threshold is not None:
            keep_mask = select_above_threshold(g, threshold)  # (B, heads, C)
            keep_idx = None if execution == "mask" else _kept_first(g, keep_mask)  # (B, heads, K)
            counts = None if keep_idx is None else keep_mask.sum(-1)
        elif execution == "mask":
            keep_mask = select_channels(g, k)  # (B, heads, C)
            keep_idx = None
        else:
            keep_mask, keep_idx = select_top_channels(g, k)  # (B, heads, C), (B, heads, C-k)
        gate = g * keep_mask
        self.last_saliency = g.detach()
        self.last_selection = keep_mask

        if keep_idx is None:
            return dgc_mask_conv(x, gate, weight, self.stride, self.padding, self.dilation)
        if not (pooled.isfinite().all() and gate.isfinite().all()):
            # A NaN or Inf in the (normalised) input, whose plane's mean is then not finite, or
            # in a gate: the mask execution multiplies every dropped channel by its gate, and
            # 0 * Inf, 0 * NaN and NaN * x are NaN. Read every channel then (dense cost) so that
            # the gather gives the same NaNs instead of skipping them.
            b, c = g.shape[0], self.in_channels
            keep_idx = torch.arange(c, device=g.device).expand(b, self.heads, c)
            counts = None
        return dgc_gather_conv(x, gate, keep_idx, weight, self.stride, self.padding, self.dilation,
                               counts=counts)

    def _kernel_forward(self, x: torch.Tensor, k: int, threshold: float | None) -> torch.Tensor:
        """CPU float32 inference: the whole layer in one call of the fused kernel
        (``cpu_kernel.py``), the BN-ReLU included where it is an affine map nobody observes;
        with a threshold, the kernel selects by it (k then only guides its weight packing)."""
        norm = self._modules["norm"]
        if self._fuse_norm():
            buffers, params = norm._buffers, norm._parameters  # not Module.__getattr__
            stats = (buffers["running_mean"], buffers["running_var"], params["weight"],
                     params["bias"], norm.eps)
        else:
            x = self.relu(norm(x))
            stats = (None, None, None, None, 0.0)
        y, g, keep, lasso = torch.ops.dgclab.dgc_forward(
            x, *stats, *self._kernel_weights(), k, threshold, self.stride, self.padding,
            self.dilation
        )
        # plain attributes (no buffer, parameter or module of these names), so set them without
        # nn.Module.__setattr__'s lookups, as every execution keeps them
        self.__dict__.update(last_lasso=lasso, last_saliency=g, last_selection=keep)
        return y

    def _kernel_weights(self) -> tuple[list[torch.Tensor], ...]:
        """Every head's fc1 weight, fc2 weight, fc2 bias and conv weight, as four lists.

        Read through the modules' ``_modules`` and ``_parameters`` dicts: at batch 1 the 48
        ``nn.Module.__getattr__`` calls of ``[h.fc1.weight for h in self.heads_list]`` and the
        like cost about a third of the fused kernel's own time.
        """
        fc1, fc2, bias, conv = [], [], [], []
        for i in range(self.heads):
            head = self._modules[f"headconv_{i}"]._modules
            fc1.append(head["fc1"]._parameters["weight"])
            second = head["fc2"]._parameters
            fc2.append(second["weight"])
            bias.append(second["bias"])
            conv.append(head["conv"]._parameters["weight"])
        return fc1, fc2, bias, conv

    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Refuse an input every execution would fail on differently, or deep inside torch;
        return the output's (H', W')."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"DGCConv2d expects a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"DGCConv2d expects a 4-D input (B, C, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        weight = self._modules["headconv_0"]._modules["conv"]._parameters["weight"]
        if x.device != weight.device:
            raise ValueError(
                f"the input is on {x.device} but the layer's parameters are on {weight.device}: "
                f"move one to the other (model.to(device) or x.to(device))"
            )
        dtype = weight.dtype
        if not x.is_floating_point() or (x.dtype != dtype and not _autocast(x.device.type)):
            raise TypeError(
                f"DGCConv2d expects an input of its parameters' dtype, got dtype={x.dtype} for "
                f"parameters of dtype {dtype}"
            )
        h, w = x.shape[-2:]
        sides = zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation)
        output = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in sides]  # nn.Conv2d
        if min(h, w, *output) < 1:
            raise ValueError(
                f"input of spatial size {h}x{w} is too small for kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
            )
        return output[0], output[1]

    def _fuse_norm(self) -> bool:
        """Whether the fused kernel may apply the BN-ReLU itself.

        Only where the BN is an affine map (eval mode, running statistics) and nothing observes
        ``norm`` or ``relu`` (hooks on them, e.g. the filter-sparsity analysis, see their
        outputs, which the kernel never writes out).
        """
        norm, relu = self._modules["norm"], self._modules["relu"]
        observed = (
            norm._forward_hooks
            or norm._forward_pre_hooks
            or relu._forward_hooks
            or relu._forward_pre_hooks
            or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks
        )
        tracked = norm._buffers.get("running_mean") is not None
        return not norm.training and tracked and not observed
