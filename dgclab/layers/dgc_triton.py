"""The CUDA execution of DGC's gather conv, in Triton: only the kept channels are read.

On CUDA the PyTorch gather (``dgc_gather.py``) runs a grouped conv with ``batch * heads`` tiny
groups, a poor fit for cuDNN. This kernel is an implicit GEMM instead: one program per
(image-head, tile of output pixels, tile of the head's filters) reads the head's kept input
channels (their indices and gates from the selection) and the matching filter columns straight
from the input and the filter bank, accumulates in float32, and writes its output channels at
their interleaved places (head i's filter j at channel ``j * heads + i``, the official shuffle).
Nothing is gathered into a buffer first and no dropped channel is read.

Per image-head the kernel reads the first ``counts[b, h]`` entries of ``keep_idx`` only, so that
DGC-G's threshold rule, whose keep count varies per image-head, costs what each head keeps and
not the batch's largest keep (``dgc_gather_conv``'s PyTorch path pads every head to it).

* dtypes: float32 (``tl.dot`` in IEEE float32, no TF32, so it matches the mask execution to
  rounding), float16 and bfloat16 (products accumulated in float32). The gate multiplies the
  input in float32 and is rounded to the input's dtype before the dot, as the mask execution's
  gated input is.
* backward: the PyTorch gather's gradients (``dgc_gather.gather_conv_backward``: the kept
  channels and filter columns gathered again, then the grouped conv's backward; the formulas
  autograd derives for the PyTorch gather, tested against it and by float64 gradcheck). A
  Triton backward was not written: whether it would be faster can only be measured on a GPU
  (README, "GPU").
* Tested without a GPU: Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is
  imported) runs the kernel on CPU tensors (``tests/layers/test_dgc_triton.py`` runs it in a
  subprocess against the mask execution).

``applies(x)``: a CUDA tensor of a supported dtype, Triton importable and the kernel enabled
(``use(False)`` turns it off, e.g. to time the PyTorch gather). Other dtypes on CUDA (float64)
fall back to the PyTorch gather with one warning. Under ``TRITON_INTERPRET=1`` CPU tensors take
the kernel too (where the fused C++ kernel does not: ``DGCLAB_CPU_KERNEL=0``), so that whole
layers and networks run it in the interpreter.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.nn.modules.utils import _pair

from ._switch import Switch
from .base import conv_output_hw

__all__ = ["SUPPORTED_DTYPES", "applies", "available", "enabled", "gather_conv", "use"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

try:  # Triton ships with torch's Linux wheels; elsewhere the PyTorch gather runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None

_switch = Switch(os.environ.get("DGCLAB_TRITON", "1") != "0")
_state = {"warned": set()}
# Triton reads TRITON_INTERPRET when it is imported: kernels then run on CPU tensors
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """Whether Triton imported (it needs a GPU to run, or ``TRITON_INTERPRET=1``)."""
    return triton is not None


def enabled() -> bool:
    """Whether CUDA inputs take the Triton kernel (``DGCLAB_TRITON=0`` turns it off)."""
    return _switch.on


def use(flag: bool):
    """Within the block, CUDA inputs take the Triton kernel if ``flag``, the PyTorch gather if
    not (to time one against the other)."""
    return _switch.use(flag)


def applies(x: torch.Tensor) -> bool:
    """Whether ``dgc_gather_conv`` runs ``x`` through the Triton kernel: a CUDA tensor of a
    supported dtype (or of any dtype under CUDA autocast to one), Triton available, enabled.
    A CUDA input of another dtype gets one warning per dtype and the PyTorch gather."""
    on_device = x.is_cuda or (_INTERPRETED and x.device.type == "cpu")
    if not (on_device and _switch.on and triton is not None):
        return False
    dtype = _compute_dtype(x)
    if dtype in SUPPORTED_DTYPES:
        return True
    if dtype not in _state["warned"]:
        _state["warned"].add(dtype)
        warnings.warn(f"dgclab's Triton gather supports {', '.join(map(str, SUPPORTED_DTYPES))}; "
                      f"{dtype} on CUDA runs the PyTorch gather", stacklevel=3)
    return False


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a conv of ``x`` computes in: autocast's where it is on, else ``x``'s."""
    if x.is_cuda and torch.is_autocast_enabled("cuda") and x.dtype == torch.float32:
        return torch.get_autocast_dtype("cuda")
    return x.dtype


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _gather_conv_kernel(
        x_ptr, gate_ptr, idx_ptr, count_ptr, w_ptr, out_ptr,
        H, W, HO, WO, KEEP, CO_H, HEADS,
        sxb, sxc, sxh, sxw,  # input strides (B, C, H, W)
        swh, swo, swc, swy, swx,  # filter-bank strides (heads, Co_h, C, kh, kw)
        sob, soc, soh, sow,  # output strides (B, Co_h * heads, H', W')
        STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
        KH: tl.constexpr, KW: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        bh = tl.program_id(0)  # image-head b * HEADS + h
        b, h = bh // HEADS, bh % HEADS
        pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (P,) output pixels
        fil = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)  # (F,) the head's filters
        pix_ok, fil_ok = pix < HO * WO, fil < CO_H
        oy, ox = pix // WO, pix % WO
        count = tl.load(count_ptr + bh)  # this image-head's kept channels, listed first
        acc = tl.zeros((BLOCK_P, BLOCK_F), dtype=tl.float32)
        for k0 in range(0, count, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)  # (K,) places in the keep list
            k_ok = kk < count
            ch = tl.load(idx_ptr + bh * KEEP + kk, mask=k_ok, other=0)  # (K,) channels
            gate = tl.load(gate_ptr + bh * KEEP + kk, mask=k_ok, other=0.0).to(tl.float32)
            for ky in tl.static_range(KH):
                iy = oy * STRIDE_H - PAD_H + ky * DIL_H
                for kx in tl.static_range(KW):
                    ix = ox * STRIDE_W - PAD_W + kx * DIL_W
                    inside = pix_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                    a = tl.load(
                        x_ptr + b * sxb + ch[None, :] * sxc + iy[:, None] * sxh + ix[:, None] * sxw,
                        mask=inside[:, None] & k_ok[None, :], other=0.0,
                    )  # (P, K) the kept channels' pixels under this tap
                    # gate the input, rounded to its dtype as the mask execution's copy is
                    a = (a.to(tl.float32) * gate[None, :]).to(x_ptr.dtype.element_ty)
                    wt = tl.load(
                        w_ptr + h * swh + fil[None, :] * swo + ch[:, None] * swc + ky * swy
                        + kx * swx,
                        mask=k_ok[:, None] & fil_ok[None, :], other=0.0,
                    )  # (K, F) the matching filter columns
                    if IEEE:
                        acc += tl.dot(a, wt, input_precision="ieee")
                    else:
                        acc += tl.dot(a, wt)
        out = out_ptr + b * sob + (fil[None, :] * HEADS + h) * soc + oy[:, None] * soh \
            + ox[:, None] * sow  # interleaved: head h's filter j is channel j * HEADS + h
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=pix_ok[:, None] & fil_ok[None, :])


def _launch(x, gate_kept, keep_idx, counts, weight, stride, padding, dilation) -> torch.Tensor:
    """Run the kernel: (B, C, H, W) -> (B, heads * Co_h, H', W'), heads interleaved."""
    b, _, h, w = x.shape
    heads, co_h, _, kh, kw = weight.shape
    keep = keep_idx.shape[-1]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    out = x.new_empty(b, co_h * heads, ho, wo)
    if out.numel() == 0:
        return out
    block_p, block_f, block_k = 64, (16 if co_h <= 16 else 32), 16
    grid = (b * heads, triton.cdiv(ho * wo, block_p), triton.cdiv(co_h, block_f))
    _gather_conv_kernel[grid](
        x, gate_kept, keep_idx, counts, weight, out,
        h, w, ho, wo, keep, co_h, heads,
        *x.stride(), *weight.stride(), *out.stride(),
        sh, sw, ph, pw, dh, dw,
        KH=kh, KW=kw, IEEE=x.dtype == torch.float32,
        BLOCK_P=block_p, BLOCK_F=block_f, BLOCK_K=block_k,
    )
    return out


class _GatherConv(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: the PyTorch gather's formulas
    (``dgc_gather.gather_conv_backward``, also the CPU kernel's backward)."""

    @staticmethod
    def forward(ctx, x, gate_kept, keep_idx, counts, weight, stride, padding, dilation):
        ctx.save_for_backward(x, gate_kept, keep_idx, weight)
        ctx.conv = (stride, padding, dilation)
        return _launch(x, gate_kept, keep_idx, counts, weight, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        from .dgc_gather import gather_conv_backward  # (dgc_gather imports this module)

        needs = tuple(ctx.needs_input_grad[i] for i in (0, 1, 2, 4))  # x, gates, -, weight
        gx, ggate, _, gw = gather_conv_backward(grad, *ctx.saved_tensors, *ctx.conv, needs=needs)
        return gx, ggate, None, None, gw, None, None, None


def gather_conv(
    x: torch.Tensor,
    gate_kept: torch.Tensor,
    keep_idx: torch.Tensor,
    weight: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """DGC's gather conv by the Triton kernel; differentiable in ``x``, ``gate_kept`` and
    ``weight``.

    Args:
        x: (B, C, H, W) the layer's normalised input (CUDA, or CPU under
            ``TRITON_INTERPRET=1``).
        gate_kept: (B, heads, K) the gates of the listed channels (0 for a listed channel that
            was dropped).
        keep_idx: (B, heads, K) int64 channel indices, each image-head's kept channels first.
        weight: (heads, Co_h, C, kh, kw).
        counts: optional (B, heads) integer: image-head (b, h) reads only its first
            ``counts[b, h]`` listed channels (DGC-G's variable keep); default all K.

    Returns:
        (B, heads * Co_h, H', W') with heads interleaved, equal to ``dgc_mask_conv`` (gating
        the input) where every channel left out has a gate of 0 and a finite input.
    """
    if triton is None:
        raise RuntimeError("Triton is not installed: the Triton gather cannot run")
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    dtype = _compute_dtype(x)
    x, weight = x.to(dtype), weight.to(dtype)  # a conv under autocast computes in its dtype
    b, heads, keep = keep_idx.shape
    if counts is None:
        counts = torch.full((b, heads), keep, dtype=torch.int32, device=x.device)
    counts = counts.to(torch.int32).contiguous()  # (B, heads)
    return _GatherConv.apply(x, gate_kept.contiguous(), keep_idx.contiguous(), counts,
                             weight.contiguous(), stride, padding, dilation)
