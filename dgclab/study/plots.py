"""Figures of the implicit filter sparsity study (SPEC §7; Mehta, Kim, Theobalt, CVPR 2019,
arXiv 1811.12495).

Pure functions, as in ``dgclab.viz``: ``plot_x(table, ax=None) -> Figure`` reads a table of the
study (``dgclab.study.load_study``), draws into ``ax`` or into a new ``Figure`` made without
pyplot, and changes no global state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from ..viz.style import PALETTE  # one palette for every dgclab figure

__all__ = ["plot_dead_fraction", "plot_dead_over_training", "plot_dgc_selection",
           "plot_gamma_distribution"]

RULES = {"dead_gamma": "dead by |γ| < 1e-3", "dead_activation": "dead by activation < 1e-12"}
STATUS_COLORS = {"zero": PALETTE[3], "constant": PALETTE[1], "live": PALETTE[0]}


def plot_dead_fraction(sparsity: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Dead fraction per layer, one bar per arm (mean over seeds), both rules.

    Args:
        sparsity: rows of the study's ``sparsity.csv`` for one model (layers are matched by
            name): ``arm``, ``layer``, ``filters``, ``dead_gamma``, ``dead_activation``.
        ax: draw only the activation rule into it; default a new figure with one panel per
            rule.

    Returns:
        The figure.
    """
    _require(sparsity, ["arm", "layer", "filters", "dead_gamma", "dead_activation"], "sparsity")
    if sparsity.empty:
        raise ValueError("sparsity has no rows to plot")
    if ax is None:
        fig = Figure(figsize=(11, 6.4), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        rules = list(RULES)
    else:
        fig, axes, rules = ax.figure, [ax], ["dead_activation"]
    layers = list(dict.fromkeys(sparsity["layer"]))  # first-seen order: network order
    arms = list(dict.fromkeys(sparsity["arm"]))
    width = 0.8 / len(arms)
    x = np.arange(len(layers))
    for a, rule in zip(axes, rules):
        for i, arm in enumerate(arms):
            rows = sparsity[sparsity["arm"] == arm]
            frac = (rows[rule] / rows["filters"]).groupby(rows["layer"]).mean()  # over seeds
            a.bar(x + (i - (len(arms) - 1) / 2) * width, frac.reindex(layers).to_numpy(),
                  width, color=PALETTE[i % len(PALETTE)], label=arm)
        a.set_ylabel(f"fraction {RULES[rule]}")
        a.yaxis.set_major_formatter(PercentFormatter(1.0))
        a.set_ylim(0, max(0.05, a.get_ylim()[1]))
        _style(a)
    axes[-1].set_xticks(x, _short(layers), rotation=30, ha="right")
    axes[0].legend(frameon=False, fontsize="small", ncols=2)
    axes[0].set_title("Dead filters per layer (training set), by arm")
    return fig


def plot_dead_over_training(training: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Fraction of filters dead by the |γ| rule at the end of each epoch, one line per arm.

    Args:
        training: the study's ``training`` table: ``arm``, ``epoch``, ``dead_fraction`` (mean
            over seeds is drawn).
        ax: where to draw; default a new figure.

    Returns:
        The figure.
    """
    _require(training, ["arm", "epoch", "dead_fraction"], "training")
    fig, ax = _single(ax, (8, 4.5))
    for i, (arm, rows) in enumerate(training.groupby("arm", sort=False)):
        curve = rows.groupby("epoch")["dead_fraction"].mean()
        # more arms than colours: the next cycle of the palette is dashed
        style = "o-" if i < len(PALETTE) else "o--"
        ax.plot(curve.index, curve.to_numpy(), style, ms=3, color=PALETTE[i % len(PALETTE)],
                label=arm)
    ax.set_ylim(bottom=0)  # a fraction; without this an all-zero plot is centred on 0
    if not (training["dead_fraction"] > 0).any():
        ax.set_ylim(0, 0.05)
        ax.text(0.5, 0.5, "no filter reached |γ| < 1e-3 in any arm", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    ax.set_xlabel("epoch")
    ax.set_ylabel("filters with |γ| < 1e-3")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Dead filters during training")
    ax.legend(frameon=False, fontsize="small", ncols=2)
    _style(ax)
    return fig


def plot_dgc_selection(selection: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """How often DGC heads select a channel, by the channel's status, per DGC layer.

    Bars: the mean selection frequency of the layer's ``zero`` (activation dead),
    ``constant`` (|γ| < 1e-3) and ``live`` input channels, pooled over the rows given (arms and
    seeds, weighted by channels); a tick: the layer's mean over all channels (what every status
    would get if the heads ignored it). A status without channels has no bar.

    Args:
        selection: the study's ``dgc_selection.csv``: ``layer``, ``status``, ``channels``,
            ``frequency``, ``frequency_all``.
        ax: where to draw; default a new figure.

    Returns:
        The figure.
    """
    _require(selection, ["layer", "status", "channels", "frequency", "frequency_all"],
             "selection")
    if selection.empty:
        raise ValueError("selection has no rows to plot")
    fig, ax = _single(ax, (10, 4.5))
    layers = list(dict.fromkeys(selection["layer"]))
    x = np.arange(len(layers))
    statuses = list(STATUS_COLORS)
    width = 0.8 / len(statuses)
    for i, status in enumerate(statuses):
        values, counts = [], []
        for layer in layers:
            rows = selection[(selection["layer"] == layer) & (selection["status"] == status)
                             & (selection["channels"] > 0)]
            w = rows["channels"].to_numpy(float)
            values.append(np.average(rows["frequency"], weights=w) if w.sum() else np.nan)
            counts.append(int(w.sum()))
        bars = ax.bar(x + (i - 1) * width, values, width, color=STATUS_COLORS[status],
                      label=f"{status} ({sum(counts)} channels)")
        for bar, n in zip(bars, counts):
            if n:
                ax.annotate(str(n), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    everything = selection.drop_duplicates(["layer", "arm", "seed"] if "arm" in selection
                                           else ["layer"]).groupby("layer")["frequency_all"].mean()
    ax.hlines(everything.reindex(layers).to_numpy(), x - 0.45, x + 0.45, color="#333333",
              lw=1.5, zorder=3, label="all channels")
    ax.set_xticks(x, _short(layers), rotation=30, ha="right")
    ax.set_ylabel("selected in this fraction of\n(image, head) pairs")
    ax.set_ylim(0, 1.05)
    ax.set_title("Do DGC heads select input channels that carry nothing? (numbers: channels)")
    ax.legend(frameon=False, fontsize="small")
    _style(ax)
    return fig


def plot_gamma_distribution(filters: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """How close to dead: the cumulative distribution of |γ| over all filters, one line per arm.

    A filter is dead by the pruning rule when |γ| < 1e-3 (dotted line, on a log axis when some
    |γ| is below 0.05; a linear axis otherwise); an arm whose curve sits to the left has pulled
    its BN scales further towards it, whether or not any crossed.

    Args:
        filters: the study's per-filter table (``StudyResult.filters``) for one model:
            ``arm``, ``gamma`` (all seeds pooled).
        ax: where to draw; default a new figure.

    Returns:
        The figure.
    """
    _require(filters, ["arm", "gamma"], "filters")
    if filters.empty:
        raise ValueError("filters has no rows to plot")
    fig, ax = _single(ax, (8, 4.5))
    floor = 1e-6  # |γ| = 0 drawn here on the log axis
    for i, (arm, rows) in enumerate(filters.groupby("arm", sort=False)):
        g = np.sort(np.maximum(np.abs(rows["gamma"].to_numpy(float)), floor))
        ax.step(g, np.arange(1, len(g) + 1) / len(g), where="post",
                color=PALETTE[i % len(PALETTE)], label=f"{arm} (min {g[0]:.2g})")
    smallest = float(np.abs(filters["gamma"].to_numpy(float)).min())
    if smallest < 0.05:  # some are near the rule: a log axis down to it
        ax.axvline(1e-3, color="#333333", ls=":", lw=1)
        ax.annotate("dead: |γ| < 1e-3", (1e-3, 0.95), xytext=(-4, 0),
                    textcoords="offset points", ha="right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("|γ| of the filter's BN")
    else:  # all far from it: a linear axis shows the differences
        ax.set_xlabel(f"|γ| of the filter's BN (none below {smallest:.2g}; dead would be < 1e-3)")
    ax.set_ylabel("fraction of filters ≤ x")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("BN scales at the end of training, by arm")
    ax.legend(frameon=False, fontsize="small")
    _style(ax)
    return fig


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _single(ax: Axes | None, figsize) -> tuple[Figure, Axes]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure, ax


def _style(ax: Axes) -> None:
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _short(layers: list[str]) -> list[str]:
    """Drop a prefix common to every layer name ("features.bn1" -> "bn1")."""
    prefix = layers[0].split(".")[0] + "." if layers else ""
    if len(layers) > 1 and all(name.startswith(prefix) for name in layers):
        return [name[len(prefix):] for name in layers]
    return layers


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the columns {missing}; it has {list(frame.columns)}")
