"""DGC across a network: its DGC layers, their k from training progress, their lasso term, and
the global threshold of DGC-G (``set_threshold``, ``calibrate_threshold``,
``mean_pruning_rate``).

The protocol's ``set_progress`` and ``regularization_loss`` (``base.py``) drive every grouping
layer of a model, whatever its kind; these keep DGC's own names and return values (the k now
set, per layer; the lasso of DGC layers alone), as the paper and the README use them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import warnings
from collections.abc import Iterable

from ..checks import check_float, check_int, check_type
from .base import grouping_layers
from .dgc import DGCConv2d

__all__ = [
    "calibrate_threshold", "dgc_layers", "follow_threshold", "mean_pruning_rate",
    "saliency_loss", "scale_saliency_init", "set_pruning_progress", "set_threshold",
]


def dgc_layers(model: nn.Module) -> list[tuple[str, DGCConv2d]]:
    """(name, layer) for every DGC layer of ``model`` (the model itself included)."""
    return [(n, m) for n, m in grouping_layers(model) if isinstance(m, DGCConv2d)]


def set_pruning_progress(model: nn.Module, progress: float) -> dict[str, int]:
    """Set k on every DGC layer of ``model`` from training progress p in [0, 1].

    Works in any mode and on wrapped models (DistributedDataParallel, nn.Sequential, a single
    layer). Returns the k now set, keyed by module name.

    Raises:
        TypeError: ``model`` is not a module or ``progress`` not a real number.
        ValueError: ``progress`` outside [0, 1] (NaN included).
    """
    check_type("model", model, nn.Module)
    progress = check_float("progress", progress, min=0, max=1)
    ks = {}
    for name, layer in dgc_layers(model):
        layer.set_progress(progress)
        ks[name] = layer.inactive_channels
    return ks


def saliency_loss(model: nn.Module) -> torch.Tensor:
    """The unscaled lasso term of the last forward: sum over layers and heads of mean(g).

    The trainer adds ``lambda * regularization_loss(model)`` to the loss (lambda = 1e-5 in the
    paper), which for a model whose only grouping layers are DGC layers is this.

    Returns:
        A 0-d tensor (0 for a model without DGC layers).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a DGC layer has not run a forward yet.
    """
    layers = dgc_layers(model)
    if not layers:
        return torch.zeros(())
    missing = [name or "<model>" for name, layer in layers if layer.last_lasso is None]
    if missing:
        raise ValueError(
            f"saliency_loss needs a forward first; DGC layers without one: {missing[:5]}"
        )
    return torch.stack([layer.last_lasso for _, layer in layers]).sum()


@torch.no_grad()
def scale_saliency_init(model: nn.Module, scale: float) -> int:
    """Multiply the fc2 weights of every DGC head's saliency generator by ``scale``.

    An ablation of the initialisation, not part of the paper's recipe (issue #21): the official
    code draws fc2's weights from Kaiming's normal and sets its bias to 1, so at the start
    ``g = ReLU(fc2(h))`` is far from 1 and many saliencies are exactly 0. With ``scale = 0.1``
    every g starts near its bias, 1: each channel kept and scaled alike, as in a plain conv.
    Apply it to a freshly built model (``TrainConfig(saliency_init=...)`` does, in
    ``model_of``); the bias is left alone.

    Returns:
        The number of DGC layers scaled.

    Raises:
        TypeError: ``model`` is not a module, ``scale`` not a real number.
        ValueError: a negative, NaN or infinite ``scale``.
    """
    check_type("model", model, nn.Module)
    scale = check_float("scale", scale, min=0)
    layers = dgc_layers(model)
    for _, layer in layers:
        for head in layer.heads_list:
            head.fc2.weight.mul_(scale)
    return len(layers)


def set_threshold(model: nn.Module, threshold: float | None) -> int:
    """Switch every DGC layer of ``model`` to the global-threshold rule at ``threshold`` (DGC-G;
    ``DGCConv2d.threshold``), or back to the official head-wise rule with None.

    Returns:
        The number of DGC layers set.

    Raises:
        TypeError: ``model`` is not a module, ``threshold`` not a real number or None.
        ValueError: a negative, NaN or infinite threshold; a model without DGC layers.
    """
    check_type("model", model, nn.Module)
    if threshold is not None:
        threshold = check_float("threshold", threshold, min=0)
    layers = dgc_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DGC layer to set a threshold on")
    for _, layer in layers:
        layer.threshold = threshold
    return len(layers)


@torch.no_grad()
def mean_pruning_rate(model: nn.Module, batches: Iterable) -> float:
    """The mean pruning rate of ``model``'s DGC layers over ``batches``, in eval mode.

    The fraction of input channels a head drops, averaged over every (image, DGC layer, head)
    alike: under the head-wise rule at its final k, the pruning rate xi (up to ties). The model
    is put back in the mode it was in.

    Args:
        model: a model with DGC layers.
        batches: an iterable of ``(images, labels)`` (a DataLoader) or of image tensors.
    """
    check_type("model", model, nn.Module)
    layers = [layer for _, layer in dgc_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DGC layer")
    return _measure(model, layers, _images(batches, model))


@torch.no_grad()
def calibrate_threshold(
    model: nn.Module,
    loader: Iterable,
    pruning_rate: float,
    *,
    batches: int | None = None,
    tolerance: float = 0.002,
    max_steps: int = 40,
) -> float:
    """Switch ``model`` to the global-threshold rule (DGC-G) at the threshold that makes its mean
    pruning rate over ``loader`` equal ``pruning_rate``.

    One threshold tau for every head of every DGC layer: a head keeps the channels whose
    saliency exceeds tau, at least one (``select_above_threshold``), so the kept count varies
    per image, head and layer. The rate is ``mean_pruning_rate``'s: the fraction of
    channels dropped, averaged over (image, layer, head), comparable with the head-wise rule's
    xi. Since a layer's saliencies depend on the channels earlier layers kept, the threshold is
    searched on the whole model: first the ``pruning_rate``-quantile of the saliencies at
    tau = 0, then bisection, each step one eval pass over the loader's first ``batches``
    batches (held in memory), until the rate is within ``tolerance``. The rate is assumed to
    grow with tau (it does layer by layer; a network could in principle break it).

    Args:
        model: a model with DGC layers (eval mode is used, and the model's mode restored).
        loader: batches of ``(images, labels)`` (or image tensors).
        pruning_rate: the target mean rate, in (0, 1).
        batches: use the loader's first ``batches`` batches; default all.
        tolerance: accepted distance from the target rate.
        max_steps: bisection steps at most; the closest threshold found is kept.

    Returns:
        The threshold, also set on every DGC layer (``DGCConv2d.threshold``, a buffer: saved
        with the model).

    Raises:
        ValueError: a rate outside (0, 1); a model without DGC layers; an empty loader; a
            target below the rate at threshold 0 (where that many saliencies are already 0,
            and no threshold >= 0 keeps them).

    Example:
        >>> tau = calibrate_threshold(model, test_loader, 0.75, batches=10)  # doctest: +SKIP
    """
    check_type("model", model, nn.Module)
    target = check_float("pruning_rate", pruning_rate, min=0, max=1, min_inclusive=False,
                         max_inclusive=False)
    tolerance = check_float("tolerance", tolerance, min=0, min_inclusive=False)
    max_steps = check_int("max_steps", max_steps, min=1)
    if batches is not None:
        batches = check_int("batches", batches, min=1)
    layers = [layer for _, layer in dgc_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DGC layer to calibrate")
    held = []
    for i, images in enumerate(_images(loader, model)):
        if batches is not None and i >= batches:
            break
        held.append(images)
    if not held:
        raise ValueError("calibrate_threshold needs a loader with at least one batch")

    def rate_at(tau: float) -> tuple[float, list[torch.Tensor]]:
        set_threshold(model, tau)
        saliencies = []
        rate = _measure(model, layers, held, saliencies)
        return rate, saliencies

    lowest, saliencies = rate_at(0.0)
    if lowest > target + tolerance:
        set_threshold(model, None)
        raise ValueError(
            f"pruning_rate={target} is below the rate at threshold 0 ({lowest:.4f}): that "
            f"many saliencies are 0 on this model and loader, and no threshold keeps them")
    g = torch.cat([s.flatten() for s in saliencies])
    g = g[g.isfinite()]
    lo, hi = 0.0, float(g.max()) if g.numel() else 1.0
    best = (abs(lowest - target), 0.0, lowest)  # (distance, threshold, rate)
    tau = float(torch.quantile(g.double(), target)) if g.numel() else 0.0
    for _ in range(max_steps):
        if best[0] <= tolerance:
            break
        rate, _ = rate_at(tau)
        best = min(best, (abs(rate - target), tau, rate))
        if rate < target:
            lo = tau
        else:
            hi = tau
        tau = (lo + hi) / 2
    set_threshold(model, best[1])
    if best[0] > tolerance:  # the rate jumps over the target (many equal saliencies)
        warnings.warn(f"calibrate_threshold: the closest mean pruning rate found is "
                      f"{best[2]:.4f}, not within {tolerance} of {target}", stacklevel=3)
    return layers[0].threshold  # as the layers hold it (a float32 buffer)


@torch.no_grad()
def follow_threshold(model: nn.Module, pruning_rate: float, momentum: float = 0.5) -> float:
    """DGC-G's threshold while training: one step toward the threshold at which the last
    forward's saliencies give the mean pruning rate ``pruning_rate``.

    A shared threshold cannot be fitted within the forward that uses it (a layer's saliencies
    depend on what the layers before it kept), so training follows it from batch to batch:
    ``q`` is the threshold at which the last forward's saliencies, taken as they are, would drop
    the fraction ``pruning_rate`` of channels on average over (image, layer, head) (a weighted
    quantile; the at-least-one rule ignored), and the threshold moves to
    ``momentum * tau + (1 - momentum) * q`` (to ``q`` itself the first time, when every layer
    is at threshold 0). ``dgclab.train.threshold.ThresholdFollower`` calls it after every
    training step with the pruning schedule's current target, the mean of k / C_in.

    Args:
        model: a model whose DGC layers have run a forward under the threshold rule.
        pruning_rate: the target mean rate, in [0, 1); 0 gives threshold 0.
        momentum: in [0, 1).

    Returns:
        The new threshold, set on every DGC layer.
    """
    check_type("model", model, nn.Module)
    target = check_float("pruning_rate", pruning_rate, min=0, max=1, max_inclusive=False)
    momentum = check_float("momentum", momentum, min=0, max=1, max_inclusive=False)
    layers = [layer for _, layer in dgc_layers(model)]
    if not layers or any(layer.last_saliency is None for layer in layers):
        raise ValueError("follow_threshold needs DGC layers that have run a forward")
    values, weights = [], []
    triples = sum(layer.last_saliency.shape[0] * layer.heads for layer in layers)
    for layer in layers:
        g = layer.last_saliency.flatten().float()
        values.append(g)  # each (image, layer, head) weighs 1 / triples, each channel 1 / C
        weights.append(torch.full_like(g, 1.0 / (layer.in_channels * triples)))
    values, weights = torch.cat(values), torch.cat(weights)
    finite = values.isfinite()
    values, order = values[finite].sort()
    rate = weights[finite][order].cumsum(0)  # rate(values[i]): dropped at threshold values[i]
    i = int(torch.searchsorted(rate, torch.tensor(target, dtype=rate.dtype)))
    q = 0.0 if target == 0 or not len(values) else float(values[min(i, len(values) - 1)])
    current = layers[0].threshold
    tau = q if not current else momentum * current + (1 - momentum) * q
    set_threshold(model, max(tau, 0.0))
    return layers[0].threshold


def _images(batches: Iterable, model: nn.Module):
    """The image tensors of ``batches`` (``(images, labels)`` pairs or tensors), on the model's
    device and dtype."""
    param = next(model.parameters(), None)
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"batches must hold image tensors or (images, labels), got "
                            f"{type(images).__name__}")
        if param is not None:
            images = images.to(param.device, param.dtype)
        yield images


def _measure(model, layers, images, saliencies: list | None = None) -> float:
    """The mean pruning rate over ``images`` (an iterable of tensors) in eval mode; with a list,
    every layer's saliencies are appended to it."""
    was_training = model.training
    model.eval()
    dropped, count = 0.0, 0
    try:
        for x in images:
            model(x)
            for layer in layers:
                kept = layer.last_selection.sum(-1).double()  # (B, heads)
                dropped += float((1 - kept / layer.in_channels).sum())
                count += kept.numel()
                if saliencies is not None:
                    saliencies.append(layer.last_saliency.float().cpu())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the pruning rate needs at least one image")
    return dropped / count
