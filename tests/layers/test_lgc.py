"""Learned group convolution (CondenseNet, SPEC §2) against oracles written another way: the
stage schedule by its formula, channel choices on hand-made weights, importance and lasso as
loops, the masked conv as F.conv2d over a hand-masked weight, the condensed form against the
masked one, and the MAC formula through count_macs."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgclab import count_macs
from dgclab.layers import (
    CONV_KINDS, grouping_layers, make_conv, register_conv, regularization_loss, set_progress, unregister_conv,
)
from dgclab.layers.lgc import (
    CondensedConv2d, LearnedGroupConv2d, condensing_stage, group_lasso, lgc_drop_channels,
    lgc_group_lasso, lgc_importance,
)
from dgclab.models import resnet_cifar
from dgclab.record.recording import check_layer_info


def _lgc(in_channels, out_channels, kernel_size, stride, padding, dilation, **options):
    return LearnedGroupConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              **options)


@pytest.fixture
def lgc_kind():
    """The "lgc" registry entry (the one to add to dgclab/layers/registry.py), registered for
    the test unless the registry has it already."""
    if "lgc" in CONV_KINDS:
        yield CONV_KINDS["lgc"]
        return
    kind = register_conv(
        "lgc", _lgc, LearnedGroupConv2d,
        options={"groups": 4, "condense_factor": None, "dropout": 0.0, "group_lasso": False},
        groups_option="groups", preactivated=True,
        doc="learned group conv, CondenseNet CVPR 2018 (SPEC §2); k x k: dgclab's extension",
    )
    try:
        yield kind
    finally:
        unregister_conv("lgc")


def make(c_in=16, c_out=8, k=1, *, groups=4, seed=0, **kw) -> LearnedGroupConv2d:
    torch.manual_seed(seed)
    layer = LearnedGroupConv2d(c_in, c_out, k, padding=k // 2, groups=groups, **kw)
    with torch.no_grad():  # BN statistics that make eval mode no identity
        layer.norm.running_mean.uniform_(-0.2, 0.2)
        layer.norm.running_var.uniform_(0.5, 1.5)
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.2, 0.2)
    return layer


def reads(layer) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in layer.connectivity()]


# ---- the stage schedule ---------------------------------------------------------------------


def test_stage_starts_at_s_over_2_c_minus_1():
    assert [condensing_stage(p, 4) for p in (0, 0.16, 1 / 6, 0.3, 1 / 3, 0.49, 0.5, 0.6, 1)] \
        == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    for c in (2, 3, 5, 8):  # exactly at s / (2 (C - 1)), and just before
        for s in range(1, c):
            assert condensing_stage(s / (2 * (c - 1)), c) == s
            assert condensing_stage(s / (2 * (c - 1)) - 1e-9, c) == s - 1
    assert condensing_stage(1.0, 1) == 0  # C = 1: nothing to drop


def test_drops_at_one_sixth_one_third_one_half():
    layer = make(16, 8, groups=4)  # C = G = 4: 4 channels per group per stage
    kept = []
    for p in (0.0, 0.16, 1 / 6, 0.3, 1 / 3, 0.49, 0.5, 0.75, 1.0):
        layer.set_progress(p)
        kept.append(layer.connectivity().sum(1).tolist())
    assert kept == [[16] * 4] * 2 + [[12] * 4] * 2 + [[8] * 4] * 2 + [[4] * 4] * 3
    assert (layer.stage, layer._count.item(), layer._stage.item()) == (3, 12, 3)
    before = layer.mask.clone()
    layer.set_progress(0.2)  # an earlier progress: dropped channels stay dropped
    assert torch.equal(layer.mask, before) and layer.stage == 3


def test_a_jump_applies_every_missed_stage_in_order():
    stepped, jumped = make(16, 8, seed=3), make(16, 8, seed=3)
    for p in (1 / 6, 1 / 3, 0.5):
        stepped.set_progress(p)
    jumped.set_progress(0.6)  # from 0: all three stages at once (the official code does one)
    assert jumped.stage == 3 and jumped._count.item() == 12
    assert torch.equal(jumped.mask, stepped.mask)
    assert jumped.connectivity().sum(1).tolist() == [16 // 4] * 4  # C_in / C each
    # equal to dropping each group's 12 least important channels at once
    importance = lgc_importance(jumped.conv.weight, torch.ones_like(jumped.mask), 4)
    most = importance.argsort(dim=1, stable=True)[:, 12:].sort(dim=1).values
    assert reads(jumped) == most.tolist()


def test_set_progress_through_the_protocol_and_checked():
    model = nn.Sequential(make(16, 8), make(8, 8, seed=1, condense_factor=2))
    set_progress(model, 1 / 3)
    assert [m.stage for m in model] == [2, 0]  # C = 2 has one stage, at p = 1 / (2 (2 - 1))
    set_progress(model, 1 / 2)
    assert [m.stage for m in model] == [3, 1]
    assert [m.connectivity().sum(1).tolist() for m in model] == [[4] * 4, [4] * 4]
    with pytest.raises(ValueError, match="progress"):
        model[0].set_progress(1.5)
    with pytest.raises(TypeError, match="progress"):
        model[0].set_progress("0.5")


# ---- which channels go ----------------------------------------------------------------------


def test_each_group_drops_its_least_important_channels():
    # C_in = 8, C_out = 4, G = 2 (outputs 0, 2 in group 0; 1, 3 in group 1), C = 4: 2 per stage
    layer = LearnedGroupConv2d(8, 4, groups=2, condense_factor=4)
    w = torch.zeros(4, 8)
    w[0] = torch.tensor([8., 1, 7, 2, 6, 3, 5, 4])  # group 0: importance is |w0| + |w2|
    w[2] = torch.tensor([0., -1, 0, 0, 0, 0, 0, 0.5])
    w[1] = torch.tensor([1., 2, 3, 4, 5, 6, 7, 8])  # group 1: the opposite order
    w[3] = -w[1]
    with torch.no_grad():
        layer.conv.weight.copy_(w[:, :, None, None])
    torch.testing.assert_close(lgc_importance(layer.conv.weight, layer.mask, 2), torch.stack(
        [w[0].abs() + w[2].abs(), w[1].abs() + w[3].abs()]))
    layer.set_progress(1 / 6)  # group 0: importance 8, 2, 7, 2, 6, 3, 5, 4.5; ties: lower index
    assert reads(layer) == [[0, 2, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7]]
    layer.set_progress(1 / 3)
    assert reads(layer) == [[0, 2, 4, 6], [4, 5, 6, 7]]
    layer.set_progress(1 / 2)
    assert reads(layer) == [[0, 2], [6, 7]]
    mask = layer.mask[:, :, 0, 0]
    assert mask[0::2].tolist() == [[1, 0, 1, 0, 0, 0, 0, 0]] * 2  # every output of the group
    assert mask[1::2].tolist() == [[0, 0, 0, 0, 0, 0, 1, 1]] * 2


def test_kxk_importance_sums_the_taps():
    # dgclab's extension: a channel with one large tap outweighs one with several small taps
    w = torch.zeros(2, 4, 3, 3)
    w[:, 0, 1, 1] = 1.0  # channel 0: one tap of 1 -> 2 over the group's two outputs
    w[:, 1] = 0.1  # channel 1: nine taps of 0.1 -> 1.8
    w[:, 2, 0, 0], w[:, 2, 2, 2] = 0.6, -0.6  # channel 2: 2.4
    w[:, 3, 0] = 0.3  # channel 3: three taps of 0.3 -> 1.8
    importance = lgc_importance(w, torch.ones_like(w), groups=1)
    torch.testing.assert_close(importance, torch.tensor([[2.0, 1.8, 2.4, 1.8]]))
    mask = lgc_drop_channels(w, torch.ones_like(w), groups=1, count=2)
    assert mask[:, :, 1, 1].tolist() == [[1, 0, 1, 0]] * 2  # ties (1.8) both go here
    assert torch.equal(mask, mask[:, :, :1, :1].expand_as(mask))  # every tap of a channel
    ones = torch.ones(2, 4, 1, 1)  # a tie at the cut: the lower index goes
    assert lgc_drop_channels(ones, ones, groups=1, count=1)[0, :, 0, 0].tolist() == [0, 1, 1, 1]


def test_importance_and_lasso_are_the_loops():
    torch.manual_seed(4)
    g, c_out, c_in = 3, 6, 5
    w = torch.randn(c_out, c_in, 3, 3)
    m = (torch.rand_like(w) > 0.3).float()
    imp = torch.zeros(g, c_in)
    lasso = 0.0
    for group in range(g):
        for j in range(c_in):
            outputs = [o for o in range(c_out) if o % g == group]
            imp[group, j] = sum((w[o, j] * m[o, j]).abs().sum() for o in outputs)
            lasso += max(sum((w[o, j] * m[o, j]).pow(2).sum() for o in outputs), 1e-6) ** 0.5
    torch.testing.assert_close(lgc_importance(w, m, g), imp)
    torch.testing.assert_close(lgc_group_lasso(w, m, g), torch.tensor(float(lasso)))
    # a fully masked channel contributes sqrt(1e-6) per group
    torch.testing.assert_close(lgc_group_lasso(w, torch.zeros_like(w), g),
                               torch.tensor(g * c_in * 1e-3))


# ---- state, forward, gradients --------------------------------------------------------------


def test_state_dict_is_the_official_layout():
    layer = LearnedGroupConv2d(16, 32, groups=4)
    state = layer.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "norm.weight": (16,), "norm.bias": (16,), "norm.running_mean": (16,),
        "norm.running_var": (16,), "norm.num_batches_tracked": (), "conv.weight": (32, 16, 1, 1),
        "_count": (1,), "_stage": (1,), "_mask": (32, 16, 1, 1),
    }
    assert torch.equal(state["_mask"], torch.ones(32, 16, 1, 1))
    assert state["_count"].tolist() == [0.0] and state["_stage"].tolist() == [0.0]
    assert isinstance(layer.conv, nn.Conv2d) and layer.conv.bias is None
    assert isinstance(layer.relu, nn.ReLU) and isinstance(layer.norm, nn.BatchNorm2d)

    layer.set_progress(1 / 3)
    fresh = LearnedGroupConv2d(16, 32, groups=4)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.stage == 2 and torch.equal(fresh.connectivity(), layer.connectivity())
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(fresh.eval()(x), layer.eval()(x))

    bad = layer.state_dict() | {"_stage": torch.tensor([5.0])}
    with pytest.raises(ValueError, match="_stage"):
        fresh.load_state_dict(bad)


@pytest.mark.parametrize("k,stride,dilation", [(1, 1, 1), (3, 2, 1), (3, 1, 2)])
def test_forward_is_a_conv_over_the_masked_weight(k, stride, dilation):
    torch.manual_seed(5)
    layer = LearnedGroupConv2d(8, 12, k, stride, padding=dilation * (k // 2), dilation=dilation,
                               groups=4, condense_factor=2).eval()
    layer.set_progress(1.0)
    x = torch.randn(2, 8, 7, 7)
    norm = layer.norm
    pre = F.relu(F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias))
    dropped = layer.mask == 0
    assert dropped.float().mean() == 0.5
    expected = F.conv2d(pre, layer.conv.weight.masked_fill(dropped, 0), None, stride,
                        dilation * (k // 2), dilation)
    torch.testing.assert_close(layer(x), expected)
    with torch.no_grad():  # the dropped weights are read by nothing
        layer.conv.weight[dropped] = 1e6
    torch.testing.assert_close(layer(x), expected)


def test_gradients_reach_only_the_kept_weights():
    layer = make(16, 8, 3)
    layer.set_progress(1 / 3)
    layer(torch.randn(4, 16, 5, 5)).square().sum().backward()
    grad = layer.conv.weight.grad
    assert grad[layer.mask == 0].abs().max() == 0
    assert (grad[layer.mask == 1] != 0).float().mean() > 0.99


def test_dropout_between_relu_and_conv():
    layer = make(8, 8, dropout=0.5)
    assert isinstance(layer.drop, nn.Dropout) and not hasattr(make(8, 8), "drop")
    x = torch.randn(2, 8, 4, 4)
    layer.eval()
    torch.testing.assert_close(layer(x), F.conv2d(layer.relu(layer.norm(x)), layer.conv.weight))
    layer.train()
    assert not torch.equal(layer(x), layer(x))  # a new dropout draw per forward


def test_connectivity_follows_the_mask():
    layer = make(12, 6, groups=3, condense_factor=3)
    conn = layer.connectivity()
    assert conn.dtype == torch.bool and conn.shape == (3, 12) and conn.all()
    layer.set_progress(0.5)
    assert layer.connectivity().sum(1).tolist() == [4, 4, 4]
    per_output = layer.mask[:, :, 0, 0].bool()  # (6, 12); output o is in group o mod 3
    for g in range(3):
        assert torch.equal(layer.connectivity()[g], per_output[g])
        assert torch.equal(per_output[g], per_output[g + 3])
    assert layer.channel_groups == 3 and layer.kind == "lgc" and not layer.dynamic


def test_extra_repr():
    layer = LearnedGroupConv2d(16, 8, 3, padding=1, groups=4, dropout=0.1, group_lasso=True)
    layer.set_progress(1 / 6)
    text = repr(layer)
    for part in ("16, 8, kernel_size=(3, 3)", "padding=(1, 1)", "groups=4", "condense_factor=4",
                 "stage=1/3", "dropout=0.1", "group_lasso=True"):
        assert part in text


# ---- cost -----------------------------------------------------------------------------------


def test_macs_through_count_macs(lgc_kind):
    layer = make(32, 16, 3, groups=4, condense_factor=4)
    dense_conv = 32 * 16 * 9 * 8 * 8
    relu = 32 * 8 * 8
    assert count_macs(nn.Sequential(layer), (1, 32, 8, 8)) == relu + dense_conv // 4
    assert count_macs(nn.Sequential(layer), (2, 32, 8, 8), "dense") == relu + dense_conv
    table = count_macs(nn.Sequential(layer), (1, 32, 8, 8), per_layer=True)
    assert table.loc[0, "lgc_relu"] == relu and table.loc[0, "lgc_conv"] == dense_conv // 4
    # the paper count does not follow the stage; the channels a group reads do
    info = layer.layer_info((8, 8))
    assert LearnedGroupConv2d.computed_channels_from_info(info) == 32
    layer.set_progress(1 / 3)
    info = check_layer_info(layer.layer_info((8, 8)))  # the recording's checks, the kind's own
    assert (info["condense_factor"], info["stage"]) == (4, 2)
    assert LearnedGroupConv2d.computed_channels_from_info(info) == 16
    assert layer.macs((8, 8)) == relu + dense_conv // 4
    with pytest.raises(ValueError, match="stage"):
        check_layer_info(info | {"stage": 4})
    with pytest.raises(ValueError, match="condense_factor"):
        check_layer_info(info | {"condense_factor": 5})


def test_registry_entry_builds_the_layer(lgc_kind):
    layer = make_conv("lgc", 16, 32, 1)
    assert isinstance(layer, LearnedGroupConv2d)
    assert (layer.groups, layer.condense_factor) == (4, 4)
    assert make_conv("lgc", 16, 32, 1, groups=2).condense_factor == 2
    model = resnet_cifar(8, width=16, conv="lgc", heads=4)  # k x k LGC: dgclab's extension
    set_progress(model, 0.5)
    layers = grouping_layers(model)
    assert len(layers) == 8 and all(m.stage == 3 for _, m in layers)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---- the group lasso ------------------------------------------------------------------------


def test_group_lasso_while_enabled_and_before_stage_g_minus_1():
    off, on = make(16, 8), make(16, 8, group_lasso=True)
    assert off.regularization() is None
    term = on.regularization()
    torch.testing.assert_close(term, lgc_group_lasso(on.conv.weight, on.mask, 4))
    term.backward()
    assert on.conv.weight.grad.abs().sum() > 0
    model = nn.Sequential(off, on, make(8, 8, seed=2, group_lasso=True))
    torch.testing.assert_close(group_lasso(model), term.detach() + model[2].regularization())
    torch.testing.assert_close(regularization_loss(model), group_lasso(model))
    on.set_progress(1 / 3)  # stage 2 < G - 1 = 3: still on
    assert on.regularization() is not None
    set_progress(model, 0.5)  # stage 3 = G - 1: off everywhere
    assert on.regularization() is None and group_lasso(model).item() == 0
    with pytest.raises(TypeError, match="model"):
        group_lasso([on])


# ---- the condensed layer --------------------------------------------------------------------


@pytest.mark.parametrize("c_in,c_out,k,groups,condense,progress", [
    (16, 8, 1, 4, 4, 1.0), (16, 8, 1, 4, 4, 1 / 3), (12, 6, 3, 3, 2, 1.0), (16, 8, 1, 2, 4, 0.5),
    (8, 8, 3, 1, 4, 0.5)])
def test_condensed_layer_equals_the_masked_one(c_in, c_out, k, groups, condense, progress):
    layer = make(c_in, c_out, k, groups=groups, condense_factor=condense, seed=6)
    layer.set_progress(progress)
    layer.eval()
    fast = CondensedConv2d.from_learned(layer)
    assert not fast.training
    kept = layer.connectivity().sum(1)[0].item()
    assert fast.conv.groups == groups and fast.conv.in_channels == groups * kept
    assert fast.index.tolist() == sum(reads(layer), [])  # per group, ascending
    x = torch.randn(3, c_in, 6, 6)
    torch.testing.assert_close(fast(x), layer(x), rtol=1e-5, atol=1e-5)
    # the condensed conv really holds 1 / C of the weights once every stage is done
    if progress >= 0.5:
        assert fast.conv.weight.numel() == layer.conv.weight.numel() // condense


def test_condensed_bn_duplicates_shared_channels():
    layer = make(8, 4, groups=2, condense_factor=4, seed=7)
    with torch.no_grad():  # both groups rank the channels alike: they keep the same ones
        layer.conv.weight.copy_(torch.arange(1.0, 9.0).expand(4, 8)[:, :, None, None])
    layer.set_progress(1.0)
    fast = CondensedConv2d.from_learned(layer.eval())
    assert fast.index.tolist() == [6, 7, 6, 7]
    torch.testing.assert_close(fast.norm.running_mean, layer.norm.running_mean[[6, 7, 6, 7]])
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(fast(x), layer(x), rtol=1e-5, atol=1e-5)


def test_condensed_refuses_uneven_groups():
    layer = make(8, 4, groups=2)
    with torch.no_grad():
        layer.mask[0, 3] = 0  # group 0 reads 7 channels, group 1 eight
        layer.mask[2, 3] = 0
    with pytest.raises(ValueError, match=r"\[7, 8\]"):
        CondensedConv2d.from_learned(layer)
    with pytest.raises(TypeError, match="layer"):
        CondensedConv2d.from_learned(nn.Conv2d(8, 4, 1))


# ---- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(in_channels=18, groups=4), ValueError, "groups=4, in_channels=18"),
    (dict(in_channels=12, groups=3, condense_factor=8), ValueError,
     "condense_factor=8, in_channels=12"),
    (dict(out_channels=10, groups=4), ValueError, "groups=4, out_channels=10"),
    (dict(groups=0), ValueError, "groups=0"),
    (dict(groups=2.0), TypeError, "groups=2.0"),
    (dict(condense_factor=0), ValueError, "condense_factor=0"),
    (dict(in_channels="16"), TypeError, "in_channels"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(stride=(1, 2, 3)), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(dropout=1.0), ValueError, "dropout=1.0"),
    (dict(group_lasso=1), TypeError, "group_lasso=1"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(in_channels=16, out_channels=8) | kwargs
    with pytest.raises(error, match=match):
        LearnedGroupConv2d(**args)
