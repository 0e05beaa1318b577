"""Plots of what the DGC heads select, from a ``Recording``: the channels one head kept per
image, how often each head keeps each channel (per class too), how much the heads overlap, and
one image's saliencies.

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242: each head of a DGC layer scores the input
channels (its saliency g) and keeps the C_in - k best for the image at hand.

Pure functions ``plot_x(data, ..., ax=None) -> Figure`` (conventions: ``dgclab.viz.style``). An
unknown layer lists the layers of the recording; an out-of-range head names it and the number of
heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..analysis import channel_usage, head_overlap
from ..checks import check_int
from .inputs import check_recording
from .style import (
    DROPPED,
    KEPT,
    PALETTE,
    SELECTION_CMAP,
    class_name,
    label_step,
    panel_grid,
    single_axes,
    style_axes,
)

__all__ = [
    "plot_selection_heatmap",
    "plot_channel_usage",
    "plot_head_overlap",
    "plot_saliency_bars",
]


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
        names.append(class_name(int(label), classes))
    rows = np.concatenate(groups)
    image = sel[rows].astype(np.uint8)  # (shown, C)

    fig, ax = single_axes(ax, (7.5, 5))
    ax.imshow(image, aspect="auto", interpolation="nearest", cmap=SELECTION_CMAP, vmin=0, vmax=1)
    starts = np.cumsum([0] + [len(g) for g in groups])
    for s in starts[1:-1]:
        ax.axhline(s - 0.5, color=PALETTE[3], lw=1)
    step = label_step(ax, len(names))
    centres = (starts[:-1] + starts[1:]) / 2 - 0.5
    ax.set_yticks(centres[::step], names[::step], fontsize=8)
    ax.tick_params(axis="y", length=0)
    ax.set_ylabel("image (grouped by class)")
    ax.set_xlabel("input channel")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    info = recording.layer_info(layer)
    ax.set_title(f"{layer}, head {head}: channels kept per image\n"
                 f"{len(rows)} of {n} images, {dropped_text(info)} when recorded", fontsize=10)
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
    heads = int(info["heads"])
    if head is not None:
        _check_head(head, heads, layer)
        if not per_class:
            raise ValueError("head= selects a panel of the per_class plot; pass per_class=True")
    n = len(recording)
    if n == 0:
        raise ValueError("the recording holds no samples")
    subtitle = f"{n} images, {dropped_text(info)}"
    cmap = "viridis"
    if not per_class:
        usage = channel_usage(recording, [layer])
        freq = usage.pivot(index="head", columns="channel", values="frequency").to_numpy()
        fig, ax = single_axes(ax, (7.5, 1.6 + 0.45 * heads))
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
    names = [class_name(int(v), classes) for v in labels]
    fig, axes = panel_grid(ax, len(shown), 1, (7.5, 0.8 + (0.5 + 0.12 * len(labels)) * len(shown)),
                           sharex=True)
    axes = list(axes.flat)
    for a, h in zip(axes, shown):
        part = usage[usage["head"] == h]
        freq = part.pivot(index="label", columns="channel", values="frequency").loc[labels]
        im = a.imshow(freq.to_numpy(), aspect="auto", interpolation="nearest", cmap=cmap,
                      vmin=0, vmax=1)
        step = label_step(a, len(names))
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
    check_recording(recording)
    if len(recording) == 0:
        raise ValueError("the recording holds no samples")
    if layer is not None:
        return _head_overlap_matrix(recording, layer, ax)

    frame = head_overlap(recording, chance=True)
    names = recording.layer_names
    fig, ax = single_axes(ax, (7.5, 1.4 + 0.38 * max(len(names), 1)))
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
    style_axes(ax, grid_axis="x")
    return fig


def _head_overlap_matrix(recording, layer: str, ax: Axes | None) -> Figure:
    info = _layer_info(recording, layer)
    heads = int(info["heads"])
    frame = head_overlap(recording, [layer], chance=True)
    matrix = np.eye(heads)
    for row in frame.itertuples():
        matrix[row.head_a, row.head_b] = matrix[row.head_b, row.head_a] = row.jaccard
    fig, ax = single_axes(ax, (1.6 + 0.9 * heads, 0.9 + 0.8 * heads))
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
    fig, axes = panel_grid(ax, heads, 1, (8, 0.9 + 1.5 * heads), sharex=True, sharey=True)
    axes = list(axes.flat)
    x = np.arange(channels)
    for h, a in enumerate(axes):
        colors = np.where(sel[h], KEPT, "#b8b8b8")
        a.bar(x, sal[h], width=0.85, color=colors)
        a.set_title(f"{head_names[h]}: kept {int(sel[h].sum())} of {channels} channels",
                    fontsize=9, loc="left")
        a.set_ylabel("saliency g")
        style_axes(a, grid_axis="y")
    axes[-1].set_xlabel("input channel")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlim(-0.6, channels - 0.4)
    axes[0].legend(handles=[Patch(facecolor=KEPT, label="kept"),
                            Patch(facecolor="#b8b8b8", label="dropped")],
                   loc="lower right", bbox_to_anchor=(1, 1), frameon=False, fontsize=8, ncols=2)
    return fig


def dropped_text(info: dict) -> str:
    """What a layer drops, for a title: DGC's "k = 12 of 16 dropped", else its kind."""
    if "inactive_channels" in info:
        return f"k = {info['inactive_channels']} of {info['in_channels']} dropped"
    return f"{info.get('kind', 'dgc')} layer, {info['heads']} groups"


def _layer_info(recording, layer: str) -> dict:
    check_recording(recording)
    if layer not in recording.layer_names:
        raise ValueError(f"no DGC layer {layer!r} in this recording; layers: "
                         f"{list(recording.layer_names)}")
    return recording.layer_info(layer)


def _check_head(head, heads: int, layer: str) -> None:
    if not 0 <= check_int("head", head) < heads:
        raise ValueError(f"head={head!r} is out of range for layer {layer!r}, which has "
                         f"{heads} heads (0..{heads - 1})")


def _head_selection(recording, layer: str, head: int) -> np.ndarray:
    info = _layer_info(recording, layer)
    _check_head(head, int(info["heads"]), layer)
    if len(recording) == 0:
        raise ValueError("the recording holds no samples")
    return recording.selections(layer)[:, head].numpy()  # (N, C) bool


def _check_positive_int(value, name: str) -> None:
    check_int(name, value, min=1)



def _as_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        array = np.asarray(x)
    except Exception as err:
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from err
    if array.dtype == object:
        raise TypeError(f"{name} must be an array or tensor of numbers, got {type(x).__name__}")
    return array
