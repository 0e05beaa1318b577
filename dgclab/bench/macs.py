"""MACs and parameters of the paper's networks and of dgclab's small ones (SPEC §1.4-1.5).

Paper convention (the DGC conv term at the target keep ratio 1 - xi) and dense convention
(what the mask execution computes), per image, with the paper's reference where there is one.
"""

from __future__ import annotations

import argparse

from ..analysis import count_macs
from ..models import dydensenet86, dyresnet18, resnet_cifar

MODELS = [
    ("DyDenseNet-86, CIFAR-10", lambda: dydensenet86(10), (1, 3, 32, 32),
     "paper: 71.04M MACs, 4,264,810 params"),
    ("DyResNet-18, ImageNet, xi 0.55", lambda: dyresnet18(1000), (1, 3, 224, 224),
     "torchvision ResNet-18: 1.82G"),
    ("resnet_cifar(20, 32, dense), F-MNIST", lambda: resnet_cifar(20, 32, "dense", in_channels=1),
     (1, 1, 28, 28), ""),
    ("resnet_cifar(20, 32, group), F-MNIST", lambda: resnet_cifar(20, 32, "group", in_channels=1),
     (1, 1, 28, 28), ""),
    ("resnet_cifar(20, 32, dgc), F-MNIST", lambda: resnet_cifar(20, 32, "dgc", in_channels=1),
     (1, 1, 28, 28), ""),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgclab.bench macs", description=__doc__)
    parser.parse_args(argv)
    print("| model | input | params | MACs, paper convention | MACs, dense (mask) | reference |")
    print("|---|---|---|---|---|---|")
    for name, make, size, ref in MODELS:
        model = make()
        params = sum(p.numel() for p in model.parameters())
        paper = count_macs(model, size, "paper")
        dense = count_macs(model, size, "dense")
        print(f"| {name} | {'x'.join(map(str, size[1:]))} | {params:,} | {paper / 1e6:,.2f}M "
              f"| {dense / 1e6:,.2f}M | {ref} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
