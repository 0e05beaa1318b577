"""Implicit filter-level sparsity: dead BN-ReLU features and their selectivity (SPEC §7).

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495. A "feature" is one channel of a BatchNorm followed by a ReLU. It
is dead when its largest ReLU output over the data is below 1e-12, or (the authors' pruning
rule) when its BN scale |gamma| is below 1e-3. Its selectivity is the fraction of images whose
largest activation, divided by the feature's largest over the data, stays below 1e-3.

Works on any model with ``nn.BatchNorm2d`` -> ``nn.ReLU`` pairs, DGC or not. In a DGC layer the
pair is the layer's own pre-activation (``norm``, ``relu``), which feeds the saliency generators
and every head.

How the pairs are found (``bn_relu_pairs``):

* By data flow, the default whenever an input is available: one probe forward with hooks on
  every ``BatchNorm2d`` (which records its output tensor) and every ``nn.ReLU`` (which records
  its input tensor); a BN and a ReLU pair when the ReLU's input IS the BN's output (the same
  tensor object; an in-place ReLU returns that object too). A ReLU applied with ``F.relu`` or
  ``torch.relu`` is invisible to hooks, and so is a BN whose output is viewed, sliced or
  otherwise touched before the ReLU: such BNs are not reported.
* Without an input, a heuristic: a BN whose next sibling, in its parent's registration order,
  is an ``nn.ReLU``, plus every DGC layer's ``norm``/``relu``. Registration order need not be
  call order: a residual block that registers ``bn2`` just before the ReLU applied after the
  residual add gets a pair that the data does not have (ResNet BasicBlocks without a
  downsample). Prefer the probe.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dgclab.checks import check_float, check_int, check_type
from dgclab.layers.dgc import DGCConv2d
from dgclab.modes import eval_mode, last_forward_kept
from dgclab.record import paused

__all__ = ["bn_relu_pairs", "dead_by_gamma", "filter_sparsity"]

# Samples of the first batch used by the pairing probe: the pairing does not depend on the
# batch size (the model runs in eval mode), so two samples keep the probe cheap.
_PROBE_SAMPLES = 2


def bn_relu_pairs(
    model: nn.Module,
    inputs: torch.Tensor | None = None,
    input_size: Sequence[int] | None = None,
) -> list[tuple[str, str]]:
    """(BN name, ReLU name) for every ``BatchNorm2d`` whose output goes straight into a ReLU.

    With ``inputs`` or ``input_size``, pairs are found by data flow (see the module docstring):
    one forward under ``torch.no_grad()``, in eval mode (every module's mode, and every DGC
    layer's ``last_*`` attributes, are restored), inside ``dgclab.record.paused()`` (a live
    ``Recorder`` does not record it), hooks removed afterwards. Without either, the
    registration-order heuristic is used.

    Args:
        model: any module.
        inputs: a batch to run, on any device (moved to the model's); only its first
            two samples are used.
        input_size: (B, C, H, W) of a batch of zeros to run instead.

    Returns:
        A list of (bn_name, relu_name), in ``named_modules`` order of the BNs; each BN appears
        once (with the first ReLU that consumed its output).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> bn_relu_pairs(model, input_size=(1, 3, 8, 8))
        [('1', '2')]
    """
    check_type("model", model, nn.Module)
    if inputs is None and input_size is None:
        return _heuristic_pairs(model)
    if inputs is not None:
        check_type("inputs", inputs, torch.Tensor)
    if inputs is None:
        size = tuple(input_size)
        if len(size) < 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(
                f"input_size must be positive ints (B, C, ...), got input_size={input_size!r}"
            )
        device, dtype = device_and_dtype(model)
        inputs = torch.zeros(size, device=device, dtype=dtype)
    else:
        inputs = inputs[:_PROBE_SAMPLES].to(device_and_dtype(model)[0])

    names = {m: n for n, m in model.named_modules()}
    bn_outputs: dict[int, tuple[str, weakref.ref]] = {}  # id(output) -> (bn name, the tensor)
    found: dict[str, str] = {}

    def bn_hook(module, args, output):
        # A weak reference tells a live tensor from a freed one whose id() was reused.
        bn_outputs[id(output)] = (names[module], weakref.ref(output))

    def relu_hook(module, args, output):
        x = args[0]
        entry = bn_outputs.get(id(x))
        if entry is not None and entry[1]() is x:
            found.setdefault(entry[0], names[module])

    handles = []
    with _measuring(model):
        try:
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    handles.append(module.register_forward_hook(bn_hook))
                elif isinstance(module, nn.ReLU):
                    handles.append(module.register_forward_hook(relu_hook))
            with torch.no_grad(), paused():
                model(inputs)
        finally:
            for handle in handles:
                handle.remove()
    return [(n, found[n]) for n, m in model.named_modules() if n in found]


def dead_by_gamma(abs_gamma: torch.Tensor, threshold: float) -> torch.Tensor:
    """SPEC §7's rule: a filter is dead where ``|gamma| < threshold``.

    Compared in float64, so that a threshold as small as 5e-324 marks exact zeros only (in
    float32 it would round to 0 and mark nothing).

    Args:
        abs_gamma: (C,) |gamma| of a BN.
        threshold: the rule's threshold.

    Returns:
        (C,) bool, True where dead.
    """
    return abs_gamma.double() < threshold


def filter_sparsity(
    model: nn.Module,
    loader: Iterable | None = None,
    gamma_threshold: float = 1e-3,
    activation_threshold: float = 1e-12,
    *,
    input_size: Sequence[int] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    selectivity: bool = True,
    selectivity_threshold: float = 1e-3,
    max_batches: int | None = None,
    per_filter: bool = False,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Dead features of every BN-ReLU pair, by |gamma| and (given data) by activation (SPEC §7).

    A "filter" here is one channel of a BN-ReLU pair, and everything is reported per BN. In a
    plain CNN that is the conv filter feeding that BN channel. In a DenseNet a BN's input is the
    concatenation of the outputs of earlier layers, so a producer's channel appears in every
    later BN of its block, each with its own gamma: it is counted once per BN, and may be dead
    behind one BN and alive behind another.

    With a ``loader`` the model runs over the data in eval mode under ``torch.no_grad()`` (modes
    and DGC ``last_*`` attributes restored afterwards, hooks removed in ``finally``), on the
    model's device, inside ``dgclab.record.paused()`` (a live ``Recorder`` does not record these
    forwards). The activation of a filter on an image is the max over positions of
    ReLU(BN output). Dead by activation: its max over the data is below
    ``activation_threshold``. Selectivity needs that max first, so it costs a second pass over
    the loader, which must yield the same images again (no random augmentation); pass
    ``selectivity=False`` for a single pass.

    Args:
        model: any module with ``BatchNorm2d`` -> ``nn.ReLU`` pairs.
        loader: iterable of batches, each a tensor or an ``(x, y, ...)`` tuple/list whose first
            element is the input. With selectivity it is read twice: a re-iterable (a
            DataLoader, a list), not a one-shot iterator or generator (``TypeError``); without,
            one pass, whose first batch also serves the pairing probe, so an iterator works.
        gamma_threshold: dead by gamma when ``|gamma| < gamma_threshold``. A BN without affine
            parameters has gamma = 1.
        activation_threshold: dead by activation when the max ReLU output over the data is
            below it.
        input_size: (B, C, H, W) for the pairing probe when there is no loader.
        pairs: (bn_name, relu_name) pairs to use instead of finding them.
        selectivity: compute selectivity (with a loader only).
        selectivity_threshold: an image counts as "not selected" by a filter when the filter's
            max on it is below this fraction of the filter's max over the data.
        max_batches: use only the first batches of the loader.
        per_filter: one row per filter instead of one per BN.
        progress: a tqdm bar over the batches; None (default): only on a terminal or notebook.

    Pairs come from ``pairs``, else a probe forward on the loader's first batch or on zeros of
    ``input_size``, else the registration-order heuristic (see the module docstring).

    Raises:
        TypeError: a one-shot iterator as ``loader`` with ``selectivity=True``; a threshold or
            ``max_batches`` of the wrong type.
        ValueError: a negative threshold, ``max_batches < 1``; a loader that yields no image,
            a batch without an input tensor; a second pass that is not the first again (another
            number of images, or other maxima: random augmentation); ``pairs`` that name no
            ``BatchNorm2d``.

    Returns:
        One row per BN-ReLU pair, in ``named_modules`` order: ``layer`` (the BN's name),
        ``relu``, ``filters`` (channels), ``dead_gamma`` (count), and with a loader
        ``dead_activation`` (count) and ``selectivity`` (mean over the filters not dead by
        activation; NaN if there is none). With ``per_filter``: one row per (layer, filter) with
        ``layer``, ``relu``, ``filter``, ``gamma`` (|gamma|), ``dead_gamma`` (bool), and with a
        loader ``max_activation``, ``dead_activation`` (bool), ``selectivity`` (NaN for dead
        filters).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> filter_sparsity(model, [torch.randn(4, 3, 8, 8)])[["layer", "filters"]]
          layer  filters
        0     1        8
    """
    check_type("model", model, nn.Module)
    gamma_threshold = check_float("gamma_threshold", gamma_threshold, min=0)
    activation_threshold = check_float("activation_threshold", activation_threshold, min=0)
    selectivity_threshold = check_float("selectivity_threshold", selectivity_threshold, min=0)
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, min=1)
    if loader is not None and selectivity:
        check_reiterable(loader, "filter_sparsity reads it twice for selectivity (pass "
                                  "selectivity=False for one pass)")
    if pairs is None:
        if loader is not None:
            first = _first_batch(loader)
            if isinstance(loader, Iterator):  # one pass: the probe's batch is its first batch
                loader = itertools.chain([first], loader)
            pairs = bn_relu_pairs(model, batch_inputs(first))
        else:
            pairs = bn_relu_pairs(model, input_size=input_size)
    modules = dict(model.named_modules())
    for bn_name, _ in pairs:
        if not isinstance(modules.get(bn_name), nn.BatchNorm2d):
            raise ValueError(f"pairs names {bn_name!r}, which is not a BatchNorm2d of the model")

    gammas = {}  # bn name -> (C,) |gamma| on the CPU
    for bn_name, _ in pairs:
        bn = modules[bn_name]
        gammas[bn_name] = (
            bn.weight.detach().abs().float().cpu()
            if bn.weight is not None
            else torch.ones(bn.num_features)
        )

    stats = None
    if loader is not None:
        stats = _activation_stats(
            model, loader, [n for n, _ in pairs], selectivity, selectivity_threshold, max_batches,
            progress,
        )

    frames = []
    for bn_name, relu_name in pairs:
        gamma = gammas[bn_name]
        frame = {
            "layer": bn_name,
            "relu": relu_name,
            "filter": np.arange(len(gamma)),
            "gamma": gamma.numpy(),
            "dead_gamma": dead_by_gamma(gamma, gamma_threshold).numpy(),
        }
        if stats is not None:
            peak, below, images = stats[bn_name]
            dead = peak < activation_threshold
            frame["max_activation"] = peak.numpy()
            frame["dead_activation"] = dead.numpy()
            if selectivity:
                sel = below.double() / images if images else torch.full(peak.shape, float("nan"))
                frame["selectivity"] = torch.where(dead, float("nan"), sel).numpy()
        frames.append(pd.DataFrame(frame))

    columns = ["layer", "relu", "filter", "gamma", "dead_gamma"]
    if stats is not None:
        columns += ["max_activation", "dead_activation"] + (["selectivity"] if selectivity else [])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    table = table[columns]
    if per_filter:
        return table

    summary_columns = ["layer", "relu", "filters", "dead_gamma"]
    if stats is not None:
        summary_columns += ["dead_activation"] + (["selectivity"] if selectivity else [])
    rows = []
    for (bn_name, relu_name), frame in zip(pairs, frames):
        row = {
            "layer": bn_name,
            "relu": relu_name,
            "filters": len(frame),
            "dead_gamma": int(frame["dead_gamma"].sum()),
        }
        if stats is not None:
            row["dead_activation"] = int(frame["dead_activation"].sum())
            if selectivity:
                live = frame.loc[~frame["dead_activation"], "selectivity"]
                row["selectivity"] = float(live.mean()) if len(live) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=summary_columns)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _activation_stats(
    model: nn.Module,
    loader: Iterable,
    bn_names: list[str],
    selectivity: bool,
    selectivity_threshold: float,
    max_batches: int | None,
    progress: bool | None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per BN: (C,) max ReLU(BN) over the data, (C,) images below the selectivity threshold,
    and the number of images. Pass 1 finds the maxima, pass 2 (selectivity only) counts, and
    finds the maxima again: they must be the first pass's, or the data changed."""
    modules = dict(model.named_modules())
    device = device_and_dtype(model)[0]
    peaks: list[dict[str, torch.Tensor]] = [{}, {}]  # per pass: bn name -> (C,) max
    peak = peaks[0]
    below: dict[str, torch.Tensor] = {}
    images = [0, 0]  # per pass
    phase = 0

    def make_hook(name: str):
        def hook(module, args, output):
            # Runs before the ReLU (even an in-place one) has touched the output.
            per_image = output.detach().flatten(2).amax(-1).clamp_min(0)  # (B, C)
            batch_max, seen = per_image.amax(0), peaks[phase]
            seen[name] = batch_max if name not in seen else torch.maximum(seen[name], batch_max)
            if phase == 1:
                below[name] += (per_image < selectivity_threshold * peaks[0][name]).sum(0)

        return hook

    passes = 2 if selectivity else 1
    batches = batch_count(loader, max_batches)

    handles = []
    with _measuring(model), paused(), tqdm(
        total=None if batches is None else passes * batches, desc="filter sparsity",
        disable=None if progress is None else not progress
    ) as bar:
        try:
            handles = [modules[n].register_forward_hook(make_hook(n)) for n in bn_names]
            with torch.no_grad():
                for p in range(passes):
                    phase = p
                    if p == 1:
                        below = {n: torch.zeros_like(m, dtype=torch.long) for n, m in peak.items()}
                    for i, batch in enumerate(loader):
                        if max_batches is not None and i >= max_batches:
                            break
                        x = batch_inputs(batch).to(device)
                        images[p] += x.shape[0]
                        model(x)
                        bar.update()
        finally:
            for handle in handles:
                handle.remove()
    if not images[0]:
        raise ValueError(f"the loader yielded no image (max_batches={max_batches}): no "
                         f"activation to measure")
    if passes == 2 and images[1] != images[0]:
        # A loader that is not re-iterable after all (its __iter__ hands out one shared
        # iterator) or that changed: the counts below would be of other images.
        raise ValueError(
            f"the loader yielded {images[0]} images in its first pass and {images[1]} in its "
            f"second; selectivity needs the same images twice (a DataLoader without random "
            f"augmentation, a list), or pass selectivity=False"
        )
    if passes == 2:
        # Same images, same maxima (up to the rounding of other batchings); random
        # augmentation shows here, and would count images against another image's maximum.
        changed = [n for n, first in peak.items() if n not in peaks[1]
                   or not torch.allclose(peaks[1][n], first, rtol=1e-3, atol=1e-6)]
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise ValueError(
                f"the second pass over the loader gave other maxima than the first (BN "
                f"{changed[0]!r}{more}): selectivity needs the same images twice; random "
                f"augmentation? Use a loader without it, or pass selectivity=False"
            )

    out = {}
    for name in bn_names:
        c = modules[name].num_features
        filt_peak = peak[name].float().cpu() if name in peak else torch.zeros(c)
        filt_below = below[name].cpu() if name in below else torch.zeros(c, dtype=torch.long)
        out[name] = (filt_peak, filt_below, images[0])
    return out


@contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """Context: eval mode, then every module's mode and grouping layers' ``last_*`` restored."""
    with eval_mode(model), last_forward_kept(model):
        yield


def _heuristic_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """BN immediately followed by an nn.ReLU sibling, and every DGC layer's norm/relu."""
    found: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        prefix = parent_name + "." if parent_name else ""
        if isinstance(parent, DGCConv2d):
            found[prefix + "norm"] = prefix + "relu"
        children = list(parent.named_children())
        for (name, child), (next_name, next_child) in zip(children, children[1:]):
            if isinstance(child, nn.BatchNorm2d) and isinstance(next_child, nn.ReLU):
                found.setdefault(prefix + name, prefix + next_name)
    return [(n, found[n]) for n, _ in model.named_modules() if n in found]


def first_inputs(loader: Iterable) -> torch.Tensor:
    """The input of the loader's first batch (for the pairing probe)."""
    return batch_inputs(_first_batch(loader))


def _first_batch(loader: Iterable):
    for batch in loader:
        return batch
    raise ValueError("the loader yielded no batch")


def check_reiterable(loader: Iterable, why: str) -> None:
    """TypeError for a one-shot iterator (a generator, ``iter(loader)``) read more than once.

    Its second pass would be empty: every count over it 0, every statistic of it wrong.
    """
    if isinstance(loader, Iterator):
        raise TypeError(
            f"loader is a {type(loader).__name__}, a one-shot iterator that its first pass "
            f"exhausts; {why}: pass a re-iterable (a DataLoader, a list of batches)"
        )


def batch_inputs(batch) -> torch.Tensor:
    """The input of a batch: the tensor itself, or the first element of a tuple/list."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(
        f"a batch must be a tensor or an (x, y, ...) tuple/list with a tensor first, got "
        f"{type(batch).__name__}"
    )


def batch_count(loader, max_batches: int | None = None) -> int | None:
    """Batches one pass over ``loader`` reads (at most ``max_batches``); None if it cannot say."""
    try:
        batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        batches = None
    if max_batches is not None:
        batches = max_batches if batches is None else min(batches, max_batches)
    return batches


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()
