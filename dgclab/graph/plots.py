"""Figures of the node-classification protocol.

Pure functions, as in ``dgclab.viz``: ``plot_x(data, ax=None) -> Figure`` draws into ``ax`` or
into a new ``Figure`` made without pyplot, and changes no global state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..checks import check_type
from ..viz.style import PALETTE, TEST, TRAIN, panel_grid, single_axes, style_axes
from .train import FitResult

__all__ = ["plot_selection", "plot_protocols", "plot_path_similarity"]

VAL = PALETTE[2]


def plot_selection(result: FitResult, ax: Axes | None = None, title: str = "") -> Figure:
    """Train, validation and test accuracy over epochs, with the two epochs that get reported.

    The dashed line is the epoch chosen on validation (what dgclab reports), the dotted one the
    epoch with the best test accuracy (what the released code reports).
    """
    if not isinstance(result, FitResult):
        raise TypeError(f"result must be a FitResult, got {type(result).__name__}")
    fig, ax = single_axes(ax, (6.4, 3.6))
    h = result.history
    for column, color, label in (("train_acc", TRAIN, "train"), ("val_acc", VAL, "validation"),
                                 ("test_acc", TEST, "test")):
        ax.plot(h["epoch"], h[column], color=color, lw=1.4, label=label)
    ax.axvline(result.val_epoch, color=VAL, ls="--", lw=1,
               label=f"val-selected: test {100 * result.val_selected:.1f} %")
    ax.axvline(result.test_epoch, color=TEST, ls=":", lw=1.2,
               label=f"test-selected: test {100 * result.test_selected:.1f} %")
    ax.set(xlabel="epoch", ylabel="accuracy", title=title)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9, edgecolor="none")
    style_axes(ax)
    return fig


def plot_protocols(summary: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Val-selected beside test-selected test accuracy (mean ± std over seeds), one panel per
    dataset.

    Args:
        summary: ``dgclab.graph.summarize``'s table.
        ax: replaced by the panels (one per dataset).
    """
    need = ["dataset", "model", "val_selected_mean", "val_selected_std", "test_selected_mean",
            "test_selected_std"]
    check_type("summary", summary, pd.DataFrame)
    if set(need) - set(summary.columns):
        raise ValueError(f"summary must have the columns {need}, got {list(summary.columns)}")
    if summary.empty:
        raise ValueError("summary has no rows to plot")
    datasets = list(dict.fromkeys(summary["dataset"]))
    fig, axes = panel_grid(ax, 1, len(datasets), (3.6 * len(datasets) + 0.8, 3.6))
    for a, dataset in zip(axes[0], datasets):
        rows = summary[summary["dataset"] == dataset]
        x = np.arange(len(rows))
        for offset, key, color, marker, label in (
                (-0.12, "val_selected", VAL, "o", "val-selected (dgclab)"),
                (0.12, "test_selected", TEST, "D", "test-selected (released code)")):
            a.errorbar(x + offset, 100 * rows[f"{key}_mean"], yerr=100 * rows[f"{key}_std"],
                       fmt=marker, color=color, ms=5, capsize=3, lw=1, label=label)
        a.set_xticks(x, rows["model"], rotation=30, ha="right", fontsize=8)
        a.set_xlim(-0.6, len(rows) - 0.4)
        a.set(title=dataset, ylabel="test accuracy (%), mean ± std")
        style_axes(a, "y")
    axes[0][0].legend(fontsize=8, loc="lower right", framealpha=0.9, edgecolor="none")
    return fig


def plot_path_similarity(paths: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """CKA between the two paths per dataset and variant: at init, trained, shuffled baseline.

    Args:
        paths: ``run_protocol``'s second table (dataset, model, seed, cka, cka_init,
            cka_shuffled); one point per seed, the bar is the mean.
    """
    need = ["dataset", "model", "cka", "cka_init", "cka_shuffled"]
    check_type("paths", paths, pd.DataFrame)
    if set(need) - set(paths.columns):
        raise ValueError(f"paths must have the columns {need}, got {list(paths.columns)}")
    if paths.empty:
        raise ValueError("paths has no rows to plot")
    fig, ax = single_axes(ax, (7.2, 3.4))
    groups = list(paths.groupby(["dataset", "model"], sort=False))
    x = np.arange(len(groups))
    for offset, column, color, label in ((-0.27, "cka_init", PALETTE[7], "at initialisation"),
                                         (0.0, "cka", PALETTE[4], "trained (val-selected)"),
                                         (0.27, "cka_shuffled", "#cccccc",
                                          "trained, nodes shuffled (chance)")):
        means = [g[column].mean() for _, g in groups]
        ax.bar(x + offset, means, 0.27, color=color, label=label)
        for i, (_, g) in enumerate(groups):
            ax.plot(np.full(len(g), x[i] + offset), g[column], ".", color="#333333", ms=3)
    ax.set_xticks(x, [f"{d}\n{m}" for (d, m), _ in groups], fontsize=8)
    ax.set(ylabel="linear CKA(path a, path b)", ylim=(0, 1.05))
    ax.legend(fontsize=8, framealpha=0.9, edgecolor="none", ncols=3, loc="upper center",
              bbox_to_anchor=(0.5, -0.22))
    style_axes(ax, "y")
    return fig
