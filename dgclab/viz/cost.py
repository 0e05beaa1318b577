"""Plots of what a network costs: MACs per image, the paper's count against the realized one,
and accuracy against cost for several runs.

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242. The paper counts a DGC layer's MACs at the final
keep ratio 1 - xi; the realized count is what the channels the heads really kept cost, per image
(``dgclab.analysis.realized_macs``).

Pure functions ``plot_x(data, ..., ax=None) -> Figure`` (conventions: ``dgclab.viz.style``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..analysis import realized_macs
from .inputs import check_recording, history_frame, require_columns
from .style import PALETTE, PAPER, REALIZED, panel_grid, single_axes, style_axes

__all__ = ["plot_macs", "plot_accuracy_vs_macs"]


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
        history = history_frame(history, ["epoch", "paper_macs", "realized_macs"])
    if recording is not None:
        check_recording(recording)
    panels = (history is not None) + (recording is not None)
    fig, axes = panel_grid(ax, 1, panels, (5.5 * panels, 3.8))
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
    style_axes(ax)


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
    style_axes(ax, grid_axis="y")


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
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    require_columns(frame, ["name", "test_acc", "paper_macs", "realized_macs"], "frame")
    if frame.empty:
        raise ValueError("frame has no rows: nothing to plot")
    acc = frame["test_acc"].to_numpy(float)
    if np.any((acc < 0) | (acc > 1)):
        raise ValueError(f"test_acc must be fractions in [0, 1], got {acc.tolist()}")
    std = frame["test_acc_std"].to_numpy(float) if "test_acc_std" in frame else None
    paper = frame["paper_macs"].to_numpy(float)
    realized = frame["realized_macs"].to_numpy(float)
    scale, unit = _mac_unit(np.concatenate([paper, realized]))
    fig, ax = single_axes(ax, (7, 4.5))
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
    style_axes(ax)
    return fig

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
