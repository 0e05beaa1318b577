"""Compute that adapts to the image: what each image really costs under DGC's two selection rules.

Under the official head-wise rule every head keeps ``C_in - k`` channels (fewer on ties), so
every image costs about the same. Under the global threshold of the DGC paper's supplementary
material (DGC-G, ``DGCConv2d.threshold``, ``dgclab.calibrate_threshold``) a head keeps the
channels whose saliency exceeds one threshold shared by the whole model, and the cost varies
per image, head and layer. Two measurements, both from a ``Recorder`` of the model's selections
and ``realized_macs``:

* ``compute_per_image``: one row per image with its label, prediction and realized MACs: which
  images get more compute, by class and by whether the prediction was right;
* ``layer_pruning_rates``: where the compute goes, layer by layer (a shared threshold does not
  drop the same fraction in every layer, as the head-wise rule does);
* ``compute_sweep``: the anytime curve, accuracy against mean realized MACs, sweeping the
  pruning rate at inference on one trained model: the head-wise rule at k = round(xi C_in)
  beside the threshold rule calibrated to the same mean rate xi.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from ..checks import check_float, check_int, check_type
from ..layers import calibrate_threshold, dgc_layers, set_threshold
from ..layers.dgc_functional import final_inactive_channels
from ..modes import eval_mode
from ..record import Recorder
from .macs import count_macs
from .selection import check_recording, realized_macs

__all__ = ["PER_IMAGE_COLUMNS", "SWEEP_COLUMNS", "compute_per_image", "compute_sweep",
           "dropped_fraction", "layer_pruning_rates"]

PER_IMAGE_COLUMNS = ("id", "label", "prediction", "correct", "pruning_rate", "dgc_macs", "macs")
"""``compute_per_image``'s columns: ``pruning_rate`` the fraction of channels the image's heads
dropped (mean over its DGC layers and heads), ``dgc_macs`` the realized MACs of the DGC layers,
``macs`` the whole network's (the DGC layers' plus the rest, which costs every image the same)."""
SWEEP_COLUMNS = ("rule", "target", "pruning_rate", "threshold", "accuracy", "macs_mean",
                 "macs_p10", "macs_p50", "macs_p90")
"""``compute_sweep``'s columns, one row per (rule, target pruning rate)."""


@torch.no_grad()
def compute_per_image(model: nn.Module, loader: Iterable) -> pd.DataFrame:
    """Each image's prediction and the MACs it really cost, in eval mode.

    Args:
        model: a classifier with DGC layers, under whichever selection rule it has.
        loader: batches of ``(images, labels)`` (a DataLoader); the images go to the model's
            device.

    Returns:
        One row per image, in loader order, with ``PER_IMAGE_COLUMNS``: ``id`` (the position in
        the stream), ``label``, ``prediction`` (argmax of the logits), ``correct`` (bool),
        ``dgc_macs`` (``realized_macs``: the paper's count with each head's kept channels for
        this image) and ``macs`` (the whole network: ``dgc_macs`` plus ``count_macs`` of every
        layer that is not a DGC layer).
    """
    check_type("model", model, nn.Module)
    if not dgc_layers(model):
        raise ValueError(f"{type(model).__name__} has no DGC layer")
    device = next(model.parameters()).device
    predictions, size = [], None
    with eval_mode(model), Recorder(model) as rec:
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError("loader must give (images, labels) batches")
            images, labels = batch[0].to(device), batch[1]
            size = (1, *images.shape[1:])
            rec.tag(labels=labels)
            predictions.append(model(images).argmax(1).cpu())
    if size is None:
        raise ValueError("compute_per_image needs a loader with at least one batch")
    table = realized_macs(rec)
    dropped = [dropped_fraction(rec, name) for name in rec.layer_names if rec.is_dynamic(name)]
    per_layer = count_macs(model, size, per_layer=True)
    rest = int(per_layer.loc[per_layer["kind"].ne("dgc").fillna(True), "macs"].sum())
    prediction = torch.cat(predictions).numpy()
    return pd.DataFrame({
        "id": table["id"].to_numpy(),
        "label": table["label"].to_numpy(),
        "prediction": prediction,
        "correct": prediction == table["label"].to_numpy(),
        "pruning_rate": torch.cat(dropped, 1).mean(1).numpy(),
        "dgc_macs": table["realized"].to_numpy(),
        "macs": table["realized"].to_numpy() + rest,
    })


@torch.no_grad()
def compute_sweep(
    model: nn.Module,
    loader: Iterable,
    pruning_rates: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9),
    *,
    calibration_batches: int = 4,
    rules: Sequence[str] = ("head-wise", "threshold"),
) -> pd.DataFrame:
    """The anytime curve of one trained model: accuracy against realized MACs per pruning rate.

    For every target rate xi: the head-wise rule with every DGC layer at k = round(xi C_in) (as
    the official code rounds it), and the threshold rule calibrated to the mean rate xi on the
    loader's first ``calibration_batches`` batches (``calibrate_threshold``; no labels are
    used). Each is then evaluated on the whole loader (``compute_per_image``). The model's k
    and threshold are put back afterwards.

    Args:
        model: a trained classifier with DGC layers.
        loader: batches of ``(images, labels)``; the same batches every pass (no shuffling).
        pruning_rates: the targets, each in (0, 1).
        calibration_batches: batches the threshold is calibrated on.
        rules: which of ``"head-wise"`` and ``"threshold"`` to run.

    Returns:
        One row per (rule, target), ``SWEEP_COLUMNS``: ``pruning_rate`` the mean rate measured
        on the loader (``dgclab.layers.mean_pruning_rate``), ``threshold`` NaN for the head-wise rule,
        ``accuracy``, and the mean and 10th / 50th / 90th percentiles of the whole network's
        realized MACs per image.
    """
    check_type("model", model, nn.Module)
    rates = [check_float("pruning_rates", r, min=0, max=1, min_inclusive=False,
                         max_inclusive=False) for r in pruning_rates]
    calibration_batches = check_int("calibration_batches", calibration_batches, min=1)
    for rule in rules:
        if rule not in ("head-wise", "threshold"):
            raise ValueError(f"rules must be 'head-wise' or 'threshold', got {rule!r}")
    layers = [layer for _, layer in dgc_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DGC layer")
    saved = [(layer.inactive_channels, layer.threshold) for layer in layers]
    rows = []
    try:
        for rule in rules:
            for xi in rates:
                if rule == "head-wise":
                    set_threshold(model, None)
                    for layer in layers:
                        layer.inactive_channels = final_inactive_channels(layer.in_channels, xi)
                    tau = float("nan")
                else:
                    tau = calibrate_threshold(model, loader, xi, batches=calibration_batches)
                per_image = compute_per_image(model, loader)
                macs = per_image["macs"].to_numpy()
                rows.append({
                    "rule": rule, "target": xi,
                    "pruning_rate": float(per_image["pruning_rate"].mean()),
                    "threshold": tau, "accuracy": float(per_image["correct"].mean()),
                    "macs_mean": float(macs.mean()),
                    **{f"macs_p{q}": float(np.percentile(macs, q)) for q in (10, 50, 90)},
                })
    finally:
        for layer, (k, tau) in zip(layers, saved):
            layer.inactive_channels = k
            layer.threshold = tau
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def dropped_fraction(recording, name: str) -> torch.Tensor:
    """(N, heads) float64: the fraction of layer ``name``'s input channels each image-head of a
    recording dropped (1 - kept / C_in)."""
    c = recording.layer_info(name)["in_channels"]
    return 1 - recording.selections(name).sum(-1).double() / c


def layer_pruning_rates(recording) -> pd.DataFrame:
    """Per DGC layer of a recording: the fraction of its input channels the heads dropped.

    Args:
        recording: a ``Recording`` (or live ``Recorder``), e.g. ``dgclab.record.record(model,
            loader)``.

    Returns:
        One row per dynamic layer, in recording order: ``layer``, ``in_channels``, ``mean``
        (over images and heads), ``p10`` and ``p90`` (over images, of the mean over heads).
    """
    check_recording(recording)
    rows = []
    for name in recording.layer_names:
        if not recording.is_dynamic(name):
            continue
        c = recording.layer_info(name)["in_channels"]
        dropped = dropped_fraction(recording, name).mean(-1)  # (N,)
        if dropped.numel() == 0:
            raise ValueError("the recording holds no samples")
        rows.append({"layer": name, "in_channels": c, "mean": float(dropped.mean()),
                     "p10": float(dropped.quantile(0.1)), "p90": float(dropped.quantile(0.9))})
    return pd.DataFrame(rows, columns=["layer", "in_channels", "mean", "p10", "p90"])
