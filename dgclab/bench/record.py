"""Cost of recording channel selections during inference (issue #3).

resnet_cifar(20, width=16, conv="dgc", in_channels=1) in eval mode at the end of the pruning
schedule (k = 3/4 C_in), batches of 1x28x28 inputs (Fashion-MNIST size), timed interleaved:
the plain forward, the forward inside a ``Recorder`` (selections only), inside a
``Recorder(saliency=True, activations=True)``, and the forward of a model whose recorder has
exited (its hooks removed: it must cost what the plain one does). Each variant is its own copy of
the same model, so that the recorders stay open across rounds.

Target (issue #3): recording selections costs <= 15 % of the forward time at batch 64.
Bytes per sample are those the recorder holds once ``with`` has exited (labels and ids
included); while recording it keeps room for up to as many rows again.
"""

from __future__ import annotations

import argparse
import copy

import torch

from ..layers import set_progress
from ..models import resnet_cifar
from ..record import Recorder
from .timing import interleaved_medians

TARGET = 0.15
DATASET = 70_000  # Fashion-MNIST, train + test


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench record", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if args.batch <= 0 or args.threads <= 0 or args.rounds <= 0:
        parser.error(f"batch, threads and rounds must be positive, got {args.batch}, "
                     f"{args.threads}, {args.rounds}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = resnet_cifar(20, width=16, conv="dgc", in_channels=1).eval()
    set_progress(plain, 1.0)
    models = {name: copy.deepcopy(plain) for name in ("selections", "full", "exited")}
    x = torch.randn(args.batch, 1, 28, 28)

    with torch.no_grad():
        with Recorder(models["exited"]):
            models["exited"](x)
        recorders = {
            "selections": Recorder(models["selections"]),
            "full": Recorder(models["full"], saliency=True, activations=True),
        }
        for rec in recorders.values():
            rec.__enter__()
        try:
            t = interleaved_medians(
                {
                    "plain": lambda: plain(x),
                    "selections": lambda: models["selections"](x),
                    "full": lambda: models["full"](x),
                    "exited": lambda: models["exited"](x),
                },
                rounds=args.rounds,
            )
        finally:
            for rec in recorders.values():
                rec.__exit__(None, None, None)

    layers = len(recorders["selections"].layer_names)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, eval, "
          f"resnet_cifar(20, width=16, dgc), k = 3/4 C_in, {layers} DGC layers, 1x28x28, "
          f"medians of {args.rounds} interleaved rounds\n")
    ms = {name: v * 1e3 for name, v in t.items()}
    base = ms["plain"]
    rows = [
        ("plain forward", "plain", None),
        ("inside Recorder (selections)", "selections", recorders["selections"]),
        ("inside Recorder (+saliency, +activations)", "full", recorders["full"]),
        ("after the Recorder exited", "exited", None),
    ]
    print(f"{'':>42} {'ms':>8} {'overhead':>9} {'bytes/sample':>13} {'70,000 samples':>15}")
    for label, key, rec in rows:
        overhead = ms[key] / base - 1
        line = f"{label:>42} {ms[key]:8.2f} {overhead:+9.1%}"
        if rec is not None:
            per_sample = rec.nbytes / len(rec)
            line += f" {per_sample:13.0f} {per_sample * DATASET / 1e6:12.1f} MB"
        print(line)
    overhead = ms["selections"] / base - 1
    print(f"\nselection recording overhead {overhead:+.1%} (target <= {TARGET:.0%}): "
          f"{'met' if overhead <= TARGET else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
