"""GSPC's packed grouped conv (SPEC §5) against F.conv2d(groups=G), for every valid blocking."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from dgclab.layers.gspc import gspc_conv2d, pack_data, pack_kernel


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@pytest.mark.parametrize("c,o,groups,k,stride,padding,hw", [
    (8, 8, 2, 3, 1, 1, (6, 5)),
    (12, 6, 3, 1, 2, 0, (7, 7)),
    (16, 8, 4, 3, 2, 1, (9, 8)),
    (6, 12, 1, 3, (2, 1), (0, 2), (5, 6)),
    (8, 8, 8, 3, 1, 1, (4, 4)),  # depthwise
])
def test_every_valid_blocking_equals_the_grouped_conv(c, o, groups, k, stride, padding, hw):
    torch.manual_seed(0)
    x = torch.randn(2, c, *hw, dtype=torch.float64)
    w = torch.randn(o, c // groups, k, k, dtype=torch.float64)
    expected = F.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    blockings = list(itertools.product(divisors(c // groups), divisors(o // groups)))
    assert len(blockings) > 1 or groups == c
    for ic_bn, oc_bn in blockings:
        got = gspc_conv2d(x, w, groups, ic_bn, oc_bn, stride, padding)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12,
                                   msg=f"ic_bn={ic_bn}, oc_bn={oc_bn}")


def test_packed_layouts_are_the_papers():
    x = torch.arange(2 * 8 * 3 * 4.0).view(2, 8, 3, 4)
    data = pack_data(x, groups=2, ic_bn=2)  # [G, N, C/G/ic_bn, H, ic_bn, W]
    assert data.shape == (2, 2, 2, 3, 2, 4)
    assert data[1, 0, 1, 2, 1, 3] == x[0, 1 * 4 + 1 * 2 + 1, 2, 3]
    w = torch.randn(6, 4, 3, 3)
    kernel = pack_kernel(w, groups=2, ic_bn=2, oc_bn=3)  # [G, O/G/oc_bn, C/G/ic_bn, kh, kw, ...]
    assert kernel.shape == (2, 1, 2, 3, 3, 2, 3)
    assert kernel[1, 0, 1, 2, 0, 1, 2] == w[1 * 3 + 2, 1 * 2 + 1, 2, 0]


def test_blocks_that_do_not_divide_are_refused():
    x, w = torch.randn(1, 8, 4, 4), torch.randn(8, 4, 3, 3)
    with pytest.raises(ValueError, match="ic_bn=3 must divide the channels per group, 4"):
        gspc_conv2d(x, w, 2, 3, 2)
    with pytest.raises(ValueError, match="oc_bn=8 must divide the channels per group, 4"):
        gspc_conv2d(x, w, 2, 2, 8)
    with pytest.raises(ValueError, match="groups=3"):
        gspc_conv2d(x, w, 3, 1, 1)
    with pytest.raises(TypeError, match="x"):
        gspc_conv2d(x.numpy(), w, 2, 2, 2)
