"""What every dgclab figure shares: one palette, the figure helpers, and the conventions.

Every plotting function of dgclab (``dgclab.viz``, ``dgclab.study``) is pure:
``plot_x(data, ..., ax=None) -> Figure``. It reads its data (the ``metrics.csv`` history of a
run, a ``dgclab.record.Recording``, a DataFrame of ``dgclab.analysis``), draws, and returns the
figure; it never calls ``plt.show()`` and changes no global state (no ``rcParams``, no seaborn
theme).

* ``ax=None``: a new ``matplotlib.figure.Figure`` is created *without pyplot*
  (``single_axes``, ``panel_grid``), so nothing has to be closed and nothing is shown twice in a
  notebook: return it from a cell (or ``display`` it) to show it, ``fig.savefig(...)`` to keep it.
* ``ax`` given: the plot is drawn into ``ax`` and ``ax.figure`` is returned. A plot made of
  several panels (one per head, or two views) replaces ``ax`` by a grid of panels in the same
  place of the figure (``panel_grid``).

Bad inputs raise ``ValueError`` naming the offending value (``dgclab.viz.inputs``).
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.colors as mcolors
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "PALETTE",
    "TRAIN",
    "TEST",
    "PAPER",
    "REALIZED",
    "KEPT",
    "DROPPED",
    "SELECTION_CMAP",
    "single_axes",
    "panel_grid",
    "style_axes",
    "merged_legend",
    "label_step",
    "class_name",
]

# seaborn's "colorblind" palette, spelled out so that importing dgclab.viz costs no seaborn.
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4",
           "#949494", "#ece133", "#56b4e9"]
# training / test curves, the paper's MAC count, the realized MAC count
TRAIN, TEST, PAPER, REALIZED = PALETTE[0], PALETTE[1], "#333333", PALETTE[3]
KEPT, DROPPED = "#1f4e79", "#eeeeee"  # a kept channel is ink, a dropped one is paper
SELECTION_CMAP = mcolors.ListedColormap([DROPPED, KEPT])


def single_axes(ax: Axes | None, figsize) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure (no pyplot) with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def panel_grid(ax: Axes | None, nrows: int, ncols: int, figsize, sharex: bool = False,
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


def style_axes(ax: Axes, grid_axis: str = "both") -> None:
    """Light grid behind the data and no top/right frame: explicit, no global theme."""
    ax.grid(True, axis=grid_axis, color="#dddddd", lw=0.7)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)


def merged_legend(ax: Axes, twin: Axes) -> None:
    """One legend for ``ax`` and its twin, placed where it hides none of ``ax``'s lines (it may
    cover the twin's): ``ax`` is drawn above the twin for that."""
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(handles + more, labels + more_labels, fontsize=8, loc="best", framealpha=0.9,
              edgecolor="none")


def label_step(ax: Axes, count: int, points: float = 10.0) -> int:
    """Label every step-th of ``count`` rows so that labels ~``points`` high do not overlap in
    ``ax``'s height (its nominal height: layout engines run later)."""
    height = ax.get_position().height * ax.get_figure(root=True).get_figheight() * 72  # points
    return max(1, int(np.ceil(count / max(2.0, height / points))))


def class_name(label: int, classes) -> str:
    """The name shown for a class label: ``classes[label]`` (a sequence indexed by label, or a
    mapping label -> name) where there is one, else the number; "unlabelled" for a negative
    label (-1: a sample recorded untagged)."""
    if label < 0:
        return "unlabelled"
    if isinstance(classes, Mapping):
        return str(classes.get(label, label))
    if classes is not None and label < len(classes):
        return str(classes[label])
    return str(label)

