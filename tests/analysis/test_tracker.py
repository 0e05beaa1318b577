"""MetricTracker: tidy snapshots at the right steps, with the right values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dgclab.analysis import MetricTracker
from dgclab.layers import DGCConv2d, set_pruning_progress
from dgclab.models import resnet_cifar

COLUMNS = ["step", "epoch", "layer", "metric", "value"]


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet_cifar(8, conv="dgc", width=8)


def train_like(tracker: MetricTracker, model: nn.Module, forward=True, epochs=2, steps_per_epoch=3):
    """The callback protocol as a training loop drives it (no optimizer: only the calls matter)."""
    step = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            if forward:
                model(torch.randn(2, 3, 8, 8))
            step += 1
            tracker.on_step(step, epoch)
        tracker.epoch_end(epoch, step)


def test_snapshots_at_the_right_steps():
    model = tiny_resnet()
    set_pruning_progress(model, 1.0)
    tracker = MetricTracker(model, every_n_steps=2, input_size=(1, 3, 8, 8))
    train_like(tracker, model)
    frame = tracker.frame
    assert list(frame.columns) == COLUMNS
    assert frame.dtypes["step"] == "int64" and frame.dtypes["value"] == "float64"
    # on_step at steps 2, 4, 6; epoch_end at 3 (epoch 0) and 6 (already taken: no repeat).
    snapshots = frame[["step", "epoch"]].drop_duplicates().values.tolist()
    assert snapshots == [[2, 0], [3, 0], [4, 1], [6, 1]]
    # Per snapshot: 8 DGC layers x 3 selection metrics + 12 BN-ReLU pairs (see test_sparsity).
    assert (frame.groupby("step").size() == 8 * 3 + 12).all()
    assert not frame.duplicated(["step", "epoch", "layer", "metric"]).any()

    at2 = frame[frame["step"] == 2].set_index(["layer", "metric"])["value"]
    # k at the end of the schedule: round(0.75 * C_in).
    assert at2[("layer1.0.conv1", "inactive_channels")] == 6  # C_in = 8
    assert at2[("layer3.0.conv2", "inactive_channels")] == 24  # C_in = 32
    assert at2[("layer1.0.conv1", "kept_channels")] <= 8 - 6
    jac = frame[frame["metric"] == "head_jaccard"]["value"]
    assert ((jac >= 0) & (jac <= 1)).all()
    assert (frame[frame["metric"] == "dead_gamma"]["value"] == 0).all()


def test_epoch_only_and_dead_gamma_fraction():
    model = tiny_resnet()
    with torch.no_grad():
        model.bn1.weight[:2] = 0  # 2 of the stem's 8 filters
    tracker = MetricTracker(model, metrics=["dead_gamma"])  # heuristic pairs, no input
    train_like(tracker, model, forward=False)
    frame = tracker.frame
    assert frame[["step", "epoch"]].drop_duplicates().values.tolist() == [[3, 0], [6, 1]]
    assert set(frame["metric"]) == {"dead_gamma"}
    stem = frame[frame["layer"] == "bn1"]["value"].tolist()
    assert stem == [0.25, 0.25]


def test_selection_metrics_from_a_hand_set_selection():
    layer = DGCConv2d(4, 4, 1, heads=2, squeeze_rate=2)
    tracker = MetricTracker(layer, every_n_steps=1, metrics=["kept_channels", "head_jaccard"])
    tracker.on_step(1, 0)
    assert len(tracker) == 0  # no forward yet: nothing to read
    sel = torch.zeros(2, 2, 4, dtype=torch.bool)
    sel[0, 0, [0, 1]] = sel[0, 1, [1, 2]] = True  # Jaccard 1/3, 2 + 2 kept
    sel[1, 0, [0, 1, 3]] = sel[1, 1, [0, 1, 3]] = True  # Jaccard 1, 3 + 3 kept
    layer.last_selection = sel
    tracker.on_step(2, 0)
    values = tracker.frame.set_index("metric")["value"]
    assert values["kept_channels"] == 2.5
    assert values["head_jaccard"] == pytest.approx((1 / 3 + 1) / 2)
    assert tracker.frame["layer"].tolist() == ["", ""]


def test_expensive_metrics_each_epoch_with_a_loader():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))  # filter 0 outputs 0
    loader = [(torch.randn(4, 1, 3, 3), torch.zeros(4))]
    tracker = MetricTracker(model, every_n_steps=1, loader=loader,
                            metrics=["dead_gamma", "dead_activation", "selectivity"])
    model.train()
    tracker.on_step(1, 0)
    assert set(tracker.frame["metric"]) == {"dead_gamma"}
    tracker.epoch_end(0, 1)
    assert model.training
    rows = tracker.frame.set_index("metric")["value"]
    assert rows["dead_activation"] == 0.5
    assert 0 <= rows["selectivity"] <= 1
    assert len(tracker.frame) == 3  # the cheap snapshot of step 1 is not repeated


def test_default_metrics_and_validation():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU())
    assert MetricTracker(model).metrics == (
        "inactive_channels", "kept_channels", "head_jaccard", "dead_gamma"
    )
    with_loader = MetricTracker(model, loader=[torch.randn(2, 1, 2, 2)])
    assert "dead_activation" in with_loader.metrics
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricTracker(model, metrics=["flops"])
    with pytest.raises(ValueError, match="need a loader"):
        MetricTracker(model, metrics=["dead_activation"])
    with pytest.raises(ValueError, match="every_n_steps"):
        MetricTracker(model, every_n_steps=0)
    # the loader is read at every epoch's end: a generator would be empty from the second on
    with pytest.raises(TypeError, match=r"loader.*generator.*re-iterable"):
        MetricTracker(model, loader=(x for x in [torch.randn(2, 1, 2, 2)]))
    with pytest.raises(ValueError, match="max_batches must be >= 1, got max_batches=0"):
        MetricTracker(model, loader=[torch.randn(2, 1, 2, 2)], max_batches=0)
    empty = MetricTracker(model).frame
    assert list(empty.columns) == COLUMNS and len(empty) == 0


def test_tracker_plugs_into_the_trainer():
    from dgclab.train import Trainer, TrainConfig

    config = TrainConfig(model="resnet8", width=8, dataset="synthetic", subset=128, epochs=2,
                         eval_batch_size=128)
    trainer = Trainer(config, progress=False)
    tracker = MetricTracker(trainer.model, every_n_steps=1, input_size=trainer.input_size)
    trainer.callbacks.append(tracker)
    trainer.fit()
    frame = tracker.frame
    assert sorted(frame["step"].unique()) == [1, 2, 3, 4]
    assert sorted(frame["epoch"].unique()) == [1, 2]
    k = frame[frame.metric == "inactive_channels"].groupby("step")["value"].sum()
    assert k.iloc[0] == 0 and k.iloc[-1] > 0  # the schedule moved k
