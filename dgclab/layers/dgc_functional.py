"""The functional core of DGC: channel selection and the reference execution (SPEC §1.1).

Plain functions on tensors, no Module, so that the maths can be tested by itself: the official
hyperparameter rules (``effective_squeeze_rate``, ``final_inactive_channels``, the checks on k),
the per-sample selection of the kept channels (``select_channels``, ``select_top_channels``,
steps 4 and 6 of SPEC §1.1; ``select_above_threshold``, the global-threshold rule of DGC-G), the output shuffle (``interleave_heads``) and the mask execution,
the paper's reference formulation (``dgc_mask_conv``). ``DGCConv2d`` (``dgc.py``) calls them;
the gather execution is in ``dgc_gather.py``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from ..checks import check_choice, check_float, check_int, check_type

__all__ = [
    "GATE_ON",
    "select_channels",
    "select_top_channels",
    "select_above_threshold",
    "dgc_mask_conv",
    "interleave_heads",
    "effective_squeeze_rate",
    "final_inactive_channels",
    "check_inactive_channels",
    "check_dgc_operands",
]

GATE_ON = ("auto", "input", "weight")


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


def check_dgc_operands(x, gate, weight) -> None:
    """TypeError unless all three are tensors; ValueError unless their shapes fit together:
    ``x`` (B, C, H, W), ``gate`` (B, heads, C), ``weight`` (heads, Co_h, C, kh, kw)."""
    for name, t in (("x", x), ("gate", gate), ("weight", weight)):
        check_type(name, t, torch.Tensor)
    if (x.dim() != 4 or gate.dim() != 3 or weight.dim() != 5
            or gate.shape[0] != x.shape[0] or gate.shape[1] != weight.shape[0]
            or not gate.shape[2] == weight.shape[2] == x.shape[1]):
        raise ValueError(
            "x, gate and weight must be (B, C, H, W), (B, heads, C) and (heads, Co_h, C, kh, "
            f"kw), got {tuple(x.shape)}, {tuple(gate.shape)} and {tuple(weight.shape)}")


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
    g = check_type("saliency", saliency, torch.Tensor).detach()
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


def select_above_threshold(saliency: torch.Tensor, threshold: float) -> torch.Tensor:
    """The global-threshold rule (DGC-G): keep every channel whose saliency exceeds ``threshold``.

    The DGC paper's supplementary material describes it as a variant of the head-wise rule: one
    threshold shared by every head of every layer, so that the number of kept channels varies
    per image, head and layer. Every head keeps at least one channel: where no saliency exceeds
    the threshold, the head keeps its single most salient one (``argmax``: the first on ties, a
    NaN before any number), whose gate may be 0. A NaN saliency is never above a threshold.

    Args:
        saliency: (B, heads, C) non-negative saliencies.
        threshold: tau >= 0 (0 keeps every channel with a positive saliency).

    Returns:
        (B, heads, C) bool, True where the channel is kept.

    Example:
        >>> g = torch.tensor([[[0.0, 0.5, 2.0], [0.1, 0.2, 0.3]]])  # (1 image, 2 heads, 3)
        >>> select_above_threshold(g, 0.4).int().tolist()
        [[[0, 1, 1], [0, 0, 1]]]
    """
    threshold = check_float("threshold", threshold, min=0)
    g = saliency.detach()
    keep = g > threshold
    empty = ~keep.any(dim=-1, keepdim=True)  # (B, heads, 1): heads that would keep nothing
    if bool(empty.any()):
        best = torch.zeros_like(keep).scatter_(-1, g.argmax(dim=-1, keepdim=True), True)
        keep |= best & empty
    return keep


def interleave_heads(out: torch.Tensor, heads: int) -> torch.Tensor:
    """Head i's output channel j becomes channel ``j * heads + i`` (the official shuffle).

    Args:
        out: (B, heads * Co_h, H, W), heads stacked block-wise.

    Returns:
        (B, heads * Co_h, H, W), heads interleaved.
    """
    if check_type("out", out, torch.Tensor).dim() != 4:
        raise ValueError(f"out must be (B, C, H, W), got shape {tuple(out.shape)}")
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
    check_dgc_operands(x, gate, weight)
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
