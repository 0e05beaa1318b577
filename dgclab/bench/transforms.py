"""Measured examples of the two model transformations on a trained dense ResNet (issue #17).

* SG-CNN (Guo et al., arXiv 2009.13803; ``dgclab.analysis.self_group``): reads a finished (or
  partly finished) staged schedule (``python -m dgclab.study.self_grouping``) and times every
  stage's masked dense model (the authors' execution) against ``to_grouped`` of it (each
  cluster over its own channels; in CPU inference one C++ call a layer), next to the dense
  input. Its stage table is copied to ``--sg-results``.
* Channel-similarity pruning (Zhang et al., arXiv 1908.02620, dgclab's reading of the metric;
  ``dgclab.analysis.merge_similar``): merges the dense model at ``--ratio`` (correlations from
  ``--similarity-images`` unaugmented training images), evaluates it, fine-tunes it with the
  ``Trainer`` (SGD nesterov, lr 0.01 cosine, wd 1e-4, ``--epochs`` on ``--subset`` images; a
  resumable run folder under ``--merge-out``) and times it against the dense model. A merged
  ResNet is saved as its base config plus ``block_widths`` (``load_merged`` rebuilds it, with
  ``torch.load(weights_only=True)``).

Timing: ``interleaved_medians`` of one forward (eval, ``torch.no_grad()``, ``--threads``
threads) of every model together, at batch 1 and batch 64, reported per image. MACs are
``count_macs`` per image of the executed model (``to_grouped`` for SG-CNN).

Command line (``main``; registered as ``python -m dgclab.bench transforms``)::

    python -m dgclab.bench transforms --model data/dense_resnet8.pt --sg-run runs/sg-resnet8 \\
        --merge-out runs/cs-resnet8 --ratio 0.5 [--epochs 1] [--subset 10000] [--threads 2]
    python -m dgclab.bench transforms --layer-sweep [--threads 2] [--rounds 15]

``--layer-sweep`` (``layer_sweep``) times one self-grouped 3x3 conv against its masked conv at
several widths, rates and batches: where the clusters' convs are big enough to pay.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from .._atomic import atomic_write_bytes, atomic_write_csv
from ..analysis import count_macs, merge_similar, to_grouped
from ..analysis.channel_similarity import block_widths, resize_blocks_
from ..data import dataset_info, load_dataset
from ..layers import cpu_kernel, tuning
from ..study.self_grouping import STAGES_CSV, load_self_grouped
from ..train import Trainer, TrainConfig
from ..train.checkpoint import atomic_torch_save, load_checkpoint
from ..train.evaluation import evaluate_model
from ..train.run_folder import load_weights, model_of
from .tables import markdown_table
from .timing import WithoutKernel, WithTuning, interleaved_medians

__all__ = ["MERGED_FORMAT", "WithTuning", "WithoutKernel", "forward_times", "layer_sweep",
           "load_merged", "main", "merge_example", "save_merged", "time_schedule"]

MERGED_FORMAT = "dgclab-merged/1"
BATCHES = (1, 64)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def forward_times(models: dict[str, nn.Module], input_size: Sequence[int],
                  batches: Sequence[int] = BATCHES, rounds: int = 15) -> pd.DataFrame:
    """Milliseconds per image of one eval forward of each model, measured round-robin.

    Args:
        models: name -> model (put in eval mode here).
        input_size: (1, C, H, W) of one image.
        batches: batch sizes to time.
        rounds: rounds of ``interleaved_medians`` (batch 1 gets 4x as many).

    Returns:
        One row per model: ``model``, ``macs`` (``count_macs`` per image), ``params``, and
        ``ms_per_image_b<batch>`` per batch.
    """
    rows = {name: {"model": name, "macs": int(count_macs(m, input_size)),
                   "params": sum(p.numel() for p in m.parameters())}
            for name, m in models.items()}
    for m in models.values():
        m.eval()
    for batch in batches:
        x = torch.randn(batch, *input_size[1:])  # (B, C, H, W)
        with torch.no_grad():
            medians = interleaved_medians({n: (lambda m=m: m(x)) for n, m in models.items()},
                                          rounds=rounds * (4 if batch == 1 else 1), warmup=2)
        for name, seconds in medians.items():
            rows[name][f"ms_per_image_b{batch}"] = seconds * 1e3 / batch
    return pd.DataFrame(list(rows.values()))


def time_schedule(dense: nn.Module, run: Path, input_size: Sequence[int],
                  rounds: int = 15, stages: Sequence[int] | None = None) -> pd.DataFrame:
    """Forward times of a self-grouping schedule's finished stages (or of ``stages`` among
    them): the dense input, and per stage its masked model (``masked-<stage>``) and
    ``to_grouped`` of it: each cluster over its own channels (``grouped-<stage>``: in one call of
    the C++ kernel where it is built; ``grouped-pt-<stage>`` beside it, PyTorch's one conv per
    cluster) and all clusters padded into one grouped conv (``padded-<stage>``).
    """
    table = pd.read_csv(run / STAGES_CSV)
    finished = [int(s) for s in table["stage"][table["stage"] > 0]]
    models: dict[str, nn.Module] = {"dense": dense}
    for stage in (finished if stages is None else [s for s in stages if s in finished]):
        masked, _, _ = load_self_grouped(run / f"stage-{stage:02d}" / "model.pt")
        models[f"masked-{stage}"] = masked
        models[f"grouped-{stage}"] = to_grouped(masked).eval()
        if cpu_kernel.available():
            models[f"grouped-pt-{stage}"] = WithoutKernel(to_grouped(masked).eval())
        models[f"padded-{stage}"] = to_grouped(masked, "padded").eval()
    return forward_times(models, input_size, rounds=rounds)


SWEEP_LAYERS = ((64, 28), (128, 14), (256, 14), (512, 7))  # (channels, map side)
SWEEP_RATES = (0.5, 0.75)


def layer_sweep(layers: Sequence[tuple[int, int]] = SWEEP_LAYERS,
                rates: Sequence[float] = SWEEP_RATES, groups: int = 16,
                batches: Sequence[int] = BATCHES, rounds: int = 15,
                seed: int = 0) -> pd.DataFrame:
    """Where a self-grouped conv's executions beat its masked dense conv, one layer at a time.

    Each layer is a 3x3 conv (C -> C, padding 1, no bias, seeded Gaussian weights) grouped by
    ``self_group(groups, rate)``; its masked dense conv (the authors' execution) is timed
    round-robin against ``to_grouped`` of it, ``execution="loop"`` (each cluster over its own
    channels: every cluster in one call of the C++ kernel where it is built, and beside it
    PyTorch's one conv per cluster, ``loop-pt``), ``"padded"`` (one grouped conv at the
    padded MACs), ``"dense"`` (the clusters' weights in one dense conv) and ``"auto"`` with
    tuning on (``tuned``: the faster of loop and dense, measured in the warm-up calls), eval
    and ``torch.no_grad()``.

    Returns:
        One row per (channels, side, rate, batch): ``kept`` (MACs of the loop over the dense
        conv's), ``filters_per_cluster`` (mean), ``padded_macs`` (the padded execution's MACs
        over the dense conv's), ``masked_ms`` (per call), ``loop_vs_masked`` /
        ``padded_vs_masked`` / ``dense_vs_masked`` / ``tuned_vs_masked`` /
        ``loop_pt_vs_masked`` (time ratios; below 1 is faster than the masked conv) and
        ``tuned_choice`` (what the measurement chose).
    """
    from ..analysis import self_group

    kernel = cpu_kernel.available()
    rows = []
    for channels, side in layers:
        for rate in rates:
            torch.manual_seed(seed)
            masked = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False))
            self_group(masked, groups=groups, rate=rate, layers=["0"], seed=seed)
            masked.eval()
            runs = {"masked": masked, "loop": to_grouped(masked, "loop").eval(),
                    "padded": to_grouped(masked, "padded").eval(),
                    "dense": to_grouped(masked, "dense").eval(),
                    "tuned": WithTuning(to_grouped(masked, "auto").eval())}
            if kernel:
                runs["loop-pt"] = WithoutKernel(to_grouped(masked, "loop").eval())
            layer = runs["loop"][0]
            kept = sum(c.in_channels * c.out_channels for c in layer.convs) / channels ** 2
            for batch in batches:
                x = torch.randn(batch, channels, side, side)  # (B, C, H, W)
                with torch.no_grad():
                    t = interleaved_medians({n: (lambda m=m: m(x)) for n, m in runs.items()},
                                            rounds=rounds * (4 if batch == 1 else 1), warmup=2)
                row = {"channels": channels, "side": side, "rate": rate, "batch": batch,
                       "clusters": layer.channel_groups, "kept": round(kept, 3),
                       "filters_per_cluster": channels / layer.channel_groups,
                       "padded_macs": round(kept * layer.padded_fraction, 2),
                       "masked_ms": round(t["masked"] * 1e3, 3)}
                row.update({f"{e.replace('-', '_')}_vs_masked": round(t[e] / t["masked"], 2)
                            for e in runs if e != "masked"})
                row["tuned_choice"] = tuning.remembered(runs["tuned"].model[0]._tuning_key(x))
                rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Merged ResNets on disk
# --------------------------------------------------------------------------------------------


def save_merged(model: nn.Module, config: TrainConfig, path, metrics: dict | None = None) -> Path:
    """Write a merged ResNet: base ``config``, ``block_widths``, state dict, ``metrics``."""
    payload = {"format": MERGED_FORMAT, "config": config.to_dict(),
               "widths": block_widths(model),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "metrics": dict(metrics or {})}
    path = Path(path)
    atomic_torch_save(payload, path)
    return path


def load_merged(path) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a ``save_merged`` file: ``model_of(config)``, ``resize_blocks_``, the weights.

    Returns:
        ``(model, config, metrics)``, the model in eval mode on the CPU.
    """
    payload = load_checkpoint(path)  # torch.load(weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MERGED_FORMAT:
        raise ValueError(f"{path} is not a {MERGED_FORMAT} file")
    config = TrainConfig.from_dict(payload["config"])
    model = resize_blocks_(model_of(config), payload["widths"])
    load_weights(model, payload["model"], path)
    return model.eval(), config, dict(payload["metrics"])


# --------------------------------------------------------------------------------------------
# The channel-similarity example
# --------------------------------------------------------------------------------------------


def merge_example(model_path, out, *, ratio: float = 0.5, epochs: int = 1,
                  subset: int | None = None, similarity_images: int = 2048, lr: float = 0.01,
                  seed: int = 0, progress: bool = False, log=print) -> dict:
    """Merge a dense export at ``ratio``, evaluate, fine-tune (resumable), save; one row.

    Args:
        model_path: a ``dgclab export`` file of a dense ``resnet_cifar``.
        out: the fine-tuning's run folder (``model.pt`` is written there at the end).
        ratio: fraction of every block's inner channels to remove (``merge_similar``).
        epochs: fine-tuning epochs (lr ``lr`` with a cosine to 0, SGD nesterov, wd 1e-4).
        subset: fine-tune on this many training images (None: all).
        similarity_images: training images (seeded draw, no augmentation) for the correlations.

    Returns:
        ``ratio``, ``widths`` (the blocks' inner widths), ``test_acc_dense``,
        ``test_acc_merged`` (before fine-tuning), ``test_acc_finetuned``, ``macs_dense``,
        ``macs_merged``, ``params_dense``, ``params_merged``, ``epochs``, ``subset``,
        ``finetune_seconds``.
    """
    out = Path(out)
    dense, base, _ = load_self_grouped(model_path)
    config = TrainConfig(**(base.to_dict() | dict(
        epochs=epochs, lr=lr, weight_decay=1e-4, momentum=0.9, optimizer="sgd", seed=seed,
        subset=subset, device="cpu", record=False))).validate()
    train, test, info = load_dataset(base.dataset, base.data_root, None, seed,
                                     download=base.download, augment=False)
    input_size = (1, info.in_channels, info.image_size, info.image_size)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    similarity = DataLoader(Subset(train, pick[:similarity_images].tolist()), 256)
    test_loader = DataLoader(test, 256)

    def acc(model):
        return evaluate_model(model, test_loader, input_size, record=False)[0]["test_acc"]

    merged = merge_similar(dense, similarity, ratio=ratio)
    row = {"ratio": ratio, "widths": " ".join(f"{n}:{w}" for n, w in
                                              block_widths(merged).items()),
           "test_acc_dense": acc(dense), "test_acc_merged": acc(merged),
           "macs_dense": int(count_macs(dense, input_size)),
           "macs_merged": int(count_macs(merged, input_size)),
           "params_dense": sum(p.numel() for p in dense.parameters()),
           "params_merged": sum(p.numel() for p in merged.parameters())}
    log(f"merged at ratio {ratio}: {row['widths']}; test acc {row['test_acc_dense']:.4f} -> "
        f"{row['test_acc_merged']:.4f}; fine-tuning {epochs} epoch(s) in {out}")
    history = Trainer(config, out, resume=True, progress=progress, model=merged.train()).fit()
    row |= {"test_acc_finetuned": float(history["test_acc"].iloc[-1]), "epochs": epochs,
            "subset": subset, "finetune_seconds": float(history["epoch_seconds"].sum())}
    save_merged(merged, base, out / "model.pt", metrics=row)
    log(f"fine-tuned: test acc {row['test_acc_finetuned']:.4f} "
        f"({row['finetune_seconds']:.0f} s)")
    return row


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dgclab.bench transforms``; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m dgclab.bench transforms", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="data/dense_resnet8.pt", help="the dense export")
    p.add_argument("--sg-run", default=None, help="a self-grouping schedule folder to time")
    p.add_argument("--sg-results", default="data/sg-cnn", help="where its tables go")
    p.add_argument("--merge-out", default=None,
                   help="run folder of the merged model's fine-tuning (no merge without it)")
    p.add_argument("--merge-results", default="data/channel-similarity")
    p.add_argument("--ratio", type=float, default=0.5, help="merge_similar's ratio")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs after merging")
    p.add_argument("--subset", type=int, default=None, help="fine-tuning images")
    p.add_argument("--similarity-images", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2, help="torch threads for the timing")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--timing-stages", default=None,
                   help="comma-separated schedule stages to time (default: every finished one)")
    p.add_argument("--timing-out", default="timing.csv",
                   help="file name of the schedule's timing table in --sg-results")
    p.add_argument("--layer-sweep", action="store_true",
                   help="time one self-grouped conv against its masked conv over widths, rates "
                        "and batches (layer_sweep; needs no model)")
    args = p.parse_args(argv)
    if args.sg_run is None and args.merge_out is None and not args.layer_sweep:
        p.error("nothing to do: pass --sg-run, --merge-out, --layer-sweep or any of them")
    if args.layer_sweep:
        torch.set_num_threads(args.threads)
        print(markdown_table(layer_sweep(rounds=args.rounds)), "\n", flush=True)
        if args.sg_run is None and args.merge_out is None:
            return 0

    dense, base, _ = load_self_grouped(args.model)
    info = dataset_info(base.dataset, base.data_root)
    input_size = (1, info.in_channels, info.image_size, info.image_size)
    if args.merge_out is not None:
        torch.set_num_threads(args.train_threads)
        row = merge_example(args.model, args.merge_out, ratio=args.ratio, epochs=args.epochs,
                            subset=args.subset, similarity_images=args.similarity_images,
                            log=lambda line: print(line, flush=True))
        merged, _, _ = load_merged(Path(args.merge_out) / "model.pt")
        torch.set_num_threads(args.threads)
        times = forward_times({"dense": dense, f"merged-{args.ratio:g}": merged}, input_size,
                              rounds=args.rounds)
        results = Path(args.merge_results)
        atomic_write_csv(results / "merge.csv", pd.DataFrame([row]))
        atomic_write_csv(results / "timing.csv", times)
        print(markdown_table(pd.DataFrame([row])), "\n", flush=True)
        print(markdown_table(times), "\n", flush=True)
    if args.sg_run is not None:
        torch.set_num_threads(args.threads)
        run, results = Path(args.sg_run), Path(args.sg_results)
        stages = (None if args.timing_stages is None
                  else [int(s) for s in args.timing_stages.split(",") if s])
        times = time_schedule(dense, run, input_size, rounds=args.rounds, stages=stages)
        atomic_write_bytes(results / STAGES_CSV, (run / STAGES_CSV).read_bytes())
        atomic_write_csv(results / args.timing_out, times)
        print(markdown_table(pd.read_csv(run / STAGES_CSV)), "\n", flush=True)
        print(markdown_table(times), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
