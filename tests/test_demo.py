"""``make demo``'s main job, on synthetic data: it trains, reports, resumes and puts its result
beside the accuracy bench's published tables."""

import pandas as pd
import pytest

from dgclab import demo
from helpers import TINY


def _publish(root, folder, rows):
    (root / folder).mkdir(parents=True)
    pd.DataFrame(rows, columns=["conv", "seeds", "acc_mean"]).to_csv(
        root / folder / "summary.csv", index=False)


def test_published_accuracy_reads_each_budget_present_and_skips_the_others(tmp_path):
    assert demo.published_accuracy(tmp_path) == []
    _publish(tmp_path, "bench-accuracy-30", [("dense", 1, 0.9409), ("dgc", 2, 0.9178),
                                             ("dgc-flat-init", 1, 0.5)])
    (line,) = demo.published_accuracy(tmp_path)
    assert line.startswith("  30 epochs: dense 94.09 % (1 seed), DGC 91.78 % (2 seeds)   (")
    assert "flat" not in line  # ablations are not the recipe


def test_demo_trains_reports_and_reprints_a_finished_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO", demo.DEMO | TINY | {"conv": "dgc", "heads": 2})
    _publish(tmp_path, "bench-accuracy", [("dense", 2, 0.9194), ("group", 2, 0.9157),
                                          ("dgc", 2, 0.8817)])
    out = tmp_path / "demo"
    assert demo.run_demo(out=out, data_root=tmp_path, progress=False) == 0
    first = capsys.readouterr().out
    assert (out / "report.html").is_file() and (out / "test_recording.npz").is_file()
    assert len(pd.read_csv(out / "metrics.csv")) == TINY["epochs"]
    assert "layer1.0.conv1" in first and "after 2 epochs" in first
    assert ("8 epochs: dense 91.94 % (2 seeds), static groups 91.57 % (2 seeds), "
            "DGC 88.17 %") in first

    assert demo.run_demo(out=out, data_root=tmp_path, progress=False) == 0  # finished: reprinted
    again = capsys.readouterr().out
    assert len(pd.read_csv(out / "metrics.csv")) == TINY["epochs"]
    tail = lambda text: text[text.index("test accuracy"):]  # noqa: E731
    where = str(out.resolve())
    assert tail(again).replace(where, "") == tail(first).replace(where, "")


@pytest.mark.parametrize("field, value", [("epochs", 0), ("subset", 0), ("epochs", -2)])
def test_demo_rejects_a_budget_it_cannot_train_naming_it(tmp_path, field, value):
    # 0 once meant "the default" and trained 3 epochs without a word
    with pytest.raises(ValueError, match=f"{field}.*{value}"):
        demo.run_demo(out=tmp_path / "demo", data_root=tmp_path, progress=False, **{field: value})
    assert not (tmp_path / "demo").exists()


def test_demo_command_says_what_was_wrong(tmp_path, capsys):
    from dgclab.cli import main

    assert main(["demo", "--epochs", "0", "--root", str(tmp_path),
                 "--out", str(tmp_path / "demo")]) != 0
    assert "epochs" in capsys.readouterr().err
