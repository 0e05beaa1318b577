"""Evaluating a model on a test set: the metrics row every epoch of a run logs.

One function for the trainer, the command line's ``eval``, the report and the notebooks: it
needs a model and batches, not a ``Trainer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..analysis import count_macs, filter_sparsity, head_overlap, realized_macs
from ..checks import check_bool, check_int, check_type
from ..modes import eval_mode
from ..layers import grouping_layers
from ..record import Recorder

__all__ = ["evaluate_model", "recalibrate_bn", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU) or a torch device name, checked.

    Raises:
        ValueError: not a device, or a CUDA device where CUDA is not available.
    """
    check_type("device", name, str)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for, but CUDA is not available here")
    return device


def _device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: Iterable,
    input_size: Sequence[int],
    record: bool = True,
    device: torch.device | str | None = None,
) -> tuple[dict, Recorder | None]:
    """Test loss and accuracy of ``model``, its MACs and dead filters, and what it selected.

    The model runs in eval mode (every module's mode restored afterwards) without autograd.

    Args:
        model: any classifier; its dynamic grouping layers (DGC) are recorded.
        batches: (x, y) pairs, e.g. a ``DataLoader`` over the test set, in a fixed order (the
            recording's ids are positions in it).
        input_size: (1, C, H, W) of one image, for ``count_macs`` and ``filter_sparsity``.
        record: record the selections of the model's grouping layers if it has a dynamic one
            (DGC); a model whose layers are all static costs the same for every image.
        device: where the batches go; default the model's parameters' device.

    Returns:
        ``(row, recording)``: ``row`` has ``test_loss``, ``test_acc``, ``paper_macs`` (per image,
        ``count_macs`` at the paper convention), ``dead_filters`` (by |gamma|,
        ``filter_sparsity``), ``head_overlap`` (mean Jaccard of two heads' kept channels, NaN
        without a recording) and ``realized_macs`` (the paper count with every recorded
        layer's count replaced by what each image really used, averaged; the paper count for
        a model without dynamic layers, NaN for one with them but no recording);
        ``recording`` is the ``Recorder`` or None.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: ``batches`` held no sample.
    """
    check_type("model", model, nn.Module)
    record = check_bool("record", record)
    if device is None:
        device = _device_of(model)
    dynamic = any(layer.dynamic for _, layer in grouping_layers(model))
    recorder = Recorder(model) if (record and dynamic) else None
    loss_sum = correct = seen = 0.0
    with eval_mode(model), recorder if recorder is not None else contextlib.nullcontext():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            if recorder is not None:
                recorder.tag(labels=y, ids=torch.arange(int(seen), int(seen) + len(y)))
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
    if not seen:
        raise ValueError("batches held no sample to evaluate on")
    macs = count_macs(model, input_size, "paper", per_layer=True)
    row = {"test_loss": loss_sum / seen, "test_acc": correct / seen,
           "paper_macs": int(macs["macs"].sum())}
    row["dead_filters"] = int(filter_sparsity(model, input_size=input_size)["dead_gamma"].sum())
    if recorder is not None:
        overlap = head_overlap(recorder)
        row["head_overlap"] = float(overlap["jaccard"].mean()) if len(overlap) else float("nan")
        # the whole network at the paper convention, with every recorded layer's paper count
        # replaced by what each test image really used
        fixed = int(macs.loc[~macs["layer"].isin(recorder.layer_names), "macs"].sum())
        row["realized_macs"] = float(fixed + realized_macs(recorder)["realized"].mean())
    else:
        row["head_overlap"] = float("nan")
        row["realized_macs"] = float("nan") if dynamic else row["paper_macs"]
    return row, recorder


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, max_batches: int | None = None,
                   device: torch.device | str | None = None) -> nn.Module:
    """Recompute the running statistics of every BN of ``model`` from ``batches``, in place.

    Each BN's running mean and variance are reset and set to the plain average over the batches
    (``momentum=None``) of what it sees in train mode, without autograd; nothing else changes
    (the parameters, the BN momenta, afterwards restored). A model trained while its activations
    drift (DGC's k growing within an epoch) carries running statistics that average over the
    drift; evaluating it again after this says how much of its eval-mode error is theirs.

    Args:
        model: any module; one without BN is only put in eval mode.
        batches: inputs ``x`` or ``(x, y, ...)`` tuples, e.g. a ``DataLoader`` over training
            images.
        max_batches: use at most this many batches (None: all).
        device: where the inputs go; default the model's parameters' device.

    Returns:
        ``model``, in eval mode.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: ``max_batches`` below 1, or no batch given while the model has BNs.
    """
    check_type("model", model, nn.Module)
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, min=1)
    if device is None:
        device = _device_of(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    seen = 0
    model.train()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    if not seen:
        raise ValueError("recalibrate_bn: batches held no batch, the BN statistics are reset")
    return model
