"""The accuracy bench's ``dynamics.csv`` files side by side: why DGC lags early (issue #21).

Every run of ``python -m dgclab.bench accuracy`` publishes a ``MetricTracker`` frame of its DGC
layers on a fixed probe set (``dgclab.bench.accuracy``). ``summarize_dynamics`` reads the
finished runs of a results folder and writes what the README's story quotes, so that it can be
made again from the published files alone:

* ``dynamics_summary.csv``: one row per run and epoch (0: the initialisation): the test
  accuracy, training loss and k of that epoch (``metrics.csv``), the test accuracy with every
  BN's statistics recomputed (``test_acc_recalibrated``, where the run has a
  ``bn_recalibration.csv``; newer runs add ``bn_drift`` and ``selection_changed``, the stale
  statistics' mean drift and the DGC decisions they change) and every probe metric's mean
  over the run's DGC layers (selection churn, saliency zeros, zeros among the kept, saliency
  spread, head overlap and its chance level). ``--reference`` adds the test accuracy and
  training loss per epoch of other results folders' runs (e.g. the dense and static-group runs
  of ``data/bench-accuracy``) as rows without probe metrics.
* ``loss_around_k.csv``: per run, ``loss_around_k_steps`` of its per-step losses (how the
  training loss moves around the steps at which k grew).
* ``dynamics.png``, ``loss_around_k.png`` and ``accuracy_by_epoch.png``:
  ``plot_selection_dynamics``, ``plot_loss_around_k`` and ``plot_test_accuracy`` of the same
  runs (the last with the reference runs).

It is called by the accuracy bench's summary (``--summary-only`` redoes it); nothing here trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .._atomic import atomic_open, atomic_write_csv
from ..checks import check_float, check_type
from ..analysis import PROBE_METRICS, loss_around_k_steps
from ..analysis.dynamics import LOSS_AROUND_K_COLUMNS

__all__ = ["summarize_dynamics", "eval_mode_dips", "SUMMARY", "LOSS_AROUND_K"]

DYNAMICS = "dynamics.csv"  # a run's MetricTracker frame (dgclab.bench.accuracy writes it)
RECALIBRATION = "bn_recalibration.csv"  # per epoch: test accuracy, BN statistics recomputed
BN_DRIFT = "bn_drift.csv"  # per epoch and layer: bn_drift's columns, DGC selections changed
RECALIBRATION_COLUMNS = ("test_acc_recalibrated", "bn_drift", "selection_changed")
SUMMARY = "dynamics_summary.csv"
LOSS_AROUND_K = "loss_around_k.csv"
WINDOW = 20  # steps on each side of a k step in loss_around_k.csv
PLOTTED = ("selection_churn", "saliency_zero", "probe_head_jaccard")


def _epoch_table(name: str, metrics: pd.DataFrame, dynamics: pd.DataFrame | None,
                 recalibration: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per epoch of a run: test accuracy, training loss and k (its ``metrics.csv``),
    the test accuracy with recomputed BN statistics, the mean BN drift and the DGC decisions
    recomputing changed where it has a ``bn_recalibration.csv``
    and, where it has a ``dynamics.csv``, the probe metrics' mean over DGC layers, with the
    initialisation as epoch 0."""
    table = metrics[["epoch", "train_loss", "test_acc", "k_frac"]]
    if recalibration is not None:  # bn_drift and selection_changed: runs from 2026-12-03 on
        columns = [c for c in RECALIBRATION_COLUMNS if c in recalibration]
        table = table.merge(recalibration[["epoch"] + columns], on="epoch", how="left")
    if dynamics is not None:
        probe = dynamics[dynamics.metric.isin(PROBE_METRICS)]
        if len(probe):  # runs without DGC layers have per-step rows only
            means = probe.pivot_table(index="epoch", columns="metric", values="value",
                                      aggfunc="mean")
            table = means.reset_index().merge(table, on="epoch", how="left")
    table.insert(0, "run", name)
    return table


def summarize_dynamics(results, names: Sequence[str], reference=None, plot: bool = True,
                       out=None) -> pd.DataFrame:
    """Write ``dynamics_summary.csv``, ``loss_around_k.csv`` and the three figures; print tables.

    Args:
        results: the results folder whose runs (``results / name``) have ``dynamics.csv``.
        names: run folder names to read, in the order to show (e.g. ``dgc-seed0``); names
            without a published ``metrics.csv`` and ``dynamics.csv`` are skipped.
        reference: ``{label: run folder}`` of runs shown by their test accuracy and training
            loss only (runs of another results folder, e.g.
            ``data/bench-accuracy/dense-seed0``), or None.
        plot: write the figures too.
        out: where to write (default ``results``).

    Returns:
        The per-epoch table (what ``dynamics_summary.csv`` holds); empty when no run of
        ``names`` has a ``dynamics.csv``.

    Raises:
        FileNotFoundError: a reference run folder without ``metrics.csv``.
    """
    results = Path(results)
    out = results if out is None else Path(out)
    runs = {name: results / name for name in names
            if (results / name / "metrics.csv").is_file() and (results / name / DYNAMICS).is_file()}
    if not runs:
        return pd.DataFrame()
    reference = {label: Path(run) for label, run in (reference or {}).items()}
    for label, run in reference.items():
        if not (run / "metrics.csv").is_file():
            raise FileNotFoundError(f"reference run {label!r}: no metrics.csv in {run}")
    frames = {name: pd.read_csv(run / DYNAMICS) for name, run in runs.items()}
    histories = {name: pd.read_csv(run / "metrics.csv") for name, run in runs.items()}
    references = {label: pd.read_csv(run / "metrics.csv") for label, run in reference.items()}
    recalibrations = {name: pd.read_csv(run / RECALIBRATION) for name, run in runs.items()
                      if (run / RECALIBRATION).is_file()}
    tables = [_epoch_table(name, histories[name], frames[name], recalibrations.get(name))
              for name in runs]
    tables += [_epoch_table(label, history, None) for label, history in references.items()]
    summary = pd.concat(tables, ignore_index=True)
    atomic_write_csv(out / SUMMARY, summary)

    around = {name: loss_around_k_steps(frame, window=WINDOW) for name, frame in frames.items()}
    around_rows = [t.assign(run=name) for name, t in around.items() if len(t)]
    if around_rows:
        atomic_write_csv(out / LOSS_AROUND_K,
                         pd.concat(around_rows, ignore_index=True)[["run"] + LOSS_AROUND_K_COLUMNS])
    _print(summary, around)
    if plot:
        _plot(frames, around, histories | references, out)
    return summary


def eval_mode_dips(summary: pd.DataFrame, points: float = 1.0) -> pd.DataFrame:
    """How often and how deep each run's eval-mode accuracy fell under its own weights' worth.

    A dip is an epoch whose test accuracy with every BN's statistics recomputed
    (``test_acc_recalibrated``) is at least ``points`` percentage points above the run's
    eval-mode test accuracy: the running statistics, not the weights, cost those points.

    Args:
        summary: ``summarize_dynamics``'s table (``run``, ``epoch``, ``test_acc``,
            ``test_acc_recalibrated``); runs without recomputed accuracies are left out.
        points: the gap that counts as a dip, in percentage points (> 0).

    Returns:
        DataFrame, one row per run: ``run``, ``epochs`` (with both accuracies), ``dips``,
        ``dip_epochs`` (e.g. ``"1, 2, 6"``), ``largest_gap`` (percentage points) and
        ``largest_gap_epoch``, ``mean_gap`` (percentage points).

    Raises:
        TypeError: ``summary`` not a DataFrame, ``points`` not a real number.
        ValueError: ``points`` not positive; ``summary`` has recomputed accuracies but lacks
            ``run``, ``epoch`` or ``test_acc``.
    """
    check_type("summary", summary, pd.DataFrame)
    points = check_float("points", points, min=0, min_inclusive=False)
    columns = ["run", "epochs", "dips", "dip_epochs", "largest_gap", "largest_gap_epoch",
               "mean_gap"]
    if "test_acc_recalibrated" not in summary:
        return pd.DataFrame(columns=columns)
    missing = [c for c in ("run", "epoch", "test_acc") if c not in summary]
    if missing:
        raise ValueError(f"summary lacks the column(s) {missing}; it has {list(summary.columns)}")
    both = summary.dropna(subset=["test_acc", "test_acc_recalibrated"])
    rows = []
    for run, epochs in both.groupby("run", sort=False):
        gap = 100 * (epochs.test_acc_recalibrated - epochs.test_acc)
        dips = epochs.epoch[gap >= points]
        rows.append({"run": run, "epochs": len(epochs), "dips": len(dips),
                     "dip_epochs": ", ".join(str(int(e)) for e in dips),
                     "largest_gap": gap.max(), "largest_gap_epoch": int(epochs.epoch[gap.idxmax()]),
                     "mean_gap": gap.mean()})
    return pd.DataFrame(rows, columns=columns)


def _print(summary: pd.DataFrame, around: dict[str, pd.DataFrame]) -> None:
    tables = (("test_acc", "test accuracy (%)", 100, 2),
              ("test_acc_recalibrated", "test accuracy with every BN's statistics recomputed "
               f"({RECALIBRATION}, %)", 100, 2),
              ("bn_drift", "BN drift of the running statistics, mean over BN layers "
               f"({BN_DRIFT}: output standard deviations)", 1, 3),
              ("selection_changed", "DGC decisions on the probe images that recomputing the BN "
               "statistics changes, mean over DGC layers (%)", 100, 2),
              ("train_loss", "training loss (mean over the epoch)", 1, 3))
    for column, what, scale, digits in tables:
        if column not in summary or summary[column].isna().all():
            continue
        table = summary.pivot_table(index="epoch", columns="run", values=column, sort=False)
        print(f"\n{what} by epoch\n")
        print("| epoch | " + " | ".join(table.columns) + " |")
        print("|---" * (len(table.columns) + 1) + "|")
        for epoch, row in table.iterrows():
            print(f"| {epoch} | " + " | ".join(f"{scale * v:.{digits}f}" if v == v else "–"
                                               for v in row) + " |")
    dips = eval_mode_dips(summary)
    if len(dips):
        print("\neval-mode dips: epochs whose accuracy with every BN's statistics recomputed is "
              "at least 1 point above the eval-mode one (gaps in points)\n")
        print("| run | epochs | dips | at epochs | largest gap | at epoch | mean gap |")
        print("|---|---|---|---|---|---|---|")
        for r in dips.itertuples():
            print(f"| {r.run} | {r.epochs} | {r.dips} | {r.dip_epochs or '–'} "
                  f"| {r.largest_gap:+.2f} | {r.largest_gap_epoch} | {r.mean_gap:+.2f} |")
    probe = summary.dropna(subset=["selection_churn", "saliency_zero"], how="all")
    if len(probe):
        print("\nprobe metrics, mean over DGC layers (churn, zeros, overlap in %; spread: std/mean "
              "of g)\n")
        print("| run | epoch | k | churn | saliency zeros | zeros among kept | spread "
              "| head overlap | chance |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in probe.itertuples():
            k = "init" if r.epoch == 0 else f"{r.k_frac:.2f}"
            print(f"| {r.run} | {r.epoch} | {k} | {_pct(r.selection_churn)} "
                  f"| {_pct(r.saliency_zero)} | {_pct(r.kept_zero)} | {r.saliency_spread:.3f} "
                  f"| {_pct(r.probe_head_jaccard)} | {_pct(r.chance_head_jaccard)} |")
    for name, table in around.items():
        if len(table):
            after = table[table.offset > 0]
            peak = after.loc[after.delta_mean.idxmax()]
            print(f"\n{name}: {int(table.events.iloc[0])} k steps; loss after a step, mean over "
                  f"the {WINDOW} steps after: {after.delta_mean.mean():+.4f}; largest "
                  f"{peak.delta_mean:+.4f} ± {peak.delta_sem:.4f} at +{int(peak.offset)}")


def _pct(value: float) -> str:
    return "–" if value != value else f"{100 * value:.1f}"


def _plot(frames: dict[str, pd.DataFrame], around: dict[str, pd.DataFrame],
          histories: dict[str, pd.DataFrame], out: Path) -> None:
    import matplotlib.pyplot as plt

    from ..viz import plot_loss_around_k, plot_selection_dynamics, plot_test_accuracy

    for name, fig in (("dynamics.png", plot_selection_dynamics(frames, metrics=PLOTTED)),
                      ("loss_around_k.png", plot_loss_around_k(around)),
                      ("accuracy_by_epoch.png", plot_test_accuracy(histories))):
        with atomic_open(out / name, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
