"""What ``make demo`` runs: push real Fashion-MNIST images through a DGC ResNet and say what
every DGC layer did (which channels its heads kept, what that cost, both executions agreeing).

The saliency heads here are untrained; training (``dgclab train``) is what teaches them which
channels matter for which image.
"""

from __future__ import annotations

import time

import torch

from .analysis import count_macs, dgc_layer_macs
from .data import ensure_fashion_mnist
from .layers import dgc_layers, set_pruning_progress
from .models import resnet_cifar

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def _test_images(root: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import FashionMNIST

    test = FashionMNIST(ensure_fashion_mnist(root), train=False)
    x = test.data[:n].float().div(255).sub(FASHION_MEAN).div(FASHION_STD).unsqueeze(1)
    return x, test.targets[:n]  # (n, 1, 28, 28), (n,)


def _input_sizes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    sizes, handles = {}, []
    for name, layer in dgc_layers(model):
        handles.append(layer.register_forward_hook(
            lambda m, inp, out, name=name: sizes.__setitem__(name, tuple(inp[0].shape[-2:]))))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return sizes


def run_layer_demo(data_root="data", images=256, depth=8, width=32, seed=0) -> int:
    if images <= 0:
        raise ValueError(f"images must be positive, got images={images}")
    torch.manual_seed(seed)
    x, _ = _test_images(data_root, images)
    model = resnet_cifar(depth, width=width, conv="dgc", in_channels=1, num_classes=10).eval()
    set_pruning_progress(model, 1.0)  # the final k: each head drops 3/4 of its inputs
    print(f"resnet_cifar(depth={depth}, width={width}, conv='dgc') on {images} Fashion-MNIST "
          f"test images, heads 4, pruning rate 0.75 (untrained saliency heads)\n")

    timings, outputs = {}, {}
    with torch.no_grad():
        for execution in ("mask", "gather"):
            for _, layer in dgc_layers(model):
                layer.execution = execution
            model(x[:8])  # warm-up
            start = time.perf_counter()
            outputs[execution] = model(x)
            timings[execution] = time.perf_counter() - start
    sizes = _input_sizes(model, x)
    with torch.no_grad():
        model(x)  # leave every layer's last_selection on the full batch

    print(f"{'layer':<24} {'C_in':>5} {'k':>4} {'kept/head':>10} {'heads agree':>12} "
          f"{'realized/paper':>15}")
    realized_total = paper_total = 0
    for name, layer in dgc_layers(model):
        sel = layer.last_selection.float()  # (N, heads, C_in)
        kept = sel.sum(-1)  # (N, heads)
        # Jaccard of every pair of heads, averaged over images and pairs
        inter = torch.einsum("nac,nbc->nab", sel, sel)
        union = kept.unsqueeze(2) + kept.unsqueeze(1) - inter
        iu = torch.triu_indices(layer.heads, layer.heads, 1)
        jaccard = (inter / union.clamp(min=1))[:, iu[0], iu[1]].mean()
        realized = dgc_layer_macs(layer, sizes[name], "realized").float().mean()
        paper = dgc_layer_macs(layer, sizes[name], "paper")
        realized_total += realized.item()
        paper_total += paper
        print(f"{name:<24} {layer.in_channels:>5} {layer.inactive_channels:>4} "
              f"{kept.mean():>10.1f} {jaccard:>12.2f} {realized / paper:>15.2f}")

    paper = count_macs(model, (1, 1, 28, 28), "paper")
    dense = count_macs(model, (1, 1, 28, 28), "dense")
    diff = (outputs["mask"] - outputs["gather"]).abs().max().item()
    print(f"\nMACs per image: paper convention {paper / 1e6:.2f}M, mask execution (dense) "
          f"{dense / 1e6:.2f}M; DGC layers realized {realized_total / 1e6:.2f}M vs paper "
          f"{paper_total / 1e6:.2f}M")
    print(f"mask vs gather: max |difference| of logits {diff:.2e}; time for {images} images: "
          f"mask {timings['mask'] * 1e3:.0f} ms, gather {timings['gather'] * 1e3:.0f} ms")
    print("\n'heads agree' is the mean Jaccard overlap of two heads' kept channels (1 = the "
          "same channels).")
    return 0
