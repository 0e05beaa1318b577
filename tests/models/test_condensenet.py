"""CondenseNet (SPEC §2): the CondenseNet-86 layout, its README's 65.8M MACs and 0.52M
parameters, and condense() against the masked network it converts."""

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from dgclab import count_macs
from dgclab.layers import grouping_layers, regularization_loss, set_progress
from dgclab.layers.lgc import CondensedConv2d, LearnedGroupConv2d, group_lasso
from dgclab.models.condensenet import (
    CondenseNet, condense, condensenet, condensenet86, official_param_count,
)
from dgclab.models.dydensenet import BNReLUConv


@pytest.fixture(scope="module")
def net86():
    torch.manual_seed(0)
    return condensenet86(num_classes=10)


def randomize_bn(model: nn.Module) -> None:
    """BN statistics that make eval mode no identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def small(seed=0, **kw) -> CondenseNet:
    torch.manual_seed(seed)
    model = condensenet([2, 2, 2], [8, 16, 32], **kw)
    randomize_bn(model)
    return model


# ---- CondenseNet-86 ---------------------------------------------------------------------------


def test_condensenet86_layout(net86):
    lgc = [(n, m) for n, m in grouping_layers(net86) if isinstance(m, LearnedGroupConv2d)]
    assert len(lgc) == 42 and len(grouping_layers(net86)) == 42
    assert lgc[0][0] == "features.denseblock_1.denselayer_1.conv_1"
    assert all((m.groups, m.condense_factor, m.kernel_size) == (4, 4, (1, 1)) for _, m in lgc)
    first, last = lgc[0][1], lgc[-1][1]
    assert (first.in_channels, first.out_channels) == (16, 32)  # stem 16, bottleneck 4 x 8
    assert (last.in_channels, last.out_channels) == (800 - 32, 128)
    conv_2 = net86.features.denseblock_3.denselayer_14.conv_2
    assert isinstance(conv_2, BNReLUConv) and conv_2.conv.groups == 4
    assert conv_2.conv.kernel_size == (3, 3)
    assert net86.features.init_conv.out_channels == 16 and net86.features.init_conv.stride == (1, 1)
    assert isinstance(net86.features.transition_1, nn.AvgPool2d)
    assert not hasattr(net86.features, "transition_3")
    assert net86.classifier.in_features == 800 and net86.classifier.out_features == 10
    keys = net86.state_dict()
    for suffix in ("_mask", "_count", "_stage", "conv.weight", "norm.running_var"):
        assert f"features.denseblock_2.denselayer_7.conv_1.{suffix}" in keys
    assert net86(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_condensenet86_counts_match_the_readme(net86):
    # CondenseNet's README: 65.8M multiply-adds, 0.52M parameters; an LGC counts its dense
    # conv / C and its ReLU, BN nothing
    macs = count_macs(net86, (1, 3, 32, 32))
    assert abs(macs - 65.8e6) < 0.1e6
    assert macs == 65_816_394  # measured; rerun: count_macs(condensenet86(), (1, 3, 32, 32))
    params = official_param_count(net86)
    assert abs(params - 0.52e6) < 0.01e6
    assert params == 520_202
    lgc_weights = sum(m.conv.weight.numel() for _, m in grouping_layers(net86))
    assert sum(p.numel() for p in net86.parameters()) == params + lgc_weights * 3 // 4
    # the masked execution computes the dense conv: far more
    assert count_macs(net86, (1, 3, 32, 32), "dense") > 2.5 * macs


def test_init_is_dydensenets():
    torch.manual_seed(1)
    model = condensenet86()
    conv = model.features.denseblock_3.denselayer_14.conv_1.conv  # 768 -> 128, 1x1
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.02)
    conv3 = model.features.denseblock_3.denselayer_14.conv_2.conv  # 128 -> 32, 3x3
    assert conv3.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.weight.eq(1).all() and m.bias.eq(0).all()
    assert model.classifier.bias.eq(0).all()


# ---- condense ---------------------------------------------------------------------------------


def test_condense_equals_the_masked_model():
    model = small(seed=2)
    set_progress(model, 0.6)  # every stage applied
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = condense(model)
    assert fast is not model
    assert not any(isinstance(m, LearnedGroupConv2d) for m in fast.modules())
    assert sum(isinstance(m, CondensedConv2d) for m in fast.modules()) == 6
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    after = model.state_dict()  # the original is unchanged, still the masked network
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, LearnedGroupConv2d) for m in model.modules()) == 6


def test_condense_at_an_intermediate_stage_and_a_lone_layer():
    model = small(seed=3)
    set_progress(model, 1 / 3)  # each group still reads half its input
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(condense(model)(x), model(x), rtol=1e-5, atol=1e-5)
    layer = model.features.denseblock_1.denselayer_1.conv_1
    assert isinstance(condense(layer), CondensedConv2d)
    with pytest.raises(TypeError, match="model"):
        condense("model")


def test_condensed_macs_really_fall():
    model = small(seed=4)
    set_progress(model, 1.0)
    model.eval()
    fast = condense(model)
    x = torch.zeros(1, 3, 32, 32)

    def flops(m):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x)
        return counter.get_total_flops()

    lgc = [m for _, m in grouping_layers(model)]
    dense_lgc = 0  # MACs of the LGC convs run densely under their masks, at batch 1
    hw = {16: 32 * 32, 24: 32 * 32, 32: 16 * 16, 48: 16 * 16, 64: 8 * 8, 96: 8 * 8}
    for m in lgc:
        dense_lgc += m.in_channels * m.out_channels * hw[m.in_channels]
    saved = flops(model) - flops(fast)
    assert saved == 2 * dense_lgc * 3 // 4  # FLOPs = 2 MACs; C = 4 keeps a quarter
    # the paper's count of the masked model is what the condensed model runs (G = C)
    assert count_macs(fast, (1, 3, 32, 32)) == count_macs(model, (1, 3, 32, 32))
    assert count_macs(fast, (1, 3, 32, 32)) < count_macs(model, (1, 3, 32, 32), "dense")
    stored = sum(p.numel() for p in fast.parameters())
    assert stored == official_param_count(model)  # G = C: the official convention


# ---- training hooks ---------------------------------------------------------------------------


def test_trainer_hooks_and_group_lasso():
    model = small(seed=5, group_lasso=True)
    assert regularization_loss(model).item() > 0
    torch.testing.assert_close(regularization_loss(model), group_lasso(model))
    loss = model(torch.randn(2, 3, 32, 32)).sum() + 1e-5 * regularization_loss(model)
    loss.backward()
    set_progress(model, 0.5)  # stage 3 = G - 1: the lasso is off
    assert group_lasso(model).item() == 0
    assert group_lasso(small(seed=5)).item() == 0  # off by default (lambda = 0 on CIFAR)


@pytest.mark.parametrize("kwargs,match", [
    (dict(stages=[2, 2], growth=[8]), "equal length"),
    (dict(stages=[], growth=[]), "non-empty"),
    (dict(stages=[2, 0], growth=[8, 16]), "stages"),
    (dict(stages=[2], growth=[6], group_3x3=1), "in_channels=18"),  # 12 + 6: not by G = 4
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        condensenet(**kwargs)


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match=r"growth\[1\] must be an int, got growth\[1\]=1.5"):
        condensenet([2, 2], [8, 1.5])
    with pytest.raises(TypeError, match="stages must be a list or tuple, got int"):
        condensenet(14, [8])
