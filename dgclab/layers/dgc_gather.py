"""The gather execution of DGC: only the kept channels are computed (SPEC §1.1).

``dgc_gather_conv`` gathers, per image and head, the kept channels and the matching filter
columns, and runs one batched matmul (1x1) or one grouped conv (kxk) per chunk of the batch, so
that the MACs really fall to ``(C_in - k) / C_in`` of dense; in CPU float32 inference the fused
C++ kernel (``cpu_kernel.py``) does the same per image and head. It gives the numbers of the
reference execution, ``dgc_mask_conv`` (``dgc_functional.py``), NaN and Inf included, which
SPEC §1.1 asks the two executions to show. Here too: the chunk sizes and the per-thread
scratch buffers the chunks gather into.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from . import cpu_kernel, dgc_triton
from ..checks import check_type
from .dgc_functional import check_dgc_operands, dgc_mask_conv, interleave_heads

__all__ = [
    "GATHER_CHUNK_BYTES",
    "GATHER_CHUNK_SAMPLES",
    "KernelGatherConv",
    "dgc_gather_conv",
    "gather_conv_backward",
    "gather_conv_torch",
    "gather_scratch",
    "release_scratch",
]

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


gather_scratch = _Scratch()


def release_scratch() -> None:
    """Free this thread's gather scratch buffers (they are made again when needed)."""
    gather_scratch.buffers.clear()


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
    counts: torch.Tensor | None = None,
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
    image and head instead, applying ``norm`` as it copies the kept channels; in CPU float32
    training it does the forward of ``KernelGatherConv``, whose backward is PyTorch's; on CUDA
    the Triton kernel (``dgc_triton.py``) does, reading the kept channels in place.

    Args:
        x: (B, C, H, W) the layer's input, already normalised unless ``norm`` is given.
        gate: (B, heads, C) saliency where kept, 0 where dropped.
        keep_idx: (B, heads, keep) int64 channel indices.
        weight: (heads, Co_h, C, kh, kw).
        norm: optional per-channel ``(scale, shift)``: ``x`` is first mapped to
            ``relu(x * scale + shift)`` (a folded eval-mode BN-ReLU; NaN stays NaN).
        counts: optional (B, heads): image-head (b, h) keeps only its first ``counts[b, h]``
            listed channels, the others having gate 0 (DGC-G's variable keep, ``keep_idx``
            from ``_kept_first``). The Triton kernel then reads no more; the other executions
            read every listed channel (the same numbers for a finite input).

    Returns:
        (B, heads * Co_h, H', W') with heads interleaved, equal to ``dgc_mask_conv``.
    """
    check_dgc_operands(x, gate, weight)
    check_type("keep_idx", keep_idx, torch.Tensor)
    if keep_idx.shape[:2] != gate.shape[:2] or keep_idx.dim() != 3:
        raise ValueError(f"keep_idx must be (B, heads, keep) for a gate of shape "
                         f"{tuple(gate.shape)}, got {tuple(keep_idx.shape)}")
    b, c = x.shape[:2]
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    gate_kept = gate.gather(-1, keep_idx)  # (B, heads, keep)
    scale, shift = norm if norm is not None else (None, None)
    if cpu_kernel.applies(x):
        return torch.ops.dgclab.gather_conv2d(
            x, scale, shift, gate_kept, keep_idx, weight, stride, padding, dilation
        )
    if norm is not None:
        x = F.relu(x * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1))
    if b > 0 and cpu_kernel.applies_under_autograd(x) and gate_kept.dtype == weight.dtype == x.dtype:
        return KernelGatherConv.apply(x, gate_kept, keep_idx, weight, stride, padding, dilation)
    if b == 0:  # nothing to gather: the mask formulation gives the empty output, in the graph
        return dgc_mask_conv(x, gate, weight, stride, padding, dilation, gate_on="input")
    if dgc_triton.applies(x):
        return dgc_triton.gather_conv(x, gate_kept, keep_idx, weight, stride, padding, dilation,
                                      counts=counts)
    return gather_conv_torch(x, gate_kept, keep_idx, weight, stride, padding, dilation)


def _filter_rows(heads: int, co_h: int, c: int, device) -> torch.Tensor:
    """(1, heads, Co_h, 1): the first row of each (head, filter) in a k x k filter bank laid out
    as rows (head, out, channel) -> taps; add a kept channel's index to get its row."""
    return (torch.arange(heads, device=device).view(1, heads, 1, 1) * co_h * c
            + torch.arange(co_h, device=device).view(1, 1, co_h, 1) * c)


def gather_conv_torch(
    x: torch.Tensor,
    gate_kept: torch.Tensor,
    keep_idx: torch.Tensor,
    weight: torch.Tensor,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
) -> torch.Tensor:
    """``dgc_gather_conv``'s PyTorch path, on any device: the gates of the listed channels
    ``gate_kept`` (B, heads, keep), a non-empty batch, ``x`` normalised; arguments as there."""
    b, c, h, w = x.shape
    heads, co_h, _, kh, kw = weight.shape
    keep = keep_idx.shape[-1]
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
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
        w_offset = _filter_rows(heads, co_h, c, x.device)  # (1, heads, Co_h, 1)

    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, gate_kept, weight)):
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
        out = gather_scratch.take(role, index.numel() * source.shape[1], source)
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


class KernelGatherConv(torch.autograd.Function):
    """The gather conv under autograd on CPU float32: the C++ kernel's forward, PyTorch's
    backward.

    Autograd through ``gather_conv_torch`` runs one grouped conv with ``B * heads`` groups of
    a few channels each, a shape oneDNN's forward handles poorly (in a training step of
    resnet_cifar(20) it took twice the time of its own backward), and keeps the gathered inputs
    and filter columns for the backward. Here the forward is the kernel's per image-head direct
    convs (``torch.ops.dgclab.gather_conv2d``, the inference op), only the layer's own tensors
    are saved, and ``gather_conv_backward`` gathers again and runs the grouped conv's backward:
    the gradients autograd derives for ``gather_conv_torch``, from the same ops.

    ``apply(x, gate_kept, keep_idx, weight, stride, padding, dilation)``: arguments as
    ``gather_conv_torch``'s (pairs for the geometry), float32 CPU tensors, a non-empty batch.
    """

    @staticmethod
    def forward(ctx, x, gate_kept, keep_idx, weight, stride, padding, dilation):
        ctx.save_for_backward(x, gate_kept, keep_idx, weight)
        ctx.geometry = (stride, padding, dilation)
        return torch.ops.dgclab.gather_conv2d(x, None, None, gate_kept, keep_idx, weight,
                                              stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, gate_kept, keep_idx, weight = ctx.saved_tensors
        grads = gather_conv_backward(grad_out, x, gate_kept, keep_idx, weight, *ctx.geometry,
                                     needs=ctx.needs_input_grad[:4])
        return (*grads, None, None, None)


def gather_conv_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    gate_kept: torch.Tensor,
    keep_idx: torch.Tensor,
    weight: torch.Tensor,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    needs=(True, True, False, True),
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``gather_conv_torch(x, gate_kept, keep_idx, weight, ...)`` for the output
    gradient ``grad_out`` (B, heads * Co_h, H', W'), heads interleaved.

    The gathered input of image-head (b, h) is ``x_raw * gate`` over its kept channels; the
    grouped conv's backward (``aten.convolution_backward``, B * heads groups) gives the
    gradients of the gathered input and filter columns, from which the chain rule gives
    ``d gate = sum over pixels of (d gathered input * x_raw)``, ``d x`` = the gated gradient
    added back at the kept channels, and ``d weight`` = the filter columns' gradients added back
    at their channels.

    Args:
        needs: which of (x, gate_kept, keep_idx, weight) want a gradient (keep_idx never does).

    Returns:
        ``(grad_x, grad_gate_kept, None, grad_weight)``, None where not needed.
    """
    b, c, h, w = x.shape
    heads, co_h, _, kh, kw = weight.shape
    keep = keep_idx.shape[-1]
    ho, wo = grad_out.shape[-2:]
    need_x, need_gate, _, need_w = needs
    rows = (keep_idx + torch.arange(b, device=x.device).view(b, 1, 1) * c).flatten()
    x_raw = x.reshape(b * c, h * w).index_select(0, rows)  # (B*heads*keep, HW)
    x_kept = (x_raw * gate_kept.reshape(-1, 1)).to(x.dtype)  # gates may be wider (autocast)
    w_idx = (keep_idx.unsqueeze(2) + _filter_rows(heads, co_h, c, x.device)).flatten()
    w_kept = weight.reshape(heads * co_h * c, kh * kw).index_select(0, w_idx)
    # heads block-wise, as the grouped conv's output channels are: (1, B*heads*Co_h, H', W')
    g = grad_out.reshape(b, co_h, heads, ho, wo).transpose(1, 2).reshape(1, -1, ho, wo)
    grad_in, grad_w_kept, _ = torch.ops.aten.convolution_backward(
        g, x_kept.view(1, b * heads * keep, h, w), w_kept.view(b * heads * co_h, keep, kh, kw),
        None, list(stride), list(padding), list(dilation), False, [0, 0], b * heads,
        [need_x or need_gate, need_w, False])
    grad_x = grad_gate = grad_weight = None
    if need_x or need_gate:
        grad_in = grad_in.view(b * heads * keep, h * w)  # d(gathered, gated input)
        if need_gate:
            grad_gate = (grad_in * x_raw).sum(1).view_as(gate_kept).to(gate_kept.dtype)
        if need_x:
            gated = (grad_in * gate_kept.reshape(-1, 1)).to(x.dtype)
            grad_x = x.new_zeros(b * c, h * w).index_add_(0, rows, gated).view_as(x)
    if need_w:
        # added back per kept channel, rows of Co_h * taps: index_add_ walks its rows one by
        # one, and one row of taps per (filter, channel) would be Co_h times as many
        taps = kh * kw
        per_channel = grad_w_kept.view(b, heads, co_h, keep, taps).permute(0, 1, 3, 2, 4)
        rows_w = (keep_idx + torch.arange(heads, device=x.device).view(1, heads, 1) * c).flatten()
        grad_weight = weight.new_zeros(heads * c, co_h * taps).index_add_(
            0, rows_w, per_channel.reshape(b * heads * keep, co_h * taps))
        grad_weight = grad_weight.view(heads, c, co_h, kh, kw).transpose(1, 2).contiguous()
    return grad_x, grad_gate, None, grad_weight
