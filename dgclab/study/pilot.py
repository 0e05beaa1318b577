"""The sparsity study's pilot: how long must Adam + coupled L2 train before BasicNet filters die?

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495. At the study's default budget (10,000 Fashion-MNIST images x 8
epochs, ~1,250 steps per arm) no BasicNet filter died in any arm (README, "Implicit filter
sparsity"). A filter dies under coupled L2 only after it has stopped receiving gradient *and*
then ~1/lr Adam steps have pulled its weights to zero (notebook 06), so the study needs a longer
budget, and this pilot measures which one (SPEC §7: "the study's budget is set by a documented
pilot").

The pilot trains one arm alone, the study's ``basicnet-adam-l2-5e-4`` (``torch.optim.Adam``,
``weight_decay=5e-4`` coupled into the gradient, lr 1e-3 with a per-iteration cosine to 0,
batch 64, random crops and flips), with two changes that favour sparsity (SPEC §7: narrower nets
and more steps are sparser):

* the FULL training set (Fashion-MNIST: 60,000 images, 938 steps per epoch);
* a BasicNet of half the widths, ``PILOT_WIDTHS`` = 16-32-32-64-64-128-128 (464 BN-ReLU
  filters). ``TrainConfig`` has no widths field, so the model is built here and handed to the
  ``Trainer``; the widths are pinned in the pilot's own ``pilot.json`` (``config.json`` says
  ``model="basicnet"``, whose ``width`` field does not apply to BasicNet).

After EVERY epoch (a ``Trainer`` callback, ``on_epoch_end``) it counts dead filters by both of
SPEC §7's rules, ``|gamma_BN| < 1e-3`` and max ReLU output < 1e-12 over the training set (one
pass, in eval mode, without augmentation; ``activation_images`` restricts it to a fixed seeded
subset), and writes, atomically:

================  ==========================================================================
``pilot.json``    what the run is: arm, dataset, widths, max_epochs, activation images, seed
``pilot.csv``     one row per finished epoch (``PILOT_COLUMNS``, then ``dead_gamma.<bn>`` and
                  ``dead_activation.<bn>`` per BN-ReLU layer)
``filters.csv``   one row per (epoch, filter): ``gamma`` (|gamma|) and ``max_activation``
================  ==========================================================================

next to the ``Trainer``'s own run folder files (``config.json``, ``metrics.csv``,
``checkpoint.pt``).

When it stops (``stop_reason``; checked after every epoch, and before training on a resumed
run):

* ``max_epochs`` epochs are done. ``max_epochs`` is ``TrainConfig.epochs``, so it is also the
  horizon of the cosine: a pilot stopped earlier stops at a learning rate above 0;
* the dead count stopped rising: some filter is dead and, for ``patience`` epochs, neither
  rule's count has gone above its earlier maximum (``patience=None``: never stop on that);
* the CPU-time cap: another epoch, at the cost of the last one, would take the run's total CPU
  time (``time.process_time`` of the finished epochs, over all invocations) past
  ``max_minutes``. CPU time, not wall time, because the pilot runs niced on a shared machine
  and the study's budgets are stated in CPU-minutes.

Resuming: the pilot folder is a ``Trainer`` run folder opened with ``resume=True``. A run
killed at any moment (even ``kill -9``) continues from its last checkpointed epoch; rows of
epochs past the checkpoint are dropped, and when the kill came after the checkpoint but before
the epoch's row was written, that row is measured again from the checkpoint's model before
training goes on. ``pilot.csv`` and ``filters.csv`` are rewritten whole, one row (set) per
epoch, so they never hold an epoch twice. The stopping rules are not pinned: run again with a
larger ``max_minutes`` or ``patience`` to go on; a different ``max_epochs`` is refused (it
changes the learning-rate schedule).

Command line (``main``)::

    python -m dgclab.study.pilot --out runs/pilot-adam-l2 [--data-root data] [--max-epochs N]
        [--max-minutes M] [--threads T] [--no-progress]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from .._atomic import atomic_write_csv
from ..checks import check_type
from ..analysis import filter_sparsity
from ..data import dataset_info, load_dataset
from ..models.basicnet import BASICNET_HALF_WIDTHS, basicnet
from ..train import Trainer
from .folder import pin_settings
from .grid import ACTIVATION_THRESHOLD, ANALYSIS_BATCH, GAMMA_THRESHOLD, GRID, STUDY_DATASETS

__all__ = [
    "PILOT_ARM",
    "PILOT_COLUMNS",
    "PILOT_WIDTHS",
    "PILOT_MAX_EPOCHS",
    "PILOT_MAX_MINUTES",
    "PILOT_PATIENCE",
    "run_pilot",
    "stop_reason",
    "main",
]

PILOT_ARM = "basicnet-adam-l2-5e-4"  # the GRID arm that should show sparsity
PILOT_WIDTHS = BASICNET_HALF_WIDTHS  # 16-32-32-64-64-128-128
PILOT_MAX_EPOCHS = 30  # the cosine's horizon: about what fits in the CPU cap (PILOT.md)
PILOT_MAX_MINUTES = 90.0  # CPU-minutes over all invocations
PILOT_PATIENCE = 5  # epochs without a new dead filter (once one is dead) before stopping

PILOT_JSON, PILOT_CSV, FILTERS_CSV = "pilot.json", "pilot.csv", "filters.csv"
PILOT_COLUMNS = [
    "epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
    "filters", "dead_gamma", "dead_activation",  # counts over all BN-ReLU filters
    "gamma_min", "gamma_median",  # of |gamma| over all filters: how close to the 1e-3 rule
    "activation_min",  # the smallest per-filter max ReLU output: how close to the 1e-12 rule
    "train_seconds",  # wall: the Trainer's epoch (training + test evaluation)
    "analysis_seconds",  # wall: the dead-filter measurement (one pass over the images)
    "cpu_seconds",  # CPU time of the whole epoch (see _PilotLog)
    "cpu_minutes_total",  # CPU time of every finished epoch so far
]
FILTER_COLUMNS = ["epoch", "layer", "filter", "gamma", "max_activation", "dead_gamma",
                  "dead_activation"]


class StopPilot(Exception):
    """Raised from ``on_epoch_end`` to end ``Trainer.fit`` once a stopping rule holds (the
    epoch's checkpoint and rows are written by then)."""


def stop_reason(table: pd.DataFrame, max_epochs: int, max_minutes: float | None,
                patience: int | None) -> str | None:
    """Why the pilot should stop after the last row of ``table``, or None to go on.

    Args:
        table: ``pilot.csv`` (one row per epoch, in order).
        max_epochs: the run's number of epochs.
        max_minutes: CPU-minute cap over all finished epochs (None: no cap).
        patience: stop when some filter is dead and no rule's dead count has risen above its
            earlier maximum for this many epochs (None or 0: never stop on that).

    Returns:
        A sentence, or None.

    Example:
        >>> t = pd.DataFrame({"epoch": [1, 2, 3], "dead_gamma": [0, 2, 2],
        ...                   "dead_activation": [0, 1, 1], "cpu_seconds": [60.0] * 3,
        ...                   "cpu_minutes_total": [1.0, 2.0, 3.0]})
        >>> stop_reason(t, max_epochs=10, max_minutes=None, patience=1)
        'dead counts stopped rising: none above its maximum since epoch 2 (1 epochs of patience)'
    """
    check_type("table", table, pd.DataFrame)
    if table.empty:
        return None
    last = table.iloc[-1]
    epoch = int(last["epoch"])
    if epoch >= max_epochs:
        return f"reached max_epochs={max_epochs}"
    if max_minutes is not None:
        total, next_epoch = float(last["cpu_minutes_total"]), float(last["cpu_seconds"]) / 60
        if total + next_epoch > max_minutes:
            return (f"CPU cap: {total:.1f} CPU-minutes used; another epoch (~{next_epoch:.1f}) "
                    f"would pass max_minutes={max_minutes:g}")
    if patience:
        rises = []  # per rule with a dead filter: the epoch its count last rose to a new maximum
        for rule in ("dead_gamma", "dead_activation"):
            counts = table[rule].to_numpy()
            if counts.max() > 0:
                rises.append(int(table["epoch"].iloc[int(np.argmax(counts))]))
        if rises and epoch - max(rises) >= patience:
            return (f"dead counts stopped rising: none above its maximum since epoch "
                    f"{max(rises)} ({patience} epochs of patience)")
    return None


def run_pilot(
    out: str | os.PathLike,
    *,
    dataset: str = "fashion-mnist",
    data_root: str = "data",
    subset: int | None = None,
    max_epochs: int = PILOT_MAX_EPOCHS,
    max_minutes: float | None = PILOT_MAX_MINUTES,
    patience: int | None = PILOT_PATIENCE,
    widths: Sequence[int] = PILOT_WIDTHS,
    activation_images: int | None = None,
    seed: int = 0,
    device: str = "auto",
    download: bool = True,
    progress: bool = True,
    callbacks: Sequence = (),
    log: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Train (or resume) the pilot in ``out`` until a stopping rule holds; see the module
    docstring.

    Args:
        out: the pilot folder (a ``Trainer`` run folder, created).
        dataset: one of ``dgclab.study.STUDY_DATASETS``.
        data_root, download, device: as in ``TrainConfig``.
        subset: training images (and at most as many test images); None: all of them.
        max_epochs: epochs at most, and the horizon of the cosine learning rate.
        max_minutes: CPU-minute cap over all invocations (None: none).
        patience: epochs without a new dead filter, once one is dead, before stopping (None or
            0: never stop on that).
        widths: the BasicNet's conv widths.
        activation_images: measure the activation rule on this many training images (a fixed
            seeded subset, sorted) instead of all of them.
        seed: model init, data order and augmentation.
        progress: tqdm bars while training and measuring.
        callbacks: more ``Trainer`` callbacks, called after the pilot's own.
        log: receives one line per epoch and a last line saying why the pilot stopped; None:
            silent.

    Returns:
        ``pilot.csv`` as a DataFrame (one row per finished epoch).

    Raises:
        ValueError: a bad argument, or ``out`` holds a pilot with other settings.

    Example:
        >>> table = run_pilot("runs/pilot-test", dataset="synthetic", subset=64,
        ...                   max_epochs=2)  # doctest: +SKIP
        >>> table[["epoch", "test_acc", "dead_gamma", "dead_activation"]]  # doctest: +SKIP
    """
    say = log or (lambda line: None)
    if dataset not in STUDY_DATASETS:
        raise ValueError(f"dataset must be one of {STUDY_DATASETS}, got dataset={dataset!r}")
    for name, value in (("max_epochs", max_epochs), ("subset", subset),
                        ("activation_images", activation_images)):
        if value is not None and (not _is_int(value) or value <= 0):
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be > 0 or None, got max_minutes={max_minutes!r}")
    if patience is not None and (not _is_int(patience) or patience < 0):
        raise ValueError(f"patience must be an int >= 0 or None, got patience={patience!r}")
    widths = tuple(widths)

    out = Path(out)
    arm = next(a for a in GRID if a.name == PILOT_ARM)
    config = arm.train_config(dataset, subset, max_epochs, seed, data_root, device, download)
    info = dataset_info(dataset, data_root)
    torch.manual_seed(seed)
    model = basicnet(info.in_channels, info.num_classes, widths=widths)  # checks the widths
    settings = {"arm": arm.name, "dataset": dataset, "subset": subset, "widths": list(widths),
                "max_epochs": max_epochs, "activation_images": activation_images, "seed": seed}
    pin_settings(out / PILOT_JSON, settings, "pilot")

    logger = _PilotLog(out, max_epochs, max_minutes, patience, progress, say)
    trainer = Trainer(config, out, resume=True, callbacks=[logger, *callbacks],
                      progress=progress, model=model)
    train_set, _, _ = load_dataset(dataset, data_root, subset, seed, download=download,
                                   augment=False)
    if activation_images is not None and activation_images < len(train_set):
        pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))
        train_set = Subset(train_set, pick[:activation_images].sort().values.tolist())
    logger.loader = DataLoader(train_set, ANALYSIS_BATCH, shuffle=False)

    say(f"pilot in {out}: {arm.name}, BasicNet widths {'-'.join(map(str, widths))}, {dataset} "
        f"({len(trainer.train_set)} training images, {trainer.steps_per_epoch} steps/epoch), "
        f"activation rule over {len(train_set)} images; up to {max_epochs} epochs"
        + (f" or {max_minutes:g} CPU-minutes" if max_minutes is not None else "")
        + (f", patience {patience}" if patience else ""))
    table = logger.recover(trainer)
    reason = stop_reason(table, max_epochs, max_minutes, patience)
    if reason is None:
        try:
            trainer.fit()
        except StopPilot as stop:
            reason = str(stop)
    reason = reason or stop_reason(logger.table, max_epochs, max_minutes, patience)
    say(f"pilot stopped after epoch {trainer.epoch}: {reason}")
    return logger.table


class _PilotLog:
    """The pilot's ``Trainer`` callback: measure dead filters after every epoch, write the
    tables, print a line, and raise ``StopPilot`` when a stopping rule holds.

    CPU time of an epoch: ``time.process_time()`` from the end of the previous epoch's
    callback (or ``on_train_begin``) to the end of this epoch's measurement, i.e. training, test
    evaluation and measurement. For an epoch whose row is measured again after a kill, the CPU
    time of its training is lost with the killed process: its wall time (``train_seconds``)
    stands in.
    """

    def __init__(self, out: Path, max_epochs: int, max_minutes: float | None,
                 patience: int | None, progress: bool, say: Callable[[str], None]) -> None:
        self.out = out
        self.max_epochs = max_epochs
        self.max_minutes = max_minutes
        self.patience = patience
        self.progress = progress
        self.say = say
        self.loader: DataLoader | None = None
        self.table = pd.DataFrame(columns=PILOT_COLUMNS)
        self.filters = pd.DataFrame(columns=FILTER_COLUMNS)
        self._cpu_mark = time.process_time()

    # ---- resuming ----------------------------------------------------------------------------

    def recover(self, trainer: Trainer) -> pd.DataFrame:
        """Read the tables of a resumed pilot, keep the epochs its checkpoint has, and measure
        the checkpointed epoch again if its row was never written."""
        table = _read(self.out / PILOT_CSV, PILOT_COLUMNS)
        filters = _read(self.out / FILTERS_CSV, FILTER_COLUMNS)
        if not table.empty:
            table = table[table["epoch"] <= trainer.epoch]
            table = table.drop_duplicates("epoch", keep="last").sort_values("epoch")
            filters = filters[filters["epoch"].isin(table["epoch"])]
        self.table, self.filters = table.reset_index(drop=True), filters.reset_index(drop=True)
        done = set(self.table["epoch"].astype(int))
        missing = [e for e in range(1, trainer.epoch) if e not in done]
        if missing:
            self.say(f"epochs {missing} have no rows in {PILOT_CSV} and their models are gone; "
                     "they stay missing")
        if trainer.epoch and trainer.epoch not in done:
            row = trainer.history[-1]
            self._cpu_mark = time.process_time() - float(row["epoch_seconds"])
            self._measure(trainer, trainer.epoch, row)
        elif trainer.epoch:
            self.say(f"resuming after epoch {trainer.epoch}")
        return self.table

    # ---- Trainer callbacks -------------------------------------------------------------------

    def on_train_begin(self, trainer: Trainer) -> None:
        self._cpu_mark = time.process_time()

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        self._measure(trainer, epoch, row)
        reason = stop_reason(self.table, self.max_epochs, self.max_minutes, self.patience)
        if reason is not None and epoch < self.max_epochs:
            raise StopPilot(reason)

    # ---- one epoch ---------------------------------------------------------------------------

    def _measure(self, trainer: Trainer, epoch: int, row: dict) -> None:
        start = time.perf_counter()
        # Iterating a DataLoader draws from torch's global RNG, which the checkpoint (saved
        # before this callback) holds: leave it untouched, so that a resumed run, which does not
        # measure this epoch again, trains the next epoch on the same augmentation draws.
        rng = torch.get_rng_state()
        try:
            per_filter = filter_sparsity(trainer.model, self.loader, GAMMA_THRESHOLD,
                                         ACTIVATION_THRESHOLD, selectivity=False,
                                         per_filter=True, progress=self.progress or None)
        finally:
            torch.set_rng_state(rng)
        analysis = time.perf_counter() - start
        cpu = time.process_time() - self._cpu_mark
        previous = self.table.loc[self.table["epoch"] < epoch, "cpu_seconds"].sum()

        result = {
            "epoch": epoch, "step": row["step"], "lr": row["lr"],
            "train_loss": row["train_loss"], "train_acc": row["train_acc"],
            "test_loss": row["test_loss"], "test_acc": row["test_acc"],
            "filters": len(per_filter),
            "dead_gamma": int(per_filter["dead_gamma"].sum()),
            "dead_activation": int(per_filter["dead_activation"].sum()),
            "gamma_min": float(per_filter["gamma"].min()),
            "gamma_median": float(per_filter["gamma"].median()),
            "activation_min": float(per_filter["max_activation"].min()),
            "train_seconds": row["epoch_seconds"], "analysis_seconds": analysis,
            "cpu_seconds": cpu, "cpu_minutes_total": (previous + cpu) / 60,
        }
        names = _short_names(list(dict.fromkeys(per_filter["layer"])))
        for rule in ("dead_gamma", "dead_activation"):
            counts = per_filter.groupby("layer", sort=False)[rule].sum()
            for layer, short in names.items():
                result[f"{rule}.{short}"] = int(counts[layer])

        filters = per_filter.assign(epoch=epoch)[FILTER_COLUMNS]
        self.table = _replace_epoch(self.table, pd.DataFrame([result]), epoch)
        self.filters = _replace_epoch(self.filters, filters, epoch)
        atomic_write_csv(self.out / FILTERS_CSV, self.filters)  # pilot.csv last: it says "done"
        atomic_write_csv(self.out / PILOT_CSV, self.table)
        total = result["filters"]
        self.say(
            f"epoch {epoch}/{self.max_epochs} step {result['step']}: train loss "
            f"{result['train_loss']:.4f}, test acc {result['test_acc']:.4f}, dead "
            f"{result['dead_gamma']}/{total} by |gamma|, {result['dead_activation']}/{total} by "
            f"activation, min |gamma| {result['gamma_min']:.3g}; {cpu / 60:.1f} CPU-min "
            f"(total {result['cpu_minutes_total']:.1f}; measuring {analysis:.0f} s wall)"
        )
        self._cpu_mark = time.process_time()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _short_names(layers: list[str]) -> dict[str, str]:
    """BN names for column headers: the last component (``features.bn3`` -> ``bn3``) when
    that is unambiguous, else the full names."""
    short = [name.rpartition(".")[2] for name in layers]
    if len(set(short)) < len(short):
        short = layers
    return dict(zip(layers, short))


def _replace_epoch(table: pd.DataFrame, rows: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """``table`` with its rows of ``epoch`` replaced by ``rows``, sorted by epoch."""
    kept = table[table["epoch"] != epoch] if not table.empty else None
    merged = pd.concat([kept, rows], ignore_index=True) if kept is not None and len(kept) else rows
    return merged.sort_values("epoch", kind="stable").reset_index(drop=True)


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dgclab.study.pilot",
        description="The sparsity study's pilot: Adam + coupled L2 (lambda 5e-4) on a "
                    "half-width BasicNet over the full training set, dead filters counted by "
                    "both SPEC §7 rules after every epoch. Resumable: run the same command "
                    "again to continue a killed pilot.",
    )
    p.add_argument("--out", required=True, help="pilot folder, e.g. runs/pilot-adam-l2")
    p.add_argument("--data-root", default="data", help="where datasets live (default: data)")
    p.add_argument("--dataset", default="fashion-mnist", choices=STUDY_DATASETS)
    p.add_argument("--subset", type=int, default=None,
                   help="training images (default: the whole training set)")
    p.add_argument("--max-epochs", type=int, default=PILOT_MAX_EPOCHS,
                   help=f"epochs at most; also the cosine's horizon (default {PILOT_MAX_EPOCHS})")
    p.add_argument("--max-minutes", type=float, default=PILOT_MAX_MINUTES,
                   help="CPU-minute cap over all invocations; 0: none "
                        f"(default {PILOT_MAX_MINUTES:g})")
    p.add_argument("--patience", type=int, default=PILOT_PATIENCE,
                   help="stop after this many epochs without a new dead filter, once one is "
                        f"dead; 0: never (default {PILOT_PATIENCE})")
    p.add_argument("--activation-images", type=int, default=None,
                   help="measure the activation rule on this many training images (a fixed "
                        "seeded subset; default: all of them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice); 1 on a shared machine")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dgclab.study.pilot``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        if args.threads <= 0:
            raise SystemExit(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(args.threads)
        except RuntimeError:  # only possible before any parallel work; harmless if too late
            pass
    try:
        run_pilot(args.out, dataset=args.dataset, data_root=args.data_root, subset=args.subset,
                  max_epochs=args.max_epochs, max_minutes=args.max_minutes or None,
                  patience=args.patience or None, activation_images=args.activation_images,
                  seed=args.seed, device=args.device, progress=not args.no_progress,
                  log=lambda line: print(line, flush=True))
    except ValueError as err:
        print(f"error: {err}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
