"""The layer protocol and the conv registry: every kind by name, and a new kind in one file.

The toy kind below is defined and registered here and nowhere else; training, recording, MAC
counting, the report and loading the recording back must take it as they take DGC.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from dgclab import count_macs, load_recording
from dgclab.analysis import realized_macs
from dgclab.layers import (
    CONV_KINDS, DGCConv2d, GroupConv2d, GroupingConv, conv_kind, grouping_layers, kind_options,
    make_conv, register_conv, regularization_loss, saliency_loss, set_progress,
    set_pruning_progress, unregister_conv,
)
from dgclab.models import convert, resnet_cifar
from dgclab.record import Recorder
from dgclab.report import write_report
from dgclab.train import Trainer
from helpers import tiny


class TopHalfConv(GroupingConv, nn.Module):
    """A toy dynamic kind: group g reads, per image, the half of the input channels with the
    largest mean activation, shifted by g channels; a static layer's cost formula (no
    overhead), C_in / 2 channels per group."""

    kind = "tophalf"
    dynamic = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=2):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *self.kernel_size) * .1)
        self.last_selection = None
        self.progress = None

    @property
    def channel_groups(self):
        return self.groups

    @classmethod
    def computed_channels_from_info(cls, info):
        return info["in_channels"] // 2

    def set_progress(self, progress):
        self.progress = progress

    def regularization(self):
        return self.weight.abs().mean()

    def forward(self, x):
        c, g = self.in_channels, self.groups
        rank = x.mean(dim=(2, 3)).argsort(dim=1, descending=True)[:, : c // 2]  # (B, C/2)
        keep = torch.zeros(len(x), g, c, dtype=torch.bool, device=x.device)
        for i in range(g):
            keep[:, i].scatter_(1, (rank + i) % c, True)
        self.last_selection = keep
        out = []
        for i, w in enumerate(self.weight.chunk(g)):  # group i's filters, on its kept channels
            out.append(F.conv2d(x * keep[:, i, :, None, None], w, None, self.stride,
                                self.padding, self.dilation))
        return torch.cat(out, 1)


@pytest.fixture
def tophalf():
    register_conv("tophalf", TopHalfConv, TopHalfConv, options={"groups": 2},
                  groups_option="groups", doc="a toy")
    yield
    unregister_conv("tophalf")


def test_a_new_kind_trains_records_and_counts_without_edits_elsewhere(tophalf, tmp_path):
    assert "tophalf" in CONV_KINDS
    trainer = Trainer(tiny(conv="tophalf", heads=2, epochs=1), tmp_path / "run", progress=False)
    history = trainer.fit()
    layers = grouping_layers(trainer.model)
    assert layers and all(isinstance(m, TopHalfConv) for _, m in layers)
    assert all(m.progress is not None for _, m in layers)  # the trainer drove the protocol
    assert history["lasso"].iloc[-1] > 0  # its regularisation term entered the loss
    rec = load_recording(tmp_path / "run" / "test_recording.npz")
    assert rec.layer_names == [n for n, _ in layers]
    info = rec.layer_info(rec.layer_names[0])
    assert info["kind"] == "tophalf" and info["heads"] == 2
    assert rec.selections(rec.layer_names[0]).sum(-1).eq(info["in_channels"] // 2).all()

    table = count_macs(trainer.model, (1, 1, 28, 28), per_layer=True).set_index("layer")
    name, layer = layers[0]
    expected = layer.macs(info["input_hw"])  # 2 groups x C/2 channels x C_out/2 outputs ...
    kh, kw = layer.kernel_size
    h, w = info["input_hw"]
    ho, wo = (h + 2 - kh) // layer.stride[0] + 1, (w + 2 - kw) // layer.stride[1] + 1
    assert expected == layer.in_channels // 2 * layer.out_channels * kh * kw * ho * wo
    assert table.loc[name, "macs"] == expected == table.loc[name, "tophalf_conv"]
    realized = realized_macs(rec, per_layer=True)
    assert (realized.loc[realized.layer == name, "realized"] == expected).all()
    assert "tophalf" in write_report(tmp_path / "run").read_text()


def test_make_conv_builds_every_kind_with_its_defaults():
    dense = make_conv("dense", 8, 16, 3, padding=1)
    assert type(dense) is nn.Conv2d and dense.bias is None
    group = make_conv("group", 8, 16, 3, padding=1)
    assert isinstance(group, GroupConv2d) and group.groups == 4 and group.shuffle
    dgc = make_conv("dgc", 8, 16, 3, 2, 1, heads=2, pruning_rate=0.5)
    assert isinstance(dgc, DGCConv2d) and (dgc.heads, dgc.stride) == (2, (2, 2))
    x = torch.randn(2, 8, 6, 6)
    assert dense(x).shape == group(x).shape == (2, 16, 6, 6)
    assert kind_options("group", heads=8, pruning_rate=0.7) == {"groups": 8}
    assert kind_options("dgc", 2, 0.5, 4) == {"heads": 2, "pruning_rate": 0.5, "squeeze_rate": 4}
    assert kind_options("dense", heads=4) == {}


def test_registry_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"unknown conv kind 'nope'; known kinds: \('dense'"):
        make_conv("nope", 8, 8, 3)
    with pytest.raises(ValueError, match="has no options \\['heads'\\]"):
        make_conv("group", 8, 8, 3, heads=2)
    with pytest.raises(ValueError, match="registered already"):
        register_conv("dgc", DGCConv2d, DGCConv2d)
    with pytest.raises(ValueError, match="kind must be the registered name 'other'"):
        register_conv("other", DGCConv2d, DGCConv2d)
    with pytest.raises(ValueError, match="groups_option='g'"):
        register_conv("other", GroupConv2d, nn.Conv2d, groups_option="g")
    with pytest.raises(TypeError, match="build must be callable"):
        register_conv("other", 3, nn.Conv2d)
    with pytest.raises(ValueError, match="unknown conv kind"):
        resnet_cifar(8, conv="nope")
    with pytest.raises(TypeError, match=r"a conv kind is a str, one of \('dense'.*; got type"):
        make_conv(DGCConv2d, 8, 8, 3)
    assert "other" not in CONV_KINDS  # nothing half-registered
    assert conv_kind("dgc").preactivated and not conv_kind("group").preactivated


def test_group_conv_protocol_matches_its_weights():
    layer = GroupConv2d(8, 4, 3, groups=4)
    conn = layer.connectivity()  # (groups, C_in)
    assert conn.shape == (4, 8) and conn.sum(1).eq(2).all() and conn.sum(0).eq(1).all()
    # Group g's filters read exactly its connectivity: zeroing the other channels changes
    # nothing in its outputs.
    x = torch.randn(1, 8, 5, 5)
    for g in range(4):
        masked = layer(x * conn[g, None, :, None, None])
        assert torch.equal(masked[:, g], layer(x)[:, g])  # no shuffle: group g -> output g
    assert layer.layer_info((5, 5))["kind"] == "group" and not layer.dynamic
    assert layer.macs((5, 5)) == 2 * 4 * 9 * 3 * 3  # C_in/G * C_out * kh*kw * H'*W'
    assert count_macs(nn.Sequential(layer), (1, 8, 5, 5)) == layer.macs((5, 5))
    with pytest.raises(NotImplementedError, match="is dynamic"):
        DGCConv2d(8, 8, 3).connectivity()


def test_protocol_functions_drive_dgc_as_its_own_helpers_do():
    model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    ks = set_pruning_progress(model, 0.5)
    other = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    set_progress(other, 0.5)
    assert {n: m.inactive_channels for n, m in grouping_layers(other)} == ks
    with pytest.raises(ValueError, match="needs a forward first"):
        regularization_loss(model)
    model(torch.randn(2, 1, 12, 12))
    assert torch.equal(regularization_loss(model), saliency_loss(model))
    assert regularization_loss(nn.Conv2d(1, 1, 1)).item() == 0
    # grouping_layers never lists a layer's insides

    class Outer(GroupingConv, nn.Module):
        kind = "outer"

        def __init__(self):
            super().__init__()
            self.inner = GroupConv2d(4, 4, 1, groups=2)

    outer = Outer()
    net = nn.Sequential(outer, GroupConv2d(4, 4, 1))
    assert [(n, type(m).__name__) for n, m in grouping_layers(net)] == [
        ("0", "Outer"), ("1", "GroupConv2d")]


def test_recorder_wants_a_grouping_layer_and_convert_takes_any_grouping_kind(tophalf):
    with pytest.raises(ValueError, match="no grouping layer"):
        Recorder(resnet_cifar(8, width=8, conv="dense", in_channels=1))
    model, converted, skipped = convert(nn.Sequential(nn.Conv2d(4, 8, 3, bias=False),
                                                      nn.Conv2d(8, 6, 1, bias=False)),
                                        to="tophalf", heads=2)
    assert converted == ["0", "1"] and isinstance(model[1], TopHalfConv) and not skipped
    _, _, skipped = convert(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False)), to="tophalf")
    assert skipped == {"0": "in_channels=3 is not divisible by groups=4"}
