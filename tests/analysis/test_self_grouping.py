"""SG-CNN self-grouping (SPEC §4): the block-diagonal check, masks that survive training and only
shrink, the grouped execution against the masked model, its MACs, and argument checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from dgclab.analysis import count_macs
from dgclab.analysis.self_grouping import (
    TABLE_COLUMNS,
    ChannelMask,
    SelfGroupedConv2d,
    self_group,
    to_grouped,
)
from dgclab.layers import cpu_kernel, tuning
from dgclab.models import resnet_cifar

from helpers import needs_compiler

TOL = 1e-5


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # 0-2
        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),  # 3-5 (bias)
        nn.Conv2d(24, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 1, bias=False), nn.ReLU(),  # 9-10
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def warmed(model: nn.Module, shape) -> nn.Module:
    """Non-trivial BN running statistics, then eval mode."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape))
    return model.eval()


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.parametrizations.weight[0].mask.clone() for n, m in model.named_modules()
            if parametrize.is_parametrized(m, "weight")}


# ---- SPEC §4 check: a grouped conv stored dense gives back its blocks ------------------------


@pytest.mark.parametrize(
    "g, init", [(2, "random"), (4, "random"), (8, "k-means++"), (16, "k-means++")]
)  # the paper's random init misses the blocks for g >= 8 (self_group's docstring)
def test_block_diagonal_weight_gives_its_groups(g, init):
    torch.manual_seed(g)
    grouped = nn.Conv2d(32, 48, 3, padding=1, groups=g, bias=False)
    dense = nn.Conv2d(32, 48, 3, padding=1, bias=False)
    block = torch.block_diag(*[torch.ones(48 // g, 32 // g)] * g).bool()  # (O, C)
    with torch.no_grad():
        dense.weight.zero_()
        for b in range(g):  # block b: filters b*O/g.., channels b*C/g..
            o, c = slice(b * 48 // g, (b + 1) * 48 // g), slice(b * 32 // g, (b + 1) * 32 // g)
            dense.weight[o, c] = grouped.weight[o]
    model = nn.Sequential(nn.Conv2d(3, 32, 1), dense)
    x = torch.randn(2, 32, 6, 6)
    expected = grouped(x)
    table = self_group(model, groups=g, rate=1 - 1 / g, init=init)
    conv = model[1]
    assert torch.equal(conv.parametrizations.weight[0].mask.bool(), block)
    cluster = conv.parametrizations.weight[0].cluster
    for b in range(g):  # every block is one cluster
        assert len(set(cluster[b * 48 // g:(b + 1) * 48 // g].tolist())) == 1
    assert len(set(cluster.tolist())) == g
    assert list(table["layer"]) == ["1"] * g
    assert (table["filters"] == 48 // g).all() and (table["channels"] == 32 // g).all()
    assert (table["overlap"] == 0).all() and np.allclose(table["kept"], 1 / g)
    assert not table["forced"].any()
    assert torch.allclose(conv(x), expected, atol=TOL)  # the block weight was kept intact
    fast = to_grouped(model)[1]
    assert fast.channel_groups == g
    assert torch.allclose(fast(x), expected, atol=TOL)
    assert sorted(map(tuple, fast.connectivity().int().tolist())) == \
        sorted(map(tuple, block[:: 48 // g].int().tolist()))


# ---- the masks --------------------------------------------------------------------------------


def test_clusters_share_one_subset_and_default_skips_the_first_conv():
    model = small_cnn()
    table = self_group(model, groups=4, rate=0.5)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert list(table["layer"].unique()) == ["3", "6", "9"]  # not "0", the stem
    assert not parametrize.is_parametrized(model[0])
    for name, mask in masks(model).items():
        cluster = model.get_submodule(name).parametrizations.weight[0].cluster
        for k in cluster.unique():
            rows = mask[cluster == k]
            assert (rows == rows[0]).all()  # one subset per cluster
        rows = table[table["layer"] == name]
        assert rows["filters"].sum() == mask.shape[0]
        assert np.isclose(rows["kept"].iloc[0], float(mask.mean()))
        kept = (rows["filters"] * rows["channels"]).sum() / mask.numel()
        assert np.isclose(kept, rows["kept"].iloc[0])
        assert 0.3 < rows["kept"].iloc[0] < 0.7  # about 1 - rate
        assert ((0 <= rows["overlap"]) & (rows["overlap"] <= 1)).all()


def test_masks_survive_sgd_and_gradients_reach_the_kept_weights():
    model = small_cnn()
    self_group(model, groups=4, rate=0.5)
    before = masks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    torch.manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        original = model[3].parametrizations.weight.original
        kept = before["3"].bool()[:, :, None, None].expand_as(original)
        assert original.grad[~kept].abs().max() == 0
        assert original.grad[kept].abs().max() > 0
        opt.step()
    assert all(torch.equal(before[n], m) for n, m in masks(model).items())
    for name, mask in before.items():
        weight = model.get_submodule(name).weight  # the effective, masked weight
        assert (weight[~mask.bool()] == 0).all()
        assert (weight[mask.bool()] != 0).any()


def test_regrouping_at_a_higher_rate_only_removes_channels():
    model = small_cnn()
    first = self_group(model, groups=4, rate=0.5)
    before = masks(model)
    second = self_group(model, groups=4, rate=0.75)
    after = masks(model)
    for name in before:
        assert ((after[name] > 0) <= (before[name] > 0)).all()  # a subset of the old mask
        assert len(model.get_submodule(name).parametrizations.weight) == 1  # not stacked
    assert second.groupby("layer")["kept"].first().lt(first.groupby("layer")["kept"].first()).all()


def test_layers_argument_and_small_layers():
    model = small_cnn()
    table = self_group(model, groups=4, rate=0.5, layers=["0", "9"])
    assert list(table["layer"].unique()) == ["0", "9"]
    assert (table[table["layer"] == "0"]["cluster"].max()) < 4
    # a layer with fewer filters than groups: refused, naming it, before anything is grouped
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 3, 3))
    with pytest.raises(ValueError, match="groups=16 is more clusters than layer '1' has filters "
                                         r"\(3\)"):
        self_group(tiny, groups=16, rate=0.5)
    assert not any(parametrize.is_parametrized(m) for m in tiny.modules())
    table = self_group(tiny, groups=3, rate=0.5)  # one filter a cluster
    assert len(table) == 3 and (table["channels"] >= 1).all()


def test_every_cluster_keeps_a_channel():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[:4, 0] = 1.0  # filters 4.. read nothing: their cluster is all zeros
    table = self_group(model, groups=2, rate=0.9)
    assert (table["channels"] >= 1).all() and table["forced"].any()


# ---- the grouped execution --------------------------------------------------------------------


def check_grouped(model: nn.Module, shape) -> None:
    state = copy.deepcopy(model.state_dict())
    fast = to_grouped(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # unchanged
    assert any(isinstance(m, ChannelMask) for m in model.modules())
    assert not any(parametrize.is_parametrized(m) for m in fast.modules())
    assert any(isinstance(m, SelfGroupedConv2d) for m in fast.modules())
    x = torch.randn(shape)
    grouped = [m for m in fast.modules() if isinstance(m, SelfGroupedConv2d)]
    with torch.no_grad():
        reference = model.eval()(x)
        for execution, kernel in (("loop", True), ("loop", False), ("padded", True),
                                  ("dense", True), ("auto", True)):
            for m in grouped:
                m.execution = execution
            with cpu_kernel.use(kernel):  # the loop in one C++ call, or PyTorch's
                assert torch.allclose(fast.eval()(x), reference, atol=TOL), (execution, kernel)


def test_to_grouped_equals_the_masked_small_cnn():
    model = warmed(small_cnn(), (4, 3, 8, 8))
    self_group(model, groups=4, rate=0.5)
    check_grouped(model, (3, 3, 8, 8))
    self_group(model, groups=3, rate=0.8)  # regrouped, other cluster count
    check_grouped(model, (3, 3, 8, 8))


def test_to_grouped_equals_the_masked_resnet():
    torch.manual_seed(0)
    model = warmed(resnet_cifar(8, width=8, conv="dense", in_channels=1), (4, 1, 16, 16))
    self_group(model, groups=4, rate=0.5)
    check_grouped(model, (2, 1, 16, 16))


def test_grouped_model_trains():
    model = small_cnn()
    self_group(model, groups=4, rate=0.5)
    fast = to_grouped(model).train()
    fast(torch.randn(4, 3, 8, 8)).sum().backward()  # the loop, the default
    assert all(p.grad is not None for p in fast.parameters())
    grouped = [m for m in fast.modules() if isinstance(m, SelfGroupedConv2d)]
    assert all(m.padded_fraction >= 1 for m in grouped) and "padded:" in repr(grouped[0])
    for execution in ("padded", "dense"):
        grouped[0].execution = execution
        with pytest.raises(ValueError, match=f"execution='{execution}' computes without autograd"):
            fast(torch.randn(4, 3, 8, 8))
    with pytest.raises(ValueError, match="execution"):
        grouped[0].execution = "fast"
    with pytest.raises(ValueError, match="execution"):
        to_grouped(model, execution="fast")
    assert all(m.execution == "auto" for m in to_grouped(model).modules()
               if isinstance(m, SelfGroupedConv2d))
    grouped[0].execution = "auto"
    with tuning.use(True):  # training: the loop, never timed
        fast(torch.randn(4, 3, 8, 8)).sum().backward()
    assert not any(key[0] == "SelfGroupedConv2d" for key in tuning.choices())


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_auto_with_tuning_picks_loop_or_dense_and_gives_the_masked_result(padding_mode):
    model, layer = one_grouped_conv(12, 10, 3, 1, 1, 1, True, padding_mode=padding_mode)
    x = torch.randn(3, 12, 9, 9)
    tuning.clear()
    try:
        with torch.no_grad():
            reference = model(x)
            with tuning.use(True):
                out = layer(x)
                again = layer(x)  # the remembered choice
        (key, (choice, medians)), = tuning.choices().items()
        assert key[0] == "SelfGroupedConv2d" and choice in ("loop", "dense")
        assert set(medians) == {"loop", "dense"}
    finally:
        tuning.clear()
    torch.testing.assert_close(out, reference, atol=TOL, rtol=1e-5)
    torch.testing.assert_close(again, out)


def test_the_dense_weight_holds_each_cluster_where_the_mask_keeps_it():
    model, layer = one_grouped_conv(12, 10, 3, 1, 1, 1, True)
    with torch.no_grad():
        weight, bias = layer._laid_out("dense")
        torch.testing.assert_close(weight, model[0].weight)  # the masked weight, parametrized
        torch.testing.assert_close(bias, model[0].bias)


def test_the_padded_weight_follows_training():
    model = small_cnn()
    self_group(model, groups=4, rate=0.5)
    fast = to_grouped(model).eval()
    x = torch.randn(2, 3, 8, 8)
    grouped = [m for m in fast.modules() if isinstance(m, SelfGroupedConv2d)]
    with torch.no_grad():
        for m in grouped:
            m.execution = "padded"
        before = fast(x)  # its weight laid out and kept
        for m in grouped:
            m.convs[0].weight.mul_(0)  # as an optimizer step would change it
            m.execution = "loop"
        loop = fast(x)
        for m in fast.modules():
            if isinstance(m, SelfGroupedConv2d):
                m.execution = "padded"
        assert torch.allclose(fast(x), loop, atol=TOL) and not torch.allclose(loop, before)


def one_grouped_conv(c_in, c_out, k, stride, padding, dilation, bias, padding_mode="zeros",
                     groups=5, rate=0.6):
    """(masked model, its SelfGroupedConv2d): one conv, clusters of uneven sizes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, dilation, bias=bias,
                                    padding_mode=padding_mode))
    self_group(model, groups=groups, rate=rate, layers=["0"])
    return model.eval(), to_grouped(model)[0].eval()


@needs_compiler
@pytest.mark.parametrize("k,stride,padding,dilation,bias", [
    (3, 1, 1, 1, False), (3, 1, 1, 1, True), (3, 2, 1, 1, False), (1, 1, 0, 1, True),
    (3, 1, 2, 2, False), (1, 2, 0, 1, False), (3, 1, 0, 1, True)])
@pytest.mark.parametrize("size", [(9, 9), (5, 37)])  # im2col + GEMM; rows for direct_rows
def test_kernel_loop_equals_the_masked_conv(k, stride, padding, dilation, bias, size):
    assert cpu_kernel.load(), f"the CPU kernel did not build: {cpu_kernel.build_error()!r}"
    masked, layer = one_grouped_conv(16, 24, k, stride, padding, dilation, bias)
    assert len({c.out_channels for c in layer.convs}) > 1  # uneven clusters
    x = torch.randn(3, 16, *size)
    with torch.no_grad():
        reference = masked(x)
        with cpu_kernel.use(False):
            pytorch = layer(x)
        with torch.autograd.profiler.profile() as prof:
            kernel = layer(x)
        empty = layer(x[:0])  # an empty batch
    assert any("cluster_conv2d" in e.name for e in prof.function_events)
    assert torch.allclose(kernel, reference, atol=TOL)
    assert torch.allclose(pytorch, reference, atol=TOL)
    assert empty.shape == (0, *reference.shape[1:])


@needs_compiler
def test_the_kernel_runs_only_where_it_applies():
    assert cpu_kernel.load()
    masked, layer = one_grouped_conv(8, 12, 3, 1, 1, 1, False)
    x = torch.randn(2, 8, 6, 6)
    with torch.autograd.profiler.profile() as prof, torch.no_grad():
        layer(x)
    assert any("cluster_conv2d" in e.name for e in prof.function_events)
    with torch.autograd.profiler.profile() as prof:
        y = layer(x)  # autograd: PyTorch's loop, which trains
    assert not any("cluster_conv2d" in e.name for e in prof.function_events)
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    with torch.no_grad():  # float64, and a padding the kernel does not do: PyTorch's loop
        assert torch.allclose(layer.double()(x.double()), masked.double()(x.double()))
    reflect, reflect_layer = one_grouped_conv(8, 12, 3, 1, 1, 1, False, padding_mode="reflect")
    with torch.autograd.profiler.profile() as prof, torch.no_grad():
        assert torch.allclose(reflect_layer(x), reflect(x), atol=TOL)
    assert not any("cluster_conv2d" in e.name for e in prof.function_events)


@needs_compiler
def test_cluster_conv2d_refuses_bad_lists():
    assert cpu_kernel.load()
    _, layer = one_grouped_conv(8, 12, 3, 1, 1, 1, False)
    x = torch.randn(1, 8, 6, 6)
    weights = [c.weight.detach() for c in layer.convs]
    op = torch.ops.dgclab.cluster_conv2d
    with pytest.raises(RuntimeError, match="out of range"):
        op(x, layer.gather + 8, layer.filters, weights, None, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="permutation"):
        op(x, layer.gather, layer.filters * 0, weights, None, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="must list"):
        op(x, layer.gather[1:], layer.filters, weights, None, [1, 1], [1, 1], [1, 1])


@needs_compiler
@pytest.mark.parametrize("batch", [1, 3])  # one image: per cluster; more: planes shared
@pytest.mark.parametrize("side,ksize,dilation", [(6, 3, 1), (9, 3, 2), (19, 3, 1), (23, 3, 2),
                                                 (5, 1, 1)])
def test_cluster_conv2d_equals_conv2d_for_every_filter_block(batch, side, ksize, dilation):
    """One cluster per size 1..17: the filter-lane kernel (8 and 16 filters) and every filter
    block of the pixel-lane ones (3, 2, 1), on maps read as one long row (side <= 16) and row
    by row (wider, with an odd number of rows left over), and the 1x1 GEMM."""
    assert cpu_kernel.load()
    torch.manual_seed(0)
    sizes = list(range(1, 18))
    c, out_c, pad = 10, sum(sizes), ksize // 2
    x = torch.randn(batch, c, side, side)
    keep = [torch.randperm(c)[: 1 + f % c].sort().values for f in sizes]
    weights = [torch.randn(f, len(k), ksize, ksize) for f, k in zip(sizes, keep)]
    bias = torch.randn(out_c)
    filters = torch.randperm(out_c)
    y = torch.ops.dgclab.cluster_conv2d(x, torch.cat(keep), filters, weights, bias, [1, 1],
                                        [pad, pad], [dilation, dilation])
    expected = torch.empty_like(y)
    start = 0
    for k, w in zip(keep, weights):
        rows = filters[start:start + len(w)]
        expected[:, rows] = F.conv2d(x[:, k], w, bias[rows], padding=pad, dilation=dilation)
        start += len(w)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)


def test_state_dict_is_unchanged_by_the_kernel_buffers():
    _, layer = one_grouped_conv(8, 12, 3, 1, 1, 1, False)
    assert "filters" not in layer.state_dict()  # saved files from before the kernel load
    assert torch.equal(layer.filters[layer.order], torch.arange(12))


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_count_macs_falls_with_the_kept_fraction(rate):
    torch.manual_seed(0)
    model = resnet_cifar(8, width=8, conv="dense", in_channels=1)
    size = (1, 1, 16, 16)
    dense = count_macs(model, size)
    table = self_group(model, groups=4, rate=rate)
    per_layer = count_macs(model, size, per_layer=True).set_index("layer")["macs"]
    assert per_layer.sum() == dense  # the masked conv is a dense conv
    kept = table.groupby("layer")["kept"].first()
    saved = sum(per_layer[name] * (1 - kept[name]) for name in kept.index)
    grouped = count_macs(to_grouped(model), size)
    assert grouped < dense
    assert grouped == pytest.approx(dense - saved, abs=1)


def test_to_grouped_without_grouping_raises():
    with pytest.raises(ValueError, match="self_group"):
        to_grouped(small_cnn())


# ---- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"groups": 0}, ValueError, "groups=0"),
        ({"groups": 2.0}, TypeError, "groups=2.0"),
        ({"rate": 0.0}, ValueError, "rate=0.0"),
        ({"rate": 1}, ValueError, "rate=1"),
        ({"rate": -0.5}, ValueError, "rate=-0.5"),
        ({"rate": "0.5"}, TypeError, "rate='0.5'"),
        ({"layers": ["nope"]}, ValueError, "'nope'"),
        ({"layers": ["1"]}, ValueError, "'1'"),  # a BN, not a conv
        ({"layers": "3"}, TypeError, "layers"),
        ({"seed": -1}, ValueError, "seed=-1"),
        ({"init": "kmeans"}, ValueError, "init='kmeans'"),
    ],
)
def test_bad_arguments(kwargs, error, text):
    model = small_cnn()
    with pytest.raises(error, match=text.replace(".", r"\.").replace("-", r"\-")):
        self_group(model, **kwargs)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_a_model_without_convs_is_refused():
    with pytest.raises(ValueError, match="model has no nn.Conv2d to group .a Sequential of "
                                         "Linear, ReLU, Sequential."):
        self_group(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))


def test_not_a_module():
    with pytest.raises(TypeError, match="model must be a Module, got list"):
        self_group([nn.Conv2d(3, 3, 1)])
    with pytest.raises(TypeError, match="model must be a Module, got str"):
        to_grouped("model")


def test_convs_inside_protocol_layers_and_grouped_convs_are_never_grouped():
    from dgclab.layers import set_progress
    from dgclab.models import resnet_cifar

    dgc = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    set_progress(dgc, 1.0)
    table = self_group(dgc, groups=2, rate=0.5)
    assert not any("headconv" in name for name in table["layer"])  # only the stem is plain
    assert table.empty
    model = resnet_cifar(8, width=8, conv="dense", in_channels=1)
    self_group(model, groups=2, rate=0.5)
    grouped = to_grouped(model)
    assert "layer1.0.conv1.convs.0" in dict(grouped.named_modules())
    assert self_group(grouped, groups=2, rate=0.5).empty  # nothing plain left but the stem
    with pytest.raises(ValueError, match="names no module"):
        self_group(grouped, groups=2, rate=0.5, layers=["layer1.0.conv1.convs.0"])
