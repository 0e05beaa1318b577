"""Plots of how DGC's selections move during training, from ``MetricTracker`` frames.

Su et al., "Dynamic Group Convolution for Accelerating Convolutional Neural Networks", ECCV
2020, arXiv 2007.04242. The measurements are ``dgclab.analysis.dynamics``'s (issue #21): the
probe metrics a ``MetricTracker(probe=...)`` takes at every epoch's end, and the training loss
around every step of k. The accuracy bench writes the same frame to each run's
``dynamics.csv``.

Pure functions ``plot_x(data, ..., ax=None) -> Figure`` (conventions: ``dgclab.viz.style``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .style import PALETTE, panel_grid, single_axes, style_axes

__all__ = ["plot_selection_dynamics", "plot_loss_around_k"]

_LABELS = {
    "selection_churn": "decisions changed since the last epoch (%)",
    "saliency_zero": "saliencies exactly 0 (%)",
    "kept_zero": "kept channels with g = 0 (%)",
    "saliency_spread": "saliency spread (std / mean)",
    "probe_head_jaccard": "head overlap (Jaccard, %)",
    "chance_head_jaccard": "head overlap by chance (Jaccard, %)",
    "inactive_channels": "k (channels dropped per head)",
}
_PERCENT = {"selection_churn", "saliency_zero", "kept_zero", "probe_head_jaccard",
            "chance_head_jaccard"}


def plot_selection_dynamics(
    frames: pd.DataFrame | Mapping[str, pd.DataFrame],
    metrics: Sequence[str] = ("selection_churn", "saliency_zero", "probe_head_jaccard"),
    ax: Axes | None = None,
) -> Figure:
    """The probe metrics over epochs: per layer for one run, or the mean over layers per run.

    Args:
        frames: a ``MetricTracker.frame`` (columns ``epoch``, ``layer``, ``metric``, ``value``;
            a run's ``dynamics.csv``), drawn one line per DGC layer; or ``{label: frame}``
            (e.g. the official recipe and its ablations), one line per run, the mean over its
            layers; runs without rows of a metric (no DGC layer) are left out of its panel and
            keep their colours. ``probe_head_jaccard`` comes with its chance level, dotted,
            where the frame has ``chance_head_jaccard``.
        metrics: one panel each, of the metrics in the frames.
        ax: where to draw (split into one panel per metric); default a new figure.

    Returns:
        The figure.

    Raises:
        TypeError: not a frame or a mapping of frames.
        ValueError: a frame without the tracker's columns, or a metric no frame has.
    """
    runs = _labelled(frames, "frame", "a MetricTracker frame",
                     {"epoch", "layer", "metric", "value"})
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    for metric in metrics:
        if not any((f["metric"] == metric).any() for f in runs.values()):
            raise ValueError(f"no frame has rows of metric {metric!r}; metrics present: "
                             f"{sorted(set().union(*(set(f.metric) for f in runs.values())))}")
    fig, axes = panel_grid(ax, 1, len(metrics), (4.2 * len(metrics), 3.6))
    per_layer = not isinstance(frames, Mapping)
    for panel, metric in zip(axes[0], metrics):
        scale = 100.0 if metric in _PERCENT else 1.0
        for i, (label, frame) in enumerate(runs.items()):
            rows = frame[frame["metric"] == metric]
            if per_layer:
                for j, (layer, part) in enumerate(rows.groupby("layer", sort=False)):
                    panel.plot(part["epoch"], scale * part["value"], marker=".",
                               color=PALETTE[j % len(PALETTE)], label=str(layer))
            elif not rows.empty:  # a run without DGC layers (dense, static groups) has none
                mean = rows.groupby("epoch")["value"].mean()
                panel.plot(mean.index, scale * mean.to_numpy(), marker="o", ms=3,
                           color=PALETTE[i % len(PALETTE)], label=str(label))
                if metric == "probe_head_jaccard":
                    chance = frame[frame["metric"] == "chance_head_jaccard"]
                    chance = chance.groupby("epoch")["value"].mean()
                    if len(chance):
                        panel.plot(chance.index, scale * chance.to_numpy(), ":",
                                   color=PALETTE[i % len(PALETTE)], lw=1)
        panel.set_xlabel("epoch (0: initialisation)")
        panel.set_ylabel(_LABELS.get(metric, metric))
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        style_axes(panel)
    axes[0][0].legend(frameon=False, fontsize=7)
    if ax is None:
        what = "per DGC layer" if per_layer else "mean over DGC layers; dotted: chance overlap"
        fig.suptitle(f"DGC selections on a fixed probe set, epoch by epoch ({what})")
    return fig


def plot_loss_around_k(
    tables: pd.DataFrame | Mapping[str, pd.DataFrame], ax: Axes | None = None
) -> Figure:
    """The event-triggered training loss around the steps at which k grew.

    Args:
        tables: ``dgclab.analysis.loss_around_k_steps(frame)`` (columns ``offset``, ``events``,
            ``delta_mean``, ``delta_sem``), or ``{label: table}``: one line each, with a band of
            ± one standard error.
        ax: where to draw; default a new figure.

    Returns:
        The figure.
    """
    runs = _labelled(tables, "table", "a loss_around_k_steps table",
                     {"offset", "events", "delta_mean", "delta_sem"})
    fig, ax = single_axes(ax, (6, 3.6))
    for i, (label, table) in enumerate(runs.items()):
        if table.empty:
            continue
        color = PALETTE[i % len(PALETTE)]
        events = int(table["events"].iloc[0])
        ax.plot(table["offset"], table["delta_mean"], color=color,
                label=f"{label} ({events} k steps)".strip())
        ax.fill_between(table["offset"], table["delta_mean"] - table["delta_sem"],
                        table["delta_mean"] + table["delta_sem"], color=color, alpha=0.2, lw=0)
    ax.axvline(0, color="#888888", lw=0.8, ls="--")
    ax.axhline(0, color="#888888", lw=0.8)
    ax.set_xlabel("training steps from a step at which k grew")
    ax.set_ylabel("loss - mean loss of the steps before")
    ax.set_title("Training loss around the steps of k")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=7)
    style_axes(ax)
    return fig


def _labelled(data, what: str, kind: str, columns: set[str]) -> dict[str, pd.DataFrame]:
    """``{label: frame}`` from a frame or a mapping of them, each checked to have ``columns``."""
    runs = dict(data) if isinstance(data, Mapping) else {"": data}
    if not runs:
        raise ValueError(f"{what}s must hold at least one {kind}")
    for label, frame in runs.items():
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{what} {label!r} must be a DataFrame, got {type(frame).__name__}")
        missing = columns - set(frame.columns)
        if missing:
            raise ValueError(f"{what} {label!r} is not {kind}; missing columns {sorted(missing)}")
    return runs
