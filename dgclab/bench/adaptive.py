"""Adaptive compute (DGC-G): one trained DGC network under both selection rules.

For a model exported by ``python -m dgclab export`` (a DGC network, trained with either rule):
the anytime curve (``dgclab.analysis.compute_sweep``: for each pruning rate xi, the head-wise rule
at k = round(xi C_in) and the global threshold calibrated to the same mean rate on the first
``--calibration-batches`` test batches), then, at the model's own xi, the spread of the MACs per
image under each rule and the threshold's MACs per class and by right / wrong prediction
(``compute_per_image``). Everything is on the first ``--images`` Fashion-MNIST test images.
Tables go to ``--out`` (``sweep.csv``, ``per_image_head-wise.csv``, ``per_image_threshold.csv``)
and are printed as markdown.

The target of the issue: at equal mean realized MACs the threshold rule is at least as accurate
as the head-wise one; printed per xi, whichever way it falls.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from .._atomic import atomic_write_text
from ..analysis import compute_per_image, compute_sweep, layer_pruning_rates
from ..data import load_dataset
from ..layers import calibrate_threshold, dgc_layers, set_threshold
from ..record import record
from ..train import load_model
from .tables import markdown_table


def _spread(frame: pd.DataFrame) -> str:
    """A ``compute_per_image`` table in one line: MACs per image (M) at the 10th / 50th / 90th
    percentile, accuracy, mean pruning rate."""
    p = frame["macs"].quantile([0.1, 0.5, 0.9]) / 1e6
    return (f"{p.iloc[0]:.3f} / {p.iloc[1]:.3f} / {p.iloc[2]:.3f}, accuracy "
            f"{frame['correct'].mean():.4f}, pruning rate {frame['pruning_rate'].mean():.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench adaptive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/demo_resnet8_dgc.pt",
                        help="an exported DGC model (python -m dgclab export RUN PATH)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--images", type=int, default=10000, help="first N test images")
    parser.add_argument("--rates", default="0.5,0.6,0.7,0.75,0.8,0.85,0.9")
    parser.add_argument("--calibration-batches", type=int, default=4,
                        help="test batches (of 250) the threshold is calibrated on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for the tables (default: none)")
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r]
    except ValueError:
        parser.error(f"--rates must be comma-separated numbers, got {args.rates!r}")
    if args.images <= 0 or args.threads <= 0 or args.calibration_batches <= 0:
        parser.error(f"images, threads and calibration batches must be positive, got "
                     f"{args.images}, {args.threads}, {args.calibration_batches}")
    torch.set_num_threads(args.threads)
    model, config, _ = load_model(args.model)
    _, test, info = load_dataset("fashion-mnist", args.data_root, augment=False)
    loader = DataLoader(Subset(test, range(min(args.images, len(test)))), batch_size=250)
    print(f"{args.model}: {config.model} width {config.width}, trained with the "
          f"{config.selection} rule at xi {config.pruning_rate}; {len(loader.dataset)} test "
          f"images, {args.threads} threads\n")

    trained = next((layer.threshold for _, layer in dgc_layers(model)), None)
    if trained is not None:  # a DGC-G net: first as it was trained
        print(f"as trained (threshold {trained:.4g}), MACs per image (M), 10th / 50th / 90th "
              f"percentile: {_spread(compute_per_image(model, loader))}\n")
    sweep = compute_sweep(model, loader, rates, calibration_batches=args.calibration_batches)
    print("anytime curve (MACs per image, whole network):\n")
    print(markdown_table(sweep.assign(**{c: sweep[c] / 1e6 for c in sweep.columns
                                    if c.startswith("macs")})))
    pairs = sweep.pivot(index="target", columns="rule", values="accuracy")
    if {"head-wise", "threshold"} <= set(pairs.columns):
        diff = pairs["threshold"] - pairs["head-wise"]
        print("\nthreshold - head-wise accuracy per xi (points): "
              + ", ".join(f"{xi:g}: {100 * d:+.2f}" for xi, d in diff.items()))

    frames, layers = {}, {}
    for rule in ("head-wise", "threshold"):
        if rule == "threshold":
            calibrate_threshold(model, loader, config.pruning_rate,
                                batches=args.calibration_batches)
        else:
            set_threshold(model, None)
        frames[rule] = compute_per_image(model, loader)
        layers[rule] = layer_pruning_rates(record(model, loader)).set_index("layer")["mean"]
    set_threshold(model, None)
    print(f"\nat xi {config.pruning_rate}: MACs per image (M), 10th / 50th / 90th percentile")
    for rule, frame in frames.items():
        print(f"  {rule:>9}: {_spread(frame)}")
    print(f"\nat xi {config.pruning_rate}: mean pruning rate per DGC layer")
    print(markdown_table(pd.DataFrame(layers).reset_index(names="layer")))
    threshold = frames["threshold"]
    by_class = threshold.groupby("label")[["macs", "correct"]].mean()
    by_class.index = [info.classes[i] for i in by_class.index]
    print("\nthreshold rule, by class (mean MACs in M, accuracy):")
    print(markdown_table(by_class.assign(macs=by_class["macs"] / 1e6).reset_index(names="class")))
    by_right = threshold.groupby("correct")["macs"].mean() / 1e6
    print("\nthreshold rule, mean MACs (M) of right / wrong predictions: "
          f"{by_right.get(True, float('nan')):.3f} / {by_right.get(False, float('nan')):.3f}")

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "sweep.csv", sweep.to_csv(index=False))
        for rule, frame in frames.items():
            atomic_write_text(out / f"per_image_{rule}.csv", frame.to_csv(index=False))
        print(f"\ntables in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
