"""``python -m dgclab.bench gcn``: its plumbing on the karate club (the numbers are measured by
running it, data/bench-gcn)."""

from __future__ import annotations

import pandas as pd
import pytest

from dgclab.bench import gcn


def test_gcn_bench_prints_and_writes_its_tables(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setattr("dgclab.data.fashion_mnist.DEBIAN_DIR", tmp_path / "no-debian-package")
    out = tmp_path / "out"
    code = gcn.main(["--datasets", "karate", "fashion-mnist", "--models", "plain", "multipath",
                     "--seeds", "2", "--hidden", "8", "--epochs", "12", "--patience", "4",
                     "--root", str(tmp_path / "no-data"), "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "fashion-mnist: skipped (Fashion-MNIST is not available" in text  # nothing downloaded
    assert "| karate | plain | 442 | 2 |" in text  # (34 + 1) 8 + 2 (9) 8 + 9 * 2 parameters
    assert "| karate | multipath | 2 |" in text and "| karate | multipath |" in text
    runs = pd.read_csv(out / "runs.csv")
    assert runs[["model", "seed"]].values.tolist() == [["plain", 0], ["multipath", 0],
                                                       ["plain", 1], ["multipath", 1]]
    assert pd.read_csv(out / "summary.csv")["seeds"].tolist() == [2, 2]
    assert len(pd.read_csv(out / "paths.csv")) == 2 and len(pd.read_csv(out / "paired.csv")) == 1


def test_gcn_bench_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        gcn.main(["--datasets", "cora"])
    assert "unknown datasets ['cora']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gcn.main(["--seeds", "0"])
