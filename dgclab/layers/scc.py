"""Sliding-channel convolution (SCC).

Wang, Hu, Guan, Liu, Li, Ding, "DSXplore: Optimizing Convolutional Neural Networks via Sliding-
Channel Convolutions", IPDPS 2021, arXiv 2101.00745 (SPEC §3). SCC replaces the pointwise half
of a depthwise-separable conv. Like a grouped 1x1 conv, each output channel reads D = C / g
input channels; unlike it, the windows slide: output channel c reads the D consecutive input
channels from ``start_c = floor(c * (1 - o) * D) mod C``, wrapping around the channel axis, so
that neighbouring outputs share a fraction ``o`` (the overlap) of their inputs:

    y[b, c] = sum_{k < D} W[c, k] * x[b, (start_c + k) mod C]          W: (O, D)

It costs what a grouped 1x1 conv with g groups costs (O * C / g MACs per pixel) whatever o is.
Special cases (tested): o = 0 is a grouped 1x1 conv up to an output permutation (output c in
group c mod g); g = 1 is a dense 1x1 conv with each weight row rolled by its start.

The start follows the official forward's float32 arithmetic, left to right (``(c * (1 - o)) *
D``, then rounded down, ``1 - o`` itself computed from o in float32), so that DSXplore models
are reproduced channel for channel: where the exact product is an integer it can land one
below (D = 32, o = 0.33: starts 23, 47, 71, 95, 119 at c = 25 ... 125 where exact arithmetic
gives 24, 48, 72, 96, 120; before the wrap, so with C = 512 channels, g = 16, as in the pinned
test; SPEC §3's "C = 64" there is a slip, as the wrap mod 64 would give 23, 47, 7, 31, 55).

The gradients are autograd's, exact at every overlap (the released CUDA backward is wrong at
o = 0.33 and 0.75, SPEC §3). The forward scatters W into the dense (O, C) weight of a 1x1 conv:
exact, one GEMM, g times the MACs of the windows alone (``count_macs`` counts the windows, the
layer's own cost).

In the layer protocol (``base.py``) SCC is static, with one group per output channel: group c
is output c, reading its window (``connectivity()``, (O, C)). ``DepthwiseSlidingConv2d`` is the
DSXplore block for a k x k conv: a depthwise k x k conv, then SCC (the registry's ``"scc"``
kind, as DSXplore builds its ResNets).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_float, check_int, check_pair
from .base import GroupingConv

__all__ = ["SlidingChannelConv2d", "DepthwiseSlidingConv2d", "scc_starts", "scc_dense_weight"]


def scc_starts(channels: int, out_channels: int, groups: int, overlap: float) -> torch.Tensor:
    """(O,) int64 window starts, ``floor(c * (1 - o) * D) mod C`` in float32 as DSXplore does.

    Example:
        >>> scc_starts(512, 128, 16, 0.33)[[25, 50, 75, 100, 125]].tolist()  # D = 32
        [23, 47, 71, 95, 119]
    """
    channels, out_channels, groups, overlap = _check(channels, out_channels, groups, overlap)
    d = channels // groups
    c = torch.arange(out_channels, dtype=torch.float32)
    step = 1 - torch.tensor(overlap, dtype=torch.float32)  # 1 - o, from o in float32
    return torch.floor(c * step * d).long() % channels  # (c * (1 - o)) * D, left to right


def scc_dense_weight(weight: torch.Tensor, channels: int, starts: torch.Tensor) -> torch.Tensor:
    """The (O, C) weight of the dense 1x1 conv that an SCC with ``weight`` (O, D) computes."""
    out_channels, d = weight.shape
    cols = (starts.to(weight.device)[:, None] + torch.arange(d, device=weight.device)) % channels
    dense = weight.new_zeros(out_channels, channels)
    return dense.scatter(1, cols, weight)  # (O, C); differentiable in weight


class SlidingChannelConv2d(GroupingConv, nn.Module):
    """Sliding-channel 1x1 convolution (DSXplore's SCC), no bias.

    Args:
        in_channels: C, divisible by ``groups``.
        out_channels: O.
        groups: g; each output reads a window of D = C / g input channels.
        overlap: o in [0, 1), the fraction of its window an output shares with the previous one.
        stride: of the 1x1 conv (DSXplore puts the stride in the depthwise conv before it).

    Shapes: (B, C, H, W) -> (B, O, H', W').

    Example:
        >>> scc = SlidingChannelConv2d(64, 128, groups=2, overlap=0.5)
        >>> scc(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 128, 8, 8])
    """

    kind = "scc"
    dynamic = False
    EXTRA_INFO_KEYS = ("scc_groups", "overlap")

    def __init__(self, in_channels: int, out_channels: int, groups: int = 2,
                 overlap: float = 0.5, stride=1) -> None:
        super().__init__()
        in_channels, out_channels, groups, overlap = _check(in_channels, out_channels, groups,
                                                            overlap)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.overlap = groups, overlap
        self.kernel_size, self.stride = (1, 1), check_pair("stride", stride, min=1)
        self.padding, self.dilation = (0, 0), (1, 1)
        d = in_channels // groups
        self.weight = nn.Parameter(torch.empty(out_channels, d))  # (O, D)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.register_buffer("starts", scc_starts(in_channels, out_channels, groups, overlap),
                             persistent=False)

    # ---- the layer protocol ---------------------------------------------------------------------

    @property
    def channel_groups(self) -> int:
        return self.out_channels  # one group per output channel: its window

    def connectivity(self) -> torch.Tensor:
        """(O, C) bool: the window each output channel reads."""
        d = self.in_channels // self.groups
        cols = (self.starts.cpu()[:, None] + torch.arange(d)) % self.in_channels
        conn = torch.zeros(self.out_channels, self.in_channels, dtype=torch.bool)
        return conn.scatter_(1, cols, True)

    def extra_info(self) -> dict:
        return {"scc_groups": self.groups, "overlap": self.overlap}

    @classmethod
    def check_info(cls, info: dict) -> dict:
        out = dict(info)
        _, _, out["scc_groups"], out["overlap"] = _check(
            info["in_channels"], info["out_channels"], info["scc_groups"], info["overlap"])
        return out

    @classmethod
    def computed_channels_from_info(cls, info) -> int:
        return info["in_channels"] // info["scc_groups"]  # D, the window

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = scc_dense_weight(self.weight, self.in_channels, self.starts)  # (O, C)
        return F.conv2d(x, weight[:, :, None, None], None, self.stride)  # (B, O, H', W')

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
                f"overlap={self.overlap}" + (f", stride={self.stride}"
                                             if self.stride != (1, 1) else ""))


class DepthwiseSlidingConv2d(nn.Module):
    """DSXplore's block for a k x k conv: depthwise k x k (stride, padding), then SCC 1x1.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as ``nn.Conv2d``.
        groups, overlap: of the SCC.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 2, overlap: float = 0.5) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, min=1)
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding,
                                   dilation, groups=in_channels, bias=False)
        self.scc = SlidingChannelConv2d(in_channels, out_channels, groups, overlap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scc(self.depthwise(x))  # (B, C, H', W') -> (B, O, H', W')


def _check(channels, out_channels, groups, overlap) -> tuple[int, int, int, float]:
    channels = check_int("in_channels", channels, min=1)
    out_channels = check_int("out_channels", out_channels, min=1)
    groups = check_int("groups", groups, min=1)
    overlap = check_float("overlap", overlap, min=0, max=1, max_inclusive=False)
    if channels % groups:
        raise ValueError(f"groups must divide in_channels, got groups={groups}, "
                         f"in_channels={channels}")
    return channels, out_channels, groups, overlap
