"""Plots of a training run over epochs, from its ``metrics.csv``: learning curves, the DGC
pruning schedule (k), and dead filters (over epochs, per layer, or over training steps).

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242 (the schedule of k, the number of input channels
each head drops). Dead filters: Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in
Convolutional Neural Networks", CVPR 2019, arXiv 1811.12495.

Pure functions ``plot_x(data, ..., ax=None) -> Figure`` (conventions: ``dgclab.viz.style``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..checks import check_float, check_int
from ..layers import pruning_schedule
from .inputs import history_frame
from .style import PALETTE, PAPER, TEST, TRAIN, merged_legend, single_axes, style_axes

__all__ = [
    "plot_learning_curves",
    "plot_test_accuracy",
    "plot_k_schedule",
    "plot_schedule_curve",
    "plot_dead_filters",
]


def plot_learning_curves(history: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Train and test accuracy and loss over epochs.

    Args:
        history: the run's ``metrics.csv`` as a DataFrame (``Trainer.fit()`` returns it), with
            columns ``epoch``, ``train_acc``, ``test_acc`` (fractions), ``train_loss``,
            ``test_loss`` (mean cross-entropy).
        ax: draw accuracy into it and the losses on a twin axis; default: a new figure with an
            accuracy panel and a loss panel.

    Returns:
        The figure.

    Example:
        >>> fig = plot_learning_curves(pd.read_csv("runs/r1/metrics.csv"))  # doctest: +SKIP
    """
    h = history_frame(history, ["epoch", "train_acc", "test_acc", "train_loss", "test_loss"])
    epoch = h["epoch"].to_numpy()
    if ax is None:
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        acc_ax, loss_ax = fig.subplots(1, 2)
    else:
        fig, acc_ax = ax.figure, ax
        loss_ax = ax.twinx()

    acc_ax.plot(epoch, 100 * h["train_acc"], "o-", color=TRAIN, label="train accuracy")
    acc_ax.plot(epoch, 100 * h["test_acc"], "o-", color=TEST, label="test accuracy")
    acc_ax.set_ylabel("accuracy (%)")
    loss_ax.plot(epoch, h["train_loss"], "s--", color=TRAIN, label="train loss", alpha=0.8)
    loss_ax.plot(epoch, h["test_loss"], "s--", color=TEST, label="test loss", alpha=0.8)
    loss_ax.set_ylabel("cross-entropy loss (nats per image)")
    for a in (acc_ax, loss_ax):
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    style_axes(acc_ax)
    if ax is None:
        style_axes(loss_ax)
        acc_ax.set_title("Accuracy")
        loss_ax.set_title("Loss")
        acc_ax.legend(frameon=False)
        loss_ax.legend(frameon=False)
    else:
        acc_ax.set_title("Learning curves (accuracy solid, loss dashed)")
        merged_legend(acc_ax, loss_ax)
    return fig


def plot_test_accuracy(histories: Mapping[str, pd.DataFrame], ax: Axes | None = None) -> Figure:
    """Test accuracy over epochs of several runs, one line each (e.g. dense, static groups, DGC
    and its ablations trained with the same recipe).

    Args:
        histories: ``{label: metrics.csv as a DataFrame}`` (columns ``epoch``, ``test_acc``).
        ax: where to draw; default a new figure.

    Returns:
        The figure.

    Raises:
        TypeError: ``histories`` is not a mapping.
        ValueError: no runs, or a run without ``epoch`` and ``test_acc``.
    """
    if not isinstance(histories, Mapping):
        raise TypeError(f"histories must be a mapping of label -> metrics frame, got "
                        f"{type(histories).__name__}")
    if not histories:
        raise ValueError("histories is empty: give at least one run")
    fig, ax = single_axes(ax, (6, 3.8))
    for i, (label, history) in enumerate(histories.items()):
        h = history_frame(history, ["epoch", "test_acc"])
        ax.plot(h["epoch"], 100 * h["test_acc"], "o-", ms=3, color=PALETTE[i % len(PALETTE)],
                label=str(label))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Test accuracy by epoch")
    ax.legend(frameon=False, fontsize=7)
    style_axes(ax)
    return fig


def plot_k_schedule(
    history: pd.DataFrame,
    ax: Axes | None = None,
    pruning_rate: float | None = None,
    accuracy: bool = True,
) -> Figure:
    """The fraction of input channels the DGC heads drop (k / C_in) at the end of each epoch.

    Args:
        history: the run's ``metrics.csv`` as a DataFrame, with ``epoch`` and ``k_frac`` (the
            mean over DGC layers of k / C_in), and ``test_acc`` when ``accuracy``.
        ax: where to draw; default a new figure.
        pruning_rate: the run's target xi, drawn as a dotted line (k reaches round(xi * C_in) at
            3/4 of training).
        accuracy: also draw the test accuracy, on a twin axis.

    Returns:
        The figure.
    """
    needed = ["epoch", "k_frac"] + (["test_acc"] if accuracy else [])
    h = history_frame(history, needed)
    own_figure = ax is None
    fig, ax = single_axes(ax, (7, 4.2))
    epoch = h["epoch"].to_numpy()
    ax.plot(epoch, h["k_frac"], "o-", color=PALETTE[2], label="k / C_in (mean over DGC layers)")
    if pruning_rate is not None:
        _check_rate(pruning_rate)
        ax.axhline(pruning_rate, color=PAPER, ls=":", lw=1.2,
                   label=f"target pruning rate ξ = {pruning_rate:g}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("input channels dropped per head (fraction)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Pruning schedule: channels dropped at the end of each epoch")
    style_axes(ax)
    if accuracy:
        twin = ax.twinx()
        twin.plot(epoch, 100 * h["test_acc"], "s--", color=TEST, alpha=0.8, label="test accuracy")
        twin.set_ylabel("test accuracy (%)")
        if own_figure:  # below the axes, where it hides no line
            handles, labels = ax.get_legend_handles_labels()
            more, more_labels = twin.get_legend_handles_labels()
            fig.legend(handles + more, labels + more_labels, loc="outside lower center",
                       ncols=3, frameon=False, fontsize=8)
        else:
            merged_legend(ax, twin)
    else:
        ax.legend(frameon=False)
    return fig


def plot_schedule_curve(
    in_channels: int = 128, pruning_rate: float = 0.75, ax: Axes | None = None
) -> Figure:
    """The official schedule k(p): inactive channels against training progress p.

    Drawn from ``dgclab.layers.pruning_schedule``: 0 during the warm-up (p <= 1/12), a linear
    ramp, then the final ``round(xi * C_in)`` from p = 3/4 on.

    Args:
        in_channels: C_in of the layer.
        pruning_rate: xi in [0, 1).
        ax: where to draw; default a new figure.

    Returns:
        The figure (the right axis reads k / C_in).
    """
    check_int("in_channels", in_channels, min=1)
    _check_rate(pruning_rate)
    fig, ax = single_axes(ax, (7, 3.8))
    p = np.linspace(0.0, 1.0, 2401)
    k = np.array([pruning_schedule(float(v), int(in_channels), pruning_rate) for v in p])
    ax.plot(p, k, color=PALETTE[2], lw=2, drawstyle="steps-post", label="k(p)")
    final = k[-1]
    for lo, hi, name in ((0, 1 / 12, "warm-up\nk = 0"), (1 / 12, 3 / 4, "linear ramp"),
                         (3 / 4, 1, f"final\nk = {final}")):
        if name != "linear ramp":
            ax.axvspan(lo, hi, color="#000000", alpha=0.06, lw=0)
        ax.text((lo + hi) / 2, 0.97, name, transform=ax.get_xaxis_transform(), ha="center",
                va="top", fontsize=9, color="#555555")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(final, 1) * 1.25)
    ax.set_xlabel("training progress p (iterations done / all iterations)")
    ax.set_ylabel("k (input channels dropped per head)")
    ax.set_title(f"Official pruning schedule, C_in = {in_channels}, ξ = {pruning_rate:g}")
    right = ax.secondary_yaxis("right", functions=(lambda v: v / in_channels,
                                                   lambda f: f * in_channels))
    right.set_ylabel("k / C_in")
    style_axes(ax)
    return fig


def plot_dead_filters(data: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Dead filters: per layer from ``filter_sparsity``, or over epochs from a run's history.

    Args:
        data: either ``dgclab.analysis.filter_sparsity(model, ...)`` (one row per BN-ReLU pair:
            ``layer``, ``filters``, ``dead_gamma`` and optionally ``dead_activation``; the
            ``per_filter=True`` table is summed per layer), drawn as horizontal bars of the
            percentage of each layer's filters that are dead; or the run's ``metrics.csv``
            (``epoch``, ``dead_filters``), drawn as the count over epochs; or a
            ``MetricTracker.frame`` (``step``, ``layer``, ``metric``, ``value``), whose
            ``dead_gamma`` (or ``dead_activation``) rows are drawn as the dead fraction of
            each layer over training steps.
        ax: where to draw; default a new figure.

    Returns:
        The figure.
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    cols = set(data.columns)
    if {"step", "layer", "metric", "value"} <= cols:
        return _dead_filters_tracked(data, ax)
    if {"epoch", "dead_filters"} <= cols:
        return _dead_filters_history(history_frame(data, ["epoch", "dead_filters"]), ax)
    if {"layer", "dead_gamma"} <= cols and ({"filters"} <= cols or {"filter"} <= cols):
        return _dead_filters_per_layer(data, ax)
    raise ValueError(
        "data must be a filter_sparsity table (columns layer, filters, dead_gamma[, "
        "dead_activation]) or a run history (columns epoch, dead_filters); got columns "
        f"{list(data.columns)}"
    )


def _dead_filters_tracked(frame: pd.DataFrame, ax: Axes | None) -> Figure:
    metric = "dead_gamma" if (frame["metric"] == "dead_gamma").any() else "dead_activation"
    rows = frame[frame["metric"] == metric]
    if rows.empty:
        raise ValueError("the tracker frame has no dead_gamma or dead_activation rows; track "
                         "them with MetricTracker(metrics=(..., 'dead_gamma'))")
    fig, ax = single_axes(ax, (7, 3.8))
    for layer, part in rows.groupby("layer", sort=False):
        ax.plot(part["step"], 100 * part["value"], marker=".", label=str(layer))
    ax.set_xlabel("training step")
    ax.set_ylabel("dead filters (% of the layer's filters)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Dead filters per layer over training ({metric.replace('_', ' by ')})")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    style_axes(ax)
    return fig


def _dead_filters_history(h: pd.DataFrame, ax: Axes | None) -> Figure:
    fig, ax = single_axes(ax, (7, 3.8))
    ax.plot(h["epoch"], h["dead_filters"], "o-", color=PALETTE[3])
    ax.set_xlabel("epoch")
    ax.set_ylabel("dead filters (count, BN |γ| < 1e-3)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    top = max(1.0, float(np.nanmax(h["dead_filters"]))) * 1.15
    ax.set_ylim(-0.04 * top, top)  # a run without dead filters stays visible above the axis
    ax.set_title("Dead filters over training (all BN-ReLU pairs)")
    style_axes(ax)
    return fig


def _dead_filters_per_layer(frame: pd.DataFrame, ax: Axes | None) -> Figure:
    if "filter" in frame.columns:  # the per_filter table: one row per filter
        agg = {"filters": ("filter", "size"), "dead_gamma": ("dead_gamma", "sum")}
        if "dead_activation" in frame.columns:
            agg["dead_activation"] = ("dead_activation", "sum")
        frame = frame.groupby("layer", sort=False).agg(**agg).reset_index()
    if frame.empty:
        raise ValueError("the filter_sparsity table is empty: no BN-ReLU pair was found")
    kinds = [("dead_gamma", "by BN |γ|", PALETTE[3])]
    if "dead_activation" in frame.columns:
        kinds.append(("dead_activation", "by activation (never > 0 on the data)", PALETTE[0]))
    n = len(frame)
    fig, ax = single_axes(ax, (7, 1.2 + 0.32 * n * len(kinds)))
    y = np.arange(n)
    height = 0.8 / len(kinds)
    filters = frame["filters"].to_numpy().astype(float)
    for i, (col, label, color) in enumerate(kinds):
        dead = frame[col].to_numpy().astype(float)
        pos = y - 0.4 + height * (i + 0.5)
        ax.barh(pos, 100 * dead / filters, height=height * 0.9, color=color, label=label)
        for yy, d, f in zip(pos, dead, filters):
            ax.text(100 * d / f + 1, yy, f"{int(d)}/{int(f)}", va="center", fontsize=8)
    ax.set_yticks(y, frame["layer"].astype(str))
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("dead filters (% of the layer's filters)")
    ax.set_title("Dead filters per layer")
    ax.legend(frameon=False, loc="lower right")
    style_axes(ax, grid_axis="x")
    return fig

def _check_rate(rate) -> None:
    check_float("pruning_rate", rate, min=0, max=1, max_inclusive=False)

