"""Whole networks: DGC against its dense and static-group twins, per image and per training step.

DGC's promise is a network that costs about what a static group conv network costs. The layer
benchmark measures one layer; this measures the networks people run. Each DGC network is timed
against its twins: the same network with every DGC layer replaced by ``BN -> ReLU ->
make_conv("dense" | "group")`` of the same shape (the BN-ReLU a DGC layer carries kept as a
plain one, ``twin``), so that the only difference is the conv. Eval, at the final k (xi = 0.75;
DyResNet-18 at its released 0.55), every BN given running statistics first (``calibrate``: a
random net's activations would overflow and DGC would read every channel of its non-finite
inputs), per-image medians of interleaved rounds, for:

* ``resnet_cifar(20)`` at widths 32 and 64 on 1x28x28, batch 1 and 64;
* DyDenseNet-86 on 3x32x32, batch 1 and 64;
* DyResNet-18 on 3x224x224, batch 1 and 8 (``--no-imagenet`` skips it: slow on 2 cores);
* a training step (forward, backward, SGD step, batch 128) of ``resnet_cifar(20, width=32)`` at
  k = 0, mid schedule (p = 0.4) and the final k, against the dense and group twins' steps.

It prints the ratios DGC / dense and DGC / group beside the MAC ratios (paper convention) and
the targets of the network-speed issue, whichever way they fall.

``--layers`` splits each network's time at its smallest batch into its DGC layers (each timed
alone, on the input it sees in the DGC network, against its twins' BN-ReLU-conv on the same
input) and the rest (the ops the three networks share, and what layers lose inside a network):
how far the whole network can move when only the DGC layers change (``layer_split``); the same
modules timed inside their networks say how much of the rest the layers lose there.

``--device cuda [--dtype float16]`` runs the same tables on a GPU (DGC's gather there is the
Triton kernel, ``layers/dgc_triton.py``), every timed call followed by a CUDA synchronize.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..analysis import count_macs
from ..layers import dgc_layers, make_conv, set_progress, tuning
from ..models import dydensenet86, dyresnet18, resnet_cifar
from ..train import recalibrate_bn
from .timing import WithTuning, interleaved_medians, synchronized

__all__ = ["twin", "calibrate", "layer_split", "profile", "NETWORKS", "main"]


def twin(model: nn.Module, kind: str) -> nn.Module:
    """A copy of ``model`` whose every DGC layer is ``BN -> ReLU -> make_conv(kind)`` of its shape.

    ``kind`` is ``"dense"`` or ``"group"`` (groups = the DGC layer's heads); the copy's modes
    follow the original's.
    """
    new = copy.deepcopy(model)
    for name, layer in dgc_layers(new):
        options = {"groups": layer.heads} if kind == "group" else {}
        conv = make_conv(kind, layer.in_channels, layer.out_channels, layer.kernel_size,
                         layer.stride, layer.padding, layer.dilation, **options)
        block = nn.Sequential(nn.BatchNorm2d(layer.in_channels), nn.ReLU(inplace=True), conv)
        new.set_submodule(name, block.train(layer.training))
    return new


def calibrate(model: nn.Module, size: tuple[int, ...], batches: int = 4, batch: int = 16,
              seed: int = 0) -> nn.Module:
    """Give every BN of a freshly built ``model`` running statistics of its own activations.

    A network straight from its constructor has BNs with mean 0 and variance 1, so in eval mode
    they normalise nothing and the activations of a deep net grow layer after layer: in a
    random ``resnet_cifar(20, conv="dgc")`` the last stage's inputs overflow to Inf, and a DGC
    layer then reads every channel (the NaN/Inf rule of the gather execution), so it would be
    timed at dense cost. A few forwards in train mode, with a cumulative average
    (``momentum=None``), fix that as a trained net's statistics would. Returns ``model`` in
    eval mode, its BN momenta restored.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = (torch.randn(batch, *size, generator=generator) for _ in range(batches))
    return recalibrate_bn(model, inputs)


def _resnet(width: int):
    def make():
        model = resnet_cifar(20, width=width, conv="dgc", in_channels=1)
        set_progress(model, 1.0)
        return model
    return make


def _densenet():
    model = dydensenet86(10)
    set_progress(model, 1.0)
    return model


def _dyresnet():
    model = dyresnet18(1000)  # its released pruning rate, 0.55
    set_progress(model, 1.0)
    return model


# name, builder, input (C, H, W), batch sizes
NETWORKS = [
    ("resnet_cifar(20, w32)", _resnet(32), (1, 28, 28), (1, 64)),
    ("resnet_cifar(20, w64)", _resnet(64), (1, 28, 28), (1, 64)),
    ("DyDenseNet-86", _densenet, (3, 32, 32), (1, 64)),
    ("DyResNet-18", _dyresnet, (3, 224, 224), (1, 8)),
]


def _calibrated_nets(make, size: tuple[int, ...]) -> dict[str, nn.Module]:
    """A DGC network (seed 0) and its dense and group twins, every BN calibrated."""
    torch.manual_seed(0)
    dgc = make()
    nets = {"dense": twin(dgc, "dense"), "group": twin(dgc, "group"), "dgc": dgc}
    for net in nets.values():
        calibrate(net, size, batch=16 if size[-1] < 100 else 4)
    return nets


def _benched_networks(imagenet: bool):
    """``NETWORKS`` as ``(name, calibrated nets, input size, batch sizes)``, the 224x224 ones
    only with ``imagenet``."""
    for name, make, size, batches in NETWORKS:
        if size[1] < 224 or imagenet:
            yield name, _calibrated_nets(make, size), size, batches


def _tuning_summary(model: nn.Module, x: torch.Tensor) -> str:
    """How many of ``model``'s DGC layers the measurement sent to each execution for ``x``."""
    seen: list[str] = []
    hooks = [layer.register_forward_pre_hook(
        lambda m, args: seen.append(m.resolved_execution(input=args[0], autograd=False)))
        for _, layer in dgc_layers(model)]
    try:
        with torch.no_grad(), tuning.use(True):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return ", ".join(f"{seen.count(e)} {e}" for e in ("gather", "mask") if e in seen)


def _inference(rounds: int, imagenet: bool, device: str = "cpu",
               dtype: torch.dtype = torch.float32, tune: bool = False) -> None:
    tuned = f" {'tuned':>9} {'tuned/dense':>11}" if tune else ""
    print(f"{'network':>22} {'batch':>5} {'dense':>9} {'group':>9} {'dgc':>9}  {'dgc/dense':>9} "
          f"{'dgc/group':>9}  {'MACs dgc/dense':>14} {'dgc/group':>9}{tuned}   (ms per image)")
    for name, nets, size, batches in _benched_networks(imagenet):
        macs = {n: count_macs(m, (1, *size)) for n, m in nets.items()}
        nets = {n: m.to(device, dtype) for n, m in nets.items()}
        for batch in batches:
            x = torch.randn(batch, *size, device=device, dtype=dtype)
            calls = {n: lambda m=m: m(x) for n, m in nets.items()}
            if tune:
                calls["tuned"] = lambda m=WithTuning(nets["dgc"]): m(x)
            with torch.no_grad():
                t = interleaved_medians({n: synchronized(c, device) for n, c in calls.items()},
                                        rounds=rounds)
            ms = {n: v * 1e3 / batch for n, v in t.items()}
            line = (f"{name:>22} {batch:>5} {ms['dense']:9.3f} {ms['group']:9.3f} "
                    f"{ms['dgc']:9.3f}  {ms['dgc'] / ms['dense']:9.2f} "
                    f"{ms['dgc'] / ms['group']:9.2f}  {macs['dgc'] / macs['dense']:14.2f} "
                    f"{macs['dgc'] / macs['group']:9.2f}")
            if tune:
                line += (f" {ms['tuned']:9.3f} {ms['tuned'] / ms['dense']:11.2f}   "
                         f"({_tuning_summary(nets['dgc'], x)})")
            print(line)


def layer_split(nets: dict[str, nn.Module], x: torch.Tensor, rounds: int = 10,
                device: str = "cpu") -> dict[str, dict[str, float]]:
    """Seconds per call of each network in ``nets``, split into its DGC layers and the rest.

    ``nets`` is ``{"dgc": model, "dense": twin(model, "dense"), "group": twin(model, "group")}``
    (any subset of twins beside ``"dgc"``). Each DGC layer is timed alone on the input it
    receives when the DGC network runs ``x`` (its real activations: its selection depends on
    them), interleaved with each twin's module of the same name (BN-ReLU-conv) on the same
    input, steady state (blocks of 3 calls, the first discarded); the whole networks are timed
    the same way. The same modules are also timed inside their networks (forward hooks around
    them, one network after another for ``rounds`` rounds, medians per module).

    Returns ``{kind: {"layers": summed medians alone, "in_network": summed medians inside the
    network, "whole": network median, "rest": whole - layers}}``. ``rest`` holds the ops the
    networks share (the convs DGC does not replace, BNs, concatenations) and what the layers
    lose inside the network beyond their time alone (``in_network - layers``; why they lose it
    is not established: colder caches, the layers' Python running colder), so
    ``(split["dgc"]["rest"] + split["group"]["layers"]) / split["dense"]["whole"]`` is about
    the DGC / dense the network would reach with DGC layers as cheap as static groups'.
    """
    if "dgc" not in nets:
        raise ValueError(f"nets needs a 'dgc' network, got {sorted(nets)}")
    inputs: dict[str, torch.Tensor] = {}
    layers = dgc_layers(nets["dgc"])
    hooks = [layer.register_forward_hook(
        lambda m, args, out, name=name: inputs.__setitem__(name, args[0]))
        for name, layer in layers]
    try:
        with torch.no_grad():
            nets["dgc"](x)
    finally:
        for hook in hooks:
            hook.remove()
    split = {kind: {"layers": 0.0} for kind in nets}
    with torch.no_grad():
        for name, _ in layers:
            calls = {kind: synchronized(lambda m=net.get_submodule(name), i=inputs[name]: m(i),
                                        device) for kind, net in nets.items()}
            for kind, t in interleaved_medians(calls, rounds=rounds, block=3).items():
                split[kind]["layers"] += t
        whole = interleaved_medians({kind: synchronized(lambda m=net: m(x), device)
                                     for kind, net in nets.items()}, rounds=rounds)
    inside = _timed_inside(nets, [name for name, _ in layers], x, rounds, device)
    for kind, t in whole.items():
        split[kind] |= {"in_network": inside[kind], "whole": t, "rest": t - split[kind]["layers"]}
    return split


def _timed_inside(nets: dict[str, nn.Module], names: list[str], x: torch.Tensor, rounds: int,
                  device: str) -> dict[str, float]:
    """Each network's modules ``names`` timed inside the network running ``x``: per module the
    median over ``rounds`` forwards (after one untimed), summed per network."""
    wait = synchronized(lambda: None, device)  # a CUDA synchronize, nothing on the CPU
    times = {kind: {name: [] for name in names} for kind in nets}
    began: dict[tuple[str, str], float] = {}

    def start(kind, name):
        def hook(module, args):
            wait()
            began[kind, name] = time.perf_counter()
        return hook

    def stop(kind, name):
        def hook(module, args, out):
            wait()
            times[kind][name].append(time.perf_counter() - began[kind, name])
        return hook

    hooks = [hook for kind, net in nets.items() for name in names for hook in (
        net.get_submodule(name).register_forward_pre_hook(start(kind, name)),
        net.get_submodule(name).register_forward_hook(stop(kind, name)))]
    try:
        with torch.no_grad():
            for _ in range(rounds + 1):
                for net in nets.values():
                    net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {kind: sum(statistics.median(t[1:]) for t in per.values())
            for kind, per in times.items()}


def _layer_splits(rounds: int, imagenet: bool, device: str = "cpu") -> None:
    print("\nDGC layers and the rest, at each network's smallest batch (ms per image; 'layers': "
          "each DGC layer and its twins' BN-ReLU-conv timed alone on the DGC network's "
          "activations; 'layers in net': the same modules timed inside their networks)")
    print(f"{'network':>22} {'batch':>5} {'':>13} {'dense':>9} {'group':>9} {'dgc':>9}  "
          f"{'dgc/dense':>9} {'dgc/group':>9}")
    for name, nets, size, batches in _benched_networks(imagenet):
        nets = {n: m.to(device) for n, m in nets.items()}
        batch = min(batches)
        split = layer_split(nets, torch.randn(batch, *size, device=device), rounds, device)
        for part in ("layers", "in_network", "rest", "whole"):
            ms = {kind: split[kind][part] * 1e3 / batch for kind in split}
            label = "layers in net" if part == "in_network" else part
            print(f"{name if part == 'layers' else '':>22} {batch if part == 'layers' else '':>5} "
                  f"{label:>13} {ms['dense']:9.3f} {ms['group']:9.3f} {ms['dgc']:9.3f}  "
                  f"{ms['dgc'] / ms['dense']:9.2f} {ms['dgc'] / ms['group']:9.2f}")
        dense, rest = split["dense"]["whole"], split["dgc"]["rest"]
        print(f"{'':>22} {'':>5} {'':>13} (DGC / dense if its DGC layers cost what the static "
              f"groups' do: {(rest + split['group']['layers']) / dense:.2f}, nothing: "
              f"{rest / dense:.2f})")


def profile(model: nn.Module, x: torch.Tensor, calls: int = 10, rows: int = 12) -> str:
    """Where ``model(x)``'s time goes: torch.profiler's ops by self CPU time, per forward.

    Returns a table: op, milliseconds per forward, share of the profiled time, calls per forward.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.no_grad():
        model(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"{'op':>32} {'ms/forward':>10} {'share':>6} {'calls':>6}"]
    for e in events[:rows]:
        lines.append(f"{e.key[:32]:>32} {e.self_cpu_time_total / calls / 1e3:10.3f} "
                     f"{e.self_cpu_time_total / total:6.1%} {e.count // calls:6d}")
    lines.append(f"{'all ops':>32} {total / calls / 1e3:10.3f}")
    return "\n".join(lines)


def _profiles() -> None:
    for name, make, size, batches in NETWORKS[:1]:
        nets = _calibrated_nets(make, size)
        for batch in batches:
            x = torch.randn(batch, *size)
            for label in ("dgc", "dense"):
                print(f"\nprofile: {label} {name}, batch {batch} (torch.profiler, self CPU time; the "
                      f"profiler adds its own overhead per op)")
                print(profile(nets[label], x))


def _training(rounds: int, batch: int, device: str = "cpu") -> None:
    print(f"\ntraining step of resnet_cifar(20, w32), batch {batch} (forward, backward, SGD step; "
          f"ms per step)")
    print(f"{'schedule':>22} {'dense':>9} {'group':>9} {'dgc':>9}  {'dgc/dense':>9} "
          f"{'dgc/group':>9}")
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    for label, progress in (("k = 0", 0.0), ("mid schedule (p 0.4)", 0.4), ("final k", 1.0)):
        dgc = resnet_cifar(20, width=32, conv="dgc", in_channels=1)
        set_progress(dgc, progress)
        nets = {"dense": twin(dgc, "dense"), "group": twin(dgc, "group"), "dgc": dgc}
        nets = {n: m.to(device) for n, m in nets.items()}
        steps = {}
        for n, m in nets.items():
            opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

            def step(m=m, opt=opt):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(x), y).backward()
                opt.step()
            steps[n] = synchronized(step, device)
        t = interleaved_medians(steps, rounds=rounds, warmup=2)
        ms = {n: v * 1e3 for n, v in t.items()}
        print(f"{label:>22} {ms['dense']:9.1f} {ms['group']:9.1f} {ms['dgc']:9.1f}  "
              f"{ms['dgc'] / ms['dense']:9.2f} {ms['dgc'] / ms['group']:9.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench network", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-rounds", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--no-imagenet", action="store_true", help="skip DyResNet-18 at 224x224")
    parser.add_argument("--no-train", action="store_true", help="skip the training steps")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="of the inference tables (training steps stay float32)")
    parser.add_argument("--tune", action="store_true",
                        help="also time the DGC network with its executions chosen by "
                             "measurement per layer shape (dgclab.layers.tuning), in the same "
                             "rounds, and say how many layers chose which")
    parser.add_argument("--layers", action="store_true",
                        help="also split each network's time at its smallest batch into its "
                             "DGC layers and the rest the twins share")
    parser.add_argument("--profile", action="store_true",
                        help="also print where resnet_cifar(20, w32)'s time goes, per op, DGC "
                             "and dense, batch 1 and 64")
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds, args.train_rounds, args.train_batch) <= 0:
        parser.error("threads, rounds, train-rounds and train-batch must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    if args.device == "cpu" and args.dtype != "float32":
        parser.error(f"--dtype {args.dtype} is for --device cuda (CPU convs run float32 here)")
    torch.set_num_threads(args.threads)
    where = (f"{args.threads} threads" if args.device == "cpu"
             else f"{torch.cuda.get_device_name()}, {args.dtype}")
    print(f"torch {torch.__version__}, {where}, eval, final k, medians of "
          f"{args.rounds} interleaved rounds; twins: every DGC layer -> BN-ReLU + dense / "
          f"group conv of its shape")
    print("targets (network-speed issue): dgc/group <= 1.2 at batch 64 and <= 1.5 at batch 1, "
          "dgc/dense <= 0.8 at batch 1; DyResNet-18 <= 0.8x dense at batch 8; training step at "
          "the final k <= 1.0x dense\n")
    _inference(args.rounds, not args.no_imagenet, args.device, getattr(torch, args.dtype),
               args.tune)
    if not args.no_train:
        _training(args.train_rounds, args.train_batch, args.device)
    if args.layers:
        _layer_splits(args.rounds, not args.no_imagenet, args.device)
    if args.profile:
        _profiles()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
