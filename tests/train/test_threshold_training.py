"""Training DGC-G (TrainConfig(selection="threshold")): the threshold follows the pruning
schedule, resumes exactly, and old run folders (from before the field) still resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from dgclab.layers import DGCConv2d, follow_threshold
from dgclab.train import Trainer

from helpers import StopAfter, tiny


def _thresholds(model):
    return {m.threshold for m in model.modules() if isinstance(m, DGCConv2d)}


class Rates:
    """Per training step: the schedule's target (mean k / C_in) and the rate the step's forward
    really had (its selections)."""

    def __init__(self):
        self.rows = []

    def on_step_end(self, trainer, step, epoch, logs):
        layers = [m for m in trainer.model.modules() if isinstance(m, DGCConv2d)]
        dropped = [1 - m.last_selection.sum(-1).double() / m.in_channels for m in layers]
        self.rows.append((trainer.k_frac(), float(torch.cat(dropped, 1).mean())))


def test_the_threshold_follows_the_schedule(tmp_path):
    rates = Rates()
    config = tiny(selection="threshold", subset=512, batch_size=32, epochs=2)  # 32 steps
    trainer = Trainer(config, tmp_path / "run", callbacks=[rates], progress=False)
    assert _thresholds(trainer.model) == {0.0}  # threshold mode from the start
    trainer.fit()
    (tau,) = _thresholds(trainer.model)
    assert tau > 0
    target, rate = map(torch.tensor, zip(*rates.rows))
    assert target[-1] == 0.75 and target[0] == 0
    # the last quarter of training is at the final k: the training forwards' rate follows it
    # (behind it by the moving average's lag, and by the heads that keep their one channel:
    # 1/8 of a head at width 8)
    last = slice(-8, None)
    assert (rate[last] - target[last]).abs().mean() < 0.1, rate[last]
    assert rate[-1] > rate[-8] > rate[len(rate) // 4]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert any(k.endswith("_threshold") for k in saved)  # checkpoints carry it


def test_threshold_training_resumes_exactly(tmp_path):
    config = tiny(selection="threshold")
    straight = Trainer(config, tmp_path / "a", progress=False)
    straight.fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "b", callbacks=[StopAfter(1)], progress=False).fit()
    resumed = Trainer(config, tmp_path / "b", resume=True, progress=False)
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_run_folder_from_before_the_field_resumes(tmp_path):
    run = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(), run, callbacks=[StopAfter(1)], progress=False).fit()
    saved = json.loads((run / "config.json").read_text())
    del saved["selection"]  # a config.json written before selection existed
    (run / "config.json").write_text(json.dumps(saved))
    Trainer(tiny(), run, resume=True, progress=False).fit()
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]


def test_follow_threshold_by_hand():
    layer = DGCConv2d(4, 4, 1, heads=1, squeeze_rate=2)
    layer.threshold = 0.0
    layer.last_saliency = torch.tensor([[[0.0, 1.0, 2.0, 3.0]], [[0.5, 1.5, 2.5, 3.5]]])
    # half of each image's channels at or below 1.5: the first value where the rate reaches 0.5
    assert follow_threshold(layer, 0.5) == pytest.approx(1.5)  # the first time: q itself
    assert follow_threshold(layer, 0.25, momentum=0.5) == pytest.approx(0.5 * 1.5 + 0.5 * 0.5)
    assert follow_threshold(layer, 0.0, momentum=0.0) == 0.0
    with pytest.raises(ValueError, match="momentum"):
        follow_threshold(layer, 0.5, momentum=1.0)
    with pytest.raises(ValueError, match="run a forward"):
        follow_threshold(DGCConv2d(4, 4, 1, heads=1, squeeze_rate=2), 0.5)


def test_selection_is_checked():
    with pytest.raises(ValueError, match="selection must be one of"):
        tiny(selection="greedy").validate()
    with pytest.raises(ValueError, match="a rule of DGC layers, got conv='group'"):
        tiny(selection="threshold", conv="group").validate()
