"""What the sparsity study found: one row per arm, the orderings Mehta et al. reported checked
against the measured ones, and the text report printed at the end of a study.

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495. Pure functions of the study's tables (``dgclab.study.folder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..checks import check_type
from .dgc_selection import STATUSES
from .grid import GRID, Arm

if TYPE_CHECKING:
    from .folder import StudyResult

__all__ = ["summarize", "orderings", "depth_ordering", "format_report"]


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
    check_type("sparsity", sparsity, pd.DataFrame)
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
    check_type("summary", summary, pd.DataFrame)
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


def depth_ordering(sparsity: pd.DataFrame) -> pd.DataFrame:
    """Are earlier layers sparser, as Mehta et al. found? Per arm, earlier half against later half.

    A network's BN-ReLU layers, in the order ``sparsity.csv`` lists them (the model's own order),
    split into the first and the last ``n // 2`` (the middle one of an odd count goes to
    neither); each half's dead fraction is its dead filters over its filters, summed over
    seeds. Only arms with a dead filter by the rule get a row: without one there is nothing
    to locate.

    Args:
        sparsity: the study's ``sparsity.csv`` table.

    Returns:
        One row per (arm, rule): ``arm``, ``model``, ``rule``, ``earlier``, ``later`` (the two
        fractions), ``layers`` (which layers each half holds, as text), ``verdict``
        (``"agrees"`` when earlier > later, else ``"disagrees"``).
    """
    check_type("sparsity", sparsity, pd.DataFrame)
    columns = ["arm", "model", "rule", "earlier", "later", "layers", "verdict"]
    rows = []
    for arm, frame in sparsity.groupby("arm", sort=False):
        layers = list(dict.fromkeys(frame["layer"]))
        half = len(layers) // 2
        if half == 0:
            continue
        early, late = layers[:half], layers[len(layers) - half:]
        for rule in ("dead_gamma", "dead_activation"):
            if frame[rule].sum() == 0:
                continue
            counts = [frame.loc[frame["layer"].isin(part), [rule, "filters"]].sum()
                      for part in (early, late)]
            fraction = [c[rule] / c["filters"] for c in counts]
            rows.append({"arm": arm, "model": frame["model"].iloc[0], "rule": rule,
                         "earlier": fraction[0], "later": fraction[1],
                         "layers": f"{early[0]}..{early[-1]} vs {late[0]}..{late[-1]}",
                         "verdict": "agrees" if fraction[0] > fraction[1] else "disagrees"})
    return pd.DataFrame(rows, columns=columns)


def _verdict(first: float, others: list[float]) -> str:
    if first == 0 and all(v == 0 for v in others):
        return "no dead filters"
    return "agrees" if all(first > v for v in others) else "disagrees"


def format_report(result: StudyResult) -> str:
    """The text printed at the end of a study: summary, orderings, pruning, DGC selection."""
    from .folder import StudyResult  # folder imports this module

    check_type("result", result, StudyResult)
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
    depth = depth_ordering(result.sparsity)
    if not depth.empty:
        lines.append("")
        lines.append("Mehta et al. found earlier layers sparser. Dead fraction of the first half "
                     "of each network's BN-ReLU layers against the last half:")
        for r in depth.itertuples():
            lines.append(f"  {r.arm}, {r.rule}: {r.verdict} (earlier {r.earlier:.3f}; later "
                         f"{r.later:.3f}; {r.layers})")
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
