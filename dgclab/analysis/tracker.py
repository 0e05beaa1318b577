"""Snapshots of selection and sparsity metrics during training, in one tidy DataFrame.

``MetricTracker`` is a callback: the training loop calls it, it reads the model, and it appends
rows ``(step, epoch, layer, metric, value)`` to ``tracker.frame``, ready for
``seaborn.relplot(data=tracker.frame, x="step", y="value", hue="layer", col="metric")``.

The callback protocol (what a training loop does):

* ``tracker.on_step(step, epoch)`` after every optimizer step, ``step`` being the number of
  steps taken so far (1 after the first) and ``epoch`` the current epoch (0-based). With
  ``every_n_steps=n`` the cheap metrics are snapshotted when ``step % n == 0``; otherwise the
  call does nothing. Call it after the training forward: the selection metrics read each DGC
  layer's ``last_selection``, i.e. the last batch the model saw.
* ``tracker.epoch_end(epoch, step)`` after each epoch: snapshots the cheap metrics (unless
  ``on_step`` already did at this step) and, when the tracker has a loader, the expensive ones
  (a pass over the loader with ``filter_sparsity``; the model is put in eval mode and restored).
* ``tracker.snapshot(step, epoch, expensive=False)`` at any other moment.

It also speaks ``dgclab.train.Trainer``'s callback protocol (``on_step_end(trainer, step, epoch,
logs)``, ``on_epoch_end(trainer, epoch, row)``), so ``Trainer(config, callbacks=[tracker])``
feeds it; the Trainer counts epochs from 1, as ``metrics.csv`` does.

Metrics (``layer`` is a module name from ``named_modules``):

========================  ================================================================
``inactive_channels``     per DGC layer: k, the channels each head drops (cheap)
``kept_channels``         per DGC layer: channels kept per head, mean over heads and the
                          samples of the last batch (cheap)
``head_jaccard``          per DGC layer with >= 2 heads: Jaccard of two heads' selections,
                          mean over head pairs and the samples of the last batch (cheap)
``dead_gamma``            per BN-ReLU pair: fraction of filters with |gamma| < threshold
                          (cheap)
``dead_activation``       per BN-ReLU pair: fraction of filters whose max ReLU(BN) output over
                          the loader is below threshold (expensive: one pass over the loader)
``selectivity``           per BN-ReLU pair: mean selectivity of the live filters (expensive:
                          a second pass over the loader)
========================  ================================================================

Selection metrics are skipped for a DGC layer that has not run a forward yet.

With a ``probe`` (a fixed batch of images, e.g. the first 512 of the test set) the tracker also
takes, at every epoch's end and before training (``on_train_begin``; epoch 0 is the
initialisation), the probe metrics of every DGC layer, in eval mode on the same images each
time (``dgclab.analysis.dynamics``; issue #21 asks them why DGC lags early):

========================  ================================================================
``selection_churn``       fraction of the probe's (image, head, channel) keep/drop decisions
                          that changed since the previous probe snapshot
``saliency_zero``         fraction of the probe's saliencies g that are exactly 0 (switched
                          off by the saliency ReLU, whatever k is)
``kept_zero``             among the kept decisions, the fraction with g = 0
``saliency_spread``       std / mean of g over a head's channels, mean over images and heads
``probe_head_jaccard``    head_jaccard on the probe, mean over head pairs
``chance_head_jaccard``   the Jaccard two heads would have keeping random sets of their
                          sizes (``head_overlap(chance=True)``'s baseline)
========================  ================================================================

And, opt-in, the Trainer's per-step logs (layer ``""``): ``loss`` (the step's cross-entropy)
and ``k_frac`` (mean k / C_in), every step, for ``loss_around_k_steps``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from dgclab.checks import check_float, check_int, check_type
from dgclab.layers import dgc_layers
from dgclab.modes import eval_mode
from dgclab.record import paused

from .dynamics import saliency_stats, selection_churn
from .selection import _mean_chance, head_jaccard
from .sparsity import check_reiterable, first_inputs, bn_relu_pairs, filter_sparsity

__all__ = ["MetricTracker", "CHEAP_METRICS", "EXPENSIVE_METRICS", "PROBE_METRICS", "STEP_METRICS"]

CHEAP_METRICS = ("inactive_channels", "kept_channels", "head_jaccard", "dead_gamma")
EXPENSIVE_METRICS = ("dead_activation", "selectivity")
PROBE_METRICS = ("selection_churn", "saliency_zero", "kept_zero", "saliency_spread",
                 "probe_head_jaccard", "chance_head_jaccard")
STEP_METRICS = ("loss", "k_frac")
_ALL_METRICS = CHEAP_METRICS + EXPENSIVE_METRICS + PROBE_METRICS + STEP_METRICS
_PROBE_BATCH = 256  # probe images per forward
_SPARSITY_METRICS = ("dead_gamma",) + EXPENSIVE_METRICS
COLUMNS = ["step", "epoch", "layer", "metric", "value"]


class MetricTracker:
    """Record selection and sparsity metrics every N steps and at each epoch's end.

    Args:
        model: the model being trained (DGC layers and BN-ReLU pairs are found inside it).
        every_n_steps: snapshot the cheap metrics in ``on_step`` every this many steps; None:
            only at epoch ends.
        metrics: names from ``CHEAP_METRICS`` and ``EXPENSIVE_METRICS``. Default: the cheap
            ones, plus ``dead_activation`` when a loader is given.
        loader: data for the expensive metrics (e.g. a fixed subset of the training set,
            without random augmentation); see ``filter_sparsity``. It is read at every epoch's
            end: a re-iterable (a DataLoader, a list), not a one-shot iterator (``TypeError``).
        input_size: (B, C, H, W) for the probe forward that finds the BN-ReLU pairs when there
            is no loader (else the loader's first batch is used; with neither, the
            registration-order heuristic of ``bn_relu_pairs``). Pairs are found once, here.
        gamma_threshold, activation_threshold: as in ``filter_sparsity``.
        max_batches: use only the first batches of the loader.
        probe: (N, C, H, W) images for the probe metrics, the same at every snapshot (keep
            them fixed and un-augmented); forwarded in eval mode, 256 at a time, without
            autograd, on the model's device.

    Example:
        >>> tracker = MetricTracker(model, every_n_steps=50)  # doctest: +SKIP
        >>> for epoch in range(epochs):  # doctest: +SKIP
        ...     for x, y in train_loader:
        ...         ...  # forward, loss, backward, optimizer step
        ...         step += 1
        ...         tracker.on_step(step, epoch)
        ...     tracker.on_epoch_end(epoch, step)
        >>> tracker.frame.query("metric == 'head_jaccard'")  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        every_n_steps: int | None = None,
        metrics: Sequence[str] | None = None,
        *,
        loader: Iterable | None = None,
        input_size: Sequence[int] | None = None,
        gamma_threshold: float = 1e-3,
        activation_threshold: float = 1e-12,
        max_batches: int | None = None,
        probe: torch.Tensor | None = None,
    ) -> None:
        valid = isinstance(every_n_steps, int) and not isinstance(every_n_steps, bool)
        if every_n_steps is not None and (not valid or every_n_steps <= 0):
            raise ValueError(f"every_n_steps must be a positive int or None, got {every_n_steps!r}")
        if probe is not None:
            check_type("probe", probe, torch.Tensor)
            if probe.dim() < 2 or probe.shape[0] == 0 or not probe.is_floating_point():
                raise ValueError(f"probe must be a non-empty float batch of images (N, C, H, W), "
                                 f"got shape {tuple(probe.shape)} {probe.dtype}")
        if metrics is None:
            metrics = (CHEAP_METRICS + (("dead_activation",) if loader is not None else ())
                       + (PROBE_METRICS if probe is not None else ()))
        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in _ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {_ALL_METRICS}")
        expensive = [m for m in metrics if m in EXPENSIVE_METRICS]
        if expensive and loader is None:
            raise ValueError(f"metrics {expensive} need a loader")
        probed = [m for m in metrics if m in PROBE_METRICS]
        if probed and probe is None:
            raise ValueError(f"metrics {probed} need a probe batch (MetricTracker(probe=...))")
        if loader is not None:
            check_reiterable(loader, "MetricTracker reads it at every epoch's end")
        gamma_threshold = check_float("gamma_threshold", gamma_threshold, min=0)
        activation_threshold = check_float("activation_threshold", activation_threshold, min=0)
        if max_batches is not None:
            max_batches = check_int("max_batches", max_batches, min=1)

        self.model = model
        self.every_n_steps = every_n_steps
        self.metrics = metrics
        self.loader = loader
        self.gamma_threshold = gamma_threshold
        self.activation_threshold = activation_threshold
        self.max_batches = max_batches
        self.probe = probe.detach() if probe is not None else None
        self._last_probe: dict[str, torch.Tensor] = {}  # layer -> its last probe selection
        self.pairs: list[tuple[str, str]] = []
        if any(m in _SPARSITY_METRICS for m in metrics):
            if input_size is not None:
                self.pairs = bn_relu_pairs(model, input_size=input_size)
            elif loader is not None:
                self.pairs = bn_relu_pairs(model, first_inputs(loader))
            else:
                self.pairs = bn_relu_pairs(model)
        self._rows: list[dict] = []
        self._frame: pd.DataFrame | None = None
        self._last_cheap: tuple[int, int] | None = None  # (step, epoch) of the last cheap snapshot

    # ---- the callback protocol ------------------------------------------------------------

    def on_step(self, step: int, epoch: int, logs: dict | None = None) -> None:
        """After an optimizer step: snapshot the cheap metrics every ``every_n_steps`` steps,
        and log the step's ``loss`` and ``k_frac`` from ``logs`` (the Trainer's) if tracked."""
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            self.snapshot(step, epoch)
        if logs is not None:
            add = self._adder(step, epoch)
            for metric in STEP_METRICS:
                if metric in self.metrics and metric in logs:
                    add("", metric, logs[metric])

    def epoch_end(self, epoch: int, step: int) -> None:
        """After an epoch: cheap metrics (unless already taken at this step), expensive ones,
        probe ones."""
        if self._last_cheap != (step, epoch):
            self.snapshot(step, epoch)
        if self.loader is not None and any(m in EXPENSIVE_METRICS for m in self.metrics):
            self._snapshot_expensive(step, epoch)
        if self.probe is not None:
            self.snapshot_probe(step, epoch)

    # ---- the dgclab.train.Trainer callback protocol (epochs there count from 1) ----------------

    def on_train_begin(self, trainer) -> None:
        """Probe the starting point: the initialisation (rows at epoch 0), or, for a resumed
        run, the checkpoint's weights, silently, so that the next churn compares with them."""
        if self.probe is not None:
            epoch = trainer.epoch
            self.snapshot_probe(epoch * trainer.steps_per_epoch, epoch, emit=epoch == 0)

    def on_step_end(self, trainer, step: int, epoch: int, logs: dict) -> None:
        self.on_step(step, epoch, logs)

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        self.epoch_end(epoch, int(row["step"]))

    def snapshot(self, step: int, epoch: int, expensive: bool = False) -> None:
        """Append the cheap metrics now (and the expensive ones with ``expensive=True``)."""
        add = self._adder(step, epoch)
        if any(m in self.metrics for m in ("inactive_channels", "kept_channels", "head_jaccard")):
            for name, layer in dgc_layers(self.model):
                if "inactive_channels" in self.metrics:
                    add(name, "inactive_channels", layer.inactive_channels)
                sel = layer.last_selection  # (B, heads, C_in) or None
                if sel is None:
                    continue
                sel = sel.detach()
                if "kept_channels" in self.metrics:
                    add(name, "kept_channels", sel.sum(-1).double().mean().item())
                if "head_jaccard" in self.metrics and layer.heads > 1:
                    jac = head_jaccard(sel)  # (B, heads, heads)
                    a, b = torch.triu_indices(layer.heads, layer.heads, 1, device=sel.device)
                    add(name, "head_jaccard", jac[:, a, b].double().mean().item())
        if "dead_gamma" in self.metrics:
            modules = dict(self.model.named_modules())
            for bn_name, _ in self.pairs:
                bn = modules[bn_name]
                dead = 0.0 if bn.weight is None else (
                    (bn.weight.detach().abs() < self.gamma_threshold).double().mean().item()
                )
                add(bn_name, "dead_gamma", dead)
        self._last_cheap = (step, epoch)
        if expensive:
            self._snapshot_expensive(step, epoch)

    def snapshot_probe(self, step: int, epoch: int, emit: bool = True) -> None:
        """Forward the probe and append the probe metrics of every DGC layer (with
        ``emit=False`` only remember its selections for the next ``selection_churn``)."""
        if self.probe is None:
            raise ValueError("probe metrics need a probe batch (MetricTracker(probe=...))")
        layers = dgc_layers(self.model)
        if not layers:
            return
        device = next(self.model.parameters()).device
        sel: dict[str, list] = {name: [] for name, _ in layers}
        sal: dict[str, list] = {name: [] for name, _ in layers}
        with torch.no_grad(), eval_mode(self.model), paused():
            for chunk in self.probe.split(_PROBE_BATCH):
                self.model(chunk.to(device))
                for name, layer in layers:
                    sel[name].append(layer.last_selection.cpu())  # (B, heads, C_in)
                    sal[name].append(layer.last_saliency.cpu())
        add = self._adder(step, epoch)
        for name, layer in layers:
            selection, saliency = torch.cat(sel[name]), torch.cat(sal[name])  # (N, heads, C_in)
            previous = self._last_probe.get(name)
            self._last_probe[name] = selection
            if not emit:
                continue
            if "selection_churn" in self.metrics and previous is not None:
                add(name, "selection_churn", selection_churn(previous, selection).mean().item())
            stats = saliency_stats(saliency, selection)
            for metric, key in (("saliency_zero", "zero"), ("kept_zero", "kept_zero"),
                                ("saliency_spread", "spread")):
                if metric in self.metrics:
                    add(name, metric, stats[key])
            if layer.heads > 1 and {"probe_head_jaccard", "chance_head_jaccard"} & set(self.metrics):
                a, b = torch.triu_indices(layer.heads, layer.heads, 1)
                if "probe_head_jaccard" in self.metrics:
                    pairs = head_jaccard(selection)[:, a, b]  # (N, head pairs)
                    add(name, "probe_head_jaccard", pairs.double().mean().item())
                if "chance_head_jaccard" in self.metrics:
                    sizes = selection.sum(-1).numpy()  # (N, heads)
                    chance = [_mean_chance(sizes[:, i], sizes[:, j], layer.in_channels)
                              for i, j in zip(a.tolist(), b.tolist())]
                    add(name, "chance_head_jaccard", float(np.mean(chance)))

    # ---- results ----------------------------------------------------------------------------

    @property
    def frame(self) -> pd.DataFrame:
        """Every snapshot so far: columns ``step``, ``epoch`` (int64), ``layer``, ``metric``
        (str), ``value`` (float64), in the order taken."""
        if self._frame is None:
            frame = pd.DataFrame(self._rows, columns=COLUMNS)
            self._frame = frame.astype(
                {"step": "int64", "epoch": "int64", "layer": object, "metric": object,
                 "value": "float64"}
            )
        return self._frame

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (
            f"MetricTracker(every_n_steps={self.every_n_steps}, metrics={self.metrics}, "
            f"{len(self._rows)} rows)"
        )

    # ---- helpers ----------------------------------------------------------------------------

    def _adder(self, step: int, epoch: int):
        def add(layer: str, metric: str, value) -> None:
            self._rows.append(
                {"step": int(step), "epoch": int(epoch), "layer": layer, "metric": metric,
                 "value": float(value)}
            )
            self._frame = None

        return add

    def _snapshot_expensive(self, step: int, epoch: int) -> None:
        if self.loader is None:
            raise ValueError("expensive metrics need a loader (MetricTracker(loader=...))")
        wanted = [m for m in self.metrics if m in EXPENSIVE_METRICS]
        if not wanted:
            return
        table = filter_sparsity(
            self.model,
            self.loader,
            self.gamma_threshold,
            self.activation_threshold,
            pairs=self.pairs,
            selectivity="selectivity" in wanted,
            max_batches=self.max_batches,
        )
        add = self._adder(step, epoch)
        for row in table.itertuples(index=False):
            if "dead_activation" in wanted:
                add(row.layer, "dead_activation", row.dead_activation / row.filters)
            if "selectivity" in wanted:
                add(row.layer, "selectivity", row.selectivity)
