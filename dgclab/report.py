"""One self-contained HTML page about a training run: ``write_report(run_dir)``.

Reads the run folder that ``dgclab.train.Trainer`` writes (``config.json``, ``metrics.csv`` and,
for a model with DGC layers that recorded, ``test_recording.npz``) and writes
``run_dir/report.html``: the configuration, the last epoch's metrics and the plots of
``dgclab.viz``, each embedded as a base64 PNG. Plain HTML with a little inline CSS: no script,
no external URL, so the file can be mailed or opened offline.

    python -m dgclab report runs/r1      # or: from dgclab.report import write_report
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._atomic import atomic_write_text
from .layers import CONV_KINDS
from .record import load_recording
from .viz import (
    plot_channel_usage,
    plot_dead_filters,
    plot_head_overlap,
    plot_k_schedule,
    plot_learning_curves,
    plot_macs,
    plot_selection_heatmap,
)

__all__ = ["write_report", "REPORT", "MAX_LAYERS"]

REPORT = "report.html"
CONFIG = "config.json"  # the names the trainer writes (dgclab.train.trainer)
METRICS = "metrics.csv"
RECORDING = "test_recording.npz"
MAX_LAYERS = 12  # DGC layers shown in the per-layer sections; more are evenly subsampled
DPI = 100

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.0em; margin: 1.2em 0 0.3em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { text-align: left; padding: 0.2em 1em 0.2em 0; border-bottom: 1px solid #eee; }
th { font-weight: 600; color: #555; }
.tables { display: flex; flex-wrap: wrap; gap: 3em; }
.note { color: #666; font-size: 0.92em; }
.warning { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 0.4em 0.8em; }
figure { margin: 0.8em 0 1.4em; }
img { max-width: 100%; height: auto; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report.html``, a self-contained page about the run; return its path.

    Sections: configuration and last-epoch metrics, learning curves, k schedule, per-layer
    selection heat maps (head 0; at most ``MAX_LAYERS`` DGC layers), channel usage, head
    overlap, dead filters over epochs, MACs. Sections that need the recording of the test set
    say why they are empty when there is none (a dense or static-group model, or a run with
    ``record=False``). The page is written to a temporary file in ``run_dir`` and renamed over
    ``report.html``, so a reader never sees half a page.

    Args:
        run_dir: a run folder written by ``dgclab.train.Trainer``.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder, or lacks ``config.json`` or
            ``metrics.csv``.
        ValueError: ``metrics.csv`` or ``config.json`` cannot be read or holds no epoch; a
            recording file that cannot be read (the message names the file).

    Example:
        >>> write_report("runs/r1")  # doctest: +SKIP
        PosixPath('runs/r1/report.html')
    """
    run = Path(run_dir)
    config, history = _read_run(run)
    recording = load_recording(run / RECORDING) if (run / RECORDING).is_file() else None
    page = _render(run, config, history, recording)
    atomic_write_text(run / REPORT, page)
    return run / REPORT


# --------------------------------------------------------------------------------------------
# Reading the run folder
# --------------------------------------------------------------------------------------------


def _read_run(run: Path) -> tuple[dict, pd.DataFrame]:
    if not run.is_dir():
        raise FileNotFoundError(f"no run folder {run}")
    for name in (CONFIG, METRICS):
        if not (run / name).is_file():
            raise FileNotFoundError(
                f"{run} is not a run folder: it has no {name} (dgclab.train.Trainer writes "
                f"{CONFIG}, {METRICS}, checkpoint.pt and {RECORDING})"
            )
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{run / CONFIG}: cannot be read as JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{run / CONFIG}: expected a JSON object, got {type(config).__name__}")
    try:
        history = pd.read_csv(run / METRICS)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{run / METRICS}: cannot be read as CSV ({err})") from err
    if history.empty:
        raise ValueError(f"{run / METRICS} holds no epoch yet: nothing to report")
    missing = [c for c in ("epoch", "test_acc", "train_acc", "train_loss", "test_loss")
               if c not in history.columns]
    if missing:
        raise ValueError(f"{run / METRICS} lacks the columns {missing}")
    return config, history.sort_values("epoch").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def _render(run: Path, config: dict, history: pd.DataFrame, recording) -> str:
    conv = config.get("conv", "dgc")
    layers = list(recording.layer_names) if recording is not None else []
    shown = _subsample(layers, MAX_LAYERS)
    why_not = _why_no_recording(config, recording)
    out = []
    add = out.append

    title = f"dgclab run report: {run.resolve().name}"
    add(f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>")
    add(f"<h1>{_e(title)}</h1>")
    written = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    add(f"<p class=\"note\">Run folder <code>{_e(str(run.resolve()))}</code>; "
        f"report written {_e(written)}.</p>")
    recorded, last = _recorded_epoch(recording), int(history["epoch"].iloc[-1])
    if recorded is not None and recorded != last:
        add(f"<p class=\"warning\"><strong>The recording is of epoch {recorded}, the metrics "
            f"of epoch {last}</strong>: the run was stopped between writing them. Resuming the "
            f"run (<code>--resume</code>) records epoch {last} again; until then the selection "
            f"sections show epoch {recorded}.</p>")
    add("<div class=\"tables\">")
    add(_table("Configuration", _config_rows(config)))
    add(_table("Last epoch", _metric_rows(config, history, recording)))
    add("</div>")

    add(_section("Learning curves",
                 "Accuracy (solid, left) and cross-entropy (dashed, right) on the training and "
                 "test sets after every epoch. Training metrics are averaged over the epoch "
                 "while the weights and k change; test metrics use the weights at its end."))
    add(_img(plot_learning_curves(history), "learning curves"))

    add(_section("Pruning schedule",
                 "The fraction of its input channels each DGC head drops, k / C_in (mean over "
                 "DGC layers), at the end of each epoch. k is 0 for the first 1/12 of the "
                 "iterations, grows linearly and reaches round(ξ · C_in) at 3/4 of training."))
    if _has_schedule(conv) and "k_frac" in history.columns:
        add(_img(plot_k_schedule(history, pruning_rate=_number(config.get("pruning_rate"))),
                 "k schedule"))
    else:
        add(_p(f"The model has no DGC layers (conv = {conv!r}): no channel is ever dropped."))

    add(_section("Channel selections, per layer",
                 "Which input channels head 0 of each DGC layer kept for each test image "
                 "(dark: kept). Images are grouped by class; within a class, equal selections "
                 "sit together. Full columns mean a static choice; blocks that change from "
                 "class to class mean the choice follows the input."))
    if recording is None:
        add(_p(why_not))
    else:
        if len(shown) < len(layers):
            add(_p(f"Showing {len(shown)} of the {len(layers)} DGC layers, evenly spaced "
                   f"(first and last included)."))
        classes = _class_names(config)
        for name in shown:
            add(f"<h3>{_e(name)}</h3>")
            add(_img(plot_selection_heatmap(recording, name, 0, classes=classes),
                     f"selections of {name}, head 0"))

    add(_section("Channel usage",
                 "For every head, the fraction of the test images for which it kept each input "
                 "channel. 0 or 1 everywhere is a static selection (a fixed group "
                 "convolution); values in between are decided per image."))
    if recording is None:
        add(_p(why_not))
    else:
        if len(shown) < len(layers):
            add(_p(f"Showing {len(shown)} of the {len(layers)} DGC layers."))
        add(_img(_usage_figure(recording, shown), "channel usage per layer"))

    add(_section("Head overlap",
                 "Jaccard similarity of the channel sets two heads of a layer kept for the "
                 "same image (0: disjoint, 1: identical), averaged over the test images; the "
                 "chance level is what two random sets of the same sizes would share. Heads "
                 "far above chance duplicate each other's work."))
    if recording is None:
        add(_p(why_not))
    else:
        add(_img(plot_head_overlap(recording), "head overlap per layer"))
        add(_img(_overlap_matrices(recording, layers), "head overlap matrices"))

    add(_section("Dead filters",
                 "Filters whose BatchNorm scale |γ| fell below 1e-3: their output is (nearly) "
                 "constant, so they could be pruned. Adam with coupled L2 kills far more "
                 "filters than AdamW or SGD with L2 (implicit filter-level sparsity, Mehta et "
                 "al., CVPR 2019)."))
    if "dead_filters" in history.columns:
        add(_img(plot_dead_filters(history), "dead filters over epochs"))
    else:
        add(_p(f"{METRICS} has no dead_filters column."))

    add(_section("MACs per image",
                 "Multiply-accumulates per image counted as the paper counts them (DGC convs "
                 "at the final keep ratio 1 − ξ) and as realized: what the channels the heads "
                 "really kept cost, averaged over the test images. Before k reaches its final "
                 "value, realized exceeds the paper's figure."))
    if {"paper_macs", "realized_macs"} <= set(history.columns):
        add(_img(plot_macs(history, recording), "MACs"))
        if recording is None and not _dynamic(conv):
            add(_p("Without dynamic layers (DGC) every image costs the same: realized = paper."))
        elif recording is None:
            add(_p(why_not + " The per-image distribution needs it."))
    else:
        add(_p(f"{METRICS} has no paper_macs / realized_macs columns."))
    add("</body>\n</html>\n")
    return "\n".join(out)


def _recorded_epoch(recording) -> int | None:
    """The epoch a trainer's recording was made at (None: not said, as in older files)."""
    epoch = recording.attrs.get("epoch") if recording is not None else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _usage_figure(recording, layers: list[str]) -> Figure:
    heights = [1.2 + 0.3 * recording.layer_info(n)["heads"] for n in layers]
    fig = Figure(figsize=(9, sum(heights) + 0.3), layout="constrained")
    axes = fig.subplots(len(layers), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, name in zip(axes, layers):
        plot_channel_usage(recording, name, ax=ax)
    return fig


def _overlap_matrices(recording, layers: list[str]) -> Figure:
    ends = [layers[0]] if len(layers) == 1 else [layers[0], layers[-1]]
    heads = max(recording.layer_info(n)["heads"] for n in ends)
    side = 1.4 + 0.85 * heads
    fig = Figure(figsize=(side * len(ends) + 1.2, side), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(ends), squeeze=False)[0], ends):
        plot_head_overlap(recording, name, ax=ax)
    return fig


def _config_rows(config: dict) -> list[tuple[str, str]]:
    conv = config.get("conv", "dgc")
    dataset = str(config.get("dataset", "?"))
    if config.get("subset"):
        dataset += f" (subset of {config['subset']} images)"
    heads = config.get("heads")
    rate = config.get("pruning_rate")
    spec = CONV_KINDS.get(conv)
    if spec is None or spec.groups_option is None:
        heads_text = f"n/a ({conv} conv)"
    else:
        heads_text = str(heads) if _dynamic(conv) else f"{heads} (static groups)"
    rate_text = f"ξ = {rate}" if _has_schedule(conv) else f"n/a ({conv} conv)"
    return [
        ("model", f"{config.get('model', '?')} (width {config.get('width', '?')})"),
        ("conv", str(conv)),
        ("dataset", dataset),
        ("epochs", str(config.get("epochs", "?"))),
        ("batch size", str(config.get("batch_size", "?"))),
        ("optimizer", str(config.get("optimizer", "?"))),
        ("lr", str(config.get("lr", "?"))),
        ("weight decay", str(config.get("weight_decay", "?"))),
        ("lasso λ", str(config.get("lasso_lambda", "?"))),
        ("heads", heads_text),
        ("pruning rate", rate_text),
        ("seed", str(config.get("seed", "?"))),
    ]


def _metric_rows(config: dict, history: pd.DataFrame, recording) -> list[tuple[str, str]]:
    last = history.iloc[-1]
    epoch, epochs = int(last["epoch"]), config.get("epochs")
    status = f"{epoch} of {epochs}" if epochs else str(epoch)
    if isinstance(epochs, int) and epoch < epochs:
        status += " (the run is not finished)"
    paper = _number(last.get("paper_macs"))
    realized = _number(last.get("realized_macs"))
    realized_text = _macs(realized)
    if paper and realized is not None:
        realized_text += f" ({100 * realized / paper:.0f} % of paper)"
    overlap = _number(last.get("head_overlap"))
    rows = [
        ("epoch", status),
        ("test accuracy", _percent(_number(last.get("test_acc")))),
        ("test loss", _fmt(_number(last.get("test_loss")), "{:.4f}")),
        ("paper MACs / image", _macs(paper)),
        ("realized MACs / image", realized_text),
        ("dead filters", _fmt(_number(last.get("dead_filters")), "{:.0f}")),
        ("head overlap (mean Jaccard)", _fmt(overlap, "{:.3f}")),
        ("k / C_in", _fmt(_number(last.get("k_frac")), "{:.3f}")),
    ]
    if recording is not None:
        rows.append(("recorded test images", f"{len(recording)} through "
                                              f"{len(recording.layer_names)} DGC layers"))
    return rows


def _why_no_recording(config: dict, recording) -> str:
    if recording is not None:
        return ""
    conv = config.get("conv", "dgc")
    if not _dynamic(conv):
        return (f"Not available: the model has no dynamic layers (conv = {conv!r}), so there "
                f"are no per-image channel selections to record.")
    if config.get("record") is False:
        return ("Not available: the run did not record the test set's selections "
                "(record = False).")
    return f"Not available: the run folder has no {RECORDING}."


def _class_names(config: dict):
    if config.get("dataset") == "fashion-mnist":
        from .data.datasets import FASHION_CLASSES

        return FASHION_CLASSES
    return None


def _subsample(names: list[str], cap: int) -> list[str]:
    if len(names) <= cap:
        return names
    picks = np.unique(np.round(np.linspace(0, len(names) - 1, cap)).astype(int))
    return [names[i] for i in picks]


# --------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _p(text: str) -> str:
    return f"<p class=\"note\">{_e(text)}</p>"


def _section(title: str, intro: str) -> str:
    return f"<h2>{_e(title)}</h2>\n<p>{_e(intro)}</p>"


def _table(caption: str, rows: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<section><h2>{_e(caption)}</h2>\n<table>\n{body}\n</table></section>"


def _img(fig: Figure, alt: str) -> str:
    """The figure as an embedded PNG; the figure is released afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()  # not a pyplot figure: nothing to close, but free its artists now
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{_e(alt)}\"></figure>"


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _macs(value: float | None) -> str:
    if value is None:
        return "n/a"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.3f} {unit}"
    return f"{value:.0f}"


def _dynamic(conv: str) -> bool:
    """Whether a conv kind's layers choose their channels per image (what a recording holds)."""
    spec = CONV_KINDS.get(conv)
    return spec is not None and spec.grouping and spec.layer_type.dynamic


def _has_schedule(conv: str) -> bool:
    """Whether a conv kind has DGC's pruning rate, whose k schedule the history logs."""
    spec = CONV_KINDS.get(conv)
    return spec is not None and "pruning_rate" in spec.options
