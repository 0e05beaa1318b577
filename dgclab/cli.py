"""The command line: ``python -m dgclab COMMAND`` (also installed as ``dgclab``)."""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import ensure_fashion_mnist

    try:
        root = ensure_fashion_mnist(args.root, allow_apt=not args.no_apt,
                                    allow_download=not args.no_download)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"Fashion-MNIST ready under {root}/FashionMNIST/raw")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_layer_demo

    return run_layer_demo(data_root=args.root, images=args.images, depth=args.depth,
                          width=args.width, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgclab",
        description="Dynamic group convolution: layers, models, MACs and benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="make a dataset available offline under --root")
    data.add_argument("dataset", choices=["fashion-mnist"])
    data.add_argument("--root", default="data", help="folder torchvision reads (default: data)")
    data.add_argument("--no-apt", action="store_true", help="do not apt-get install anything")
    data.add_argument("--no-download", action="store_true", help="do not try torchvision's download")
    data.set_defaults(func=_cmd_data)

    demo = sub.add_parser("demo", help="the main job of `make demo`")
    demo.add_argument("--root", default="data", help="where Fashion-MNIST is (default: data)")
    demo.add_argument("--images", type=int, default=256, help="test images to push through")
    demo.add_argument("--depth", type=int, default=8, help="resnet_cifar depth (6n+2)")
    demo.add_argument("--width", type=int, default=32, help="resnet_cifar base width")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    start = time.perf_counter()
    code = args.func(args)
    if code == 0 and args.command != "data":
        print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return code
