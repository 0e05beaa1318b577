"""Channel-similarity pruning (SPEC §6): the distance against a hand computation, exact
duplicates at distance 0 and merged without changing the logits, ratio counts and MACs, and
the arguments and structures it refuses."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import warmed as warm_bn

from dgclab.analysis import count_macs
from dgclab.analysis.channel_similarity import (
    block_widths,
    channel_distance,
    channel_similarity,
    merge_similar,
    resize_blocks_,
)
from dgclab.models import basicnet, resnet_cifar

WIDTHS = (8, 8, 16, 16, 32, 32, 32)
SHAPE = (8, 1, 28, 28)


def warmed(model: nn.Module, shape=SHAPE, seed: int = 0) -> nn.Module:
    """``helpers.warmed`` at this file's input shape."""
    return warm_bn(model, shape, seed)


def duplicate(conv: nn.Conv2d, bn: nn.BatchNorm2d, src: int, dst: int) -> None:
    """Make filter ``dst`` an exact copy of filter ``src``, BN parameters and statistics too."""
    with torch.no_grad():
        conv.weight[dst] = conv.weight[src]
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[dst] = t[src]


def loader(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(SHAPE, generator=g), torch.randint(0, 10, (SHAPE[0],), generator=g))
            for _ in range(n)]


def distance_of(frame, layer, i, j) -> float:
    row = frame[(frame.layer == layer) & (frame.i == i) & (frame.j == j)]
    assert len(row) == 1
    return float(row.distance.iloc[0])


# --------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------


def toy(weights, gamma, beta) -> nn.Sequential:
    """1x1 conv from one input channel to three, BN (running mean 0, var 1), ReLU."""
    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(weights, dtype=torch.float32).view(3, 1, 1, 1))
        model[1].weight.copy_(torch.tensor(gamma))
        model[1].bias.copy_(torch.tensor(beta))
    return model


def test_distance_by_hand_on_three_channels():
    # z_1 = 2 z_0 and z_2 = -z_0 up to the BN's eps: |corr| = 1 everywhere. With
    # gamma = (1, 2, -0.5) every y is a positive multiple of z_0 plus beta, so rho = +1 and
    # d_ij^2 = (beta_i - beta_j)^2 + (|gamma_i| - |gamma_j|)^2.
    model = toy([1.0, 2.0, -1.0], [1.0, 2.0, -0.5], [0.0, 0.5, -0.2])
    frame = channel_similarity(model, [torch.randn(4, 1, 5, 5)])
    assert list(frame.columns) == ["layer", "i", "j", "distance"]
    assert frame[["i", "j"]].values.tolist() == [[0, 1], [0, 2], [1, 2]]
    expected = {
        (0, 1): 0.5**2 + (1 - 2) ** 2,  # 1.25
        (0, 2): 0.2**2 + (1 - 0.5) ** 2,  # 0.29
        (1, 2): 0.7**2 + (2 - 0.5) ** 2,  # 2.74
    }
    for (i, j), d2 in expected.items():
        assert distance_of(frame, "1", i, j) == pytest.approx(math.sqrt(d2), abs=1e-6)


def test_distance_matches_numpy_on_correlated_channels():
    # Two input channels, three outputs: correlations strictly between -1 and 1.
    model = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU()).eval()
    gamma, beta = np.array([0.8, -1.3, 0.4]), np.array([0.1, -0.4, 0.3])
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 1.0], [-1.0, 2.0]])[..., None, None])
        model[1].weight.copy_(torch.tensor(gamma))
        model[1].bias.copy_(torch.tensor(beta))
        model[1].running_mean.copy_(torch.tensor([0.2, -0.1, 0.3]))
        model[1].running_var.copy_(torch.tensor([1.5, 0.7, 2.0]))
    x = torch.randn(6, 2, 4, 4)
    frame = channel_similarity(model, [x[:3], x[3:]])  # two batches: sums must combine
    # Oracle: numpy's correlation of the conv outputs (the normalisation does not change it).
    h = model[0](x).detach().double().transpose(0, 1).reshape(3, -1).numpy()
    corr = np.corrcoef(h)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        rho = np.sign(gamma[i] * gamma[j]) * corr[i, j]
        d2 = (beta[i] - beta[j]) ** 2 + gamma[i] ** 2 + gamma[j] ** 2 - 2 * rho * abs(
            gamma[i] * gamma[j])
        assert distance_of(frame, "1", i, j) == pytest.approx(math.sqrt(d2), abs=1e-6)


def test_channel_distance_core():
    d = channel_distance(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.eye(2))
    assert torch.allclose(d, torch.tensor([[0.0, math.sqrt(2)], [math.sqrt(2), 0.0]],
                                          dtype=torch.float64))
    with pytest.raises(ValueError, match="corr"):
        channel_distance(torch.ones(2), torch.ones(2), torch.eye(3))
    with pytest.raises(TypeError, match="beta must be a Tensor, got list"):
        channel_distance(torch.ones(2), [0.0, 0.0], torch.eye(2))


def test_frame_covers_every_pair_and_leaves_the_model_as_it_was():
    model = warmed(basicnet(1, 10, widths=WIDTHS)).train()
    state = copy.deepcopy(model.state_dict())
    frame = channel_similarity(model, iter(loader()), max_batches=2)  # an iterator works
    assert list(frame.layer.unique()) == [f"features.bn{k}" for k in range(1, 8)]
    assert len(frame) == sum(c * (c - 1) // 2 for c in WIDTHS)
    assert (frame.i < frame.j).all() and (frame.distance >= 0).all()
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():  # eval mode: no running statistic moved
        assert torch.equal(v, state[k]), k


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def test_exact_duplicates_have_distance_zero_and_merge_without_changing_the_logits():
    model = warmed(basicnet(1, 10, widths=WIDTHS))
    f = model.features
    duplicate(f.conv2, f.bn2, 1, 5)  # consumer: conv3
    duplicate(f.conv7, f.bn7, 0, 30)  # consumer: the Linear after the global pool
    duplicate(f.conv7, f.bn7, 0, 12)  # a cluster of three
    data = loader()
    frame = channel_similarity(model, data)
    assert distance_of(frame, "features.bn2", 1, 5) < 1e-6
    assert distance_of(frame, "features.bn7", 0, 30) < 1e-6
    assert distance_of(frame, "features.bn7", 12, 30) < 1e-6
    assert (frame.distance > 1e-3).sum() == len(frame) - 4  # 1 pair in bn2, 3 in bn7

    merged = merge_similar(model, data, threshold=1e-6)
    g = merged.features
    assert (g.conv2.out_channels, g.bn2.num_features, g.conv3.in_channels) == (7, 7, 7)
    assert (g.conv7.out_channels, g.bn7.num_features, merged.fc.in_features) == (30, 30, 30)
    assert g.conv4.out_channels == 16  # the other layers keep every channel
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(merged(x), model(x), atol=1e-5)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_ratio_removes_the_expected_channels_and_macs_fall(ratio):
    model = warmed(basicnet(1, 10, widths=WIDTHS))
    merged = merge_similar(model, loader(), ratio=ratio)
    bns = [m for m in merged.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [max(1, round((1 - ratio) * c)) for c in WIDTHS]
    assert count_macs(merged, (1, 1, 28, 28)) < count_macs(model, (1, 1, 28, 28))
    assert type(merged) is type(model) and not merged.training


def test_original_is_unchanged_and_merged_model_trains():
    model = warmed(basicnet(1, 10, widths=WIDTHS)).train()
    state = copy.deepcopy(model.state_dict())
    merged = merge_similar(model, loader(), ratio=0.5)
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == list(
        WIDTHS)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert merged.training  # the original's mode

    x, y = loader(1)[0]
    before = [p.detach().clone() for p in merged.parameters()]
    opt = torch.optim.SGD(merged.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(merged(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, b) for p, b in zip(merged.parameters(), before))
    assert all(torch.isfinite(p).all() for p in merged.parameters())


def test_hand_made_chain_with_a_flattened_map():
    # A Linear that reads H*W columns per channel (no global pool): columns move per channel.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    )
    model = warmed(model, (5, 2, 8, 8))
    duplicate(model[0], model[1], 2, 4)
    with torch.no_grad():
        model[0].bias[4] = model[0].bias[2]
        model[4].weight[3] = model[4].weight[0]
        model[4].bias[3] = model[4].bias[0]
        for t in (model[5].weight, model[5].bias, model[5].running_mean, model[5].running_var):
            t[3] = t[0]
    data = [torch.randn(5, 2, 8, 8)]
    merged = merge_similar(model, data, threshold=1e-6)
    assert (merged[1].num_features, merged[5].num_features, merged[8].in_features) == (5, 3, 12)
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        assert torch.allclose(merged(x), model(x), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"threshold": 0.1, "ratio": 0.5}, ValueError, "threshold=0.1, ratio=0.5"),
        ({}, ValueError, "threshold=None, ratio=None"),
        ({"ratio": 0}, ValueError, "ratio=0"),
        ({"ratio": 1.0}, ValueError, "ratio=1.0"),
        ({"ratio": 1.5}, ValueError, "ratio=1.5"),
        ({"threshold": -1}, ValueError, "threshold=-1"),
        ({"threshold": float("nan")}, ValueError, "threshold=nan"),
        ({"ratio": "half"}, TypeError, "ratio='half'"),
        ({"ratio": 0.5, "max_batches": 0}, ValueError, "max_batches=0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model = basicnet(1, 10, widths=WIDTHS)
    with pytest.raises(error, match=match):
        merge_similar(model, loader(1), **kwargs)


def test_refuses_non_modules_residual_networks_and_unknown_modules():
    with pytest.raises(TypeError, match="model must be a Module, got str"):
        merge_similar("basicnet", loader(1), ratio=0.5)
    with pytest.raises(TypeError, match="model must be a Module, got str"):
        channel_similarity("basicnet", loader(1))
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1 is DGCConv2d"):
        merge_similar(resnet_cifar(8, width=8, in_channels=1, conv="dgc"), loader(1), ratio=0.5)
    odd = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.GELU())
    with pytest.raises(ValueError, match="'3'.*GELU"):
        channel_similarity(odd, loader(1))
    with pytest.raises(ValueError, match="no image"):
        channel_similarity(basicnet(1, 10, widths=WIDTHS), [])


# --------------------------------------------------------------------------------------------
# Residual networks: only the channels no residual add ties
# --------------------------------------------------------------------------------------------

TIED = ("conv1", "bn1", "layer1.0.bn2", "layer2.0.bn2", "layer2.0.downsample",
        "layer3.0.bn2", "layer3.0.downsample", "fc")


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return warmed(resnet_cifar(8, width=8, in_channels=1))


def test_resnet_every_bn_is_measured(one_thread):
    model = resnet()
    frame = channel_similarity(model, loader(1))
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert list(frame.layer.unique()) == bns  # the stem, every bn1, bn2 and shortcut BN
    sizes = {n: m.num_features for n, m in model.named_modules() if n in bns}
    assert len(frame) == sum(c * (c - 1) // 2 for c in sizes.values())


def test_resnet_duplicates_in_a_block_merge_exactly_and_tied_layers_stay(one_thread):
    model = resnet()
    duplicate(model.layer2[0].conv1, model.layer2[0].bn1, 3, 11)
    duplicate(model.layer3[0].conv1, model.layer3[0].bn1, 0, 7)
    duplicate(model.layer3[0].conv1, model.layer3[0].bn1, 0, 20)  # a cluster of three
    # a duplicate in a tied layer (a block's last BN) is measured but never merged
    duplicate(model.layer1[0].conv2, model.layer1[0].bn2, 1, 2)
    data = loader()
    frame = channel_similarity(model, data)
    assert distance_of(frame, "layer2.0.bn1", 3, 11) < 1e-6
    assert distance_of(frame, "layer3.0.bn1", 7, 20) < 1e-6
    assert distance_of(frame, "layer1.0.bn2", 1, 2) < 1e-6

    merged = merge_similar(model, data, threshold=1e-6)
    assert block_widths(merged) == {"layer1.0": 8, "layer2.0": 15, "layer3.0": 30}
    assert merged.layer2[0].conv2.in_channels == 15 and merged.layer3[0].conv2.in_channels == 30
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=0)
    before, after = model.state_dict(), merged.state_dict()
    for key in before:
        if key.startswith(TIED):  # the stem, every bn2, every shortcut, the classifier
            assert torch.equal(before[key], after[key]), key
    assert count_macs(merged, (1, 1, 28, 28)) < count_macs(model, (1, 1, 28, 28))


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_resnet_ratio_shrinks_the_blocks_inner_widths_only(ratio, one_thread):
    model = resnet()
    merged = merge_similar(model, loader(), ratio=ratio)
    assert block_widths(merged) == {n: max(1, round((1 - ratio) * c))
                                    for n, c in block_widths(model).items()}
    for name in ("layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2", "layer2.0.downsample.1"):
        assert (merged.get_submodule(name).num_features
                == model.get_submodule(name).num_features)
    assert merged.fc.in_features == model.fc.in_features
    assert count_macs(merged, (1, 1, 28, 28)) < count_macs(model, (1, 1, 28, 28))


def test_merged_resnet_rebuilds_from_its_block_widths(tmp_path, one_thread):
    model = resnet()
    merged = merge_similar(model, loader(), ratio=0.5)
    path = tmp_path / "merged.pt"
    torch.save({"widths": block_widths(merged), "model": merged.state_dict()}, path)
    payload = torch.load(path, weights_only=True)
    rebuilt = resize_blocks_(resnet_cifar(8, width=8, in_channels=1), payload["widths"])
    rebuilt.load_state_dict(payload["model"])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), merged.eval()(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="'layer9.0'"):
        resize_blocks_(resnet_cifar(8, width=8, in_channels=1), {"layer9.0": 4})
