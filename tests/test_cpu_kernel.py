"""The fused CPU inference kernel (dgclab/layers/csrc/dgc_cpu.cpp) against the PyTorch gather
and the mask formulation, and the conditions under which the layer takes it."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from dgclab.layers import DGCConv2d, cpu_kernel, dgc_gather_conv, dgc_mask_conv
from dgclab.layers.dgc import select_top_channels

from test_dgc_layer import LAYER_SHAPES, make_layer

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler: the kernel cannot be built here (layers keep their PyTorch path)",
)


@pytest.fixture(scope="module")
def kernel():
    """The kernel must build wherever a compiler is present (CI included)."""
    assert cpu_kernel.load(), f"the CPU kernel did not build: {cpu_kernel.build_error()!r}"
    return torch.ops.dgclab


def forward_three_ways(layer: DGCConv2d, x: torch.Tensor):
    """(kernel, PyTorch gather, mask) outputs and selections of one eval forward."""
    results = []
    for execution, use_kernel in (("gather", True), ("gather", False), ("mask", False)):
        layer.execution = execution
        with torch.no_grad(), cpu_kernel.use(use_kernel):
            out = layer(x)
        results.append((out, layer.last_selection, layer.last_lasso))
    return results


@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,heads", LAYER_SHAPES)
def test_kernel_matches_gather_and_mask(kernel, cin, cout, ksize, stride, padding, dilation, heads):
    for k in sorted({0, 1, cin // 2, (3 * cin) // 4, cin - 1}):
        layer = make_layer(cin, cout, ksize, stride=stride, padding=padding, dilation=dilation,
                           heads=heads, k=k, squeeze_rate=2).eval()
        x = torch.randn(3, cin, 9, 9)
        (fused, sel, lasso), (gather, sel_g, lasso_g), (mask, sel_m, _) = forward_three_ways(layer, x)
        assert torch.equal(sel, sel_g) and torch.equal(sel, sel_m), f"k={k}"
        torch.testing.assert_close(fused, gather, rtol=1e-4, atol=1e-5, msg=f"k={k}")
        torch.testing.assert_close(fused, mask, rtol=1e-4, atol=1e-5, msg=f"k={k}")
        torch.testing.assert_close(lasso, lasso_g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_kernel_batch_one_and_ties(kernel, heads):
    """Batch 1; a ReLU'd input with many zero channels, so that saliency ties drop together
    and keep_idx lists channels whose gate is 0."""
    layer = make_layer(16, 16, 3, padding=1, heads=heads, k=6, squeeze_rate=2).eval()
    with torch.no_grad():
        for head in layer.heads_list:  # half of the channels get saliency exactly 0
            head.fc2.bias[::2] = -50.0
    x = torch.randn(1, 16, 6, 6)
    (fused, sel, _), (gather, _, _), (mask, _, _) = forward_three_ways(layer, x)
    assert (sel.sum(-1) < 16 - 6).all()  # the 8 zeros tie and drop together: more than k
    torch.testing.assert_close(fused, mask, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, gather, rtol=1e-4, atol=1e-5)


def test_functional_gather_conv_uses_kernel(kernel):
    x = torch.randn(4, 32, 10, 10)
    saliency = torch.rand(4, 4, 32)
    keep_mask, keep_idx = select_top_channels(saliency, 20)
    gate = saliency * keep_mask
    weight = torch.randn(4, 8, 32, 3, 3)
    ref = dgc_mask_conv(x, gate, weight, 1, 1, 1)
    with torch.no_grad():
        fused = dgc_gather_conv(x, gate, keep_idx, weight, 1, 1, 1)
        with cpu_kernel.use(False):
            plain = dgc_gather_conv(x, gate, keep_idx, weight, 1, 1, 1)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    # norm=(scale, shift): the input goes through relu(x * scale + shift) first, in both paths
    scale, shift = torch.rand(32) + 0.5, torch.randn(32) * 0.3
    ref_norm = dgc_mask_conv(F.relu(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)),
                             gate, weight, 1, 1, 1)
    for use_kernel in (True, False):
        with torch.no_grad(), cpu_kernel.use(use_kernel):
            got = dgc_gather_conv(x, gate, keep_idx, weight, 1, 1, 1, norm=(scale, shift))
        torch.testing.assert_close(got, ref_norm, rtol=1e-4, atol=1e-5)
    # non-contiguous input (channels-last) and int32 indices are taken as well
    with torch.no_grad():
        other = kernel.gather_conv2d(
            x.to(memory_format=torch.channels_last), None, None, gate.gather(-1, keep_idx),
            keep_idx.int(), weight, [1, 1], [1, 1], [1, 1],
        )
    torch.testing.assert_close(other, ref, rtol=1e-4, atol=1e-5)


def test_bn_relu_pool_matches_batch_norm(kernel):
    layer = make_layer(24, 24, 3, padding=1, k=12).eval()
    x = torch.randn(5, 24, 7, 9)
    scale, shift = layer._folded_norm()
    with torch.no_grad():
        ref = F.relu(layer.norm(x)).mean(dim=(2, 3))
        got = kernel.bn_relu_pool(x, scale, shift)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_when_the_layer_takes_the_kernel(kernel, monkeypatch):
    """Only CPU float32 inference with an eval-mode BN and nobody watching norm/relu."""
    calls = []
    original = DGCConv2d._folded_norm
    monkeypatch.setattr(DGCConv2d, "_folded_norm", lambda self: calls.append(1) or original(self))
    layer = make_layer(16, 16, 3, padding=1, k=12, squeeze_rate=2).eval()
    x = torch.randn(2, 16, 6, 6)

    def fused(**context) -> bool:
        calls.clear()
        layer(x.to(context.get("dtype", torch.float32)))
        return bool(calls)

    with torch.no_grad():
        assert fused()
        layer.execution = "mask"
        assert not fused()
        layer.execution = "gather"
        with cpu_kernel.use(False):
            assert not fused()
        layer.train()  # batch statistics: the BN is not an affine map
        assert not fused()
        layer.eval()
        seen = []
        handle = layer.relu.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert not fused() and seen  # the hook saw the ReLU's output
        handle.remove()
        layer.double()
        assert not fused(dtype=torch.float64)
        layer.float()
    assert not fused()  # autograd
    with torch.inference_mode():
        assert fused()


def test_kernel_rejects_bad_indices(kernel):
    x = torch.randn(1, 8, 5, 5)
    idx = torch.tensor([[[0, 9]]])
    with pytest.raises(RuntimeError, match="channel index 9 out of range"):
        kernel.gather_conv2d(x, None, None, torch.ones(1, 1, 2), idx, torch.randn(1, 4, 8, 3, 3),
                             [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="float32 CPU tensor"):
        kernel.gather_conv2d(x.double(), None, None, torch.ones(1, 1, 2), idx.clamp(max=7),
                             torch.randn(1, 4, 8, 3, 3), [1, 1], [1, 1], [1, 1])


def test_set_enabled_validates():
    with pytest.raises(ValueError, match="takes a bool"):
        cpu_kernel.set_enabled("yes")
    with cpu_kernel.use(False):
        assert not cpu_kernel.available()
    assert cpu_kernel.enabled()
