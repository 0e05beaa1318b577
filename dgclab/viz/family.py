"""The channel-grouping family side by side (issue #18): accuracy against cost, and what each
method's groups read at one layer.

* ``plot_family_pareto``: the family bench's summary (``dgclab.bench.family.summarize``), test
  accuracy against paper MACs, one point per method, coloured by its measured latency.
* ``family_connectivity``: for one layer position and one image, which input channels each
  group of each method reads, a (G, C_in) bool per method: DGC's heads chose them for this
  image (a forward under a ``Recorder``); static groups, LGC, SCC and SG-CNN read the same
  channels for every image (``connectivity()``); a dense conv reads everything.
* ``plot_connectivity``: those matrices, one small panel per method on one column scale.
* ``family_explorer``: an image and a layer picker over ``plot_connectivity``.

The methods: static group conv (``GroupConv2d``); learned group conv, Huang et al., CondenseNet,
CVPR 2018, arXiv 1711.09224; dynamic group conv, Su et al., ECCV 2020, arXiv 2007.04242;
sliding-channel conv, Wang et al., DSXplore, IPDPS 2021, arXiv 2101.00745; self-grouping conv,
Guo et al., SG-CNN, Neural Networks 2020, arXiv 2009.13803.

Pure functions ``plot_x(data, ..., ax=None) -> Figure`` (conventions: ``dgclab.viz.style``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..analysis import SelfGroupedConv2d
from ..analysis.self_grouping import _channel_mask
from ..checks import check_int
from ..layers import GroupingConv
from ..layers.lgc import CondensedConv2d
from ..modes import eval_mode
from ..record import Recorder
from .cost import _mac_unit
from .inputs import require_columns
from .style import DROPPED, KEPT, SELECTION_CMAP, panel_grid, single_axes, style_axes
from .widgets import Explorer

__all__ = [
    "FamilyExplorer",
    "connectivity_layers",
    "family_connectivity",
    "family_explorer",
    "plot_connectivity",
    "plot_family_pareto",
]

PARETO_COLUMNS = ["method", "seeds", "acc_mean", "acc_std", "paper_macs", "ms_per_image_b64"]
LOG_RANGE = 8.0  # a log MAC axis once the largest cost is this many times the smallest
# what a row of a method's matrix is (the family bench's method names); anything else: "group"
ROWS = {"dgc": "head", "scc": "window", "sg-cnn": "cluster"}
LATENCY_CMAP = "viridis"


# --------------------------------------------------------------------------------------------
# Accuracy against cost
# --------------------------------------------------------------------------------------------


def plot_family_pareto(summary: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Test accuracy against paper MACs per image, one point per method, coloured by latency.

    Each finished method is a point at its mean test accuracy (error bars: ± the std over seeds
    where there are several) and its paper MAC count, labelled with its name and its measured
    ms per image at batch 64; the colour says the same latency on a colour bar. A dashed line
    joins the Pareto front: the methods no cheaper method beats on accuracy. Methods without a
    finished seed (``seeds`` 0, the summary's "missing") are left out and named under the
    title. The MAC axis is logarithmic when the largest cost is ``LOG_RANGE`` times the
    smallest or more.

    Args:
        summary: the family bench's summary (``SUMMARY_COLUMNS`` of
            ``dgclab.bench.family``; ``data/bench-family/summary.csv``): at least ``method``,
            ``seeds``, ``acc_mean`` and ``acc_std`` (fractions), ``paper_macs``,
            ``ms_per_image_b64`` (NaN: not timed, drawn grey).
        ax: where to draw; default a new figure.

    Returns:
        The figure: ``ax`` and the colour bar's axes (none when no method was timed). The
        points are one ``PathCollection`` of ``ax``, in the summary's order.

    Raises:
        TypeError: ``summary`` is no DataFrame.
        ValueError: ``summary`` lacks a column, or holds no finished method.

    Example:
        >>> summary = pd.read_csv("data/bench-family/summary.csv")  # doctest: +SKIP
        >>> plot_family_pareto(summary)  # doctest: +SKIP
    """
    if not isinstance(summary, pd.DataFrame):
        raise TypeError(f"summary must be a pandas DataFrame, got {type(summary).__name__}")
    require_columns(summary, PARETO_COLUMNS, "summary")
    seeds = summary["seeds"].fillna(0).to_numpy(float)
    done = (seeds > 0) & np.isfinite(summary["acc_mean"].to_numpy(float)) \
        & np.isfinite(summary["paper_macs"].to_numpy(float))
    missing = summary.loc[~done, "method"].astype(str).tolist()
    rows = summary[done]
    if rows.empty:
        raise ValueError(f"summary holds no finished method (seeds > 0 with an accuracy and "
                         f"MACs); missing: {missing}")
    names = rows["method"].astype(str).tolist()
    scale, unit = _mac_unit(rows["paper_macs"].to_numpy(float))
    x = rows["paper_macs"].to_numpy(float) / scale
    y = 100 * rows["acc_mean"].to_numpy(float)
    err = np.where(rows["seeds"].to_numpy(float) > 1, 100 * rows["acc_std"].to_numpy(float),
                   np.nan)
    ms = rows["ms_per_image_b64"].to_numpy(float)

    fig, ax = single_axes(ax, (7.5, 4.8))
    timed = np.isfinite(ms)
    norm = mcolors.Normalize(*(np.nanmin(ms), np.nanmax(ms)) if timed.any() else (0, 1))
    if timed.any() and norm.vmin == norm.vmax:  # one timing: any colour scale around it
        norm = mcolors.Normalize(norm.vmin * 0.9, norm.vmax * 1.1 + 1e-9)
    cmap = colormaps[LATENCY_CMAP]
    colors = [cmap(norm(v)) if np.isfinite(v) else "#aaaaaa" for v in ms]

    front = _pareto_front(x, y)
    if len(front) > 1:
        ax.plot(x[front], y[front], "--", color="#777777", lw=1, zorder=1)
    if np.isfinite(err).any():
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="none", ecolor="#555555", capsize=3,
                    lw=1, zorder=2)
    ax.scatter(x, y, s=90, c=colors, edgecolors="#333333", linewidths=0.8, zorder=3)
    for name, xv, yv, t in zip(names, x, y, ms):
        text = name + (f"\n{t:.2f} ms" if np.isfinite(t) else "\nnot timed")
        ax.annotate(text, (xv, yv), xytext=(7, 4), textcoords="offset points", fontsize=8,
                    va="bottom")
    if timed.any():
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="measured ms / image (batch 64)",
                     shrink=0.9)
    if x.max() >= LOG_RANGE * x.min():
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"paper MACs per image ({unit})")
    ax.set_ylabel("test accuracy (%)")
    ax.margins(x=0.18, y=0.2)
    title = "Accuracy against cost"
    if missing:
        title += f"\nleft out, no finished seed: {', '.join(missing)}"
    ax.set_title(title, fontsize=11)
    handles = [Line2D([], [], ls="--", color="#777777", label="Pareto front")] \
        if len(front) > 1 else []
    if np.isfinite(err).any():
        handles.append(Line2D([], [], marker="|", ls="", color="#555555", ms=10,
                              label="± std over seeds"))
    if handles:
        ax.legend(handles=handles, frameon=False, loc="lower right", fontsize=8)
    style_axes(ax)
    return fig


def _pareto_front(macs: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no cheaper (or equally cheap) point beats on accuracy, by MACs."""
    order = np.lexsort((-acc, macs))  # cheapest first, the best of equal costs first
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.asarray(front, dtype=int)


# --------------------------------------------------------------------------------------------
# What each method's groups read
# --------------------------------------------------------------------------------------------


def connectivity_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer position whose channel grouping ``family_connectivity``
    reads, in ``named_modules`` order.

    The positions of a model: its layers of the layer protocol (``GroupingConv``: group conv,
    LGC, DGC, SCC's sliding-channel half), its self-grouped convs (``SelfGroupedConv2d`` after
    ``to_grouped``, or a conv masked in place by ``self_group``) and condensed LGCs
    (``CondensedConv2d``). A model with none of them is dense: its positions are its plain
    ``nn.Conv2d`` s (groups 1) after the first (the stem), as ``self_group`` groups them. Two
    ``resnet_cifar`` of the same depth have their positions at the same places whatever their
    conv kind, so an index names the same layer in each.

    Raises:
        TypeError: ``model`` is no ``nn.Module``.
        ValueError: ``model`` has no conv at all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(outer + ".") or outer == "" for outer, _ in found):
            continue  # the insides of a position (a DGC head's conv, a cluster's conv)
        if isinstance(module, (GroupingConv, SelfGroupedConv2d, CondensedConv2d)) \
                or _channel_mask(module) is not None:
            found.append((name, module))
    if found:
        return found
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.groups == 1]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no conv whose channels could be grouped")
    return convs[1:] if len(convs) > 1 else convs


def family_connectivity(models: Mapping[str, nn.Module], layer_index: int,
                        image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which input channels each group reads, per method, at one layer position for one image.

    Per model, the position ``connectivity_layers(model)[layer_index]``:

    * a dynamic protocol layer (DGC): the model runs on ``image`` in eval mode under a
      ``Recorder`` (no gradient), and the panel is that image's selection (heads, C_in);
    * a static protocol layer (group conv, LGC, SCC): its ``connectivity()``, (G, C_in)
      (SCC: one row per output channel, its window);
    * a self-grouped conv: its clusters' channel subsets, (clusters, C_in) (a conv masked in
      place by ``self_group`` is read as ``to_grouped`` would build it);
    * a condensed LGC: the channels each group gathers, (G, C_in);
    * a dense conv: (1, C_in), all True.

    Args:
        models: method name -> model (any mode; each comes back in its own).
        layer_index: the position, an index into ``connectivity_layers`` (negative counts
            from the end).
        image: (C, H, W) or (1, C, H, W), an input of the models (only dynamic models run).

    Returns:
        Method name -> (rows, C_in) bool CPU tensor, in ``models``' order.

    Raises:
        TypeError: a value of ``models`` that is no ``nn.Module``, a ``layer_index`` that is
            no int, an ``image`` that is no tensor.
        ValueError: empty ``models``, a ``layer_index`` outside a model's positions (the
            message names the model and its count), an image of another shape.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping method name -> nn.Module")
    if not isinstance(layer_index, (int, np.integer)) or isinstance(layer_index, bool):
        raise TypeError(f"layer_index must be an int, got {layer_index!r}")
    x = _one_image(image)
    panels = {}
    for method, model in models.items():
        positions = connectivity_layers(model)
        if not -len(positions) <= layer_index < len(positions):
            raise ValueError(f"layer_index must be in [{-len(positions)}, {len(positions)}) for "
                             f"{method!r} ({len(positions)} positions), got {layer_index}")
        name, layer = positions[layer_index]
        panels[method] = _reads(model, name, layer, x).bool().cpu()
    return panels


def _reads(model: nn.Module, name: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(rows, C_in) bool: what the position ``name`` of ``model`` reads (for image ``x``)."""
    if isinstance(layer, GroupingConv):
        if not layer.dynamic:
            return layer.connectivity()
        device = next(model.parameters()).device
        with eval_mode(model), torch.no_grad(), Recorder(model) as rec:
            model(x.to(device))
        return rec.selections(name)[0]  # (heads, C_in) of the one image
    if isinstance(layer, SelfGroupedConv2d):
        return layer.connectivity()
    if isinstance(layer, CondensedConv2d):
        index = layer.index.cpu().view(layer.groups, -1)  # (G, kept)
        reads = torch.zeros(layer.groups, layer.in_channels, dtype=torch.bool)
        return reads.scatter_(1, index, True)
    mask = _channel_mask(layer)
    if mask is not None:  # masked in place: the clusters as to_grouped builds them
        return SelfGroupedConv2d(layer, mask.cluster, mask.mask > 0).connectivity()
    return torch.ones(1, layer.in_channels, dtype=torch.bool)  # dense: one group reads all


def _one_image(image) -> torch.Tensor:
    """``image`` as a (1, C, H, W) float tensor."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (C, H, W), got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    return image.float()


def plot_connectivity(panels: Mapping[str, torch.Tensor], ax: Axes | None = None,
                      ncols: int = 3, rows: Mapping[str, str] | None = None,
                      title: str | None = None) -> Figure:
    """One small black-and-white matrix per method: which input channels each group reads.

    Rows are the method's groups (DGC's heads, SCC's windows, SG-CNN's clusters, ...), columns
    the input channels, ink where the group reads the channel. Every panel has the same column
    scale (the widest C_in), so a narrower layer (a merged model's) shows narrower. Each panel's
    title gives its shape and the fraction of the (rows, C_in) connections it reads.

    Args:
        panels: method name -> (rows, C_in) bool tensor or array (``family_connectivity``);
            for DGC, one image's selection (heads, C_in).
        ax: where to draw; default a new figure. Given, it is replaced by the grid of panels.
        ncols: panels per row of the grid.
        rows: method name -> what a row is ("head", "window", ...); default by the family
            bench's method names (``ROWS``), else "group".
        title: a title above the panels.

    Returns:
        The figure, with one axes per panel (in ``panels``' order; the grid's unused cells are
        removed).

    Raises:
        ValueError: empty ``panels``, a matrix that is not 2-D, ``ncols`` < 1.
    """
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("panels must be a non-empty mapping method name -> (rows, C_in) bool")
    ncols = check_int("ncols", ncols, min=1)
    mats = {}
    for method, value in panels.items():
        mat = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value).astype(bool)
        if mat.ndim != 2 or 0 in mat.shape:
            raise ValueError(f"panels[{method!r}] must be a non-empty (rows, C_in) matrix, got "
                             f"shape {mat.shape}")
        mats[str(method)] = mat
    names = {**ROWS, **(dict(rows) if rows is not None else {})}
    ncols = min(ncols, len(mats))
    nrows = math.ceil(len(mats) / ncols)
    width = max(m.shape[1] for m in mats.values())
    fig, axes = panel_grid(ax, nrows, ncols, (3.5 * ncols, 2.5 * nrows + 0.5))
    axes = list(axes.flat)
    for extra in axes[len(mats):]:
        extra.remove()
    for a, (method, mat) in zip(axes, mats.items()):
        g, c = mat.shape
        row = names.get(method, "group")
        a.imshow(mat.astype(np.uint8), aspect="auto", interpolation="nearest",
                 cmap=SELECTION_CMAP, vmin=0, vmax=1)
        a.set_xlim(-0.5, width - 0.5)
        a.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        if g > 1:
            a.yaxis.set_major_locator(MaxNLocator(4, integer=True))
        else:
            a.set_yticks([0])
        a.set_ylabel(f"{row}s" if g > 1 else row, fontsize=9)
        a.set_xlabel("input channel", fontsize=9)
        a.tick_params(labelsize=8)
        a.set_title(f"{method}: {g} × {c}, reads {mat.mean():.0%}", fontsize=10)
    fig.legend(handles=[Patch(facecolor=KEPT, label="read"),
                        Patch(facecolor=DROPPED, edgecolor="#999999", label="not read")],
               loc="outside lower center", ncols=2, frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# --------------------------------------------------------------------------------------------
# The explorer
# --------------------------------------------------------------------------------------------


class FamilyExplorer(Explorer):
    """Pick an image and a layer position: what each method's groups read there.

    Shows the image beside ``plot_connectivity`` of ``family_connectivity(models, layer,
    image)``: DGC's heads follow the image, the other methods stay put.

    Controls: ``"image"`` (Dropdown over ``images``, captioned), ``"layer"`` (Dropdown of the
    positions, named after the first model's layers).

    Args:
        models: method name -> model (``family_connectivity``).
        images: (N, C, H, W) tensor, or a sequence of (C, H, W) tensors.
        captions: one string per image (e.g. its class); default "image i".
        layer: the position shown first (an index into ``connectivity_layers``); default the
            last one every model has.
        image: the image shown first (an index into ``images``).
        ncols: panels per row.
        height: CSS height of the output area.

    Raises:
        ValueError: no image, captions of another length, a ``layer`` or ``image`` out of
            range, what ``family_connectivity`` raises for the default choice.
    """

    def __init__(self, models: Mapping[str, nn.Module], images, captions: Sequence[str] | None
                 = None, layer: int | None = None, image: int = 0, ncols: int = 3,
                 height: str = "640px") -> None:
        if not isinstance(models, Mapping) or not models:
            raise ValueError("models must be a non-empty mapping method name -> nn.Module")
        self.models, self.ncols = dict(models), ncols
        self.images = [_one_image(x)[0] for x in images]  # (C, H, W) each
        if not self.images:
            raise ValueError("images is empty: nothing to pick")
        captions = [f"image {i}" for i in range(len(self.images))] if captions is None \
            else [str(c) for c in captions]
        if len(captions) != len(self.images):
            raise ValueError(f"captions must name every image, got {len(captions)} captions "
                             f"for {len(self.images)} images")
        self.captions = captions
        count = min(len(connectivity_layers(m)) for m in self.models.values())
        names = [n for n, _ in connectivity_layers(next(iter(self.models.values())))][:count]
        layer = count - 1 if layer is None else layer
        layer = check_int("layer", layer, min=0, max=count - 1)
        image = check_int("image", image, min=0, max=len(self.images) - 1)
        pick = widgets.Dropdown(options=[(f"{i}: {c}", i) for i, c in enumerate(captions)],
                                value=image, description="image")
        choice = widgets.Dropdown(options=[(f"{i}: {n}", i) for i, n in enumerate(names)],
                                  value=layer, description="layer")
        self.layer_names = names
        super().__init__({"image": pick, "layer": choice}, height)

    def draw(self, image: int, layer: int) -> Figure:
        x = self.images[image]
        panels = family_connectivity(self.models, layer, x)
        rows = math.ceil(len(panels) / min(self.ncols, len(panels)))
        fig = Figure(figsize=(12, 2.5 * rows + 0.8), layout="constrained")
        grid = fig.add_gridspec(1, 2, width_ratios=[1, 5.5])
        thumb = fig.add_subplot(grid[0])
        pixels = x.detach().cpu().float().permute(1, 2, 0).squeeze(-1).numpy()
        thumb.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        thumb.set_title(self.captions[image], fontsize=10)
        thumb.set_axis_off()
        plot_connectivity(panels, ax=fig.add_subplot(grid[1]), ncols=self.ncols)
        fig.suptitle(f"layer {layer}: {self.layer_names[layer]}", fontsize=11)
        return fig


def family_explorer(models: Mapping[str, nn.Module], images, captions=None,
                    **kwargs) -> FamilyExplorer:
    """A ``FamilyExplorer``: pick an image and a layer, see what each method reads there.

    Args: see ``FamilyExplorer`` (``kwargs``: ``layer``, ``image``, ``ncols``, ``height``).

    Example:
        >>> explorer = family_explorer({"dgc": dgc, "group": group}, images)  # doctest: +SKIP
        >>> explorer                # the widget  # doctest: +SKIP
        >>> explorer.default_image  # the static figure, for readers without a kernel  # doctest: +SKIP
    """
    return FamilyExplorer(models, images, captions, **kwargs)
