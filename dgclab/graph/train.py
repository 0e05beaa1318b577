"""Node classification, evaluated honestly: the epoch is chosen on validation data.

The released MultiPath GCN code (SPEC §8) trains full batch with Adam (lr 1e-2, no dropout, no
weight decay) and reports, per run, the best TEST accuracy over the epochs: the test set picks
the epoch. That is an upper bound on what the model would score with the epoch fixed in advance
or chosen on data it may look at. dgclab trains the same way and reports both:

* **val-selected**: the test accuracy at the epoch with the best validation accuracy (ties: the
  lower validation loss, then the earlier epoch); training stops ``patience`` epochs after the
  last improvement (early stopping) and the model is left with those weights;
* **test-selected**: the best test accuracy over the same epochs (the released protocol).

Their difference is the optimism of the released protocol. ``run_protocol`` repeats this over
seeds (each seed draws its own split and initialisation, the same for every model: a paired
comparison) and ``summarize`` gives mean ± std (sample std, ddof = 1) per dataset and model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_float, check_int, check_type
from .data import Graph
from .diversity import path_similarity
from .models import MODELS, build_model, parameter_count
from .splits import Split, random_split

__all__ = ["HISTORY_COLUMNS", "FitResult", "fit", "run_protocol", "summarize", "paired_differences",
           "format_summary", "format_paired", "format_paths"]

HISTORY_COLUMNS = ("epoch", "loss", "train_acc", "val_acc", "val_loss", "test_acc")


@dataclass
class FitResult:
    """One training run.

    Attributes:
        history: one row per epoch (``HISTORY_COLUMNS``), measured after that epoch's step.
        val_epoch: the epoch chosen on validation; the model holds its weights.
        val_selected: test accuracy at ``val_epoch``.
        test_epoch: the epoch with the best test accuracy (the first, if several).
        test_selected: that accuracy (the released code's figure).
        seconds: wall time of the run.
    """

    history: pd.DataFrame
    val_epoch: int
    val_selected: float
    test_epoch: int
    test_selected: float
    seconds: float


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).double().mean())


def fit(model: nn.Module, graph: Graph, split: Split, *, adj: torch.Tensor | None = None,
        lr: float = 1e-2, weight_decay: float = 0.0, max_epochs: int = 200,
        patience: int | None = 50) -> FitResult:
    """Train ``model`` full batch with Adam; select the epoch on ``split.val``.

    Args:
        model: takes ``(x, adj)``, returns (N, C) logits.
        graph: the graph (its labels on the split nodes are the targets).
        split: train / val / test node ids (checked against ``graph``).
        adj: Â of ``graph`` (computed when None; pass it to share it between runs).
        lr, weight_decay: of Adam (the released code: 1e-2, 0).
        max_epochs: at most this many full-batch steps.
        patience: stop after this many epochs without a better validation score (None: run
            all ``max_epochs``).

    Returns:
        A ``FitResult``; ``model`` is left with the weights of the val-selected epoch.
    """
    check_type("model", model, nn.Module)
    check_type("graph", graph, Graph)
    check_type("split", split, Split).check(graph)
    lr = check_float("lr", lr, min=0, min_inclusive=False)
    weight_decay = check_float("weight_decay", weight_decay, min=0)
    max_epochs = check_int("max_epochs", max_epochs, min=1)
    if patience is not None:
        patience = check_int("patience", patience, min=1)
    adj = graph.adjacency() if adj is None else adj
    x, y = graph.x, graph.y
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    rows, best, best_state = [], None, None
    start = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.train()
        loss = F.cross_entropy(model(x, adj)[split.train], y[split.train])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x, adj)  # (N, C), after this epoch's step
        val_loss = float(F.cross_entropy(logits[split.val], y[split.val]))
        row = {"epoch": epoch, "loss": loss.item(),
               **{f"{s}_acc": _accuracy(logits[ids], y[ids])
                  for s, ids in (("train", split.train), ("val", split.val),
                                 ("test", split.test))},
               "val_loss": val_loss}
        rows.append(row)
        score = (row["val_acc"], -val_loss)
        if best is None or score > best[0]:
            best, best_state = (score, epoch), copy.deepcopy(model.state_dict())
        elif patience is not None and epoch - best[1] >= patience:
            break
    model.load_state_dict(best_state)
    history = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    val_epoch = best[1]
    test_row = history.loc[history["test_acc"].idxmax()]  # idxmax: the first maximum
    return FitResult(history, val_epoch, float(history["test_acc"].iloc[val_epoch - 1]),
                     int(test_row["epoch"]), float(test_row["test_acc"]),
                     time.perf_counter() - start)


def run_protocol(graph: Graph, models: Sequence[str] = tuple(MODELS), seeds=range(10), *,
                 hidden: int = 128, split: Split | None = None, progress: bool = False,
                 **fit_options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every model on every seed; one row per run, and the path CKA of multipath runs.

    Args:
        graph: the graph.
        models: names from ``MODELS``.
        seeds: seed s draws the split (``random_split(graph, s)``, unless ``split`` is given)
            and every model's initialisation (``torch.manual_seed(s)``).
        hidden: width h of every model (the same parameter budget, ``dgclab.graph.models``).
        split: a fixed split for every seed (Planetoid files' standard split).
        progress: a tqdm bar over seeds.
        **fit_options: for ``fit`` (lr, weight_decay, max_epochs, patience).

    Returns:
        ``(runs, paths)``. runs: dataset, model, seed, params, val_epoch, val_selected,
        test_epoch, test_selected, epochs, seconds. paths (multipath models only): dataset,
        model, seed, cka (val-selected weights), cka_init (before training), cka_shuffled (the
        node-shuffled baseline of the trained paths).
    """
    from tqdm.auto import tqdm

    check_type("graph", graph, Graph)
    for name in models:
        build_model(name, 1, 1, 1)  # checks the name before any training
    adj = graph.adjacency()
    runs, paths = [], []
    for seed in tqdm(list(seeds), desc=graph.name, disable=not progress):
        seed_split = split if split is not None else random_split(graph, seed)
        for name in models:
            torch.manual_seed(seed)
            model = build_model(name, graph.x.shape[1], graph.num_classes, hidden)
            init = path_similarity(model, graph, adj) if hasattr(model, "paths") else None
            result = fit(model, graph, seed_split, adj=adj, **fit_options)
            runs.append({"dataset": graph.name, "model": name, "seed": seed,
                         "params": parameter_count(model), "val_epoch": result.val_epoch,
                         "val_selected": result.val_selected, "test_epoch": result.test_epoch,
                         "test_selected": result.test_selected,
                         "epochs": len(result.history), "seconds": result.seconds})
            if init is not None:
                trained = path_similarity(model, graph, adj)
                paths.append({"dataset": graph.name, "model": name, "seed": seed,
                              "cka": trained["cka"], "cka_init": init["cka"],
                              "cka_shuffled": trained["cka_shuffled"]})
    return (pd.DataFrame(runs),
            pd.DataFrame(paths, columns=["dataset", "model", "seed", "cka", "cka_init",
                                         "cka_shuffled"]))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, model), first-seen order kept.

    Columns: dataset, model, params, seeds, val_selected_mean/_std, test_selected_mean/_std,
    optimism (mean of test-selected minus val-selected), val_epoch, test_epoch (means).
    """
    need = {"dataset", "model", "seed", "params", "val_selected", "test_selected",
            "val_epoch", "test_epoch"}
    check_type("runs", runs, pd.DataFrame)
    if need - set(runs.columns):
        raise ValueError(f"runs must have the columns {sorted(need)}, got {list(runs.columns)}")
    if runs.empty:
        raise ValueError("runs has no rows to summarize")
    runs = runs.assign(optimism=runs["test_selected"] - runs["val_selected"])
    grouped = runs.groupby(["dataset", "model"], sort=False)
    out = grouped.agg(params=("params", "first"), seeds=("seed", "nunique"),
                      val_selected_mean=("val_selected", "mean"),
                      val_selected_std=("val_selected", "std"),
                      test_selected_mean=("test_selected", "mean"),
                      test_selected_std=("test_selected", "std"),
                      optimism=("optimism", "mean"), val_epoch=("val_epoch", "mean"),
                      test_epoch=("test_epoch", "mean"))
    return out.reset_index()


def paired_differences(runs: pd.DataFrame, baseline: str = "plain") -> pd.DataFrame:
    """Each model minus ``baseline`` on the same seed (same split, same init seed), val-selected.

    Columns: dataset, model, seeds, diff_mean, diff_std, wins (seeds where the model is
    strictly better), losses (strictly worse). Datasets without ``baseline`` are left out.
    """
    if not isinstance(runs, pd.DataFrame) or {"dataset", "model", "seed",
                                              "val_selected"} - set(runs.columns):
        raise ValueError("runs must be run_protocol's table (dataset, model, seed, "
                         "val_selected)")
    rows = []
    for dataset, group in runs.groupby("dataset", sort=False):
        table = group.pivot(index="seed", columns="model", values="val_selected")
        if baseline not in table:
            continue
        for model in dict.fromkeys(group["model"]):
            if model == baseline:
                continue
            diff = (table[model] - table[baseline]).dropna()
            rows.append({"dataset": dataset, "model": model, "seeds": len(diff),
                         "diff_mean": diff.mean(), "diff_std": diff.std(),
                         "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())})
    return pd.DataFrame(rows, columns=["dataset", "model", "seeds", "diff_mean", "diff_std",
                                       "wins", "losses"])


def format_summary(summary: pd.DataFrame) -> str:
    """A Markdown table of ``summarize``'s output (accuracies in %, mean ± std)."""
    check_type("summary", summary, pd.DataFrame)
    lines = ["| dataset | model | params | seeds | val-selected test acc | test-selected "
             "(released protocol) | optimism | epoch val / test |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary.itertuples():
        lines.append(
            f"| {r.dataset} | {r.model} | {r.params:,} | {r.seeds} | "
            f"{100 * r.val_selected_mean:.2f} ± {100 * r.val_selected_std:.2f} | "
            f"{100 * r.test_selected_mean:.2f} ± {100 * r.test_selected_std:.2f} | "
            f"+{100 * r.optimism:.2f} | {r.val_epoch:.0f} / {r.test_epoch:.0f} |")
    return "\n".join(lines)


def format_paired(paired: pd.DataFrame) -> str:
    """A Markdown table of ``paired_differences``'s output (differences in points)."""
    check_type("paired", paired, pd.DataFrame)
    lines = ["| dataset | model − plain | seeds | mean ± std (points) | wins / losses |",
             "|---|---|---:|---:|---:|"]
    for r in paired.itertuples():
        lines.append(f"| {r.dataset} | {r.model} | {r.seeds} | "
                     f"{100 * r.diff_mean:+.2f} ± {100 * r.diff_std:.2f} | "
                     f"{r.wins} / {r.losses} |")
    return "\n".join(lines)


def format_paths(paths: pd.DataFrame) -> str:
    """A Markdown table of ``run_protocol``'s path CKA (mean ± std over seeds)."""
    check_type("paths", paths, pd.DataFrame)
    lines = ["| dataset | model | CKA(a, b) trained | at init | nodes shuffled (chance) |",
             "|---|---|---:|---:|---:|"]
    for (dataset, model), g in paths.groupby(["dataset", "model"], sort=False):
        cells = [f"{g[c].mean():.3f} ± {g[c].std():.3f}"
                 for c in ("cka", "cka_init", "cka_shuffled")]
        lines.append(f"| {dataset} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
