"""Speed of one DGC layer against the convs it replaces (SPEC §1.6).

For each shape of SPEC §1.6 (batch 64, eval, heads 4, pruning rate 0.75, so k = 3/4 C_in):
BN-ReLU + dense conv, BN-ReLU + static groups=4 conv, the mask DGC (the official formulation),
the gather DGC (in CPU inference: the fused C++ kernel, ``dgclab/layers/cpu_kernel.py``) and the
gather DGC in its PyTorch formulation (``gather-pt``, the kernel switched off), timed
interleaved; ratios are against BN-ReLU + dense, because a DGC layer carries its own BN-ReLU.
Peak memory is the peak of the tensors one forward creates (``PeakTensorMemory``).

``--variants`` also times the other gather strategies that were tried (README, "Speed").

The family table puts the other channel-grouping convs of dgclab beside them at the same shapes,
each with its own BN-ReLU in front and its MACs from ``count_macs`` (the paper convention, what
each method claims): SCC (DSXplore; for a 3x3 shape its depthwise 3x3 + SCC block, g = 4,
o = 0.5), the learned group conv with every condensing stage applied (masked, as trained) and
condensed into a real group conv (``CondensedConv2d``; for 3x3, dgclab's extension of the LGC).

``--scc`` times only SCC's two executions (``layers/scc.py``: the dense (O, C) weight, and the
banded GEMM over the windows) against a grouped and a dense 1x1 conv, at the 1x1 convs of the
SPEC shapes (the pointwise half of DSXplore's block), batch 1 and ``--batch``, g = 2, 4, 8 and
o = 0, 0.33, 0.5, 0.75, and says which execution ``"auto"`` picks.

``--threshold`` times DGC-G's global-threshold rule against the head-wise rule at the same mean
keep (one layer, the threshold the 3/4-quantile of its saliencies on the input, so that a head
keeps C/4 channels on average but each image-head its own count), in the gather execution with
the fused kernel and in its PyTorch formulation (which pads every image-head to the batch's
largest keep).

``--device cuda`` prints only the GPU table: the same shapes in float32, float16 and bfloat16,
with the Triton gather (``layers/dgc_triton.py``) beside cuDNN, eager and from CUDA graphs.

Targets (issue #2): gather <= 0.5x dense on both 3x3 shapes, <= 1.5x on the 1x1 shape; on the
GPU (issue #20) <= 0.6x dense at 256->256 3x3 14^2 in float16.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..analysis.macs import conv_output_hw, count_macs
from ..layers import (
    CondensedConv2d, DGCConv2d, LearnedGroupConv2d, SlidingChannelConv2d, cpu_kernel, make_conv,
)
from ..layers import dgc as dgc_module
from ..layers import dgc_gather, dgc_triton
from .memory import PeakTensorMemory
from .timing import interleaved_medians, synchronized

# (C_in, C_out, kernel, H=W) from SPEC §1.6, with the official-code timings in ms for reference.
SHAPES = [
    ((128, 128, 3, 16), "official DGC 79.4 ms = 2.27x dense"),
    ((256, 256, 3, 14), "official DGC 179.6 ms = 1.69x dense"),
    ((256, 128, 1, 8), "official DGC 16.0 ms = 5.6x dense"),
]
TARGETS = {3: 0.5, 1: 1.5}


def _layers(cin, cout, k, seed=0):
    torch.manual_seed(seed)
    pad = k // 2
    dense = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=pad, bias=False))
    group = nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=pad, groups=4, bias=False)
    )
    dgc = DGCConv2d(cin, cout, k, padding=pad, heads=4, pruning_rate=0.75)
    dgc.inactive_channels = round(cin * 0.75)
    return dense.eval(), group.eval(), dgc.eval()


def peak_forward_mib(dgc: DGCConv2d, x: torch.Tensor, execution: str) -> float:
    """Peak memory of the tensors one forward creates, in MiB."""
    dgc.execution = execution
    with torch.no_grad(), PeakTensorMemory() as mem:
        dgc(x)
    return mem.peak / 2**20


def kernel_workspace_mib(dgc: DGCConv2d, x: torch.Tensor, threads: int) -> float:
    """The C++ kernel's private buffers, which ``PeakTensorMemory`` cannot see (csrc/dgc_cpu.cpp):
    the filter bank in its (head, channel, tap, output) layout, and per thread one image-head's
    padded input planes, im2col columns and gated filter columns."""
    _, cin, h, w = x.shape
    (kh, kw), (ph, pw) = dgc.kernel_size, dgc.padding
    keep = cin - dgc.inactive_channels
    co_h, taps = dgc.out_channels // dgc.heads, kh * kw
    ho, wo = conv_output_hw((h, w), dgc.kernel_size, dgc.stride, dgc.padding, dgc.dilation)
    per_thread = keep * (h + 2 * ph) * (w + 2 * pw) + keep * taps * ho * wo + co_h * keep * taps
    return (dgc.out_channels * cin * taps + threads * per_thread) * 4 / 2**20


def _variants(dgc: DGCConv2d, x: torch.Tensor):
    """The other gather strategies tried, as callables over the same inputs."""
    with torch.no_grad():
        xn = dgc.relu(dgc.norm(x))
        g = dgc.saliency(xn.mean((2, 3)))
        keep, idx = dgc_module.select_top_channels(g, dgc.inactive_channels)
        gate = g * keep
        weight = torch.stack([h.conv.weight for h in dgc.heads_list])
    b, c, h, w = xn.shape
    heads, co_h, _, kh, kw = weight.shape
    keep_n = idx.shape[-1]

    def gather_conv(chunk_bytes, chunk_samples, kernel=False):
        def run():
            old = dgc_gather.GATHER_CHUNK_BYTES, dgc_gather.GATHER_CHUNK_SAMPLES
            dgc_gather.GATHER_CHUNK_BYTES = chunk_bytes
            dgc_gather.GATHER_CHUNK_SAMPLES = chunk_samples
            try:
                with cpu_kernel.use(kernel):
                    return dgc_module.dgc_gather_conv(xn, gate, idx, weight, dgc.stride, dgc.padding)
            finally:
                dgc_gather.GATHER_CHUNK_BYTES, dgc_gather.GATHER_CHUNK_SAMPLES = old
        return run

    def per_sample_loop():
        # one grouped conv (groups = heads) per image, weights gathered per image
        outs = []
        for i in range(b):
            xi = xn[i, idx[i].flatten()].unsqueeze(0) * gate[i].gather(-1, idx[i]).view(1, -1, 1, 1)
            wi = torch.stack([weight[j][:, idx[i, j]] for j in range(heads)]).flatten(0, 1)
            outs.append(F.conv2d(xi, wi, None, dgc.stride, dgc.padding, groups=heads))
        return dgc_module.interleave_heads(torch.cat(outs), heads)

    def im2col_bmm():
        # unfold the gathered input, one batched matmul over batch*heads
        rows = (idx + torch.arange(b).view(b, 1, 1) * c).flatten()
        xk = xn.reshape(b * c, h, w).index_select(0, rows).view(b * heads, keep_n, h, w)
        xk = xk * gate.gather(-1, idx).view(b * heads, keep_n, 1, 1)
        cols = F.unfold(xk, (kh, kw), padding=dgc.padding, stride=dgc.stride)  # (BH, keep*kk, L)
        wk = weight.permute(0, 2, 1, 3, 4)  # (heads, C, Co_h, kh, kw)
        wk = wk[torch.arange(heads).view(1, heads, 1), idx]  # (B, heads, keep, Co_h, kh, kw)
        wk = wk.permute(0, 1, 3, 2, 4, 5).reshape(b * heads, co_h, keep_n * kh * kw)
        out = torch.bmm(wk, cols)  # (BH, Co_h, L)
        ho = (h + 2 * dgc.padding[0] - kh) // dgc.stride[0] + 1
        return dgc_module.interleave_heads(out.view(b, heads * co_h, ho, -1), heads)

    chunked = gather_conv(dgc_gather.GATHER_CHUNK_BYTES, dgc_gather.GATHER_CHUNK_SAMPLES)
    reference = chunked()
    variants = {}
    if x.device.type == "cpu" and x.dtype == torch.float32 and cpu_kernel.available():
        # the kernel on an already normalised input (the layer also folds the BN-ReLU into it)
        variants["C++ kernel"] = gather_conv(
            dgc_gather.GATHER_CHUNK_BYTES, dgc_gather.GATHER_CHUNK_SAMPLES, kernel=True
        )
    variants |= {
        "PyTorch, chunked": chunked,
        "PyTorch, one chunk": gather_conv(1 << 62, b),
        "per-image loop": per_sample_loop,
        "unfold + bmm": im2col_bmm,
    }
    for name, fn in variants.items():  # every variant must compute the same numbers
        with torch.no_grad():
            torch.testing.assert_close(fn(), reference, rtol=1e-4, atol=1e-4, msg=name)
    return variants


def _label(shape) -> str:
    cin, cout, k, hw = shape
    return f"{cin}->{cout} {k}x{k} {hw}^2"


def _dgc_call(dgc: DGCConv2d, x: torch.Tensor, execution: str, use, kernel: bool = True):
    """A call of ``dgc(x)`` in ``execution`` with a kernel on or off: ``use`` is
    ``cpu_kernel.use`` or ``dgc_triton.use``."""
    def run():
        dgc.execution = execution
        with use(kernel):
            return dgc(x)
    return run


def _speed_table(layers, rounds: int, block: int) -> None:
    """One table: every shape's five candidates timed round-robin, ratios against dense."""
    print(f"{'shape':>22} {'dense':>8} {'group4':>8} {'mask':>8} {'gather':>8} {'gather-pt':>9}  "
          f"{'group/d':>7} {'mask/d':>7} {'gather/d':>8} {'g-pt/d':>7}  target")
    for shape, official, dense, group, dgc, x in layers:
        k = shape[2]
        with torch.no_grad():
            t = interleaved_medians(
                {"dense": lambda: dense(x), "group": lambda: group(x),
                 "mask": _dgc_call(dgc, x, "mask", cpu_kernel.use),
                 "gather": _dgc_call(dgc, x, "gather", cpu_kernel.use),
                 "gather-pt": _dgc_call(dgc, x, "gather", cpu_kernel.use, kernel=False)},
                rounds=rounds, block=block,
            )
        ms = {n: v * 1e3 for n, v in t.items()}
        r = {n: ms[n] / ms["dense"] for n in ms}
        ok = r["gather"] <= TARGETS[k]
        print(f"{_label(shape):>22} {ms['dense']:8.2f} {ms['group']:8.2f} {ms['mask']:8.2f} "
              f"{ms['gather']:8.2f} {ms['gather-pt']:9.2f}  {r['group']:7.2f} {r['mask']:7.2f} "
              f"{r['gather']:8.2f} {r['gather-pt']:7.2f}  "
              f"<= {TARGETS[k]} {'met' if ok else 'MISSED'}   ({official})")


def family(cin: int, cout: int, k: int, seed: int = 0) -> dict[str, nn.Module]:
    """The family's convs at one shape, each with its BN-ReLU, in eval mode (module docstring)."""
    torch.manual_seed(seed)
    pad = k // 2
    dense, group, dgc = _layers(cin, cout, k, seed)
    dgc.execution = "gather"
    scc = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                        make_conv("scc", cin, cout, k, 1, pad, groups=4, overlap=0.5))
    lgc = LearnedGroupConv2d(cin, cout, k, padding=pad, groups=4)
    lgc.set_progress(1.0)  # every condensing stage applied: each group keeps C_in / 4
    condensed = CondensedConv2d.from_learned(lgc)
    return {"dense": dense, "group4": group, "dgc": dgc, "scc": scc.eval(), "lgc": lgc.eval(),
            "lgc-cond": condensed.eval()}


def _family_table(layers, rounds: int) -> None:
    """ms, time / dense and MACs / dense of the family at every shape (strict interleaving)."""
    names = ("dense", "group4", "dgc", "scc", "lgc", "lgc-cond")
    print(f"{'shape':>22}  " + "  ".join(f"{n:>17}" for n in names[1:]))
    print(f"{'':>22}  " + "  ".join(f"{'ms  t/d  MACs/d':>17}" for _ in names[1:]))
    for shape, _, _, _, _, x in layers:
        convs = family(shape[0], shape[1], shape[2])
        size = (1, *x.shape[1:])
        macs = {n: count_macs(m, size) for n, m in convs.items()}
        with torch.no_grad():
            t = interleaved_medians({n: (lambda m=m: m(x)) for n, m in convs.items()},
                                    rounds=rounds)
        cells = [f"{t[n] * 1e3:6.2f} {t[n] / t['dense']:4.2f} {macs[n] / macs['dense']:5.2f}"
                 for n in names[1:]]
        print(f"{_label(shape):>22}  " + "  ".join(f"{c:>17}" for c in cells)
              + f"   (dense {t['dense'] * 1e3:.2f} ms)")


# (C_in, C_out, H = W) of the SCC table: the SPEC shapes as pointwise convs
SCC_SHAPES = [(128, 128, 16), (256, 256, 14), (256, 128, 8)]


def _scc_table(batch: int, rounds: int) -> None:
    """SCC banded and dense-weight, and a grouped 1x1 conv, each over the dense 1x1 conv."""
    print(f"{'layer':>18} {'batch':>5} {'g':>2} {'o':>4}  {'dense ms':>8}  {'banded':>6} "
          f"{'dense-w':>7} {'group':>6}  {'MACs':>5} {'banded MACs':>11}  auto")
    for cin, cout, size in SCC_SHAPES:
        for b in (1, batch):
            torch.manual_seed(0)
            x = torch.randn(b, cin, size, size)
            for groups in (2, 4, 8):
                dense = nn.Conv2d(cin, cout, 1, bias=False).eval()
                group = nn.Conv2d(cin, cout, 1, groups=groups, bias=False).eval()
                for overlap in (0.0, 0.33, 0.5, 0.75):
                    scc = SlidingChannelConv2d(cin, cout, groups, overlap).eval()
                    runs = {"dense": lambda: dense(x), "group": lambda: group(x)}
                    for execution in ("banded", "dense-w"):
                        def run(scc=scc, execution=execution):
                            scc.execution = "dense" if execution == "dense-w" else execution
                            return scc(x)
                        runs[execution] = run
                    with torch.no_grad():
                        t = interleaved_medians(runs, rounds=rounds)
                    scc.execution = "auto"
                    r = {n: t[n] / t["dense"] for n in t}
                    print(f"{f'{cin}->{cout} {size}^2':>18} {b:>5} {groups:>2} {overlap:>4}  "
                          f"{t['dense'] * 1e3:8.3f}  {r['banded']:6.2f} {r['dense-w']:7.2f} "
                          f"{r['group']:6.2f}  {1 / groups:5.3f} "
                          f"{scc.bands.macs / (cin * cout):11.3f}  {scc.resolved_execution(x)}")


def _threshold_table(batch: int, rounds: int) -> None:
    """Gather under the threshold rule over gather head-wise, at the same mean keep."""
    print(f"{'layer':>22} {'batch':>5}  {'keep: head-wise':>15} {'threshold (p10-p90)':>20}  "
          f"{'kernel':>6} {'pytorch':>7}")
    for (cin, cout, k, size), _ in SHAPES:
        for b in (1, batch):
            _, _, layer = _layers(cin, cout, k)
            with torch.no_grad():  # spread the saliencies, as a trained layer's are
                for head in layer.heads_list:
                    head.fc2.bias.uniform_(0.0, 2.0)
            torch.manual_seed(1)
            x = torch.randn(b, cin, size, size) * torch.rand(b, 1, 1, 1) * 2
            layer.execution = "gather"
            with torch.no_grad():
                layer(x)
                tau = float(layer.last_saliency.float().quantile(0.75))
            keeps, ratios = {}, []
            for kernel in (True, False):
                runs = {}
                for rule in ("head-wise", "threshold"):
                    def run(rule=rule, kernel=kernel):
                        layer.threshold = tau if rule == "threshold" else None
                        with cpu_kernel.use(kernel):
                            return layer(x)
                    runs[rule] = run
                with torch.no_grad():
                    for rule, run in runs.items():
                        run()
                        keeps[rule] = layer.last_selection.sum(-1).float()
                    t = interleaved_medians(runs, rounds=rounds)
                ratios.append(t["threshold"] / t["head-wise"])
            layer.threshold = None
            spread = keeps["threshold"].quantile(torch.tensor([0.1, 0.9]))
            print(f"{_label((cin, cout, k, size)):>22} {b:>5}  {keeps['head-wise'].mean():15.1f} "
                  f"{keeps['threshold'].mean():8.1f} ({spread[0]:4.0f}-{spread[1]:3.0f})     "
                  f"{ratios[0]:6.2f} {ratios[1]:7.2f}")


# (C_in = C_out, kernel, H = W) of the auto table: the resnet_cifar stages, the SPEC shapes and
# DyResNet-18's first two stages; batches: 1, ImageNet's 8 and 64
AUTO_SHAPES = [(32, 3, 28), (64, 3, 14), (128, 3, 7), (128, 3, 16), (256, 1, 8), (64, 3, 56),
               (128, 3, 28)]
AUTO_BATCHES = (1, 8, 64)


def _auto_table(rounds: int) -> None:
    """gather / mask time of one layer at k = 0, C/4, C/2, 3C/4, batch 1, 8 and 64: where the
    fused kernel applies, should "auto" gather at every k?"""
    print(f"{'layer':>18} {'batch':>5}   gather / mask at k = " +
          "  ".join(f"{f:>5}" for f in ("0", "C/4", "C/2", "3C/4")))
    for c, ksize, size in AUTO_SHAPES:
        for batch in AUTO_BATCHES:
            torch.manual_seed(0)
            x = torch.randn(batch, c, size, size)
            ratios = []
            for quarter in range(4):
                layer = DGCConv2d(c, c, ksize, padding=ksize // 2, heads=4).eval()
                layer.inactive_channels = quarter * c // 4
                runs = {}
                for execution in ("gather", "mask"):
                    def run(layer=layer, execution=execution):
                        layer.execution = execution
                        return layer(x)
                    runs[execution] = run
                with torch.no_grad():
                    t = interleaved_medians(runs, rounds=rounds)
                ratios.append(t["gather"] / t["mask"])
            print(f"{f'{c}->{c} {ksize}x{ksize} {size}^2':>18} {batch:>5}   {'':>21}" +
                  "  ".join(f"{r:5.2f}" for r in ratios))


def _cuda_graph(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured once in a CUDA graph and replayed (launch overheads gone); raises
    where ``fn`` cannot be captured (a host sync inside, e.g. ``.item()``)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up outside the graph (cuDNN picks its algorithms here)
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _cuda_table(batch: int, rounds: int, dtypes: list[torch.dtype]) -> None:
    """The GPU table (issue #20): at every SPEC shape and dtype, BN-ReLU + cuDNN dense and
    groups=4 convs, the mask DGC, the Triton gather and the PyTorch gather (``gather-pt``),
    eager, plus the dense conv replayed from a CUDA graph (``dense-graph``) and the Triton
    gather likewise where it can be captured; ms per call, ratios against eager dense."""
    print(f"{'dtype':>9} {'shape':>20} {'dense':>7} {'d-graph':>7} {'group4':>7} {'mask':>7} "
          f"{'gather':>7} {'g-graph':>7} {'g-pt':>7}  {'gather/d':>8} {'g-graph/d-graph':>15}")
    for dtype in dtypes:
        for shape, _ in SHAPES:
            cin, cout, k, hw = shape
            dense, group, dgc = (m.to("cuda", dtype) for m in _layers(cin, cout, k))
            x = torch.randn(batch, cin, hw, hw, device="cuda", dtype=dtype)
            with torch.no_grad():
                candidates = {"dense": lambda: dense(x), "group": lambda: group(x),
                              "mask": _dgc_call(dgc, x, "mask", dgc_triton.use),
                              "gather": _dgc_call(dgc, x, "gather", dgc_triton.use),
                              "gather-pt": _dgc_call(dgc, x, "gather", dgc_triton.use,
                                                     kernel=False),
                              "dense-graph": _cuda_graph(lambda: dense(x))}
                try:
                    candidates["gather-graph"] = _cuda_graph(
                        _dgc_call(dgc, x, "gather", dgc_triton.use))
                    graph_note = ""
                except RuntimeError as error:  # a host sync in the layer's forward
                    graph_note = f"   (gather not capturable: {str(error).splitlines()[0][:60]})"
                t = interleaved_medians({n: synchronized(f, "cuda") for n, f in candidates.items()},
                                        rounds=rounds, warmup=3)
            ms = {n: v * 1e3 for n, v in t.items()}
            g_graph = ms.get("gather-graph", float("nan"))
            target = " (target <= 0.6)" if (dtype == torch.float16 and shape[:3] == (256, 256, 3)) \
                else ""
            print(f"{str(dtype)[6:]:>9} {_label(shape):>20} {ms['dense']:7.3f} "
                  f"{ms['dense-graph']:7.3f} {ms['group']:7.3f} {ms['mask']:7.3f} "
                  f"{ms['gather']:7.3f} {g_graph:7.3f} {ms['gather-pt']:7.3f}  "
                  f"{ms['gather'] / ms['dense']:8.2f} {g_graph / ms['dense-graph']:15.2f}"
                  f"{target}{graph_note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench layer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--variants", action="store_true", help="also time other gather strategies")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--auto", action="store_true",
                        help="only the gather / mask table at k = 0 to 3C/4, batch 1 and 64 (the "
                             "measurement behind 'auto' gathering at every k with the kernel)")
    parser.add_argument("--threshold", action="store_true",
                        help="only DGC-G's threshold rule against head-wise at the same mean keep")
    parser.add_argument("--scc", action="store_true",
                        help="only SCC's executions against grouped and dense 1x1 convs")
    parser.add_argument("--block", type=int, default=5,
                        help="calls in a row per round for the steady-state table (default 5)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: only the GPU table (float32, float16, bfloat16; the Triton "
                             "gather against cuDNN)")
    args = parser.parse_args(argv)
    if min(args.batch, args.threads, args.rounds) <= 0 or args.block < 2:
        parser.error(f"batch, threads and rounds must be positive and block >= 2, got "
                     f"{args.batch}, {args.threads}, {args.rounds}, {args.block}")
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible to torch")
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, batch {args.batch}, "
              f"eval, heads 4, pruning rate 0.75, medians over {args.rounds} interleaved rounds "
              f"(ms per call); Triton {'available' if dgc_triton.available() else 'MISSING'}")
        _cuda_table(args.batch, args.rounds, [torch.float32, torch.float16, torch.bfloat16])
        return 0
    if args.auto:
        print(f"torch {torch.__version__}, {args.threads} threads, eval, heads 4, medians over "
              f"{args.rounds} interleaved rounds; gather: "
              f"{'the fused C++ kernel' if cpu_kernel.available() else 'PyTorch (no kernel)'}")
        _auto_table(args.rounds)
        return 0
    if args.threshold:
        print(f"torch {torch.__version__}, {args.threads} threads, eval, heads 4, medians over "
              f"{args.rounds} interleaved rounds; gather time under the threshold rule over "
              f"head-wise at k = 3C/4 (mean keep per head; kernel: the fused C++ kernel"
              f"{'' if cpu_kernel.available() else ', not built here'})")
        _threshold_table(args.batch, args.rounds)
        return 0
    if args.scc:
        print(f"torch {torch.__version__}, {args.threads} threads, eval, medians over "
              f"{args.rounds} interleaved rounds; time / dense 1x1 conv; MACs / dense: a grouped "
              f"conv's and SCC's (1/g), and what the banded GEMM computes")
        _scc_table(args.batch, args.rounds)
        return 0
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, eval, "
          f"heads 4, pruning rate 0.75, medians over {args.rounds} interleaved rounds (ms)")
    if cpu_kernel.available():
        print("gather: the fused C++ kernel; gather-pt: the same layer in its PyTorch formulation")
    else:
        print(f"gather: PyTorch formulation (the C++ kernel is off or did not build: "
              f"{cpu_kernel.build_error()!r}), the same as gather-pt")
    layers = [(shape, official, *_layers(shape[0], shape[1], shape[2]),
               torch.randn(args.batch, shape[0], shape[3], shape[3]))
              for shape, official in SHAPES]
    for block, title in ((1, "strict interleaving: every call follows another candidate's call"),
                         (args.block, f"steady state: {args.block} calls in a row per round, "
                                      f"the first discarded")):
        print(f"\n{title}")
        _speed_table(layers, args.rounds, block)
    print("\nthe family at the same shapes, each with its BN-ReLU (ms, time / dense, MACs / dense "
          "at the paper convention; dgc: gather, final k)")
    _family_table(layers, args.rounds)
    rows = [(shape, _label(shape), dgc, x) for shape, _, _, _, dgc, x in layers]

    if not args.no_memory:
        print("\npeak memory of the tensors one forward creates (MiB; gather adds the C++ "
              "kernel's private buffers)")
        for _, label, dgc, x in rows:
            mem = {e: peak_forward_mib(dgc, x, e) for e in ("mask", "gather")}
            with cpu_kernel.use(False):
                mem["gather-pt"] = peak_forward_mib(dgc, x, "gather")
            if cpu_kernel.available():  # add what the tensor count cannot see
                mem["gather"] += kernel_workspace_mib(dgc, x, args.threads)
            print(f"{label:>22}  mask {mem['mask']:7.1f}  gather {mem['gather']:7.1f}  "
                  f"gather-pt {mem['gather-pt']:7.1f}  "
                  f"gather/mask {mem['gather'] / max(mem['mask'], 1e-9):.2f}")

    if args.variants:
        print("\ngather strategies (ms; all checked to give the same output)")
        for _, label, dgc, x in rows:
            variants = _variants(dgc, x)
            with torch.no_grad():
                t = interleaved_medians(variants, rounds=max(3, args.rounds // 3), warmup=1)
            print(f"{label:>22}  " + "  ".join(f"{n}: {v * 1e3:.1f}" for n, v in t.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
