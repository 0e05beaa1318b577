"""dgclab.viz.dynamics: the plots draw what the frames hold and refuse what they cannot read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from dgclab.analysis import loss_around_k_steps
from dgclab.viz import plot_loss_around_k, plot_selection_dynamics


def _frame(churn=0.2):
    rows = []
    for epoch in range(4):
        for layer in ("layer1.0.conv1", "layer2.0.conv1"):
            rows += [{"step": 10 * epoch, "epoch": epoch, "layer": layer, "metric": m, "value": v}
                     for m, v in (("saliency_zero", 0.3), ("probe_head_jaccard", 0.5),
                                  ("chance_head_jaccard", 0.25))]
            if epoch:
                rows.append({"step": 10 * epoch, "epoch": epoch, "layer": layer,
                             "metric": "selection_churn", "value": churn / epoch})
    return pd.DataFrame(rows)


def test_one_run_draws_a_line_per_layer():
    fig = plot_selection_dynamics(_frame())
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    churn_panel = fig.axes[0]
    assert len(churn_panel.lines) == 2  # two layers
    assert np.allclose(churn_panel.lines[0].get_ydata(), [20, 10, 20 / 3])  # in percent


def test_runs_draw_their_mean_with_chance_overlap():
    fig = plot_selection_dynamics({"official": _frame(), "flat init": _frame(0.1)},
                                  metrics=["selection_churn", "probe_head_jaccard"])
    churn, overlap = fig.axes
    assert len(churn.lines) == 2
    assert np.allclose(churn.lines[1].get_ydata(), [10, 5, 10 / 3])
    assert len(overlap.lines) == 4  # each run's overlap and its chance level
    assert np.allclose(overlap.lines[1].get_ydata(), 25)


def test_runs_without_dgc_layers_are_left_out_and_keep_the_colours():
    no_dgc = pd.DataFrame({"step": [0], "epoch": [1], "layer": [""], "metric": ["train_loss"],
                           "value": [0.5]})  # what a dense run's dynamics.csv holds
    both = plot_selection_dynamics({"dense": no_dgc, "dgc": _frame()}, metrics=["saliency_zero"])
    alone = plot_selection_dynamics({"dgc": _frame()}, metrics=["saliency_zero"])
    (panel,) = both.axes
    assert [t.get_text() for t in panel.get_legend().get_texts()] == ["dgc"]
    assert panel.lines[0].get_color() != alone.axes[0].lines[0].get_color()  # its place's colour


def test_selection_dynamics_refuses_bad_input():
    with pytest.raises(TypeError, match="must be a DataFrame"):
        plot_selection_dynamics([1, 2])
    with pytest.raises(ValueError, match="missing columns"):
        plot_selection_dynamics(pd.DataFrame({"epoch": [0]}))
    with pytest.raises(ValueError, match="'selectivity'"):
        plot_selection_dynamics(_frame(), metrics=["selectivity"])
    with pytest.raises(ValueError, match="at least one"):
        plot_selection_dynamics({})


def test_loss_around_k_draws_each_table():
    steps = pd.DataFrame({"step": np.arange(60), "loss": np.r_[np.ones(30), 2 * np.ones(30)],
                          "k_frac": np.r_[np.zeros(30), np.ones(30)]})
    table = loss_around_k_steps(steps, window=5)
    fig = plot_loss_around_k({"official": table, "empty": table.iloc[:0]})
    line = fig.axes[0].lines[0]
    assert line.get_label() == "official (1 k steps)"
    assert np.allclose(line.get_ydata(), [0] * 5 + [1] * 6)
    with pytest.raises(ValueError, match="missing"):
        plot_loss_around_k(table.drop(columns="delta_sem"))
    with pytest.raises(TypeError, match="DataFrame"):
        plot_loss_around_k({"x": "table"})
