"""Dynamic Group Convolution (DGC).

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242. Official code: github zhuogege1943/dgc, whose
class ``DynamicMultiHeadConv`` this layer reproduces key for key (SPEC §1.1).

A DGC layer splits its output channels among ``heads`` groups of filters. For every image, each
head's small saliency generator scores the input channels; the head keeps the ``C_in - k``
most salient ones, scales them by their saliency and convolves only those. ``k`` (the number of
inactive channels) grows during training along the official schedule (``pruning.py``).

Two executions compute the same numbers, NaN and Inf included:

* ``"mask"`` is the paper's reference formulation: every head convolves the full input with the
  dropped channels zeroed (dense cost). The official code gates a copy of the input per head
  (``heads``x the activation memory); ``dgc_mask_conv`` gates the filters instead (one bank per
  image) where that copy is the smaller one.
* ``"gather"`` gathers, per image and head, only the kept channels and the matching filter
  columns, then runs one batched matmul (1x1) or one grouped conv (kxk) over ``batch*heads``
  groups: the MACs really fall to ``(C_in - k) / C_in`` of dense. In CPU float32 inference a
  fused C++ kernel does the same per image and head, BN-ReLU included (``cpu_kernel.py``).

The functional core (``select_channels``, ``dgc_mask_conv``, ``dgc_gather_conv``) sits next to
the Module so that the maths can be tested without one.
"""

from __future__ import annotations

import threading
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from ..checks import check_bool, check_choice, check_float, check_int, check_pair
from . import cpu_kernel

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
GATE_ON = ("auto", "input", "weight")

# "auto" gathers when a head keeps at most this fraction of its input channels. Measured with
# `python -m dgclab.bench layer`: above it the per-sample weight gather costs more than the MACs
# it saves, so the dense masked conv wins (k = 0 during warm-up is the typical case).
AUTO_GATHER_MAX_KEEP = 0.75
# The same under autograd, where the gather's backward (index_add of filter columns, a grouped
# conv's weight gradient over batch*heads tiny groups) costs more. Training steps of resnet8 w32 on
# 28x28 inputs, batch 128, 2 threads (2026-11-22), mask (gating weights or inputs, whichever is
# smaller: ``dgc_mask_conv``) vs gather per step: 0.43 vs 0.64 s at keep 0.42 C, 0.39 vs 0.58 s at
# keep 0.30 C, 0.42 vs 0.32 s at keep 0.25 C (per layer, gather broke even at 0.25 C on the first
# stage and won by 1.7x on the second).
AUTO_GATHER_MAX_KEEP_AUTOGRAD = 0.25

# The gather execution runs the batch in chunks: at most this many bytes of per-sample filter
# columns, and at most this many samples, at once (see ``dgc_gather_conv``; measured with
# ``python -m dgclab.bench layer --variants``).
GATHER_CHUNK_BYTES = 8 * 2**20
GATHER_CHUNK_SAMPLES = 16


class _Scratch(threading.local):
    """Per-thread scratch buffers for the gather execution's chunks, on CPU without autograd.

    Each chunk gathers a few MB of inputs and filter columns. Allocated afresh on every call,
    buffers of that size can go back and forth between glibc and the kernel (mmap, page faults,
    trims); reusing them made the gather 10-20 % faster when timed by itself (min over
    repeats; README, "Speed"). Reusing one buffer per (role, dtype)
    avoids that; it holds at most ``GATHER_CHUNK_BYTES`` plus one chunk of gathered inputs per
    thread. CUDA has its caching allocator and autograd must keep what it saves, so both
    allocate as usual. ``release_scratch()`` frees the buffers.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def take(self, role: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        """A 1-D tensor of ``numel`` elements, ``like``'s dtype, valid until the next take."""
        key = (role, like.dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[key] = torch.empty(numel, dtype=like.dtype)
        return buf[:numel]


_scratch = _Scratch()


def release_scratch() -> None:
    """Free this thread's gather scratch buffers (they are made again when needed)."""
    _scratch.buffers.clear()


def _autocast(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (inputs of another float dtype are fine then)."""
    try:
        return torch.is_autocast_enabled(device_type)  # torch >= 2.4
    except TypeError:
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def effective_squeeze_rate(in_channels: int, squeeze_rate: int) -> int:
    """The official quirk: the squeeze rate is halved when ``in_channels < 80``."""
    in_channels = check_int("in_channels", in_channels, min=1)
    squeeze_rate = check_int("squeeze_rate", squeeze_rate, min=1)
    return squeeze_rate // 2 if in_channels < 80 else squeeze_rate


def final_inactive_channels(in_channels: int, pruning_rate: float) -> int:
    """k at the end of the schedule, computed as the official code does (SPEC §1.2).

    The official code stores the keep fraction ``gate_factor = 1 - pruning_rate`` and evaluates
    ``round(C_in * (1 - gate_factor))`` with Python's (banker's) rounding; doing the same
    arithmetic keeps ties identical.

    Raises:
        TypeError: ``in_channels`` is not an int or ``pruning_rate`` not a real number.
        ValueError: ``in_channels < 1``, ``pruning_rate`` outside [0, 1), or a rate that drops
            every channel (k = C_in: 0.9 of 4 channels rounds to 4).
    """
    in_channels = check_int("in_channels", in_channels, min=1)
    pruning_rate = check_float("pruning_rate", pruning_rate, min=0, max=1, max_inclusive=False)
    gate_factor = 1 - pruning_rate
    k = round(in_channels * (1 - gate_factor))
    if k >= in_channels:
        raise ValueError(
            f"pruning_rate={pruning_rate} would drop all {in_channels} input channels"
        )
    return k


def check_inactive_channels(k, in_channels: int, name: str = "inactive_channels") -> int:
    """k as an int, refused unless it is a whole number in [0, in_channels).

    k = C_in would drop every channel (the layer would output zeros), and the official buffer
    stores k as a float: 3.0 is 3, but 2.7 is refused rather than truncated to 2.

    Args:
        k: a number (read a buffer with ``.item()`` first).
        in_channels: C_in of the layer.
        name: what the messages call k (the setter's name, a state-dict key).

    Raises:
        TypeError: ``k`` is not a real number.
        ValueError: NaN, Inf, a fraction, or outside [0, in_channels).
    """
    value = check_float(name, k, min=0, max=in_channels, max_inclusive=False)
    if not value.is_integer():
        raise ValueError(f"{name} must be a whole number in [0, {in_channels}), got {name}={k!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------


def select_channels(saliency: torch.Tensor, inactive_channels: int) -> torch.Tensor:
    """Which input channels each head keeps, per sample.

    Everything less than or equal to the k-th smallest saliency is dropped, so ties at the
    threshold drop together and fewer than ``C - k`` channels can survive (the ReLU makes many
    saliencies exactly 0). This is the official rule, evaluated on a detached copy.

    A NaN saliency sorts above every number (``kthvalue`` and ``topk`` agree on that) and is
    never kept once k > 0 (``NaN > t`` is false); its gate ``g * keep`` stays NaN, so a NaN
    spreads into the output in every execution rather than vanishing.

    Args:
        saliency: (B, heads, C) non-negative saliencies.
        inactive_channels: k, a whole number with 0 <= k < C.

    Returns:
        (B, heads, C) bool, True where the channel is kept.
    """
    g = saliency.detach()
    inactive_channels = check_inactive_channels(inactive_channels, g.shape[-1])
    if inactive_channels == 0:
        return torch.ones_like(g, dtype=torch.bool)
    threshold = g.kthvalue(inactive_channels, dim=-1, keepdim=True).values  # (B, heads, 1)
    return g > threshold


def select_top_channels(
    saliency: torch.Tensor, inactive_channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``select_channels`` plus the indices of the ``C - k`` most salient channels.

    One ``topk`` gives the indices; the k-th smallest saliency is then the largest one outside
    them, so the mask costs a scatter and a max instead of a second selection.

    Returns:
        keep_mask: (B, heads, C) bool, equal to ``select_channels(saliency, k)``.
        keep_idx: (B, heads, C - k) int64, every kept channel plus, where ties dropped more
            than k, some dropped ones (their gate is 0); NaN saliencies first.
    """
    g = saliency.detach()
    inactive_channels = check_inactive_channels(inactive_channels, g.shape[-1])
    keep_idx = g.topk(g.shape[-1] - inactive_channels, dim=-1, sorted=False).indices
    if inactive_channels == 0:
        return torch.ones_like(g, dtype=torch.bool), keep_idx
    threshold = g.scatter(-1, keep_idx, float("-inf")).amax(dim=-1, keepdim=True)
    return g > threshold, keep_idx


def interleave_heads(out: torch.Tensor, heads: int) -> torch.Tensor:
    """Head i's output channel j becomes channel ``j * heads + i`` (the official shuffle).

    Args:
        out: (B, heads * Co_h, H, W), heads stacked block-wise.

    Returns:
        (B, heads * Co_h, H, W), heads interleaved.
    """
    b, c, h, w = out.shape
    heads = check_int("heads", heads, min=1)
    if c % heads:
        raise ValueError(f"heads must divide the channels, got heads={heads}, channels={c}")
    return out.view(b, heads, c // heads, h, w).transpose(1, 2).reshape(b, c, h, w)


def dgc_mask_conv(
    x: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    gate_on: Literal["auto", "input", "weight"] = "auto",
) -> torch.Tensor:
    """Reference execution: each head convolves the whole input, dropped channels zeroed.

    Two ways to apply the gate give the same numbers at the same (dense) MACs:

    * ``"input"``, the paper's code: every head gets its own gated copy of the input, and one
      conv with ``heads`` groups runs over ``heads`` x the activations.
    * ``"weight"``: the gate scales filter columns instead, so every image gets its own filter
      bank (``W_i * g_i`` for every head, rows already in the interleaved order) and one conv
      with ``B`` groups runs over the input itself; no output shuffle.

    ``"auto"`` picks the smaller of the two per-image copies: the weights
    (``C_out * kh * kw`` per input channel) or the gated inputs (``heads * H * W``). Under
    autograd on resnet8 w32 (1 thread, 2026-11-22, forward + backward, batch 128), gating the
    weights took 73 vs 234 ms at 32 channels of 28x28 and 93 vs 110 ms at 64 of 14x14, and
    gating the inputs 46 vs 335 ms at 128 of 7x7.

    NaN and Inf follow the official formulation, the reference of every execution: a dropped
    channel is multiplied by its gate 0 (``0 * Inf`` and ``0 * NaN`` are NaN), a NaN gate
    spreads over its channel's pixels, and the zero padding is added after gating, so
    outputs that see only padding are 0. Gating the filters multiplies the padding by the gate
    instead: the same numbers for a finite gate, NaN for a NaN or Inf one. ``"auto"`` therefore
    gates the filters only where there is no padding or every gate is finite; ``"weight"``
    asked for explicitly is taken as it is.

    Args:
        x: (B, C, H, W) the layer's (already normalised) input.
        gate: (B, heads, C) saliency where kept, 0 where dropped.
        weight: (heads, Co_h, C, kh, kw) one filter bank per head.
        gate_on: ``"input"``, ``"weight"`` or ``"auto"``.

    Returns:
        (B, heads * Co_h, H', W') with heads interleaved; (0, heads * Co_h, H', W') for an
        empty batch.
    """
    b, c, h, w = x.shape
    heads, co_h, _, kh, kw = weight.shape
    check_choice("gate_on", gate_on, GATE_ON)
    if gate_on == "auto":
        smaller = co_h * heads * kh * kw <= heads * h * w
        unpadded = padding == "valid" or _pair(padding) == (0, 0)
        gate_on = "weight" if smaller and (unpadded or bool(gate.isfinite().all())) else "input"
    if gate_on == "weight" and b == 0:
        gate_on = "input"  # one filter bank per image: an empty batch has no group to run
    if gate_on == "weight":
        # Per image, filter (j, i) of the interleaved output is head i's filter j times g_i.
        w_interleaved = weight.transpose(0, 1).contiguous()  # (Co_h, heads, C, kh, kw)
        gate = gate.contiguous()  # so that the product below is laid out (B, Co_h, heads, ...)
        w_images = w_interleaved.unsqueeze(0) * gate[:, None, :, :, None, None]
        out = F.conv2d(
            x.reshape(1, b * c, h, w),
            w_images.reshape(b * co_h * heads, c, kh, kw),
            None,
            stride,
            padding,
            dilation,
            groups=b,
        )  # (1, B * C_out, H', W')
        return out.view(b, co_h * heads, *out.shape[-2:])
    x_heads = x.unsqueeze(1) * gate[..., None, None]  # (B, heads, C, H, W)
    out = F.conv2d(
        x_heads.reshape(b, heads * c, h, w),
        weight.flatten(0, 1),  # (heads * Co_h, C, kh, kw)
        None,
        stride,
        padding,
        dilation,
        groups=heads,
    )  # (B, heads * Co_h, H', W')
    return interleave_heads(out, heads)


def dgc_gather_conv(
    x: torch.Tensor,
    gate: torch.Tensor,
    keep_idx: torch.Tensor,
    weight: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    *,
    norm: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Fast execution: convolve only the kept channels of every (sample, head) pair.

    ``keep_idx`` lists ``keep`` channels per (sample, head); channels it lists whose ``gate`` is
    0 (ties dropped with the threshold) are multiplied by 0, as in the mask execution. The
    channels it does not list are not read: the result equals ``dgc_mask_conv``'s (gating the
    inputs) when each of them would add exactly 0 there, i.e. has a gate of 0 and a finite
    input. Where a NaN or Inf breaks that (``0 * Inf`` is NaN), list every channel;
    ``DGCConv2d`` does.

    Every (sample, head) needs its own filter columns, so the gathered weights are
    ``B * keep / C`` times the layer's weight; the batch is processed in chunks of at most
    ``GATHER_CHUNK_SAMPLES`` samples and ``GATHER_CHUNK_BYTES`` of gathered weights (larger
    chunks fall out of cache and, past glibc's 32 MB mmap threshold, page-fault on every call).
    Under autograd the whole batch is one chunk (the backward keeps every chunk's gathers).

    In CPU float32 inference the fused C++ kernel (``cpu_kernel.py``) does all of this per
    image and head instead, applying ``norm`` as it copies the kept channels.

    Args:
        x: (B, C, H, W) the layer's input, already normalised unless ``norm`` is given.
        gate: (B, heads, C) saliency where kept, 0 where dropped.
        keep_idx: (B, heads, keep) int64 channel indices.
        weight: (heads, Co_h, C, kh, kw).
        norm: optional per-channel ``(scale, shift)``: ``x`` is first mapped to
            ``relu(x * scale + shift)`` (a folded eval-mode BN-ReLU; NaN stays NaN).

    Returns:
        (B, heads * Co_h, H', W') with heads interleaved, equal to ``dgc_mask_conv``.
    """
    b, c, h, w = x.shape
    heads, co_h, _, kh, kw = weight.shape
    keep = keep_idx.shape[-1]
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    gate_kept = gate.gather(-1, keep_idx)  # (B, heads, keep)
    scale, shift = norm if norm is not None else (None, None)
    if cpu_kernel.applies(x):
        return torch.ops.dgclab.gather_conv2d(
            x, scale, shift, gate_kept, keep_idx, weight, stride, padding, dilation
        )
    if norm is not None:
        x = F.relu(x * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1))
    if b == 0:  # nothing to gather: the mask formulation gives the empty output, in the graph
        return dgc_mask_conv(x, gate, weight, stride, padding, dilation, gate_on="input")
    pointwise = (kh, kw) == (1, 1) and padding == (0, 0)
    if pointwise:
        # A 1x1 conv is a matmul per (sample, head): (Co_h x keep) @ (keep x H'W').
        x = x[:, :, :: stride[0], :: stride[1]]
        # Filter bank as rows (head * C + channel) -> Co_h weights.
        w_rows = weight.view(heads, co_h, c).transpose(1, 2).reshape(heads * c, co_h)
        w_offset = torch.arange(heads, device=x.device).view(1, heads, 1) * c
    else:
        # Filter bank as rows (head, out, channel) -> kh*kw taps, so that the gathered rows are
        # already the (B*heads*Co_h, keep, kh, kw) weight of a grouped conv.
        w_rows = weight.reshape(heads * co_h * c, kh * kw)
        w_offset = (
            torch.arange(heads, device=x.device).view(1, heads, 1, 1) * co_h * c
            + torch.arange(co_h, device=x.device).view(1, 1, co_h, 1) * c
        )

    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, gate, weight)):
        # Autograd keeps every chunk's gathered inputs and filter columns for the backward, so
        # chunks save no memory; one chunk saves the per-chunk ops and their backward (CopySlices,
        # index_add into zeros): 25 % off a training step of resnet8 w32 at k = 3/4 C.
        chunk = b
    else:
        per_sample = heads * keep * co_h * kh * kw * weight.element_size()
        chunk = max(1, min(b, GATHER_CHUNK_SAMPLES, GATHER_CHUNK_BYTES // per_sample))
        chunk = -(-b // -(-b // chunk))  # balance: the same number of chunks, evened out
    # Without autograd on CPU, gather into reused scratch buffers (see _Scratch).
    scratch = not torch.is_grad_enabled() and x.device.type == "cpu"

    def gather_rows(source: torch.Tensor, index: torch.Tensor, role: str) -> torch.Tensor:
        if not scratch:
            return source.index_select(0, index)
        out = _scratch.take(role, index.numel() * source.shape[1], source)
        return torch.index_select(source, 0, index, out=out.view(index.numel(), -1))

    result = None  # (B, Co_h, heads, H', W'): the interleaved output, chunk by chunk
    for s in range(0, b, chunk):
        xs, idx, gs = x[s : s + chunk], keep_idx[s : s + chunk], gate_kept[s : s + chunk]
        n, _, hs, ws = xs.shape
        rows = (idx + torch.arange(n, device=x.device).view(n, 1, 1) * c).flatten()
        x_kept = gather_rows(xs.reshape(n * c, hs * ws), rows, "x")  # (n*heads*keep, HW)
        # gate the input, as the mask execution does
        x_kept = x_kept.mul_(gs.reshape(-1, 1)) if scratch else x_kept * gs.reshape(-1, 1)
        if pointwise:
            w_kept = gather_rows(w_rows, (idx + w_offset).flatten(), "w")  # (n*heads*keep, Co_h)
            out = torch.bmm(
                w_kept.view(n * heads, keep, co_h).transpose(1, 2),  # (n*heads, Co_h, keep)
                x_kept.view(n * heads, keep, hs * ws),
            ).view(n, heads * co_h, hs, ws)
        else:
            w_idx = (idx.unsqueeze(2) + w_offset).flatten()  # (n*heads*Co_h*keep,)
            w_kept = gather_rows(w_rows, w_idx, "w").view(n * heads * co_h, keep, kh, kw)
            out = F.conv2d(
                x_kept.view(1, n * heads * keep, hs, ws),
                w_kept,
                None,
                stride,
                padding,
                dilation,
                groups=n * heads,
            )  # (1, n*heads*Co_h, H', W')
            out = out.view(n, heads * co_h, *out.shape[-2:])  # heads block-wise
        if n == b:
            return interleave_heads(out, heads)
        # Write each chunk straight into the interleaved output: one copy, no cat + shuffle.
        ho, wo = out.shape[-2:]
        if result is None:
            result = out.new_empty(b, co_h, heads, ho, wo)
        result[s : s + n] = out.view(n, heads, co_h, ho, wo).transpose(1, 2)
    return result.view(b, co_h * heads, *result.shape[-2:])


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


class DGCConv2d(nn.Module):
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
            ``"auto"`` (gather when a head keeps at most 3/4 of its channels, at most 1/4 of
            them under autograd, else mask; ``resolved_execution`` says which).

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
        in_channels = check_int("in_channels", in_channels, min=1)
        out_channels = check_int("out_channels", out_channels, min=1)
        kernel_size = check_pair("kernel_size", kernel_size, min=1)
        stride = check_pair("stride", stride, min=1)
        padding = check_pair("padding", padding, min=0)
        dilation = check_pair("dilation", dilation, min=1)
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
        written to it directly is refused here (ValueError) rather than used.
        """
        return self._checked_k(self._inactive_channels, "_inactive_channels")

    @inactive_channels.setter
    def inactive_channels(self, k: int) -> None:
        k = check_inactive_channels(k, self.in_channels)
        self._inactive_channels.fill_(k)

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
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def heads_list(self) -> list[DGCHead]:
        return [getattr(self, f"headconv_{i}") for i in range(self.heads)]

    def resolved_execution(self, k: int | None = None, autograd: bool | None = None) -> str:
        """The execution a forward with the current k uses ("mask" or "gather").

        Args:
            k: inactive channels, in [0, in_channels); default the layer's current k.
            autograd: whether the forward records a graph; default ``torch.is_grad_enabled()``.
        """
        if k is None:
            k = self.inactive_channels
        else:
            k = check_inactive_channels(k, self.in_channels, "k")
        autograd = torch.is_grad_enabled() if autograd is None else check_bool("autograd", autograd)
        return self._resolve(k, autograd)

    def _resolve(self, k: float, autograd: bool) -> str:
        """``resolved_execution`` for a k and a grad mode taken as they are."""
        if self._execution != "auto":
            return self._execution
        max_keep = AUTO_GATHER_MAX_KEEP_AUTOGRAD if autograd else AUTO_GATHER_MAX_KEEP
        keep = self.in_channels - k
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
        return (
            s + f", heads={self.heads}, pruning_rate={self.pruning_rate}, "
            f"k={k:g}/{self.in_channels}, execution={execution}"
        )

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
        self._check_input(x)
        k = self.inactive_channels
        execution = self.resolved_execution(k)
        if execution == "gather" and self._fuse_norm(x):
            # CPU inference: the kernel applies the BN-ReLU itself, channel by channel.
            norm = self._folded_norm()
            pooled = torch.ops.dgclab.bn_relu_pool(x, *norm)
        else:
            norm = None
            x = self.relu(self.norm(x))
            pooled = x.mean(dim=(2, 3))
        g = self.saliency(pooled)  # (B, heads, C)
        # before pruning, as the official code; an empty batch adds 0 (still in the graph)
        self.last_lasso = g.mean(dim=(0, 2)).sum() if len(g) else g.sum()

        weight = torch.stack([h.conv.weight for h in self.heads_list])  # (heads, Co_h, C, kh, kw)
        if execution == "mask":
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
        return dgc_gather_conv(
            x, gate, keep_idx, weight, self.stride, self.padding, self.dilation, norm=norm
        )

    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse an input every execution would fail on differently, or deep inside torch."""
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
        dtype = self.headconv_0.conv.weight.dtype
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

    def _fuse_norm(self, x: torch.Tensor) -> bool:
        """Whether this forward may leave the BN-ReLU to the fused CPU kernel.

        Only where the BN is an affine map (eval mode, running statistics) and nothing observes
        ``norm`` or ``relu`` (hooks on them, e.g. the filter-sparsity analysis, see their
        outputs, which the kernel never writes out).
        """
        norm, relu = self.norm, self.relu
        observed = (
            norm._forward_hooks
            or norm._forward_pre_hooks
            or relu._forward_hooks
            or relu._forward_pre_hooks
            or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks
        )
        return (
            not norm.training
            and norm.running_mean is not None
            and not observed
            and cpu_kernel.applies(x)
        )

    def _folded_norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode BN as ``x * scale + shift`` per channel."""
        norm = self.norm
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        return scale, shift
