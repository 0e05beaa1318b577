"""Static group convolution, the baseline every DGC comparison is made against (SPEC §2).

``GroupConv2d`` is ``nn.Conv2d(groups=G)`` with an optional channel shuffle that interleaves the
groups' outputs the way a DGC layer interleaves its heads (group i channel j -> j*G + i; the
ShuffleNet shuffle, Zhang et al., arXiv 1707.01083), so a DGC layer and its static twin differ
in one argument. It implements the layer protocol (``base.py``) as a static layer: group g
reads input channels ``[g * C_in / G, (g + 1) * C_in / G)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_bool, check_conv_geometry, check_int
from .base import GroupingConv

__all__ = ["GroupConv2d"]


class GroupConv2d(GroupingConv, nn.Conv2d):
    """``nn.Conv2d`` with ``groups`` fixed groups, optionally followed by a channel shuffle.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as nn.Conv2d
            (checked here: TypeError for a wrong type, ValueError for a bad value).
        groups: G, divides both channel counts.
        shuffle: interleave the groups' outputs (group i channel j -> channel j*G + i).

    Example:
        >>> GroupConv2d(64, 64, 3, padding=1, groups=4, shuffle=True)(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 4,
        shuffle: bool = False,
        bias: bool = False,
    ) -> None:
        # a string padding ("same", "valid") is nn.Conv2d's to check
        in_channels, out_channels, kernel_size, stride, padding, dilation = check_conv_geometry(
            in_channels, out_channels, kernel_size, stride, padding, dilation,
            string_padding=True)
        groups = check_int("groups", groups, min=1)
        shuffle = check_bool("shuffle", shuffle)
        bias = check_bool("bias", bias)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups must divide in_channels and out_channels, got groups={groups}, "
                f"in_channels={in_channels}, out_channels={out_channels}"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.shuffle = shuffle

    kind = "group"
    dynamic = False

    @property
    def channel_groups(self) -> int:
        return self.groups

    def connectivity(self) -> torch.Tensor:
        """(groups, C_in) bool: group g reads the g-th contiguous block of C_in / groups."""
        block = torch.arange(self.in_channels) // (self.in_channels // self.groups)  # (C_in,)
        return block.unsqueeze(0) == torch.arange(self.groups).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return F.channel_shuffle(out, self.groups) if self.shuffle and self.groups > 1 else out

    def extra_repr(self) -> str:
        return super().extra_repr() + (", shuffle=True" if self.shuffle else "")
