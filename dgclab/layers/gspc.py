"""Grouped spatial pack convolution (GSPC): a grouped conv over packed data and kernel layouts.

Gibson, Cano, Crowley, Storkey, O'Boyle, "Optimizing Grouped Convolutions on Edge Devices",
ASAP 2020, arXiv 2006.09791 (SPEC §5). GSPC computes a grouped conv directly, with the group as
the outermost loop and the channels of each group split into blocks of ``ic_bn`` inputs and
``oc_bn`` outputs, over the packed layouts

    data:   [G, N, C/G/ic_bn, H, ic_bn, W]
    kernel: [G, O/G/oc_bn, C/G/ic_bn, kh, kw, ic_bn, oc_bn]

so that the innermost loops run over contiguous ``ic_bn x oc_bn`` tiles. The paper's speed comes
from TVM's code generation for edge CPUs (on average 3.4x faster than TVM's own grouped conv, 8x
than PyTorch, 4x than TFLite: the paper's figures, not measured here). ``gspc_conv2d`` is a
faithful study of the layouts and the loop order in PyTorch, not TVM, and a function, not a
conv kind: each (group, kernel tap) is one einsum over the tiles, so its speed says how PyTorch
runs that loop nest, not what GSPC compiles to. ``python -m dgclab.bench groups`` measures the
paper's motivating observation instead: time does not fall in proportion to the MACs as the
number of groups grows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_int, check_pair, check_type

__all__ = ["gspc_conv2d", "pack_data", "pack_kernel"]


def pack_data(x: torch.Tensor, groups: int, ic_bn: int) -> torch.Tensor:
    """(N, C, H, W) -> [G, N, C/G/ic_bn, H, ic_bn, W] (a copy)."""
    n, c, h, w = x.shape
    blocks = c // groups // ic_bn
    return x.reshape(n, groups, blocks, ic_bn, h, w).permute(1, 0, 2, 4, 3, 5).contiguous()


def pack_kernel(weight: torch.Tensor, groups: int, ic_bn: int, oc_bn: int) -> torch.Tensor:
    """(O, C/G, kh, kw) -> [G, O/G/oc_bn, C/G/ic_bn, kh, kw, ic_bn, oc_bn] (a copy)."""
    o, cg, kh, kw = weight.shape
    w = weight.reshape(groups, o // groups // oc_bn, oc_bn, cg // ic_bn, ic_bn, kh, kw)
    return w.permute(0, 1, 3, 5, 6, 4, 2).contiguous()


def gspc_conv2d(x: torch.Tensor, weight: torch.Tensor, groups: int, ic_bn: int, oc_bn: int,
                stride=1, padding=0) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=groups)``, computed as GSPC.

    Args:
        x: (N, C, H, W).
        weight: (O, C / groups, kh, kw), as ``nn.Conv2d(groups=groups)`` holds it.
        groups: G, divides C and O.
        ic_bn, oc_bn: the input / output channel blocks; must divide C / G and O / G (a block
            that does not divide would read or write across groups: refused).
        stride, padding: an int or a pair each (zero padding; no dilation, no bias).

    Returns:
        (N, O, H', W'), equal to the grouped conv up to float rounding.

    Raises:
        TypeError: ``x`` or ``weight`` not a Tensor.
        ValueError: shapes that do not match, or blocks that do not divide (naming them).

    Example:
        >>> x, w = torch.randn(1, 16, 8, 8), torch.randn(32, 4, 3, 3)
        >>> y = gspc_conv2d(x, w, groups=4, ic_bn=2, oc_bn=4, padding=1)
        >>> torch.allclose(y, F.conv2d(x, w, padding=1, groups=4), atol=1e-5)
        True
    """
    check_type("x", x, torch.Tensor)
    check_type("weight", weight, torch.Tensor)
    groups = check_int("groups", groups, min=1)
    ic_bn, oc_bn = check_int("ic_bn", ic_bn, min=1), check_int("oc_bn", oc_bn, min=1)
    (sh, sw), (ph, pw) = check_pair("stride", stride, min=1), check_pair("padding", padding, min=0)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W) and weight (O, C/G, kh, kw), got shapes "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c % groups or o % groups or cg != c // groups:
        raise ValueError(f"groups={groups} must divide C={c} and O={o}, and weight must hold "
                         f"C / groups input channels, got {cg}")
    for name, block, size in (("ic_bn", ic_bn, cg), ("oc_bn", oc_bn, o // groups)):
        if size % block:
            raise ValueError(f"{name}={block} must divide the channels per group, {size}")
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} is too small for kernel {kh}x{kw}, padding {ph, pw}")

    data = pack_data(F.pad(x, (pw, pw, ph, ph)), groups, ic_bn)  # [G, N, icb, Hp, ic_bn, Wp]
    kernel = pack_kernel(weight, groups, ic_bn, oc_bn)  # [G, ocb, icb, kh, kw, ic_bn, oc_bn]
    out = x.new_zeros(groups, n, o // groups // oc_bn, ho, wo, oc_bn)
    for g in range(groups):  # the group is the outermost loop
        for i in range(kh):
            for j in range(kw):
                # (N, icb, Ho, ic_bn, Wo): the inputs this tap reads at every output position
                patch = data[g, :, :, i : i + sh * (ho - 1) + 1 : sh, :,
                             j : j + sw * (wo - 1) + 1 : sw]
                out[g] += torch.einsum("nahbw,oabk->nohwk", patch, kernel[g, :, :, i, j])
    # [G, N, ocb, Ho, Wo, oc_bn] -> (N, O, Ho, Wo), output o = (g, block, lane)
    return out.permute(1, 0, 2, 5, 3, 4).reshape(n, o, ho, wo)
