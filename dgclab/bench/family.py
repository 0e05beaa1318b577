"""The channel-grouping family side by side on full Fashion-MNIST (issue #18).

resnet_cifar(8, width 32), the accuracy bench's recipe and budget (``dgclab.bench.accuracy``:
SGD nesterov 0.9, lr 0.1 cosine, weight decay 1e-4, batch 128, crop + flip, ``--epochs`` 8), seven
methods (``METHODS``), ``--seeds`` seeds each:

* Trained from scratch, by the accuracy bench's own ``train_run`` (4 groups or heads each):
  ``dense``; ``group``, static groups (g 4, with a shuffle); ``lgc``, CondenseNet's learned
  group conv, condensed into real group convs after training (``dgclab.models.condense``);
  ``dgc``, heads 4, xi 0.75, lasso 1e-5; ``scc``, DSXplore's depthwise conv + sliding-channel
  conv. Their run folders go under ``--out``; finished runs are published where the accuracy
  bench publishes its own (``--accuracy-results``, ``data/bench-accuracy/<conv>-seed<k>``: one
  place for every trained-from-scratch run), and runs published there are reused, not trained
  again (the accuracy bench's dense, group and DGC runs).
* Derived from the trained dense net ``--dense`` (``data/dense_resnet8.pt``, the export of the
  accuracy bench's ``dense-seed0``) down to about the static-group net's MACs (the target:
  ``count_macs`` of the dense net's architecture with ``conv="group"``, 4 groups; 9,578,634):
  ``sg-cnn`` runs the staged SG-CNN schedule (``run_self_grouping`` with the settings of
  ``data/sg-cnn``: groups 16, cp 0.1 ... 0.9, one fine-tuning epoch of 10,000 training images
  per stage, lr 0.01) and stops after the first stage whose ``to_grouped`` MACs are at most
  ``MACS_TOLERANCE`` (1.1) x the target (``self_grouped_at``); it is executed grouped
  (``to_grouped``). ``merged`` is channel-similarity pruning: the ``merge_similar`` ratio of
  ``RATIOS`` whose merged MACs are closest to the target (``closest_ratio``: merging and
  counting, no training), then ``merge_example`` (one fine-tuning epoch on the full training
  set, lr 0.01; ``merged_at``). Seed k is the seed of the k-means, the similarity images and the
  fine-tuning's data order; every seed starts from the same dense net.

Resuming: rerun the same command. The work goes seed by seed (every method of seed 0 first),
and every (method, seed) resumes where it stopped: a from-scratch run from its last epoch, the
SG-CNN schedule from its last finished stage (a schedule that already went past the target,
e.g. all nine stages of ``python -m dgclab.study.self_grouping`` with the same settings copied to
``<out>/sg-cnn-seed0``, is read, not rerun), the merge's fine-tuning from its checkpoint.
Published work is skipped.

``--out`` (``~/.cache/dgclab/bench-family``, outside the repo) holds the run folders, with their
checkpoints: ``<conv>-seed<k>/`` (``lgc``, ``scc``, ...), ``sg-cnn-seed<k>/`` (the schedule
folder), ``merged-seed<k>/`` (the fine-tuning's run folder, with ``ratios.csv``, the ratio
search, and ``model.pt`` at the end). ``--results`` (``data/bench-family``, tracked) gets the
small files::

    derived.csv                  one row per finished (sg-cnn | merged, seed) (DERIVED_COLUMNS),
                                 written last: the row says the work is done
    sg-cnn.pt, merged.pt         seed 0's models (save_self_grouped / save_merged, < 2 MB);
                                 seed k > 0: sg-cnn-seed<k>.pt, merged-seed<k>.pt
    sg-cnn-seed<k>-stages.csv    the schedule's stages.csv up to the chosen stage
    merged-seed<k>-ratios.csv    the ratio search
    summary.csv                  the summary (SUMMARY_COLUMNS)

The summary (``summarize``, also ``--summary-only``) has one row per method: accuracy (mean and
std over the finished seeds below ``--seeds``), paper MACs (``count_macs``) and realized MACs
(as the accuracy bench records them; the derived models' MACs are static), parameters of the
executed model, ms per image at batch 1 and 64, and training minutes. Latency: every method's
executed model in one round robin (``forward_times``: eval, ``torch.no_grad()``, ``--threads``
threads, medians of ``--rounds`` rounds at batch 64 and 4x as many at batch 1); the
from-scratch kinds freshly built at the end of training and calibrated (``timing_model``; the
LGC one condensed), ``to_grouped`` of the SG-CNN export, the merged export. Training minutes of
the derived methods are the dense run's plus their own fine-tuning (``finetune_minutes`` says
how much of it). Methods without a finished seed are listed as missing.

Run it in the background (hours on 2 cores)::

    nohup python -m dgclab.bench family --no-progress > bench-family.log 2>&1 &
    python -m dgclab.bench family --methods lgc,scc --seeds 2 --no-progress
    python -m dgclab.bench family --summary-only [--threads 2] [--rounds 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from .._atomic import atomic_write_csv
from ..analysis import count_macs, merge_similar, to_grouped
from ..checks import check_float, check_int, check_type
from ..data import dataset_info, load_dataset
from ..models import condense
from ..study.self_grouping import (
    MODEL_PT, PAPER_STAGES, STAGES_CSV, load_self_grouped, run_self_grouping, save_self_grouped,
)
from ..train import TrainConfig
from ..train.run_folder import CONFIG, model_of, read_config
from . import accuracy
from .tables import markdown_table
from .transforms import forward_times, load_merged, merge_example, save_merged

__all__ = [
    "DERIVED", "DERIVED_COLUMNS", "MACS_TOLERANCE", "METHODS", "RATIOS", "SCRATCH",
    "SUMMARY_COLUMNS", "closest_ratio", "export_name", "group_macs", "main", "merged_at",
    "self_grouped_at", "summarize", "train_family",
]

SCRATCH = ("dense", "group", "lgc", "dgc", "scc")  # conv kinds, trained by the accuracy bench
DERIVED = ("sg-cnn", "merged")  # derived from the trained dense net
METHODS = SCRATCH + DERIVED
DEPTH, WIDTH, BATCH_SIZE = 8, 32, 128  # resnet_cifar(8, width 32), the accuracy bench's batch
GROUPS = 4  # the static-group net that sets the target MACs (the accuracy bench's heads=4)
MACS_TOLERANCE = 1.1  # SG-CNN stops at the first stage at most this x the target MACs
RATIOS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # merge_similar ratios 0.5 ... 0.95
SG_SETTINGS = dict(stages=PAPER_STAGES, groups=16, epochs=1, subset=10_000)  # as data/sg-cnn
MERGE_SETTINGS = dict(epochs=1, subset=None, similarity_images=2048)  # as data/channel-similarity
MAX_EXPORT_BYTES = 2_000_000  # a published model stays a small tracked file
DERIVED_CSV, RATIOS_CSV, SUMMARY_CSV = "derived.csv", "ratios.csv", "summary.csv"

DERIVED_COLUMNS = [
    "method",  # "sg-cnn" or "merged"
    "seed",  # of the k-means / similarity images and of the fine-tuning
    "test_acc",  # after the last fine-tuning
    "macs",  # count_macs per image of the executed model (to_grouped for SG-CNN)
    "params",  # parameters of the executed model
    "finetune_seconds",  # SG-CNN: every stage up to the chosen one; merged: its one run
    "base_run",  # the dense export's run (<accuracy-results>/<base_run>): its minutes count too
    "detail",  # "stage 8 of 9, cp 0.8" or "ratio 0.75"
    "export",  # the published model's file name in --results
]
SUMMARY_COLUMNS = [
    "method",
    "seeds",  # finished seeds below --seeds (0: missing)
    "acc_mean", "acc_std",  # test accuracy over those seeds (std: NaN for one seed)
    "paper_macs",  # count_macs per image (paper convention), mean over seeds
    "realized_macs",  # DGC: the recorded keep counts; the others: the paper count
    "params",  # parameters of the executed model (LGC condensed, SG-CNN to_grouped)
    "ms_per_image_b1", "ms_per_image_b64",  # eval forward, one round robin of all methods
    "train_minutes",  # wall time summed; derived methods: the dense run's plus fine-tuning
    "finetune_minutes",  # of which fine-tuning after the dense run (derived methods only)
    "detail",  # how the executed model came about; "missing" without a finished seed
]


# --------------------------------------------------------------------------------------------
# The target
# --------------------------------------------------------------------------------------------


def group_macs(config: TrainConfig, groups: int = GROUPS) -> int:
    """MACs per image (``count_macs``) of ``config``'s architecture with static group convs.

    The target of the derived methods: the static-group net of the accuracy bench is the dense
    net's architecture with ``conv="group"`` and ``heads=groups`` (9,578,634 for
    resnet_cifar(8, width 32) on Fashion-MNIST, 4 groups).
    """
    check_type("config", config, TrainConfig)
    grouped = dataclasses.replace(config, conv="group", heads=check_int("groups", groups, min=1))
    return int(count_macs(model_of(grouped), _input_size(config)))


def _input_size(config: TrainConfig) -> tuple[int, int, int, int]:
    info = dataset_info(config.dataset, config.data_root)
    return (1, info.in_channels, info.image_size, info.image_size)


def export_name(method: str, seed: int) -> str:
    """The published model's file name: ``<method>.pt`` for seed 0, else ``<method>-seed<k>.pt``."""
    if method not in DERIVED:
        raise ValueError(f"method must be one of {DERIVED}, got method={method!r}")
    return f"{method}.pt" if check_int("seed", seed, min=0) == 0 else f"{method}-seed{seed}.pt"


# --------------------------------------------------------------------------------------------
# SG-CNN: the schedule up to the target
# --------------------------------------------------------------------------------------------


def _first_at(table: pd.DataFrame, limit: float) -> int | None:
    """The first self-grouped stage (> 0) whose MACs are at most ``limit``, or None."""
    hits = table[(table["stage"] > 0) & (table["macs"] <= limit)]["stage"]
    return int(hits.min()) if len(hits) else None


def self_grouped_at(model: str | Path, run: str | Path, target_macs: float, *,
                    stages: Sequence[float] = PAPER_STAGES, groups: int = 16, epochs: int = 1,
                    subset: int | None = 10_000, batch_size: int = 128, seed: int = 0,
                    data_root: str | None = None, tolerance: float = MACS_TOLERANCE,
                    progress: bool = False, log: Callable[[str], None] | None = print) -> dict:
    """Run (or resume, or read) the SG-CNN schedule up to the first stage at the target MACs.

    The schedule is ``run_self_grouping(model, run, stages=stages, ...)``, stopped after the
    first stage whose ``to_grouped`` MACs are at most ``tolerance * target_macs`` (later stages
    only shrink the masks further). Its folder is pinned to all of ``stages``, so a schedule
    that went further (or all the way) is read, not rerun, and a stopped one can be continued.

    Args:
        model: a ``dgclab export`` file of a trained dense network.
        run: the schedule folder (``run_self_grouping``'s ``out``).
        target_macs: MACs per image to reach (the static-group net's).
        stages, groups, epochs, subset, batch_size, seed, data_root, progress: of
            ``run_self_grouping`` (``subset``: fine-tuning images per stage).
        tolerance: a stage qualifies at ``macs <= tolerance * target_macs``.
        log: receives the schedule's lines; None: silent.

    Returns:
        ``stage``, ``rate``, ``macs`` and ``params`` (of ``to_grouped``), ``test_acc`` (after
        the stage's fine-tuning), ``finetune_seconds`` (stages 1 to ``stage`` summed),
        ``model_path`` (the stage's ``model.pt``) and ``stages`` (the schedule's table up to
        the stage, a DataFrame).

    Raises:
        ValueError: a non-positive target or tolerance, or no stage of the finished schedule
            at the target (the message names the smallest MACs reached); what
            ``run_self_grouping`` raises.
    """
    target_macs = check_float("target_macs", target_macs, min=0, min_inclusive=False)
    tolerance = check_float("tolerance", tolerance, min=0, min_inclusive=False)
    run, limit = Path(run), tolerance * target_macs
    table = pd.read_csv(run / STAGES_CSV) if (run / STAGES_CSV).is_file() else None
    if table is None or _first_at(table, limit) is None:
        run_self_grouping(model, run, stages=stages, groups=groups, epochs=epochs,
                          subset=subset, batch_size=batch_size, seed=seed, data_root=data_root,
                          progress=progress, log=log,
                          until=lambda done: _first_at(done, limit) is not None)
        table = pd.read_csv(run / STAGES_CSV)
    stage = _first_at(table, limit)
    if stage is None:
        raise ValueError(f"no stage of the schedule in {run} reaches {limit:.0f} MACs "
                         f"({tolerance:g} x target_macs={target_macs:.0f}); its smallest: "
                         f"{int(table['macs'].min())}")
    upto = table[table["stage"] <= stage].sort_values("stage").reset_index(drop=True)
    row = upto.iloc[-1]
    return {"stage": stage, "rate": float(row["rate"]), "macs": int(row["macs"]),
            "params": int(row["params"]), "test_acc": float(row["test_acc_after"]),
            "finetune_seconds": float(upto["finetune_seconds"].sum()),
            "model_path": run / f"stage-{stage:02d}" / MODEL_PT, "stages": upto}


# --------------------------------------------------------------------------------------------
# Channel-similarity pruning: the ratio at the target
# --------------------------------------------------------------------------------------------


def closest_ratio(model: nn.Module, loader, target_macs: float, input_size: Sequence[int],
                  ratios: Sequence[float] = RATIOS) -> tuple[float, pd.DataFrame]:
    """The ``merge_similar`` ratio whose merged model's MACs are closest to ``target_macs``.

    Merges ``model`` at every ratio (no fine-tuning) and counts the merged model's MACs.

    Args:
        model: a dense ``resnet_cifar`` (or conv chain) that ``merge_similar`` accepts.
        loader: batches for the channel correlations (read once per ratio).
        target_macs: MACs per image to come closest to.
        input_size: (1, C, H, W) of one image, for ``count_macs``.
        ratios: the candidates, each in (0, 1).

    Returns:
        ``(ratio, table)``: the ratio with the smallest ``|macs - target_macs|`` (the first of
        the grid on a tie), and one row per ratio: ``ratio``, ``macs``, ``params``,
        ``distance`` (``macs - target_macs``).

    Raises:
        TypeError: ``ratios`` is not a sequence.
        ValueError: empty ``ratios``, a ratio outside (0, 1), a non-positive target.
    """
    check_type("model", model, nn.Module)
    target_macs = check_float("target_macs", target_macs, min=0, min_inclusive=False)
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence):
        raise TypeError(f"ratios must be a sequence of floats, got {type(ratios).__name__}")
    if len(ratios) == 0:
        raise ValueError("ratios must hold at least one ratio, got ratios=()")
    rows = []
    for i, ratio in enumerate(ratios):
        ratio = check_float(f"ratios[{i}]", ratio, min=0, max=1, min_inclusive=False,
                            max_inclusive=False)
        merged = merge_similar(model, loader, ratio=ratio, progress=False)
        macs = int(count_macs(merged, input_size))
        rows.append({"ratio": ratio, "macs": macs,
                     "params": sum(p.numel() for p in merged.parameters()),
                     "distance": macs - target_macs})
    table = pd.DataFrame(rows)
    best = int(table["distance"].abs().values.argmin())  # argmin: the first on a tie
    return float(table["ratio"].iloc[best]), table


def merged_at(model: str | Path, run: str | Path, target_macs: float, *,
              ratios: Sequence[float] = RATIOS, epochs: int = 1, subset: int | None = None,
              similarity_images: int = 2048, seed: int = 0, progress: bool = False,
              log: Callable[[str], None] | None = print) -> dict:
    """Merge a dense export at the ratio closest to the target MACs, fine-tune, save (resumable).

    The ratio search (``closest_ratio``, on the same seeded draw of ``similarity_images``
    unaugmented training images that ``merge_example`` uses) is written to ``run/ratios.csv``
    before the fine-tuning starts and read back on a resume; ``merge_example`` then merges at
    that ratio and fine-tunes in ``run`` (resuming from its checkpoint); its ``model.pt``,
    written last, marks the work done: a finished folder is read, not rerun.

    Args:
        model: a ``dgclab export`` file of a trained dense ``resnet_cifar``.
        run: the fine-tuning's run folder.
        target_macs: MACs per image to come closest to.
        ratios: the candidates of the search.
        epochs, subset, similarity_images, seed, progress: of ``merge_example``.
        log: receives progress lines; None: silent.

    Returns:
        ``merge_example``'s row (``ratio``, ``widths``, ``test_acc_finetuned``,
        ``macs_merged``, ``params_merged``, ``finetune_seconds``, ...) and ``model_path``
        (``run/model.pt``) and ``ratios`` (the search's table).
    """
    run, say = Path(run), log or (lambda line: None)
    if (run / RATIOS_CSV).is_file():
        search = pd.read_csv(run / RATIOS_CSV)
        ratio = float(search["ratio"].iloc[int(search["distance"].abs().values.argmin())])
    else:
        dense, base, _ = load_self_grouped(model)
        train, _, info = load_dataset(base.dataset, base.data_root, None, seed,
                                      download=base.download, augment=False)
        # merge_example's draw: the same images give the same clusters
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        loader = DataLoader(Subset(train, pick[:similarity_images].tolist()), 256)
        ratio, search = closest_ratio(dense, loader, target_macs, _input_size(base), ratios)
        atomic_write_csv(run / RATIOS_CSV, search)
        say(f"merge ratio closest to {target_macs:.0f} MACs: {ratio:g} "
            f"({int(search['macs'][search['ratio'] == ratio].iloc[0])} MACs)")
    if (run / MODEL_PT).is_file():  # merge_example writes it last
        _, _, row = load_merged(run / MODEL_PT)
    else:
        row = merge_example(model, run, ratio=ratio, epochs=epochs, subset=subset,
                            similarity_images=similarity_images, seed=seed, progress=progress,
                            log=say)
    return row | {"model_path": run / MODEL_PT, "ratios": search}


# --------------------------------------------------------------------------------------------
# Training and publishing
# --------------------------------------------------------------------------------------------


def _read_derived(results: Path) -> pd.DataFrame:
    path = results / DERIVED_CSV
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=DERIVED_COLUMNS)


def _derived_done(results: Path, method: str, seed: int) -> bool:
    table = _read_derived(results)
    row = table[(table["method"] == method) & (table["seed"] == seed)]
    return len(row) > 0 and (results / str(row["export"].iloc[0])).is_file()


def _record_derived(results: Path, row: dict) -> None:
    """Replace the (method, seed) row of ``derived.csv`` (the last write of a derived run)."""
    table = _read_derived(results)
    keep = table[~((table["method"] == row["method"]) & (table["seed"] == row["seed"]))]
    new = pd.DataFrame([row], columns=DERIVED_COLUMNS)
    table = pd.concat([keep, new], ignore_index=True) if len(keep) else new
    table["order"] = table["method"].map(DERIVED.index)
    table = table.sort_values(["order", "seed"]).drop(columns="order")
    atomic_write_csv(results / DERIVED_CSV, table)


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size >= MAX_EXPORT_BYTES:
        path.unlink()
        raise ValueError(f"{path} would be {size} bytes, not under MAX_EXPORT_BYTES="
                         f"{MAX_EXPORT_BYTES}: too large to track; not published")


def _accuracy_args(args) -> argparse.Namespace:
    """The accuracy bench's settings for ``accuracy.train_run``, from the family's."""
    return argparse.Namespace(out=args.out, results=args.accuracy_results,
                              data_root=args.data_root, epochs=args.epochs, depth=DEPTH,
                              width=WIDTH, batch_size=BATCH_SIZE, progress=args.progress)


def _publish_derived(method: str, seed: int, args, target_macs: float, base_run: str) -> None:
    """Run (or resume) a derived method for ``seed``, then publish its model and its row."""
    run = args.out / f"{method}-seed{seed}"
    log = (lambda line: print(line, flush=True))
    print(f"{run}: {method} to about {target_macs:.0f} MACs", flush=True)
    export = args.results / export_name(method, seed)
    if method == "sg-cnn":
        result = self_grouped_at(args.dense, run, target_macs, seed=seed,
                                 data_root=args.data_root, progress=args.progress, log=log,
                                 **SG_SETTINGS)
        model, config, _ = load_self_grouped(result["model_path"])
        row = {"test_acc": result["test_acc"], "macs": result["macs"],
               "params": result["params"], "finetune_seconds": result["finetune_seconds"],
               "detail": f"stage {result['stage']} of {len(SG_SETTINGS['stages'])}, "
                         f"cp {result['rate']:g}"}
        save = save_self_grouped
        atomic_write_csv(args.results / f"sg-cnn-seed{seed}-stages.csv", result["stages"])
    else:
        result = merged_at(args.dense, run, target_macs, seed=seed, progress=args.progress,
                           log=log, **MERGE_SETTINGS)
        model, config, _ = load_merged(result["model_path"])
        row = {"test_acc": result["test_acc_finetuned"], "macs": result["macs_merged"],
               "params": result["params_merged"],
               "finetune_seconds": result["finetune_seconds"],
               "detail": f"ratio {result['ratio']:g}"}
        save = save_merged
        atomic_write_csv(args.results / f"merged-seed{seed}-ratios.csv", result["ratios"])
    row |= {"method": method, "seed": seed, "base_run": base_run, "export": export.name}
    save(model, config, export, metrics=row)
    _check_size(export)
    _record_derived(args.results, row)
    print(f"{export}: test acc {row['test_acc']:.4f} at {row['macs']} MACs ({row['detail']})",
          flush=True)


def train_family(args) -> None:
    """Train, resume or skip every method of ``args.methods``, seed by seed.

    ``args``: ``main``'s namespace (``methods``, ``seeds``, ``epochs``, ``out``, ``results``,
    ``accuracy_results``, ``dense``, ``data_root``, ``progress``). From-scratch kinds go through
    ``accuracy.train_run``; the derived methods through ``self_grouped_at`` / ``merged_at``,
    to the static-group MACs of the dense export's architecture (``group_macs``).
    """
    base = None  # the dense export's config, read when a derived method has work to do
    for seed in range(args.seeds):
        for method in args.methods:
            if method in SCRATCH:
                accuracy.train_run(method, seed, _accuracy_args(args))
                continue
            if _derived_done(args.results, method, seed):
                print(f"{args.results / export_name(method, seed)}: finished, skipped",
                      flush=True)
                continue
            if base is None:
                base = load_self_grouped(args.dense)[1]
            # the dense export is its run's last epoch: that run's minutes count for both
            _publish_derived(method, seed, args, group_macs(base), f"dense-seed{base.seed}")


# --------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------


def _minutes(run: Path) -> float:
    """Wall minutes of a published run (its ``epoch_seconds`` summed); NaN when absent."""
    metrics = run / "metrics.csv"
    return float(pd.read_csv(metrics)["epoch_seconds"].sum()) / 60 if metrics.is_file() \
        else math.nan


def _missing(method: str) -> dict:
    return dict.fromkeys(SUMMARY_COLUMNS, math.nan) | {"method": method, "seeds": 0,
                                                       "detail": "missing"}


def _scratch_row(method: str, args) -> tuple[dict, nn.Module | None, tuple | None]:
    runs = [args.accuracy_results / f"{method}-seed{seed}" for seed in range(args.seeds)]
    runs = [run for run in runs if accuracy.is_finished(run, args.epochs)]
    if not runs:
        return _missing(method), None, None
    last = pd.DataFrame([pd.read_csv(run / "metrics.csv").iloc[-1] for run in runs])
    config = read_config(runs[0] / CONFIG)
    model = accuracy.timing_model(config)
    detail = {"dense": "", "group": f"static, {config.heads} groups",
              "lgc": f"{config.heads} groups, condensed", "scc": f"{config.heads} groups",
              "dgc": f"heads {config.heads}, xi {config.pruning_rate:g}"}.get(method, "")
    if method == "lgc":
        model = condense(model).eval()  # real group convs (the masks of every stage in force)
    row = {"method": method, "seeds": len(runs), "acc_mean": last["test_acc"].mean(),
           "acc_std": last["test_acc"].std(), "paper_macs": last["paper_macs"].mean(),
           "realized_macs": last["realized_macs"].mean(),
           "train_minutes": sum(_minutes(run) for run in runs) / len(runs),
           "finetune_minutes": math.nan, "detail": detail}
    return row, model, _input_size(config)


def _derived_row(method: str, args) -> tuple[dict, nn.Module | None, tuple | None]:
    table = _read_derived(args.results)
    done = table[(table["method"] == method) & (table["seed"] < args.seeds)]
    done = done[[(args.results / str(name)).is_file() for name in done["export"]]]
    if not len(done):
        return _missing(method), None, None
    export = args.results / str(done["export"].iloc[0])
    if method == "sg-cnn":
        masked, config, _ = load_self_grouped(export)
        model = to_grouped(masked).eval()  # one conv per cluster: what the MACs count
    else:
        model, config, _ = load_merged(export)
    base = [_minutes(args.accuracy_results / str(run)) for run in done["base_run"]]
    finetune = done["finetune_seconds"] / 60
    row = {"method": method, "seeds": len(done), "acc_mean": done["test_acc"].mean(),
           "acc_std": done["test_acc"].std(), "paper_macs": done["macs"].mean(),
           "realized_macs": done["macs"].mean(),
           "train_minutes": float((finetune + pd.Series(base, index=done.index)).mean()),
           "finetune_minutes": float(finetune.mean()),
           "detail": "; ".join(dict.fromkeys(done["detail"].astype(str)))}
    return row, model, _input_size(config)


def _shown(row) -> dict:
    """A summary row as the printed table shows it."""
    if row.seeds == 0:
        return {"method": row.method, "seeds": 0, "test accuracy (%)": "missing",
                **dict.fromkeys(["paper MACs", "realized MACs", "params", "ms/image (batch 1)",
                                 "ms/image (batch 64)", "train min", "of which fine-tuning"],
                                "–"), "detail": ""}
    std = f" ± {100 * row.acc_std:.2f}" if row.seeds > 1 else ""
    return {"method": row.method, "seeds": int(row.seeds),
            "test accuracy (%)": f"{100 * row.acc_mean:.2f}{std}",
            "paper MACs": f"{row.paper_macs / 1e6:.2f}M",
            "realized MACs": f"{row.realized_macs / 1e6:.2f}M",
            "params": f"{int(row.params):,}",
            "ms/image (batch 1)": f"{row.ms_per_image_b1:.2f}",
            "ms/image (batch 64)": f"{row.ms_per_image_b64:.3f}",
            "train min": "–" if math.isnan(row.train_minutes) else f"{row.train_minutes:.1f}",
            "of which fine-tuning": ("–" if math.isnan(row.finetune_minutes)
                                     else f"{row.finetune_minutes:.1f}"),
            "detail": row.detail}


def summarize(args) -> pd.DataFrame:
    """The family's table from the published results; written to ``--results/summary.csv``.

    ``args``: ``main``'s namespace (``methods``, ``seeds``, ``epochs``, ``results``,
    ``accuracy_results``, ``threads``, ``rounds``). Latency of every finished method's executed
    model in one ``forward_times`` round robin (module docstring).

    Returns:
        One row per method of ``args.methods``, in that order, columns ``SUMMARY_COLUMNS``;
        a method without a finished seed has ``seeds`` 0, NaNs and ``detail`` "missing".

    Raises:
        ValueError: finished methods on inputs of different sizes (one timing run needs one).
    """
    rows, models, sizes = [], {}, {}
    for method in args.methods:
        row, model, size = (_scratch_row if method in SCRATCH else _derived_row)(method, args)
        rows.append(row)
        if model is not None:
            models[method], sizes[method] = model, size
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the methods' inputs differ in size, got {sizes}")
    if models:
        torch.set_num_threads(args.threads)
        times = forward_times(models, next(iter(sizes.values())), batches=(1, 64),
                              rounds=args.rounds).set_index("model")
        for column in ("params", "ms_per_image_b1", "ms_per_image_b64"):
            table[column] = table["method"].map(times[column]).astype(float)
    atomic_write_csv(args.results / SUMMARY_CSV, table)

    print(f"\nresnet_cifar({DEPTH}, width {WIDTH}) on Fashion-MNIST, {args.epochs} epochs from "
          f"scratch; derived methods from {args.dense} to about the static-group MACs "
          f"(SG-CNN: the first stage at <= {MACS_TOLERANCE:g}x); latency: eval, "
          f"{args.threads} threads, all methods in one round robin\n")
    print(markdown_table(pd.DataFrame([_shown(r) for r in table.itertuples()])), flush=True)
    missing = table["method"][table["seeds"] == 0].tolist()
    if missing:
        print(f"\nmissing (no finished seed below {args.seeds}): {', '.join(missing)}",
              flush=True)
    return table


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dgclab.bench family``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench family", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="~/.cache/dgclab/bench-family",
                        help="run folders with checkpoints (outside the repo by default)")
    parser.add_argument("--results", default="data/bench-family",
                        help="tracked folder of the derived methods' results and the summary")
    parser.add_argument("--accuracy-results", default="data/bench-accuracy",
                        help="the accuracy bench's published runs (the from-scratch methods')")
    parser.add_argument("--dense", default="data/dense_resnet8.pt",
                        help="the trained dense export that sg-cnn and merged start from")
    parser.add_argument("--data-root", default="data",
                        help="datasets of the from-scratch runs and the SG-CNN schedule (the "
                             "merge reads the dense export's own, as merge_example does)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8, help="of the from-scratch runs")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, of {','.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads for training and latency")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--no-progress", action="store_true",
                        help="no tqdm bars (log lines only), e.g. under nohup")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        parser.error(f"--methods must be comma-separated names of {','.join(METHODS)}, got "
                     f"{args.methods!r}" + (f" (unknown: {','.join(bad)})" if bad else ""))
    if len(set(methods)) < len(methods):
        parser.error(f"--methods names a method twice, got {args.methods!r}")
    for name in ("seeds", "epochs", "threads", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive int, got {getattr(args, name)}")
    args.methods = methods
    args.out, args.results = Path(args.out).expanduser(), Path(args.results)
    args.accuracy_results, args.progress = Path(args.accuracy_results), not args.no_progress
    needs_dense = not args.summary_only and any(
        not _derived_done(args.results, m, seed) for m in methods if m in DERIVED
        for seed in range(args.seeds))
    if needs_dense and not Path(args.dense).is_file():
        parser.error(f"--dense {args.dense!r} is not a file (sg-cnn and merged start from it)")
    torch.set_num_threads(args.threads)
    if not args.summary_only:
        train_family(args)
    summarize(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
