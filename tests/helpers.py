"""Helpers shared by test modules in several folders (tests/ is on sys.path: tests/conftest.py
is imported in pytest's default "prepend" import mode). Import them as ``from helpers import ...``.

conftest.py registers this module for pytest's assertion rewriting, so the ``assert`` statements
below report as they do in a test module.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

from dgclab.layers import DGCConv2d, cpu_kernel
from dgclab.record import Recording
from dgclab.train import TrainConfig


# ---- the C++ kernel ----------------------------------------------------------------------------

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler: the kernel cannot be built here (layers keep their PyTorch path)",
)
"""Marks a test of dgclab's C++ kernel (``dgclab.layers.cpu_kernel``): it must build wherever a
compiler is present, CI included."""


# ---- DGC layers ---------------------------------------------------------------------------------


def make_layer(cin, cout, ksize, *, heads=4, k=None, seed=0, **kw) -> DGCConv2d:
    torch.manual_seed(seed)
    layer = DGCConv2d(cin, cout, ksize, heads=heads, squeeze_rate=kw.pop("squeeze_rate", 4), **kw)
    # Non-trivial BN statistics so that eval mode is not an identity.
    with torch.no_grad():
        layer.norm.running_mean.uniform_(-0.2, 0.2)
        layer.norm.running_var.uniform_(0.5, 1.5)
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.2, 0.2)
    if k is not None:
        layer.inactive_channels = k
    return layer


def run(layer: DGCConv2d, x: torch.Tensor, execution: str):
    """Forward + backward of a fixed random projection; returns output, grads and lasso."""
    layer.execution = execution
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = layer(x)
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    proj = proj.to(out.device)
    ((out * proj).sum() + layer.last_lasso).backward()
    grads = {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
        for n, p in layer.named_parameters()
    }
    return out.detach(), x.grad.clone(), grads, layer.last_lasso.detach(), layer.last_selection


def assert_executions_agree(layer, x, train: bool):
    layer.train(train)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    ref = run(layer, x, "mask")
    layer.load_state_dict(state)  # train-mode BN moved its running stats: start again
    got = run(layer, x, "gather")
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-5)
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(got[3], ref[3])
    assert torch.equal(got[4], ref[4])


LAYER_SHAPES = [  # (cin, cout, ksize, stride, padding, dilation, heads)
    (16, 16, 1, 1, 0, 1, 4),  # 1x1 -> batched matmul
    (16, 32, 1, 2, 0, 1, 4),  # strided 1x1
    (16, 16, 3, 1, 1, 1, 4),  # 3x3 -> grouped conv over batch*heads
    (16, 8, 3, 2, 1, 1, 2),  # strided 3x3
    (16, 16, 3, 1, 2, 2, 4),  # dilated 3x3
    (8, 8, 1, 1, 1, 1, 1),  # padded 1x1 takes the conv path; one head
    (16, 16, (3, 1), 1, (1, 0), 1, 8),  # rectangular kernel, eight heads
]


def fixed_saliency(layer: DGCConv2d, saliency: torch.Tensor) -> None:
    """Make head i's saliency the constant vector saliency[i] (fc2 weight 0, bias = saliency)."""
    with torch.no_grad():
        for i, head in enumerate(layer.heads_list):
            head.fc2.weight.zero_()
            head.fc2.bias.copy_(saliency[i])


# ---- the fused CPU kernel -----------------------------------------------------------------------


def forward_three_ways(layer: DGCConv2d, x: torch.Tensor):
    """(kernel, PyTorch gather, mask) outputs and selections of one eval forward."""
    results = []
    for execution, use_kernel in (("gather", True), ("gather", False), ("mask", False)):
        layer.execution = execution
        with torch.no_grad(), cpu_kernel.use(use_kernel):
            out = layer(x)
        results.append((out, layer.last_selection, layer.last_lasso))
    return results


def assert_three_ways_agree(layer: DGCConv2d, x: torch.Tensor, msg: str = "") -> torch.Tensor:
    """Kernel, PyTorch gather and mask give the same selection, lasso and output, NaN and Inf
    included (NaN exactly where the mask execution has NaN). Returns the mask's output."""
    (fused, sel, lasso), (gather, sel_g, lasso_g), (mask, sel_m, lasso_m) = (
        forward_three_ways(layer, x)
    )
    assert torch.equal(sel, sel_g) and torch.equal(sel, sel_m), msg
    for got, name in ((fused, "kernel"), (gather, "gather")):
        torch.testing.assert_close(got, mask, rtol=1e-4, atol=1e-5, equal_nan=True,
                                   msg=lambda m: f"{name} vs mask {msg}: {m}")
    for got in (lasso, lasso_g):
        torch.testing.assert_close(got, lasso_m, rtol=1e-5, atol=1e-6, equal_nan=True)
    return mask


# ---- recordings ---------------------------------------------------------------------------------


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                     "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            assert not getattr(module, attr), (name, attr)


def assert_same_recording(a: Recording, b: Recording) -> None:
    """Equal bit for bit (NaN payloads of the float arrays included)."""
    assert a.layer_names == b.layer_names
    assert len(a) == len(b)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.ids, b.ids)
    for name in a.layer_names:
        assert a.layer_info(name) == b.layer_info(name)
        np.testing.assert_array_equal(a.packed_selections(name), b.packed_selections(name))
        assert torch.equal(a.selections(name), b.selections(name))
        assert (name in a._saliencies) == (name in b._saliencies)
        if name in a._saliencies:
            sa, sb = a.saliencies(name), b.saliencies(name)
            assert sa.dtype == sb.dtype == torch.float16
            assert torch.equal(sa.view(torch.int16), sb.view(torch.int16))
        assert (name in a._activation_max) == (name in b._activation_max)
        if name in a._activation_max:
            ma, mb = a.activation_max(name), b.activation_max(name)
            assert torch.equal(ma.view(torch.int32), mb.view(torch.int32))


# ---- training -----------------------------------------------------------------------------------


TINY = dict(model="resnet8", width=8, dataset="synthetic", subset=128, epochs=2, batch_size=64,
            eval_batch_size=128, lr=0.05)


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**(TINY | kw))


class StopAfter:
    """A callback that interrupts training after an epoch, as a kill would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, row):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def warmed(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, then eval mode."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


# A tiny dense ResNet-8 on synthetic data, as `dgclab export` would write it: the input of the
# model transformations' tests (bench transforms, bench family).
DENSE_TINY = TrainConfig(model="resnet8", width=4, conv="dense", dataset="synthetic",
                         download=False)


def write_dense_export(path, config: TrainConfig = DENSE_TINY):
    """Save a freshly built (seed 0) model of ``config`` in the export format; returns path."""
    from dgclab.study.self_grouping import EXPORT_FORMAT
    from dgclab.train.run_folder import model_of

    torch.manual_seed(0)
    torch.save({"format": EXPORT_FORMAT, "config": config.to_dict(),
                "model": model_of(config).state_dict(), "epoch": 0, "metrics": {}}, path)
    return path
