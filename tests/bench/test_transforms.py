"""The transformations' measured example (dgclab.bench.transforms) on tiny synthetic data: the
timing table, a merged ResNet saved and rebuilt, and the command line end to end."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dgclab.analysis import merge_similar
from dgclab.bench.transforms import forward_times, layer_sweep, load_merged, main, save_merged
from dgclab.layers import cpu_kernel
from dgclab.models import resnet_cifar
from dgclab.study.self_grouping import run_self_grouping
from dgclab.train.run_folder import model_of

from helpers import DENSE_TINY, write_dense_export

CONFIG = DENSE_TINY


@pytest.fixture
def dense(tmp_path):
    return write_dense_export(tmp_path / "dense.pt")


def test_forward_times_table(one_thread):
    models = {"a": resnet_cifar(8, width=4, in_channels=1),
              "b": resnet_cifar(8, width=8, in_channels=1)}
    table = forward_times(models, (1, 1, 28, 28), batches=(1, 2), rounds=1)
    assert list(table.columns) == ["model", "macs", "params", "ms_per_image_b1",
                                   "ms_per_image_b2"]
    assert table["macs"].iloc[0] < table["macs"].iloc[1]
    assert (table[["ms_per_image_b1", "ms_per_image_b2"]] > 0).all().all()


def test_layer_sweep_table(one_thread):
    table = layer_sweep(layers=((8, 5),), rates=(0.5,), groups=2, batches=(1, 2), rounds=1)
    assert len(table) == 2 and list(table["batch"]) == [1, 2]
    row = table.iloc[0]
    assert row["clusters"] == 2 and row["filters_per_cluster"] == 4
    # rate 0.5 keeps about half of each cluster's channels: the loop runs about half the MACs,
    # and padding to the largest cluster can only add to them
    assert 0.25 <= row["kept"] <= 0.75 and row["padded_macs"] >= row["kept"]
    ratios = ["masked_ms", "loop_vs_masked", "padded_vs_masked", "dense_vs_masked",
              "tuned_vs_masked"]
    assert (table[ratios] > 0).all().all()
    assert set(table["tuned_choice"]) <= {"loop", "dense"}
    assert ("loop_pt_vs_masked" in table) == cpu_kernel.available()


def test_merged_resnet_saves_and_rebuilds(tmp_path, one_thread):
    torch.manual_seed(0)
    model = model_of(CONFIG).eval()
    merged = merge_similar(model, [torch.randn(8, 1, 28, 28)], ratio=0.5)
    path = save_merged(merged, CONFIG, tmp_path / "merged.pt", metrics={"ratio": 0.5})
    rebuilt, config, metrics = load_merged(path)
    assert config == CONFIG and metrics == {"ratio": 0.5}
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), merged.eval()(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="dgclab-merged/1"):
        load_merged(_foreign(tmp_path))


def _foreign(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"format": "dgclab-model/1"}, path)
    return path


def test_command_line_end_to_end(dense, tmp_path, one_thread, capsys):
    run_self_grouping(dense, tmp_path / "sg", stages=(0.5,), groups=2, epochs=1, subset=32,
                      batch_size=32, log=None)
    assert main(["--model", str(dense), "--sg-run", str(tmp_path / "sg"),
                 "--sg-results", str(tmp_path / "sg-results"),
                 "--merge-out", str(tmp_path / "cs"),
                 "--merge-results", str(tmp_path / "cs-results"),
                 "--ratio", "0.5", "--subset", "32", "--similarity-images", "64",
                 "--rounds", "1", "--threads", "1"]) == 0
    timing = pd.read_csv(tmp_path / "sg-results" / "timing.csv")
    kernel = ["grouped-pt-1"] if cpu_kernel.available() else []  # PyTorch's loop beside it
    assert timing["model"].tolist() == ["dense", "masked-1", "grouped-1", *kernel, "padded-1"]
    assert timing["macs"].iloc[2] < timing["macs"].iloc[1] == timing["macs"].iloc[0]
    assert len(pd.read_csv(tmp_path / "sg-results" / "stages.csv")) == 2
    merge = pd.read_csv(tmp_path / "cs-results" / "merge.csv")
    assert merge["macs_merged"].iloc[0] < merge["macs_dense"].iloc[0]
    assert "test_acc_finetuned" in merge.columns
    assert (tmp_path / "cs" / "model.pt").is_file()
    assert "grouped-1" in capsys.readouterr().out
