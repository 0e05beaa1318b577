"""Watch a training run from inside a notebook: a ``Trainer`` callback that redraws one figure.

``LiveTrainingView`` collects the per-step logs and the per-epoch rows the ``Trainer`` hands
its callbacks and, every ``every_n_steps`` steps and at every epoch end, redraws
``plot_training_state``: loss and accuracy, the fraction of channels the DGC heads drop
(k / C_in), dead filters and head overlap. In a notebook the figure is displayed once and then
updated in place (an IPython display handle, or an ``ipywidgets.Output`` you pass); elsewhere
the view only keeps ``view.figure`` up to date::

    view = LiveTrainingView(every_n_steps=20)
    Trainer(config, progress=False, callbacks=[view]).fit()

``RecordingSnapshots`` keeps the test recording of every epoch, for ``epoch_explorer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from IPython.display import Image, clear_output, display
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..checks import check_int
from .style import PALETTE, TEST, TRAIN, panel_grid, style_axes
from .widgets import in_kernel, figure_png

__all__ = ["LiveTrainingView", "RecordingSnapshots", "plot_training_state"]

STEP_COLUMNS = ["step", "epoch", "loss", "acc", "lasso", "lr", "k_frac"]


def plot_training_state(
    step_logs: Sequence[Mapping] | pd.DataFrame,
    epoch_rows: Sequence[Mapping] | pd.DataFrame,
    ax: Axes | None = None,
    tracker=None,
    smooth: int = 10,
) -> Figure:
    """Where a run stands: four panels over training steps.

    1. ``"loss"``: the training loss of every step (faint) and its running mean over ``smooth``
       steps; the test loss at each epoch end (squares). A twin axis (``"accuracy"``) holds the
       training accuracy (running mean) and the test accuracy at epoch ends, in %.
    2. ``"k"``: k / C_in, the fraction of input channels each DGC head drops (mean over layers).
    3. ``"dead"``: dead filters (BN |gamma| < 1e-3): with ``tracker``, its ``dead_gamma``
       snapshots (% of filters, mean over BN-ReLU pairs); else the epoch rows' count.
    4. ``"overlap"``: head overlap (mean Jaccard of two heads' kept channels): the epoch rows'
       ``head_overlap`` on the test set and, with ``tracker``, its ``head_jaccard`` on the
       training batches.

    A panel without data yet says so.

    Args:
        step_logs: one entry per step with ``step``, ``loss``, ``acc``, ``k_frac`` (the
            ``Trainer``'s ``on_step_end`` logs plus the step), as dicts or a DataFrame.
        epoch_rows: ``metrics.csv`` rows (``step``, ``test_loss``, ``test_acc``,
            ``dead_filters``, ``head_overlap``), as dicts or a DataFrame; may be empty.
        ax: replaced by the 2 x 2 panels; default a new figure.
        tracker: a ``dgclab.analysis.MetricTracker`` or its ``frame``.
        smooth: window of the running means.

    Returns:
        The figure; its panels carry the labels ``"loss"``, ``"k"``, ``"dead"``, ``"overlap"``
        (``ax.get_label()``) and the loss panel has the twin ``"accuracy"``.
    """
    steps = _frame(step_logs, "step_logs")
    rows = _frame(epoch_rows, "epoch_rows")
    tracked = _tracker_frame(tracker)
    smooth = check_int("smooth", smooth, min=1)
    fig, axes = panel_grid(ax, 2, 2, (10.5, 6.5), sharex=True)
    loss_ax, k_ax, dead_ax, overlap_ax = axes.flat
    for a, label in zip(axes.flat, ("loss", "k", "dead", "overlap")):
        a.set_label(label)
        style_axes(a)
    for a in axes[1]:
        a.set_xlabel("training step")

    acc_ax = loss_ax.twinx()
    acc_ax.set_label("accuracy")
    if len(steps):
        x = steps["step"].to_numpy()
        loss_ax.plot(x, steps["loss"], color=TRAIN, alpha=0.25, lw=0.8)
        loss_ax.plot(x, _running_mean(steps["loss"], smooth), color=TRAIN, label="train loss")
        acc_ax.plot(x, 100 * _running_mean(steps["acc"], smooth), "--", color=TRAIN,
                    alpha=0.8, label="train accuracy")
        k_ax.plot(x, steps["k_frac"], color=PALETTE[2], drawstyle="steps-post")
    else:
        _no_data(loss_ax, "no step yet")
        _no_data(k_ax, "no step yet")
    if "test_loss" in rows and rows["test_loss"].notna().any():
        loss_ax.plot(rows["step"], rows["test_loss"], "s", color=TEST, label="test loss")
        acc_ax.plot(rows["step"], 100 * rows["test_acc"], "D", color=TEST, mfc="white",
                    label="test accuracy")
    loss_ax.set_ylabel("cross-entropy loss")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(-2, 102)
    loss_ax.set_title("Loss (solid) and accuracy (dashed)", fontsize=10)
    if loss_ax.lines or acc_ax.lines:
        handles, labels = loss_ax.get_legend_handles_labels()
        more, more_labels = acc_ax.get_legend_handles_labels()
        acc_ax.legend(handles + more, labels + more_labels, fontsize=7, loc="center right",
                      framealpha=0.9, edgecolor="none")

    k_ax.set_ylim(-0.02, 1.02)
    k_ax.set_ylabel("k / C_in")
    k_ax.set_title("Input channels dropped per head (mean over DGC layers)", fontsize=10)

    dead = tracked[tracked["metric"] == "dead_gamma"] if tracked is not None else None
    if dead is not None and len(dead):
        per_step = dead.groupby("step")["value"].mean()
        percent = 100 * per_step.to_numpy()
        dead_ax.plot(per_step.index, percent, "o-", ms=3, color=PALETTE[3])
        dead_ax.set_ylabel("dead filters (% per layer, mean)")
        dead_ax.set_ylim(-1, max(10.0, float(percent.max()) * 1.15))  # 0 stays visible
    elif "dead_filters" in rows and rows["dead_filters"].notna().any():
        dead_ax.plot(rows["step"], rows["dead_filters"], "o-", color=PALETTE[3])
        dead_ax.set_ylabel("dead filters (count)")
        dead_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        dead_ax.set_ylim(bottom=-0.5, top=max(1.0, float(rows["dead_filters"].max())) * 1.15)
    else:
        _no_data(dead_ax, "first count at the end of epoch 1")
    dead_ax.set_title("Dead filters (BN |γ| < 1e-3)", fontsize=10)

    jaccard = tracked[tracked["metric"] == "head_jaccard"] if tracked is not None else None
    if jaccard is not None and len(jaccard):
        per_step = jaccard.groupby("step")["value"].mean()
        overlap_ax.plot(per_step.index, per_step.to_numpy(), ".-", ms=3, color=PALETTE[0],
                        label="training batch (tracker)")
    if "head_overlap" in rows and rows["head_overlap"].notna().any():
        overlap_ax.plot(rows["step"], rows["head_overlap"], "o", color=PALETTE[4],
                        label="test set (epoch end)")
    if overlap_ax.lines:
        overlap_ax.legend(fontsize=7, loc="best", framealpha=0.9, edgecolor="none")
    else:
        _no_data(overlap_ax, "first value at the end of epoch 1")
    overlap_ax.set_ylim(-0.02, 1.02)
    overlap_ax.set_ylabel("mean Jaccard of two heads")
    overlap_ax.set_title("Head overlap (1 = the heads keep the same channels)", fontsize=10)
    for a in axes.flat:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = int(steps["step"].iloc[-1]) if len(steps) else 0
    fig.suptitle(f"Training: step {last}, {len(rows)} epoch(s) done", fontsize=11)
    return fig


class LiveTrainingView:
    """A ``Trainer`` callback that redraws ``plot_training_state`` while the model trains.

    Redraws every ``every_n_steps`` steps and at every epoch end (new test metrics). In a
    Jupyter kernel the first drawing is displayed and later ones replace it in place (a display
    handle, ``display_id``), or go into ``output`` when given; outside a kernel nothing is
    displayed and ``figure`` holds the latest drawing.

    Args:
        every_n_steps: redraw period in training steps.
        tracker: a ``MetricTracker`` fed by the same ``Trainer`` (list it before the view in
            ``callbacks``, so that its snapshot of a step exists when the view draws): dead
            filters and head overlap are then drawn from its snapshots too.
        output: an ``ipywidgets.Output`` to draw into, instead of a display handle.
        dpi: of the displayed PNG.

    Attributes:
        step_logs: list of dicts (``step``, ``epoch`` and the Trainer's logs), one per step.
        epoch_rows: list of the epoch rows (``metrics.csv`` rows) seen so far.
        figure: the latest ``Figure`` (None before the first drawing).
        draws: how many times the figure was drawn.

    Example:
        >>> view = LiveTrainingView(every_n_steps=20)
        >>> Trainer(config, progress=False, callbacks=[view]).fit()  # doctest: +SKIP
        >>> view.figure                                               # doctest: +SKIP
    """

    def __init__(self, every_n_steps: int = 20, tracker=None, output=None, dpi: int = 80) -> None:
        check_int("every_n_steps", every_n_steps, min=1)
        if tracker is not None:
            _tracker_frame(tracker)  # refuse a wrong object now, not at the first redraw
        self.every_n_steps = every_n_steps
        self.tracker = tracker
        self.output = output
        self.dpi = dpi
        self.step_logs: list[dict] = []
        self.epoch_rows: list[dict] = []
        self.figure: Figure | None = None
        self.draws = 0
        self._handle = None  # the IPython display handle, once displayed

    # ---- the Trainer's callback protocol ---------------------------------------------------

    def on_train_begin(self, trainer) -> None:
        self._handle = None  # a new fit() shows a new figure under its own cell

    def on_step_end(self, trainer, step: int, epoch: int, logs: Mapping) -> None:
        self.step_logs.append({"step": int(step), "epoch": int(epoch), **logs})
        if step % self.every_n_steps == 0:
            self.redraw()

    def on_epoch_end(self, trainer, epoch: int, row: Mapping) -> None:
        self.epoch_rows.append(dict(row))
        self.redraw()

    # ---- drawing ----------------------------------------------------------------------------

    def redraw(self) -> Figure:
        """Draw the current state now (and show it in the notebook); return the figure."""
        self.figure = plot_training_state(self.step_logs, self.epoch_rows, tracker=self.tracker)
        self.draws += 1
        if self.output is not None or in_kernel():
            self._show(Image(data=figure_png(self.figure, self.dpi), format="png"))
        return self.figure

    def _show(self, image: Image) -> None:
        if self.output is not None:
            with self.output:
                clear_output(wait=True)
                display(image)
        elif self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)


class RecordingSnapshots:
    """A ``Trainer`` callback that keeps every epoch's test recording, for ``epoch_explorer``.

    After each epoch the ``Trainer`` has recorded the test set's selections
    (``trainer.recording``, a new ``Recorder`` every epoch); this keeps a reference to each.

    Attributes:
        recordings: epoch (from 1) -> ``Recording``.

    Example:
        >>> snaps = RecordingSnapshots()
        >>> Trainer(config, callbacks=[snaps]).fit()  # doctest: +SKIP
        >>> epoch_explorer(snaps.recordings)          # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.recordings: dict[int, object] = {}

    def on_epoch_end(self, trainer, epoch: int, row: Mapping) -> None:
        if trainer.recording is not None:
            self.recordings[int(epoch)] = trainer.recording


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _frame(data, name: str) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        frame = data
    elif isinstance(data, Sequence) and not isinstance(data, str):
        frame = pd.DataFrame(list(data))
    else:
        raise TypeError(f"{name} must be a list of dicts or a DataFrame, got "
                         f"{type(data).__name__}")
    if len(frame) and "step" not in frame:
        raise ValueError(f"{name} lacks the column 'step'; it has {list(frame.columns)}")
    if name == "step_logs" and len(frame):
        missing = [c for c in ("loss", "acc", "k_frac") if c not in frame]
        if missing:
            raise ValueError(f"step_logs lacks {missing}; it has {list(frame.columns)}")
    return frame.sort_values("step") if len(frame) else frame


def _tracker_frame(tracker) -> pd.DataFrame | None:
    if tracker is None:
        return None
    frame = getattr(tracker, "frame", tracker)
    if not isinstance(frame, pd.DataFrame) or not {"step", "metric", "value"} <= set(frame):
        raise ValueError("tracker must be a MetricTracker or its frame (columns step, metric, "
                         f"value), got {type(tracker).__name__}")
    return frame


def _running_mean(values: pd.Series, window: int) -> np.ndarray:
    return values.rolling(window, min_periods=1).mean().to_numpy()


def _no_data(ax: Axes, why: str) -> None:
    ax.text(0.5, 0.5, f"no data yet\n({why})", ha="center", va="center", color="#777777",
            fontsize=9, transform=ax.transAxes)
