"""The fused CPU inference kernel (dgclab/layers/csrc/dgc_cpu.cpp) against the PyTorch gather
and the mask formulation, and the conditions under which the layer takes it."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from dgclab.layers import DGCConv2d, cpu_kernel, dgc_gather_conv, dgc_mask_conv
from dgclab.layers.dgc import select_top_channels

from helpers import (
    LAYER_SHAPES, assert_three_ways_agree, fixed_saliency, forward_three_ways, make_layer,
    needs_compiler,
)

pytestmark = needs_compiler


@pytest.fixture(scope="module")
def kernel():
    """The kernel must build wherever a compiler is present (CI included)."""
    assert cpu_kernel.load(), f"the CPU kernel did not build: {cpu_kernel.build_error()!r}"
    return torch.ops.dgclab


@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,heads", LAYER_SHAPES)
def test_kernel_matches_gather_and_mask(kernel, cin, cout, ksize, stride, padding, dilation, heads):
    # 9 x 9: im2col and GEMM; 5 x 37: rows wide enough for the direct kernel at stride 1 (two
    # chunks of 32 pixels, the second short)
    for k, size in itertools.product(sorted({0, 1, cin // 2, (3 * cin) // 4, cin - 1}),
                                     ((9, 9), (5, 37))):
        layer = make_layer(cin, cout, ksize, stride=stride, padding=padding, dilation=dilation,
                           heads=heads, k=k, squeeze_rate=2).eval()
        x = torch.randn(3, cin, *size)
        (fused, sel, lasso), (gather, sel_g, lasso_g), (mask, sel_m, _) = forward_three_ways(layer, x)
        msg = f"k={k}, input {size}"
        assert torch.equal(sel, sel_g) and torch.equal(sel, sel_m), msg
        torch.testing.assert_close(fused, gather, rtol=1e-4, atol=1e-5, msg=msg)
        torch.testing.assert_close(fused, mask, rtol=1e-4, atol=1e-5, msg=msg)
        torch.testing.assert_close(lasso, lasso_g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])  # the filters read as nn.Conv2d keeps them, packed
def test_kernel_im2col_gemm_for_many_filters_per_head(kernel, batch):
    """A head with more than kPlaneMaxFilters (32) filters on a narrow stride-1 map takes
    im2col + GEMM, unless the map is small (kSmallMap output pixels)."""
    layer = make_layer(16, 80, 3, padding=1, heads=2, k=5, squeeze_rate=2).eval()  # 40 a head
    assert_three_ways_agree(layer, torch.randn(batch, 16, 9, 9))  # 81 output pixels: GEMM
    assert_three_ways_agree(layer, torch.randn(batch, 16, 7, 7))  # 49: direct_plane


# (cin, cout, ksize, stride, padding, dilation, heads, input size): which conv_image_head runs
DIRECT_KERNEL_CASES = [
    (16, 32, 3, 1, 1, 1, 4, (9, 9)),  # 8 filters a head: filter lanes, P = 8 pixels a tile
    (16, 64, 3, 1, 1, 1, 4, (5, 37)),  # 16: filter lanes, 2 vectors; wide rows
    (16, 48, 3, 2, 1, 1, 2, (11, 10)),  # 24, strided: 16 + 8 filter lanes, no im2col
    (16, 32, 3, 1, 2, 2, 2, (7, 13)),  # dilated, a rectangular map
    (16, 16, (1, 3), 1, (0, 1), 1, 2, (6, 9)),  # rectangular kernel
    (16, 32, 1, 2, 0, 1, 4, (9, 9)),  # strided 1x1: filter lanes, not a GEMM
    (16, 256, 3, 1, 1, 1, 4, (7, 7)),  # 64 a head on 49 pixels: filter lanes (the plane's rule)
    (16, 256, 3, 1, 1, 1, 4, (9, 9)),  # 64 a head on 81 pixels: im2col + GEMM
    (16, 96, 3, 1, 1, 1, 8, (9, 9)),  # 12 a head: pixel lanes, blocks of 3 filters
    (16, 40, 3, 1, 1, 1, 4, (5, 37)),  # 10 a head on wide rows: pixel lanes, 3 + 3 + 3 + 1
]


@pytest.mark.parametrize("batch", [1, 4])  # filters read as nn.Conv2d keeps them / packed
@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,heads,size", DIRECT_KERNEL_CASES)
def test_every_direct_kernel_matches_the_mask(kernel, batch, cin, cout, ksize, stride, padding,
                                              dilation, heads, size):
    for k in (0, 5, 12):
        layer = make_layer(cin, cout, ksize, stride=stride, padding=padding, dilation=dilation,
                           heads=heads, k=k, squeeze_rate=2).eval()
        assert_three_ways_agree(layer, torch.randn(batch, cin, *size), msg=f"k={k}")


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


@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_inputs_give_the_same_numbers_in_every_execution(kernel, special):
    """The fused BN-ReLU keeps NaN (relu(NaN) is NaN, as in torch): one NaN in the input makes
    its image's saliencies and output NaN in every execution, not zeros in the kernel's."""
    layer = DGCConv2d(16, 16, 3, padding=1, squeeze_rate=2).eval()
    layer.inactive_channels = 12
    x = torch.randn(2, 16, 5, 5)
    x[0, 3, 2, 2] = special
    out = assert_three_ways_agree(layer, x)
    if special != float("-inf"):  # -inf goes through the ReLU as 0
        assert out[0].isnan().any()
    assert torch.isfinite(out[1]).all()  # the other image is untouched


@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,heads", LAYER_SHAPES)
@pytest.mark.parametrize("special", [float("nan"), float("inf")])
def test_non_finite_inputs_agree_for_every_shape(kernel, special, cin, cout, ksize, stride,
                                                 padding, dilation, heads):
    """Padded shapes included: a NaN gate spreads over its channel's pixels but not over the
    zero padding, which the official formulation adds after gating."""
    for k, width in itertools.product(sorted({0, cin // 2, cin - 1}), (9, 21)):
        layer = make_layer(cin, cout, ksize, stride=stride, padding=padding, dilation=dilation,
                           heads=heads, k=k, squeeze_rate=2).eval()
        x = torch.randn(3, cin, 9, width)
        x[1, 0, 4, 4] = special
        x[2, cin - 1, 0, 8] = special
        assert_three_ways_agree(layer, x, f"k={k}, width {width}")


def test_inf_in_a_dropped_channel_spreads_as_in_the_mask_execution(kernel):
    """The mask execution multiplies a dropped channel by its gate 0: 0 * Inf is NaN there.
    The gather must not lose that NaN by skipping the channel."""
    layer = make_layer(8, 8, 3, padding=1, heads=2, k=4, squeeze_rate=2).eval()
    fixed_saliency(layer, torch.tensor([[0.1, 1, 2, 3, 4, 5, 6, 7]] * 2))  # channel 0 dropped
    with torch.no_grad():
        for head in layer.heads_list:  # an Inf in channel 0 sends every hidden unit to -Inf
            head.fc1.weight[:, 0] = -1.0
    x = torch.randn(2, 8, 6, 6)
    x[0, 0, 1, 1] = float("inf")
    out = assert_three_ways_agree(layer, x)
    assert not layer.last_selection[0, :, 0].any()  # channel 0 was dropped by both heads
    assert out[0, :, :3, :3].isnan().all() and not out[0, :, 4:, 4:].isnan().any()


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


# ---- the kernel under autograd: KernelGatherConv --------------------------------------------


def _gather_case(cin, cout, ksize, stride, padding, dilation, heads, dtype=torch.float32, seed=0):
    """Leaves x, saliency and weight of a gather conv, its kept channels (mask and indices;
    the gate is ``saliency * keep_mask``, as in the layer) and its geometry."""
    torch.manual_seed(seed)
    kh, kw = (ksize, ksize) if isinstance(ksize, int) else ksize
    stride, padding, dilation = (torch.nn.modules.utils._pair(v) for v in (stride, padding,
                                                                           dilation))
    x = torch.randn(3, cin, 7, 6, dtype=dtype, requires_grad=True)
    saliency = torch.rand(3, heads, cin, dtype=dtype, requires_grad=True)
    keep_mask, keep_idx = select_top_channels(saliency.detach(), cin - max(1, cin // 4))
    weight = torch.randn(heads, cout // heads, cin, kh, kw, dtype=dtype, requires_grad=True)
    return x, saliency, keep_mask, keep_idx, weight, (stride, padding, dilation)


@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,heads", LAYER_SHAPES)
def test_kernel_under_autograd_gives_the_pytorch_gradients(kernel, cin, cout, ksize, stride,
                                                           padding, dilation, heads):
    from dgclab.layers.dgc_gather import KernelGatherConv, gather_conv_torch

    x, saliency, keep_mask, keep_idx, weight, geometry = _gather_case(
        cin, cout, ksize, stride, padding, dilation, heads)
    gate = lambda: (saliency * keep_mask).gather(-1, keep_idx)  # noqa: E731 - a graph per path
    fast = KernelGatherConv.apply(x, gate(), keep_idx, weight, *geometry)
    plain = gather_conv_torch(x, gate(), keep_idx, weight, *geometry)
    # the oracle: the mask execution, gating the input
    reference = dgc_mask_conv(x, saliency * keep_mask, weight, *geometry)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(fast)
    leaves = (x, saliency, weight)
    got = torch.autograd.grad(fast, leaves, grad)
    want = torch.autograd.grad(reference, leaves, grad)
    via_torch = torch.autograd.grad(plain, leaves, grad)
    for a, b, c in zip(got, want, via_torch):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [LAYER_SHAPES[1], LAYER_SHAPES[3], LAYER_SHAPES[4],
                                   LAYER_SHAPES[6]])
def test_gather_conv_backward_passes_float64_gradcheck(shape):
    """The backward formulas themselves, in float64 (the kernel is float32 only): a Function
    with the PyTorch gather as its forward and gather_conv_backward as its backward."""
    from dgclab.layers.dgc_gather import gather_conv_backward, gather_conv_torch

    class Checked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gate_kept, keep_idx, weight, geometry):
            ctx.save_for_backward(x, gate_kept, keep_idx, weight)
            ctx.geometry = geometry
            return gather_conv_torch(x, gate_kept, keep_idx, weight, *geometry)

        @staticmethod
        def backward(ctx, grad_out):
            grads = gather_conv_backward(grad_out, *ctx.saved_tensors, *ctx.geometry,
                                         needs=ctx.needs_input_grad[:4])
            return (*grads, None)

    x, saliency, _, keep_idx, weight, geometry = _gather_case(*shape, dtype=torch.float64)
    gate_kept = saliency.gather(-1, keep_idx).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, g, w: Checked.apply(a, g, keep_idx, w, geometry),
                                    (x, gate_kept, weight))


def test_dgc_layer_trains_through_the_kernel_as_through_pytorch(kernel):
    layer = make_layer(32, 32, 3, padding=1, k=24)  # keeps 1/4: "auto" gathers under autograd
    other = copy.deepcopy(layer)
    x = torch.randn(4, 32, 9, 9)
    with torch.autograd.profiler.profile() as prof:
        y = layer(x)
    assert any("gather_conv2d" in e.name for e in prof.function_events)
    with cpu_kernel.use(False):
        y_plain = other(x)
    torch.testing.assert_close(y, y_plain, rtol=1e-4, atol=1e-5)
    (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
    with cpu_kernel.use(False):
        (y_plain * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), other.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fused_layer_returns_the_reference_saliencies(kernel):
    """The kernel's BN-ReLU-pool and saliency MLP against the PyTorch ones (non-trivial BN
    statistics, several images): the saliencies to float precision, the selection exactly."""
    layer = make_layer(24, 24, 3, padding=1, k=12).eval()
    x = torch.randn(5, 24, 7, 9)
    with torch.no_grad():
        ref = layer.saliency(F.relu(layer.norm(x)).mean(dim=(2, 3)))
        layer(x)
    torch.testing.assert_close(layer.last_saliency, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.last_selection, select_top_channels(ref, 12)[0])
    assert layer.last_selection.dtype == torch.bool and layer.last_saliency.shape == (5, 4, 24)


def test_fused_layer_empty_batch(kernel):
    layer = make_layer(16, 16, 3, padding=1, k=8).eval()
    with torch.no_grad():
        out = layer(torch.randn(0, 16, 6, 6))
    assert out.shape == (0, 16, 6, 6) and layer.last_selection.shape == (0, 4, 16)
    assert layer.last_lasso.item() == 0


def test_kernel_without_its_bn_matches(kernel):
    """Where the BN is not an affine map (train mode under no_grad: batch statistics) or is
    observed, PyTorch applies the BN-ReLU and the kernel takes the normalised input."""
    layer = make_layer(16, 16, 3, padding=1, k=10, squeeze_rate=2)
    x = torch.randn(4, 16, 6, 6)
    outs = []
    for use_kernel in (True, False):
        layer.train()
        with torch.no_grad(), cpu_kernel.use(use_kernel):
            outs.append((layer(x), layer.last_selection))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    assert torch.equal(outs[0][1], outs[1][1])


def test_kernel_gates_the_input_not_the_padding(kernel):
    """The kernel applies the gate to the kept channels as it copies them, like the mask
    execution; gating the filters instead would multiply the zero padding by a NaN gate."""
    x = torch.rand(1, 4, 4, 4) + 0.5
    gate = torch.tensor([[[1.0, float("nan"), 0.0, 2.0]]])  # channel 2 dropped
    keep_idx = torch.tensor([[[0, 1, 3]]])
    weight = torch.randn(1, 2, 4, 1, 1)
    ref = dgc_mask_conv(x, gate, weight, 1, 2, 1, gate_on="input")  # 1x1, padding 2
    for use_kernel in (True, False):
        with torch.no_grad(), cpu_kernel.use(use_kernel):
            got = dgc_gather_conv(x, gate, keep_idx, weight, 1, 2, 1)
        assert (got[..., :2, :] == 0).all()  # padding-only outputs
        torch.testing.assert_close(got, ref, equal_nan=True)


def test_when_the_layer_takes_the_kernel(kernel, monkeypatch):
    """CPU float32 inference takes the kernel; it applies the BN-ReLU itself only where the BN
    is an affine map (eval mode, running statistics) and nobody watches norm or relu."""
    taken, fused_norm = [], []
    kernel_forward, fuse_norm = DGCConv2d._kernel_forward, DGCConv2d._fuse_norm
    monkeypatch.setattr(DGCConv2d, "_kernel_forward",
                        lambda self, x, k, tau: taken.append(1) or kernel_forward(self, x, k, tau))
    monkeypatch.setattr(DGCConv2d, "_fuse_norm",
                        lambda self: fused_norm.append(fuse_norm(self)) or fused_norm[-1])
    layer = make_layer(16, 16, 3, padding=1, k=12, squeeze_rate=2).eval()
    x = torch.randn(2, 16, 6, 6)

    def forward(**context) -> tuple[bool, bool]:
        """(kernel taken, BN-ReLU fused)"""
        taken.clear(), fused_norm.clear()
        layer(x.to(context.get("dtype", torch.float32)))
        return bool(taken), bool(fused_norm and fused_norm[-1])

    with torch.no_grad():
        assert forward() == (True, True)
        layer.execution = "mask"
        assert forward() == (False, False)
        layer.execution = "gather"
        with cpu_kernel.use(False):
            assert forward() == (False, False)
        layer.train()  # batch statistics: the BN is not an affine map
        assert forward() == (True, False)
        layer.eval()
        seen = []
        handle = layer.relu.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert forward() == (True, False) and seen  # the hook saw the ReLU's output
        handle.remove()
        layer.double()
        assert forward(dtype=torch.float64) == (False, False)
        layer.float()
    assert forward() == (False, False)  # autograd
    with torch.inference_mode():
        assert forward() == (True, True)


def test_fused_op_rejects_bad_arguments(kernel):
    layer = make_layer(8, 8, 3, padding=1, heads=2, k=4)
    heads = layer.heads_list
    lists = ([h.fc1.weight for h in heads], [h.fc2.weight for h in heads],
             [h.fc2.bias for h in heads], [h.conv.weight for h in heads])
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"k=8 outside \[0, 8\)"):
            kernel.dgc_forward(x, None, None, None, None, 0.0, *lists, 8, None, [1, 1], [1, 1],
                               [1, 1])
        with pytest.raises(RuntimeError, match="for every head"):
            kernel.dgc_forward(x, None, None, None, None, 0.0, lists[0][:1], *lists[1:], 4, None,
                               [1, 1], [1, 1], [1, 1])
        with pytest.raises(RuntimeError, match="do not match C=6"):
            kernel.dgc_forward(x[:, :6], None, None, None, None, 0.0, *lists, 4, None,
                               [1, 1], [1, 1], [1, 1])
        with pytest.raises(RuntimeError, match="threshold=-1 is negative"):
            kernel.dgc_forward(x, None, None, None, None, 0.0, *lists, 4, -1.0, [1, 1], [1, 1],
                               [1, 1])


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
    with pytest.raises(TypeError, match="flag must be a bool, got flag='yes'"):
        cpu_kernel.set_enabled("yes")
    with cpu_kernel.use(False):
        assert not cpu_kernel.available()
    assert cpu_kernel.enabled()


def test_environment_variable_is_validated(monkeypatch):
    for value, enabled in (("0", False), ("1", True), ("off", False), ("TRUE", True)):
        monkeypatch.setenv("DGCLAB_CPU_KERNEL", value)
        assert cpu_kernel._enabled_by_environment() is enabled
    monkeypatch.setenv("DGCLAB_CPU_KERNEL", "fasle")
    with pytest.raises(ValueError, match="DGCLAB_CPU_KERNEL='fasle'"):
        cpu_kernel._enabled_by_environment()
