"""bench.pruning: finds a study's BasicNet runs, removes their dead filters, times both."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dgclab.bench import pruning
from dgclab.train import Trainer, load_checkpoint

from helpers import tiny


def _study(tmp_path, epochs=1):
    study = tmp_path / "study"
    config = tiny(model="basicnet-half", conv="dense", subset=32, batch_size=16, epochs=epochs,
                  record=False)
    Trainer(config, study / "basicnet-seed0", progress=False).fit()
    return study


def _kill_filters(run, layer="features.bn6.weight", n=5):
    path = run / "checkpoint.pt"
    state = load_checkpoint(path)
    state["model"][layer][:n] = 0.0  # |gamma| < 1e-3: dead by the study's rule
    torch.save(state, path)


def test_times_a_run_with_dead_filters_and_lists_one_without(tmp_path, capsys):
    study = _study(tmp_path)
    untouched = pruning.time_pruning(study, rounds=1)
    assert untouched.filters_removed.tolist() == [0] and untouched.ratio_b1.isna().all()
    _kill_filters(study / "basicnet-seed0")
    assert pruning.main(["--study", str(study), "--rounds", "1", "--threads", "1"]) == 0
    table = pd.read_csv(study / "pruning_time.csv")
    assert table.columns.tolist() == pruning.COLUMNS
    row = table.iloc[0]
    assert row.filters_removed == 5 and row.macs_after < row.macs_before
    assert row.ms_after_b64 > 0 and row.ratio_b1 == pytest.approx(row.ms_after_b1
                                                                    / row.ms_before_b1)
    assert "| basicnet-seed0 | 5 / 464 |" in capsys.readouterr().out


def test_unfinished_runs_are_skipped_and_bad_arguments_refused(tmp_path, capsys):
    from helpers import StopAfter

    config = tiny(model="basicnet-half", conv="dense", subset=32, batch_size=16, epochs=2,
                  record=False)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "s" / "r-seed0", progress=False,
                callbacks=[StopAfter(1)]).fit()
    assert pruning.time_pruning(tmp_path / "s", rounds=1).empty
    assert "epoch 1 of 2, not finished" in capsys.readouterr().out
    for argv in (["--study", str(tmp_path / "absent")],
                 ["--study", str(tmp_path), "--rounds", "0"]):
        with pytest.raises(SystemExit):
            pruning.main(argv)
