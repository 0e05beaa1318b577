r"""Accuracy of dense vs static-group vs DGC ResNets on full Fashion-MNIST (issue #4).

The same recipe for all three (SGD nesterov 0.9, lr 0.1, cosine per iteration, weight decay
1e-4, crop + flip; DGC: heads 4, pruning rate 0.75, lasso 1e-5), ``--seeds`` seeds each. Every
(config, seed) is an ordinary run folder under ``--out``: the benchmark resumes unfinished runs
from their last epoch and skips finished ones, so it can span sessions; runs go seed by seed
(dense, group, dgc for seed 0 first), so a partial benchmark already compares all three.

The summary (also ``--summary-only``) reads the run folders, measures CPU latency per image
(eval, batch 64 and batch 1, interleaved medians) and prints a markdown table with the targets:
dense >= 92 %; DGC within 0.5 points of dense at <= 1/3 of its MACs (paper convention); DGC
above the static group conv of about the same MACs.

Run folders (with their checkpoints, several MB each) live under ``--out``, outside the repo by
default so that a fresh checkout does not lose a half-finished run; each finished run's
``config.json`` and ``metrics.csv`` (a few kB) are copied to ``--results`` (``data/bench-accuracy``,
tracked), which is what the summary reads. Latency is measured on freshly built models of the
same architecture with the final k (the cost of a forward does not depend on the trained
weights, except through which channels DGC keeps, which the final k bounds).

Every run also writes ``dynamics.csv`` (published with the rest): a ``MetricTracker`` frame
with the training loss and k of every step and, before training and at every epoch's end, the
probe metrics of its DGC layers on the first 512 test images (selection churn, saliency zeros
and spread, head overlap against chance; ``dgclab.analysis.dynamics``). A resumed run keeps the
rows of its finished epochs. And ``bn_recalibration.csv``: per epoch, the test accuracy again with
every BN's running statistics recomputed on 50 training batches (``dgclab.train.recalibrate_bn``),
which tells stale statistics from a worse model when the eval-mode accuracy dips, with their
mean drift and the share of DGC decisions recomputing changes; ``bn_drift.csv`` has both per
layer (``dgclab.analysis.bn_drift``, ``selection_churn``). The summary
puts the runs' dynamics side by side (``dgclab.bench.dynamics``: ``dynamics_summary.csv``,
``loss_around_k.csv`` and figures in ``--results``); ``--reference data/bench-accuracy`` adds
another results folder's seed-0 runs to its epoch-by-epoch accuracy (the dense and static-group
runs beside the ablations).

Besides the conv kinds, ``--configs`` takes the DGC ablations of ``ABLATIONS`` (issue #21): the
official recipe with one thing changed, labelled as such, e.g. at 8 epochs, seed 0::

    python -m dgclab.bench accuracy --configs dgc,dgc-ramp-half,dgc-flat-init,dgc-no-lasso \
        --seeds 1 --out ~/.cache/dgclab/bench-accuracy-ablations \
        --results data/bench-accuracy-ablations

Run it in the background (it takes hours on 2 cores)::

    nohup python -m dgclab.bench accuracy > bench-accuracy.log 2>&1 &
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from .._atomic import atomic_write_bytes, atomic_write_text
from ..analysis import (
    PROBE_METRICS, STEP_METRICS, MetricTracker, bn_drift, bn_swap, selection_churn,
)
from ..data import dataset_info, load_dataset
from ..layers import CONV_KINDS, dgc_layers, set_progress
from ..modes import eval_mode
from ..record import paused
from ..train import Trainer, TrainConfig, evaluate_model, recalibrate_bn
from ..train.checkpoint import rng_state, set_rng_state
from ..train.run_folder import (
    CHECKPOINT, CONFIG, load_weights, model_of, read_checkpoint, read_config,
)
from .dynamics import BN_DRIFT, DYNAMICS, RECALIBRATION, summarize_dynamics
from .network import calibrate
from .tables import markdown_table
from .timing import interleaved_medians

DEFAULT_CONVS = ("dense", "group", "dgc")  # the paper's comparison; any kind of CONV_KINDS runs

ABLATIONS = {  # name -> (conv kind, the TrainConfig fields changed from the recipe, what it asks)
    "dgc-ramp-half": ("dgc", {"schedule_end": 0.5}, "k final at 1/2 of training, not 3/4"),
    "dgc-flat-init": ("dgc", {"saliency_init": 0.1},
                      "saliency fc2 weights 10x smaller at init: every g starts near 1"),
    "dgc-no-lasso": ("dgc", {"lasso_lambda": 0.0}, "the saliency lasso off"),
}
PROBE_IMAGES = 512  # the first test images, the probe set of dynamics.csv
RECALIBRATION_BATCHES = 50  # training batches for them (6,400 images at the recipe's 128)


def _config(name: str, seed: int, args) -> TrainConfig:
    """The recipe for ``name``: a conv kind, or an ablation of ``ABLATIONS``."""
    conv, changes, _ = ABLATIONS.get(name, (name, {}, ""))
    config = TrainConfig(model=f"resnet{args.depth}", width=args.width, conv=conv, heads=4,
                         pruning_rate=0.75, dataset="fashion-mnist", data_root=args.data_root,
                         epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd", lr=0.1,
                         weight_decay=1e-4, lasso_lambda=1e-5, seed=seed, device="cpu")
    return dataclasses.replace(config, **changes)


def is_finished(run: Path, epochs: int) -> bool:
    """Whether the run folder ``run`` (or its published copy) has ``epochs`` rows of metrics."""
    metrics = run / "metrics.csv"
    return metrics.is_file() and len(pd.read_csv(metrics)) >= epochs


def _publish(run: Path, results: Path) -> None:
    """Copy a finished run's small files into the tracked results folder."""
    for name in ("config.json", "metrics.csv", DYNAMICS, RECALIBRATION, BN_DRIFT):
        if name in (DYNAMICS, RECALIBRATION, BN_DRIFT) and not (run / name).is_file():
            continue  # a run finished before runs wrote it
        atomic_write_bytes(results / run.name / name, (run / name).read_bytes())


class _Dynamics:
    """A ``MetricTracker`` over the run (per-step loss and k, every DGC layer's k and probe
    metrics), written to the run folder's ``dynamics.csv`` after every epoch."""

    def __init__(self, run: Path) -> None:
        self.path = run / DYNAMICS
        self.tracker: MetricTracker | None = None
        self.earlier = None  # rows of the epochs finished before a resume

    def on_train_begin(self, trainer) -> None:
        probe = _probe(trainer.test_set)
        metrics = ("inactive_channels",) + PROBE_METRICS + STEP_METRICS
        self.tracker = MetricTracker(trainer.model, metrics=metrics, probe=probe)
        if self.path.is_file() and trainer.epoch > 0:
            rows = pd.read_csv(self.path)
            self.earlier = rows[rows.epoch <= trainer.epoch]
        self.tracker.on_train_begin(trainer)

    def on_step_end(self, trainer, step, epoch, logs) -> None:
        self.tracker.on_step_end(trainer, step, epoch, logs)

    def on_epoch_end(self, trainer, epoch, row) -> None:
        self.tracker.on_epoch_end(trainer, epoch, row)
        frames = [f for f in (self.earlier, self.tracker.frame) if f is not None and len(f)]
        frame = pd.concat(frames, ignore_index=True) if frames else self.tracker.frame
        buf = io.StringIO()
        frame.to_csv(buf, index=False, float_format="%.6g")
        atomic_write_text(self.path, buf.getvalue())


class _Recalibrated:
    """After every epoch, the test accuracy with every BN's running statistics recomputed
    (``recalibrate_bn`` over the first ``RECALIBRATION_BATCHES`` training batches, in order)
    beside the run's own eval-mode accuracy, to the run folder's ``bn_recalibration.csv``: how
    much of a dip in eval-mode accuracy is stale BN statistics, averaged over an epoch in which
    k grew (issue #21). Beside it, why: ``bn_drift.csv`` has per BN how far its eval-mode output
    was from normalised (``analysis.bn_drift`` of the recomputed against the running
    statistics) and per DGC layer the fraction of the probe images' (head, channel) decisions
    that recomputing changed (``selection_changed``, ``analysis.selection_churn``); the
    recalibration file carries their means over layers. The model's buffers, mode and the RNG
    streams are restored afterwards, so the run trains exactly as it would without this."""

    def __init__(self, run: Path) -> None:
        self.path, self.drift_path = run / RECALIBRATION, run / BN_DRIFT
        self.rows: list[dict] = []
        self.drift: list[pd.DataFrame] = []
        self.probe: torch.Tensor | None = None

    def on_train_begin(self, trainer) -> None:
        self.probe = _probe(trainer.test_set)
        if trainer.epoch > 0:  # resumed: keep the finished epochs
            if self.path.is_file():
                rows = pd.read_csv(self.path)
                self.rows = rows[rows.epoch <= trainer.epoch].to_dict("records")
            if self.drift_path.is_file():
                rows = pd.read_csv(self.drift_path)
                self.drift = [rows[rows.epoch <= trainer.epoch]]
            if trainer.epoch not in {row["epoch"] for row in self.rows}:
                # killed between the checkpoint and this file: the model is still that epoch's
                self.on_epoch_end(trainer, trainer.epoch, trainer.history[-1])

    def on_epoch_end(self, trainer, epoch, row) -> None:
        model, config = trainer.model, trainer.config
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        training, rng = model.training, rng_state()
        try:
            before = _probe_selections(model, self.probe)
            recalibrate_bn(model, DataLoader(trainer.train_set, config.batch_size),
                           max_batches=RECALIBRATION_BATCHES)
            drift = bn_drift(model, buffers)
            after = _probe_selections(model, self.probe)
            test = DataLoader(trainer.test_set, config.eval_batch_size)
            recalibrated, _ = evaluate_model(model, test, trainer.input_size, record=False)
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            model.train(training)
            set_rng_state(rng)
        changed = pd.DataFrame([{"layer": name, "metric": "selection_changed",
                                 "value": selection_churn(before[name], after[name]).mean().item()}
                                for name in before], columns=["layer", "metric", "value"])
        long = drift.drop(columns="channels").melt(id_vars="layer", var_name="metric")
        frames = [long, changed] if len(changed) else [long]
        self.drift.append(pd.concat(frames, ignore_index=True).assign(epoch=epoch)[
            ["epoch", "layer", "metric", "value"]])
        self.rows.append({"epoch": epoch, "k_frac": row["k_frac"], "test_acc": row["test_acc"],
                          "test_acc_recalibrated": recalibrated["test_acc"],
                          "bn_drift": drift.drift.mean() if len(drift) else float("nan"),
                          "selection_changed": changed.value.mean() if len(changed)
                          else float("nan")})
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False,
                                                                    float_format="%.6g"))
        atomic_write_text(self.drift_path, pd.concat(self.drift, ignore_index=True).to_csv(
            index=False, float_format="%.6g"))


def _probe(test_set) -> torch.Tensor:
    """The probe images: the first ``PROBE_IMAGES`` of the test set, (N, C, H, W)."""
    return torch.stack([test_set[i][0] for i in range(min(PROBE_IMAGES, len(test_set)))])


def _probe_selections(model: torch.nn.Module, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every DGC layer's (N, heads, C_in) selection of the probe images, in eval mode."""
    layers = dgc_layers(model)
    device = next(model.parameters()).device
    chosen: dict[str, list] = {name: [] for name, _ in layers}
    with torch.no_grad(), eval_mode(model), paused():
        for chunk in probe.split(256):
            model(chunk.to(device))
            for name, layer in layers:
                chosen[name].append(layer.last_selection.cpu())
    return {name: torch.cat(sel) for name, sel in chosen.items()}


class _EpochLog:
    """One log line per epoch (the benchmark runs under nohup, without progress bars)."""

    def __init__(self, run: Path) -> None:
        self.run = run

    def on_epoch_end(self, trainer, epoch, row) -> None:
        print(f"{self.run} epoch {epoch}/{trainer.config.epochs}: test acc {row['test_acc']:.4f}, "
              f"train loss {row['train_loss']:.3f}, k {row['k_frac']:.2f}, "
              f"{row['epoch_seconds']:.0f} s", flush=True)


def train_run(conv: str, seed: int, args) -> Path:
    """Train (or resume) the run of ``conv`` and ``seed`` and publish it, unless published.

    Args:
        conv: a kind of ``CONV_KINDS`` or an ablation of ``ABLATIONS``.
        seed: the run's seed.
        args: the settings (``out``, ``results``, ``epochs``, ``progress`` and what
            ``_config`` reads: ``depth``, ``width``, ``data_root``, ``batch_size``), as ``main``
            parses them; ``dgclab.bench.family`` passes its own namespace.

    Returns:
        The published folder, ``args.results / f"{conv}-seed{seed}"``.
    """
    name = f"{conv}-seed{seed}"
    run, published = args.out / name, args.results / name
    if is_finished(published, args.epochs):
        print(f"{published}: finished, skipped", flush=True)
        return published
    if not is_finished(run, args.epochs):
        print(f"{run}: training", flush=True)
        Trainer(_config(conv, seed, args), run, resume=True, progress=args.progress,
                callbacks=[_EpochLog(run), _Dynamics(run), _Recalibrated(run)]).fit()
    _publish(run, args.results)
    return published


def train_all(args) -> None:
    """``train_run`` for every seed, and within a seed every conv of ``args.configs``."""
    for seed in range(args.seeds):
        for conv in args.configs:
            train_run(conv, seed, args)


def timing_model(config: TrainConfig) -> torch.nn.Module:
    """A freshly built model of ``config``'s architecture, as it runs at the end of training.

    ``set_progress(model, 1.0)`` puts every layer at its end of training (DGC: the final k;
    LGC: every condensing stage), and ``calibrate`` gives the BNs statistics of their own
    activations, as a trained net has (``bench.network``). Returns the model in eval mode.
    """
    model = model_of(config)
    set_progress(model, 1.0)
    info = dataset_info(config.dataset, config.data_root)
    return calibrate(model, (info.in_channels, info.image_size, info.image_size))


def _latency_ms(models: dict[str, torch.nn.Module], size, batch: int, rounds: int) -> dict[str, float]:
    x = torch.randn(batch, *size[1:])
    with torch.no_grad():
        t = interleaved_medians({name: (lambda m=m: m(x)) for name, m in models.items()},
                                rounds=rounds, warmup=2)
    return {name: v * 1e3 / batch for name, v in t.items()}


def summarized_runs(args) -> list[tuple[str, int]]:
    """``(config, seed)`` of every finished run published in ``args.results``: the configs of
    ``args.configs`` first, in their order, then every other config published there, each with
    all its seeds. A results folder's summary is that of all its runs, so that training or
    summarising some configs (or fewer seeds) never drops the others from ``summary.csv`` and
    the figures."""
    published: dict[str, list[int]] = {}
    for folder in args.results.glob("*-seed*"):
        conv, _, seed = folder.name.rpartition("-seed")
        if (folder.is_dir() and seed.isdigit() and (conv in CONV_KINDS or conv in ABLATIONS)
                and is_finished(folder, args.epochs)):
            published.setdefault(conv, []).append(int(seed))
    order = [c for c in args.configs if c in published]
    order += sorted(c for c in published if c not in args.configs)
    return [(conv, seed) for conv in order for seed in sorted(published[conv])]


def summarize(args) -> pd.DataFrame:
    """Print and write (``summary.csv``, ``dynamics_summary.csv``, the figures) the summary of
    every finished run in ``args.results`` (``summarized_runs``), latencies measured now."""
    rows, models = [], {}
    finished = summarized_runs(args)
    for conv, seed in finished:
        metrics = pd.read_csv(args.results / f"{conv}-seed{seed}" / "metrics.csv")
        last = metrics.iloc[-1]
        rows.append({"conv": conv, "seed": seed, "test_acc": last.test_acc,
                     "paper_macs": last.paper_macs, "realized_macs": last.realized_macs,
                     "train_minutes": metrics.epoch_seconds.sum() / 60})
        if conv not in models:
            models[conv] = timing_model(_config(conv, seed, args))
    names = [f"{conv}-seed{seed}" for conv, seed in finished]
    reference = None
    if args.reference is not None:
        reference = {f"{run.name} ({args.reference.name})": run
                     for run in sorted(args.reference.glob("*-seed0"))}
    summarize_dynamics(args.results, names, reference=reference)
    size = (1, 1, 28, 28)
    if not rows:
        print("no finished runs yet")
        return pd.DataFrame()
    runs = pd.DataFrame(rows)
    torch.set_num_threads(args.threads)
    lat64 = _latency_ms(models, size, 64, args.rounds)
    lat1 = _latency_ms(models, size, 1, args.rounds * 4)
    table = runs.groupby("conv", sort=False).agg(
        seeds=("seed", "count"), acc_mean=("test_acc", "mean"), acc_std=("test_acc", "std"),
        paper_macs=("paper_macs", "mean"), realized_macs=("realized_macs", "mean"),
        train_minutes=("train_minutes", "mean")).reset_index()
    table["ms_per_image_b64"] = table.conv.map(lat64)
    table["ms_per_image_b1"] = table.conv.map(lat1)
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(args.results / "summary.csv", buf.getvalue())

    print(f"\nresnet_cifar({args.depth}, width {args.width}) on Fashion-MNIST, {args.epochs} "
          f"epochs, batch {args.batch_size}; latency: eval, {args.threads} threads\n")
    print("| conv | seeds | test accuracy (%) | paper MACs | realized MACs | ms/image (batch 64) "
          "| ms/image (batch 1) | train min/run |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        std = f" ± {100 * r.acc_std:.2f}" if r.seeds > 1 else ""
        print(f"| {r.conv} | {r.seeds} | {100 * r.acc_mean:.2f}{std} | {r.paper_macs / 1e6:.2f}M "
              f"| {r.realized_macs / 1e6:.2f}M | {r.ms_per_image_b64:.3f} | {r.ms_per_image_b1:.2f} "
              f"| {r.train_minutes:.1f} |")
    by = table.set_index("conv")
    print()
    if "dense" in by.index:
        print(f"dense >= 92 %: {'met' if by.acc_mean['dense'] >= 0.92 else 'MISSED'} "
              f"({100 * by.acc_mean['dense']:.2f} %)")
    if {"dense", "dgc"} <= set(by.index):
        gap = 100 * (by.acc_mean["dense"] - by.acc_mean["dgc"])
        ratio = by.paper_macs["dgc"] / by.paper_macs["dense"]
        print(f"DGC within 0.5 points of dense: {'met' if gap <= 0.5 else 'MISSED'} "
              f"(gap {gap:.2f} points); at <= 1/3 of dense MACs: "
              f"{'met' if ratio <= 1 / 3 else 'MISSED'} (ratio {ratio:.3f})")
    if {"group", "dgc"} <= set(by.index):
        diff = 100 * (by.acc_mean["dgc"] - by.acc_mean["group"])
        print(f"DGC above static groups of about the same MACs: {'met' if diff > 0 else 'MISSED'} "
              f"({diff:+.2f} points; group {by.paper_macs['group'] / 1e6:.2f}M vs DGC "
              f"{by.paper_macs['dgc'] / 1e6:.2f}M MACs)")
    acc = runs.pivot(index="seed", columns="conv", values="test_acc")
    for name, (_, _, what) in ABLATIONS.items():
        if {name, "dgc"} <= set(by.index):  # paired: the seeds both have
            both = acc[[name, "dgc"]].dropna()
            seeds = ", ".join(map(str, both.index))
            if both.empty:
                print(f"ablation {name} ({what}): no seed in common with the official DGC")
                continue
            diff = 100 * (both[name] - both["dgc"]).mean()
            print(f"ablation {name} ({what}): {diff:+.2f} points against the official DGC "
                  f"(seed{'s' if len(both) > 1 else ''} {seeds})")
    return table


def bn_staleness(run: Path, data_root=None, batches: int = RECALIBRATION_BATCHES) -> pd.DataFrame:
    """Which BNs' stale running statistics cost a run's eval-mode test accuracy, at its latest
    checkpoint (``analysis.bn_swap``).

    The checkpoint's statistics are the stale ones; the fresh ones are recomputed on the first
    ``batches`` training batches as the bench's ``bn_recalibration.csv`` does (the run's seed,
    its augmentation). Returns ``bn_swap``'s table with two more rows first, ``all stale`` and
    ``all fresh`` (both columns their accuracy), and the checkpoint's ``epoch``. ``data_root``:
    where the dataset is (default the run's own ``data_root``).
    """
    run = Path(run)
    config = read_config(run / CONFIG)
    data_root = config.data_root if data_root is None else data_root
    state = read_checkpoint(run / CHECKPOINT)
    model = model_of(config)
    load_weights(model, state["model"], run / CHECKPOINT)
    torch.manual_seed(config.seed)
    train, test, info = load_dataset(config.dataset, data_root, config.subset, config.seed,
                                     download=False, augment=config.augment)
    size = (1, info.in_channels, info.image_size, info.image_size)
    test_batches = DataLoader(test, config.eval_batch_size)

    def accuracy(m) -> float:
        return evaluate_model(m, test_batches, size, record=False)[0]["test_acc"]

    stale = {k: v.clone() for k, v in model.state_dict().items()}
    all_stale = accuracy(model.eval())
    recalibrate_bn(model, DataLoader(train, config.batch_size), max_batches=batches)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    all_fresh = accuracy(model)
    table = bn_swap(model, stale, fresh, accuracy)
    ends = pd.DataFrame([{"layer": "all stale", "only_fresh": all_stale, "only_stale": all_stale},
                         {"layer": "all fresh", "only_fresh": all_fresh, "only_stale": all_fresh}])
    return pd.concat([ends, table], ignore_index=True).assign(epoch=state["epoch"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="~/.cache/dgclab/bench-accuracy",
                        help="run folders with checkpoints (outside the repo by default)")
    parser.add_argument("--results", default="data/bench-accuracy",
                        help="tracked folder for finished runs' config.json and metrics.csv")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONVS),
                        help=f"comma-separated conv kinds, of {','.join(CONV_KINDS)}, or "
                             f"ablations, of {','.join(ABLATIONS)}, to train; the summary shows "
                             f"them first, then every other finished run of --results")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and latency")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--reference", default=None,
                        help="another results folder whose seed-0 runs join the epoch-by-epoch "
                             "accuracy table of dynamics_summary.csv (e.g. data/bench-accuracy)")
    parser.add_argument("--progress", action="store_true", help="tqdm bars (off: log lines)")
    parser.add_argument("--bn-swap", metavar="RUN", default=None,
                        help="only this: which BNs' stale statistics cost the run folder RUN its "
                             "eval-mode accuracy at its latest checkpoint (bn_staleness); the "
                             "table goes to --results as bn_swap-<run>-epoch<N>.csv")
    args = parser.parse_args(argv)
    if args.bn_swap is not None:
        torch.set_num_threads(args.threads)
        run = Path(args.bn_swap).expanduser()
        table = bn_staleness(run, args.data_root)
        epoch = int(table.epoch.iloc[0])
        path = Path(args.results) / f"bn_swap-{run.name}-epoch{epoch}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
        print(f"{run}, epoch {epoch}: test accuracy with only one BN's statistics fresh (the "
              f"others stale) and only one stale (the others fresh)\n")
        print(markdown_table(table.drop(columns="epoch")))
        print(f"\nwritten to {path}")
        return 0
    args.configs = [c for c in args.configs.split(",") if c]
    args.out, args.results = Path(args.out).expanduser(), Path(args.results)
    args.reference = None if args.reference is None else Path(args.reference)
    bad = [c for c in args.configs if c not in CONV_KINDS and c not in ABLATIONS]
    if bad or args.seeds <= 0 or args.epochs <= 0:
        parser.error(f"configs must come from {tuple(CONV_KINDS) + tuple(ABLATIONS)} (got "
                     f"{bad}), seeds and epochs positive")
    torch.set_num_threads(args.threads)
    if not args.summary_only:
        train_all(args)
    summarize(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
