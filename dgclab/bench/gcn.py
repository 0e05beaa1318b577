"""MultiPath GCN, honestly evaluated: plain vs residual vs multipath on offline graphs.

Das et al. (arXiv 2105.01510; SPEC §8) report that summing shallow graph-convolution paths
beats a deep stack, with the best TEST accuracy over epochs as the figure. This benchmark trains
every model of ``dgclab.graph.MODELS`` (one parameter budget: the same four layers, wired
differently) with the released code's optimiser (full-batch Adam, lr 1e-2, no dropout, no
weight decay), chooses the epoch on validation data (early stopping), and prints, per dataset,
mean ± std over seeds of

* the val-selected test accuracy (what dgclab reports),
* the test-selected test accuracy (the released protocol) and the difference (its optimism),
* each model minus ``plain`` on the same seed (wins / losses),
* the linear CKA between the two paths of the multipath models (trained, at initialisation,
  and the node-shuffled chance level).

Seed s draws the split (Planetoid-style, ``dgclab.graph.random_split``) and every model's
initialisation. Datasets: ``karate``, ``digits`` (kNN graph), ``fashion-mnist`` (kNN graph of
the 10,000 test images; needs ``data/FashionMNIST/raw``, skipped with a note when absent), and
Planetoid files a user has (``--planetoid cora --planetoid-root DIR``, their standard split).
Nothing is downloaded. Writes ``runs.csv``, ``paths.csv``, ``summary.csv`` and ``paired.csv``
to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from .._atomic import atomic_write_text
from ..graph import (
    GRAPHS,
    MODELS,
    format_paired,
    format_paths,
    format_summary,
    load_graph,
    paired_differences,
    random_split,
    read_planetoid,
    run_protocol,
    summarize,
)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load(name: str, args) -> tuple:
    """(graph, fixed split or None), or (None, reason) when the data is not on this machine."""
    if name in args.planetoid:
        return read_planetoid(args.planetoid_root, name)
    try:
        return load_graph(name, args.root, args.k), None
    except RuntimeError as err:  # Fashion-MNIST files absent: nothing may be downloaded
        return None, str(err).splitlines()[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench gcn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(GRAPHS),
                        help=f"from {GRAPHS} and the --planetoid names")
    parser.add_argument("--planetoid", nargs="*", default=[],
                        help="Planetoid names (cora, citeseer, pubmed) read from --planetoid-root")
    parser.add_argument("--planetoid-root", default="data/planetoid")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128, help="width h (the released code's)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=200, help="at most this many")
    parser.add_argument("--patience", type=int, default=50,
                        help="stop after this many epochs without a better validation score")
    parser.add_argument("--k", type=int, default=10, help="neighbours of the kNN graphs")
    parser.add_argument("--root", default="data", help="holds FashionMNIST/raw")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: these small sparse products run faster so on a "
                             "loaded 2-core machine)")
    parser.add_argument("--out", default="data/bench-gcn")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if min(args.seeds, args.hidden, args.epochs, args.patience, args.k, args.threads) <= 0:
        parser.error("seeds, hidden, epochs, patience, k and threads must be positive")
    datasets = list(dict.fromkeys(args.datasets + args.planetoid))
    unknown = [d for d in datasets if d not in GRAPHS and d not in args.planetoid]
    if unknown:
        parser.error(f"unknown datasets {unknown}: choose from {GRAPHS} or name them with "
                     f"--planetoid")
    torch.set_num_threads(args.threads)
    print(f"python -m dgclab.bench gcn {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {_cpu_name()}, {os.cpu_count()} CPUs, "
          f"{args.threads} torch thread(s); torch {torch.__version__}")
    print(f"models {', '.join(args.models)}; hidden {args.hidden}; Adam lr {args.lr}, weight "
          f"decay {args.weight_decay}; at most {args.epochs} epochs, patience {args.patience}; "
          f"seeds 0..{args.seeds - 1}\n")
    all_runs, all_paths = [], []
    start = time.perf_counter()
    for name in datasets:
        graph, split = _load(name, args)
        if graph is None:
            print(f"{name}: skipped ({split})\n")
            continue
        sizes = (split or random_split(graph, 0)).sizes()
        print(f"{graph!r}; split {sizes}"
              + (" (the files' standard split)" if split is not None else " (seed 0)"))
        runs, paths = run_protocol(graph, args.models, range(args.seeds), hidden=args.hidden,
                                   split=split, progress=not args.no_progress, lr=args.lr,
                                   weight_decay=args.weight_decay, max_epochs=args.epochs,
                                   patience=args.patience)
        all_runs.append(runs)
        all_paths.append(paths)
        print(f"  {runs['seconds'].sum():.0f} s of training\n")
    if not all_runs:
        print("no dataset available", file=sys.stderr)
        return 1
    runs, paths = pd.concat(all_runs, ignore_index=True), pd.concat(all_paths, ignore_index=True)
    summary, paired = summarize(runs), paired_differences(runs)
    print("Test accuracy (%), mean ± std over seeds: the epoch chosen on validation, beside the "
          "epoch chosen on the test set (the released code's protocol)\n")
    print(format_summary(summary))
    if not paired.empty:
        print("\nPaired with plain (same seed: same split and initialisation), val-selected:\n")
        print(format_paired(paired))
    if not paths.empty:
        print("\nPath diversity: linear CKA between the two summed paths over all nodes\n")
        print(format_paths(paths))
    out = Path(args.out)
    for file, table in (("runs.csv", runs), ("paths.csv", paths), ("summary.csv", summary),
                        ("paired.csv", paired)):
        atomic_write_text(out / file, table.to_csv(index=False, float_format="%.6g"))
    print(f"\n{time.perf_counter() - start:.0f} s in all; tables in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
