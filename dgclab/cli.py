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
    from .demo import run_demo

    return run_demo(out=args.out, data_root=args.root, epochs=args.epochs, subset=args.subset,
                    progress=not args.no_progress)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer, TrainConfig

    config = TrainConfig(
        model=args.model, width=args.width, conv=args.conv, heads=args.heads,
        pruning_rate=args.pruning_rate, selection=args.selection, dataset=args.dataset,
        data_root=args.data_root,
        subset=args.subset, augment=not args.no_augment, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay,
        lasso_lambda=args.lasso_lambda, schedule_end=args.schedule_end,
        saliency_init=args.saliency_init, seed=args.seed, device=args.device,
        sync_bn=args.sync_bn, workers=args.workers, download=not args.no_download,
    )
    trainer = Trainer(config, args.out, resume=args.resume, progress=not args.no_progress)
    history = trainer.fit()
    if trainer.is_main:
        last = history.iloc[-1]
        print(f"{args.out}: epoch {int(last.epoch)}, test accuracy {last.test_acc:.4f}, "
              f"paper MACs {last.paper_macs / 1e6:.2f}M, realized MACs "
              f"{last.realized_macs / 1e6:.2f}M")
        if not args.no_report:
            from .report import write_report

            print(f"report: {write_report(args.out)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_run

    result = evaluate_run(args.run, device=args.device)
    print(f"{args.run}: test accuracy {result['test_acc']:.4f} on {result['images']} images, "
          f"paper MACs {result['paper_macs'] / 1e6:.2f}M, realized MACs "
          f"{result['realized_macs'] / 1e6:.2f}M per image")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .train.evaluate import export_model

    path = export_model(args.run, args.path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"report: {write_report(args.run)}")
    return 0


def _cmd_study_sparsity(args: argparse.Namespace) -> int:
    from .study import format_report, publish_study, refresh_study, run_sparsity_study

    start = time.perf_counter()
    if args.report_only:
        result = refresh_study(args.out)
    else:
        budget = {"full": args.full, "epochs": args.epochs, "basicnet": args.basicnet}
        if args.budget == "pilot":
            from .study import PILOT_BUDGET

            clash = [f"--{k}" for k, v in budget.items()
                     if v not in (None, False, "basicnet") and v != PILOT_BUDGET[k]]
            if args.subset is not None or clash:
                given = clash + (["--subset"] if args.subset is not None else [])
                raise ValueError(f"--budget pilot sets --full, --epochs and --basicnet itself; "
                                 f"drop {given}")
            budget = dict(PILOT_BUDGET)
        result = run_sparsity_study(
            args.out, args.dataset, args.subset, budget["epochs"], seeds=args.seeds,
            arms=args.arms, full=budget["full"], basicnet=budget["basicnet"],
            data_root=args.data_root, device=args.device,
            download=not args.no_download, progress=not args.no_progress,
        )
    print()
    print(format_report(result))
    if result.figures:
        print("\nfigures: " + ", ".join(str(p) for p in result.figures))
    print(f"tables: {result.out}/sparsity.csv, summary.csv, pruning.csv, dgc_selection.csv")
    if args.publish:
        written = publish_study(result, args.publish)
        print(f"published {len(written)} files to {args.publish}")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return 0


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

    from .data import DATASETS
    from .models.registry import MODEL_NAMES
    from .layers import CONV_KINDS
    from .train.config import OPTIMIZERS, SELECTIONS, TrainConfig

    d = TrainConfig()
    train = sub.add_parser("train", help="train a model; writes a run folder (see --out)")
    train.add_argument("--model", default=d.model, choices=MODEL_NAMES)
    train.add_argument("--width", type=int, default=d.width, help="resnet base width")
    train.add_argument("--conv", default=d.conv, choices=tuple(CONV_KINDS))
    train.add_argument("--heads", type=int, default=d.heads)
    train.add_argument("--pruning-rate", type=float, default=d.pruning_rate)
    train.add_argument("--selection", default=d.selection, choices=SELECTIONS,
                       help="DGC's selection rule: the official head-wise one, or DGC-G's "
                            "global threshold (its training rule: dgclab.train.threshold)")
    train.add_argument("--dataset", default=d.dataset, choices=DATASETS)
    train.add_argument("--data-root", default=d.data_root)
    train.add_argument("--subset", type=int, default=None, help="train on N images (quick runs)")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--no-download", action="store_true")
    train.add_argument("--epochs", type=int, default=d.epochs)
    train.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    train.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    train.add_argument("--lr", type=float, default=d.lr)
    train.add_argument("--momentum", type=float, default=d.momentum)
    train.add_argument("--weight-decay", type=float, default=d.weight_decay)
    train.add_argument("--lasso-lambda", type=float, default=d.lasso_lambda)
    train.add_argument("--schedule-end", type=float, default=d.schedule_end,
                       help="ablation: progress at which DGC's k is final (official 0.75)")
    train.add_argument("--saliency-init", type=float, default=d.saliency_init,
                       help="ablation: scale of DGC's saliency fc2 weights at init (official 1)")
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--device", default=d.device)
    train.add_argument("--workers", type=int, default=d.workers)
    train.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm (CUDA only)")
    train.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-report", action="store_true", help="skip report.html at the end")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="test accuracy and MACs of a run folder")
    ev.add_argument("run")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_cmd_eval)

    exp = sub.add_parser("export", help="write a run's trained model (no optimizer) to PATH")
    exp.add_argument("run")
    exp.add_argument("path")
    exp.set_defaults(func=_cmd_export)

    rep = sub.add_parser("report", help="(re)build RUN/report.html")
    rep.add_argument("run")
    rep.set_defaults(func=_cmd_report)

    demo = sub.add_parser("demo", help="the main job of `make demo`: train a small DGC ResNet "
                          "on Fashion-MNIST, record the test set, write a report")
    demo.add_argument("--root", default="data", help="where Fashion-MNIST is (default: data)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="default 3")
    demo.add_argument("--subset", type=int, default=None, help="training images (default 20000)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    from .study import BUDGETS, GRID, STUDY_DATASETS

    study = sub.add_parser("study", help="grids of training runs: `study sparsity` (SPEC §7)")
    studies = study.add_subparsers(dest="study", metavar="STUDY", required=True)
    budgets = ", ".join(f"{k}: {n} images x {e} epochs" for k, (n, e) in BUDGETS.items())
    sp = studies.add_parser(
        "sparsity",
        help="implicit filter sparsity (Mehta et al.) on BasicNet and a DGC ResNet",
        description="Train dgclab's grid of SPEC §7 (arms: " + ", ".join(a.name for a in GRID)
        + "), measure dead filters over the training set, remove them from BasicNet, relate "
        "DGC selections to dead channels. Finished arms are skipped on a rerun.",
    )
    sp.add_argument("--dataset", default="fashion-mnist", choices=STUDY_DATASETS)
    sp.add_argument("--subset", type=int, default=None,
                    help=f"training images (default per dataset, about 10 CPU-minutes per "
                    f"arm: {budgets})")
    sp.add_argument("--epochs", type=int, default=None, help="default per dataset (see --subset)")
    sp.add_argument("--full", action="store_true", help="train on the whole training set")
    sp.add_argument("--basicnet", default="basicnet", choices=("basicnet", "basicnet-half"),
                    help="the network of the BasicNet arms (basicnet-half: the pilot's)")
    sp.add_argument("--budget", default=None, choices=("pilot",),
                    help="pilot: the budget the pilot set (data/sparsity-fmnist/PILOT.md): "
                    "--full --epochs 30 --basicnet basicnet-half")
    sp.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 of every arm (default 1)")
    sp.add_argument("--arms", default=None,
                    help="comma-separated arm names or shell patterns ('dgc-*'); default all")
    sp.add_argument("--out", required=True, help="study folder, e.g. runs/sparsity")
    sp.add_argument("--data-root", default=d.data_root)
    sp.add_argument("--device", default=d.device)
    sp.add_argument("--no-download", action="store_true")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--report-only", action="store_true",
                    help="train nothing: rebuild the tables, figures and report of --out")
    sp.add_argument("--publish", metavar="DIR", default=None,
                    help="then copy the small files (tables, figures, report) to DIR, e.g. "
                    "data/sparsity-fmnist; the run folders stay in --out")
    sp.set_defaults(func=_cmd_study_sparsity)
    return parser


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    start = time.perf_counter()
    from .train import TrainingDiverged

    try:
        code = args.func(args)
    except TrainingDiverged as err:  # a run that failed, not a bad input
        print(f"dgclab {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as err:  # bad input, named by the message
        print(f"dgclab {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if code == 0 and args.command in ("demo", "train"):
        print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return code
