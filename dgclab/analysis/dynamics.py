"""How a DGC network's selections move during training: churn, saliency zeros, loss at k steps.

Su et al., "Dynamic Group Convolution for Accelerating Convolutional Neural Networks", ECCV
2020, arXiv 2007.04242. Trained briefly, DGC lags static groups from the first epoch, while k
is still near 0 (issue #21). These are the measurements that ask why, on a fixed probe set of
images seen by the network at every epoch's end (``MetricTracker(probe=...)`` takes them during
training):

* ``selection_churn``: the fraction of a head's (image, channel) keep/drop decisions that
  changed between two snapshots. A static group conv has churn 0; heads still searching for
  what to keep have high churn.
* ``saliency_stats``: the saliency distribution. ``g = ReLU(fc2(ReLU(fc1(p))))``, so a channel
  can be switched off by the ReLU (``g = 0``) even when k = 0 keeps it: ``zero`` counts those
  among all (image, head, channel) saliencies, ``kept_zero`` among the kept ones (kept, but
  multiplied by 0). ``spread`` is the coefficient of variation of g across a head's channels
  (std / mean, mean over images and heads): 0 when every channel is scaled alike.
* ``loss_around_k_steps``: the event-triggered average of the training loss around every step
  at which k grew, against the loss just before it; does each k step cost the network a jump
  in loss, and how long until it is recovered?
* ``bn_drift``: how far every BN's eval-mode output is from normalised when its running
  statistics lag behind the activations it now sees (the eval-mode dips of issue #21).
* ``bn_swap``: which BNs' stale statistics cost the score: per BN, the score with only that
  BN's statistics fresh, and with only that BN's stale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..checks import check_int, check_type

__all__ = ["selection_churn", "saliency_stats", "loss_around_k_steps", "bn_drift", "bn_swap",
           "LOSS_AROUND_K_COLUMNS", "BN_DRIFT_COLUMNS", "BN_SWAP_COLUMNS"]

LOSS_AROUND_K_COLUMNS = ["offset", "events", "delta_mean", "delta_sem"]
BN_DRIFT_COLUMNS = ["layer", "channels", "drift", "drift_max", "mean_part", "std_part"]
BN_SWAP_COLUMNS = ["layer", "only_fresh", "only_stale"]
_STATS = ("running_mean", "running_var")


def selection_churn(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per head, the fraction of (image, channel) decisions that differ between two selections.

    Args:
        before, after: (N, heads, C) bool, the same N images' selections at two moments (a DGC
            layer's ``last_selection`` after a forward of the same probe batch).

    Returns:
        (heads,) float64 in [0, 1]; NaN for N = 0.

    Example:
        >>> a = torch.tensor([[[True, True, False, False]]])
        >>> selection_churn(a, torch.tensor([[[True, False, True, False]]]))
        tensor([0.5000], dtype=torch.float64)
    """
    for name, sel in (("before", before), ("after", after)):
        check_type(name, sel, torch.Tensor)
        if sel.dim() != 3 or sel.dtype != torch.bool:
            raise ValueError(f"{name} must be (N, heads, C) bool, got {tuple(sel.shape)} "
                             f"{sel.dtype}")
    if before.shape != after.shape:
        raise ValueError(f"before and after must be the same images' selections, got shapes "
                         f"{tuple(before.shape)} and {tuple(after.shape)}")
    n, heads, channels = before.shape
    if n == 0:
        return torch.full((heads,), float("nan"), dtype=torch.float64)
    changed = (before != after).double()  # (N, heads, C)
    return changed.mean(dim=(0, 2))


def saliency_stats(saliency: torch.Tensor, selection: torch.Tensor | None = None) -> dict:
    """Summary of a layer's saliencies g over a batch of images.

    Args:
        saliency: (N, heads, C) non-negative saliencies (``last_saliency``).
        selection: (N, heads, C) bool, the channels kept (``last_selection``); optional.

    Returns:
        dict of floats: ``zero`` (fraction of saliencies exactly 0: channels the saliency ReLU
        switched off), ``mean`` (mean g), ``spread`` (std / mean of g over a head's channels,
        averaged over images and heads; a head whose saliencies are all 0 counts 0), and with
        ``selection`` ``kept_zero`` (fraction of kept decisions with g = 0, NaN when nothing is
        kept). NaN everywhere for N = 0.
    """
    check_type("saliency", saliency, torch.Tensor)
    if saliency.dim() != 3:
        raise ValueError(f"saliency must be (N, heads, C), got shape {tuple(saliency.shape)}")
    if selection is not None:
        check_type("selection", selection, torch.Tensor)
        if selection.shape != saliency.shape or selection.dtype != torch.bool:
            raise ValueError(f"selection must be bool of the saliency's shape "
                             f"{tuple(saliency.shape)}, got {tuple(selection.shape)} "
                             f"{selection.dtype}")
    nan = float("nan")
    if saliency.shape[0] == 0:
        stats = {"zero": nan, "mean": nan, "spread": nan}
        return stats | ({"kept_zero": nan} if selection is not None else {})
    g = saliency.detach().double()
    mean = g.mean(-1)  # (N, heads)
    std = g.std(-1, correction=0) if g.shape[-1] > 1 else torch.zeros_like(mean)
    spread = torch.where(mean > 0, std / mean.clamp_min(1e-300), torch.zeros_like(mean))
    stats = {"zero": float((g == 0).double().mean()), "mean": float(g.mean()),
             "spread": float(spread.mean())}
    if selection is not None:
        kept = int(selection.sum())
        stats["kept_zero"] = float(((g == 0) & selection).sum()) / kept if kept else nan
    return stats


def loss_around_k_steps(frame: pd.DataFrame, window: int = 20) -> pd.DataFrame:
    """The training loss around the steps at which k grew, relative to the loss just before.

    An event is a step whose ``k_frac`` (the mean over DGC layers of k / C_in, what the Trainer
    logs) is larger than the previous step's. For every event at step t and every offset
    o in [-window, window], ``loss[t + o] - mean(loss[t - window : t])``; averaged over the
    events whose whole window lies inside the logged steps. Events close together overlap
    (during DGC's ramp k grows every few steps somewhere in the network); the ``delta_sem``
    column (standard error over events) says how much of a jump is noise.

    Args:
        frame: per-step training logs, either wide (columns ``step``, ``loss``, ``k_frac``) or
            a ``MetricTracker`` frame (long: ``step``, ``layer``, ``metric``, ``value``) with
            the model-wide metrics ``loss`` and ``k_frac`` (``MetricTracker(metrics=(...,
            "loss", "k_frac"))``).
        window: steps on each side, >= 1.

    Returns:
        DataFrame with one row per offset: ``offset``, ``events`` (how many events were
        averaged), ``delta_mean``, ``delta_sem`` (NaN with fewer than two events). No rows
        when there is no event.
    """
    check_type("frame", frame, pd.DataFrame)
    window = check_int("window", window, min=1)
    steps = _step_series(frame)
    loss, k = steps["loss"].to_numpy(float), steps["k_frac"].to_numpy(float)
    events = np.flatnonzero(np.diff(k) > 0) + 1  # positions whose k grew from the previous
    events = events[(events >= window) & (events + window < len(loss))]
    if len(events) == 0:
        return pd.DataFrame(columns=LOSS_AROUND_K_COLUMNS)
    offsets = np.arange(-window, window + 1)
    base = np.stack([loss[t - window:t].mean() for t in events])  # (E,)
    deltas = loss[events[:, None] + offsets[None, :]] - base[:, None]  # (E, 2 * window + 1)
    n = len(events)
    sem = deltas.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full(len(offsets), np.nan)
    return pd.DataFrame({"offset": offsets, "events": n, "delta_mean": deltas.mean(0),
                         "delta_sem": sem})


def bn_drift(model: nn.Module, stale: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Per BN layer, how far its output is from normalised when it uses stale running statistics.

    ``model``'s BNs hold the statistics of what each layer now sees (mean mu, variance var per
    channel, e.g. just recomputed by ``dgclab.train.recalibrate_bn``); ``stale`` holds the
    running statistics the same BNs had before (mu', var'). In eval mode a BN computes
    (x - mu') / sqrt(var' + eps), so for inputs of mean mu and variance var its output has mean
    ``m = (mu - mu') / sqrt(var' + eps)`` and standard deviation ``s = sqrt(var / (var' + eps))``,
    where the right statistics give mean 0 and ``s0 = sqrt(var / (var + eps))``. A channel's
    drift is the 2-Wasserstein distance between the two Gaussians with those moments,
    ``sqrt(m**2 + (s - s0)**2)``, in units of the normalised output (before the affine gamma
    and beta): 0 when the statistics are right, 1 when the output is off by one standard
    deviation. ``mean_part`` and ``std_part`` say which moment it comes from.

    Args:
        model: the network, its BNs holding the current statistics.
        stale: ``{name: tensor}`` with every tracking BN's ``<name>.running_mean`` and
            ``<name>.running_var`` as they were (e.g. ``{k: v.clone() for k, v in
            model.state_dict().items()}`` taken before recomputing).

    Returns:
        DataFrame, one row per BN with running statistics, in ``named_modules`` order:
        ``layer``, ``channels``, ``drift`` (mean over channels), ``drift_max``, ``mean_part``
        (mean of ``|m|``), ``std_part`` (mean of ``|s - s0|``). No rows for a model without
        such BNs.

    Raises:
        TypeError: ``model`` is not a module or ``stale`` not a mapping.
        ValueError: ``stale`` lacks a BN's statistics or holds them in another shape.

    Example:
        >>> bn = nn.BatchNorm1d(2).eval()
        >>> stale = {k: v.clone() for k, v in bn.state_dict().items()}
        >>> _ = bn.running_mean.fill_(1.0)  # the inputs' mean moved by one unit
        >>> bn_drift(bn, stale).drift.round(3).tolist()
        [1.0]
    """
    check_type("model", model, nn.Module)
    check_type("stale", stale, Mapping)
    bns = _running_bns(model)
    before = _statistics(bns, stale, "stale")
    rows = []
    for name, bn in bns:
        stale_mean, stale_var = (t.double().cpu() for t in before[name])
        mean, var = bn.running_mean.detach().double().cpu(), bn.running_var.detach().double().cpu()
        m = (mean - stale_mean) / (stale_var + bn.eps).sqrt()  # (C,) output mean, stale stats
        s = (var / (stale_var + bn.eps)).sqrt()  # (C,) output std, stale stats
        s0 = (var / (var + bn.eps)).sqrt()  # (C,) output std, right stats
        drift = (m ** 2 + (s - s0) ** 2).sqrt()
        rows.append({"layer": name, "channels": len(mean), "drift": float(drift.mean()),
                     "drift_max": float(drift.max()), "mean_part": float(m.abs().mean()),
                     "std_part": float((s - s0).abs().mean())})
    return pd.DataFrame(rows, columns=BN_DRIFT_COLUMNS)


def _running_bns(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def _statistics(bns, given: Mapping[str, torch.Tensor], label: str) -> dict:
    """``{bn name: (mean, var)}`` read from ``given`` (a state-dict-like mapping), checked."""
    out = {}
    for name, bn in bns:
        prefix = f"{name}." if name else ""
        pair = []
        for stat in _STATS:
            key, now = prefix + stat, getattr(bn, stat)
            value = given.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != now.shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else value
                raise ValueError(f"{label}[{key!r}] must be a tensor of shape "
                                 f"{tuple(now.shape)}, got {got}: {label} must hold every BN's "
                                 f"running statistics (a state_dict of the same model)")
            pair.append(value.detach())
        out[name] = tuple(pair)
    return out


def bn_swap(model: nn.Module, stale: Mapping[str, torch.Tensor],
            fresh: Mapping[str, torch.Tensor], score: Callable[[nn.Module], float]) -> pd.DataFrame:
    """Which BNs' stale running statistics cost ``score``, one BN at a time.

    Where recomputing every BN's statistics (``dgclab.train.recalibrate_bn``) lifts the
    eval-mode accuracy, this says whether one layer's statistics carry the loss or all of them
    a little each. For every BN (``named_modules`` order), ``score(model)`` twice: with only
    that BN's statistics fresh (the others stale), and with only that BN's stale (the others
    fresh). Compare with ``score`` under all-stale and all-fresh statistics, which the caller
    has (or gets from this function's rows of a one-BN model).

    Args:
        model: the network; its BN buffers are overwritten during the calls and restored after.
        stale, fresh: ``{name: tensor}`` mappings with every tracking BN's
            ``<name>.running_mean`` and ``<name>.running_var`` (``state_dict`` copies taken
            before and after recomputing).
        score: called with ``model`` (statistics swapped in, mode unchanged), returns a number,
            e.g. its test accuracy in eval mode.

    Returns:
        DataFrame, one row per BN with running statistics: ``layer``, ``only_fresh``,
        ``only_stale``.

    Raises:
        TypeError: ``model`` not a module, ``stale`` or ``fresh`` not mappings, ``score`` not
            callable.
        ValueError: a mapping lacks a BN's statistics or holds them in another shape.

    Example:
        >>> bn = nn.BatchNorm1d(1).eval()
        >>> stale = {k: v.clone() for k, v in bn.state_dict().items()}
        >>> fresh = {**stale, "running_mean": torch.ones(1)}
        >>> table = bn_swap(bn, stale, fresh, lambda m: m(torch.ones(2, 1)).abs().sum().item())
        >>> table[["only_fresh", "only_stale"]].round(3).values.tolist()
        [[0.0, 2.0]]
    """
    check_type("model", model, nn.Module)
    check_type("stale", stale, Mapping)
    check_type("fresh", fresh, Mapping)
    if not callable(score):
        raise TypeError(f"score must be callable, got {type(score).__name__}")
    bns = _running_bns(model)
    old, new = _statistics(bns, stale, "stale"), _statistics(bns, fresh, "fresh")
    saved = {name: tuple(getattr(bn, s).clone() for s in _STATS) for name, bn in bns}

    def put(chosen: Mapping[str, tuple]) -> None:
        with torch.no_grad():
            for name, bn in bns:
                for stat, value in zip(_STATS, chosen[name]):
                    getattr(bn, stat).copy_(value)

    rows = []
    try:
        for name, _ in bns:
            put({**old, name: new[name]})
            only_fresh = float(score(model))
            put({**new, name: old[name]})
            only_stale = float(score(model))
            rows.append({"layer": name, "only_fresh": only_fresh, "only_stale": only_stale})
    finally:
        put(saved)
    return pd.DataFrame(rows, columns=BN_SWAP_COLUMNS)


def _step_series(frame: pd.DataFrame) -> pd.DataFrame:
    """Wide per-step ``loss`` and ``k_frac``, sorted by step, from either layout."""
    if "metric" in frame.columns:
        missing = {"step", "metric", "value"} - set(frame.columns)
        if missing:
            raise ValueError(f"a long frame needs columns step, metric, value; missing "
                             f"{sorted(missing)}")
        rows = frame[frame.metric.isin(["loss", "k_frac"])]
        wide = rows.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
        frame = wide.reset_index()
    missing = {"step", "loss", "k_frac"} - set(frame.columns)
    if missing:
        raise ValueError(f"per-step logs need step, loss and k_frac; missing {sorted(missing)} "
                         f"(a MetricTracker logs them with metrics including 'loss', 'k_frac')")
    return frame.dropna(subset=["loss", "k_frac"]).sort_values("step")
