"""The staged SG-CNN schedule (dgclab.study.self_grouping): its table, its files, resuming a
killed schedule, the saved models and the arguments it refuses. Tiny synthetic data only."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from dgclab.analysis import to_grouped
from dgclab.analysis.self_grouping import ChannelMask
from dgclab.study.self_grouping import (
    EXPORT_FORMAT,
    STAGE_COLUMNS,
    load_self_grouped,
    main,
    run_self_grouping,
    save_self_grouped,
)
from dgclab.train import TrainConfig
from dgclab.train.run_folder import model_of

TINY = dict(stages=(0.3, 0.6), groups=2, epochs=2, subset=64, batch_size=32, progress=False,
            log=None)


class _Kill:
    """Stops the process after the first epoch of stage 2 (its checkpoint is written, its row
    and model.pt are not), as a kill would."""

    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, trainer, epoch, row):
        self.epochs += 1
        if self.epochs == 3:  # stage 1: epochs 1-2; stage 2: epoch 1
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A tiny dense resnet8 written as ``dgclab export`` writes it."""
    torch.manual_seed(0)
    config = TrainConfig(model="resnet8", width=4, conv="dense", dataset="synthetic",
                         download=False)
    path = tmp_path_factory.mktemp("sg") / "dense.pt"
    torch.save({"format": EXPORT_FORMAT, "config": config.to_dict(),
                "model": model_of(config).state_dict(), "epoch": 0, "metrics": {}}, path)
    return path


@pytest.fixture(scope="module")
def straight(dense, tmp_path_factory):
    """An uninterrupted two-stage schedule."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sg") / "straight"
    try:
        table = run_self_grouping(dense, out, **TINY)
    finally:
        torch.set_num_threads(threads)
    return out, table


def _without_time(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["finetune_seconds"])


def test_stage_table_and_files(straight):
    out, table = straight
    assert list(table.columns) == STAGE_COLUMNS
    assert table["stage"].tolist() == [0, 1, 2]
    assert table["rate"].tolist() == [0.0, 0.3, 0.6]
    assert table["kept"].iloc[0] == 1.0
    assert table["kept"].is_monotonic_decreasing and table["kept"].iloc[-1] < 0.6
    assert table["macs"].is_monotonic_decreasing and table["macs"].iloc[-1] < table["macs"][0]
    assert table["params"].iloc[-1] < table["params"].iloc[0]
    pd.testing.assert_frame_equal(pd.read_csv(out / "stages.csv"), table, check_dtype=False)
    for stage in (1, 2):
        folder = out / f"stage-{stage:02d}"
        assert len(pd.read_csv(folder / "metrics.csv")) == 2  # the Trainer's run folder
        assert set(json.loads((folder / "before.json").read_text())) == {"test_loss",
                                                                         "test_acc"}
        assert pd.read_csv(folder / "groups.csv")["filters"].sum() > 0
    assert json.loads((out / "schedule.json").read_text())["stages"] == [0.3, 0.6]


def test_saved_stage_rebuilds_with_weights_only(straight):
    out, table = straight
    path = out / "stage-02" / "model.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["grouped"] and all(len(s) == 2 for s in payload["grouped"].values())
    model, config, metrics = load_self_grouped(path)
    assert config.model == "resnet8" and metrics["stage"] == 2
    masks = [m for m in model.modules() if isinstance(m, ChannelMask)]
    kept = sum(float(m.mask.sum()) for m in masks) / sum(m.mask.numel() for m in masks)
    assert kept == pytest.approx(table["kept"].iloc[-1])
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(to_grouped(model)(x), model(x), atol=1e-5, rtol=0)
    # and it saves again to the same state
    again = save_self_grouped(model, config, path.parent / "again.pt")
    reloaded, _, _ = load_self_grouped(again)
    for (k, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_killed_schedule_resumes_to_the_uninterrupted_result(straight, dense, tmp_path,
                                                             one_thread):
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_self_grouping(dense, out, callbacks=[_Kill()], **TINY)
    assert pd.read_csv(out / "stages.csv")["stage"].tolist() == [0, 1]
    assert not (out / "stage-02" / "model.pt").exists()
    table = run_self_grouping(dense, out, **TINY)
    pd.testing.assert_frame_equal(_without_time(table), _without_time(straight[1]))
    resumed, _, _ = load_self_grouped(out / "stage-02" / "model.pt")
    plain, _, _ = load_self_grouped(straight[0] / "stage-02" / "model.pt")
    for (k, a), (_, b) in zip(resumed.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    # a finished schedule is not run again
    assert run_self_grouping(dense, out, **TINY)["stage"].tolist() == [0, 1, 2]


def test_until_stops_after_the_first_stage_it_accepts_and_goes_on_later(straight, dense,
                                                                        tmp_path, one_thread):
    out = tmp_path / "until"
    seen = []

    def after_stage_one(table):
        seen.append(table["stage"].max())
        return table["stage"].max() >= 1

    assert run_self_grouping(dense, out, until=after_stage_one, **TINY)["stage"].tolist() == [0, 1]
    assert seen == [1] and not (out / "stage-02").exists()
    # a finished stage is asked again on a rerun; a laxer rule goes on to the end
    table = run_self_grouping(dense, out, until=lambda t: False, **TINY)
    pd.testing.assert_frame_equal(_without_time(table), _without_time(straight[1]))


def test_other_settings_are_refused(straight, dense):
    with pytest.raises(ValueError, match="stages was"):
        run_self_grouping(dense, straight[0], **(TINY | {"stages": (0.3, 0.7)}))


def test_command_line_prints_the_finished_table(straight, dense, capsys):
    argv = ["--model", str(dense), "--out", str(straight[0]), "--stages", "0.3,0.6",
            "--groups", "2", "--epochs", "2", "--subset", "64", "--batch-size", "32",
            "--no-progress"]
    assert main(argv) == 0
    assert "test_acc_after" in capsys.readouterr().out
    assert main(argv[:5] + ["0.3,1.5"] + argv[6:]) == 2
    assert "stages" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, error, match", [
    ({"stages": ()}, ValueError, r"stages=\(\)"),
    ({"stages": (0.5, 1.0)}, ValueError, "1.0"),
    ({"stages": (0.0,)}, ValueError, "0.0"),
    ({"stages": (0.6, 0.3)}, ValueError, "increasing"),
    ({"stages": "0.5"}, TypeError, "str"),
    ({"groups": 0}, ValueError, "groups"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"init": "kmeans"}, ValueError, "kmeans"),
    ({"lr": -1.0}, ValueError, "lr"),
])
def test_bad_arguments(dense, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        run_self_grouping(dense, tmp_path / "bad", **(TINY | kwargs))


def test_missing_or_foreign_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        run_self_grouping(tmp_path / "nowhere.pt", tmp_path / "out", **TINY)
    torch.save({"format": "something/else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="something/else"):
        load_self_grouped(tmp_path / "other.pt")
