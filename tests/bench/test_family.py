"""The family bench (dgclab.bench.family) on tiny synthetic models: the merge ratio closest to
the target MACs, the SG-CNN schedule stopped at the target, resuming without redoing finished
work, the summary's rows (missing methods marked) and the command line's checks."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from dgclab.analysis import count_macs, merge_similar
from dgclab.bench import accuracy, family
from dgclab.bench.transforms import save_merged
from dgclab.models import condense
from dgclab.train import METRIC_COLUMNS, TrainConfig
from dgclab.train.run_folder import model_of

from helpers import DENSE_TINY, write_dense_export

CONFIG = DENSE_TINY
SIZE = (1, 1, 28, 28)


@pytest.fixture
def dense(tmp_path):
    return write_dense_export(tmp_path / "dense.pt")


def _fake_run(folder, config, acc, epochs=2, macs=1e6):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    rows = [dict.fromkeys(METRIC_COLUMNS, 1.0) | {"epoch": e + 1, "test_acc": acc,
            "paper_macs": macs, "realized_macs": macs, "epoch_seconds": 60.0}
            for e in range(epochs)]
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(folder / "metrics.csv", index=False)


def _publish_merged(results, seed=0, acc=0.87, finetune_seconds=120.0):
    """A published merged model (a real merge of a tiny net) and its derived.csv row."""
    torch.manual_seed(0)
    merged = merge_similar(model_of(CONFIG).eval(), [torch.randn(8, 1, 28, 28)], ratio=0.5)
    name = family.export_name("merged", seed)
    save_merged(merged, CONFIG, results / name)
    row = {"method": "merged", "seed": seed, "test_acc": acc,
           "macs": int(count_macs(merged, SIZE)),
           "params": sum(p.numel() for p in merged.parameters()),
           "finetune_seconds": finetune_seconds, "base_run": "dense-seed0",
           "detail": "ratio 0.5", "export": name}
    pd.DataFrame([row], columns=family.DERIVED_COLUMNS).to_csv(results / "derived.csv",
                                                               index=False)
    return merged


def test_closest_ratio_picks_the_nearest_macs(one_thread):
    torch.manual_seed(0)
    model, loader = model_of(CONFIG).eval(), [torch.randn(16, 1, 28, 28)]
    ratios = (0.25, 0.5, 0.75)
    ratio, table = family.closest_ratio(model, loader, 1, SIZE, ratios)
    assert ratio == 0.75  # a tiny target: the smallest model
    assert table["ratio"].tolist() == list(ratios)
    macs = table["macs"].tolist()
    assert macs[0] > macs[1] > macs[2]
    assert macs[1] == count_macs(merge_similar(model, loader, ratio=0.5), SIZE)
    near_half = macs[1] + 0.3 * (macs[0] - macs[1])
    ratio, table = family.closest_ratio(model, loader, near_half, SIZE, ratios)
    assert ratio == 0.5
    assert table["distance"].tolist() == [m - near_half for m in macs]
    assert family.closest_ratio(model, loader, macs[1] + 0.7 * (macs[0] - macs[1]), SIZE,
                                ratios)[0] == 0.25
    with pytest.raises(ValueError, match=r"ratios\[1\]=1.0"):
        family.closest_ratio(model, loader, 1, SIZE, (0.5, 1.0))


def test_self_grouped_at_stops_at_the_target_and_resumes(dense, tmp_path, one_thread,
                                                          monkeypatch):
    run, limit = tmp_path / "sg", 0.6 * count_macs(model_of(CONFIG), SIZE)
    settings = dict(stages=(0.3, 0.6, 0.9), groups=2, subset=32, batch_size=32, tolerance=1.0,
                    log=None)
    result = family.self_grouped_at(dense, run, limit, **settings)
    stages = pd.read_csv(run / "stages.csv")
    # stage 1 keeps ~70 % of the grouped convs' MACs, stage 2 ~40 %: the schedule stops there
    assert stages["stage"].tolist() == [0, 1, 2]
    assert stages["macs"].iloc[1] > limit >= stages["macs"].iloc[2]
    assert result["stage"] == 2 and result["macs"] == stages["macs"].iloc[2]
    assert result["test_acc"] == stages["test_acc_after"].iloc[2]
    assert result["finetune_seconds"] == pytest.approx(stages["finetune_seconds"].sum())
    assert result["model_path"].is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("run_self_grouping called for a schedule at its target")

    monkeypatch.setattr(family, "run_self_grouping", no_training)
    again = family.self_grouped_at(dense, run, limit, **settings)
    assert (again["stage"], again["macs"], again["test_acc"]) == (2, result["macs"],
                                                                  result["test_acc"])
    # a schedule that already went past a larger target is read: its first stage there
    assert family.self_grouped_at(dense, run, stages["macs"].iloc[1], **settings)["stage"] == 1
    with pytest.raises(AssertionError, match="run_self_grouping called"):
        family.self_grouped_at(dense, run, stages["macs"].iloc[2] - 1, **settings)


def test_merged_at_resumes_without_work(dense, tmp_path, one_thread, monkeypatch):
    run = tmp_path / "cs"
    macs = count_macs(model_of(CONFIG), SIZE)
    row = family.merged_at(dense, run, 0.5 * macs, ratios=(0.25, 0.5, 0.75), subset=32,
                           similarity_images=32, log=None)
    search = pd.read_csv(run / "ratios.csv")
    assert row["ratio"] == search["ratio"].iloc[search["distance"].abs().argmin()]
    assert row["macs_merged"] == search["macs"][search["ratio"] == row["ratio"]].iloc[0]
    assert row["model_path"].is_file()

    def no_work(*args, **kwargs):
        raise AssertionError("merged again")

    monkeypatch.setattr(family, "merge_example", no_work)
    monkeypatch.setattr(family, "closest_ratio", no_work)
    again = family.merged_at(dense, run, 0.5 * macs, ratios=(0.25, 0.5, 0.75), subset=32,
                             similarity_images=32, log=None)
    assert {k: again[k] for k in ("ratio", "test_acc_finetuned", "macs_merged")} == \
        {k: row[k] for k in ("ratio", "test_acc_finetuned", "macs_merged")}


def test_summary_lists_every_method_and_marks_missing(tmp_path, one_thread, capsys):
    results, scratch = tmp_path / "family", tmp_path / "accuracy"
    _fake_run(scratch / "dense-seed0", CONFIG, 0.90)
    _fake_run(scratch / "dense-seed1", CONFIG, 0.92)
    lgc = TrainConfig(model="resnet8", width=8, conv="lgc", heads=4, dataset="synthetic",
                      download=False)
    _fake_run(scratch / "lgc-seed0", lgc, 0.88)
    merged = _publish_merged(results)
    assert family.main(["--summary-only", "--results", str(results), "--accuracy-results",
                        str(scratch), "--seeds", "2", "--epochs", "2", "--rounds", "1",
                        "--threads", "1"]) == 0
    summary = pd.read_csv(results / "summary.csv")
    assert summary["method"].tolist() == list(family.METHODS)
    assert list(summary.columns) == family.SUMMARY_COLUMNS
    by = summary.set_index("method")
    assert by["seeds"].to_dict() == {"dense": 2, "group": 0, "lgc": 1, "dgc": 0, "scc": 0,
                                     "sg-cnn": 0, "merged": 1}
    for method in ("group", "dgc", "scc", "sg-cnn"):
        assert by.loc[method, "detail"] == "missing" and math.isnan(by.loc[method, "acc_mean"])
        assert math.isnan(by.loc[method, "ms_per_image_b1"])
    assert by.loc["dense", "acc_mean"] == pytest.approx(0.91)
    assert by.loc["dense", "acc_std"] == pytest.approx(0.01 * 2 ** 0.5)
    # the executed LGC net is the condensed one: fewer parameters than its masked net
    masked = accuracy.timing_model(lgc)
    assert by.loc["lgc", "params"] == sum(p.numel() for p in condense(masked).parameters())
    assert by.loc["lgc", "params"] < sum(p.numel() for p in masked.parameters())
    # merged: the dense run's 2 minutes plus its 2 minutes of fine-tuning
    assert by.loc["merged", "train_minutes"] == pytest.approx(4.0)
    assert by.loc["merged", "finetune_minutes"] == pytest.approx(2.0)
    assert by.loc["merged", "params"] == sum(p.numel() for p in merged.parameters())
    assert (by.loc[["dense", "lgc", "merged"], ["ms_per_image_b1", "ms_per_image_b64"]]
            > 0).all().all()
    out = capsys.readouterr().out
    assert "| group | 0 | missing |" in out and "| dense | 2 | 91.00 ± 1.41 |" in out
    assert "missing (no finished seed below 2): group, dgc, scc, sg-cnn" in out


def test_main_skips_published_work_and_trains_the_rest(tmp_path, one_thread, monkeypatch,
                                                       capsys):
    results, scratch = tmp_path / "family", tmp_path / "accuracy"
    _fake_run(scratch / "dense-seed0", CONFIG, 0.90, epochs=1)
    _publish_merged(results)

    class NoTraining:
        def __init__(self, *args, **kwargs):
            raise AssertionError("trained a published run")

    monkeypatch.setattr(accuracy, "Trainer", NoTraining)
    monkeypatch.setattr(family, "run_self_grouping", NoTraining)
    monkeypatch.setattr(family, "merge_example", NoTraining)
    argv = ["--results", str(results), "--accuracy-results", str(scratch), "--out",
            str(tmp_path / "runs"), "--dense", str(tmp_path / "absent.pt"), "--epochs", "1",
            "--rounds", "1", "--threads", "1", "--no-progress"]
    assert family.main(argv + ["--methods", "dense,merged"]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 2
    with pytest.raises(AssertionError, match="trained a published run"):
        family.main(argv + ["--methods", "dense,scc"])  # scc has no published run


def test_command_line_rejects_bad_values(capsys):
    for argv, message in ((["--methods", "dense,bogus"], "bogus"),
                          (["--methods", "dense,dense"], "twice"),
                          (["--methods", ","], "got ','"),
                          (["--seeds", "0"], "--seeds must be a positive int, got 0"),
                          (["--rounds", "-1"], "--rounds must be a positive int, got -1")):
        with pytest.raises(SystemExit) as exit_:
            family.main(argv + ["--summary-only"])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        family.main(["--methods", "sg-cnn", "--dense", "absent.pt", "--results", "absent"])
    assert "--dense 'absent.pt' is not a file" in capsys.readouterr().err


def test_registered_as_a_benchmark():
    from dgclab.bench.__main__ import BENCHMARKS

    assert BENCHMARKS["family"] == "dgclab.bench.family"


def test_export_names():
    assert family.export_name("sg-cnn", 0) == "sg-cnn.pt"
    assert family.export_name("merged", 2) == "merged-seed2.pt"
    with pytest.raises(ValueError, match="method='dense'"):
        family.export_name("dense", 0)
