"""The study folder: the files a sparsity study writes, and reading them back.

A study folder ``out`` (``dgclab.study.runner.run_sparsity_study``) holds one run folder per
(arm, seed), ``out/<arm>-seed<k>`` with the run's ``metrics.csv`` and ``filters.csv``, and the
study's tidy tables, one row per (arm, seed, ...) with the arm's columns (``ARM_COLUMNS``):

* ``sparsity.csv``: per BN-ReLU layer, dead filters by both rules and selectivity (written last
  for a run: its rows mark the run finished);
* ``pruning.csv``: per BasicNet run, the effect of removing its dead filters;
* ``dgc_selection.csv``: per DGC layer and channel status, how often the heads select it;
* ``training.csv``, ``summary.csv``: derived from the runs' ``metrics.csv`` and from
  ``sparsity.csv``, rewritten by ``refresh_study`` with the PNG figures (``write_figures``);
* ``study.json``: the dataset, subset and epochs the folder is pinned to (``pin_study``).

The study's tables, figures and settings are written atomically (``dgclab._atomic``).
``load_study`` reads a folder, or the copy ``publish_study`` makes of it: the tables, figures and
report without the run folders (the runs' ``filters.csv`` stacked into one).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._atomic import atomic_write_bytes, atomic_write_csv, atomic_write_text
from ..checks import check_type
from .grid import GRID, Arm
from .summary import format_report, summarize

__all__ = [
    "StudyResult",
    "load_study",
    "refresh_study",
    "write_figures",
    "publish_study",
    "pin_settings",
    "run_finished",
    "replace_rows",
    "write_table",
    "SPARSITY_CSV",
    "PRUNING_CSV",
    "SELECTION_CSV",
    "FILTERS_CSV",
    "TRAINING_CSV",
    "SUMMARY_CSV",
    "STUDY_JSON",
    "ARM_COLUMNS",
    "SPARSITY_COLUMNS",
]

SPARSITY_CSV, PRUNING_CSV, SELECTION_CSV = "sparsity.csv", "pruning.csv", "dgc_selection.csv"
FILTERS_CSV = "filters.csv"  # per filter; also each run folder's own
TRAINING_CSV, SUMMARY_CSV, STUDY_JSON = "training.csv", "summary.csv", "study.json"
ARM_COLUMNS = ["arm", "model", "optimizer", "regularisation", "lambda", "lr", "batch_size", "seed"]
SPARSITY_COLUMNS = ARM_COLUMNS + [
    "layer", "filters", "dead_gamma", "dead_activation", "selectivity", "test_acc",
]


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


write_table = atomic_write_csv  # a study table: CSV without the index, written atomically


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


def refresh_study(out: str | os.PathLike, *, figures: bool = True) -> StudyResult:
    """Read a study folder and rewrite its derived tables (training, summary) and figures.

    What ``run_sparsity_study`` does after training; on its own it rebuilds the outputs of a
    folder whose runs are (partly) finished, without training anything.
    """
    result = load_study(out)
    write_table(result.out / TRAINING_CSV, result.training)
    write_table(result.out / SUMMARY_CSV, result.summary)
    if figures:
        result.figures = write_figures(result)
    return result


def write_figures(result: StudyResult) -> list[Path]:
    """The study's PNG figures, into its folder; returns the paths written."""
    check_type("result", result, StudyResult)
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
            write_table(dest / name, frame)
            written.append(dest / name)
    sources = [result.out / STUDY_JSON, *sorted(result.out.glob("*.png"))]
    for path in sources:
        atomic_write_bytes(dest / path.name, path.read_bytes())
        written.append(dest / path.name)
    atomic_write_text(dest / "report.txt", format_report(result) + "\n")
    written.append(dest / "report.txt")
    return written


def pin_settings(path: Path, settings: dict, what: str) -> None:
    """Write ``settings`` to ``path`` (JSON), or check that the file there holds the same.

    A study or pilot folder is resumed run by run; this refuses to resume it with other
    settings, naming each one that differs (``what``: "study", "pilot", in the message).
    """
    out = path.parent
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            raise ValueError(
                f"{out} holds a {what} with other settings ("
                + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                + "); choose another out folder"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def run_finished(out: Path, arm: Arm, seed: int, epochs: int) -> bool:
    """Whether ``arm``'s run of ``seed`` in ``out`` is finished: its ``metrics.csv`` has
    ``epochs`` rows and ``sparsity.csv`` (written last) has its rows."""
    metrics = out / f"{arm.name}-seed{seed}" / "metrics.csv"
    if not metrics.is_file() or len(pd.read_csv(metrics)) < epochs:
        return False
    table = _read_csv(out / SPARSITY_CSV, SPARSITY_COLUMNS)
    return bool(((table["arm"] == arm.name) & (table["seed"] == seed)).any())


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


def replace_rows(path: Path, arm: str, seed: int, rows: pd.DataFrame) -> None:
    """Rewrite ``path`` atomically with the (arm, seed) rows replaced by ``rows``."""
    table = _read_csv(path, list(rows.columns))
    if not table.empty:
        table = table[~((table["arm"] == arm) & (table["seed"] == seed))]
    merged = pd.concat([table, rows], ignore_index=True) if not table.empty else rows
    order = {a.name: i for i, a in enumerate(GRID)}
    key = merged["arm"].map(order).fillna(len(order)) * 10_000 + merged["seed"]
    merged = merged.iloc[np.argsort(key.to_numpy(), kind="stable")]
    write_table(path, merged)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """The CSV file ``path``, or an empty table with ``columns`` while there is none."""
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path
