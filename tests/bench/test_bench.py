"""The benchmarks' plumbing (their numbers are measured by running them, not here)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dgclab.bench import accuracy, layer
from dgclab.train import METRIC_COLUMNS, TrainConfig

from helpers import needs_compiler


def _fake_run(folder, conv, acc, epochs=2):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TrainConfig(conv=conv, epochs=epochs).to_dict()))
    rows = [dict.fromkeys(METRIC_COLUMNS, 1.0) | {"epoch": e + 1, "test_acc": acc,
            "paper_macs": 4e6 if conv != "dense" else 1.2e7, "realized_macs": 3.9e6,
            "epoch_seconds": 60.0} for e in range(epochs)]
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(folder / "metrics.csv", index=False)


def test_accuracy_summary_reads_published_runs(tmp_path, capsys):
    results = tmp_path / "results"
    for conv, acc in (("dense", 0.925), ("group", 0.90), ("dgc", 0.921)):
        _fake_run(results / f"{conv}-seed0", conv, acc)
    _fake_run(results / "dgc-seed1", "dgc", 0.923)
    _fake_run(results / "dgc-no-lasso-seed0", "dgc", 0.9)
    code = accuracy.main(["--summary-only", "--results", str(results), "--out", str(tmp_path / "o"),
                          "--epochs", "2", "--width", "8", "--rounds", "1",
                          "--configs", "dense,group,dgc,dgc-no-lasso"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| dgc | 2 | 92.20 ± 0.14 |" in out
    assert "dense >= 92 %: met" in out
    assert "DGC above static groups of about the same MACs: met" in out
    assert "ablation dgc-no-lasso (the saliency lasso off): -2.10 points" in out
    assert "against the official DGC (seed 0)" in out  # paired: dgc-seed1 has no partner
    summary = pd.read_csv(results / "summary.csv")
    assert summary.conv.tolist() == ["dense", "group", "dgc", "dgc-no-lasso"]
    assert (summary.ms_per_image_b1 > 0).all()


def test_summary_of_some_configs_keeps_every_finished_run_of_the_folder(tmp_path, capsys):
    # training one ablation into a shared results folder once rewrote summary.csv with that
    # ablation alone, dropping the others
    results = tmp_path / "results"
    for name, conv, acc in (("dgc-seed0", "dgc", 0.89), ("dgc-no-lasso-seed0", "dgc", 0.88),
                            ("dgc-ramp-half-seed0", "dgc", 0.90),
                            ("dgc-ramp-half-seed1", "dgc", 0.898)):
        _fake_run(results / name, conv, acc)
    _fake_run(results / "dgc-flat-init-seed0", "dgc", 0.5, epochs=1)  # unfinished: left out
    (results / "not-a-run").mkdir()
    assert accuracy.main(["--summary-only", "--results", str(results), "--out", str(tmp_path),
                          "--epochs", "2", "--width", "8", "--rounds", "1", "--seeds", "1",
                          "--configs", "dgc-ramp-half"]) == 0
    summary = pd.read_csv(results / "summary.csv")
    assert summary.conv.tolist() == ["dgc-ramp-half", "dgc", "dgc-no-lasso"]
    assert summary.seeds.tolist() == [2, 1, 1]  # every published seed, whatever --seeds says
    out = capsys.readouterr().out
    assert ("ablation dgc-ramp-half (k final at 1/2 of training, not 3/4): +1.00 points "
            "against the official DGC (seed 0)") in out


def _args(tmp_path, epochs):
    import argparse

    return argparse.Namespace(out=tmp_path / "runs", results=tmp_path / "results", epochs=epochs,
                              progress=False, depth=8, width=8, data_root="data", batch_size=32)


def test_ablations_change_one_thing_of_the_recipe(tmp_path):
    args = _args(tmp_path, 8)
    dgc = accuracy._config("dgc", 0, args)
    for name, (conv, changes, _) in accuracy.ABLATIONS.items():
        config = accuracy._config(name, 0, args)
        assert config.conv == conv == "dgc"
        differ = {k for k, v in config.to_dict().items() if v != dgc.to_dict()[k]}
        assert differ == set(changes)
    assert dgc.schedule_end == 0.75 and dgc.saliency_init == 1.0 and dgc.lasso_lambda == 1e-5


def test_command_line_rejects_an_unknown_config(capsys):
    with pytest.raises(SystemExit):
        accuracy.main(["--summary-only", "--configs", "dgc,dgc-bogus"])
    assert "dgc-bogus" in capsys.readouterr().err


def _tiny_runs(monkeypatch):
    """Make the accuracy bench train tiny runs (64 images, batch 32) of any config."""
    from helpers import tiny

    monkeypatch.setattr(accuracy, "_config",
                        lambda name, seed, args: tiny(subset=64, batch_size=32,
                                                      epochs=args.epochs))


def test_runs_write_and_publish_dynamics_and_resume_keeps_their_rows(tmp_path, monkeypatch):
    _tiny_runs(monkeypatch)
    kill = [True]

    class KilledAfterEpoch1(accuracy._Dynamics):
        def on_epoch_end(self, trainer, epoch, row):
            super().on_epoch_end(trainer, epoch, row)
            if kill[0]:
                raise KeyboardInterrupt

    monkeypatch.setattr(accuracy, "_Dynamics", KilledAfterEpoch1)
    with pytest.raises(KeyboardInterrupt):
        accuracy.train_run("dgc", 0, _args(tmp_path, 2))
    first = pd.read_csv(tmp_path / "runs" / "dgc-seed0" / accuracy.DYNAMICS)
    assert set(first.epoch) == {0, 1}  # the initialisation and the finished epoch
    kill[0] = False
    published = accuracy.train_run("dgc", 0, _args(tmp_path, 2))
    dynamics = pd.read_csv(published / accuracy.DYNAMICS)
    assert set(dynamics.epoch) == {0, 1, 2}
    pd.testing.assert_frame_equal(dynamics[dynamics.epoch <= 1].reset_index(drop=True), first)
    churn = dynamics[dynamics.metric == "selection_churn"]
    assert set(churn.epoch) == {1, 2}  # epoch 2's churn compares with the resumed weights
    assert dynamics[dynamics.metric == "loss"].step.tolist() == [1, 2, 3, 4]
    whole = pd.read_csv(accuracy.train_run("dgc", 0, _args(tmp_path / "whole", 2))
                        / accuracy.DYNAMICS)
    pd.testing.assert_frame_equal(dynamics, whole)  # as if never killed


def test_layer_benchmark_variants_agree():
    dense, group, dgc = layer._layers(16, 16, 3)
    import torch

    from dgclab.layers import cpu_kernel

    variants = layer._variants(dgc, torch.randn(4, 16, 6, 6))  # asserts equal outputs inside
    assert len(variants) == 4 + cpu_kernel.available()
    assert ("C++ kernel" in variants) == cpu_kernel.available()


def test_interleaved_medians_blocks_discard_the_first_call_of_each_block():
    from dgclab.bench.timing import interleaved_medians

    calls = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  rounds=2, warmup=1, block=3)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())
    with pytest.raises(ValueError, match="block=0"):
        interleaved_medians({"a": lambda: None}, block=0)


def test_groups_benchmark_runs_every_method_and_draws(tmp_path, capsys):
    from dgclab.bench.groups import main as groups_main

    assert groups_main(["--channels", "8", "--size", "5", "--batch", "1", "--rounds", "1",
                        "--threads", "1", "--plot", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 4, 8] and all(len(r) == 7 for r in rows)
    assert (tmp_path / "g.png").stat().st_size > 0


@needs_compiler
def test_groups_benchmark_shapes_table_says_what_group_conv2d_takes(capsys, monkeypatch):
    from dgclab.bench import groups

    monkeypatch.setattr(groups, "SHAPES", [(8, 8, 3, 1, 6), (16, 64, 3, 2, 7), (16, 64, 1, 1, 5)])
    assert groups.main(["--shapes", "--rounds", "1", "--threads", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip()[:1].isdigit()]
    assert [(r[0], r[3], r[4], r[-1]) for r in rows] == [
        ("8->8", "2", "1", "kernel"), ("16->64", "16", "1", "torch"), ("16->64", "16", "1", "kernel"),
        ("8->8", "2", "64", "kernel"), ("16->64", "16", "64", "torch"),
        ("16->64", "16", "64", "kernel")]
    assert all(float(r[5]) > 0 and float(r[6]) > 0 for r in rows)


def _tiny_dgc_resnet():
    """A bench network builder: resnet_cifar(8), width 8, DGC with 2 heads at its final k."""
    from dgclab.layers import set_progress
    from dgclab.models import resnet_cifar

    model = resnet_cifar(8, width=8, conv="dgc", heads=2, in_channels=1)
    set_progress(model, 1.0)
    return model


@needs_compiler
def test_groups_benchmark_networks_table_times_the_kernel_on_and_off(capsys, monkeypatch):
    from dgclab.bench import groups, network
    from dgclab.layers import group

    monkeypatch.setattr(network, "NETWORKS", [("tiny", _tiny_dgc_resnet, (1, 8, 8), (1,)),
                                              ("big", _tiny_dgc_resnet, (1, 224, 224), (1,))])
    pays = group.kernel_pays
    assert groups.main(["--networks", "--batch", "2", "--rounds", "1", "--threads", "1"]) == 0
    assert group.kernel_pays is pays  # restored
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip().startswith("tiny") or line.strip().startswith("big")]
    assert [(r[0], r[1], r[2]) for r in rows] == [("tiny", "2", "off"), ("tiny", "2", "on")]
    assert all(float(v) > 0 for r in rows for v in r[3:])


@needs_compiler
def test_network_benchmark_tune_times_the_measured_choice_beside_the_rule(capsys, monkeypatch):
    from dgclab.bench import network
    from dgclab.layers import dgc_layers, tuning

    monkeypatch.setattr(network, "NETWORKS", [("tiny", _tiny_dgc_resnet, (1, 8, 8), (1, 3))])
    tuning.clear()
    try:
        assert network.main(["--tune", "--no-train", "--rounds", "1", "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert not tuning.enabled()  # only inside the tuned calls
        assert len(tuning.choices()) >= 2  # a shape per batch at least
    finally:
        tuning.clear()
    rows = [line for line in out.splitlines() if line.strip().startswith("tiny")]
    assert len(rows) == 2 and "tuned/dense" in out
    layers = len(dgc_layers(_tiny_dgc_resnet()))
    for row in rows:  # every DGC layer counted once, by the execution it chose
        counts = row[row.index("(") + 1:row.index(")")]
        assert sum(int(part.split()[0]) for part in counts.split(", ")) == layers, row


def test_network_benchmark_layers_splits_each_network_and_skips_imagenet_when_told(
        capsys, monkeypatch):
    from dgclab.bench import network

    built = []

    def big():
        built.append("big")
        return _tiny_dgc_resnet()

    monkeypatch.setattr(network, "NETWORKS", [("tiny", _tiny_dgc_resnet, (1, 8, 8), (3, 2)),
                                              ("big", big, (1, 224, 224), (1,))])
    assert network.main(["--layers", "--no-imagenet", "--no-train", "--rounds", "1",
                         "--threads", "1"]) == 0
    assert built == []  # never built, in either table
    out = capsys.readouterr().out
    split = out[out.index("DGC layers and the rest"):].splitlines()
    parts = [line.split() for line in split if line.split()[:1] in (["tiny"], ["layers"],
                                                                     ["rest"], ["whole"])]
    assert [p[0] for p in parts] == ["tiny", "layers", "rest", "whole"]
    assert parts[1][:3] == ["layers", "in", "net"]
    assert parts[0][1:3] == ["2", "layers"]  # at the smallest batch
    assert "if its DGC layers cost what the static groups' do" in out


def test_layer_benchmark_family_computes_what_each_method_claims():
    import torch

    convs = layer.family(16, 16, 3)
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        outs = {n: m(x) for n, m in convs.items()}
    assert all(o.shape == (2, 16, 6, 6) for o in outs.values())
    torch.testing.assert_close(outs["lgc-cond"], outs["lgc"], rtol=1e-5, atol=1e-5)
    assert convs["dgc"].inactive_channels == 12


def test_network_twins_differ_from_the_dgc_network_only_in_the_conv():
    import torch
    from torch import nn

    from dgclab.bench.network import twin
    from dgclab.layers import DGCConv2d, GroupConv2d, dgc_layers, set_progress
    from dgclab.models import resnet_cifar

    dgc = resnet_cifar(8, width=8, conv="dgc", in_channels=1).eval()
    set_progress(dgc, 1.0)
    names = [n for n, _ in dgc_layers(dgc)]
    for kind, conv_type in (("dense", nn.Conv2d), ("group", GroupConv2d)):
        other = twin(dgc, kind)
        assert not dgc_layers(other) and len(dgc_layers(dgc)) == len(names)  # a copy
        for name in names:
            block, layer = other.get_submodule(name), dgc.get_submodule(name)
            assert isinstance(block[0], nn.BatchNorm2d) and isinstance(block[1], nn.ReLU)
            conv = block[2]
            assert type(conv) is conv_type and not isinstance(conv, DGCConv2d)
            assert (conv.in_channels, conv.out_channels, conv.stride) == (
                layer.in_channels, layer.out_channels, layer.stride)
            assert conv.groups == (layer.heads if kind == "group" else 1)
        assert not other.training
        assert other(torch.randn(2, 1, 12, 12)).shape == (2, 10)


def test_calibrated_networks_stay_finite_and_keep_their_momenta():
    """Uncalibrated, a random DGC resnet's last stage sees Inf (and the DGC layers there read
    every channel); calibrated, every DGC layer's input is finite."""
    import torch

    from dgclab.bench.network import calibrate
    from dgclab.layers import dgc_layers, set_progress
    from dgclab.models import resnet_cifar

    torch.manual_seed(0)
    model = resnet_cifar(20, width=32, conv="dgc", in_channels=1)
    set_progress(model, 1.0)
    model.layer1[0].bn1.momentum = 0.3
    finite = {}
    for name, dgc in dgc_layers(model):
        dgc.register_forward_pre_hook(
            lambda m, args, name=name: finite.__setitem__(name, bool(args[0].isfinite().all())))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        model.eval()(x)
        assert not all(finite.values())  # the failure calibrate is for
        calibrate(model, (1, 28, 28), batches=2, batch=8)
        assert not model.training and model.layer1[0].bn1.momentum == 0.3
        finite.clear()
        model(x)
    assert finite and all(finite.values())


def test_network_profile_lists_the_ops_of_a_forward():
    import torch

    from dgclab.bench.network import profile
    from dgclab.models import resnet_cifar

    table = profile(resnet_cifar(8, width=8, in_channels=1).eval(), torch.randn(1, 1, 12, 12),
                    calls=2, rows=5)
    lines = table.splitlines()
    assert lines[0].split() == ["op", "ms/forward", "share", "calls"]
    assert len(lines) == 7 and lines[-1].split()[:2] == ["all", "ops"]
    assert any("conv" in line for line in lines[1:-1])


def test_layer_benchmark_auto_table_runs(capsys, monkeypatch):
    monkeypatch.setattr(layer, "AUTO_SHAPES", [(8, 3, 6)])
    assert layer.main(["--auto", "--rounds", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "gather / mask at k =" in lines[1]
    assert [line.split()[:4] for line in lines[2:]] == [["8->8", "3x3", "6^2", str(b)]
                                                        for b in layer.AUTO_BATCHES]
    assert all(len(line.split()) == 8 for line in lines[2:])  # label (3), batch, 4 ratios


def test_layer_benchmark_scc_table_runs(capsys, monkeypatch):
    monkeypatch.setattr(layer, "SCC_SHAPES", [(16, 8, 4)])
    assert layer.main(["--scc", "--rounds", "1", "--threads", "1", "--batch", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 2 * 3 * 4  # batch 1 and 2, g = 2, 4, 8, o = 0 ... 0.75
    assert {r[-1] for r in rows} <= {"banded", "dense"}
    assert [float(r[9]) for r in rows[:4]] == [0.5] * 4  # MACs / dense of g = 2


def test_layer_benchmark_threshold_table_runs(capsys, monkeypatch):
    monkeypatch.setattr(layer, "SHAPES", [((16, 16, 3, 6), "")])
    assert layer.main(["--threshold", "--rounds", "1", "--threads", "1", "--batch", "4"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[3] for r in rows] == ["1", "4"] and all(float(r[4]) == 4.0 for r in rows)


def _fake_dynamics(folder, steps=60):
    """A dynamics.csv of two DGC layers over two epochs: probe metrics known per layer, and a
    loss that jumps by 1 at every step at which k grows (every 10th step)."""
    rows = []
    for epoch in range(3):
        for name, value in (("a", 0.1 * epoch), ("b", 0.1 * epoch + 0.2)):
            for metric in ("saliency_zero", "kept_zero", "saliency_spread", "probe_head_jaccard",
                           "chance_head_jaccard") + (("selection_churn",) if epoch else ()):
                rows.append((epoch * steps // 2, epoch, name, metric, value))
    for step in range(1, steps + 1):
        k = (step // 10) / 10
        loss = 2.0 + (1.0 if step % 10 == 0 else 0.0)
        epoch = 1 + (step - 1) // (steps // 2)
        rows += [(step, epoch, None, "loss", loss), (step, epoch, None, "k_frac", k)]
    pd.DataFrame(rows, columns=["step", "epoch", "layer", "metric", "value"]).to_csv(
        folder / accuracy.DYNAMICS, index=False)


def test_dynamics_summary_reads_published_dynamics(tmp_path, capsys):
    from dgclab.bench import dynamics

    results = tmp_path / "results"
    _fake_run(results / "dgc-seed0", "dgc", 0.88)
    _fake_dynamics(results / "dgc-seed0")
    _fake_run(results / "dgc-no-lasso-seed0", "dgc", 0.9)  # no dynamics.csv: not in the table
    _fake_run(tmp_path / "ref" / "dense-seed0", "dense", 0.92)
    group = results / "group-seed0"  # no DGC layer: per-step rows only, and BNs recomputed
    _fake_run(group, "group", 0.90)
    _fake_dynamics(group)
    steps = pd.read_csv(group / accuracy.DYNAMICS)
    steps.loc[steps.metric == "k_frac", "value"] = 0.0  # k never grows
    steps[steps.metric.isin(["loss", "k_frac"])].to_csv(group / accuracy.DYNAMICS, index=False)
    pd.DataFrame({"epoch": [1, 2], "k_frac": 0.0, "test_acc": 0.90,
                  "test_acc_recalibrated": [0.93, 0.905]}).to_csv(
        group / accuracy.RECALIBRATION, index=False)
    summary = dynamics.summarize_dynamics(
        results, ["dgc-seed0", "dgc-no-lasso-seed0", "dgc-seed1", "group-seed0"],
        reference={"dense (ref)": tmp_path / "ref" / "dense-seed0"})
    dgc = summary[summary.run == "dgc-seed0"].set_index("epoch")
    assert dgc.index.tolist() == [0, 1, 2]
    np.testing.assert_allclose(dgc.saliency_zero, [0.1, 0.2, 0.3])  # mean of layers a and b
    assert np.isnan(dgc.selection_churn[0]) and dgc.selection_churn[2] == pytest.approx(0.3)
    assert np.isnan(dgc.test_acc[0]) and dgc.test_acc[2] == pytest.approx(0.88)
    dense = summary[summary.run == "dense (ref)"]
    assert dense.epoch.tolist() == [1, 2] and dense.saliency_zero.isna().all()
    grouped = summary[summary.run == "group-seed0"]
    assert grouped.epoch.tolist() == [1, 2] and grouped.saliency_zero.isna().all()
    assert grouped.test_acc_recalibrated.tolist() == pytest.approx([0.93, 0.905])
    pd.testing.assert_frame_equal(pd.read_csv(results / dynamics.SUMMARY), summary,
                                  check_dtype=False)
    around = pd.read_csv(results / dynamics.LOSS_AROUND_K)
    at = around.set_index("offset")
    assert set(around.run) == {"dgc-seed0"}
    assert at.delta_mean[0] == pytest.approx(1.0 - 0.1)  # the jump, over a base of two jumps in 20
    for figure in ("dynamics.png", "loss_around_k.png", "accuracy_by_epoch.png"):
        assert (results / figure).is_file()
    out = capsys.readouterr().out
    assert "| 2 | 88.00 | 90.00 | 92.00 |" in out and "| dgc-seed0 | 0 | init |" in out
    assert "training loss (mean over the epoch) by epoch" in out
    assert "| group-seed0 | 2 | 1 | 1 | +3.00 | 1 | +1.75 |" in out  # the eval-mode dips
    assert dynamics.summarize_dynamics(results, ["dgc-no-lasso-seed0"]).empty
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dynamics.summarize_dynamics(results, ["dgc-seed0"], reference={"x": tmp_path / "nowhere"},
                                    plot=False)


def test_bn_recalibration_rows_of_a_run_killed_before_them_are_made_on_resume(tmp_path,
                                                                             monkeypatch):
    _tiny_runs(monkeypatch)
    kill = [True]

    class KilledBeforeTheRow(accuracy._Recalibrated):
        def on_epoch_end(self, trainer, epoch, row):
            if kill[0] and epoch == 1:  # after the checkpoint, before this file
                raise KeyboardInterrupt
            super().on_epoch_end(trainer, epoch, row)

    monkeypatch.setattr(accuracy, "_Recalibrated", KilledBeforeTheRow)
    with pytest.raises(KeyboardInterrupt):
        accuracy.train_run("dgc", 0, _args(tmp_path, 2))
    run = tmp_path / "runs" / "dgc-seed0"
    assert not (run / accuracy.RECALIBRATION).exists()
    kill[0] = False
    resumed = accuracy.train_run("dgc", 0, _args(tmp_path, 2))
    whole = accuracy.train_run("dgc", 0, _args(tmp_path / "whole", 2))
    for name in (accuracy.RECALIBRATION, accuracy.BN_DRIFT):  # as if never killed
        pd.testing.assert_frame_equal(pd.read_csv(resumed / name), pd.read_csv(whole / name),
                                      check_exact=False, rtol=1e-5)


def test_bn_recalibration_rows_leave_the_training_unchanged(tmp_path, monkeypatch):
    _tiny_runs(monkeypatch)
    published = accuracy.train_run("dgc", 0, _args(tmp_path / "with", 2))
    rows = pd.read_csv(published / accuracy.RECALIBRATION)
    metrics = pd.read_csv(published / "metrics.csv")
    assert rows.epoch.tolist() == [1, 2]
    assert rows.test_acc.tolist() == pytest.approx(metrics.test_acc.tolist())
    assert rows.test_acc_recalibrated.between(0, 1).all()
    import torch
    from dgclab.layers import dgc_layers
    from dgclab.train.run_folder import model_of, read_config

    drift = pd.read_csv(published / accuracy.BN_DRIFT)
    model = model_of(read_config(published / "config.json"))
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    dgc = [n for n, _ in dgc_layers(model)]
    for epoch in (1, 2):
        at = drift[drift.epoch == epoch]
        per_bn = at[at.metric == "drift"]
        changed = at[at.metric == "selection_changed"]
        assert per_bn.layer.tolist() == norms and changed.layer.tolist() == dgc
        assert (per_bn.value > 0).all() and changed.value.between(0, 1).all()
        row = rows.set_index("epoch").loc[epoch]
        assert row.bn_drift == pytest.approx(per_bn.value.mean(), rel=1e-5)
        assert row.selection_changed == pytest.approx(changed.value.mean(), rel=1e-5, abs=1e-6)
    from dgclab.bench.dynamics import summarize_dynamics

    summary = summarize_dynamics(published.parent, [published.name], plot=False)
    trained = summary[summary.epoch > 0]
    assert trained.test_acc_recalibrated.tolist() == rows.test_acc_recalibrated.tolist()
    assert trained.bn_drift.tolist() == rows.bn_drift.tolist()

    # which BNs' stale statistics cost the accuracy, at the latest checkpoint
    run = tmp_path / "with" / "runs" / published.name
    out = tmp_path / "swap"
    assert accuracy.main(["--bn-swap", str(run), "--results", str(out), "--threads", "1"]) == 0
    swap = pd.read_csv(out / f"bn_swap-{run.name}-epoch2.csv")
    assert swap.layer.tolist() == ["all stale", "all fresh"] + norms
    assert (swap.epoch == 2).all() and swap[["only_fresh", "only_stale"]].stack().between(0, 1).all()
    ends = swap.set_index("layer")
    assert ends.loc["all stale", "only_fresh"] == pytest.approx(rows.test_acc.iloc[-1])
    assert ends.loc["all fresh", "only_fresh"] == pytest.approx(
        rows.test_acc_recalibrated.iloc[-1])

    class Off:
        def __init__(self, run):
            pass

    monkeypatch.setattr(accuracy, "_Recalibrated", Off)
    without = accuracy.train_run("dgc", 0, _args(tmp_path / "without", 2))
    assert not (without / accuracy.RECALIBRATION).exists()
    columns = ["train_loss", "test_loss", "test_acc", "k_frac"]
    pd.testing.assert_frame_equal(pd.read_csv(without / "metrics.csv")[columns], metrics[columns])


def test_network_layer_split_adds_up_to_the_whole_network():
    import torch

    from dgclab.bench.network import calibrate, layer_split, twin
    from dgclab.layers import set_progress
    from dgclab.models import resnet_cifar

    torch.manual_seed(0)
    dgc = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    set_progress(dgc, 1.0)
    nets = {"dgc": dgc, "dense": twin(dgc, "dense"), "group": twin(dgc, "group")}
    for net in nets.values():
        calibrate(net, (1, 12, 12), batches=1, batch=4)
    split = layer_split(nets, torch.randn(2, 1, 12, 12), rounds=2)
    assert set(split) == {"dgc", "dense", "group"}
    for parts in split.values():
        assert parts["layers"] > 0 and parts["whole"] > 0 and parts["in_network"] > 0
        assert parts["rest"] == pytest.approx(parts["whole"] - parts["layers"])
    for net in nets.values():  # the timing hooks are gone (left, they would time every forward)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    with pytest.raises(ValueError, match="'dgc'"):
        layer_split({"dense": nets["dense"]}, torch.randn(1, 1, 12, 12))


def test_eval_mode_dips_count_the_epochs_the_running_statistics_cost_a_point():
    from dgclab.bench.dynamics import eval_mode_dips

    summary = pd.DataFrame({
        "run": ["a"] * 4 + ["b"] * 2 + ["c"],
        "epoch": [0, 1, 2, 3, 1, 2, 1],
        "test_acc": [float("nan"), 0.80, 0.85, 0.90, 0.90, 0.91, 0.5],
        "test_acc_recalibrated": [float("nan"), 0.84, 0.855, 0.91, 0.90, 0.905, float("nan")]})
    dips = eval_mode_dips(summary).set_index("run")
    assert list(dips.index) == ["a", "b"]  # c has no recomputed accuracy
    assert dips.loc["a", "epochs"] == 3 and dips.loc["a", "dips"] == 2
    assert dips.loc["a", "dip_epochs"] == "1, 3"  # a gap of exactly 1 point counts
    assert dips.loc["a", "largest_gap"] == pytest.approx(4.0)
    assert dips.loc["a", "largest_gap_epoch"] == 1
    assert dips.loc["a", "mean_gap"] == pytest.approx((4.0 + 0.5 + 1.0) / 3)
    assert dips.loc["b", "dips"] == 0 and dips.loc["b", "dip_epochs"] == ""
    assert dips.loc["b", "largest_gap"] == pytest.approx(0.0)
    assert eval_mode_dips(summary, points=5).dips.tolist() == [0, 0]
    assert eval_mode_dips(summary.drop(columns="test_acc_recalibrated")).empty
    with pytest.raises(ValueError, match="points=0"):
        eval_mode_dips(summary, points=0)
    with pytest.raises(TypeError, match="points='1'"):
        eval_mode_dips(summary, points="1")
    with pytest.raises(TypeError, match="summary"):
        eval_mode_dips(summary.to_dict())
    with pytest.raises(ValueError, match=r"\['epoch'\]"):
        eval_mode_dips(summary.drop(columns="epoch"))


def test_macs_benchmark_gives_the_papers_dydensenet86_figures(capsys, monkeypatch):
    from dgclab.bench import macs

    # DyResNet-18 at 224x224 is slow to count on 2 cores: the CIFAR-sized rows suffice here
    monkeypatch.setattr(macs, "MODELS", [m for m in macs.MODELS if m[2][-1] < 224])
    assert macs.main([]) == 0
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r}
    # the paper's own figures (SPEC: 71.04M MACs, 4,264,810 parameters)
    assert rows["DyDenseNet-86, CIFAR-10"][1:3] == ["4,264,810", "71.04M"]
    dense, group, dgc = (rows[f"resnet_cifar(20, 32, {c}), F-MNIST"] for c in ("dense", "group",
                                                                             "dgc"))
    assert dense[2] == dense[3]  # a dense net has one convention
    assert float(dgc[2][:-1]) < float(dense[2][:-1]) / 3 < float(dgc[3][:-1])  # paper vs mask


def test_record_benchmark_prints_every_variant_and_the_target(capsys):
    from dgclab.bench import record

    assert record.main(["--batch", "2", "--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for label in ("plain forward", "inside Recorder (selections)",
                  "inside Recorder (+saliency, +activations)", "after the Recorder exited"):
        assert label in out
    assert "(target <= 15%)" in out
    with pytest.raises(SystemExit):
        record.main(["--batch", "0"])
