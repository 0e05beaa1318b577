"""dgclab.analysis.dynamics and the tracker's probe metrics: hand-computed values, the
special cases (nothing changed, nothing kept, no k step) and the argument checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dgclab.analysis import (
    BN_DRIFT_COLUMNS, BN_SWAP_COLUMNS, PROBE_METRICS, STEP_METRICS, MetricTracker, bn_drift,
    bn_swap, loss_around_k_steps, saliency_stats, selection_churn,
)
from dgclab.layers import dgc_layers, set_pruning_progress
from dgclab.models import resnet_cifar


def test_selection_churn_counts_changed_decisions_per_head():
    before = torch.tensor([[[1, 1, 0, 0], [1, 0, 1, 0]],
                           [[1, 1, 0, 0], [0, 1, 0, 1]]], dtype=torch.bool)  # (N=2, heads=2, C=4)
    after = before.clone()
    assert selection_churn(before, after).tolist() == [0.0, 0.0]
    after[0, 0] = torch.tensor([0, 0, 1, 1])  # head 0: 4 of its 8 decisions change
    after[1, 1, 0] = True  # head 1: 1 of 8
    assert selection_churn(before, after).tolist() == [0.5, 0.125]
    assert selection_churn(before, ~before).tolist() == [1.0, 1.0]
    assert torch.isnan(selection_churn(before[:0], after[:0])).all()


def test_selection_churn_refuses_what_it_cannot_compare():
    sel = torch.zeros(2, 1, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="before"):
        selection_churn(sel.numpy(), sel)
    with pytest.raises(ValueError, match="after must be .* bool"):
        selection_churn(sel, sel.float())
    with pytest.raises(ValueError, match=r"shapes \(2, 1, 3\) and \(3, 1, 3\)"):
        selection_churn(sel, torch.zeros(3, 1, 3, dtype=torch.bool))


def test_saliency_stats_by_hand():
    g = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])  # one image, one head
    spread = math.sqrt(1.25) / 1.5  # population std of 0..3 over their mean
    stats = saliency_stats(g)
    assert stats == pytest.approx({"zero": 0.25, "mean": 1.5, "spread": spread})
    kept = torch.tensor([[[True, True, False, False]]])
    assert saliency_stats(g, kept)["kept_zero"] == 0.5  # kept channel 0 is multiplied by 0
    assert saliency_stats(g, ~kept)["kept_zero"] == 0.0
    nothing = torch.zeros_like(kept)
    assert math.isnan(saliency_stats(g, nothing)["kept_zero"])
    flat = saliency_stats(torch.ones(3, 2, 5))
    assert flat == {"zero": 0.0, "mean": 1.0, "spread": 0.0}
    dead = saliency_stats(torch.zeros(1, 2, 4))  # all zero: spread 0, not NaN
    assert dead["zero"] == 1.0 and dead["spread"] == 0.0
    assert all(math.isnan(v) for v in saliency_stats(torch.zeros(0, 2, 4), nothing[:0, :1]
                                                     .expand(0, 2, 4)).values())


def test_saliency_stats_checks():
    with pytest.raises(TypeError, match="saliency"):
        saliency_stats([[[1.0]]])
    with pytest.raises(ValueError, match=r"saliency must be \(N, heads, C\)"):
        saliency_stats(torch.ones(2, 3))
    with pytest.raises(ValueError, match="selection must be bool"):
        saliency_stats(torch.ones(1, 1, 3), torch.ones(1, 1, 3))


def _steps(events, n=100, jump=0.5, lasting=3):
    """Per-step logs: loss 1 + jump for ``lasting`` steps from each event, k up at each event."""
    loss, k = np.ones(n), np.zeros(n)
    for t in events:
        loss[t:t + lasting] += jump
        k[t:] += 0.1
    return pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "k_frac": k})


def test_loss_around_k_steps_averages_the_jumps():
    table = loss_around_k_steps(_steps([30, 60]), window=5)
    assert table.offset.tolist() == list(range(-5, 6))
    assert (table.events == 2).all()
    delta = dict(zip(table.offset, table.delta_mean))
    assert [delta[o] for o in (-5, -1, 0, 1, 2, 3, 5)] == [0, 0, 0.5, 0.5, 0.5, 0, 0]
    assert np.allclose(table.delta_sem, 0)
    # events whose window leaves the logs are not averaged
    assert (loss_around_k_steps(_steps([2, 60]), window=5).events == 1).all()
    assert loss_around_k_steps(_steps([]), window=5).empty  # k never grew


def test_loss_around_k_steps_reads_a_tracker_frame():
    wide = _steps([30, 60])
    long = wide.melt(id_vars="step", var_name="metric", value_name="value")
    long["layer"], long["epoch"] = "", 1
    pd.testing.assert_frame_equal(loss_around_k_steps(long, 4), loss_around_k_steps(wide, 4))
    with pytest.raises(ValueError, match=r"missing \['k_frac'\]"):
        loss_around_k_steps(wide.drop(columns="k_frac"))
    with pytest.raises(ValueError, match="window must be >= 1, got window=0"):
        loss_around_k_steps(wide, window=0)
    with pytest.raises(TypeError, match="frame"):
        loss_around_k_steps(wide.to_dict())


def _tiny():
    torch.manual_seed(0)
    return resnet_cifar(8, conv="dgc", width=8)


def test_probe_metrics_each_epoch_and_churn_from_k():
    model = _tiny()
    probe = torch.randn(6, 3, 8, 8)
    tracker = MetricTracker(model, probe=probe)
    assert tracker.metrics[-len(PROBE_METRICS):] == PROBE_METRICS
    tracker.snapshot_probe(0, 0)
    tracker.snapshot_probe(1, 1)  # nothing changed: churn 0
    set_pruning_progress(model, 1.0)  # every head now drops 3/4 of its channels
    tracker.snapshot_probe(2, 2)
    frame = tracker.frame
    churn = frame[frame.metric == "selection_churn"].groupby("epoch").value
    assert sorted(churn.groups) == [1, 2]  # no churn at the first snapshot
    assert (churn.get_group(1) == 0).all()
    assert (churn.get_group(2) > 0.5).all()  # at least the 3/4 newly dropped changed
    layers = len(dgc_layers(model))
    assert (frame[frame.metric == "saliency_zero"].groupby("epoch").size() == layers).all()
    k0 = frame[(frame.epoch == 0) & (frame.metric.isin(["probe_head_jaccard",
                                                         "chance_head_jaccard"]))]
    assert (k0.value == 1.0).all()  # k = 0: every head keeps every channel
    assert (frame.value >= 0).all()


def test_probe_agrees_with_the_layers_own_saliencies():
    model = _tiny().eval()
    probe = torch.randn(5, 3, 8, 8)
    tracker = MetricTracker(model, metrics=["saliency_zero", "kept_zero"], probe=probe)
    tracker.snapshot_probe(0, 0)
    with torch.no_grad():
        model(probe)
    name, layer = dgc_layers(model)[0]
    expected = saliency_stats(layer.last_saliency, layer.last_selection)
    rows = tracker.frame.set_index(["layer", "metric"]).value
    assert rows[(name, "saliency_zero")] == pytest.approx(expected["zero"])
    assert rows[(name, "kept_zero")] == pytest.approx(expected["kept_zero"])


def test_probe_checks():
    model = _tiny()
    with pytest.raises(ValueError, match=r"need a probe batch"):
        MetricTracker(model, metrics=["selection_churn"])
    with pytest.raises(TypeError, match="probe"):
        MetricTracker(model, probe=np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"probe must be .* got shape \(0, 3, 8, 8\)"):
        MetricTracker(model, probe=torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="probe metrics need a probe"):
        MetricTracker(model).snapshot_probe(0, 0)


def test_trainer_feeds_the_probe_and_the_step_logs():
    from dgclab.train import Trainer, TrainConfig

    config = TrainConfig(model="resnet8", width=8, dataset="synthetic", subset=64, epochs=2,
                         batch_size=16, eval_batch_size=64)
    trainer = Trainer(config, progress=False)
    probe = torch.stack([trainer.test_set[i][0] for i in range(8)])
    tracker = MetricTracker(trainer.model, metrics=PROBE_METRICS + STEP_METRICS, probe=probe)
    trainer.callbacks.append(tracker)
    trainer.fit()
    frame = tracker.frame
    assert sorted(frame[frame.metric == "saliency_zero"].epoch.unique()) == [0, 1, 2]
    loss = frame[frame.metric == "loss"]
    assert loss.step.tolist() == list(range(1, 9)) and (loss.layer == "").all()
    assert frame[frame.metric == "k_frac"].value.is_monotonic_increasing


def _stale_bn(mean, var, stale_mean, stale_var) -> tuple[torch.nn.BatchNorm1d, dict]:
    """A BN whose buffers hold (mean, var) and the state it had with (stale_mean, stale_var)."""
    bn = torch.nn.BatchNorm1d(len(mean)).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor(stale_mean))
        bn.running_var.copy_(torch.tensor(stale_var))
        stale = {k: v.clone() for k, v in bn.state_dict().items()}
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    return bn, stale


def test_bn_drift_is_the_w2_distance_of_the_stale_output_from_the_right_one():
    from scipy.stats import norm

    mean, var = [0.5, -2.0, 3.0], [4.0, 0.25, 1e-3]
    stale_mean, stale_var = [0.0, -2.0, 3.1], [1.0, 1.0, 2e-3]
    bn, stale = _stale_bn(mean, var, stale_mean, stale_var)
    row = bn_drift(bn, stale).iloc[0]
    # oracle 1: push inputs of the current moments through the BN with the stale and with the
    # right statistics; oracle 2: W2 between 1-d laws is the L2 distance of their quantiles
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, 3, generator=gen, dtype=torch.float64)
    x = x * torch.tensor(var).sqrt() + torch.tensor(mean)
    eps = bn.eps
    y_stale = (x - torch.tensor(stale_mean)) / (torch.tensor(stale_var) + eps).sqrt()
    y_right = (x - torch.tensor(mean)) / (torch.tensor(var) + eps).sqrt()
    u = (np.arange(200_000) + 0.5) / 200_000
    drifts = []
    for c in range(3):
        q_stale = y_stale[:, c].mean().item() + y_stale[:, c].std().item() * norm.ppf(u)
        q_right = y_right[:, c].mean().item() + y_right[:, c].std().item() * norm.ppf(u)
        drifts.append(math.sqrt(np.mean((q_stale - q_right) ** 2)))
    assert row.layer == "" and row.channels == 3
    assert row.drift == pytest.approx(np.mean(drifts), rel=2e-2)
    assert row.drift_max == pytest.approx(max(drifts), rel=2e-2)
    assert row.mean_part == pytest.approx(
        np.mean([abs(y_stale[:, c].mean().item()) for c in range(3)]), abs=1e-2)
    assert row.std_part == pytest.approx(
        np.mean([abs(y_stale[:, c].std().item() - y_right[:, c].std().item())
                 for c in range(3)]), rel=2e-2)


def test_bn_drift_is_zero_for_unchanged_statistics_and_names_every_bn():
    model = resnet_cifar(8, width=8, conv="dgc", heads=2)
    stale = {k: v.clone() for k, v in model.state_dict().items()}
    frame = bn_drift(model, stale)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert list(frame.columns) == BN_DRIFT_COLUMNS
    assert frame.layer.tolist() == names and (frame[["drift", "drift_max"]] == 0).all().all()
    with torch.no_grad():
        model.layer1[0].bn1.running_var.fill_(4.0)  # stale 1, now 4: the output std is 2, not 1
    frame = bn_drift(model, stale).set_index("layer")
    assert frame.loc["layer1.0.bn1", "std_part"] == pytest.approx(1.0, abs=1e-5)
    assert frame.loc["layer1.0.bn1", "mean_part"] == 0
    assert (frame.drop(index="layer1.0.bn1").drift == 0).all()
    assert bn_drift(torch.nn.Linear(2, 2), {}).columns.tolist() == BN_DRIFT_COLUMNS


def _two_stat_sets(model):
    """(stale, fresh) state dicts of ``model`` differing in layer1.0.bn1 and layer2.0.bn2."""
    stale = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.layer1[0].bn1.running_mean.add_(0.5)
        model.layer2[0].bn2.running_var.mul_(3.0)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    return stale, fresh


def test_bn_swap_scores_each_bn_alone_against_the_oracle_of_swapping_by_hand():
    torch.manual_seed(0)
    model = resnet_cifar(8, width=8, in_channels=1).eval()
    stale, fresh = _two_stat_sets(model)
    x = torch.randn(3, 1, 12, 12)

    def score(m):
        with torch.no_grad():
            return m(x).sum().item()

    def by_hand(state):  # the oracle: load a whole state dict and score
        copy = resnet_cifar(8, width=8, in_channels=1).eval()
        copy.load_state_dict(state)
        return score(copy)

    table = bn_swap(model, stale, fresh, score).set_index("layer")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert list(table.reset_index().columns) == BN_SWAP_COLUMNS and table.index.tolist() == names
    all_stale, all_fresh = by_hand(stale), by_hand(fresh)
    for name in names:
        keys = [f"{name}.running_mean", f"{name}.running_var"]
        fresh_one = stale | {k: fresh[k] for k in keys}
        stale_one = fresh | {k: stale[k] for k in keys}
        assert table.loc[name, "only_fresh"] == pytest.approx(by_hand(fresh_one), rel=1e-6)
        assert table.loc[name, "only_stale"] == pytest.approx(by_hand(stale_one), rel=1e-6)
    # BNs whose statistics did not change swap nothing
    assert table.loc["bn1", "only_fresh"] == pytest.approx(all_stale, rel=1e-6)
    assert table.loc["bn1", "only_stale"] == pytest.approx(all_fresh, rel=1e-6)
    assert table.loc["layer1.0.bn1", "only_fresh"] != pytest.approx(all_stale, rel=1e-6)
    # the model's own statistics are back
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())


def test_bn_swap_refuses_what_it_cannot_swap():
    bn, stale = _stale_bn([0.0], [1.0], [0.0], [1.0])
    with pytest.raises(TypeError, match="score"):
        bn_swap(bn, stale, stale, "accuracy")
    with pytest.raises(TypeError, match="fresh"):
        bn_swap(bn, stale, list(stale), len)
    with pytest.raises(ValueError, match=r"fresh\['running_var'\]"):
        bn_swap(bn, stale, {"running_mean": stale["running_mean"]}, len)
    with pytest.raises(ValueError, match=r"stale\['running_mean'\] must be a tensor of shape \(1,\)"):
        bn_swap(bn, stale | {"running_mean": torch.ones(2)}, stale, len)


def test_bn_drift_refuses_what_it_cannot_compare():
    bn, stale = _stale_bn([0.0], [1.0], [0.0], [1.0])
    with pytest.raises(TypeError, match="model"):
        bn_drift(stale, stale)
    with pytest.raises(TypeError, match="stale"):
        bn_drift(bn, list(stale))
    with pytest.raises(ValueError, match="'running_var'"):
        bn_drift(bn, {"running_mean": stale["running_mean"]})
    with pytest.raises(ValueError, match=r"shape \(1,\), got \(2,\)"):
        bn_drift(bn, stale | {"running_var": torch.ones(2)})
