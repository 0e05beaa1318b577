"""Explorers: thin ipywidgets over the plotting functions, for notebooks.

Each explorer is an ``ipywidgets.VBox``: a row of controls above an ``Output`` of fixed height,
wired with ``ipywidgets.interactive_output`` (sliders have ``continuous_update=False``: the
figure is drawn when the slider is released, not at every pixel). The drawing is done by the
pure ``plot_x`` functions of ``dgclab.viz``; an explorer only maps its controls to their
arguments.

* ``image_explorer(model, dataset)``: one image (by index, optionally within a class), its
  attributions and the channels each head of a DGC layer kept (``plot_image_explanation``).
* ``epoch_explorer(snapshots)``: an epoch slider over a run's recordings
  (``plot_selection_heatmap`` and ``plot_head_overlap``).
* ``diversity_explorer(recording)``: a layer / head picker (``plot_head_overlap`` and
  ``plot_channel_usage``).
* ``threshold_explorer(frames)``: a threshold slider over ``compute_per_image`` tables, one per
  DGC-G threshold (``plot_macs_per_image``).

Every explorer exposes, for notebooks and tests:

* ``controls``: name -> widget (set ``.value`` to change the choice, as a user would);
* ``output``: the ``Output`` widget the figure is displayed into;
* ``last_figure``: the ``Figure`` of the current choice, and ``draws``, how many were drawn;
* ``default_figure``: the figure of the default choice, to show as a static image so that the
  notebook reads on GitHub, where widgets do not run (``default_image`` is the same as a PNG,
  which shows even where pyplot's inline backend is not active).

Without a kernel (a script, pytest) ``interactive_output`` still calls the update on every
change, but an ``Output`` captures nothing (capture is done by the notebook front end, keyed by
the kernel's message id), so the update only stores ``last_figure``; inside a kernel it also
displays it as a PNG.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from IPython import get_ipython
from IPython.display import Image, display
from matplotlib.figure import Figure

from ..record import load_recording
from .adaptive import plot_macs_per_image
from .attribution import require_dgc_layers, image_attributions, plot_image_explanation
from .inputs import check_recording
from .selection import plot_channel_usage, plot_head_overlap, plot_selection_heatmap
from .style import class_name

__all__ = [
    "Explorer",
    "ImageExplorer",
    "EpochExplorer",
    "DiversityExplorer",
    "ThresholdExplorer",
    "image_explorer",
    "epoch_explorer",
    "diversity_explorer",
    "threshold_explorer",
    "dataset_labels",
    "figure_png",
]

ALL = -1  # the "all heads" / "any class" choice of a dropdown (None would mean "no choice")


def figure_png(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (Agg, no pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def in_kernel() -> bool:
    """True inside a Jupyter kernel, where ``display`` reaches a front end."""
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


class Explorer(widgets.VBox):
    """A row of controls, an ``Output`` of fixed height, and a ``draw`` from choices to a figure.

    Subclasses build their controls and implement ``draw(**choices) -> Figure``; the base class
    wires them with ``ipywidgets.interactive_output``, draws the default choice at once
    (``default_figure``) and redraws on every change.

    Args:
        controls: name -> value widget; the names are ``draw``'s keyword arguments.
        height: CSS height of the output area (a taller figure scrolls inside it).
        header: widgets shown between the controls and the output (e.g. a status line).
    """

    def __init__(self, controls: Mapping[str, widgets.ValueWidget], height: str = "560px",
                 header: Sequence[widgets.Widget] = ()) -> None:
        super().__init__()
        self.controls = dict(controls)
        self.last_figure: Figure | None = None
        self.last_choice: dict | None = None
        self.draws = 0
        self._adjusting = False
        self._png: bytes | None = None  # the last figure, rendered once it is displayed
        self.output = widgets.interactive_output(self._update, self.controls)
        self.output.layout = widgets.Layout(height=height, overflow="auto")
        self.default_figure = self.last_figure  # interactive_output drew the default choice
        rows = [widgets.HBox(list(self.controls.values()),
                             layout=widgets.Layout(flex_flow="row wrap"))]
        self.children = tuple(rows + list(header) + [self.output])

    @property
    def default_image(self) -> Image:
        """``default_figure`` as a PNG ``IPython.display.Image``: it shows in any notebook (a
        bare ``Figure`` renders only once pyplot's inline backend is active)."""
        return Image(data=figure_png(self.default_figure), format="png")

    def draw(self, **choices) -> Figure:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextmanager
    def _adjusting_controls(self):
        """Within: controls moved by another control's change draw nothing. The change that
        caused them draws once, after (its observer was registered later than the adjuster's)."""
        self._adjusting = True
        try:
            yield
        finally:
            self._adjusting = False

    def _update(self, **choices) -> None:
        if self._adjusting:
            return
        if choices != self.last_choice:  # the same choice again: show it, do not redraw
            self.last_figure = self.draw(**choices)
            self.last_choice = dict(choices)
            self.draws += 1
            self._png = None
        if in_kernel():  # inside interactive_output's `with output:`, so captured there
            if self._png is None:
                self._png = figure_png(self.last_figure)
            display(Image(data=self._png, format="png"))

    def _set_heads(self, dropdown: widgets.Dropdown, heads: int, all: bool = True) -> None:
        """Offer ``heads`` heads in ``dropdown``, keeping its choice where it still exists."""
        options = _head_options(heads, all)
        if [v for _, v in options] == [v for _, v in dropdown.options]:
            return
        keep = dropdown.value if dropdown.value in [v for _, v in options] else options[0][1]
        with self._adjusting_controls():
            dropdown.options = options  # selects the first option
            dropdown.value = keep


# --------------------------------------------------------------------------------------------
# One image: attributions and selections
# --------------------------------------------------------------------------------------------


class ImageExplorer(Explorer):
    """Pick an image (by index, optionally within one class), a DGC layer and a head.

    Controls: ``"image"`` (IntSlider, the position among the images of the chosen class),
    ``"cls"`` (Dropdown, ``-1`` = any class), ``"layer"`` (Dropdown of DGC layer names),
    ``"head"`` (Dropdown, ``-1`` = all heads). ``index`` is the dataset index shown.

    Attributions are cached per image (the last ``cache`` images), so that changing the layer
    or the head only redraws.

    Args:
        model: a classifier with DGC layers.
        dataset: items ``(image (C, H, W), label)``, without random augmentation (the test
            set): the image drawn must be the one whose attributions are cached.
        classes: class names (sequence indexed by label, or mapping).
        layers: the DGC layer names offered; default all of them.
        height: CSS height of the output area.
        cache: images whose attributions are kept.
        **explain: passed to ``plot_image_explanation`` (``k``, ``steps``, ``gradcam_layer``).
    """

    def __init__(self, model: nn.Module, dataset, classes=None, layers: Sequence[str] | None = None,
                 height: str = "760px", cache: int = 16, **explain) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        names = [n for n, _ in require_dgc_layers(model)]
        layers = names if layers is None else list(layers)
        unknown = [n for n in layers if n not in names]
        if unknown or not layers:
            raise ValueError(f"layers must be DGC layers of the model, got {layers}; DGC layers: "
                             f"{names}")
        self.model, self.dataset, self.classes = model, dataset, classes
        self.labels = dataset_labels(dataset)  # (N,) int
        if len(self.labels) == 0:
            raise ValueError("the dataset is empty")
        self.explain = explain
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_size = cache
        self.index = 0

        present = sorted(int(c) for c in np.unique(self.labels))
        image = widgets.IntSlider(0, min=0, max=len(self.labels) - 1, description="image",
                                  continuous_update=False)
        cls = widgets.Dropdown(options=[("any", ALL)] + [(class_name(c, classes), c)
                                                         for c in present],
                               value=ALL, description="class")
        layer = widgets.Dropdown(options=layers, value=layers[-1], description="layer")
        head = widgets.Dropdown(options=_head_options(self._heads(layers[-1])), value=ALL,
                                description="head")
        self.status = widgets.Label()
        # Registered before interactive_output's observers: these move the dependent controls
        # (drawing nothing), then interactive_output's observer draws the new choice once.
        cls.observe(self._on_class, "value")
        layer.observe(lambda change: self._set_heads(head, self._heads(change["new"])), "value")
        super().__init__({"image": image, "cls": cls, "layer": layer, "head": head}, height,
                         header=[self.status])

    def candidates(self, cls: int = ALL) -> np.ndarray:
        """Dataset indices of the images of class ``cls`` (all for ``-1``)."""
        return np.arange(len(self.labels)) if cls == ALL else np.flatnonzero(self.labels == cls)

    def draw(self, image: int, cls: int, layer: str, head: int) -> Figure:
        pool = self.candidates(cls)
        position = min(image, len(pool) - 1)  # defensive: the slider's range follows the class
        index = self.index = int(pool[position])
        x, label = self.dataset[index]
        name = class_name(int(label), self.classes)
        where = "" if cls == ALL else f" labelled {class_name(cls, self.classes)!r}"
        self.status.value = (f"image {position + 1} of {len(pool)}{where}: dataset index "
                             f"{index}, label {name}")
        return plot_image_explanation(
            self.model, x, layer, classes=self.classes, head=None if head == ALL else head,
            label=int(label), attributions=self._attributions(index, x), **self.explain)

    def _attributions(self, index: int, x: torch.Tensor) -> dict:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        result = image_attributions(self.model, x, layer=self.explain.get("gradcam_layer"),
                                    steps=self.explain.get("steps", 32))
        self._cache[index] = result
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def _on_class(self, change) -> None:
        slider = self.controls["image"]
        with self._adjusting_controls():
            slider.value = 0
            slider.max = max(len(self.candidates(change["new"])) - 1, 0)

    def _heads(self, layer: str) -> int:
        return dict(require_dgc_layers(self.model))[layer].heads


def image_explorer(model: nn.Module, dataset, classes=None, layers: Sequence[str] | None = None,
                   **kwargs) -> ImageExplorer:
    """An ``ImageExplorer``: an image's attributions beside its DGC selections.

    Args: see ``ImageExplorer`` (``kwargs``: ``height``, ``cache``, and ``k``, ``steps``,
    ``gradcam_layer`` for ``plot_image_explanation``).

    Example:
        >>> explorer = image_explorer(model, test_set, classes=info.classes)  # doctest: +SKIP
        >>> explorer.default_figure   # the static figure, for readers without a kernel  # doctest: +SKIP
        >>> explorer                  # the widget  # doctest: +SKIP
    """
    return ImageExplorer(model, dataset, classes, layers, **kwargs)


# --------------------------------------------------------------------------------------------
# A run over its epochs
# --------------------------------------------------------------------------------------------


class EpochExplorer(Explorer):
    """An epoch slider over a run's recordings, with a layer and a head picker.

    Shows, for the chosen epoch, ``plot_selection_heatmap`` (which channels the head kept, per
    image) beside ``plot_head_overlap`` of the layer (heads x heads Jaccard).

    Controls: ``"epoch"`` (SelectionSlider over the epochs), ``"layer"``, ``"head"``.

    Args:
        snapshots: epoch -> ``Recording`` (e.g. ``RecordingSnapshots.recordings``), or a
            sequence of them for epochs 1, 2, ...; a path to a ``.npz`` recording or to a run
            folder (its ``test_recording.npz``) stands for a recording and is loaded when
            first shown.
        classes: class names for the heatmap.
        max_samples: images in the heatmap.
        height: CSS height of the output area.
    """

    def __init__(self, snapshots, classes=None, max_samples: int = 200,
                 height: str = "520px") -> None:
        if isinstance(snapshots, Mapping):
            items = sorted(snapshots.items())
        elif isinstance(snapshots, Sequence) and not isinstance(snapshots, str):
            items = list(enumerate(snapshots, start=1))
        else:
            raise TypeError("snapshots must be a dict epoch -> Recording or a list of "
                             f"recordings, got {type(snapshots).__name__}")
        if not items:
            raise ValueError("snapshots is empty: no epoch to show")
        self.snapshots = dict(items)
        self.classes, self.max_samples = classes, max_samples
        last = self.recording(items[-1][0])
        layers = last.layer_names
        if not layers:
            raise ValueError("the last recording holds no DGC layer")
        epoch = widgets.SelectionSlider(options=[e for e, _ in items], value=items[-1][0],
                                        description="epoch", continuous_update=False)
        layer = widgets.Dropdown(options=layers, value=layers[0], description="layer")
        head = widgets.Dropdown(options=_head_options(_recorded_heads(last, layers[0]), all=False),
                                value=0, description="head")
        layer.observe(lambda change: self._set_heads(
            head, _recorded_heads(self.recording(epoch.value), change["new"]), all=False),
            "value")
        super().__init__({"epoch": epoch, "layer": layer, "head": head}, height)

    def recording(self, epoch):
        """The recording of ``epoch`` (loaded from its path on first use)."""
        rec = self.snapshots[epoch]
        if isinstance(rec, (str, os.PathLike)):
            path = os.fspath(rec)
            if os.path.isdir(path):
                path = os.path.join(path, "test_recording.npz")
            rec = self.snapshots[epoch] = load_recording(path)
        check_recording(rec)
        return rec

    def draw(self, epoch, layer: str, head: int) -> Figure:
        rec = self.recording(epoch)
        fig = Figure(figsize=(11.5, 4.8), layout="constrained")
        if layer not in rec.layer_names:
            ax = fig.add_subplot()
            ax.text(0.5, 0.5, f"epoch {epoch}: {layer} was not recorded", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return fig
        # a grid, not subfigures: plot_selection_heatmap sizes its labels from ax.figure
        grid = fig.add_gridspec(1, 2, width_ratios=[1.9, 1])
        plot_selection_heatmap(rec, layer, head, ax=fig.add_subplot(grid[0]),
                               max_samples=self.max_samples, classes=self.classes)
        plot_head_overlap(rec, layer, ax=fig.add_subplot(grid[1]))
        fig.suptitle(f"epoch {epoch}", fontsize=12)
        return fig


def epoch_explorer(snapshots, classes=None, **kwargs) -> EpochExplorer:
    """An ``EpochExplorer`` over ``snapshots`` (epoch -> Recording).

    Example:
        >>> snaps = RecordingSnapshots()  # doctest: +SKIP
        >>> Trainer(config, callbacks=[snaps]).fit()  # doctest: +SKIP
        >>> epoch_explorer(snaps.recordings)          # doctest: +SKIP
    """
    return EpochExplorer(snapshots, classes, **kwargs)


# --------------------------------------------------------------------------------------------
# Diversity of the heads
# --------------------------------------------------------------------------------------------


class DiversityExplorer(Explorer):
    """Do the heads choose differently? A layer / head picker over one recording.

    Shows ``plot_head_overlap`` of the layer (heads x heads Jaccard) beside
    ``plot_channel_usage``: all heads (heads x channels) for head ``-1``, else that head's
    usage per class.

    Controls: ``"layer"``, ``"head"`` (``-1`` = all heads).

    Args:
        recording: a ``Recording`` (or live ``Recorder``).
        classes: class names for the per-class usage.
        height: CSS height of the output area.
    """

    def __init__(self, recording, classes=None, height: str = "520px") -> None:
        check_recording(recording)
        layers = recording.layer_names
        if not layers:
            raise ValueError("the recording holds no DGC layer")
        if len(recording) == 0:
            raise ValueError("the recording holds no samples")
        self.recording, self.classes = recording, classes
        layer = widgets.Dropdown(options=layers, value=layers[0], description="layer")
        head = widgets.Dropdown(options=_head_options(_recorded_heads(recording, layers[0])),
                                value=ALL, description="head")
        layer.observe(
            lambda change: self._set_heads(head, _recorded_heads(recording, change["new"])),
            "value")
        super().__init__({"layer": layer, "head": head}, height)

    def draw(self, layer: str, head: int) -> Figure:
        fig = Figure(figsize=(11.5, 4.8), layout="constrained")
        grid = fig.add_gridspec(1, 2, width_ratios=[1, 1.8])
        plot_head_overlap(self.recording, layer, ax=fig.add_subplot(grid[0]))
        if head == ALL:
            plot_channel_usage(self.recording, layer, ax=fig.add_subplot(grid[1]))
        else:
            plot_channel_usage(self.recording, layer, ax=fig.add_subplot(grid[1]), per_class=True,
                               classes=self.classes, head=head)
        return fig


def diversity_explorer(recording, classes=None, **kwargs) -> DiversityExplorer:
    """A ``DiversityExplorer`` over ``recording``.

    Example:
        >>> explorer = diversity_explorer(load_recording("runs/r1/test_recording.npz"))
        ... # doctest: +SKIP
    """
    return DiversityExplorer(recording, classes, **kwargs)


class ThresholdExplorer(Explorer):
    """What each image costs as DGC-G's threshold moves: a slider over precomputed tables.

    Controls: ``"threshold"`` (one of ``frames``' keys) and ``"by"`` (None, ``"label"``,
    ``"correct"``, as ``plot_macs_per_image``).

    Args:
        frames: threshold -> ``dgclab.analysis.compute_per_image`` table under it.
        classes: class names for ``by="label"``.
        height: CSS height of the output area.
    """

    def __init__(self, frames: Mapping[float, pd.DataFrame], classes=None,
                 height: str = "420px") -> None:
        if not isinstance(frames, Mapping) or not frames:
            raise ValueError("frames must be a non-empty mapping threshold -> per-image table")
        self.frames, self.classes = {float(t): f for t, f in frames.items()}, classes
        taus = sorted(self.frames)
        slider = widgets.SelectionSlider(options=[(f"{t:.3g}", t) for t in taus],
                                         value=taus[len(taus) // 2], description="threshold",
                                         continuous_update=False)
        by = widgets.Dropdown(options=[("all images", None), ("by class", "label"),
                                       ("by prediction", "correct")], value=None,
                              description="group")
        super().__init__({"threshold": slider, "by": by}, height)

    def draw(self, threshold: float, by: str | None) -> Figure:
        frame = self.frames[threshold]
        fig = Figure(figsize=(8, 4.2), layout="constrained")
        ax = fig.add_subplot()
        plot_macs_per_image(frame, by=by, classes=self.classes, ax=ax)
        ax.set_title(f"threshold {threshold:.3g}: accuracy {100 * frame['correct'].mean():.2f} %, "
                     f"pruning rate {frame['pruning_rate'].mean():.3f}, mean "
                     f"{frame['macs'].mean() / 1e6:.2f}M MACs")
        return fig


def threshold_explorer(frames, classes=None, **kwargs) -> ThresholdExplorer:
    """A ``ThresholdExplorer`` over ``frames`` (threshold -> ``compute_per_image`` table)."""
    return ThresholdExplorer(frames, classes, **kwargs)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def dataset_labels(dataset) -> np.ndarray:
    """(N,) int labels of a dataset of ``(image, label)``: read from ``labels`` / ``targets``
    (through ``Subset``s) when the dataset has them, else by reading every item."""
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attr in ("labels", "targets"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values) == len(dataset):
            return np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values,
                              dtype=np.int64)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def _head_options(heads: int, all: bool = True) -> list[tuple[str, int]]:
    return ([("all", ALL)] if all else []) + [(str(h), h) for h in range(heads)]


def _recorded_heads(recording, layer: str) -> int:
    return int(recording.layer_info(layer)["heads"])
