"""Grouped convolution: does the time fall with the MACs as the number of groups grows?

The motivating observation of GSPC (Gibson et al., ASAP 2020, arXiv 2006.09791; SPEC §5): a
grouped conv with G groups has 1/G of the dense MACs, but frameworks do not run it G times
faster. At fixed C_in = C_out, for G = 1, 2, 4, ..., C, eval mode, this times (medians of
interleaved rounds, ``interleaved_medians``):

* ``torch``: ``F.conv2d(groups=G)`` on contiguous (NCHW) tensors;
* ``torch-cl``: the same on channels-last (NHWC) tensors;
* ``loop``: one dense conv per group, the group as the outermost loop in Python;
* ``gspc``: ``dgclab.layers.gspc.gspc_conv2d``, the packed layouts of GSPC in PyTorch (blocks
  of at most 8 channels); a layout study, not the paper's TVM code.

and prints each time over the dense (G = 1) ``torch`` time beside the MAC ratio 1/G.
``--plot FILE`` draws time ratio against MAC ratio.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from ..layers.gspc import gspc_conv2d
from .timing import interleaved_medians

METHODS = ("torch", "torch-cl", "loop", "gspc")


def _candidates(x: torch.Tensor, weight: torch.Tensor, groups: int) -> dict:
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = weight.contiguous(memory_format=torch.channels_last)
    per_group = weight.chunk(groups)
    xs = x.chunk(groups, dim=1)
    block = min(8, weight.shape[1])
    oc_block = min(8, weight.shape[0] // groups)
    return {
        "torch": lambda: F.conv2d(x, weight, padding=1, groups=groups),
        "torch-cl": lambda: F.conv2d(x_cl, w_cl, padding=1, groups=groups),
        "loop": lambda: torch.cat([F.conv2d(xi, wi, padding=1) for xi, wi in zip(xs, per_group)],
                                  1),
        "gspc": lambda: gspc_conv2d(x, weight, groups, block, oc_block, padding=1),
    }


def measure(channels: int, size: int, batch: int, group_counts, rounds: int) -> list[dict]:
    """One row per (groups, method): seconds per call, and the MAC ratio 1 / groups."""
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size)
    rows = []
    with torch.no_grad():
        for groups in group_counts:
            weight = torch.randn(channels, channels // groups, 3, 3)
            reference = F.conv2d(x, weight, padding=1, groups=groups)
            candidates = _candidates(x, weight, groups)
            for name, fn in candidates.items():  # every method computes the same numbers
                torch.testing.assert_close(fn(), reference, rtol=1e-4, atol=1e-3)
            seconds = interleaved_medians(candidates, rounds=rounds)
            rows += [{"groups": groups, "method": m, "seconds": s, "mac_ratio": 1 / groups}
                     for m, s in seconds.items()]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench groups", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--plot", default=None, help="write the figure to this PNG file")
    args = parser.parse_args(argv)
    if min(args.channels, args.size, args.threads, args.rounds, *args.batch) <= 0:
        parser.error("channels, size, batch, threads and rounds must be positive")
    torch.set_num_threads(args.threads)
    counts = [g for g in (2 ** i for i in range(int(math.log2(args.channels)) + 1))
              if args.channels % g == 0]
    print(f"torch {torch.__version__}, {args.threads} threads, eval, {args.channels} -> "
          f"{args.channels} 3x3, {args.size}x{args.size}, medians of {args.rounds} interleaved "
          f"rounds; time / dense torch time beside MACs / dense MACs")
    results = {}
    for batch in args.batch:
        rows = measure(args.channels, args.size, batch, counts, args.rounds)
        dense = next(r["seconds"] for r in rows if r["groups"] == 1 and r["method"] == "torch")
        results[batch] = (rows, dense)
        print(f"\nbatch {batch}: dense torch {dense * 1e3:.3f} ms")
        print(f"{'groups':>7} {'MACs':>7} " + " ".join(f"{m:>9}" for m in METHODS))
        for groups in counts:
            times = {r["method"]: r["seconds"] for r in rows if r["groups"] == groups}
            print(f"{groups:>7} {1 / groups:>7.3f} "
                  + " ".join(f"{times[m] / dense:>9.3f}" for m in METHODS))
    if args.plot:
        _plot(results, args).savefig(args.plot, dpi=120)
        print(f"\nfigure: {args.plot}")
    return 0


def _plot(results: dict, args):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(results), 4), layout="constrained")
    for ax, (batch, (rows, dense)) in zip(fig.subplots(1, len(results), squeeze=False)[0],
                                          results.items()):
        for method in METHODS:
            pts = [(r["groups"], r["seconds"] / dense) for r in rows if r["method"] == method]
            ax.plot(*zip(*pts), marker="o", label=method)
        groups = sorted({r["groups"] for r in rows})
        ax.plot(groups, [1 / g for g in groups], "k:", label="MACs (1 / G)")
        ax.set(xscale="log", yscale="log", xlabel="groups G", ylabel="time / dense time",
               title=f"{args.channels}->{args.channels} 3x3, {args.size}², batch {batch}")
        ax.set_xticks(groups, [str(g) for g in groups])
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
