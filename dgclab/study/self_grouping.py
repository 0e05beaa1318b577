"""The staged SG-CNN schedule: self-group a trained network step by step, fine-tuning between.

Guo, Zhang, Wang, Zhou, Dong, "Self-grouping convolutional neural networks", Neural Networks
2020, arXiv 2009.13803 (SPEC §4, step 5). The paper raises every layer's cumulative target
sparsity ``cp`` in steps of 10 (0.1, 0.2, ... 0.9) and retrains after each step (SGD, lr 0.01,
weight decay 1e-4); its fully connected layers stop at 0.6. Each step here is one call of
``dgclab.analysis.self_group`` (which regroups the masked weights and only shrinks the masks)
followed by a short fine-tuning with the ``Trainer`` (SGD nesterov, a per-iteration cosine from
``lr`` to 0 within the stage, ``epochs`` per stage).

The classifier: ``self_group`` groups convs (``nn.Conv2d``) only, so the classifier of a
dgclab ResNet (an ``nn.Linear``) stays dense at every stage and the paper's FC cap at 0.6 has
nothing to act on; the first conv (the stem, which reads the image) stays dense too.

The schedule folder ``out`` (every file written atomically)::

    schedule.json        the settings, pinned: a rerun with other settings is refused
    stages.csv           one row per finished stage (``STAGE_COLUMNS``), stage 0 = the input
    stage-01/            a Trainer run folder (config.json, metrics.csv, checkpoint.pt), plus
        groups.csv       the table of ``self_group`` at this stage (one row per cluster)
        before.json      test loss and accuracy right after grouping, before fine-tuning
        model.pt         the fine-tuned self-grouped model (``save_self_grouped``)
    stage-02/ ...

Resuming: rerun the same command. Stages with a row in ``stages.csv`` are done; the first
stage without one starts from the previous stage's ``model.pt`` (the input model for stage 1),
is grouped again (k-means with a fixed seed: the same masks), and its fine-tuning resumes from
its own checkpoint, so a killed schedule loses at most one epoch. ``model.pt`` files hold a
state dict, the base ``TrainConfig`` and the shape of every self-grouped conv's mask: the
structure is rebuilt from that small config (``load_self_grouped``), and every file is read with
``torch.load(weights_only=True)``.

Command line (``main``)::

    python -m dgclab.study.self_grouping --model data/dense_resnet8.pt --out runs/sg-resnet8
        [--stages 0.1,0.2,...] [--epochs 1] [--groups 16] [--lr 0.01] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from .._atomic import atomic_write_csv, atomic_write_text
from ..analysis import count_macs
from ..analysis.self_grouping import INITS, ChannelMask, _channel_mask, self_group, to_grouped
from ..checks import check_choice, check_float, check_int, check_type
from ..data import load_dataset
from ..train import Trainer, TrainConfig
from ..train.checkpoint import atomic_torch_save, load_checkpoint
from ..train.evaluation import evaluate_model, resolve_device
from ..train.run_folder import load_weights, model_of
from .folder import pin_settings

__all__ = [
    "FC_MAX_RATE",
    "PAPER_STAGES",
    "SELF_GROUPED_FORMAT",
    "STAGE_COLUMNS",
    "load_self_grouped",
    "run_self_grouping",
    "save_self_grouped",
    "main",
]

PAPER_STAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # cp = 10, 20, ... 90
FC_MAX_RATE = 0.6  # the paper's FC layers stop here (dgclab groups convs only; see above)
SELF_GROUPED_FORMAT = "dgclab-self-grouped/1"
EXPORT_FORMAT = "dgclab-model/1"  # dgclab.train.evaluate.export_model's files

SCHEDULE_JSON, STAGES_CSV = "schedule.json", "stages.csv"
GROUPS_CSV, BEFORE_JSON, MODEL_PT = "groups.csv", "before.json", "model.pt"
STAGE_COLUMNS = [
    "stage",  # 0: the input model, 1.. the steps of the schedule
    "rate",  # the cumulative target sparsity cp of the step (0 for the input)
    "kept",  # fraction of the grouped convs' (O, C) connections kept
    "clusters",  # clusters over all grouped convs
    "macs",  # count_macs of to_grouped(model) per image (the input: of the dense model)
    "params",  # parameters of to_grouped(model) (what the grouped execution stores)
    "test_loss_before", "test_acc_before",  # right after self_group, before fine-tuning
    "test_loss_after", "test_acc_after",  # after the stage's fine-tuning
    "finetune_seconds",  # wall time of the stage's epochs (Trainer's epoch_seconds, summed)
]


# --------------------------------------------------------------------------------------------
# Self-grouped models on disk
# --------------------------------------------------------------------------------------------


def save_self_grouped(model: nn.Module, config: TrainConfig, path: str | os.PathLike,
                      metrics: dict | None = None) -> Path:
    """Write a (self-grouped) model so that ``load_self_grouped`` can rebuild it.

    The file is a dict of tensors and plain values (``torch.load(weights_only=True)``):
    ``format``, ``config`` (the base ``TrainConfig``: the architecture before grouping),
    ``grouped`` (conv name -> ``[O, C]``, the shape of its ``ChannelMask``), ``model`` (the
    state dict, masks and clusters included) and ``metrics``. Written atomically.

    Args:
        model: a model of ``config``'s architecture, some convs self-grouped (or none).
        config: the ``TrainConfig`` that builds the architecture (``model_of``).
        path: the file to write.
        metrics: plain numbers to keep with it (e.g. the stage's row).

    Returns:
        ``path`` as a ``Path``.
    """
    check_type("model", model, nn.Module)
    check_type("config", config, TrainConfig)
    grouped = {name: list(_channel_mask(m).mask.shape) for name, m in model.named_modules()
               if _channel_mask(m) is not None}
    payload = {"format": SELF_GROUPED_FORMAT, "config": config.to_dict(), "grouped": grouped,
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "metrics": dict(metrics or {})}
    path = Path(path)
    atomic_torch_save(payload, path)
    return path


def load_self_grouped(path: str | os.PathLike,
                      device: str = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a model written by ``save_self_grouped`` (or a plain ``dgclab export`` file).

    The architecture is ``model_of(config)``; every conv named in ``grouped`` gets a
    ``ChannelMask`` of the saved shape, then the state dict (masks included) is loaded.

    Returns:
        ``(model, config, metrics)``: the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not one of the two formats, or weights that do not fit.
    """
    payload = load_checkpoint(path)  # torch.load(weights_only=True)
    fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if fmt not in (SELF_GROUPED_FORMAT, EXPORT_FORMAT):
        raise ValueError(f"{path} is neither a {SELF_GROUPED_FORMAT} nor a {EXPORT_FORMAT} "
                         f"file (found {fmt!r})")
    try:
        config = TrainConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its config: {err}") from None
    model = model_of(config)
    for name, shape in payload.get("grouped", {}).items():
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: grouped layer {name!r} is not in the model") from None
        out_channels, in_channels = shape
        parametrize.register_parametrization(
            conv, "weight", ChannelMask(torch.ones(out_channels, in_channels),
                                        torch.zeros(out_channels, dtype=torch.long)))
    load_weights(model, payload["model"], path)
    return model.to(device).eval(), config, dict(payload.get("metrics", {}))


# --------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------


def _check_stages(stages) -> tuple[float, ...]:
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence):
        raise TypeError(f"stages must be a sequence of rates, got {type(stages).__name__}")
    if len(stages) == 0:
        raise ValueError("stages must hold at least one rate, got stages=()")
    rates = tuple(check_float(f"stages[{i}]", r, min=0, max=1, min_inclusive=False,
                              max_inclusive=False) for i, r in enumerate(stages))
    if any(b <= a for a, b in zip(rates, rates[1:])):
        raise ValueError(f"stages must be strictly increasing (masks only shrink), got "
                         f"stages={list(rates)}")
    return rates


def _grouped_stats(model: nn.Module, input_size) -> dict:
    """MACs and parameters of the grouped execution, and the masks' kept fraction."""
    masks = [_channel_mask(m) for m in model.modules() if _channel_mask(m) is not None]
    runnable = to_grouped(model) if masks else model
    kept = sum(float(p.mask.sum()) for p in masks)
    total = sum(p.mask.numel() for p in masks)
    return {"kept": kept / total if total else 1.0,
            "clusters": sum(int(p.cluster.max()) + 1 for p in masks),
            "macs": int(count_macs(runnable, input_size)),
            "params": sum(p.numel() for p in runnable.parameters())}


def run_self_grouping(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    stages: Sequence[float] = PAPER_STAGES,
    groups: int = 16,
    epochs: int = 1,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    init: str = "random",
    seed: int = 0,
    data_root: str | None = None,
    subset: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    callbacks: Sequence = (),
    log: Callable[[str], None] | None = print,
    until: Callable[[pd.DataFrame], bool] | None = None,
) -> pd.DataFrame:
    """Run (or resume) the staged SG-CNN schedule on a trained model; see the module docstring.

    Every stage: ``self_group(model, groups, rate, seed=seed, init=init)`` on every conv but the
    stem, the test set evaluated, ``epochs`` epochs of fine-tuning (``Trainer``: SGD nesterov
    0.9, ``lr`` with a per-iteration cosine to 0, ``weight_decay``, ``batch_size``, the input
    model's dataset and augmentation, data order from ``seed``), the test set evaluated again
    (the Trainer's last row).

    Args:
        model: a ``dgclab export`` file (``python -m dgclab export RUN FILE``) or a
            ``save_self_grouped`` file.
        out: the schedule folder (created; resumed when it holds this schedule).
        stages: the cumulative target sparsities, strictly increasing, each in (0, 1); the
            paper's are ``PAPER_STAGES``.
        groups: clusters per layer (16 in the paper).
        epochs: fine-tuning epochs per stage (>= 1).
        lr, weight_decay: of the fine-tuning SGD (the paper's 0.01 and 1e-4).
        batch_size: of the fine-tuning.
        init: k-means init, one of ``dgclab.analysis.self_grouping.INITS``.
        seed: the k-means' ``random_state`` and the fine-tuning's seed.
        data_root: where the dataset lives (default: the input model's config's).
        subset: fine-tune on this many training images (and test on at most as many).
        device: of the fine-tuning and evaluation.
        progress: tqdm bars while fine-tuning.
        callbacks: ``Trainer`` callbacks of every stage's fine-tuning.
        log: receives one line per stage; None: silent.
        until: called with the stage table after every stage (finished now or earlier); the
            schedule stops after the first stage where it returns True (a later call with the
            same folder and a laxer ``until`` goes on from there). None: every stage.

    Returns:
        ``stages.csv`` as a DataFrame, columns ``STAGE_COLUMNS``: one row for the input (stage
        0) and one per finished stage.

    Raises:
        TypeError: a non-sequence ``stages``, a non-int ``groups``/``epochs``/``seed``.
        ValueError: empty or non-increasing ``stages``, a rate outside (0, 1), ``groups < 1``,
            ``epochs < 1``, a bad ``init``, an unreadable model file, or ``out`` holding a
            schedule with other settings.

    Example:
        >>> table = run_self_grouping("data/dense_resnet8.pt", "runs/sg",
        ...                           stages=(0.25, 0.5), epochs=1)  # doctest: +SKIP
        >>> table[["stage", "rate", "macs", "test_acc_before", "test_acc_after"]]  # doctest: +SKIP
    """
    say = log or (lambda line: None)
    rates = _check_stages(stages)
    groups = check_int("groups", groups, min=1)
    epochs = check_int("epochs", epochs, min=1)
    seed = check_int("seed", seed, min=0, max=2**32 - 1)
    init = check_choice("init", init, INITS)
    lr = check_float("lr", lr, min=0, min_inclusive=False)
    weight_decay = check_float("weight_decay", weight_decay, min=0)
    batch_size = check_int("batch_size", batch_size, min=1)
    if subset is not None:
        subset = check_int("subset", subset, min=1)
    model_path, out = Path(model), Path(out)
    if not model_path.is_file():
        raise FileNotFoundError(f"no model file at {model_path}")

    target = resolve_device(device)
    dense, base, _ = load_self_grouped(model_path, device=target)
    if any(_channel_mask(m) is not None for m in dense.modules()):
        raise ValueError(f"{model_path} is already self-grouped; start from a dense export")
    config = TrainConfig(**(base.to_dict() | dict(
        epochs=epochs, lr=lr, weight_decay=weight_decay, momentum=0.9, optimizer="sgd",
        batch_size=batch_size, seed=seed, subset=subset, device=device, record=False,
        data_root=data_root if data_root is not None else base.data_root))).validate()
    settings = {"model": str(model_path), "stages": list(rates), "groups": groups,
                "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                "batch_size": batch_size, "init": init, "seed": seed, "subset": subset}
    pin_settings(out / SCHEDULE_JSON, settings, "self-grouping schedule")

    _, test_set, info = load_dataset(config.dataset, config.data_root, subset, seed,
                                     download=config.download, augment=False)
    test_loader = DataLoader(test_set, config.eval_batch_size, shuffle=False)
    input_size = (1, info.in_channels, info.image_size, info.image_size)

    table = (pd.read_csv(out / STAGES_CSV) if (out / STAGES_CSV).is_file()
             else pd.DataFrame(columns=STAGE_COLUMNS))
    if not (table["stage"] == 0).any():
        row, _ = evaluate_model(dense, test_loader, input_size, record=False, device=target)
        table = pd.DataFrame([{
            "stage": 0, "rate": 0.0, **_grouped_stats(dense, input_size),
            "test_loss_before": row["test_loss"], "test_acc_before": row["test_acc"],
            "test_loss_after": row["test_loss"], "test_acc_after": row["test_acc"],
            "finetune_seconds": 0.0}], columns=STAGE_COLUMNS)
        atomic_write_csv(out / STAGES_CSV, table)
    say(f"self-grouping {model_path} in {out}: stage 0 (input) test acc "
        f"{float(table.loc[table.stage == 0, 'test_acc_after'].iloc[0]):.4f}")

    previous = model_path
    for stage, rate in enumerate(rates, start=1):
        folder = out / f"stage-{stage:02d}"
        if (table["stage"] == stage).any():
            previous = folder / MODEL_PT
            if until is not None and until(table[table["stage"] <= stage]):
                break
            continue
        model, _, _ = load_self_grouped(previous, device=target)
        grouping = self_group(model, groups=groups, rate=rate, seed=seed, init=init)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(folder / GROUPS_CSV, grouping)
        if (folder / BEFORE_JSON).is_file():  # measured before a kill; the model is the same
            before = json.loads((folder / BEFORE_JSON).read_text())
        else:
            row, _ = evaluate_model(model, test_loader, input_size, record=False,
                                    device=target)
            before = {"test_loss": row["test_loss"], "test_acc": row["test_acc"]}
            atomic_write_text(folder / BEFORE_JSON, json.dumps(before, indent=2) + "\n")

        trainer = Trainer(config, folder, resume=True, callbacks=callbacks,
                          progress=progress, model=model)
        history = trainer.fit()
        last = history.iloc[-1]
        result = {"stage": stage, "rate": rate, **_grouped_stats(model, input_size),
                  "test_loss_before": before["test_loss"], "test_acc_before": before["test_acc"],
                  "test_loss_after": float(last["test_loss"]),
                  "test_acc_after": float(last["test_acc"]),
                  "finetune_seconds": float(history["epoch_seconds"].sum())}
        save_self_grouped(model, base, folder / MODEL_PT, metrics=result)
        table = pd.concat([table, pd.DataFrame([result], columns=STAGE_COLUMNS)],
                          ignore_index=True)
        atomic_write_csv(out / STAGES_CSV, table)  # last: the row says the stage is done
        previous = folder / MODEL_PT
        say(f"stage {stage}/{len(rates)} rate {rate:g}: kept {result['kept']:.3f}, "
            f"{result['macs'] / 1e6:.2f}M MACs, test acc {result['test_acc_before']:.4f} -> "
            f"{result['test_acc_after']:.4f} after {epochs} epoch(s) "
            f"({result['finetune_seconds']:.0f} s)")
        if until is not None and until(table):
            break
    return table.astype({"stage": "int64", "clusters": "int64", "macs": "int64",
                         "params": "int64"}).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _rates(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stages must be comma-separated rates, got "
                                         f"{text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dgclab.study.self_grouping",
        description="The staged SG-CNN schedule (Guo et al., arXiv 2009.13803): self-group a "
                    "trained model at rising rates, fine-tuning after each. Resumable: run the "
                    "same command again to continue a killed schedule.",
    )
    p.add_argument("--model", required=True, help="a `dgclab export` file, e.g. "
                   "data/dense_resnet8.pt")
    p.add_argument("--out", required=True, help="schedule folder, e.g. runs/sg-resnet8")
    p.add_argument("--stages", type=_rates, default=list(PAPER_STAGES),
                   help="comma-separated cumulative rates (default: 0.1,0.2,...,0.9)")
    p.add_argument("--groups", type=int, default=16, help="clusters per layer (default 16)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per stage")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--init", default="random", choices=INITS, help="k-means init")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="default: the model's config's")
    p.add_argument("--subset", type=int, default=None, help="training images (quick runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads; 1 on a shared "
                   "machine")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dgclab.study.self_grouping``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        if args.threads <= 0:
            raise SystemExit(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        table = run_self_grouping(
            args.model, args.out, stages=args.stages, groups=args.groups, epochs=args.epochs,
            lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
            init=args.init, seed=args.seed, data_root=args.data_root, subset=args.subset,
            device=args.device, progress=not args.no_progress,
            log=lambda line: print(line, flush=True))
    except (TypeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", flush=True)
        return 2
    print(table.to_string(index=False), flush=True)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
