"""Static plots of a training run and of what the DGC heads select.

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242.

Every function is pure: ``plot_x(data, ..., ax=None) -> Figure``. It reads its data (the
``metrics.csv`` history of a run, a ``dgclab.record.Recording``, a DataFrame of
``dgclab.analysis``), draws, and returns the figure; it never calls ``plt.show()`` and changes
no global state (no ``rcParams``, no seaborn theme).

* ``ax=None``: a new ``matplotlib.figure.Figure`` is created *without pyplot*, so nothing has to
  be closed and nothing is shown twice in a notebook: return it from a cell (or ``display`` it)
  to show it, ``fig.savefig(...)`` to keep it.
* ``ax`` given: the plot is drawn into ``ax`` and ``ax.figure`` is returned. A plot made of
  several panels (one per head, or two views) replaces ``ax`` by a grid of panels in the same
  place of the figure.

Bad inputs raise ``ValueError`` naming the offending value (an unknown layer lists the layers of
the recording; an out-of-range head names it and the number of heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..analysis import channel_usage, head_overlap, realized_macs
from ..layers import pruning_schedule

__all__ = [
    "plot_learning_curves",
    "plot_k_schedule",
    "plot_schedule_curve",
    "plot_selection_heatmap",
    "plot_channel_usage",
    "plot_head_overlap",
    "plot_dead_filters",
    "plot_macs",
    "plot_saliency_bars",
    "plot_accuracy_vs_macs",
]

# seaborn's "colorblind" palette, spelled out so that importing dgclab.viz costs no seaborn.
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4",
           "#949494", "#ece133", "#56b4e9"]
TRAIN, TEST, PAPER, REALIZED = PALETTE[0], PALETTE[1], "#333333", PALETTE[3]
KEPT, DROPPED = "#1f4e79", "#eeeeee"  # a kept channel is ink, a dropped one is paper
SELECTION_CMAP = mcolors.ListedColormap([DROPPED, KEPT])


# --------------------------------------------------------------------------------------------
# Training history (metrics.csv)
# --------------------------------------------------------------------------------------------


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
    h = _history(history, ["epoch", "train_acc", "test_acc", "train_loss", "test_loss"])
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
    _style(acc_ax)
    if ax is None:
        _style(loss_ax)
        acc_ax.set_title("Accuracy")
        loss_ax.set_title("Loss")
        acc_ax.legend(frameon=False)
        loss_ax.legend(frameon=False)
    else:
        acc_ax.set_title("Learning curves (accuracy solid, loss dashed)")
        _merged_legend(acc_ax, loss_ax)
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
    h = _history(history, needed)
    own_figure = ax is None
    fig, ax = _single(ax, (7, 4.2))
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
    _style(ax)
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
            _merged_legend(ax, twin)
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
    if not isinstance(in_channels, (int, np.integer)) or isinstance(in_channels, bool) \
            or in_channels <= 0:
        raise ValueError(f"in_channels must be a positive int, got in_channels={in_channels!r}")
    _check_rate(pruning_rate)
    fig, ax = _single(ax, (7, 3.8))
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
    _style(ax)
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
        raise ValueError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    cols = set(data.columns)
    if {"step", "layer", "metric", "value"} <= cols:
        return _dead_filters_tracked(data, ax)
    if {"epoch", "dead_filters"} <= cols:
        return _dead_filters_history(_history(data, ["epoch", "dead_filters"]), ax)
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
    fig, ax = _single(ax, (7, 3.8))
    for layer, part in rows.groupby("layer", sort=False):
        ax.plot(part["step"], 100 * part["value"], marker=".", label=str(layer))
    ax.set_xlabel("training step")
    ax.set_ylabel("dead filters (% of the layer's filters)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Dead filters per layer over training ({metric.replace('_', ' by ')})")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    _style(ax)
    return fig


def _dead_filters_history(h: pd.DataFrame, ax: Axes | None) -> Figure:
    fig, ax = _single(ax, (7, 3.8))
    ax.plot(h["epoch"], h["dead_filters"], "o-", color=PALETTE[3])
    ax.set_xlabel("epoch")
    ax.set_ylabel("dead filters (count, BN |γ| < 1e-3)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    top = max(1.0, float(np.nanmax(h["dead_filters"]))) * 1.15
    ax.set_ylim(-0.04 * top, top)  # a run without dead filters stays visible above the axis
    ax.set_title("Dead filters over training (all BN-ReLU pairs)")
    _style(ax)
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
    fig, ax = _single(ax, (7, 1.2 + 0.32 * n * len(kinds)))
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
    _style(ax, grid_axis="x")
    return fig


def plot_macs(
    history: pd.DataFrame | None = None, recording=None, ax: Axes | None = None
) -> Figure:
    """Paper vs realized MACs per image: over epochs, and/or per image of a recording.

    * ``history`` (the run's ``metrics.csv``: ``epoch``, ``paper_macs``, ``realized_macs``):
      both counts over epochs. Realized is the mean over test images of what the channels the
      heads really kept cost; during the warm-up of the pruning schedule it is above the paper's
      figure, which assumes the final keep ratio 1 - xi.
    * ``recording``: a histogram of the realized MACs of each recorded image, with the paper
      figure and the mean as vertical lines. Alone it counts the DGC layers only (the rest of the
      network costs the same for every image); with ``history`` too, the rest of the network is
      added (last epoch's ``paper_macs`` minus the DGC layers' paper count), so the numbers are
      those of the whole network, as in ``metrics.csv``.

    Both given: two panels (replacing ``ax`` when given).

    Args:
        history: the run's history DataFrame.
        recording: a ``Recording`` (or live ``Recorder``) with ``input_hw`` in its layer info.
        ax: where to draw; default a new figure.

    Returns:
        The figure.
    """
    if history is None and recording is None:
        raise ValueError("plot_macs needs history=, recording= or both")
    if history is not None:
        history = _history(history, ["epoch", "paper_macs", "realized_macs"])
    if recording is not None:
        _check_recording(recording)
    panels = (history is not None) + (recording is not None)
    fig, axes = _panels(ax, 1, panels, (5.5 * panels, 3.8))
    axes = list(axes.flat)
    if history is not None:
        _macs_over_epochs(history, axes.pop(0))
    if recording is not None:
        offset = None
        if history is not None:
            offset = float(history["paper_macs"].iloc[-1])
        _macs_histogram(recording, axes.pop(0), whole_network_paper=offset)
    return fig


def _macs_over_epochs(h: pd.DataFrame, ax: Axes) -> None:
    values = np.concatenate([h["paper_macs"].to_numpy(float), h["realized_macs"].to_numpy(float)])
    scale, unit = _mac_unit(values)
    epoch = h["epoch"].to_numpy()
    ax.plot(epoch, h["paper_macs"] / scale, "o--", color=PAPER, label="paper count (1 - ξ)",
            zorder=3)  # on top: a dense run's realized line lies exactly on it
    if h["realized_macs"].notna().any():
        ax.plot(epoch, h["realized_macs"] / scale, "o-", color=REALIZED,
                label="realized (mean over test images)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MACs per image ({unit})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0, top=np.nanmax(values) / scale * 1.15)
    ax.set_title("MACs per image over training")
    ax.legend(loc="best", framealpha=0.9, edgecolor="none")
    _style(ax)


def _macs_histogram(recording, ax: Axes, whole_network_paper: float | None) -> None:
    per_image = realized_macs(recording)
    realized = per_image["realized"].to_numpy(float)
    paper = float(per_image["paper"].iloc[0]) if len(per_image) else float("nan")
    where = "DGC layers only"
    if whole_network_paper is not None:
        offset = whole_network_paper - paper  # the rest of the network, the same for every image
        realized, paper = realized + offset, whole_network_paper
        where = "whole network"
    scale, unit = _mac_unit(np.append(realized, paper))
    if len(realized):
        ax.hist(realized / scale, bins=_bins(np.append(realized, paper) / scale), color=REALIZED,
                alpha=0.75, label="realized, per image")
        ax.axvline(realized.mean() / scale, color=REALIZED, lw=1.5,
                   label=f"mean {realized.mean() / scale:.3g} {unit}")
    ax.axvline(paper / scale, color=PAPER, ls="--", lw=1.5,
               label=f"paper count {paper / scale:.3g} {unit}")
    if len(realized) and np.all(realized == realized[0]):
        same_as_k = np.all(per_image["realized"] == per_image["k_based"])
        ax.text(0.03, 0.6, "every image cost the same"
                + (":\neach head kept exactly\nC_in - k channels" if same_as_k else ""),
                transform=ax.transAxes, va="top", fontsize=8, color="#555555")
    ax.set_xlabel(f"MACs per image ({unit})")
    ax.set_ylabel("images")
    ax.set_title(f"Realized MACs of {len(realized)} images\n({where})", fontsize=11)
    ax.legend(fontsize=8, loc="best", framealpha=0.9, edgecolor="none")
    _style(ax, grid_axis="y")


def plot_accuracy_vs_macs(frame: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Accuracy against cost for several runs: the paper count and the realized MACs.

    Each run is two markers at the same accuracy, joined by a line: a hollow circle at its paper
    MAC count and a filled diamond at its realized MACs (omitted where NaN, e.g. a dense run).

    Args:
        frame: one row per run with columns ``name``, ``test_acc`` (fraction in [0, 1]),
            ``paper_macs``, ``realized_macs`` (MACs per image) and optionally ``test_acc_std``
            (drawn as error bars).
        ax: where to draw; default a new figure.

    Returns:
        The figure.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    _require(frame, ["name", "test_acc", "paper_macs", "realized_macs"], "frame")
    if frame.empty:
        raise ValueError("frame has no rows: nothing to plot")
    acc = frame["test_acc"].to_numpy(float)
    if np.any((acc < 0) | (acc > 1)):
        raise ValueError(f"test_acc must be fractions in [0, 1], got {acc.tolist()}")
    std = frame["test_acc_std"].to_numpy(float) if "test_acc_std" in frame else None
    paper = frame["paper_macs"].to_numpy(float)
    realized = frame["realized_macs"].to_numpy(float)
    scale, unit = _mac_unit(np.concatenate([paper, realized]))
    fig, ax = _single(ax, (7, 4.5))
    for i, name in enumerate(frame["name"].astype(str)):
        color = PALETTE[i % len(PALETTE)]
        y, err = 100 * acc[i], None if std is None else 100 * std[i]
        ax.errorbar(paper[i] / scale, y, yerr=err, fmt="o", mfc="white", mec=color, ecolor=color,
                    mew=1.8, ms=8, capsize=3)
        x_label = paper[i] / scale
        if np.isfinite(realized[i]):
            ax.plot([paper[i] / scale, realized[i] / scale], [y, y], color=color, lw=1.2)
            ax.errorbar(realized[i] / scale, y, yerr=err, fmt="D", color=color, ms=7, capsize=3)
            x_label = realized[i] / scale
        ax.annotate(name, (x_label, y), xytext=(6, 6), textcoords="offset points", fontsize=9,
                    color=color)
    ax.legend(handles=[
        Line2D([], [], marker="o", ls="", mfc="white", mec="#555555", mew=1.8, ms=8,
               label="paper count"),
        Line2D([], [], marker="D", ls="", color="#555555", ms=7, label="realized (mean per image)"),
    ], frameon=False, loc="lower right")
    ax.set_xlabel(f"MACs per image ({unit})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against cost")
    ax.margins(x=0.15, y=0.15)
    _style(ax)
    return fig


# --------------------------------------------------------------------------------------------
# What the heads select (a Recording)
# --------------------------------------------------------------------------------------------


def plot_selection_heatmap(
    recording,
    layer: str,
    head: int,
    ax: Axes | None = None,
    max_samples: int = 200,
    classes: Sequence[str] | Mapping[int, str] | None = None,
) -> Figure:
    """Which channels one head kept for each image: an images x channels black-and-white map.

    Images are grouped by class (lines mark the class boundaries, labelled on the left) and,
    within a class, sorted by their selection so that images with the same selection sit
    together: a head whose choice follows the class shows blocks, a static choice shows full
    columns.

    Args:
        recording: a ``Recording`` (or live ``Recorder``).
        layer: a DGC layer name of ``recording.layer_names``.
        head: head index in [0, heads).
        ax: where to draw; default a new figure.
        max_samples: show at most this many images, taken evenly from the class-sorted order
            (each class keeps its share).
        classes: class names, a sequence indexed by label or a mapping label -> name; default
            the label numbers. Label -1 is shown as "unlabelled".

    Returns:
        The figure; its image is (shown images, C_in), 1 where the channel was kept.
    """
    sel = _head_selection(recording, layer, head)  # (N, C)
    _check_positive_int(max_samples, "max_samples")
    n, channels = sel.shape
    labels = recording.labels.numpy()
    order = np.argsort(labels, kind="stable")  # grouped by class, recorded order within
    if n > max_samples:
        order = order[np.unique(np.round(np.linspace(0, n - 1, max_samples)).astype(int))]
    groups, names = [], []
    for label in np.unique(labels[order]):
        group = order[labels[order] == label]
        # lexicographic on the selection, kept channels first: equal selections sit together
        groups.append(group[np.lexsort((~sel[group]).T[::-1])])
        names.append(_class_name(int(label), classes))
    rows = np.concatenate(groups)
    image = sel[rows].astype(np.uint8)  # (shown, C)

    fig, ax = _single(ax, (7.5, 5))
    ax.imshow(image, aspect="auto", interpolation="nearest", cmap=SELECTION_CMAP, vmin=0, vmax=1)
    starts = np.cumsum([0] + [len(g) for g in groups])
    for s in starts[1:-1]:
        ax.axhline(s - 0.5, color=PALETTE[3], lw=1)
    step = _label_step(ax, len(names))
    centres = (starts[:-1] + starts[1:]) / 2 - 0.5
    ax.set_yticks(centres[::step], names[::step], fontsize=8)
    ax.tick_params(axis="y", length=0)
    ax.set_ylabel("image (grouped by class)")
    ax.set_xlabel("input channel")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    info = recording.layer_info(layer)
    ax.set_title(f"{layer}, head {head}: channels kept per image\n"
                 f"{len(rows)} of {n} images, k = {info['inactive_channels']} of {channels} "
                 f"dropped when recorded", fontsize=10)
    ax.legend(handles=[Patch(facecolor=KEPT, label="kept"),
                       Patch(facecolor=DROPPED, edgecolor="#999999", label="dropped")],
              loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def plot_channel_usage(
    recording,
    layer: str,
    ax: Axes | None = None,
    per_class: bool = False,
    classes: Sequence[str] | Mapping[int, str] | None = None,
    head: int | None = None,
) -> Figure:
    """How often each head keeps each input channel (``dgclab.analysis.channel_usage``).

    Args:
        recording: a ``Recording`` (or live ``Recorder``).
        layer: a DGC layer name.
        ax: where to draw; default a new figure. With ``per_class`` and several heads, ``ax`` is
            replaced by one panel per head.
        per_class: one panel per head, classes x channels; default one heads x channels map.
        classes: class names for ``per_class`` (sequence indexed by label, or mapping).
        head: with ``per_class``, draw only this head.

    Returns:
        The figure; each image holds frequencies in [0, 1] (the fraction of the images, of the
        class with ``per_class``, for which the head kept the channel).
    """
    info = _layer_info(recording, layer)
    heads, channels = int(info["heads"]), int(info["in_channels"])
    if head is not None:
        _check_head(head, heads, layer)
        if not per_class:
            raise ValueError("head= selects a panel of the per_class plot; pass per_class=True")
    n = len(recording)
    if n == 0:
        raise ValueError("the recording holds no samples")
    subtitle = f"{n} images, k = {info['inactive_channels']} of {channels} dropped"
    cmap = "viridis"
    if not per_class:
        usage = channel_usage(recording, [layer])
        freq = usage.pivot(index="head", columns="channel", values="frequency").to_numpy()
        fig, ax = _single(ax, (7.5, 1.6 + 0.45 * heads))
        im = ax.imshow(freq, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1)
        ax.set_yticks(range(heads), [f"head {h}" for h in range(heads)])
        ax.set_xlabel("input channel")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{layer}: channel usage per head ({subtitle})", fontsize=10)
        fig.colorbar(im, ax=ax, label="fraction of images\nkeeping the channel", shrink=0.9)
        return fig

    usage = channel_usage(recording, [layer], per_class=True)
    shown = list(range(heads)) if head is None else [head]
    labels = sorted(usage["label"].unique())
    names = [_class_name(int(v), classes) for v in labels]
    fig, axes = _panels(ax, len(shown), 1, (7.5, 0.8 + (0.5 + 0.12 * len(labels)) * len(shown)),
                        sharex=True)
    axes = list(axes.flat)
    for a, h in zip(axes, shown):
        part = usage[usage["head"] == h]
        freq = part.pivot(index="label", columns="channel", values="frequency").loc[labels]
        im = a.imshow(freq.to_numpy(), aspect="auto", interpolation="nearest", cmap=cmap,
                      vmin=0, vmax=1)
        step = _label_step(a, len(names))
        a.set_yticks(range(0, len(names), step), names[::step], fontsize=8)
        a.set_ylabel(f"head {h}\nclass")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("input channel")
    axes[0].set_title(f"{layer}: channel usage per class ({subtitle})", fontsize=10)
    fig.colorbar(im, ax=axes, label="fraction of the class's images\nkeeping the channel",
                 shrink=min(0.9, 2.5 / len(shown) + 0.1), aspect=25)
    return fig


def plot_head_overlap(recording, layer: str | None = None, ax: Axes | None = None) -> Figure:
    """Do the heads pick the same channels? Mean Jaccard of two heads' kept channels.

    Args:
        recording: a ``Recording`` (or live ``Recorder``).
        layer: a DGC layer name: its heads x heads matrix of the mean Jaccard over images
            (annotated; ones on the diagonal). None: one bar per layer (the mean over head pairs),
            a dot per head pair, and a black tick at the chance level (the Jaccard two heads
            would have if each kept a random set of its actual size).
        ax: where to draw; default a new figure.

    Returns:
        The figure. 0 = the heads never share a channel, 1 = they always keep the same ones.
    """
    _check_recording(recording)
    if len(recording) == 0:
        raise ValueError("the recording holds no samples")
    if layer is not None:
        return _head_overlap_matrix(recording, layer, ax)

    frame = head_overlap(recording, chance=True)
    names = recording.layer_names
    fig, ax = _single(ax, (7.5, 1.4 + 0.38 * max(len(names), 1)))
    if frame.empty:
        ax.text(0.5, 0.5, "no DGC layer has two heads: nothing to compare", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    stats = frame.groupby("layer", sort=False).agg(jaccard=("jaccard", "mean"),
                                                   chance=("jaccard_chance", "mean"))
    stats = stats.reindex([n for n in names if n in stats.index])
    y = np.arange(len(stats))
    ax.barh(y, stats["jaccard"], height=0.6, color=PALETTE[0], alpha=0.8,
            label="mean over head pairs")
    pos = {name: i for i, name in enumerate(stats.index)}
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(frame))
    ax.plot(frame["jaccard"], frame["layer"].map(pos) + jitter, ".", color="#222222", ms=4,
            label="one head pair")
    for i, c in enumerate(stats["chance"]):
        ax.plot([c, c], [i - 0.38, i + 0.38], color=PALETTE[3], lw=2.2,
                label="chance (random sets of the same sizes)" if i == 0 else None)
    ax.set_yticks(y, stats.index)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("mean Jaccard of two heads' kept channels (1 = identical)")
    ax.set_title(f"Head overlap per DGC layer ({len(recording)} images)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _style(ax, grid_axis="x")
    return fig


def _head_overlap_matrix(recording, layer: str, ax: Axes | None) -> Figure:
    info = _layer_info(recording, layer)
    heads = int(info["heads"])
    frame = head_overlap(recording, [layer], chance=True)
    matrix = np.eye(heads)
    for row in frame.itertuples():
        matrix[row.head_a, row.head_b] = matrix[row.head_b, row.head_a] = row.jaccard
    fig, ax = _single(ax, (1.6 + 0.9 * heads, 0.9 + 0.8 * heads))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for a in range(heads):
        for b in range(heads):
            ax.text(b, a, f"{matrix[a, b]:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if matrix[a, b] > 0.6 else "black")
    ticks = [f"head {h}" for h in range(heads)]
    ax.set_xticks(range(heads), ticks)
    ax.set_yticks(range(heads), ticks)
    if len(frame):
        note = f"mean {frame['jaccard'].mean():.2f}, chance {frame['jaccard_chance'].mean():.2f}"
    else:
        note = "one head"
    ax.set_title(f"{layer}\nhead overlap ({note})", fontsize=10)
    fig.colorbar(im, ax=ax, label="mean Jaccard over images", shrink=0.85)
    return fig


def plot_saliency_bars(
    saliency,
    selection,
    ax: Axes | None = None,
    head_names: Sequence[str] | None = None,
) -> Figure:
    """For one image: the saliency of every input channel, per head; kept ones coloured.

    Args:
        saliency: (heads, C) float, the saliencies g of one image (e.g. a DGC layer's
            ``last_saliency[i]`` or ``Recording.saliencies(name)[i]``); (C,) for one head.
        selection: (heads, C) bool, True where the head kept the channel (``last_selection[i]``,
            ``Recording.selections(name)[i]``); same shape as ``saliency``.
        ax: where to draw; default a new figure. With several heads it is replaced by one panel
            per head.
        head_names: one title per head; default "head 0", "head 1", ...

    Returns:
        The figure: one panel per head, C bars each.
    """
    sal = _as_numpy(saliency, "saliency").astype(float)
    sel = _as_numpy(selection, "selection")
    if sal.ndim == 1:
        sal = sal[None]
    if sel.ndim == 1:
        sel = sel[None]
    if sal.ndim != 2:
        raise ValueError(f"saliency must be (heads, C), got shape {sal.shape}")
    if sel.shape != sal.shape:
        raise ValueError(f"selection must have the shape of saliency {sal.shape}, got {sel.shape}")
    if sel.dtype != np.bool_:
        if not np.isin(sel, (0, 1)).all():
            raise ValueError(f"selection must be bool (or 0/1), got dtype {sel.dtype}")
        sel = sel.astype(bool)
    heads, channels = sal.shape
    if head_names is None:
        head_names = [f"head {h}" for h in range(heads)]
    elif len(head_names) != heads:
        raise ValueError(f"head_names must name the {heads} heads, got {len(head_names)} names")
    fig, axes = _panels(ax, heads, 1, (8, 0.9 + 1.5 * heads), sharex=True, sharey=True)
    axes = list(axes.flat)
    x = np.arange(channels)
    for h, a in enumerate(axes):
        colors = np.where(sel[h], KEPT, "#b8b8b8")
        a.bar(x, sal[h], width=0.85, color=colors)
        a.set_title(f"{head_names[h]}: kept {int(sel[h].sum())} of {channels} channels",
                    fontsize=9, loc="left")
        a.set_ylabel("saliency g")
        _style(a, grid_axis="y")
    axes[-1].set_xlabel("input channel")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlim(-0.6, channels - 0.4)
    axes[0].legend(handles=[Patch(facecolor=KEPT, label="kept"),
                            Patch(facecolor="#b8b8b8", label="dropped")],
                   loc="lower right", bbox_to_anchor=(1, 1), frameon=False, fontsize=8, ncols=2)
    return fig


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _single(ax: Axes | None, figsize) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure (no pyplot) with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _panels(ax: Axes | None, nrows: int, ncols: int, figsize, sharex: bool = False,
            sharey: bool = False):
    """A grid of axes: in a new figure, ``ax`` itself (1 x 1), or replacing ``ax`` in place."""
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    fig = ax.figure
    if nrows * ncols == 1:
        return fig, np.array([[ax]])
    spec = ax.get_subplotspec()
    if spec is not None:
        ax.remove()
        grid = spec.subgridspec(nrows, ncols)
        return fig, grid.subplots(squeeze=False, sharex=sharex, sharey=sharey)
    # an axes placed by hand (fig.add_axes): split its rectangle with inset axes
    ax.set_axis_off()
    axes = np.empty((nrows, ncols), dtype=object)
    for r in range(nrows):
        for c in range(ncols):
            axes[r, c] = ax.inset_axes([c / ncols + 0.08 / ncols, 1 - (r + 1) / nrows + 0.1 / nrows,
                                        0.84 / ncols, 0.78 / nrows])
    return fig, axes


def _style(ax: Axes, grid_axis: str = "both") -> None:
    """Light grid behind the data and no top/right frame: explicit, no global theme."""
    ax.grid(True, axis=grid_axis, color="#dddddd", lw=0.7)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)


def _merged_legend(ax: Axes, twin: Axes) -> None:
    """One legend for ``ax`` and its twin, placed where it hides none of ``ax``'s lines (it may
    cover the twin's): ``ax`` is drawn above the twin for that."""
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(handles + more, labels + more_labels, fontsize=8, loc="best", framealpha=0.9,
              edgecolor="none")


def _label_step(ax: Axes, count: int, points: float = 10.0) -> int:
    """Label every step-th of ``count`` rows so that labels ~``points`` high do not overlap in
    ``ax``'s height (its nominal height: layout engines run later)."""
    height = ax.get_position().height * ax.get_figure(root=True).get_figheight() * 72  # points
    return max(1, int(np.ceil(count / max(2.0, height / points))))


def _history(history, columns: list[str]) -> pd.DataFrame:
    if not isinstance(history, pd.DataFrame):
        raise ValueError(f"history must be a pandas DataFrame (metrics.csv), got "
                         f"{type(history).__name__}")
    _require(history, columns, "history")
    if history.empty:
        raise ValueError("history has no rows: no epoch has finished")
    return history.sort_values("epoch")


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the columns {missing}; it has {list(frame.columns)}")


def _check_recording(recording) -> None:
    if not all(hasattr(recording, a) for a in ("layer_names", "selections", "labels")):
        raise ValueError(f"expected a dgclab Recording (or Recorder), got "
                         f"{type(recording).__name__}")


def _layer_info(recording, layer: str) -> dict:
    _check_recording(recording)
    if layer not in recording.layer_names:
        raise ValueError(f"no DGC layer {layer!r} in this recording; layers: "
                         f"{list(recording.layer_names)}")
    return recording.layer_info(layer)


def _check_head(head, heads: int, layer: str) -> None:
    if not isinstance(head, (int, np.integer)) or isinstance(head, bool) or not 0 <= head < heads:
        raise ValueError(f"head={head!r} is out of range for layer {layer!r}, which has "
                         f"{heads} heads (0..{heads - 1})")


def _head_selection(recording, layer: str, head: int) -> np.ndarray:
    info = _layer_info(recording, layer)
    _check_head(head, int(info["heads"]), layer)
    if len(recording) == 0:
        raise ValueError("the recording holds no samples")
    return recording.selections(layer)[:, head].numpy()  # (N, C) bool


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def _check_rate(rate) -> None:
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
        raise ValueError(f"pruning_rate must be a number in [0, 1), got pruning_rate={rate!r}")


def _class_name(label: int, classes) -> str:
    if label < 0:
        return "unlabelled"
    if isinstance(classes, Mapping):
        return str(classes.get(label, label))
    if classes is not None and label < len(classes):
        return str(classes[label])
    return str(label)


def _as_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as err:
        raise ValueError(f"{name} must be an array or tensor, got {type(x).__name__}") from err


def _mac_unit(values: np.ndarray) -> tuple[float, str]:
    """A divisor and its unit (MACs, K, M, G) that keep the largest value readable."""
    finite = np.abs(values[np.isfinite(values)])
    top = finite.max() if finite.size else 0.0
    for scale, unit in ((1e9, "G MACs"), (1e6, "M MACs"), (1e3, "K MACs")):
        if top >= scale:
            return scale, unit
    return 1.0, "MACs"


def _bins(values: np.ndarray) -> np.ndarray:
    """About 40 bin edges over the values plus a margin, the smallest value at a bin's centre:
    narrow bars in the right place even when every image cost the same."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(0.08 * (hi - lo), 0.02 * max(abs(hi), abs(lo)), 1e-9)
    width = (hi - lo + 2 * pad) / 40
    start = lo - (np.floor(pad / width) + 0.5) * width
    return start + width * np.arange(42)
