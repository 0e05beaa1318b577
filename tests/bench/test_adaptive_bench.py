"""python -m dgclab.bench adaptive on a tiny DGC network trained on synthetic data."""

from __future__ import annotations

import pandas as pd
import pytest

from dgclab.bench import adaptive
from dgclab.data import load_dataset
from dgclab.train import Trainer, export_model

from helpers import tiny


@pytest.mark.filterwarnings("ignore:calibrate_threshold")  # 96 images: coarse rates
@pytest.mark.parametrize("selection", ["head-wise", "threshold"])
def test_adaptive_bench_writes_its_tables(tmp_path, monkeypatch, capsys, selection):
    run = tmp_path / "run"
    Trainer(tiny(epochs=1, selection=selection), run, progress=False).fit()
    export_model(run, tmp_path / "model.pt")
    monkeypatch.setattr(adaptive, "load_dataset",  # synthetic images in place of Fashion-MNIST
                        lambda name, root, augment: load_dataset("synthetic", subset=96,
                                                                  augment=False))
    assert adaptive.main(["--model", str(tmp_path / "model.pt"), "--images", "96",
                          "--rates", "0.5,0.75", "--calibration-batches", "1", "--threads", "1",
                          "--out", str(tmp_path / "out")]) == 0
    sweep = pd.read_csv(tmp_path / "out" / "sweep.csv")
    assert sweep[["rule", "target"]].values.tolist() == [
        ["head-wise", 0.5], ["head-wise", 0.75], ["threshold", 0.5], ["threshold", 0.75]]
    for rule in ("head-wise", "threshold"):
        assert len(pd.read_csv(tmp_path / "out" / f"per_image_{rule}.csv")) == 96
    out = capsys.readouterr().out
    assert "threshold - head-wise accuracy per xi" in out and "by class" in out
    # a DGC-G net is first measured as it was trained, with its own threshold
    assert ("as trained (threshold" in out) == (selection == "threshold")
