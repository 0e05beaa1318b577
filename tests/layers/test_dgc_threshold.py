"""DGC-G, the global-threshold selection rule: the rule itself by hand, every execution against
the mask formulation (eval and training, variable kept counts per image-head), the threshold
in checkpoints, the realized MACs of a hand-counted selection and the model-level calibration."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dgclab
from dgclab.analysis import realized_macs
from dgclab.layers import (
    DGCConv2d, cpu_kernel, mean_pruning_rate, set_pruning_progress, set_threshold,
)
from dgclab.layers.dgc_functional import select_above_threshold
from dgclab.models import resnet_cifar
from dgclab.record import Recorder


def test_the_rule_by_hand():
    g = torch.tensor([[[0.0, 0.5, 2.0, 0.5], [0.1, 0.2, 0.3, 0.3]]])  # (1 image, 2 heads, 4)
    keep = select_above_threshold(g, 0.4)
    # head 0 keeps what exceeds 0.4; head 1 has nothing above it and keeps its first argmax
    assert keep.int().tolist() == [[[0, 1, 1, 1], [0, 0, 1, 0]]]
    assert select_above_threshold(g, 0.0).int().tolist() == [[[0, 1, 1, 1], [1, 1, 1, 1]]]
    nan = torch.tensor([[[0.1, float("nan"), 0.2]]])
    assert select_above_threshold(nan, 0.15).int().tolist() == [[[0, 0, 1]]]  # NaN never above
    assert select_above_threshold(nan, 5.0).int().tolist() == [[[0, 1, 0]]]  # argmax: the NaN
    with pytest.raises(ValueError, match="threshold"):
        select_above_threshold(g, -0.1)
    with pytest.raises(TypeError, match="threshold"):
        select_above_threshold(g, "0.1")


def _layer(seed=0, cin=16, cout=16, ksize=3, heads=4):
    torch.manual_seed(seed)
    layer = DGCConv2d(cin, cout, ksize, padding=ksize // 2, heads=heads, squeeze_rate=4)
    layer.inactive_channels = 3 * cin // 4
    with torch.no_grad():  # spread the saliencies so that thresholds cut at different counts
        for head in layer.heads_list:
            head.fc2.bias.uniform_(0.0, 2.0)
    return layer


def _three_ways(layer, x):
    """(output, selection) of the mask, the gather (kernel where it applies) and the PyTorch
    gather."""
    out = {}
    for name, execution, kernel in (("mask", "mask", True), ("gather", "gather", True),
                                    ("gather-pt", "gather", False)):
        layer.execution = execution
        with cpu_kernel.use(kernel):
            out[name] = (layer(x), layer.last_selection.clone())
    return out


@pytest.mark.parametrize("ksize,size", [(3, (7, 7)), (1, (5, 40)), (3, (4, 37))])
@pytest.mark.parametrize("tau", [0.0, 0.6, 1.2, 100.0])
def test_every_execution_agrees_with_the_mask_in_eval(ksize, size, tau):
    layer = _layer(ksize=ksize).eval()
    layer.threshold = tau
    x = torch.randn(5, 16, *size)
    with torch.no_grad():
        out = _three_ways(layer, x)
    y, keep = out["mask"]
    assert keep.sum(-1).min() >= 1  # at least one channel per head
    for name in ("gather", "gather-pt"):
        assert torch.equal(out[name][1], keep), name
        torch.testing.assert_close(out[name][0], y, rtol=1e-4, atol=1e-5, msg=name)


def test_kept_counts_vary_per_image_and_head():
    layer = _layer().eval()
    layer.threshold = 1.0
    with torch.no_grad():
        layer(torch.randn(8, 16, 6, 6) * torch.linspace(0.1, 3, 8)[:, None, None, None])
    counts = layer.last_selection.sum(-1)  # (B, heads)
    assert counts.unique().numel() > 2


def test_training_gather_matches_the_mask_with_its_gradients():
    x = torch.randn(4, 16, 6, 6)
    grads, outs = {}, {}
    for execution in ("mask", "gather"):
        layer = _layer(seed=1).train()
        layer.threshold = 0.8
        layer.execution = execution
        y = layer(x)
        (y.square().mean() + 1e-3 * layer.regularization()).backward()
        outs[execution] = (y.detach(), layer.last_selection)
        grads[execution] = {n: p.grad.clone() for n, p in layer.named_parameters()}
    assert torch.equal(outs["mask"][1], outs["gather"][1])
    torch.testing.assert_close(outs["gather"][0], outs["mask"][0], rtol=1e-4, atol=1e-5)
    for name, grad in grads["mask"].items():
        torch.testing.assert_close(grads["gather"][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_the_threshold_is_a_buffer_that_checkpoints_carry():
    layer = _layer()
    assert layer.threshold is None and "threshold" not in repr(layer).splitlines()[1]
    assert "_threshold" not in layer.state_dict()  # head-wise: the official keys, key for key
    layer.threshold = 0.25
    assert "threshold=0.25" in repr(layer)
    state = layer.state_dict()
    fresh = _layer(seed=3)
    fresh.load_state_dict(state)
    assert fresh.threshold == 0.25
    old = {k: v for k, v in state.items() if k != "_threshold"}  # from before the rule existed
    fresh.load_state_dict(old)
    assert fresh.threshold is None  # the head-wise rule
    with pytest.raises(ValueError, match="_threshold"):
        fresh.load_state_dict({**state, "_threshold": torch.tensor([-1.0])})
    with pytest.raises(ValueError, match="threshold"):
        layer.threshold = -0.5
    with pytest.raises(TypeError, match="threshold"):
        layer.threshold = "high"
    layer.threshold = None
    assert layer.threshold is None


def _hand_model():
    """One 1x1 DGC layer (8 -> 8 channels, 2 heads, hidden width 1) whose saliencies are set by
    hand: pooled input p, h = relu(sum p), g = relu(v * h + b) per head."""
    layer = DGCConv2d(8, 8, 1, heads=2, squeeze_rate=16).eval()  # hidden = 8 // 8 = 1
    with torch.no_grad():
        for head, (v, b) in zip(layer.heads_list, ((0.1, 0.5), (-0.1, 0.9))):
            head.fc1.weight.fill_(1.0)
            head.fc2.weight.fill_(v)
            head.fc2.bias.copy_(torch.linspace(0, 1, 8) * b)
    return nn.Sequential(layer)


def test_realized_macs_of_a_hand_counted_selection():
    model = _hand_model()
    set_threshold(model, 0.3)
    # image 0 is all zeros (h = 0): g = b * linspace(0, 1, 8); image 1 is all ones (h = 8):
    # head 0 g = 0.8 + 0.5 * t, head 1 g = relu(-0.8 + 0.9 * t), t = 0, 1/7, ..., 1
    x = torch.stack([torch.zeros(8, 4, 4), torch.ones(8, 4, 4)])
    t = torch.linspace(0, 1, 8)
    expected_kept = [[int((0.5 * t > 0.3).sum()), int((0.9 * t > 0.3).sum())],
                     [int((0.8 + 0.5 * t > 0.3).sum()),
                      max(1, int((torch.relu(-0.8 + 0.9 * t) > 0.3).sum()))]]
    assert expected_kept == [[3, 5], [8, 1]]
    with torch.no_grad(), Recorder(model) as rec:
        model(x)
    assert rec.selections("0").sum(-1).tolist() == expected_kept
    # per image: ReLU and pool 8 * 16 each, the two saliency MLPs 2 * (8 + 1 + 8 + 3 * 8), and
    # each head's 1x1 conv over its kept channels into 4 outputs on 16 pixels
    fixed = 8 * 16 * 2 + 2 * (8 * 1 + 1 + 1 * 8 + 3 * 8)
    expected = [fixed + sum(expected_kept[i]) * 4 * 16 for i in range(2)]
    assert realized_macs(rec)["realized"].tolist() == expected


def test_calibration_reaches_the_target_rate():
    torch.manual_seed(0)
    model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    set_pruning_progress(model, 1.0)
    with torch.no_grad():  # fresh heads score every channel 1 (their bias): spread them
        for layer in model.modules():
            if isinstance(layer, DGCConv2d):
                for head in layer.heads_list:
                    head.fc2.bias.uniform_(0.0, 2.0)
    batches = [(torch.randn(16, 1, 12, 12), torch.zeros(16)) for _ in range(2)]
    tau = dgclab.calibrate_threshold(model, batches, 0.6, tolerance=0.01)
    assert tau > 0 and model.training  # the mode is restored
    layers = [m for m in model.modules() if isinstance(m, DGCConv2d)]
    assert all(layer.threshold == tau for layer in layers)
    assert abs(mean_pruning_rate(model, batches) - 0.6) <= 0.01
    assert "_threshold" in "".join(model.state_dict())
    with pytest.warns(UserWarning, match="closest mean pruning rate"):  # every saliency is 1
        dgclab.calibrate_threshold(resnet_cifar(8, width=8, conv="dgc", in_channels=1),
                                   batches, 0.6, tolerance=0.01)


def test_calibration_refuses_what_it_cannot_do():
    model = _hand_model()
    x = [torch.zeros(2, 8, 4, 4)]  # saliencies b * t: one 0 per head; rates below 1/8 unreachable
    with pytest.raises(ValueError, match="below the rate at threshold 0"):
        dgclab.calibrate_threshold(model, x, 0.05)
    assert model[0].threshold is None  # left as it was
    with pytest.raises(ValueError, match="pruning_rate"):
        dgclab.calibrate_threshold(model, x, 1.0)
    with pytest.raises(ValueError, match="at least one batch"):
        dgclab.calibrate_threshold(model, [], 0.5)
    with pytest.raises(ValueError, match="no DGC layer"):
        dgclab.calibrate_threshold(nn.Sequential(nn.Conv2d(8, 8, 1)), x, 0.5)
    with pytest.raises(TypeError, match="batches must hold"):
        dgclab.calibrate_threshold(model, ["images"], 0.5)
    with pytest.raises(ValueError, match="no DGC layer"):
        set_threshold(nn.Sequential(nn.Conv2d(8, 8, 1)), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        set_threshold(model, float("nan"))
