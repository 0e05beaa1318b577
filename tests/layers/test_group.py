"""dgclab.layers.group: the functional ``group_conv2d`` and ``GroupConv2d`` against
``F.conv2d`` (the oracle), where they take the C++ kernel and where not, and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dgclab.layers import GroupConv2d, KernelConv2d, cpu_kernel, group_conv2d
from dgclab.layers.group import (
    KERNEL_MAX_GROUP_FILTERS, KERNEL_MAX_GROUP_FILTERS_BATCH_1, kernel_pays,
)

from helpers import needs_compiler


def _kernel_calls(fn) -> int:
    """How many times ``fn()`` called the C++ cluster conv."""
    with torch.autograd.profiler.profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "dgclab::cluster_conv2d")


def test_kernel_pays_for_small_groups_and_1x1_only():
    most, most_1 = 4 * KERNEL_MAX_GROUP_FILTERS, 4 * KERNEL_MAX_GROUP_FILTERS_BATCH_1
    assert kernel_pays((most, 8, 3, 3), 4, batch=64) and not kernel_pays((most + 4, 8, 3, 3), 4, 64)
    assert kernel_pays((most_1, 8, 3, 3), 4, batch=1) and not kernel_pays((most_1 + 4, 8, 3, 3), 4)
    assert kernel_pays((128, 192, 1, 1), 4) and kernel_pays((128, 192, 1, 1), 4, 64)  # 1x1: any
    assert not kernel_pays((8, 8, 3, 3), 1) and not kernel_pays((8, 8, 1, 1), 1)  # dense


# (C_in, C_out, kernel, stride, padding, dilation, groups): the networks' shapes and the corners
SHAPES = [
    (32, 8, 3, 1, 1, 1, 4),  # DyDenseNet's 3x3 group conv, 2 filters a group
    (16, 16, 3, 2, 1, 1, 2),  # strided
    (12, 24, 1, 2, 0, 1, 4),  # 1x1 downsample
    (24, 48, 1, 1, 0, 1, 4),  # 1x1, 12 filters a group: the kernel
    (8, 8, 3, 1, 2, 2, 4),  # dilated
    (8, 12, (3, 1), (1, 2), (1, 0), 1, 4),  # non-square kernel, stride, padding
    (16, 64, 3, 1, 1, 1, 4),  # 16 filters a group: F.conv2d
]


@needs_compiler
@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,groups", SHAPES)
@pytest.mark.parametrize("batch,bias", [(1, False), (3, True), (0, False)])
def test_group_conv2d_equals_f_conv2d(cin, cout, ksize, stride, padding, dilation, groups,
                                      batch, bias):
    assert cpu_kernel.load(), f"the CPU kernel did not build: {cpu_kernel.build_error()!r}"
    gen = torch.Generator().manual_seed(0)
    k = (ksize, ksize) if isinstance(ksize, int) else ksize
    x = torch.randn(batch, cin, 9, 11, generator=gen)
    w = torch.randn(cout, cin // groups, *k, generator=gen)
    b = torch.randn(cout, generator=gen) if bias else None
    with torch.no_grad():
        expected = F.conv2d(x, w, b, stride, padding, dilation, groups)
        got = group_conv2d(x, w, b, stride, padding, dilation, groups)
        calls = _kernel_calls(lambda: group_conv2d(x, w, b, stride, padding, dilation, groups))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert calls == int(kernel_pays(w.shape, groups, batch))


@needs_compiler
def test_group_conv2d_takes_pytorch_under_autograd_elsewhere_and_with_the_kernel_off():
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    assert kernel_pays(w.shape, 4, batch=2)
    y = group_conv2d(x, w, padding=1, groups=4)  # autograd: F.conv2d, so gradients flow
    y.square().sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(x2, w2, padding=1, groups=4).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    assert _kernel_calls(lambda: group_conv2d(x, w, padding=1, groups=4)) == 0
    with torch.no_grad():
        assert _kernel_calls(lambda: group_conv2d(x, w, padding=1, groups=4)) == 1
        assert _kernel_calls(lambda: group_conv2d(x.double(), w.double(), padding=1,
                                                  groups=4)) == 0
        assert _kernel_calls(lambda: group_conv2d(x, w, padding="same", groups=4)) == 0
        with cpu_kernel.use(False):
            assert _kernel_calls(lambda: group_conv2d(x, w, padding=1, groups=4)) == 0


@needs_compiler
@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_group_conv2d_propagates_nan_and_inf_as_f_conv2d(special):
    x = torch.randn(2, 16, 6, 6)
    x[0, 3, 2, 2] = special  # group 0
    x[1, 9, 0, 5] = special  # group 2, at the border
    w = torch.randn(8, 4, 3, 3)
    w[0, 3] = 0.0  # inf * 0 is NaN in both
    with torch.no_grad():
        got = group_conv2d(x, w, padding=1, groups=4)
        expected = F.conv2d(x, w, padding=1, groups=4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())


@needs_compiler
@pytest.mark.parametrize("shuffle,bias", [(False, False), (True, True)])
def test_group_conv2d_module_in_inference_equals_nn_conv2d(shuffle, bias):
    conv = GroupConv2d(32, 16, 3, padding=1, groups=4, shuffle=shuffle, bias=bias).eval()
    plain = torch.nn.Conv2d(32, 16, 3, padding=1, groups=4, bias=bias)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(3, 32, 7, 7)
    with torch.no_grad():
        expected = plain(x)
        if shuffle:
            expected = F.channel_shuffle(expected, 4)
        torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-4)
        assert _kernel_calls(lambda: conv(x)) == 1
    reflect = GroupConv2d(32, 16, 3, padding=1, groups=4).eval()
    reflect.padding_mode = "reflect"  # the kernel pads with zeros only
    with torch.no_grad():
        assert _kernel_calls(lambda: reflect(x)) == 0


@needs_compiler
@pytest.mark.parametrize("groups,calls", [(1, 0), (4, 1)])
def test_kernel_conv2d_is_nn_conv2d_with_the_kernel_where_it_pays(groups, calls):
    conv = KernelConv2d(16, 8, 3, padding=1, groups=groups, bias=False).eval()
    plain = torch.nn.Conv2d(16, 8, 3, padding=1, groups=groups, bias=False)
    plain.load_state_dict(conv.state_dict())  # the same keys
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), plain(x), rtol=1e-4, atol=1e-4)
        assert _kernel_calls(lambda: conv(x)) == calls


def test_group_conv2d_rejects_bad_input():
    x, w = torch.randn(1, 8, 4, 4), torch.randn(4, 2, 3, 3)
    with pytest.raises(TypeError, match="x"):
        group_conv2d(x.numpy(), w, groups=4)
    with pytest.raises(TypeError, match="weight"):
        group_conv2d(x, [1.0], groups=4)
    for name, kwargs in itertools.chain(
            (("groups", {"groups": 0}),), (("stride", {"stride": 0}),),
            (("padding", {"padding": -1}),), (("dilation", {"dilation": (1, 0)}),)):
        with pytest.raises(ValueError, match=name):
            group_conv2d(x, w, **({"groups": 4} | kwargs))
