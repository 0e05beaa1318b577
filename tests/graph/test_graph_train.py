"""Training with the epoch chosen on validation, the seed protocol, path CKA and the figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from dgclab.graph import (
    HISTORY_COLUMNS,
    MultiPathGCN,
    build_model,
    fit,
    format_paired,
    format_paths,
    format_summary,
    karate_graph,
    linear_cka,
    paired_differences,
    path_similarity,
    plot_path_similarity,
    plot_protocols,
    plot_selection,
    random_split,
    run_protocol,
    summarize,
)


@pytest.fixture(scope="module")
def karate():
    return karate_graph()


def test_fit_selects_on_validation_and_keeps_those_weights(karate, one_thread):
    split = random_split(karate, 1)
    torch.manual_seed(0)
    model = build_model("plain", 34, 2, hidden=8)
    result = fit(model, karate, split, max_epochs=40, patience=None)
    h = result.history
    assert list(h.columns) == list(HISTORY_COLUMNS) and h["epoch"].tolist() == list(range(1, 41))
    # the val-selected epoch: best val accuracy, ties to the lower val loss, then the earlier
    order = h.sort_values(["val_acc", "val_loss", "epoch"], ascending=[False, True, True])
    assert result.val_epoch == int(order["epoch"].iloc[0])
    assert result.val_selected == h["test_acc"].iloc[result.val_epoch - 1]
    assert result.test_selected == h["test_acc"].max() >= result.val_selected
    assert h["test_acc"].iloc[result.test_epoch - 1] == result.test_selected
    with torch.no_grad():  # the model holds the val-selected weights
        acc = (model(karate.x, karate.adjacency()).argmax(1)[split.val] == karate.y[split.val])
    assert float(acc.double().mean()) == h["val_acc"].iloc[result.val_epoch - 1]


def test_early_stopping(karate, one_thread):
    split = random_split(karate, 0)
    torch.manual_seed(0)
    result = fit(build_model("mlp", 34, 2, hidden=4), karate, split, max_epochs=500, patience=5)
    assert len(result.history) == result.val_epoch + 5 < 500


def test_fit_bad_input(karate):
    model = build_model("plain", 34, 2, hidden=4)
    split = random_split(karate, 0)
    with pytest.raises(ValueError, match="lr must be > 0, got lr=0"):
        fit(model, karate, split, lr=0)
    with pytest.raises(TypeError, match="split must be a Split, got dict"):
        fit(model, karate, {"train": split.train})
    with pytest.raises(ValueError, match="patience must be >= 1"):
        fit(model, karate, split, patience=0)


def test_run_protocol_summary_and_paired(karate, one_thread):
    runs, paths = run_protocol(karate, ["plain", "multipath", "multipath-reuse"], seeds=[0, 1],
                               hidden=8, max_epochs=15, patience=5)
    assert runs.shape[0] == 6 and set(runs["params"]) == {runs["params"].iloc[0]}
    assert (runs["test_selected"] >= runs["val_selected"]).all()
    assert paths[["model", "seed"]].values.tolist() == [
        ["multipath", 0], ["multipath-reuse", 0], ["multipath", 1], ["multipath-reuse", 1]]
    assert paths[["cka", "cka_init", "cka_shuffled"]].apply(lambda c: c.between(0, 1)).all().all()
    again, _ = run_protocol(karate, ["plain"], seeds=[1], hidden=8, max_epochs=15, patience=5)
    cols = ["val_epoch", "val_selected", "test_epoch", "test_selected"]
    assert again[cols].values.tolist() == runs[runs["model"] == "plain"][cols].values[1:].tolist()

    summary = summarize(runs)
    assert summary["model"].tolist() == ["plain", "multipath", "multipath-reuse"]
    row = summary.iloc[0]
    plain = runs[runs["model"] == "plain"]
    assert row["val_selected_mean"] == pytest.approx(plain["val_selected"].mean())
    assert row["val_selected_std"] == pytest.approx(plain["val_selected"].std(ddof=1))
    assert row["optimism"] == pytest.approx((plain["test_selected"] - plain["val_selected"]).mean())
    table = format_summary(summary)
    assert table.count("\n") == 4 and "| karate | plain |" in table
    for fmt, name in ((format_summary, "summary"), (format_paired, "paired"),
                      (format_paths, "paths")):
        with pytest.raises(TypeError, match=f"{name} must be a DataFrame, got list"):
            fmt([])

    paired = paired_differences(runs)
    assert paired["model"].tolist() == ["multipath", "multipath-reuse"]
    diff = (runs[runs["model"] == "multipath"]["val_selected"].to_numpy()
            - plain["val_selected"].to_numpy())
    assert paired["diff_mean"].iloc[0] == pytest.approx(diff.mean())
    assert paired["wins"].iloc[0] == (diff > 0).sum()
    assert format_paired(paired).count("| karate | multipath") == 2
    table = format_paths(paths)
    assert table.count("\n") == 3 and "| karate | multipath-reuse |" in table

    with pytest.raises(ValueError, match="model must be one of"):
        run_protocol(karate, ["deep"], seeds=[0])
    with pytest.raises(ValueError, match="no rows"):
        summarize(runs.iloc[:0])
    with pytest.raises(TypeError, match="runs must be a DataFrame, got list"):
        summarize(runs.to_dict("records"))
    with pytest.raises(ValueError, match=r"runs must have the columns .*'seed'"):
        summarize(runs.drop(columns="seed"))


def test_linear_cka_against_its_hsic_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.randn(50, 4, generator=g) + 2
    n = 50
    h = torch.eye(n, dtype=torch.float64) - 1 / n  # centring matrix

    def hsic(k, l):
        return torch.trace(k @ h @ l @ h)

    kx, ky = x.double() @ x.double().T, y.double() @ y.double().T
    want = hsic(kx, ky) / (hsic(kx, kx) * hsic(ky, ky)).sqrt()
    assert linear_cka(x, y) == pytest.approx(float(want), abs=1e-12)
    q = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    assert linear_cka(x, 5 * x @ q + 3) == pytest.approx(1.0, abs=1e-12)  # rotation, scale, shift
    assert 0 <= linear_cka(x, y) < 0.5
    assert np.isnan(linear_cka(x, torch.zeros(50, 3)))  # a dead path has nothing to compare
    with pytest.raises(ValueError, match="same N samples"):
        linear_cka(x, y[:10])


def test_path_similarity(karate):
    torch.manual_seed(0)
    model = MultiPathGCN(34, 2, hidden=16)
    got = path_similarity(model, karate)
    a, b = model.paths(karate.x, karate.adjacency())
    assert got["cka"] == pytest.approx(linear_cka(a.detach(), b.detach()))
    assert got["cka_shuffled"] < got["cka"]
    with pytest.raises(TypeError, match="multipath model"):
        path_similarity(build_model("plain", 34, 2, 4), karate)


def test_figures(karate, one_thread):
    split = random_split(karate, 0)
    torch.manual_seed(0)
    result = fit(build_model("plain", 34, 2, hidden=4), karate, split, max_epochs=10)
    assert isinstance(plot_selection(result, title="karate"), Figure)
    summary = pd.DataFrame({"dataset": ["a", "a", "b"], "model": ["plain", "multipath", "plain"],
                            "val_selected_mean": [0.8, 0.81, 0.9],
                            "val_selected_std": [0.01, 0.02, float("nan")],
                            "test_selected_mean": [0.82, 0.83, 0.91],
                            "test_selected_std": [0.01, 0.01, float("nan")]})
    fig = plot_protocols(summary)
    assert [a.get_title() for a in fig.axes] == ["a", "b"]
    paths = pd.DataFrame({"dataset": ["a", "a"], "model": ["multipath"] * 2, "seed": [0, 1],
                          "cka": [0.9, 0.95], "cka_init": [0.8, 0.85],
                          "cka_shuffled": [0.01, 0.02]})
    assert isinstance(plot_path_similarity(paths), Figure)
    with pytest.raises(ValueError, match="columns"):
        plot_protocols(summary.drop(columns="model"))
    with pytest.raises(TypeError, match="summary must be a DataFrame, got dict"):
        plot_protocols(summary.to_dict())
    with pytest.raises(TypeError, match="paths must be a DataFrame, got list"):
        plot_path_similarity([paths])
    with pytest.raises(TypeError, match="FitResult"):
        plot_selection(result.history)
