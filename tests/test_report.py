"""dgclab.report: a self-contained HTML page about a run folder."""

import matplotlib

matplotlib.use("Agg")

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dgclab.record import Recording  # noqa: E402
from dgclab.report import MAX_LAYERS, write_report  # noqa: E402
from dgclab.train import METRIC_COLUMNS, TrainConfig, Trainer  # noqa: E402

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
# learning curves, k schedule, channel usage, overlap per layer, overlap matrices, dead filters,
# MACs: the figures of a DGC run besides one selection heat map per shown layer
FIXED_DGC_FIGURES = 7


def tiny_run(out, **overrides):
    config = TrainConfig(model="resnet8", dataset="synthetic", subset=128, epochs=1,
                         batch_size=64, eval_batch_size=128, **overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: on a busy 2-core machine, 2 threads are ~30x slower
    try:
        Trainer(config, out, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def dgc_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "dgc")


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "dense", conv="dense")


def read_page(path):
    assert path.is_file()
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"https?://", page), "the page must not reference any URL"
    assert "<script" not in page.lower()
    return page


def pngs(page):
    found = IMG.findall(page)
    for data in found:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    return found


def test_dgc_run_report(dgc_run):
    path = write_report(dgc_run)
    assert path == dgc_run / "report.html"
    page = read_page(path)
    layers = 8  # resnet8: 2 convs per block and 2 downsampling 1x1 convs, all DGC
    assert len(pngs(page)) == layers + FIXED_DGC_FIGURES
    for value in ("resnet8", "dgc", "synthetic", "sgd", "<td>0.1</td>", "0.0001", "1e-05",
                  "ξ = 0.75", "1 of 1", "layer3.0.conv2"):
        assert value in page, value
    assert "Not available" not in page
    assert not [p for p in os.listdir(dgc_run) if p.endswith(".tmp")]


def test_dense_run_report_skips_the_selection_sections(dense_run):
    assert not (dense_run / "test_recording.npz").exists()
    page = read_page(write_report(dense_run))
    assert len(pngs(page)) == 3  # learning curves, dead filters, MACs over epochs
    assert "no DGC layers (conv = &#x27;dense&#x27;)" in page
    assert "n/a (dense conv)" in page


def make_run_folder(path, layers=14, rows=1):
    """A run folder from hand-made files: config, `rows` epochs of metrics, a recording."""
    path.mkdir(parents=True)
    config = TrainConfig(model="resnet8", dataset="fashion-mnist", epochs=3, heads=2)
    (path / "config.json").write_text(config.to_json())
    row = dict.fromkeys(METRIC_COLUMNS, 0.5) | {"epoch": 1, "paper_macs": 1e6,
                                                "realized_macs": 1.2e6, "dead_filters": 0}
    pd.DataFrame([row | {"epoch": e + 1} for e in range(rows)]).to_csv(path / "metrics.csv",
                                                                      index=False)
    info = {"in_channels": 8, "out_channels": 8, "kernel_size": (3, 3), "stride": (1, 1),
            "padding": (1, 1), "dilation": (1, 1), "heads": 2, "hidden": 2, "pruning_rate": 0.5,
            "inactive_channels": 4, "input_hw": (4, 4)}
    g = torch.Generator().manual_seed(0)
    names = [f"block{i}.conv" for i in range(layers)]
    sel = {n: torch.rand(20, 2, 8, generator=g).argsort(-1) < 4 for n in names}
    Recording(sel, dict.fromkeys(names, info), labels=torch.arange(20) % 10).save(
        path / "test_recording.npz")
    return path


def test_caps_the_layers_and_escapes_text(tmp_path):
    run = make_run_folder(tmp_path / "a&b <run>", layers=MAX_LAYERS + 2, rows=1)
    page = read_page(write_report(run))
    assert len(pngs(page)) == MAX_LAYERS + FIXED_DGC_FIGURES
    assert f"Showing {MAX_LAYERS} of the {MAX_LAYERS + 2} DGC layers" in page
    assert "a&amp;b &lt;run&gt;" in page and "a&b <run>" not in page
    assert "1 of 3 (the run is not finished)" in page


def test_record_false_says_why(tmp_path):
    run = make_run_folder(tmp_path / "r", layers=1)
    (run / "test_recording.npz").unlink()
    config = json.loads((run / "config.json").read_text()) | {"record": False}
    (run / "config.json").write_text(json.dumps(config))
    page = read_page(write_report(run))
    assert "record = False" in page
    assert len(pngs(page)) == 4  # learning curves, k schedule, dead filters, MACs


def test_not_a_run_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_report(tmp_path / "empty")
    run = make_run_folder(tmp_path / "r", layers=1)
    (run / "metrics.csv").write_text(",".join(METRIC_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="metrics.csv holds no epoch"):
        write_report(run)
    (run / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        write_report(run)


def test_report_command_writes_the_page_and_names_a_folder_that_is_not_a_run(dgc_run, tmp_path,
                                                                           capsys):
    from dgclab.cli import main

    assert main(["report", str(dgc_run)]) == 0
    assert f"report: {dgc_run / 'report.html'}" in capsys.readouterr().out
    read_page(dgc_run / "report.html")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_write_is_atomic(tmp_path, monkeypatch):
    run = make_run_folder(tmp_path / "r", layers=1)
    (run / "report.html").write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(run)
    assert (run / "report.html").read_text() == "old"
    assert sorted(os.listdir(run)) == ["config.json", "metrics.csv", "report.html",
                                       "test_recording.npz"]

