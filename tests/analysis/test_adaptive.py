"""Compute per image and the anytime sweep (dgclab.analysis.adaptive) on a tiny DGC resnet."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from dgclab.analysis import (
    PER_IMAGE_COLUMNS, SWEEP_COLUMNS, compute_per_image, compute_sweep, layer_pruning_rates,
)
from dgclab.record import record
from dgclab.analysis import count_macs
from dgclab.layers import DGCConv2d, mean_pruning_rate, set_pruning_progress, set_threshold
from dgclab.models import resnet_cifar


def _model():
    torch.manual_seed(0)
    model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    set_pruning_progress(model, 1.0)
    with torch.no_grad():  # spread the heads' saliencies (fresh heads score every channel 1)
        for layer in model.modules():
            if isinstance(layer, DGCConv2d):
                for head in layer.heads_list:
                    head.fc2.bias.uniform_(0.0, 2.0)
    return model.eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(12, 1, 10, 10, generator=g), torch.randint(0, 10, (12,), generator=g))
            for _ in range(2)]


def test_per_image_rows_add_up():
    model, batches = _model(), _batches()
    set_threshold(model, 1.0)
    frame = compute_per_image(model, batches)
    assert tuple(frame.columns) == PER_IMAGE_COLUMNS and len(frame) == 24
    labels = torch.cat([y for _, y in batches]).numpy()
    with torch.no_grad():
        predictions = torch.cat([model(x).argmax(1) for x, _ in batches]).numpy()
    assert np.array_equal(frame["label"], labels) and np.array_equal(frame["prediction"], predictions)
    assert np.array_equal(frame["correct"], labels == predictions)
    # the rest of the network costs every image the same; under the threshold images differ
    rest = frame["macs"] - frame["dgc_macs"]
    assert rest.nunique() == 1 and frame["dgc_macs"].nunique() > 1
    table = count_macs(model, (1, 1, 10, 10), per_layer=True)
    assert rest.iloc[0] == table.loc[table["kind"].ne("dgc").fillna(True), "macs"].sum()
    assert frame["pruning_rate"].mean() == pytest.approx(mean_pruning_rate(model, batches))


def test_sweep_rows_and_the_model_is_put_back():
    model, batches = _model(), _batches()
    layers = [m for m in model.modules() if isinstance(m, DGCConv2d)]
    before = [(m.inactive_channels, m.threshold) for m in layers]
    sweep = compute_sweep(model, batches, (0.5, 0.75), calibration_batches=2)
    assert tuple(sweep.columns) == SWEEP_COLUMNS
    assert sweep[["rule", "target"]].values.tolist() == [
        ["head-wise", 0.5], ["head-wise", 0.75], ["threshold", 0.5], ["threshold", 0.75]]
    assert [(m.inactive_channels, m.threshold) for m in layers] == before
    head, thr = sweep[sweep.rule == "head-wise"], sweep[sweep.rule == "threshold"]
    assert head["threshold"].isna().all() and (thr["threshold"] > 0).all()
    # head-wise at xi drops round(xi C) channels per head (or more, on ties); the threshold
    # is calibrated to the same mean rate on the same batches
    assert (head["pruning_rate"] >= head["target"] - 1e-9).all()
    assert np.allclose(thr["pruning_rate"], thr["target"], atol=0.02)
    assert (sweep["macs_p10"] <= sweep["macs_p50"]).all() and (sweep["macs_p50"] <= sweep["macs_p90"]).all()
    assert head["macs_mean"].is_monotonic_decreasing  # fewer channels, fewer MACs
    assert (thr["macs_p90"] - thr["macs_p10"] > 0).all()  # compute varies per image


def test_bad_arguments():
    model, batches = _model(), _batches()
    with pytest.raises(TypeError, match="recording must be a dgclab Recording .*, got list"):
        layer_pruning_rates([])
    with pytest.raises(ValueError, match="pruning_rates"):
        compute_sweep(model, batches, (0.5, 1.0))
    with pytest.raises(ValueError, match="rules"):
        compute_sweep(model, batches, (0.5,), rules=("greedy",))
    with pytest.raises(ValueError, match="no DGC layer"):
        compute_per_image(nn.Sequential(nn.Flatten(), nn.Linear(100, 10)), batches)
    with pytest.raises(TypeError, match=r"\(images, labels\)"):
        compute_per_image(model, [torch.randn(2, 1, 10, 10)])
    with pytest.raises(ValueError, match="at least one batch"):
        compute_per_image(model, [])


def test_layer_pruning_rates():
    model, batches = _model(), _batches()
    rates = layer_pruning_rates(record(model, batches))  # head-wise at the final k: 3/4
    assert len(rates) == 8 and (rates["mean"] >= 0.75 - 1e-9).all()  # 6 convs, 2 shortcuts
    set_threshold(model, 1.0)
    rec = record(model, batches)
    rates = layer_pruning_rates(rec)
    by_hand = [float((1 - rec.selections(n).sum(-1).double()
                      / rec.layer_info(n)["in_channels"]).mean()) for n in rec.layer_names]
    assert rates["mean"].tolist() == pytest.approx(by_hand)
    assert (rates["p10"] <= rates["p90"]).all()
