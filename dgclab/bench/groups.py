"""Grouped convolution: does the time fall with the MACs as the number of groups grows?

The motivating observation of GSPC (Gibson et al., ASAP 2020, arXiv 2006.09791; SPEC §5): a
grouped conv with G groups has 1/G of the dense MACs, but frameworks do not run it G times
faster. At fixed C_in = C_out, for G = 1, 2, 4, ..., C, eval mode, this times (medians of
interleaved rounds, ``interleaved_medians``):

* ``torch``: ``F.conv2d(groups=G)`` on contiguous (NCHW) tensors;
* ``torch-cl``: the same on channels-last (NHWC) tensors;
* ``loop``: one dense conv per group, the group as the outermost loop in Python;
* ``gspc``: ``dgclab.layers.gspc.gspc_conv2d``, the packed layouts of GSPC in PyTorch (blocks
  of at most 8 channels); a layout study, not the paper's TVM code;
* ``kernel``: dgclab's C++ direct conv (``torch.ops.dgclab.cluster_conv2d``, every group a
  cluster of contiguous channels), whatever ``kernel_pays`` says (absent where the kernel
  cannot be built);

and prints each time over the dense (G = 1) ``torch`` time beside the MAC ratio 1/G.
``--plot FILE`` draws time ratio against MAC ratio.

``--shapes`` times instead the grouped convs of the networks dgclab benchmarks (the static
group twins of ``bench network``, DyDenseNet's 3x3 group convs, 1x1 and strided ones; G = 4),
at batch 1 and 64: the kernel over ``F.conv2d(groups=4)``, beside what ``kernel_pays`` decides.
It is the measurement behind ``dgclab.layers.group.kernel_pays``.

``--networks`` times the networks of ``bench network`` (without DyResNet-18; dense, static-group
and DGC versions, eval, final k) with ``group_conv2d``'s kernel as it is and with it off
(``kernel_pays`` forced False: every grouped conv is ``F.conv2d``), all six interleaved in one
process, so that what the kernel changes is measured in the same minutes.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch
import torch.nn.functional as F

from ..layers import cpu_kernel
from ..layers.group import kernel_pays
from ..layers.gspc import gspc_conv2d
from .timing import interleaved_medians

METHODS = ("torch", "torch-cl", "loop", "gspc", "kernel")

# (C_in, C_out, kernel, stride, map) of G = 4 convs: resnet_cifar(20)'s group twins at widths
# 32 and 64, their strided and 1x1 downsample convs, DyDenseNet-86's 3x3 group convs and the
# 1x1 convs of its group twin
SHAPES = [(32, 32, 3, 1, 28), (64, 64, 3, 1, 14), (128, 128, 3, 1, 7), (64, 64, 3, 1, 28),
          (128, 128, 3, 1, 14), (256, 256, 3, 1, 7), (32, 64, 3, 2, 28), (64, 128, 3, 2, 14),
          (32, 64, 1, 2, 28), (32, 8, 3, 1, 32), (64, 16, 3, 1, 16), (128, 32, 3, 1, 8),
          (96, 32, 1, 1, 32), (256, 64, 1, 1, 16), (512, 128, 1, 1, 8), (768, 128, 1, 1, 8)]


def _kernel(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int = 1):
    """The C++ kernel on every group, forced (None where it cannot be built)."""
    if not cpu_kernel.available():
        return None
    channels, filters = torch.arange(x.shape[1]), torch.arange(weight.shape[0])
    weights, pad = list(weight.chunk(groups)), weight.shape[-1] // 2
    return lambda: torch.ops.dgclab.cluster_conv2d(x, channels, filters, weights, None,
                                                   [stride] * 2, [pad] * 2, [1, 1])


def _candidates(x: torch.Tensor, weight: torch.Tensor, groups: int) -> dict:
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = weight.contiguous(memory_format=torch.channels_last)
    per_group = weight.chunk(groups)
    xs = x.chunk(groups, dim=1)
    block = min(8, weight.shape[1])
    oc_block = min(8, weight.shape[0] // groups)
    kernel = _kernel(x, weight, groups)
    return ({"kernel": kernel} if kernel else {}) | {
        "torch": lambda: F.conv2d(x, weight, padding=1, groups=groups),
        "torch-cl": lambda: F.conv2d(x_cl, w_cl, padding=1, groups=groups),
        "loop": lambda: torch.cat([F.conv2d(xi, wi, padding=1) for xi, wi in zip(xs, per_group)],
                                  1),
        "gspc": lambda: gspc_conv2d(x, weight, groups, block, oc_block, padding=1),
    }


def measure_shapes(batch: int, rounds: int, shapes=SHAPES) -> list[dict]:
    """One row per shape of ``shapes``: seconds per call of ``F.conv2d(groups=4)`` and of the
    kernel (interleaved), and whether ``group_conv2d`` takes the kernel for it."""
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for cin, cout, k, stride, size in shapes:
            x = torch.randn(batch, cin, size, size)
            weight = torch.randn(cout, cin // 4, k, k)
            candidates = {"torch": lambda: F.conv2d(x, weight, stride=stride, padding=k // 2,
                                                    groups=4),
                          "kernel": _kernel(x, weight, 4, stride)}
            torch.testing.assert_close(candidates["kernel"](), candidates["torch"](),
                                       rtol=1e-4, atol=1e-3)
            seconds = interleaved_medians(candidates, rounds=rounds)
            rows.append({"shape": f"{cin}->{cout} {k}x{k}/{stride} {size}x{size}",
                         "group_filters": cout // 4, "batch": batch,
                         "torch_ms": 1e3 * seconds["torch"], "kernel_ms": 1e3 * seconds["kernel"],
                         "takes_kernel": kernel_pays(weight.shape, 4, batch)})
    return rows


def measure_networks(rounds: int, batches=(1, 64)) -> list[dict]:
    """Per network of ``bench network`` (not the 224x224 one) and batch: ms per image of the
    dense, group and DGC versions with ``group_conv2d``'s kernel on (as shipped) and off."""
    from ..layers import group
    from .network import NETWORKS, _calibrated_nets

    pays = group.kernel_pays
    rows = []
    try:
        for name, make, size, _ in NETWORKS:
            if size[-1] >= 224:
                continue
            nets = _calibrated_nets(make, size)
            for batch in batches:
                x = torch.randn(batch, *size)

                def call(model, on: bool):
                    group.kernel_pays = pays if on else (lambda shape, groups, batch=1: False)
                    return model(x)

                candidates = {(kind, on): (lambda m=m, on=on: call(m, on))
                              for on in (True, False) for kind, m in nets.items()}
                with torch.no_grad():
                    seconds = interleaved_medians(candidates, rounds=rounds)
                rows += [{"network": name, "batch": batch, "net": kind, "kernel": on,
                          "ms": 1e3 * s / batch} for (kind, on), s in seconds.items()]
    finally:
        group.kernel_pays = pays
    return rows


def _print_networks(args) -> None:
    print(f"torch {torch.__version__}, {args.threads} threads, eval, final k, ms per image, "
          f"medians of {args.rounds} interleaved rounds; group_conv2d's kernel off (every grouped "
          f"conv F.conv2d) and on")
    print(f"\n{'network':>22} {'batch':>5} {'kernel':>6} {'dense':>8} {'group':>8} {'dgc':>8} "
          f"{'dgc/dense':>9} {'dgc/group':>9}")
    rows = measure_networks(args.rounds, tuple(args.batch))
    for (name, batch), part in itertools.groupby(rows, key=lambda r: (r["network"], r["batch"])):
        ms = {(r["net"], r["kernel"]): r["ms"] for r in part}
        for on in (False, True):
            d, g, c = ms["dense", on], ms["group", on], ms["dgc", on]
            print(f"{name:>22} {batch:>5} {'on' if on else 'off':>6} {d:8.3f} {g:8.3f} {c:8.3f} "
                  f"{c / d:9.2f} {c / g:9.2f}")


def _print_shapes(args) -> None:
    print(f"torch {torch.__version__}, {args.threads} threads, eval, groups 4, medians of "
          f"{args.rounds} interleaved rounds; kernel time / F.conv2d time, and what group_conv2d "
          f"takes (kernel_pays)")
    print(f"\n{'conv':>26} {'filters/group':>13} {'batch':>5} {'F.conv2d ms':>11} "
          f"{'kernel ms':>9} {'kernel/torch':>12} {'takes':>7}")
    for batch in args.batch:
        for r in measure_shapes(batch, args.rounds, SHAPES):
            print(f"{r['shape']:>26} {r['group_filters']:>13} {batch:>5} {r['torch_ms']:11.3f} "
                  f"{r['kernel_ms']:9.3f} {r['kernel_ms'] / r['torch_ms']:12.2f} "
                  f"{'kernel' if r['takes_kernel'] else 'torch':>7}")


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
    parser.add_argument("--shapes", action="store_true",
                        help="the networks' grouped convs, kernel against F.conv2d (batch "
                             "default 1 and 64)")
    parser.add_argument("--networks", action="store_true",
                        help="bench network's networks with group_conv2d's kernel on and off "
                             "(batch default 1 and 64)")
    args = parser.parse_args(argv)
    if (args.shapes or args.networks) and args.batch == parser.get_default("batch"):
        args.batch = [1, 64]
    if min(args.channels, args.size, args.threads, args.rounds, *args.batch) <= 0:
        parser.error("channels, size, batch, threads and rounds must be positive")
    torch.set_num_threads(args.threads)
    if args.shapes or args.networks:
        if not cpu_kernel.available():
            parser.error(f"--{'shapes' if args.shapes else 'networks'} needs dgclab's C++ kernel, "
                         f"which is unavailable: {cpu_kernel.build_error()!r}")
        (_print_shapes if args.shapes else _print_networks)(args)
        return 0
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
                  + " ".join(f"{times[m] / dense:>9.3f}" if m in times else f"{'-':>9}"
                             for m in METHODS))
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
            if not pts:
                continue
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
