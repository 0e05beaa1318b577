"""The Triton gather (dgclab.layers.dgc_triton): the kernel under Triton's CPU interpreter
everywhere, the real thing on CUDA where there is a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgclab.layers import DGCConv2d
from dgclab.layers import dgc_triton
from dgclab.models import resnet_cifar

from helpers import LAYER_SHAPES, assert_executions_agree, make_layer

CASES = Path(__file__).with_name("triton_cases.py")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(not dgc_triton.available(), reason="Triton is not installed")
def test_kernel_matches_mask_execution_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", DGCLAB_CPU_KERNEL="0",
               PYTHONPATH=str(CASES.parents[2]))
    result = subprocess.run([sys.executable, str(CASES)], env=env, capture_output=True,
                            text=True, timeout=600)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lines) >= 26 and all(line.startswith("ok ") for line in lines), result.stdout


def test_applies_only_to_cuda_tensors():
    assert not dgc_triton.applies(torch.randn(1, 4, 3, 3))
    with pytest.raises(TypeError, match="flag must be a bool"):
        with dgc_triton.use(1):
            pass
    with dgc_triton.use(False):
        assert not dgc_triton.enabled()
    assert dgc_triton.enabled() == (os.environ.get("DGCLAB_TRITON", "1") != "0")


def test_input_on_another_device_names_both():
    layer = make_layer(8, 8, 3, padding=1)
    with pytest.raises(ValueError, match=r"input is on meta but the layer's parameters are on cpu"):
        layer(torch.empty(1, 8, 5, 5, device="meta"))


# ---- CUDA ------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("shape", LAYER_SHAPES)
def test_cuda_kernel_agrees_with_mask_train_and_eval(shape):
    cin, cout, ksize, stride, padding, dilation, heads = shape
    layer = make_layer(cin, cout, ksize, stride=stride, padding=padding, dilation=dilation,
                       heads=heads, k=cin // 2).cuda()
    x = torch.randn(3, cin, 9, 7, device="cuda")
    for train in (False, True):
        assert_executions_agree(layer, x, train=train)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_close_to_float32(dtype):
    layer = make_layer(32, 32, 3, padding=1, k=20).cuda().eval()
    x = torch.randn(4, 32, 10, 10, device="cuda")
    with torch.no_grad():
        layer.execution = "mask"
        ref = layer(x)
        layer.execution = "gather"
        got = layer.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.cuda
@needs_cuda
def test_cuda_kernel_equals_pytorch_gather_and_skips_padding_under_threshold():
    layer = make_layer(16, 16, 3, padding=1).cuda().eval()
    layer.threshold = 0.05
    layer.execution = "gather"
    x = torch.randn(5, 16, 8, 8, device="cuda")
    with torch.no_grad():
        triton_out = layer(x)
        with dgc_triton.use(False):
            torch_out = layer(x)
        layer.execution = "mask"
        mask_out = layer(x)
    torch.testing.assert_close(triton_out, torch_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(triton_out, mask_out, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
def test_cuda_float64_falls_back_with_one_warning():
    layer = make_layer(8, 8, 3, padding=1, k=4).cuda().double().eval()
    layer.execution = "gather"
    x = torch.randn(2, 8, 6, 6, device="cuda", dtype=torch.float64)
    dgc_triton._state["warned"].discard(torch.float64)
    with pytest.warns(UserWarning, match="float64 on CUDA runs the PyTorch gather"):
        with torch.no_grad():
            layer(x)


@pytest.mark.cuda
@needs_cuda
def test_cuda_network_trains():
    torch.manual_seed(0)
    model = resnet_cifar(8, width=16, in_channels=1, conv="dgc").cuda()
    for m in model.modules():
        if isinstance(m, DGCConv2d):
            m.inactive_channels = m.in_channels // 2
            m.execution = "gather"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 28, 28, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
