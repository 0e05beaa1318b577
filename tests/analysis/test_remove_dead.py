"""Removing dead filters (SPEC §7): exact folding of ReLU(beta) when gamma = 0, measured change
otherwise, savings, and the structures it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from helpers import warmed

from dgclab.analysis import ConvWithBiasMap, count_macs, pruning_effect, remove_dead_filters
from dgclab.layers import DGCConv2d
from dgclab.models import basicnet, resnet_cifar
from dgclab.record import Recorder

TOL = 1e-4




def kill(bn: nn.BatchNorm2d, idx, beta: str, gamma: float = 0.0) -> None:
    """Set gamma of filters ``idx`` and give them beta > 0, <= 0 or alternating."""
    with torch.no_grad():
        for j, i in enumerate(idx):
            bn.weight[i] = gamma
            sign = {"positive": 1, "negative": -1, "mixed": 1 if j % 2 else -1}[beta]
            bn.bias[i] = sign * (0.3 + 0.1 * j) if sign > 0 else -0.2 * j  # includes beta = 0


def small_chain() -> nn.Sequential:
    """3x3 padded conv -> 1x1 consumer -> max pool -> 3x3 padded consumer -> global pool -> fc."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),  # 0-2
        nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),  # 3-6
        nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),  # 7-9
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4),  # 10-12
    )


@torch.no_grad()
def logits_change(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return float((a.eval()(x) - b.eval()(x)).abs().max())


# ---- exactness when gamma = 0 -------------------------------------------------------------


@pytest.mark.parametrize("beta", ["negative", "positive", "mixed"])
def test_gamma_zero_is_exact_for_every_consumer(beta):
    x = torch.randn(4, 3, 12, 12)
    model = warmed(small_chain(), x.shape)
    kill(model[1], [0, 3, 5], beta)  # consumer: 1x1 conv (plain bias)
    kill(model[4], [1, 2], beta)  # through a max pool into a zero-padded 3x3 conv (bias map)
    kill(model[8], [0, 4], beta)  # through the global pool into the linear layer
    pruned, report = remove_dead_filters(model, example_input=x)

    assert logits_change(model, pruned, x) < TOL
    assert report.max_logit_change < TOL
    assert report.layers["removed"].tolist() == [3, 2, 2]
    folds = report.layers["fold"].tolist()
    if beta == "negative":  # ReLU(beta) = 0: nothing to fold anywhere
        assert folds == ["none", "none", "none"]
        assert not any(isinstance(m, ConvWithBiasMap) for m in pruned.modules())
    else:
        assert folds == ["bias", "bias map", "linear bias"]
        assert isinstance(pruned[7], ConvWithBiasMap)
    assert pruned[0].out_channels == 5 and pruned[3].in_channels == 5
    assert pruned[12].in_features == 3
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    assert report.macs_before == count_macs(model, (1, 3, 12, 12))
    assert report.macs_after == count_macs(pruned, (1, 3, 12, 12))


def test_basicnet_exact_at_other_input_sizes_and_original_untouched():
    model = warmed(basicnet(), (8, 1, 28, 28))
    kill(model.features.bn1, range(0, 32, 3), "mixed")
    kill(model.features.bn4, range(0, 128, 5), "positive")
    kill(model.features.bn7, range(0, 256, 7), "mixed")
    before = copy.deepcopy(model.state_dict())
    pruned, report = remove_dead_filters(model, example_input=torch.randn(1, 1, 28, 28))
    assert report.removed == 11 + 26 + 37
    for size in (28, 32):  # the bias maps are computed per input size
        assert logits_change(model, pruned, torch.randn(3, 1, size, size)) < TOL
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(pruned) is type(model)
    assert report.filters_after == 928 - report.removed
    assert "removed 74 of 928 filters" in str(report)


def test_bias_map_matches_the_dense_conv_and_a_plain_bias_would_not():
    """Oracle: the original conv applied to the input with the constant channels put back."""
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 4, 3, padding=1, bias=False)
    x_live = torch.randn(2, 3, 7, 7)
    const = torch.tensor([0.7, 1.3])  # channels 3 and 4 are constant
    full = torch.cat([x_live, const.view(1, 2, 1, 1).expand(2, 2, 7, 7)], 1)
    expected = conv(full)
    kernel = (conv.weight[:, 3:] * const.view(1, 2, 1, 1)).sum(1, keepdim=True)
    sliced = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    sliced.weight.data.copy_(conv.weight[:, :3])
    wrapped = ConvWithBiasMap(sliced, kernel)
    assert torch.allclose(wrapped(x_live), expected, atol=1e-5)
    plain = sliced(x_live) + kernel.sum((1, 2, 3)).view(1, -1, 1, 1)
    assert torch.allclose(plain[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5)
    assert (plain - expected).abs().max() > 1e-2  # the borders differ


def test_flatten_of_a_spatial_map_and_replicate_padding_fold_into_plain_biases():
    x = torch.randn(3, 2, 6, 6)
    model = warmed(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1, padding_mode="replicate", bias=False), nn.BatchNorm2d(3),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 9, 5),
    ), x.shape)
    kill(model[1], [1, 2], "positive")
    kill(model[4], [0], "positive")
    pruned, report = remove_dead_filters(model, example_input=x)
    assert report.layers["fold"].tolist() == ["bias", "linear bias"]
    assert pruned[8].in_features == 2 * 9
    assert logits_change(model, pruned, x) < TOL


def test_all_dead_keeps_one_and_output_layer_keeps_its_filters():
    x = torch.randn(2, 1, 8, 8)
    model = warmed(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3), nn.ReLU(),
    ), x.shape)
    kill(model[1], range(4), "positive")
    kill(model[4], [0], "positive")
    pruned, report = remove_dead_filters(model, example_input=x)
    assert report.layers["kept"].tolist() == [1, 3]
    assert "model's output" in report.layers["fold"].iloc[1]
    assert any("every filter is dead" in n for n in report.notes)
    assert logits_change(model, pruned, x) < TOL


def test_second_pass_removes_nothing_and_keeps_training_mode():
    model = warmed(small_chain(), (4, 3, 12, 12))
    kill(model[4], [0, 1], "positive")
    pruned, _ = remove_dead_filters(model.train())
    assert pruned.training and pruned[7].training
    again, report = remove_dead_filters(pruned, example_input=torch.randn(2, 3, 12, 12))
    assert report.removed == 0 and report.max_logit_change == 0


# ---- |gamma| < threshold but not 0: measured, not assumed -----------------------------------


def test_small_nonzero_gamma_is_measured():
    x = torch.randn(16, 3, 12, 12)
    model = warmed(small_chain(), x.shape)
    kill(model[4], [0, 1, 2], "positive", gamma=5e-4)
    pruned, report = remove_dead_filters(model, 1e-3, example_input=x)
    assert report.removed == 3
    assert 0 < report.max_logit_change < 0.1  # approximate, and small
    y = torch.randint(0, 4, (16,))
    effect = pruning_effect(model, pruned, [(x[:8], y[:8]), (x[8:], y[8:])])
    assert effect["images"] == 16
    assert effect["max_logit_change"] == pytest.approx(report.max_logit_change, rel=1e-5)
    assert 0 <= effect["accuracy_pruned"] <= 1 and 0 <= effect["agreement"] <= 1
    with pytest.raises(TypeError, match="pruned must be a Module, got PruningReport"):
        pruning_effect(model, report, [(x, y)])
    with pytest.raises(ValueError, match="max_batches must be >= 1, got max_batches=0"):
        pruning_effect(model, pruned, [(x, y)], max_batches=0)


def test_smallest_positive_threshold_removes_only_exact_zeros():
    x = torch.randn(8, 3, 12, 12)
    model = warmed(small_chain(), x.shape)
    kill(model[1], [0, 1], "mixed", gamma=0.0)
    kill(model[4], [0], "positive", gamma=5e-4)
    pruned, report = remove_dead_filters(model, 5e-324, example_input=x)
    assert report.layers["removed"].tolist() == [2, 0, 0]
    assert report.max_logit_change < TOL
    from dgclab.analysis import filter_sparsity
    table = filter_sparsity(model, [x], gamma_threshold=5e-324)
    assert table["dead_gamma"].tolist() == [2, 0, 0]


# ---- what it refuses ------------------------------------------------------------------------


def test_residual_and_dgc_networks_are_refused_by_name():
    with pytest.raises(ValueError, match="ResNetCifar"):
        remove_dead_filters(resnet_cifar(8, conv="dgc", in_channels=1))
    chain = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          DGCConv2d(8, 8, 3, heads=2))
    with pytest.raises(ValueError, match=r"'3' \(DGCConv2d\)"):
        remove_dead_filters(chain)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(ValueError, match="groups=2"):
        remove_dead_filters(grouped)
    with pytest.raises(ValueError, match="gamma_threshold"):
        remove_dead_filters(small_chain(), gamma_threshold=-1)


def test_pruning_effect_inside_a_recording_is_not_recorded():
    # pruning_effect runs both models on its own data: not samples of the recording
    torch.manual_seed(0)
    model = resnet_cifar(8, conv="dgc", width=8).eval()
    other = copy.deepcopy(model)
    loader = [(torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2]))]
    with torch.no_grad(), Recorder(model) as rec:
        rec.tag(labels=torch.tensor([3, 7]))
        effect = pruning_effect(model, other, loader)
        model(torch.randn(2, 3, 8, 8))
    assert effect["images"] == 3
    assert len(rec) == rec.samples_seen == 2 and rec.labels.tolist() == [3, 7]
