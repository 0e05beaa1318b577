"""Attribution beside selection: what drove a prediction, and which channels each head kept.

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242. For one image, two attributions from Captum
(Kokhlikyan et al., arXiv 2009.07896) are shown next to the DGC heads' own decision:

* Grad-CAM (Selvaraju et al., arXiv 1610.02391), ``captum.attr.LayerGradCam``: the gradient of
  the target score, averaged over a layer's output map per channel, weighs that layer's
  activations; upsampled to the image with ``LayerAttribution.interpolate``.
* Integrated Gradients (Sundararajan, Taly, Yan, arXiv 1703.01365),
  ``captum.attr.IntegratedGradients``: the gradient along the straight path from a black
  (all-zero) image to the image, times the input.

The selection side (``image_selection``, ``top_channel_maps``) reads what the DGC layers stored
in their last forward (``last_saliency``, ``last_selection``); nothing is recomputed.

``DGCConv2d`` returns a Tensor and needs no adapter: Captum's hooks and gradients go through it
as through ``nn.Conv2d``. The selection itself has no gradient (the top-k is piecewise
constant), so both attributions only see the channels the heads kept, and the saliency gates
multiply them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from matplotlib.figure import Figure

from ..checks import check_int
from ..layers import DGCConv2d, dgc_layers
from ..modes import eval_mode
from ..record import paused
from .selection import plot_saliency_bars
from .style import class_name

__all__ = [
    "image_attributions",
    "image_selection",
    "top_channel_maps",
    "plot_image_explanation",
]


# --------------------------------------------------------------------------------------------
# Attributions (Captum)
# --------------------------------------------------------------------------------------------


def image_attributions(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    layer: str | nn.Module | None = None,
    steps: int = 32,
) -> dict:
    """Grad-CAM and Integrated Gradients of one image, with Captum.

    The model runs in eval mode (BN with its running statistics, so the ``steps`` images of the
    integration path do not influence each other) and is put back in its former mode after.

    Caveat (DGC): a head's top-k selection is piecewise constant in the input. Integrated
    Gradients still works, the gradient flowing through the kept channels (scaled by their
    saliency), but where the selection changes along the path the network's output jumps, and a
    jump has no gradient. The completeness of IG (attributions summing to
    ``f(image) - f(black image)``) then holds only up to the sum of those jumps, and more
    ``steps`` do not remove it: ``convergence_delta`` measures it.

    Args:
        model: a classifier, (B, C, H, W) -> (B, classes) logits.
        image: (C, H, W) or (1, C, H, W), as the model takes it (normalised).
        target: the class whose score is attributed; default the predicted class.
        layer: Grad-CAM's layer, a module of ``model`` or its name in ``named_modules``;
            default the last DGC layer (in ``named_modules`` order), else the last
            ``nn.Conv2d``.
        steps: points of the Riemann sum of Integrated Gradients.

    Returns:
        A dict with ``"gradcam"`` (H, W) float, ReLU'd Grad-CAM upsampled bilinearly to the
        image; ``"integrated_gradients"`` (C, H, W) float, baseline all zeros;
        ``"convergence_delta"`` float, ``sum(IG) - (f(image) - f(0))`` for the target;
        ``"target"`` and ``"prediction"`` ints; ``"gradcam_layer"`` the layer's name.
        Tensors are detached, on the CPU.

    Example:
        >>> model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
        >>> attr = image_attributions(model, torch.randn(1, 28, 28))
        >>> attr["gradcam"].shape, attr["integrated_gradients"].shape
        (torch.Size([28, 28]), torch.Size([1, 28, 28]))
    """
    x = _batch_of_one(image, model)
    steps = check_int("steps", steps, min=1)
    name, module = _cam_layer(model, layer)
    with _eval(model), torch.enable_grad():
        with torch.no_grad():
            logits = model(x)  # (1, classes)
        prediction = int(logits.argmax(1))
        target = prediction if target is None else _check_target(target, logits.shape[1])
        cam = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        ig, delta = IntegratedGradients(model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
            return_convergence_delta=True)
    return {
        "gradcam": cam[0, 0].detach().cpu(),  # (H, W)
        "integrated_gradients": ig[0].detach().cpu(),  # (C, H, W)
        "convergence_delta": float(delta.reshape(-1)[0]),
        "target": target,
        "prediction": prediction,
        "gradcam_layer": name,
    }


# --------------------------------------------------------------------------------------------
# What the heads selected
# --------------------------------------------------------------------------------------------


def image_selection(model: nn.Module, image: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Every DGC layer's saliencies and selection for one image (one forward, eval mode).

    Args:
        model: a model with ``DGCConv2d`` layers.
        image: (C, H, W) or (1, C, H, W).

    Returns:
        DGC layer name -> ``{"saliency": (heads, C_in) float, "selection": (heads, C_in)
        bool}``, the layer's ``last_saliency[0]`` and ``last_selection[0]`` (CPU).
    """
    x = _batch_of_one(image, model)
    layers = require_dgc_layers(model)
    with _eval(model), torch.no_grad():
        model(x)
    return {name: {"saliency": layer.last_saliency[0].detach().cpu(),
                   "selection": layer.last_selection[0].detach().cpu()}
            for name, layer in layers}


def top_channel_maps(
    model: nn.Module,
    image: torch.Tensor,
    layer: str | DGCConv2d,
    k: int = 6,
    head: int | None = None,
) -> dict[str, torch.Tensor]:
    """The input feature maps of the ``k`` most salient channels of one DGC layer.

    The maps are the layer's input after its own BN-ReLU (what the heads gate and convolve),
    caught by a forward hook on the layer's ``relu``; the saliencies are the layer's
    ``last_saliency`` of the same forward.

    Args:
        model: the model holding ``layer``.
        image: (C, H, W) or (1, C, H, W).
        layer: a ``DGCConv2d`` of ``model`` or its name.
        k: how many channels (at most C_in).
        head: rank by this head's saliency; default the mean over heads.

    Returns:
        A dict with ``"maps"`` (k, H_in, W_in) float, ``"channels"`` (k,) int64 channel indices
        (most salient first), ``"saliency"`` (k,) float (the head's, or the mean over heads) and
        ``"kept"`` (k, heads) bool, which heads kept each channel.
    """
    name, module = _dgc_layer(model, layer)
    k = check_int("k", k, min=1)
    if head is not None and not 0 <= check_int("head", head) < module.heads:
        raise ValueError(f"head={head!r} is out of range for layer {name!r}, which has "
                         f"{module.heads} heads (0..{module.heads - 1})")
    x = _batch_of_one(image, model)
    caught = {}

    def keep_input(_module, _inputs, output):
        caught["maps"] = output.detach().clone()  # the ReLU is in place: copy before reuse

    handle = module.relu.register_forward_hook(keep_input)
    try:
        with _eval(model), torch.no_grad():
            model(x)
    finally:
        handle.remove()
    saliency = module.last_saliency[0].cpu().float()  # (heads, C)
    score = saliency.mean(0) if head is None else saliency[head]  # (C,)
    k = min(k, module.in_channels)
    channels = score.argsort(descending=True, stable=True)[:k]  # (k,)
    return {
        "maps": caught["maps"][0, channels].cpu(),  # (k, H_in, W_in)
        "channels": channels,
        "saliency": score[channels],
        "kept": module.last_selection[0].cpu()[:, channels].T,  # (k, heads)
    }


# --------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------


def plot_image_explanation(
    model: nn.Module,
    image: torch.Tensor,
    layer: str | DGCConv2d | None = None,
    target: int | None = None,
    classes: Sequence[str] | Mapping[int, str] | None = None,
    *,
    head: int | None = None,
    label: int | None = None,
    k: int = 6,
    gradcam_layer: str | nn.Module | None = None,
    steps: int = 32,
    attributions: dict | None = None,
) -> Figure:
    """One image explained: attributions beside the channels the DGC heads kept.

    Three rows: the image, its Grad-CAM overlay and its Integrated Gradients map
    (``image_attributions``); the saliency of every input channel of ``layer`` per head, kept
    channels in ink (``plot_saliency_bars``); the input feature maps of that layer's ``k`` most
    salient channels (``top_channel_maps``).

    Args:
        model: a classifier with DGC layers.
        image: (C, H, W) or (1, C, H, W), as the model takes it.
        layer: the DGC layer whose selection is shown (a module or its name); default the last
            DGC layer.
        target: the class attributed; default the prediction.
        classes: class names (sequence indexed by label, or mapping) for the titles.
        head: show this head's bars and rank the feature maps by its saliency; default all
            heads (maps ranked by the mean saliency).
        label: the image's true label, for the title.
        k: feature maps shown.
        gradcam_layer: Grad-CAM's layer; default that of ``image_attributions``.
        steps: Integrated Gradients' steps.
        attributions: a result of ``image_attributions`` for this image, to reuse (a widget
            caches it while the layer or head changes).

    Returns:
        The figure: 3 + (heads, or 1 with ``head``) + k axes, no colorbar.
    """
    name, module = _dgc_layer(model, layer)
    if attributions is None:
        attributions = image_attributions(model, image, target, gradcam_layer, steps)
    maps = top_channel_maps(model, image, module, k, head)  # its forward also sets last_*
    saliency = module.last_saliency[0].cpu().float()  # (heads, C)
    selection = module.last_selection[0].cpu()  # (heads, C)
    shown = range(module.heads) if head is None else [head]
    n_maps = len(maps["channels"])

    fig = Figure(figsize=(11, 3.4 + 1.05 * len(shown) + 2.3), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[3.2, 0.4 + 1.05 * len(shown), 2.3])
    img_ax, cam_ax, ig_ax = top.subplots(1, 3)
    picture = _displayable(image)  # (H, W) or (H, W, 3) in [0, 1]
    gray = picture if picture.ndim == 2 else picture.mean(-1)

    prediction, tgt = attributions["prediction"], attributions["target"]
    truth = "" if label is None else f"label {class_name(int(label), classes)}, "
    img_ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
    img_ax.set_title(f"input\n{truth}predicted {class_name(prediction, classes)}", fontsize=9)

    cam = attributions["gradcam"].numpy()
    cam_ax.imshow(gray, cmap="gray", interpolation="nearest")
    peak = float(cam.max())
    cam_ax.imshow(cam / peak if peak > 0 else cam, cmap="jet", alpha=0.5, vmin=0, vmax=1,
                  interpolation="bilinear")
    note = "" if peak > 0 else " (0 everywhere)"
    cam_ax.set_title(f"Grad-CAM at {attributions['gradcam_layer']}{note}\n"
                     f"for class {class_name(tgt, classes)}", fontsize=9)

    ig = attributions["integrated_gradients"].sum(0).numpy()  # (H, W), summed over channels
    bound = max(float(np.abs(ig).max()), 1e-12)
    ig_ax.imshow(ig, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ig_ax.set_title(f"Integrated Gradients (red raises the score)\nsum {ig.sum():.3g}, "
                    f"completeness gap {attributions['convergence_delta']:.2g}", fontsize=9)
    for a in (img_ax, cam_ax, ig_ax):
        a.set_axis_off()

    bars_ax = middle.add_subplot()
    plot_saliency_bars(saliency[list(shown)], selection[list(shown)], ax=bars_ax,
                       head_names=[f"head {h}" for h in shown])
    middle.suptitle(f"{name}: saliency of each input channel (k = {module.inactive_channels} of "
                    f"{module.in_channels} dropped per head)", fontsize=10)

    ranked_by = "mean saliency over heads" if head is None else f"head {head}'s saliency"
    map_axes = np.atleast_1d(bottom.subplots(1, n_maps))
    for a, fmap, c, g, kept in zip(map_axes, maps["maps"], maps["channels"], maps["saliency"],
                                   maps["kept"]):
        a.imshow(fmap.numpy(), cmap="magma", interpolation="nearest")
        zero = " (all 0)" if float(fmap.max()) <= 0 else ""  # the ReLU silenced it
        a.set_title(f"channel {int(c)}{zero}\ng = {float(g):.2f}, kept by {int(kept.sum())}/"
                    f"{len(kept)} heads", fontsize=8)
        a.set_axis_off()
    bottom.suptitle(f"the input maps of {name} (after its BN-ReLU) with the highest "
                    f"{ranked_by}", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@contextmanager
def _eval(model: nn.Module):
    """Eval mode for the forwards of this module, which no live ``Recorder`` records (they are
    probes of one image, not samples of the stream being recorded)."""
    with eval_mode(model), paused():
        yield


def _batch_of_one(image, model: nn.Module) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got shape "
                         f"{tuple(image.shape)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else image.device
    return image.detach().to(device=device, dtype=torch.float32)  # (1, C, H, W)


def require_dgc_layers(model: nn.Module) -> list[tuple[str, DGCConv2d]]:
    """``dgc_layers(model)``; ValueError naming the model's class if it has none."""
    layers = dgc_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DGCConv2d layer")
    return layers


def _dgc_layer(model: nn.Module, layer) -> tuple[str, DGCConv2d]:
    layers = require_dgc_layers(model)
    if layer is None:
        return layers[-1]
    for name, module in layers:
        if layer is module or layer == name:
            return name, module
    raise ValueError(f"layer={_describe(layer)} is not a DGC layer of the model; DGC layers: "
                     f"{[n for n, _ in layers]}")


def _cam_layer(model: nn.Module, layer) -> tuple[str, nn.Module]:
    modules = list(model.named_modules())
    if layer is None:
        for kind in (DGCConv2d, nn.Conv2d):
            found = [(n, m) for n, m in modules if isinstance(m, kind)]
            if found:
                return found[-1]
        raise ValueError(f"{type(model).__name__} has no DGCConv2d or nn.Conv2d for Grad-CAM; "
                         "pass layer=")
    for name, module in modules:
        if layer is module or layer == name:
            return name, module
    raise ValueError(f"layer={_describe(layer)} is not a module of the model")


def _describe(layer) -> str:
    return repr(layer) if isinstance(layer, str) else type(layer).__name__


def _check_target(target, classes: int) -> int:
    if not 0 <= check_int("target", target) < classes:
        raise ValueError(f"target must be a class index in [0, {classes}), got target={target!r}")
    return int(target)


def _displayable(image: torch.Tensor) -> np.ndarray:
    """(H, W) gray or (H, W, 3) RGB in [0, 1]: the normalised image stretched to its range."""
    x = image.detach().cpu().float().reshape(-1, *image.shape[-2:])  # (C, H, W)
    x = x[0] if x.shape[0] != 3 else x.permute(1, 2, 0)
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo if hi > lo else 1.0)).numpy()

