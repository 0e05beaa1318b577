"""Plots of compute that adapts to the image (DGC-G): the MACs each image really cost, by group,
and the anytime curve of one model under both selection rules.

They draw the tables of ``dgclab.analysis.compute_per_image`` and ``compute_sweep``. Pure
functions ``plot_x(data, ..., ax=None) -> Figure`` (conventions: ``dgclab.viz.style``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .cost import _mac_unit
from .inputs import require_columns
from .style import PALETTE, single_axes, style_axes

__all__ = ["plot_macs_per_image", "plot_anytime_curve", "plot_cheapest_and_dearest"]

GROUPINGS = (None, "label", "correct")
RULE_STYLE = {"head-wise": (PALETTE[0], "o"), "threshold": (PALETTE[3], "D")}


def plot_macs_per_image(
    frame: pd.DataFrame, by: str | None = None, classes=None, ax: Axes | None = None
) -> Figure:
    """The whole network's realized MACs per image: one histogram, or one box per group.

    Args:
        frame: ``compute_per_image``'s table (``macs``, and ``label`` / ``correct`` to group).
        by: None (every image, with its 10th and 90th percentiles marked), ``"label"`` (one box
            per class) or ``"correct"`` (right against wrong predictions).
        classes: names of the labels (a sequence indexed by label), for ``by="label"``.
        ax: where to draw; default a new figure.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}, got by={by!r}")
    require_columns(frame, ["macs"] + ([by] if by else []), "frame")
    if frame.empty:
        raise ValueError("frame has no rows: nothing to plot")
    scale, unit = _mac_unit(frame["macs"].to_numpy(float))
    macs = frame["macs"].to_numpy(float) / scale
    fig, ax = single_axes(ax, (7, 4))
    if by is None:
        ax.hist(macs, bins=40, color=PALETTE[0], alpha=0.85)
        for q, style in ((10, ":"), (50, "-"), (90, ":")):
            value = np.percentile(macs, q)
            ax.axvline(value, color="#333333", ls=style, lw=1.2)
            ax.annotate(f"p{q}", (value, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8)
        ax.set_xlabel(f"MACs per image ({unit})")
        ax.set_ylabel("images")
        ax.set_title(f"What each image cost ({len(macs)} images)")
    else:
        groups = sorted(frame[by].unique())
        data = [macs[frame[by].to_numpy() == g] for g in groups]
        if by == "label" and classes is not None:
            names = [str(classes[int(g)]) for g in groups]
        elif by == "correct":
            names = [("right" if g else "wrong") + f" ({len(d)})" for g, d in zip(groups, data)]
        else:
            names = [str(g) for g in groups]
        ax.boxplot(data, orientation="horizontal", showfliers=False, widths=0.6)
        ax.set_yticks(range(1, len(groups) + 1), names)
        ax.set_xlabel(f"MACs per image ({unit})")
        ax.set_title("What each image cost, by " + ("class" if by == "label" else "prediction"))
    style_axes(ax)
    return fig


def plot_anytime_curve(sweep: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Accuracy against mean realized MACs per image, one line per selection rule.

    Horizontal bars span the 10th to 90th percentile of the MACs per image (a point of the
    head-wise rule has almost none: every image costs about the same).

    Args:
        sweep: ``compute_sweep``'s table.
        ax: where to draw; default a new figure.
    """
    if not isinstance(sweep, pd.DataFrame):
        raise TypeError(f"sweep must be a pandas DataFrame, got {type(sweep).__name__}")
    require_columns(sweep, ["rule", "target", "accuracy", "macs_mean", "macs_p10", "macs_p90"],
                    "sweep")
    if sweep.empty:
        raise ValueError("sweep has no rows: nothing to plot")
    scale, unit = _mac_unit(sweep["macs_p90"].to_numpy(float))
    fig, ax = single_axes(ax, (7, 4.5))
    for rule, rows in sweep.groupby("rule", sort=False):
        rows = rows.sort_values("macs_mean")
        color, marker = RULE_STYLE.get(rule, (PALETTE[2], "s"))
        x = rows["macs_mean"].to_numpy(float) / scale
        y = 100 * rows["accuracy"].to_numpy(float)
        spread = np.stack([x - rows["macs_p10"].to_numpy(float) / scale,
                           rows["macs_p90"].to_numpy(float) / scale - x])
        ax.errorbar(x, y, xerr=np.clip(spread, 0, None), fmt=f"-{marker}", color=color, ms=6,
                    capsize=3, label=rule)
        for xi, xv, yv in zip(rows["target"], x, y):
            ax.annotate(f"{xi:g}", (xv, yv), xytext=(4, -11), textcoords="offset points",
                        fontsize=7, color=color)
    ax.set_xlabel(f"mean realized MACs per image ({unit}); bars: 10th-90th percentile")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Anytime curve: one model, the pruning rate swept at inference")
    ax.legend(frameon=False, loc="lower right")
    style_axes(ax)
    return fig


def plot_cheapest_and_dearest(frame: pd.DataFrame, images, classes=None, n: int = 6) -> Figure:
    """The ``n`` images that cost the least (top row) and the most (bottom row).

    Args:
        frame: ``compute_per_image``'s table; its ``id`` indexes ``images``.
        images: the dataset the table was computed on (``images[id][0]`` a (C, H, W) tensor).
        classes: class names, to caption each image with its label and prediction.
        n: images per row.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    require_columns(frame, ["id", "label", "prediction", "macs"], "frame")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(frame):
        raise ValueError(f"n must be an int in [1, {len(frame)}], got n={n!r}")
    ordered = frame.sort_values("macs", kind="stable")
    fig = Figure(figsize=(1.6 * n, 4.2), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    name = (lambda i: str(classes[int(i)])) if classes is not None else str
    for row, (title, picks) in enumerate((("cheapest", ordered.head(n)),
                                          ("dearest", ordered.tail(n)[::-1]))):
        for ax, (_, r) in zip(axes[row], picks.iterrows()):
            image = images[int(r["id"])][0]
            pixels = image.permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
            ok = "" if r["label"] == r["prediction"] else f" (as {name(r['prediction'])})"
            ax.set_title(f"{name(r['label'])}{ok}\n{r['macs'] / 1e6:.2f}M", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        axes[row][0].set_ylabel(title)
    return fig
