"""BasicNet, the plain net of the sparsity study (SPEC §7): shapes and structure."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dgclab.analysis import bn_relu_pairs, count_macs
from dgclab.models import BasicNet, basicnet
from dgclab.models.registry import build_model
from dgclab.train import TrainConfig


def test_logits_shape_for_fashion_mnist_and_cifar():
    torch.manual_seed(0)
    assert basicnet(in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert basicnet(in_channels=3, num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_structure_is_the_spec_chain():
    model = basicnet()
    assert isinstance(model, nn.Sequential)
    assert list(dict(model.named_children())) == ["features", "pool", "flatten", "fc"]
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 128, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    names = [n for n, _ in model.features.named_children()]
    # conv-BN-ReLU per layer, max pool after layers 2, 4, 6
    assert names[:7] == ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "pool2"]
    assert [n for n in names if n.startswith("pool")] == ["pool2", "pool4", "pool6"]
    assert all(isinstance(getattr(model.features, f"relu{i}"), nn.ReLU) for i in range(1, 8))
    assert model.fc.in_features == 256
    assert "widths=(32, 64, 64, 128, 128, 256, 256)" in repr(model)


def test_every_bn_pairs_with_its_relu():
    pairs = bn_relu_pairs(basicnet(), input_size=(1, 1, 28, 28))
    assert pairs == [(f"features.bn{i}", f"features.relu{i}") for i in range(1, 8)]


def test_macs_by_hand():
    # conv MACs: C_in * C_out * 9 * H * W, at 28, 28, 14, 14, 7, 7, 3 (pools after 2, 4, 6)
    sizes = [28, 28, 14, 14, 7, 7, 3]
    chans = [1, 32, 64, 64, 128, 128, 256, 256]
    conv = sum(chans[i] * chans[i + 1] * 9 * s * s for i, s in enumerate(sizes))
    table = count_macs(basicnet(), (1, 1, 28, 28), per_layer=True)
    assert table.loc[table["type"] == "Conv2d", "macs"].sum() == conv


def test_registry_and_config_know_it():
    model = build_model("basicnet", in_channels=3, num_classes=7)
    assert isinstance(model, BasicNet) and model.fc.out_features == 7
    assert TrainConfig(model="basicnet").validate().model == "basicnet"


@pytest.mark.parametrize("kwargs,match", [
    (dict(widths=()), "widths"), (dict(widths=(8, 0)), "widths"),
    (dict(pool_after=(9,)), "pool_after"), (dict(in_channels=0), "in_channels"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        basicnet(**kwargs)
