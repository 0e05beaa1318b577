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

Two executions, both exact, their gradients autograd's at every overlap (the released CUDA
backward is wrong at o = 0.33 and 0.75, SPEC §3):

* ``"dense"``: scatter W into the dense (O, C) weight of a 1x1 conv and run one GEMM: simple,
  g times the MACs of the windows alone;
* ``"banded"`` (``scc_bands``, ``scc_banded_conv2d``): cut the channel ring into bands
  ``step`` channels apart; the outputs whose windows start in band j all read inside its U =
  D + (largest offset of a start in the band) channels, so band j is one small dense GEMM
  (its outputs x U), and all bands run as one batched matmul over overlapping views of the
  input. It computes the windows plus each band's slack (and rows padded to the fullest band),
  never the dense (O, C) weight. Where (1 - o) * D is an integer (o = 0, 0.5, 0.75 at the usual
  D) the starts fall on a grid and the bands compute exactly the windows' MACs.

``"auto"`` (the default) takes the banded forward where its cost model is below the dense GEMM's
MACs and the call has between ``BANDED_MIN_PIXELS`` and ``BANDED_MAX_PIXELS`` output pixels
(``SlidingChannelConv2d.resolved_execution``); ``python -m dgclab.bench layer --scc`` measures
both against a grouped and a dense 1x1 conv.

``count_macs`` counts the windows, the layer's own cost, whatever the execution.

In the layer protocol (``base.py``) SCC is static, with one group per output channel: group c
is output c, reading its window (``connectivity()``, (O, C)). ``DepthwiseSlidingConv2d`` is the
DSXplore block for a k x k conv: a depthwise k x k conv, then SCC (the registry's ``"scc"``
kind, as DSXplore builds its ResNets).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_choice, check_float, check_int, check_pair, check_type
from .base import GroupingConv

__all__ = [
    "EXECUTIONS", "SCCBands", "SlidingChannelConv2d", "DepthwiseSlidingConv2d", "scc_banded_conv2d",
    "scc_banded_weight", "scc_bands", "scc_dense_weight", "scc_starts",
]

EXECUTIONS = ("auto", "banded", "dense")
"""How ``SlidingChannelConv2d`` computes its windows (module docstring)."""

READ_COST = 8
"""The cost model of ``scc_bands`` counts every input value a band reads as this many MACs: a
band with few rows is a memory-bound matrix-vector product, not a GEMM (a rough exchange rate on
CPUs, checked with the layer bench's SCC table)."""

BANDED_MIN_PIXELS, BANDED_MAX_PIXELS = 128, 8192
"""``"auto"`` computes the banded way only between these many output pixels per call (batch x
H' x W'). Below, its fixed cost (a few more PyTorch calls) outweighs the MACs it saves; above,
moving the batch next to the pixels (two copies of the activations) costs about what the
saved MACs do, and the dense weight's single conv is as fast or faster. Measured with
``python -m dgclab.bench layer --scc`` (README, "Sliding-channel convolution")."""


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


class SCCBands(NamedTuple):
    """The banded layout of an SCC's windows, made by ``scc_bands`` (module docstring).

    Band j reads the U input channels ``j * step ... j * step + U - 1`` (mod C) and computes
    the outputs whose window starts in ``[j * step, (j + 1) * step)``; output c is row
    ``out_rows[c]`` of the (bands * rows) banded output, and ``W[c, k]`` sits at flat position
    ``weight_index[c, k]`` of the (bands, rows, U) banded weight, zeros elsewhere.
    """

    channels: int  # C, the input channels
    step: int  # the bands' spacing on the channel axis
    width: int  # U: D plus the largest offset of a start in its band
    rows: int  # outputs of the fullest band; the other bands are padded to it
    out_rows: torch.Tensor  # (O,) int64
    weight_index: torch.Tensor  # (O, D) int64

    @property
    def bands(self) -> int:
        return -(-self.channels // self.step)  # ceil(C / step)

    @property
    def macs(self) -> int:
        """MACs per output pixel the banded GEMM computes (padding and slack included)."""
        return self.bands * self.rows * self.width

    @property
    def cost(self) -> int:
        """The cost model: MACs plus ``READ_COST`` per band input value, per pixel."""
        return self.bands * self.width * (self.rows + READ_COST)


def scc_bands(starts: torch.Tensor, channels: int, window: int, step: int | None = None
              ) -> SCCBands:
    """Cut the outputs of an SCC into bands of nearby window starts (module docstring).

    Args:
        starts: (O,) int64 window starts, ``scc_starts``.
        channels: C, the input channels.
        window: D = C / g, the channels each output reads.
        step: the bands' spacing, 1 <= step <= C - D + 1 (so that no band reads more than C
            channels); None tries every one and keeps the lowest ``SCCBands.cost``.

    Returns:
        SCCBands, its tensors on the CPU.

    Example:
        >>> b = scc_bands(scc_starts(128, 128, 4, 0.5), 128, 32)  # starts 0, 16, 32, ...
        >>> b.step, b.bands, b.rows, b.width, b.macs == 128 * 32  # exactly the windows
        (16, 8, 16, 32, True)
    """
    channels = check_int("channels", channels, min=1)
    window = check_int("window", window, min=1, max=channels)
    starts = starts.cpu()
    if step is None:
        step = _cheapest_step(starts, channels, window)
    step = check_int("step", step, min=1, max=channels - window + 1)
    band, offset = starts // step, starts % step  # (O,), (O,)
    order = torch.argsort(band, stable=True)  # outputs band by band, in channel order
    first = torch.searchsorted(band[order], band[order])  # where each one's band begins
    slot = torch.empty_like(order)
    slot[order] = torch.arange(len(order)) - first  # its row within its band
    rows = int(torch.bincount(band).max())
    width = window + int(offset.max())
    out_rows = band * rows + slot
    weight_index = (out_rows * width + offset)[:, None] + torch.arange(window)  # (O, D)
    return SCCBands(channels, step, width, rows, out_rows, weight_index)


def _cheapest_step(starts: torch.Tensor, channels: int, window: int) -> int:
    """The step of the lowest ``SCCBands.cost``, every step 1 ... C - D + 1 at once."""
    steps = torch.arange(1, channels - window + 2)[:, None]  # (S, 1)
    band, offset = starts[None] // steps, starts[None] % steps  # (S, O)
    counts = torch.zeros(len(steps), channels, dtype=torch.long)  # (S, bands <= C)
    counts.scatter_add_(1, band, torch.ones_like(band))
    bands = -(-channels // steps[:, 0])  # (S,)
    width = window + offset.max(1).values
    cost = bands * width * (counts.max(1).values + READ_COST)  # SCCBands.cost, per step
    best = cost == cost.min()
    return int(steps[best].max())  # ties: the largest step, the fewest bands


def scc_banded_weight(weight: torch.Tensor, bands: SCCBands) -> torch.Tensor:
    """(bands, rows, U): the SCC's (O, D) weight laid out band by band; differentiable."""
    n, m, u = bands.bands, bands.rows, bands.width
    flat = weight.new_zeros(n * m * u).scatter(0, bands.weight_index.flatten(), weight.flatten())
    return flat.view(n, m, u)


def scc_banded_conv2d(x: torch.Tensor, weight: torch.Tensor, bands: SCCBands, stride=(1, 1),
                      banded_weight: torch.Tensor | None = None) -> torch.Tensor:
    """An SCC's 1x1 conv computed band by band, without the dense (O, C) weight.

    The channel axis is unrolled once around the ring (C + a few channels) so that every band's
    input is a view (``unfold``), and all bands run as one batched matmul.

    Args:
        x: (B, C, H, W) input.
        weight: (O, D) the SCC's weight.
        bands: ``scc_bands`` of the SCC, its tensors on x's device.
        stride: of the 1x1 conv.
        banded_weight: ``scc_banded_weight(weight, bands)`` where the caller keeps one.

    Returns:
        (B, O, H', W'), equal to ``F.conv2d(x, scc_dense_weight(...)[:, :, None, None])``.
    """
    check_type("x", x, torch.Tensor)
    check_type("bands", bands, SCCBands)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]  # a 1x1 conv without padding
    b, c, h, w = x.shape
    n, m, u = bands.bands, bands.rows, bands.width
    if banded_weight is None:
        banded_weight = scc_banded_weight(weight, bands)  # (bands, rows, U)
    xt = x.transpose(0, 1).reshape(c, b * h * w)  # (C, B HW); a view at batch 1
    ring = torch.cat([xt, xt[:max((n - 1) * bands.step + u - c, 0)]])  # (C + e, B HW)
    windows = ring.unfold(0, u, bands.step)[:n].transpose(1, 2)  # (bands, U, B HW), a view
    y = torch.bmm(banded_weight, windows)  # (bands, rows, B HW)
    y = y.view(n * m, b, h * w).transpose(0, 1)  # (B, bands * rows, HW)
    return y.index_select(1, bands.out_rows).view(b, -1, h, w)  # (B, O, H', W')


class SlidingChannelConv2d(GroupingConv, nn.Module):
    """Sliding-channel 1x1 convolution (DSXplore's SCC), no bias.

    Args:
        in_channels: C, divisible by ``groups``.
        out_channels: O.
        groups: g; each output reads a window of D = C / g input channels.
        overlap: o in [0, 1), the fraction of its window an output shares with the previous one.
        stride: of the 1x1 conv (DSXplore puts the stride in the depthwise conv before it).
        execution: "auto" (default), "banded" or "dense" (module docstring); an attribute that
            can be changed at any time.

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
                 overlap: float = 0.5, stride=1, execution: str = "auto") -> None:
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
        bands = scc_bands(self.starts, in_channels, d)
        self._band_shape = bands[:4]  # channels, step, width, rows
        self._banded_is_cheaper = bands.cost < out_channels * in_channels  # vs the dense GEMM
        for name in ("out_rows", "weight_index"):  # buffers: they follow .to()
            self.register_buffer(f"band_{name}", getattr(bands, name), persistent=False)
        self._weight_cache = None  # (key, banded weight) while the weight does not change
        self.execution = execution

    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        self._execution = check_choice("execution", value, EXECUTIONS)

    @property
    def bands(self) -> SCCBands:
        """The banded layout of this layer's windows (``scc_bands``), on its device."""
        return SCCBands(*self._band_shape, self.band_out_rows, self.band_weight_index)

    def resolved_execution(self, input: torch.Tensor | None = None) -> str:
        """What ``execution`` runs on ``input``: "auto" is "banded" where ``SCCBands.cost`` is
        below the dense GEMM's O * C MACs per pixel and (given an input) the call has between
        ``BANDED_MIN_PIXELS`` and ``BANDED_MAX_PIXELS`` output pixels, else "dense"."""
        if self.execution != "auto":
            return self.execution
        if not self._banded_is_cheaper:
            return "dense"
        if input is not None:  # output pixels of this 1x1 conv without padding
            b, _, h, w = input.shape
            pixels = b * ((h - 1) // self.stride[0] + 1) * ((w - 1) // self.stride[1] + 1)
            return "banded" if BANDED_MIN_PIXELS <= pixels <= BANDED_MAX_PIXELS else "dense"
        return "banded"

    def _banded_weight(self) -> torch.Tensor:
        """``scc_banded_weight`` of the current weight, kept between calls that need no grad."""
        weight = self.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return scc_banded_weight(weight, self.bands)
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
        if self._weight_cache is None or self._weight_cache[0] != key:
            self._weight_cache = (key, scc_banded_weight(weight.detach(), self.bands))
        return self._weight_cache[1]

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
        if self.resolved_execution(x) == "banded":
            return scc_banded_conv2d(x, self.weight, self.bands, self.stride,
                                     self._banded_weight())  # (B, O, H', W')
        weight = scc_dense_weight(self.weight, self.in_channels, self.starts)  # (O, C)
        return F.conv2d(x, weight[:, :, None, None], None, self.stride)  # (B, O, H', W')

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
                f"overlap={self.overlap}" + (f", stride={self.stride}"
                                             if self.stride != (1, 1) else "")
                + f", execution={self.execution} ({self.resolved_execution()})")


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
