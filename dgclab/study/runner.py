"""The implicit filter sparsity study's runner: train every arm of the grid, measure it, and
write the study's tables (SPEC §7).

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495, reproduced on dgclab's own grid (``dgclab.study.grid``) and
extended to a DGC network (``dgclab.study.dgc_selection``). Not to be confused with
``dgclab.analysis.sparsity`` (``filter_sparsity``: the dead filters of one network), which this
module calls on every arm it trains.

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

The folder's files are described in ``dgclab.study.folder``; the summary and the report in
``dgclab.study.summary``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from ..analysis import filter_sparsity, pruning_effect, remove_dead_filters
from ..data import load_dataset
from ..layers import dgc_layers
from ..record import record
from ..train import TrainConfig, Trainer
from .dgc_selection import selection_by_status
from .folder import (
    PRUNING_CSV,
    SELECTION_CSV,
    SPARSITY_COLUMNS,
    SPARSITY_CSV,
    STUDY_JSON,
    StudyResult,
    pin_settings,
    refresh_study,
    replace_rows,
    run_finished,
    write_table,
)
from .grid import (
    ACTIVATION_THRESHOLD,
    ANALYSIS_BATCH,
    BASICNET_MODELS,
    BUDGETS,
    GAMMA_THRESHOLD,
    STUDY_DATASETS,
    Arm,
    select_arms,
)

__all__ = ["run_sparsity_study"]


def run_sparsity_study(
    out: str | os.PathLike,
    dataset: str = "fashion-mnist",
    subset: int | None = None,
    epochs: int | None = None,
    *,
    seeds: int = 1,
    arms: Sequence[str] | str | None = None,
    full: bool = False,
    basicnet: str = "basicnet",
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
        basicnet: the network of the BasicNet arms, ``"basicnet"`` or ``"basicnet-half"`` (the
            pilot's half-width net; ``PILOT_BUDGET`` is ``full=True, epochs=30,
            basicnet="basicnet-half"``). Pinned in the folder like the budget.
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
        >>> result = run_sparsity_study("runs/sparsity", "synthetic", subset=256, epochs=1)  # doctest: +SKIP
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
    if basicnet not in BASICNET_MODELS:
        raise ValueError(f"basicnet must be one of {BASICNET_MODELS}, got basicnet={basicnet!r}")
    chosen = [replace(a, model=basicnet) if a.model == "basicnet" else a
              for a in select_arms(arms)]
    default_subset, default_epochs = BUDGETS[dataset]
    subset = None if full else (subset or default_subset)
    epochs = epochs or default_epochs

    out = Path(out)
    settings = {"dataset": dataset, "subset": subset, "epochs": epochs}
    if basicnet != "basicnet":  # folders of the full-width default pin what they always did
        settings["basicnet"] = basicnet
    pin_settings(out / STUDY_JSON, settings, "study")
    jobs = [(arm, seed) for arm in chosen for seed in range(seeds)]
    say(f"sparsity study in {out}: {len(jobs)} runs ({len(chosen)} arms x {seeds} seeds), "
        f"{dataset}, {'full training set' if subset is None else f'{subset} images'}, "
        f"{epochs} epochs")
    for n, (arm, seed) in enumerate(jobs, start=1):
        run = f"{arm.name}-seed{seed}"
        if run_finished(out, arm, seed, epochs):
            say(f"[{n}/{len(jobs)}] skip {run} (finished)")
            continue
        start = time.perf_counter()
        say(f"[{n}/{len(jobs)}] {run}: training")
        config = arm.train_config(dataset, subset, epochs, seed, data_root, device, download)
        _run_arm(out, arm, seed, config, progress)
        say(f"[{n}/{len(jobs)}] {run}: done in {time.perf_counter() - start:.1f} s")

    return refresh_study(out, figures=figures)


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
    write_table(folder / "filters.csv", filters)

    if arm.model in BASICNET_MODELS:
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
        replace_rows(out / PRUNING_CSV, arm.name, seed, pd.DataFrame([row]))
    if dgc_layers(model):
        recording = record(model, train_loader, device=trainer.device)
        recording.save(folder / "train_recording.npz")
        selection = selection_by_status(recording, filters)
        for key, value in reversed(ident.items()):
            selection.insert(0, key, value)
        replace_rows(out / SELECTION_CSV, arm.name, seed, selection)

    rows = _per_layer(filters)
    for key, value in reversed(ident.items()):
        rows.insert(0, key, value)
    rows["test_acc"] = test_acc
    replace_rows(out / SPARSITY_CSV, arm.name, seed, rows[SPARSITY_COLUMNS])


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
