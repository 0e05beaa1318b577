"""The sparsity study's pilot (dgclab.study.pilot): per-epoch tables, resuming, stopping rules."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from dgclab.study import PILOT_COLUMNS, PILOT_WIDTHS, run_pilot, stop_reason
from dgclab.study.pilot import FILTERS_CSV, PILOT_CSV, PILOT_JSON, _PilotLog, main

TINY = dict(dataset="synthetic", subset=64, max_epochs=2, max_minutes=None, patience=None,
            progress=False, log=None)
TIMING = ["train_seconds", "analysis_seconds", "cpu_seconds", "cpu_minutes_total"]


class _Kill:
    """A callback after the pilot's own that stops the process after one epoch (as a kill
    between epochs would: checkpoint and rows of epoch 1 written)."""

    def on_epoch_end(self, trainer, epoch, row):
        raise KeyboardInterrupt


def _rows(folder):
    return pd.read_csv(folder / PILOT_CSV).drop(columns=TIMING)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-epoch pilot on 64 synthetic images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pilot") / "straight"
    try:
        table = run_pilot(out, **TINY)
    finally:
        torch.set_num_threads(threads)
    return out, table


def test_per_epoch_tables(straight):
    out, table = straight
    saved = pd.read_csv(out / PILOT_CSV)
    assert list(saved["epoch"]) == [1, 2] and list(table["epoch"]) == [1, 2]
    assert list(saved.columns[: len(PILOT_COLUMNS)]) == PILOT_COLUMNS
    layers = [f"bn{i}" for i in range(1, 8)]
    assert list(saved.columns[len(PILOT_COLUMNS):]) == (
        [f"dead_gamma.{b}" for b in layers] + [f"dead_activation.{b}" for b in layers])
    assert (saved["filters"] == sum(PILOT_WIDTHS)).all()  # 464 filters in 7 BN-ReLU layers
    for rule in ("dead_gamma", "dead_activation"):
        per_layer = saved[[f"{rule}.{b}" for b in layers]].sum(axis=1)
        assert (per_layer == saved[rule]).all()
    assert saved["step"].tolist() == [1, 2]  # 64 images at batch 64
    assert saved["cpu_minutes_total"].is_monotonic_increasing
    filters = pd.read_csv(out / FILTERS_CSV)
    assert filters.groupby("epoch").size().tolist() == [464, 464]
    assert json.loads((out / PILOT_JSON).read_text())["widths"] == list(PILOT_WIDTHS)
    assert len(pd.read_csv(out / "metrics.csv")) == 2  # the Trainer's own run folder


def test_resume_gives_the_rows_of_an_uninterrupted_run(straight, tmp_path, one_thread):
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_pilot(out, callbacks=[_Kill()], **TINY)
    assert pd.read_csv(out / PILOT_CSV)["epoch"].tolist() == [1]
    run_pilot(out, **TINY)
    pd.testing.assert_frame_equal(_rows(out), _rows(straight[0]))
    pd.testing.assert_frame_equal(pd.read_csv(out / FILTERS_CSV),
                                  pd.read_csv(straight[0] / FILTERS_CSV))
    # a finished pilot is not trained again, and its tables keep one row per epoch
    run_pilot(out, **TINY)
    assert pd.read_csv(out / PILOT_CSV)["epoch"].tolist() == [1, 2]


def test_a_row_lost_after_its_checkpoint_is_measured_again(straight, tmp_path, one_thread):
    # killed after epoch 1's checkpoint but before its rows: rows gone, checkpoint there
    out = tmp_path / "lost"
    with pytest.raises(KeyboardInterrupt):
        run_pilot(out, callbacks=[_Kill()], **TINY)
    (out / PILOT_CSV).unlink()
    (out / FILTERS_CSV).unlink()
    run_pilot(out, **TINY)
    pd.testing.assert_frame_equal(_rows(out), _rows(straight[0]))


def test_measuring_leaves_the_global_rng_alone(tmp_path, one_thread):
    # the checkpoint holds the RNG state from before the measurement: a resumed run must draw
    # the same augmentation as an uninterrupted one
    logger = _PilotLog(tmp_path, 2, None, None, False, lambda line: None)
    logger.loader = DataLoader(torch.randn(8, 1, 6, 6), 4)  # iterating it draws from the RNG
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU())
    row = dict(step=1, lr=0.0, train_loss=1.0, train_acc=0.5, test_loss=1.0, test_acc=0.5,
               epoch_seconds=0.1)
    before = torch.get_rng_state()
    logger._measure(SimpleNamespace(model=model), 1, row)
    assert torch.equal(torch.get_rng_state(), before)
    assert logger.table[["filters", "dead_gamma", "dead_activation"]].values.tolist() == [[4, 0, 0]]


def test_stop_reasons():
    def table(dead_gamma, dead_activation, cpu_seconds=60.0):
        n = len(dead_gamma)
        return pd.DataFrame({"epoch": range(1, n + 1), "dead_gamma": dead_gamma,
                             "dead_activation": dead_activation, "cpu_seconds": [cpu_seconds] * n,
                             "cpu_minutes_total": [cpu_seconds * (i + 1) / 60 for i in range(n)]})

    assert stop_reason(table([0, 0, 0], [0, 0, 0]), 10, None, 1) is None  # nothing dead yet
    assert stop_reason(table([0, 1, 3], [0, 0, 2]), 10, None, 2) is None  # still rising
    assert "stopped rising" in stop_reason(table([0, 3, 3, 3], [0, 2, 2, 2]), 10, None, 2)
    assert stop_reason(table([0, 3, 3, 3], [0, 2, 2, 4]), 10, None, 2) is None
    assert stop_reason(table([0, 3, 3, 3], [0, 2, 2, 2]), 10, None, None) is None
    assert "max_epochs" in stop_reason(table([0, 0], [0, 0]), 2, None, None)
    # 3 epochs of 1 CPU-minute: a fourth would pass 3.5 minutes, not 4
    assert "CPU cap" in stop_reason(table([0, 0, 0], [0, 0, 0]), 10, 3.5, None)
    assert stop_reason(table([0, 0, 0], [0, 0, 0]), 10, 4.0, None) is None


def test_other_settings_and_bad_arguments_are_refused(straight, capsys):
    out, _ = straight
    with pytest.raises(ValueError, match="widths"):
        run_pilot(out, **(TINY | dict(widths=(8,) * 7)))
    with pytest.raises(ValueError, match="max_epochs"):
        run_pilot(out, **(TINY | dict(max_epochs=3)))
    with pytest.raises(ValueError, match="patience"):
        run_pilot(out, **(TINY | dict(patience=-1)))
    assert main(["--out", str(out), "--dataset", "synthetic", "--subset", "64",
                 "--max-epochs", "3", "--no-progress"]) == 2
    assert "max_epochs was 2, now 3" in capsys.readouterr().out
