"""Static layers (a group conv) in a recording: stored once, read back like dynamic ones."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from dgclab import Recorder, load_recording
from dgclab.analysis import channel_usage, head_overlap, realized_macs
from dgclab.layers import DGCConv2d, GroupConv2d, set_progress
from dgclab.models import resnet_cifar
from dgclab.record import Recording, check_layer_info


def mixed_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(GroupConv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(),
                          DGCConv2d(8, 8, 3, padding=1, heads=2, pruning_rate=0.5))
    set_progress(model, 1.0)
    return model.eval()


def test_a_static_layer_is_stored_once_and_reads_as_its_connectivity(tmp_path):
    model = mixed_model()
    with Recorder(model, activations=True) as rec:
        for _ in range(3):
            rec.tag(labels=torch.tensor([1, 2]))
            model(torch.randn(2, 4, 6, 6))
    assert rec.layer_names == ["0", "2"]
    assert not rec.is_dynamic("0") and rec.is_dynamic("2")
    conn = model[0].connectivity()
    assert torch.equal(rec.connectivity("0"), conn)
    assert torch.equal(rec.selections("0"), conn.expand(6, 2, 4))
    assert rec.packed_selections("0").shape == (6, 2, 1)
    assert rec.activation_max("0").shape == (6, 8)  # activations for static layers too
    assert rec.layer_info("0")["kind"] == "group" and rec.layer_info("2")["kind"] == "dgc"
    with pytest.raises(ValueError, match="'2' is a dynamic layer"):
        rec.connectivity("2")

    rec.save(tmp_path / "r.npz")
    back = load_recording(tmp_path / "r.npz")
    assert back.layer_names == rec.layer_names and not back.is_dynamic("0")
    assert torch.equal(back.selections("0"), rec.selections("0"))
    assert torch.equal(back.selections("2"), rec.selections("2"))
    with np.load(tmp_path / "r.npz") as arrays:  # once, not per sample
        assert arrays["selections_0"].shape == (2, 1)


def test_analyses_take_static_layers():
    model = mixed_model()
    with Recorder(model) as rec:
        model(torch.randn(5, 4, 6, 6))
    overlap = head_overlap(rec, layers="0")
    assert (overlap["jaccard"] == 0).all()  # the two groups read disjoint channels
    usage = channel_usage(rec, layers="0")  # group g keeps its own block, for every image
    expected = model[0].connectivity().double().flatten()  # (heads * C)
    assert torch.equal(torch.tensor(usage["frequency"].to_numpy()), expected)
    macs = realized_macs(rec, per_layer=True)
    static = macs[macs.layer == "0"]
    assert (static.realized == static.paper).all() and (static.paper == model[0].macs((6, 6))).all()


def test_a_model_of_static_layers_alone_records_its_samples_tags():
    model = resnet_cifar(8, width=8, conv="group", in_channels=1).eval()
    with Recorder(model) as rec:
        rec.tag(labels=torch.tensor([4, 5, 6]))
        model(torch.randn(3, 1, 12, 12))
    assert len(rec) == 3 and rec.labels.tolist() == [4, 5, 6]
    assert all(not rec.is_dynamic(n) for n in rec.layer_names)
    plain = Recording({n: rec.connectivity(n) for n in rec.layer_names},
                      {n: rec.layer_info(n) for n in rec.layer_names}, labels=rec.labels)
    assert len(plain) == 3 and torch.equal(plain.selections("layer1.0.conv1"),
                                           rec.selections("layer1.0.conv1"))


def test_a_static_layer_needs_its_connectivity_once():
    info = check_layer_info(GroupConv2d(4, 4, 1, groups=2).layer_info((3, 3)))
    with pytest.raises(ValueError, match=r"\(heads=2, in_channels=4\).*a static layer"):
        Recording({"g": torch.ones(5, 2, 4, dtype=torch.bool)}, {"g": info})
