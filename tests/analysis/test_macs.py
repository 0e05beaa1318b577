"""MAC counting as the DGC paper counts (SPEC §1.5): hand-computed numbers and torch's oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from dgclab.analysis import conv_output_hw, count_macs, dgc_layer_mac_terms, dgc_layer_macs
from dgclab.layers import DGCConv2d, GroupConv2d
from dgclab.models import resnet_cifar
from dgclab.record import Recorder

# SPEC §1.5 example: DGC 128 -> 128, 3x3, padding 1, 16x16 input, 4 heads, xi = 0.75.
EXAMPLE_PAPER = 9_512_480
EXAMPLE_DENSE_CONV = 37_748_736  # 128 * 128 * 9 * 16 * 16


@pytest.fixture
def example_layer() -> DGCConv2d:
    return DGCConv2d(128, 128, 3, padding=1, heads=4, pruning_rate=0.75)


def test_conv_output_hw():
    assert conv_output_hw((16, 16), 3, 1, 1) == (16, 16)
    assert conv_output_hw((224, 224), 7, 2, 3) == (112, 112)
    assert conv_output_hw((8, 9), (3, 1), (2, 1), (0, 0), (2, 1)) == (2, 9)
    with pytest.raises(ValueError, match="input_hw"):
        conv_output_hw((2, 2), 5)


def test_paper_example(example_layer):
    terms = dgc_layer_mac_terms(example_layer, (16, 16))
    # ReLU and pool: 128 * 256 each; per head 128*8 + 8 + 8*128 + 3*128 = 2440 (hidden = 8);
    # conv: 128 * 32 * 9 * 256 * 0.25 per head.
    assert terms == {"relu": 32_768, "pool": 32_768, "saliency": 4 * 2_440, "conv": 9_437_184}
    assert dgc_layer_macs(example_layer, (16, 16)) == EXAMPLE_PAPER
    assert count_macs(example_layer, (1, 128, 16, 16)) == EXAMPLE_PAPER
    assert count_macs(example_layer, (3, 128, 16, 16)) == EXAMPLE_PAPER  # per image


def test_dense_conv_example():
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 128, 16, 16)) == EXAMPLE_DENSE_CONV


def test_dense_convention(example_layer):
    expected = EXAMPLE_PAPER - 9_437_184 + EXAMPLE_DENSE_CONV
    assert dgc_layer_macs(example_layer, (16, 16), "dense") == expected
    assert count_macs(example_layer, (2, 128, 16, 16), "dense") == expected


def test_dgc_inner_modules_not_counted_twice(example_layer):
    table = count_macs(example_layer, (1, 128, 16, 16), per_layer=True)
    assert table["layer"].tolist() == [""]  # its BN, ReLU and head convs have no rows
    row = table.iloc[0]
    assert row["type"] == "DGCConv2d"
    parts = ["dgc_relu", "dgc_pool", "dgc_saliency", "dgc_conv"]
    assert sum(int(row[p]) for p in parts) == row["macs"] == EXAMPLE_PAPER


def test_hand_computed_sequential():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    expected = (
        3 * 8 * 9 * 8 * 8  # conv on 8x8: 13,824
        + 0  # BN
        + 8 * 8 * 8  # ReLU: its input, 512
        + 8 * 4 * 4 * 9  # 3x3/2 max pool -> 4x4, 9 per output: 1,152
        + 8 * 4 * 4  # global pool: its input, 128
        + 8 * 5 + 5  # linear + bias: 45
    )
    assert expected == 15_661
    assert count_macs(model, (2, 3, 8, 8)) == expected

    model.train()
    table = count_macs(model, (2, 3, 8, 8), per_layer=True)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert table["macs"].sum() == expected
    assert table["macs"].tolist() == [13_824, 0, 512, 1_152, 128, 45]
    assert table["layer"].tolist() == ["0", "1", "2", "3", "4", "6"]
    assert table["dgc_conv"].isna().all()


class SharedReLUNet(nn.Module):
    """A ReLU module used twice, as in torchvision's BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = GroupConv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        x = self.relu(self.conv1(x))  # (B, 8, 10, 10)
        x = self.relu(self.conv2(x))  # (B, 8, 5, 5)
        return self.fc(x.mean(dim=(2, 3)))


def test_relu_used_twice_counts_twice():
    table = count_macs(SharedReLUNet(), (1, 4, 10, 10), per_layer=True).set_index("layer")
    assert table.loc["relu", "calls"] == 2
    assert table.loc["relu", "macs"] == 8 * 10 * 10 + 8 * 5 * 5


def test_flop_counter_matches_analytic_formula():
    """The conv/linear rows (from FlopCounterMode) against the formula from recorded shapes."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=1),
        nn.ReLU(),
        GroupConv2d(16, 32, 3, padding=1, groups=4, shuffle=True),
        nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32, bias=False),
        nn.Conv2d(32, 24, 1, stride=2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(96, 10),
    )
    shapes = {}  # name -> (input shape, output shape)

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = (inputs[0].shape, output.shape)

        return hook

    handles = [
        m.register_forward_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        model(torch.zeros(1, 3, 23, 19))
    finally:
        for h in handles:
            h.remove()

    def analytic(name: str) -> int:
        """Multiply-adds of the weights only (no bias)."""
        m = model.get_submodule(name)
        x_shape, y_shape = shapes[name]
        if isinstance(m, nn.Linear):
            return m.in_features * m.out_features
        ho, wo = conv_output_hw(x_shape[-2:], m.kernel_size, m.stride, m.padding, m.dilation)
        assert (ho, wo) == tuple(y_shape[-2:])
        kh, kw = m.kernel_size
        return m.in_channels // m.groups * m.out_channels * kh * kw * ho * wo

    table = count_macs(model, (3, 3, 23, 19), per_layer=True).set_index("layer")
    for name in shapes:
        bias = 10 if name == "7" else 0  # linear bias is counted, conv bias is not
        assert table.loc[name, "macs"] == analytic(name) + bias, name

    # And the total conv + linear work against FlopCounterMode on its own (FLOPs = 2 x MACs).
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 23, 19))
    assert counter.get_total_flops() == 2 * sum(analytic(n) for n in shapes)


def test_functional_ops_outside_modules_are_reported():
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 4))

        def forward(self, x):
            return x.flatten(1) @ self.weight.T

    table = count_macs(Bare(), (2, 1, 2, 2), per_layer=True)
    assert table["layer"].tolist() == ["(functional)"]
    assert table["macs"].sum() == 4 * 6


def test_realized_macs(example_layer):
    fixed = 32_768 + 32_768 + 4 * 2_440  # ReLU, pool, saliency: as in the paper count
    per_channel = 32 * 9 * 16 * 16  # (C_out / heads) * k^2 * H' * W'
    kept = torch.tensor([10, 20, 30, 40])
    assert dgc_layer_macs(example_layer, (16, 16), "realized", kept) == fixed + 100 * per_channel
    # 32 kept per head is exactly the paper's 1 - xi = 0.25 of 128.
    assert dgc_layer_macs(example_layer, (16, 16), "realized", torch.full((4,), 32)) == (
        EXAMPLE_PAPER
    )
    batch = dgc_layer_macs(example_layer, (16, 16), "realized", torch.tensor([[0] * 4, [128] * 4]))
    assert batch.dtype == torch.int64
    assert batch.tolist() == [fixed, fixed + 4 * 128 * per_channel]


def test_realized_defaults_to_last_selection(example_layer):
    torch.manual_seed(0)
    example_layer.eval()
    example_layer.inactive_channels = 96
    with torch.no_grad():
        example_layer(torch.randn(3, 128, 16, 16))
    realized = dgc_layer_macs(example_layer, (16, 16), "realized")
    kept = example_layer.last_selection.sum(dim=-1)  # (3, heads)
    assert realized.shape == (3,)
    assert torch.equal(realized, dgc_layer_macs(example_layer, (16, 16), "realized", kept))
    # Ties and ReLU zeros only ever drop more than k: realized <= the k-based count.
    k_based = dgc_layer_macs(example_layer, (16, 16), "realized", torch.full((4,), 128 - 96))
    assert (realized <= k_based).all()


def test_count_macs_keeps_dgc_records(example_layer):
    x = torch.randn(2, 128, 16, 16)
    example_layer(x)
    selection = example_layer.last_selection
    count_macs(example_layer, (1, 128, 16, 16))
    assert example_layer.last_selection is selection
    assert example_layer.training


def test_count_macs_inside_a_recording_is_not_recorded():
    # Its probe forward of zeros is not a sample of the data being recorded, and the tags wait
    # for the forward they were meant for.
    torch.manual_seed(0)
    model = resnet_cifar(8, conv="dgc", width=8).eval()
    alone = count_macs(model, (1, 3, 8, 8))
    with torch.no_grad(), Recorder(model) as rec:
        assert count_macs(model, (1, 3, 8, 8)) == alone
        rec.tag(labels=torch.tensor([3, 7]))
        count_macs(model, (1, 3, 8, 8), per_layer=True)
        count_macs(model.layer2, (1, 8, 8, 8))  # a part of the recorded model, too
        model(torch.randn(2, 3, 8, 8))
    assert len(rec) == rec.samples_seen == 2 and rec.labels.tolist() == [3, 7]


@pytest.mark.parametrize(
    "bad", [(1, 3, 32), (1, 3, 32, 0), (1, 3, 32.0, 32), (1, 3, True, 32), "1x3x32x32", 32]
)
def test_bad_input_size(bad):
    with pytest.raises(ValueError, match="input_size"):
        count_macs(nn.Conv2d(3, 4, 3), bad)


def test_bad_convention(example_layer):
    with pytest.raises(ValueError, match="'sparse'"):
        count_macs(example_layer, (1, 128, 16, 16), convention="sparse")
    with pytest.raises(ValueError, match="'realized'"):
        count_macs(example_layer, (1, 128, 16, 16), convention="realized")  # per image only
    with pytest.raises(ValueError, match="'sparse'"):
        dgc_layer_macs(example_layer, (16, 16), "sparse")
    with pytest.raises(ValueError, match="kept_channels"):
        dgc_layer_macs(example_layer, (16, 16), "realized", torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="kept_channels"):
        dgc_layer_macs(example_layer, (16, 16), "realized", torch.tensor([1, 2, 3, 129]))
    with pytest.raises(ValueError, match="kept_channels"):
        dgc_layer_macs(example_layer, (16, 16), "paper", torch.tensor([1, 2, 3, 4]))


def test_dydensenet86_regression():
    """SPEC §1.5: DyDenseNet-86 on CIFAR-10 is 71.04M MACs with 4,264,810 parameters."""
    try:
        from dgclab.models import dydensenet86
    except ImportError as exc:
        pytest.skip(f"dgclab.models.dydensenet86 is not available: {exc}")
    model = dydensenet86(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 4_264_810
    table = count_macs(model, (1, 3, 32, 32), per_layer=True)
    macs = int(table["macs"].sum())
    assert round(macs / 1e4) / 100 == 71.04
    assert macs == 71_037_118  # the exact count under the SPEC §1.5 rules
    assert count_macs(model, (2, 3, 32, 32)) == macs
    # 42 DGC layers; everything inside them is covered by the formula only.
    assert (table["type"] == "DGCConv2d").sum() == 42
    assert not table["layer"].str.contains(r"conv_1\.").any()
