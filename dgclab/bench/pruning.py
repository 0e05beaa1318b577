"""Forward time before and after removing the dead filters of the sparsity study's networks.

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495: the payoff of implicit sparsity is a smaller network for free;
removing the dead filters of their SelecSLS-60 took its forward pass from 29 to 25 ms at
unchanged error. This asks the same of dgclab's study (issue #15). For every finished BasicNet
run of a study folder (``python -m dgclab study sparsity``; the run folders with their
checkpoints, which stay out of git), ``remove_dead_filters`` at the study's rule (|γ| < 1e-3),
then the CPU forward time of both networks: eval, no autograd, ``--threads`` threads,
interleaved medians (round robin, so that a noisy neighbour slows both alike), per image at
batch 1 and batch 64. The study's ``pruning.csv`` has the change in logits and accuracy; this
adds the clock.

Prints a markdown table and writes ``pruning_time.csv`` (atomically) to ``--results``
(default: the study folder)::

    python -m dgclab.bench pruning --study data/sparsity-fmnist/pilot-budget

Runs with nothing to remove are listed without timings (the network is unchanged).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from .._atomic import atomic_write_csv
from ..analysis import remove_dead_filters
from ..data import dataset_info
from ..train import load_run
from .timing import interleaved_medians

__all__ = ["time_pruning", "COLUMNS"]

COLUMNS = ["run", "filters_before", "filters_removed", "macs_before", "macs_after",
           "ms_before_b1", "ms_after_b1", "ratio_b1", "ms_before_b64", "ms_after_b64",
           "ratio_b64"]
GAMMA_THRESHOLD = 1e-3  # the study's rule (dgclab.study.grid.GAMMA_THRESHOLD)


def time_pruning(study: Path, rounds: int = 15) -> pd.DataFrame:
    """One row per finished BasicNet run folder of ``study`` (``COLUMNS``).

    ``ms_*`` are milliseconds per image, ``ratio_*`` after / before; NaN where no filter was
    removed.
    """
    rows = []
    for folder in sorted(p for p in study.iterdir() if (p / "checkpoint.pt").is_file()):
        run = load_run(folder, device="cpu")
        if not run.config.model.startswith("basicnet"):
            continue  # DGC arms: their dead channels feed the heads' selection, not removal
        if run.epoch < run.config.epochs:
            print(f"{folder.name}: epoch {run.epoch} of {run.config.epochs}, not finished: skipped")
            continue
        model = run.model.eval()
        info = dataset_info(run.config.dataset, run.config.data_root)
        size = (1, info.in_channels, info.image_size, info.image_size)
        pruned, report = remove_dead_filters(model, GAMMA_THRESHOLD,
                                             example_input=torch.randn(size))
        row = {"run": folder.name} | {k: report.summary()[k] for k in (
            "filters_before", "filters_removed", "macs_before", "macs_after")}
        if report.removed:
            pruned.eval()
            for batch in (1, 64):
                x = torch.randn(batch, *size[1:])  # (B, C, H, W)
                with torch.no_grad():
                    t = interleaved_medians({"before": lambda: model(x),
                                             "after": lambda: pruned(x)},
                                            rounds=rounds * (4 if batch == 1 else 1), warmup=3)
                row[f"ms_before_b{batch}"] = 1e3 * t["before"] / batch
                row[f"ms_after_b{batch}"] = 1e3 * t["after"] / batch
                row[f"ratio_b{batch}"] = t["after"] / t["before"]
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench pruning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="a study folder with its run folders")
    parser.add_argument("--results", default=None,
                        help="where pruning_time.csv goes (default: the study folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    study = Path(args.study)
    if not study.is_dir():
        parser.error(f"--study {args.study!r} is not a folder")
    if args.threads < 1 or args.rounds < 1:
        parser.error(f"--threads and --rounds must be positive, got {args.threads}, "
                     f"{args.rounds}")
    torch.set_num_threads(args.threads)
    table = time_pruning(study, args.rounds)
    if table.empty:
        print(f"no BasicNet run folder with a checkpoint in {study}")
        return 1
    atomic_write_csv(Path(args.results or study) / "pruning_time.csv", table)
    print(f"\nforward time per image before / after remove_dead_filters (|gamma| < 1e-3), eval, "
          f"{args.threads} threads, interleaved medians\n")
    print("| run | filters removed | MACs/image | batch 1 (ms) | batch 64 (ms) |")
    print("|---|---|---|---|---|")
    for r in table.itertuples():
        macs = f"{r.macs_before / 1e6:.2f}M -> {r.macs_after / 1e6:.2f}M"
        if r.filters_removed:
            b1 = f"{r.ms_before_b1:.3f} -> {r.ms_after_b1:.3f} ({r.ratio_b1:.2f}x)"
            b64 = f"{r.ms_before_b64:.4f} -> {r.ms_after_b64:.4f} ({r.ratio_b64:.2f}x)"
        else:
            b1 = b64 = "nothing to remove"
        print(f"| {r.run} | {r.filters_removed} / {r.filters_before} | {macs} | {b1} | {b64} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
