"""Static group convolution, the baseline every DGC comparison is made against (SPEC §2).

``GroupConv2d`` is ``nn.Conv2d(groups=G)`` with an optional channel shuffle that interleaves the
groups' outputs the way a DGC layer interleaves its heads (group i channel j -> j*G + i; the
ShuffleNet shuffle, Zhang et al., arXiv 1707.01083), so a DGC layer and its static twin differ
in one argument. It implements the layer protocol (``base.py``) as a static layer: group g
reads input channels ``[g * C_in / G, (g + 1) * C_in / G)``.

``group_conv2d`` is the functional. In CPU float32 inference it runs small groups with
dgclab's C++ kernel (``torch.ops.dgclab.cluster_conv2d``, the per-image direct conv that also
runs SG-CNN's clusters; ``cpu_kernel.py``) instead of ``F.conv2d``: oneDNN's grouped conv
computes a group of a few filters at 1-5 GMAC/s on these CPUs, the kernel at 10-30
(``python -m dgclab.bench groups --shapes``; README, "Grouped convolution"). It takes the kernel
where that measurement says it pays (``kernel_pays``), and gives the same numbers either way.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_bool, check_conv_geometry, check_int, check_pair, check_type
from . import cpu_kernel
from .base import GroupingConv

__all__ = ["GroupConv2d", "KernelConv2d", "group_conv2d", "kernel_pays",
           "KERNEL_MAX_GROUP_FILTERS", "KERNEL_MAX_GROUP_FILTERS_BATCH_1"]

# Where the C++ kernel beat oneDNN's grouped conv (python -m dgclab.bench groups --shapes, the
# networks' G = 4 convs at batch 1 and 64): every 1x1 grouped conv; k x k convs of at most 4
# filters a group; at batch 1 also those of 8 filters a group (at batch 64 a 3x3 group of 8
# filters was 1.0-1.5x oneDNN's time).
KERNEL_MAX_GROUP_FILTERS = 4
KERNEL_MAX_GROUP_FILTERS_BATCH_1 = 8


def kernel_pays(weight_shape, groups: int, batch: int = 1) -> bool:
    """Whether ``group_conv2d`` takes the C++ kernel for a weight of this shape and a batch of
    this size (where it applies at all: CPU, float32, no autograd): grouped (``groups > 1``),
    and a 1x1 kernel or at most ``KERNEL_MAX_GROUP_FILTERS`` filters a group
    (``KERNEL_MAX_GROUP_FILTERS_BATCH_1`` at batch 1).

    Example:
        >>> kernel_pays((32, 8, 3, 3), groups=4), kernel_pays((32, 8, 3, 3), 4, batch=64)
        (True, False)
    """
    out_channels, _, kh, kw = weight_shape
    most = KERNEL_MAX_GROUP_FILTERS_BATCH_1 if batch <= 1 else KERNEL_MAX_GROUP_FILTERS
    return groups > 1 and (kh == kw == 1 or out_channels // groups <= most)


@functools.lru_cache(maxsize=64)
def _identity(n: int) -> torch.Tensor:
    """0 .. n-1: every group's channels and filters in order, for ``cluster_conv2d``."""
    return torch.arange(n)


def group_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``, by dgclab's C++ kernel
    where it is faster.

    In CPU float32 inference (no autograd; ``cpu_kernel.applies``), with integer padding and
    ``kernel_pays(weight.shape, groups, batch)``, every group runs in one ``cluster_conv2d`` call (the
    groups as clusters of contiguous channels); anywhere else, and with the kernel off
    (``cpu_kernel.use(False)``, which ``count_macs`` does), it is ``F.conv2d``. Both give the
    same numbers up to float rounding (tested against ``F.conv2d``).

    Args:
        x: (B, C_in, H, W).
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,) or None.
        stride, dilation: ints or pairs >= 1.
        padding: an int or pair >= 0 (a string such as "same" goes to ``F.conv2d``).
        groups: G >= 1, dividing C_in and C_out.

    Returns:
        (B, C_out, H', W').

    Raises:
        TypeError: ``x`` or ``weight`` is not a tensor.
        ValueError: a bad stride, padding, dilation or groups.

    Example:
        >>> x, w = torch.randn(2, 32, 8, 8), torch.randn(16, 8, 3, 3)
        >>> with torch.no_grad():
        ...     y = group_conv2d(x, w, padding=1, groups=4)
        >>> torch.allclose(y, F.conv2d(x, w, padding=1, groups=4), atol=1e-4)
        True
    """
    check_type("x", x, torch.Tensor)
    check_type("weight", weight, torch.Tensor)
    groups = check_int("groups", groups, min=1)
    stride, dilation = check_pair("stride", stride, min=1), check_pair("dilation", dilation, min=1)
    if not isinstance(padding, str):
        padding = check_pair("padding", padding, min=0)
    if bias is not None:
        check_type("bias", bias, torch.Tensor)
    return _group_conv2d(x, weight, bias, stride, padding, dilation, groups)


def _group_conv2d(x, weight, bias, stride, padding, dilation, groups: int) -> torch.Tensor:
    """``group_conv2d`` on checked arguments (stride, dilation pairs; padding a pair or a
    string), as modules call it: the kernel where it applies and pays, else ``F.conv2d``."""
    if (groups > 1 and not isinstance(padding, str) and x.dim() == 4 and weight.dim() == 4
            and kernel_pays(weight.shape, groups, x.shape[0])
            and x.shape[1] == weight.shape[1] * groups
            and weight.dtype == torch.float32 and cpu_kernel.applies(x)):
        return torch.ops.dgclab.cluster_conv2d(
            x, _identity(x.shape[1]), _identity(weight.shape[0]), weight.chunk(groups), bias,
            stride, padding, dilation)  # (B, C_out, H', W')
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class KernelConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters and state-dict keys) whose forward is
    ``group_conv2d``: a grouped conv that takes the C++ kernel in CPU inference where that pays.

    For a network's own static grouped convs that are not channel-grouping layers of the
    protocol (DyDenseNet's and CondenseNet's 3x3 group convs); ``GroupConv2d`` is the one that
    is. A padding mode other than zeros runs ``nn.Conv2d``'s forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super().forward(x)
        params = self._parameters  # not Module.__getattr__ twice per call
        return _group_conv2d(x, params["weight"], params["bias"], self.stride, self.padding,
                             self.dilation, self.groups)


class GroupConv2d(GroupingConv, KernelConv2d):
    """``nn.Conv2d`` with ``groups`` fixed groups, optionally followed by a channel shuffle
    (its conv is ``group_conv2d``'s, ``KernelConv2d``).

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
        out = super().forward(x)  # KernelConv2d's
        return F.channel_shuffle(out, self.groups) if self.shuffle and self.groups > 1 else out

    def extra_repr(self) -> str:
        return super().extra_repr() + (", shuffle=True" if self.shuffle else "")
