"""The implicit filter sparsity study: Mehta et al. reproduced, and extended to DGC (SPEC §7).

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495, found that a CNN with BN-ReLU features trained with Adam and a
coupled L2 penalty (``torch.optim.Adam(weight_decay=lambda)``) ends with many dead filters,
while decoupled weight decay (AdamW), SGD + L2 and no regularisation leave almost none. Their
exact grid was not retrievable; **this is dgclab's own grid** (SPEC §7), ``GRID``:

=========================  ==========  =========  ============  ======  =======  =====
arm                        model       optimizer  regularis.    lambda  lr       batch
=========================  ==========  =========  ============  ======  =======  =====
basicnet-adam-l2-{lam}     basicnet    adam       l2 (coupled)  5e-4,   1e-3     64
                                                                1e-4
basicnet-adamw-{lam}       basicnet    adamw      decoupled     same    1e-3     64
basicnet-sgd-l2-{lam}      basicnet    sgd        l2            same    0.05     64
basicnet-adam-none         basicnet    adam       none          0       1e-3     64
basicnet-adam-l2-5e-4-b256 basicnet    adam       l2 (coupled)  5e-4    1e-3     256
dgc-adam-l2-5e-4           resnet8-dgc adam       l2 (coupled)  5e-4    1e-3     64
dgc-adamw-5e-4             resnet8-dgc adamw      decoupled     5e-4    1e-3     64
dgc-sgd-l2-5e-4            resnet8-dgc sgd        l2            5e-4    0.05     64
dgc-adam-none              resnet8-dgc adam       none          0       1e-3     64
=========================  ==========  =========  ============  ======  =======  =====

* ``basicnet``: ``dgclab.models.basicnet`` (7 conv3x3-BN-ReLU, 32-64-64-128-128-256-256, max
  pool after layers 2, 4, 6, global pool, linear).
* ``resnet8-dgc``: ``resnet_cifar(8, width=16, conv="dgc", heads=4, pruning_rate=0.75)``, the
  DGC ResNet of dgclab (stages 16-32-64); with the DGC saliency lasso (1e-5) of the DGC recipe,
  which is not a weight regularisation and is the same in every DGC arm. Only the lambda = 5e-4
  row, to keep the grid's cost down.
* The batch-size variation is the arm that should show sparsity (Adam + L2, lambda = 5e-4) at
  batch 256, with the same epochs and learning rate (so 4x fewer steps), as Mehta et al.
  compare batch sizes.
* Every arm: ``dgclab.train.Trainer``: the SGD arms are Nesterov SGD with momentum 0.9; every
  arm's learning rate follows a per-iteration cosine to 0 without warm-up; random crops (and
  flips on CIFAR) on the training set.

Budget: ``BUDGETS`` gives a default training subset and number of epochs per dataset, chosen so
that one BasicNet arm takes about 10 CPU-minutes on one core of a loaded 2-core machine
(measured: about 240 training and 580 evaluation images/s; Fashion-MNIST 10,000 images x 8
epochs, ~9 min; a DGC arm takes about 1.3x as long). ``full=True`` trains on the full training
set instead.

Each (arm, seed) is an ordinary run folder ``out/<arm>-seed<k>`` (``--resume`` semantics: a
killed run continues from its last epoch). After training, over the training set without
augmentation:

* ``filter_sparsity`` per filter -> ``out/<arm>-seed<k>/filters.csv`` and, per BN-ReLU layer,
  tidy rows in ``out/sparsity.csv``;
* BasicNet arms: ``remove_dead_filters`` (|gamma| < 1e-3) and its measured effect on the test
  set -> ``out/pruning.csv``;
* DGC arms: a ``Recorder`` over the training set (``out/<arm>-seed<k>/train_recording.npz``),
  and how often the heads select input channels that are dead -> ``out/dgc_selection.csv``
  (``selection_by_status``).

An (arm, seed) is finished when its ``metrics.csv`` has every epoch and its rows are in
``sparsity.csv`` (written last); a second invocation skips it. ``out/study.json`` pins the
dataset, subset and epochs of a study folder. Figures (PNG) and ``summary.csv`` are rebuilt at
the end of every invocation. One process per study folder at a time.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from .._atomic import atomic_write_bytes, atomic_write_text
from ..analysis import filter_sparsity, pruning_effect, remove_dead_filters
from ..data import load_dataset
from ..layers import dgc_layers
from ..record import Recorder
from ..train import TrainConfig, Trainer

__all__ = [
    "Arm",
    "BUDGETS",
    "GRID",
    "STUDY_DATASETS",
    "StudyResult",
    "format_report",
    "load_study",
    "orderings",
    "publish_study",
    "refresh_study",
    "run_sparsity_study",
    "select_arms",
    "selection_by_status",
    "summarize",
    "write_figures",
]

STUDY_DATASETS = ("fashion-mnist", "cifar10", "synthetic")
# dataset -> (training images, epochs): about 10 CPU-minutes per BasicNet arm (module docstring).
BUDGETS = {"fashion-mnist": (10_000, 8), "cifar10": (8_000, 8), "synthetic": (2_000, 8)}
GAMMA_THRESHOLD = 1e-3  # the authors' pruning rule (SPEC §7)
ACTIVATION_THRESHOLD = 1e-12  # dead: max ReLU output over the training set below this
ANALYSIS_BATCH = 256

# model label -> TrainConfig fields
MODELS = {
    "basicnet": dict(model="basicnet", conv="dense"),  # conv: for config.json only
    "resnet8-dgc": dict(model="resnet8", width=16, conv="dgc", heads=4, pruning_rate=0.75),
}

SPARSITY_CSV, PRUNING_CSV, SELECTION_CSV = "sparsity.csv", "pruning.csv", "dgc_selection.csv"
FILTERS_CSV = "filters.csv"  # per filter; also each run folder's own
TRAINING_CSV, SUMMARY_CSV, STUDY_JSON = "training.csv", "summary.csv", "study.json"
ARM_COLUMNS = ["arm", "model", "optimizer", "regularisation", "lambda", "lr", "batch_size", "seed"]
SPARSITY_COLUMNS = ARM_COLUMNS + [
    "layer", "filters", "dead_gamma", "dead_activation", "selectivity", "test_acc",
]
STATUSES = ("zero", "constant", "live")  # of a DGC layer's input channel (selection_by_status)


@dataclass(frozen=True)
class Arm:
    """One cell of the grid: a model trained by one optimizer with one regularisation."""

    name: str  # run folder prefix and the ``arm`` column
    model: str  # a key of MODELS
    optimizer: str  # "adam" | "adamw" | "sgd" (dgclab.train.build_optimizer)
    regularisation: str  # "l2" (coupled: in the gradient) | "decoupled" | "none"
    lam: float  # lambda, the optimizer's weight_decay (0 for "none")
    lr: float  # peak learning rate (cosine to 0)
    batch_size: int = 64

    def train_config(self, dataset: str, subset: int | None, epochs: int, seed: int,
                     data_root: str = "data", device: str = "auto",
                     download: bool = True) -> TrainConfig:
        """The ``TrainConfig`` of this arm for one seed."""
        return TrainConfig(
            **MODELS[self.model], dataset=dataset, data_root=data_root, subset=subset,
            epochs=epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
            momentum=0.9, weight_decay=self.lam, seed=seed, device=device, download=download,
        ).validate()

    def columns(self, seed: int) -> dict:
        """The arm's identifying columns in every table of the study."""
        return {"arm": self.name, "model": self.model, "optimizer": self.optimizer,
                "regularisation": self.regularisation, "lambda": self.lam, "lr": self.lr,
                "batch_size": self.batch_size, "seed": seed}


def _grid() -> tuple[Arm, ...]:
    arms = []
    for lam, tag in ((5e-4, "5e-4"), (1e-4, "1e-4")):
        arms += [
            Arm(f"basicnet-adam-l2-{tag}", "basicnet", "adam", "l2", lam, 1e-3),
            Arm(f"basicnet-adamw-{tag}", "basicnet", "adamw", "decoupled", lam, 1e-3),
            Arm(f"basicnet-sgd-l2-{tag}", "basicnet", "sgd", "l2", lam, 0.05),
        ]
    arms += [
        Arm("basicnet-adam-none", "basicnet", "adam", "none", 0.0, 1e-3),
        Arm("basicnet-adam-l2-5e-4-b256", "basicnet", "adam", "l2", 5e-4, 1e-3, batch_size=256),
        Arm("dgc-adam-l2-5e-4", "resnet8-dgc", "adam", "l2", 5e-4, 1e-3),
        Arm("dgc-adamw-5e-4", "resnet8-dgc", "adamw", "decoupled", 5e-4, 1e-3),
        Arm("dgc-sgd-l2-5e-4", "resnet8-dgc", "sgd", "l2", 5e-4, 0.05),
        Arm("dgc-adam-none", "resnet8-dgc", "adam", "none", 0.0, 1e-3),
    ]
    return tuple(arms)


GRID: tuple[Arm, ...] = _grid()


@dataclass
class StudyResult:
    """The tables of a study folder (``run_sparsity_study`` returns it, ``load_study`` reads it).

    Attributes:
        out: the study folder.
        sparsity: per (arm, seed, BN-ReLU layer): ``filters``, ``dead_gamma``,
            ``dead_activation`` (counts), ``selectivity`` (mean over live filters),
            ``test_acc``, and the arm columns ``arm, model, optimizer, regularisation, lambda,
            lr, batch_size, seed``.
        pruning: per BasicNet (arm, seed): ``remove_dead_filters`` and ``pruning_effect``.
        dgc_selection: per DGC (arm, seed, layer, status): ``selection_by_status``.
        training: per (arm, seed, epoch): ``test_acc``, ``dead_filters`` (|gamma| rule) and
            ``dead_fraction`` from the runs' ``metrics.csv``.
        summary: per arm, ``summarize(sparsity)``.
        filters: per (arm, seed, BN-ReLU filter): ``model``, ``layer``, ``filter``, ``gamma``,
            ``max_activation``, ``selectivity`` and the two dead flags, from the runs'
            ``filters.csv`` (the distribution behind the counts: how close to dead).
        figures: the PNG files written.
    """

    out: Path
    sparsity: pd.DataFrame
    pruning: pd.DataFrame
    dgc_selection: pd.DataFrame
    training: pd.DataFrame
    summary: pd.DataFrame
    filters: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Running the grid
# --------------------------------------------------------------------------------------------


def select_arms(patterns: Sequence[str] | str | None = None,
                grid: Sequence[Arm] = GRID) -> list[Arm]:
    """The arms of ``grid`` whose names match any of ``patterns`` (exact names or shell
    patterns such as ``"dgc-*"``), in grid order; all of them for None.

    Raises ValueError naming a pattern that matches no arm.
    """
    if patterns is None:
        return list(grid)
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",")]
    patterns = [p.strip() for p in patterns if p.strip()]
    if not patterns:
        raise ValueError("arms is empty; name at least one arm (or leave it out for all)")
    names = [a.name for a in grid]
    for p in patterns:
        if not fnmatch.filter(names, p):
            raise ValueError(f"arm {p!r} matches no arm of the grid; arms are {names}")
    return [a for a in grid if any(fnmatch.fnmatchcase(a.name, p) for p in patterns)]


def run_sparsity_study(
    out: str | os.PathLike,
    dataset: str = "fashion-mnist",
    subset: int | None = None,
    epochs: int | None = None,
    *,
    seeds: int = 1,
    arms: Sequence[str] | str | None = None,
    full: bool = False,
    data_root: str = "data",
    device: str = "auto",
    download: bool = True,
    progress: bool = True,
    figures: bool = True,
    log: Callable[[str], None] | None = print,
) -> StudyResult:
    """Train the grid (or the chosen arms) and write the study's tables and figures.

    Args:
        out: the study folder (created); each (arm, seed) is a run folder inside it.
        dataset: one of ``STUDY_DATASETS``.
        subset: training images (and at most as many test images); default
            ``BUDGETS[dataset][0]``. Not with ``full``.
        epochs: default ``BUDGETS[dataset][1]``.
        seeds: train seeds ``0 .. seeds - 1`` of every arm.
        arms: names or shell patterns of ``GRID`` arms (a list or a comma-separated string);
            default all.
        full: train on the whole training set (and test on the whole test set).
        data_root, device, download: as in ``TrainConfig``.
        progress: tqdm bars while training and measuring.
        figures: write the PNG figures at the end.
        log: receives one line per step (``"skip ..."`` for a finished arm); None: silent.

    Returns:
        A ``StudyResult`` with every table of the folder (not only this invocation's arms).

    Raises:
        ValueError: a bad argument, or ``out`` holds a study with another dataset, subset or
            number of epochs.

    Example:
        >>> result = run_sparsity_study("runs/sparsity", "synthetic", subset=256, epochs=1)
        >>> result.summary[["arm", "dead_activation", "test_acc"]]  # doctest: +SKIP
    """
    say = log or (lambda line: None)
    if dataset not in STUDY_DATASETS:
        raise ValueError(f"dataset must be one of {STUDY_DATASETS}, got dataset={dataset!r}")
    for name, value in (("subset", subset), ("epochs", epochs)):
        if value is not None and (not _is_int(value) or value <= 0):
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    if not _is_int(seeds) or seeds <= 0:
        raise ValueError(f"seeds must be a positive int, got seeds={seeds!r}")
    if full and subset is not None:
        raise ValueError(f"full=True trains on the whole training set; drop subset={subset}")
    chosen = select_arms(arms)
    default_subset, default_epochs = BUDGETS[dataset]
    subset = None if full else (subset or default_subset)
    epochs = epochs or default_epochs

    out = Path(out)
    _pin_study(out, {"dataset": dataset, "subset": subset, "epochs": epochs})
    jobs = [(arm, seed) for arm in chosen for seed in range(seeds)]
    say(f"sparsity study in {out}: {len(jobs)} runs ({len(chosen)} arms x {seeds} seeds), "
        f"{dataset}, {'full training set' if subset is None else f'{subset} images'}, "
        f"{epochs} epochs")
    for n, (arm, seed) in enumerate(jobs, start=1):
        run = f"{arm.name}-seed{seed}"
        if _finished(out, arm, seed, epochs):
            say(f"[{n}/{len(jobs)}] skip {run} (finished)")
            continue
        start = time.perf_counter()
        say(f"[{n}/{len(jobs)}] {run}: training")
        config = arm.train_config(dataset, subset, epochs, seed, data_root, device, download)
        _run_arm(out, arm, seed, config, progress)
        say(f"[{n}/{len(jobs)}] {run}: done in {time.perf_counter() - start:.1f} s")

    return refresh_study(out, figures=figures)


def refresh_study(out: str | os.PathLike, *, figures: bool = True) -> StudyResult:
    """Read a study folder and rewrite its derived tables (training, summary) and figures.

    What ``run_sparsity_study`` does after training; on its own it rebuilds the outputs of a
    folder whose runs are (partly) finished, without training anything.
    """
    result = load_study(out)
    _write_csv(result.out / TRAINING_CSV, result.training)
    _write_csv(result.out / SUMMARY_CSV, result.summary)
    if figures:
        result.figures = write_figures(result)
    return result


def _run_arm(out: Path, arm: Arm, seed: int, config: TrainConfig, progress: bool) -> None:
    """Train (or resume) one run, measure it, and write its rows (sparsity.csv last)."""
    folder = out / f"{arm.name}-seed{seed}"
    trainer = Trainer(config, folder, resume=True, progress=progress)
    history = trainer.fit()
    model = trainer.model
    test_acc = float(history["test_acc"].iloc[-1])
    train_set, _, _ = load_dataset(config.dataset, config.data_root, config.subset, config.seed,
                                   download=config.download, augment=False)
    train_loader = DataLoader(train_set, ANALYSIS_BATCH, shuffle=False)
    ident = arm.columns(seed)

    filters = filter_sparsity(model, train_loader, GAMMA_THRESHOLD, ACTIVATION_THRESHOLD,
                              per_filter=True, progress=progress or None)
    _write_csv(folder / "filters.csv", filters)

    if arm.model == "basicnet":
        test_loader = DataLoader(trainer.test_set, ANALYSIS_BATCH, shuffle=False)
        example = next(iter(test_loader))[0][:1].to(trainer.device)
        pruned, report = remove_dead_filters(model, GAMMA_THRESHOLD, example_input=example)
        effect = pruning_effect(model, pruned, test_loader)
        row = ident | report.summary() | {
            "test_images": effect["images"],
            "max_logit_change": effect["max_logit_change"],  # over the test set
            "mean_logit_change": effect["mean_logit_change"],
            "test_acc": effect["accuracy"],
            "test_acc_pruned": effect["accuracy_pruned"],
            "agreement": effect["agreement"],
        }
        _replace_rows(out / PRUNING_CSV, arm.name, seed, pd.DataFrame([row]))
    if dgc_layers(model):
        recording = _record(model, train_loader, trainer.device)
        recording.save(folder / "train_recording.npz")
        selection = selection_by_status(recording, filters)
        for key, value in reversed(ident.items()):
            selection.insert(0, key, value)
        _replace_rows(out / SELECTION_CSV, arm.name, seed, selection)

    rows = _per_layer(filters)
    for key, value in reversed(ident.items()):
        rows.insert(0, key, value)
    rows["test_acc"] = test_acc
    _replace_rows(out / SPARSITY_CSV, arm.name, seed, rows[SPARSITY_COLUMNS])


@torch.no_grad()
def _record(model: torch.nn.Module, loader: DataLoader, device) -> Recorder:
    """The heads' selections for every image of ``loader``, in eval mode (mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with Recorder(model) as recorder:
            seen = 0
            for x, y in loader:
                recorder.tag(labels=y, ids=torch.arange(seen, seen + len(y)))
                model(x.to(device))
                seen += len(y)
    finally:
        model.train(was_training)
    return recorder


# --------------------------------------------------------------------------------------------
# Analyses (pure)
# --------------------------------------------------------------------------------------------


def selection_by_status(recording, filters: pd.DataFrame) -> pd.DataFrame:
    """Do DGC heads select input channels that carry nothing? Selection frequency by status.

    A DGC layer's input channels go through the layer's own BN-ReLU (``<layer>.norm``) before
    the saliency generators and the heads see them. Each channel's status, from the per-filter
    sparsity table of that BN over the same images:

    * ``"zero"``: its max ReLU(BN) output over the data is below the activation threshold: the
      heads see (almost) nothing in it;
    * ``"constant"``: not zero, but ``|gamma| < 1e-3``: a (nearly) constant ``ReLU(beta)``, no
      information;
    * ``"live"``: the rest.

    Args:
        recording: a ``Recording`` (or live ``Recorder``) of the DGC layers over the images.
        filters: ``filter_sparsity(model, loader, per_filter=True)`` over the same images.

    Returns:
        One row per (DGC layer, status): ``layer``, ``in_channels``, ``heads``, ``k`` (channels
        each head dropped, from the recording's layer info), ``status``, ``channels`` (of that status), ``frequency`` (fraction of (image, head)
        pairs in which such a channel was selected, mean over those channels; NaN if none),
        ``frequency_all`` (the same over all the layer's channels: what every status would get
        if the heads ignored it).
    """
    needed = {"layer", "filter", "dead_gamma", "dead_activation"}
    if not needed <= set(filters.columns):
        raise ValueError(
            f"filters must be a per-filter filter_sparsity table with a loader (columns "
            f"{sorted(needed)}), got columns {list(filters.columns)}"
        )
    rows = []
    for name in recording.layer_names:
        table = filters[filters["layer"] == f"{name}.norm"].sort_values("filter")
        if table.empty:
            raise ValueError(f"filters has no rows for {name}.norm, the BN of DGC layer {name!r}")
        sel = recording.selections(name)  # (N, heads, C) bool
        freq = sel.double().mean(dim=(0, 1)).numpy()  # (C,) per channel
        zero = table["dead_activation"].to_numpy(bool)
        constant = table["dead_gamma"].to_numpy(bool) & ~zero
        status = np.where(zero, "zero", np.where(constant, "constant", "live"))
        k = recording.layer_info(name)["inactive_channels"]
        for s in STATUSES:
            mask = status == s
            rows.append({
                "layer": name, "in_channels": sel.shape[2], "heads": sel.shape[1], "k": k,
                "status": s, "channels": int(mask.sum()),
                "frequency": float(freq[mask].mean()) if mask.any() else float("nan"),
                "frequency_all": float(freq.mean()),
            })
    columns = ["layer", "in_channels", "heads", "k", "status", "channels", "frequency",
               "frequency_all"]
    return pd.DataFrame(rows, columns=columns)


def summarize(sparsity: pd.DataFrame, grid: Sequence[Arm] = GRID) -> pd.DataFrame:
    """One row per arm: dead fractions over all its filters and test accuracy, mean over seeds.

    Args:
        sparsity: the study's ``sparsity.csv`` table.
        grid: for the row order.

    Returns:
        Columns ``arm, model, optimizer, regularisation, lambda, batch_size, seeds, filters``,
        ``dead_gamma``, ``dead_activation`` (fractions of all the arm's BN-ReLU filters, each
        seed's fraction averaged), ``selectivity`` (mean over layers and seeds), ``test_acc``
        and ``test_acc_std`` (over seeds; NaN for one seed).
    """
    columns = ["arm", "model", "optimizer", "regularisation", "lambda", "batch_size", "seeds",
               "filters", "dead_gamma", "dead_activation", "selectivity", "test_acc",
               "test_acc_std"]
    if sparsity.empty:
        return pd.DataFrame(columns=columns)
    per_seed = sparsity.groupby(["arm", "seed"], sort=False).agg(
        model=("model", "first"), optimizer=("optimizer", "first"),
        regularisation=("regularisation", "first"), lam=("lambda", "first"),
        batch_size=("batch_size", "first"), filters=("filters", "sum"),
        dead_gamma=("dead_gamma", "sum"), dead_activation=("dead_activation", "sum"),
        selectivity=("selectivity", "mean"), test_acc=("test_acc", "first"),
    ).reset_index()
    per_seed["dead_gamma"] /= per_seed["filters"]
    per_seed["dead_activation"] /= per_seed["filters"]
    summary = per_seed.groupby("arm", sort=False).agg(
        model=("model", "first"), optimizer=("optimizer", "first"),
        regularisation=("regularisation", "first"), lam=("lam", "first"),
        batch_size=("batch_size", "first"), seeds=("seed", "nunique"),
        filters=("filters", "first"), dead_gamma=("dead_gamma", "mean"),
        dead_activation=("dead_activation", "mean"), selectivity=("selectivity", "mean"),
        test_acc=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
    ).reset_index().rename(columns={"lam": "lambda"})
    order = {a.name: i for i, a in enumerate(grid)}
    summary = summary.sort_values("arm", key=lambda s: s.map(order).fillna(len(order)),
                                  kind="stable")
    return summary[columns].reset_index(drop=True)


def orderings(summary: pd.DataFrame) -> pd.DataFrame:
    """Does the measured ordering agree with Mehta et al.? (Nothing is tuned to make it.)

    Their findings, as comparisons of dead-filter fractions (both rules):

    * per model and lambda, at batch 64: Adam + L2 has more dead filters than each of AdamW,
      SGD + L2 and Adam without regularisation (they found Adam + L2 >> AdamW ~ SGD + L2 ~
      none; only the first part, "more than each", is checked);
    * Adam + L2 at lambda = 5e-4: batch 64 has more dead filters than batch 256.

    Args:
        summary: ``summarize(...)``.

    Returns:
        One row per (model, comparison, rule) whose arms are all present: ``model``,
        ``comparison``, ``rule`` (``dead_gamma`` / ``dead_activation``), ``values`` (the
        fractions, as text), ``verdict``: ``"agrees"``, ``"disagrees"`` or ``"no dead filters"``
        (all zero: the ordering is not observable).
    """
    rows = []

    def pick(model, optimizer, regularisation, lam, batch=64):
        hit = summary[(summary["model"] == model) & (summary["optimizer"] == optimizer)
                      & (summary["regularisation"] == regularisation)
                      & np.isclose(summary["lambda"], lam) & (summary["batch_size"] == batch)]
        return None if hit.empty else hit.iloc[0]

    for model in summary["model"].unique():
        lams = sorted({float(x) for x in summary.loc[summary["model"] == model, "lambda"]
                       if x > 0}, reverse=True)
        for lam in lams:
            first = pick(model, "adam", "l2", lam)
            others = {"AdamW": pick(model, "adamw", "decoupled", lam),
                      "SGD+L2": pick(model, "sgd", "l2", lam),
                      "none": pick(model, "adam", "none", 0.0)}
            if first is None or any(v is None for v in others.values()):
                continue
            for rule in ("dead_gamma", "dead_activation"):
                a = float(first[rule])
                b = {k: float(v[rule]) for k, v in others.items()}
                rows.append({
                    "model": model,
                    "comparison": f"Adam+L2 > AdamW, SGD+L2, none (lambda={lam:g}, batch 64)",
                    "rule": rule,
                    "values": f"Adam+L2 {a:.3f}; " + "; ".join(f"{k} {v:.3f}" for k, v in b.items()),
                    "verdict": _verdict(a, list(b.values())),
                })
        small, large = pick(model, "adam", "l2", 5e-4, 64), pick(model, "adam", "l2", 5e-4, 256)
        if small is not None and large is not None:
            for rule in ("dead_gamma", "dead_activation"):
                a, b = float(small[rule]), float(large[rule])
                rows.append({
                    "model": model, "comparison": "batch 64 > batch 256 (Adam+L2, lambda=5e-4)",
                    "rule": rule, "values": f"batch 64 {a:.3f}; batch 256 {b:.3f}",
                    "verdict": _verdict(a, [b]),
                })
    return pd.DataFrame(rows, columns=["model", "comparison", "rule", "values", "verdict"])


def _verdict(first: float, others: list[float]) -> str:
    if first == 0 and all(v == 0 for v in others):
        return "no dead filters"
    return "agrees" if all(first > v for v in others) else "disagrees"


# --------------------------------------------------------------------------------------------
# The study folder
# --------------------------------------------------------------------------------------------


def load_study(out: str | os.PathLike) -> StudyResult:
    """Read a study folder's tables (empty tables for what is not there yet); writes nothing.

    ``training`` and ``summary`` are rebuilt from the runs' ``metrics.csv`` and from
    ``sparsity.csv``; ``figures`` is empty.
    """
    out = Path(out)
    if not (out / STUDY_JSON).is_file():
        raise FileNotFoundError(f"{out} is not a study folder (no {STUDY_JSON})")
    sparsity = _read_csv(out / SPARSITY_CSV, SPARSITY_COLUMNS)
    return StudyResult(
        out=out,
        sparsity=sparsity,
        pruning=_read_csv(out / PRUNING_CSV, ARM_COLUMNS),
        dgc_selection=_read_csv(out / SELECTION_CSV, ARM_COLUMNS),
        training=_training_table(out, sparsity),
        summary=summarize(sparsity),
        filters=_filters_table(out, sparsity),
    )


def write_figures(result: StudyResult) -> list[Path]:
    """The study's PNG figures, into its folder; returns the paths written."""
    from .plots import (plot_dead_fraction, plot_dead_over_training, plot_dgc_selection,
                        plot_gamma_distribution)

    paths = []
    for model in result.sparsity["model"].unique():
        fig = plot_dead_fraction(result.sparsity[result.sparsity["model"] == model])
        paths.append(_save(fig, result.out / f"dead_fraction_{model}.png"))
    if not result.training.empty:
        paths.append(_save(plot_dead_over_training(result.training),
                           result.out / "dead_over_training.png"))
    if not result.dgc_selection.empty:
        paths.append(_save(plot_dgc_selection(result.dgc_selection),
                           result.out / "dgc_selection.png"))
    for model in result.filters["model"].unique():
        fig = plot_gamma_distribution(result.filters[result.filters["model"] == model])
        paths.append(_save(fig, result.out / f"gamma_{model}.png"))
    return paths


def format_report(result: StudyResult) -> str:
    """The text printed at the end of a study: summary, orderings, pruning, DGC selection."""
    lines = []
    if result.summary.empty:
        return "no finished arm yet"
    s = result.summary.copy()
    lines.append("Summary (dead fractions over all BN-ReLU filters; mean over seeds; "
                 "dead_activation over the training set):")
    shown = s[["arm", "seeds", "dead_gamma", "dead_activation", "selectivity", "test_acc"]]
    lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    order = orderings(s)
    if not order.empty:
        lines.append("")
        lines.append("Mehta et al. found Adam + L2 >> AdamW ~ SGD + L2 ~ none, and sparser "
                     "with smaller batches. Measured:")
        for r in order.itertuples():
            lines.append(f"  {r.model}, {r.comparison}, {r.rule}: {r.verdict} ({r.values})")
    if not result.pruning.empty:
        p = result.pruning.groupby("arm", sort=False)[
            ["filters_removed", "filters_before", "params_before", "params_after",
             "macs_before", "macs_after", "max_logit_change", "test_acc", "test_acc_pruned"]
        ].mean()
        lines.append("")
        lines.append("Removing the |gamma| < 1e-3 filters (BasicNet, test set; mean over seeds):")
        for arm, r in p.iterrows():
            lines.append(
                f"  {arm}: {r.filters_removed:.0f}/{r.filters_before:.0f} filters, params "
                f"-{1 - r.params_after / r.params_before:.1%}, MACs "
                f"-{1 - r.macs_after / r.macs_before:.1%}, max |logit change| "
                f"{r.max_logit_change:.2g}, accuracy {r.test_acc:.4f} -> {r.test_acc_pruned:.4f}"
            )
    if not result.dgc_selection.empty:
        d = result.dgc_selection
        lines.append("")
        lines.append("DGC heads: how often a channel is selected, by its status (all DGC "
                     "layers, training set; mean over seeds):")
        for arm, frame in d.groupby("arm", sort=False):
            parts = []
            for status in STATUSES:
                f = frame[(frame["status"] == status) & (frame["channels"] > 0)]
                if f.empty:
                    parts.append(f"{status}: 0 channels")
                    continue
                w = f["channels"].to_numpy(float)
                seeds = frame["seed"].nunique()
                parts.append(f"{status}: {w.sum() / seeds:.0f} channels, selected "
                             f"{np.average(f['frequency'], weights=w):.3f}")
            lines.append(f"  {arm}: " + "; ".join(parts))
    return "\n".join(lines)


def publish_study(result: StudyResult, dest: str | os.PathLike) -> list[Path]:
    """Copy a study's small files (tables, figures, settings, report) to ``dest``.

    The run folders (checkpoints, recordings) stay behind; ``load_study(dest)`` reads the copy
    as it reads the study itself. This is how ``data/sparsity-fmnist`` is made (README).

    Returns:
        The files written (atomically), ``report.txt`` last.

    Raises:
        ValueError: ``dest`` is the study folder itself.
    """
    dest = Path(dest)
    if dest.resolve() == result.out.resolve():
        raise ValueError(f"dest={str(dest)!r} is the study folder itself; publish elsewhere")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    tables = {SPARSITY_CSV: result.sparsity, PRUNING_CSV: result.pruning,
              SELECTION_CSV: result.dgc_selection, TRAINING_CSV: result.training,
              SUMMARY_CSV: result.summary, FILTERS_CSV: result.filters}
    for name, frame in tables.items():
        if not frame.empty:
            _write_csv(dest / name, frame)
            written.append(dest / name)
    sources = [result.out / STUDY_JSON, *sorted(result.out.glob("*.png"))]
    for path in sources:
        atomic_write_bytes(dest / path.name, path.read_bytes())
        written.append(dest / path.name)
    atomic_write_text(dest / "report.txt", format_report(result) + "\n")
    written.append(dest / "report.txt")
    return written


def _pin_study(out: Path, settings: dict) -> None:
    """Write out/study.json, or check that the folder's study has the same settings."""
    path = out / STUDY_JSON
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            raise ValueError(
                f"{out} holds a study with other settings ("
                + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                + "); choose another out folder"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True))


def _finished(out: Path, arm: Arm, seed: int, epochs: int) -> bool:
    metrics = out / f"{arm.name}-seed{seed}" / "metrics.csv"
    if not metrics.is_file() or len(pd.read_csv(metrics)) < epochs:
        return False
    table = _read_csv(out / SPARSITY_CSV, SPARSITY_COLUMNS)
    return bool(((table["arm"] == arm.name) & (table["seed"] == seed)).any())


def _per_layer(filters: pd.DataFrame) -> pd.DataFrame:
    """Per-filter sparsity -> one row per BN-ReLU layer (selectivity: mean over live)."""
    rows = []
    for layer, f in filters.groupby("layer", sort=False):
        live = f.loc[~f["dead_activation"], "selectivity"]
        rows.append({"layer": layer, "filters": len(f), "dead_gamma": int(f["dead_gamma"].sum()),
                     "dead_activation": int(f["dead_activation"].sum()),
                     "selectivity": float(live.mean()) if len(live) else float("nan")})
    return pd.DataFrame(rows, columns=["layer", "filters", "dead_gamma", "dead_activation",
                                       "selectivity"])


def _runs_table(out: Path, sparsity: pd.DataFrame, run_file: str, study_file: str,
                columns: list[str], read) -> pd.DataFrame:
    """One table stacked over every finished (arm, seed) of ``sparsity``.

    A run's rows are ``read(frame, run)`` of its folder's ``run_file`` (``run``: a row with
    ``arm, seed, model, filters``); a run whose folder is not there (a published study keeps
    only its tables) keeps the rows the study's ``study_file`` already holds for it.
    """
    saved = _read_csv(out / study_file, columns)
    frames = []
    if not sparsity.empty:
        runs = sparsity.groupby(["arm", "seed"], sort=False).agg(
            model=("model", "first"), filters=("filters", "sum")).reset_index()
        for r in runs.itertuples():
            path = out / f"{r.arm}-seed{r.seed}" / run_file
            if path.is_file():
                frames.append(read(pd.read_csv(path), r)[columns])
            else:
                rows = saved[(saved["arm"] == r.arm) & (saved["seed"] == r.seed)]
                if not rows.empty:
                    frames.append(rows[columns])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _training_table(out: Path, sparsity: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every finished (arm, seed), with the dead fraction by the gamma rule."""
    return _runs_table(
        out, sparsity, "metrics.csv", TRAINING_CSV,
        ["arm", "model", "seed", "epoch", "test_acc", "dead_filters", "dead_fraction"],
        lambda m, r: m.assign(arm=r.arm, model=r.model, seed=r.seed,
                              dead_fraction=m["dead_filters"] / r.filters),
    )


def _filters_table(out: Path, sparsity: pd.DataFrame) -> pd.DataFrame:
    """filters.csv of every finished (arm, seed), stacked."""
    return _runs_table(
        out, sparsity, FILTERS_CSV, FILTERS_CSV,
        ["arm", "model", "seed", "layer", "filter", "gamma", "max_activation", "selectivity",
         "dead_gamma", "dead_activation"],
        lambda f, r: f.assign(arm=r.arm, model=r.model, seed=r.seed),
    )


def _replace_rows(path: Path, arm: str, seed: int, rows: pd.DataFrame) -> None:
    """Rewrite ``path`` atomically with the (arm, seed) rows replaced by ``rows``."""
    table = _read_csv(path, list(rows.columns))
    if not table.empty:
        table = table[~((table["arm"] == arm) & (table["seed"] == seed))]
    merged = pd.concat([table, rows], ignore_index=True) if not table.empty else rows
    order = {a.name: i for i, a in enumerate(GRID)}
    key = merged["arm"].map(order).fillna(len(order)) * 10_000 + merged["seed"]
    merged = merged.iloc[np.argsort(key.to_numpy(), kind="stable")]
    _write_csv(path, merged)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
