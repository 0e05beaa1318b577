"""Implicit filter sparsity (SPEC §7): BN-ReLU pairing, dead filters, selectivity."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgclab.analysis import bn_relu_pairs, filter_sparsity
from dgclab.models import dydensenet, resnet_cifar
from dgclab.record import Recorder


def conv_bn_relu(c_in=1, c_out=3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


# ---- pairing ---------------------------------------------------------------------------------


def test_plain_sequential_has_one_pair():
    model = conv_bn_relu()
    assert bn_relu_pairs(model) == [("1", "2")]
    assert bn_relu_pairs(model, input_size=(1, 1, 4, 4)) == [("1", "2")]
    table = filter_sparsity(model, input_size=(1, 1, 4, 4))
    assert table.to_dict("records") == [{"layer": "1", "relu": "2", "filters": 3, "dead_gamma": 0}]
    with_data = filter_sparsity(model, [torch.randn(2, 1, 4, 4)])
    assert with_data["layer"].tolist() == ["1"]


def resnet8_pairs() -> list[str]:
    """By hand: the stem BN; per DGCBasicBlock the DGC layers' own norms and bn1 (-> relu1);
    not bn2 (-> residual add) nor the shortcut's BN (-> add). Block 1 (16 -> 16) has no
    downsample; blocks 2 and 3 have a DGC 1x1 downsample with its own norm: 1 + 3 + 4 + 4."""
    names = ["bn1"]
    for stage in (1, 2, 3):
        block = f"layer{stage}.0"
        names += [f"{block}.conv1.norm", f"{block}.bn1", f"{block}.conv2.norm"]
        if stage > 1:
            names.append(f"{block}.downsample.0.norm")
    return names


def test_resnet_cifar_dgc_pairs_by_data_flow():
    model = resnet_cifar(8, conv="dgc")
    expected = resnet8_pairs()
    assert len(expected) == 12
    pairs = bn_relu_pairs(model, input_size=(1, 3, 16, 16))
    assert sorted(bn for bn, _ in pairs) == sorted(expected)
    assert dict(pairs)["layer1.0.bn1"] == "layer1.0.relu1"
    assert dict(pairs)["layer2.0.conv1.norm"] == "layer2.0.conv1.relu"
    table = filter_sparsity(model, [torch.randn(2, 3, 16, 16)], selectivity=False)
    assert sorted(table["layer"]) == sorted(expected)
    assert table.set_index("layer").loc["layer3.0.bn1", "filters"] == 64


def test_heuristic_pairs_and_its_documented_mistake():
    # The heuristic also pairs layer1.0.bn2 with relu2: registered next to each other, but the
    # residual add sits between them in the forward.
    model = resnet_cifar(8, conv="dgc")
    heuristic = [bn for bn, _ in bn_relu_pairs(model)]
    assert sorted(heuristic) == sorted(resnet8_pairs() + ["layer1.0.bn2"])


def test_dydensenet_pairs():
    # Per dense layer: the DGC 1x1's norm and conv_2's norm; plus bn_last: 4 * 2 + 1.
    model = dydensenet([2, 2], [4, 8])
    pairs = bn_relu_pairs(model, input_size=(1, 3, 16, 16))
    assert len(pairs) == 9
    assert pairs[-1] == ("bn_last", "relu_last")
    assert ("features.denseblock_2.denselayer_1.conv_2.norm",
            "features.denseblock_2.denselayer_1.conv_2.relu") in pairs
    assert bn_relu_pairs(model) == pairs
    table = filter_sparsity(model, [(torch.randn(2, 3, 16, 16), torch.zeros(2))])
    assert len(table) == 9
    # The second dense layer's BN sees the 8 stem channels plus the first layer's 4.
    assert table.set_index("layer").loc[
        "features.denseblock_1.denselayer_2.conv_1.norm", "filters"] == 12


def test_functional_relu_is_invisible():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            return F.relu(self.bn(x))

    assert bn_relu_pairs(Functional(), input_size=(1, 2, 3, 3)) == []
    assert len(filter_sparsity(Functional(), [torch.randn(2, 2, 3, 3)])) == 0


# ---- dead filters ----------------------------------------------------------------------------


def dead_model() -> nn.Sequential:
    """Filter 0: gamma 0, beta -1 -> constant 0 output, dead both ways.
    Filter 1: conv weight 0, gamma 1, beta 0 -> BN output 0 everywhere, dead by activation.
    Filter 2: weight 1, gamma 1, beta 0 -> ReLU(x), alive."""
    model = conv_bn_relu(1, 3)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1, 1))
        model[1].weight.copy_(torch.tensor([0.0, 1.0, 1.0]))
        model[1].bias.copy_(torch.tensor([-1.0, 0.0, 0.0]))
    return model


def test_dead_by_gamma_and_by_activation():
    model = dead_model()
    x = torch.randn(8, 1, 4, 4)
    table = filter_sparsity(model, [x[:4], (x[4:], torch.zeros(4))], per_filter=True)
    assert table["dead_gamma"].tolist() == [True, False, False]
    assert table["dead_activation"].tolist() == [True, True, False]
    assert table["max_activation"][2] == pytest.approx(x.max().item() / (1 + 1e-5) ** 0.5)
    summary = filter_sparsity(model, [x])
    assert summary.to_dict("records")[0] == {
        "layer": "1", "relu": "2", "filters": 3, "dead_gamma": 1, "dead_activation": 2,
        "selectivity": summary["selectivity"][0],
    }
    # Without data: gamma only.
    assert list(filter_sparsity(model).columns) == ["layer", "relu", "filters", "dead_gamma"]
    assert filter_sparsity(model, gamma_threshold=1.5)["dead_gamma"].tolist() == [3]


def test_selectivity_hand_built():
    # BN-ReLU on the raw input (BN at init: y = x / sqrt(1 + eps), the ratios are unchanged).
    # Channel 0: per-image maxima 1, 0.5, 1e-4, 0 (all negative) -> ratios 1, .5, 1e-4, 0:
    # two of four images below 1e-3 -> selectivity 0.5. Channel 1: max 2 on every image -> 0.
    # Channel 2: always negative -> dead, excluded from the mean.
    x = torch.full((4, 3, 2, 2), -1.0)
    for i, peak in enumerate([1.0, 0.5, 1e-4]):
        x[i, 0, 0, 0] = peak
    x[:, 1, 1, 1] = 2.0
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    per_filter = filter_sparsity(model, [x[:3], x[3:]], per_filter=True)
    assert per_filter["selectivity"][:2].tolist() == [0.5, 0.0]
    assert per_filter["selectivity"].isna().tolist() == [False, False, True]
    summary = filter_sparsity(model, [x])
    assert summary["selectivity"][0] == 0.25
    assert summary["dead_activation"][0] == 1
    single = filter_sparsity(model, [x], selectivity=False)
    assert "selectivity" not in single.columns


def test_modes_and_dgc_state_are_restored():
    model = resnet_cifar(8, conv="dgc", width=8)
    model.train()
    model(torch.randn(2, 3, 8, 8))
    before = model.layer1[0].conv1.last_selection
    filter_sparsity(model, [torch.randn(3, 3, 8, 8)], max_batches=1)
    assert all(m.training for m in model.modules())
    assert model.layer1[0].conv1.last_selection is before
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_batches_and_pairs():
    model = conv_bn_relu()
    with pytest.raises(TypeError, match="model must be a Module, got OrderedDict"):
        filter_sparsity(model.state_dict())
    with pytest.raises(TypeError, match="model must be a Module, got OrderedDict"):
        bn_relu_pairs(model.state_dict())
    with pytest.raises(ValueError, match="batch"):
        filter_sparsity(model, [{"x": torch.randn(1, 1, 2, 2)}])
    with pytest.raises(ValueError, match="BatchNorm2d"):
        filter_sparsity(model, pairs=[("0", "2")])


def test_a_one_shot_iterator_is_refused_where_it_would_be_read_twice():
    # A generator is spent after one pass: the selectivity pass would see no image and report
    # 0.0 for every filter, and the pairing probe would eat the first batch.
    model = dead_model()
    torch.manual_seed(0)
    batches = [torch.randn(4, 1, 4, 4) * 10, torch.randn(4, 1, 4, 4)]  # the max is in batch 0
    with pytest.raises(TypeError, match=r"loader.*generator.*re-iterable"):
        filter_sparsity(model, (b for b in batches))
    with pytest.raises(TypeError, match="list_iterator"):
        filter_sparsity(model, iter(batches), pairs=[("1", "2")])
    # one pass is all it takes without selectivity: every batch counts, the probe's too
    expected = filter_sparsity(model, batches, selectivity=False, per_filter=True)
    single = filter_sparsity(model, iter(batches), selectivity=False, per_filter=True)
    pd.testing.assert_frame_equal(single, expected)


def test_a_loader_that_yields_less_the_second_time_is_refused():
    class SharedIterator:  # iterable, not an iterator, but every pass continues the same one
        def __init__(self, batches):
            self.it = iter(batches)

        def __iter__(self):
            return self.it

    model = dead_model()
    batches = [torch.randn(4, 1, 4, 4) for _ in range(3)]
    with pytest.raises(ValueError, match="8 images in its first pass and 0 in its second"):
        filter_sparsity(model, SharedIterator(batches))


def test_a_loader_with_random_augmentation_is_refused_for_selectivity():
    class Augmented:  # every pass draws new images, as a random crop or noise would
        def __iter__(self):
            return iter([torch.randn(4, 1, 4, 4) for _ in range(2)])

    model = dead_model()
    with pytest.raises(ValueError, match="other maxima than the first.*augmentation"):
        filter_sparsity(model, Augmented())
    assert "selectivity" not in filter_sparsity(model, Augmented(), selectivity=False)


def test_no_data_is_not_reported_as_dead_filters():
    # Without a single image every max is 0: all filters would count as dead by activation.
    model = dead_model()
    x = torch.randn(4, 1, 4, 4)
    with pytest.raises(ValueError, match="no image"):
        filter_sparsity(model, [], pairs=[("1", "2")])
    with pytest.raises(ValueError, match="max_batches must be >= 1, got max_batches=0"):
        filter_sparsity(model, [x], max_batches=0)
    with pytest.raises(TypeError, match="max_batches must be an int"):
        filter_sparsity(model, [x], max_batches=1.5)
    with pytest.raises(ValueError, match="gamma_threshold must be >= 0"):
        filter_sparsity(model, gamma_threshold=-1e-3)
    with pytest.raises(TypeError, match="inputs must be a Tensor, got list"):
        bn_relu_pairs(model, [x])


def test_analysis_inside_a_recording_is_not_recorded():
    torch.manual_seed(0)
    model = resnet_cifar(8, conv="dgc", width=8).eval()
    data = [torch.randn(3, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    alone = filter_sparsity(model, data)
    with torch.no_grad(), Recorder(model) as rec:
        rec.tag(labels=torch.tensor([3, 7]))
        pd.testing.assert_frame_equal(filter_sparsity(model, data), alone)
        filter_sparsity(model, input_size=(1, 3, 8, 8))
        bn_relu_pairs(model.layer2, input_size=(1, 8, 8, 8))  # a part of the recorded model
        model(torch.randn(2, 3, 8, 8))
    assert len(rec) == rec.samples_seen == 2 and rec.labels.tolist() == [3, 7]
