"""What ``make demo`` runs: train a small DGC ResNet on Fashion-MNIST for a few minutes, record
which channels every head chose for every test image, write ``runs/demo/report.html``, say
what the network learned to do, and put its accuracy beside what the same recipe reaches on
the whole training set (the accuracy bench's published tables, where the data folder has them).

Re-running resumes an interrupted demo (or just reprints a finished one).
"""

from __future__ import annotations

from pathlib import Path

from .analysis import head_overlap, realized_macs
from .train import Trainer, TrainConfig

DEMO = dict(model="resnet8", width=32, conv="dgc", heads=4, pruning_rate=0.75,
            dataset="fashion-mnist", subset=20_000, epochs=3, batch_size=128, lr=0.1)

# The accuracy bench's published tables (``python -m dgclab.bench accuracy``: the same network
# and recipe on all 60,000 images), beside Fashion-MNIST in the data folder of a checkout.
PUBLISHED = (("8 epochs", "bench-accuracy"), ("30 epochs", "bench-accuracy-30"))
_NAMES = {"dense": "dense", "group": "static groups", "dgc": "DGC", "lgc": "LGC"}


def published_accuracy(data_root="data") -> list[str]:
    """One line per budget of the accuracy bench published under ``data_root``: what the demo's
    recipe reaches with the whole training set and longer training, so that the demo's own
    result (a few minutes on a third of the data) is read against it. Budgets whose
    ``summary.csv`` is absent are left out.
    """
    import pandas as pd

    lines = []
    for budget, folder in PUBLISHED:
        path = Path(data_root) / folder / "summary.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path).set_index("conv")
        parts = [f"{_NAMES[conv]} {100 * table.acc_mean[conv]:.2f} % "
                 f"({table.seeds[conv]} seed{'s' if table.seeds[conv] > 1 else ''})"
                 for conv in _NAMES if conv in table.index]
        lines.append(f"  {budget}: {', '.join(parts)}   ({path})")
    return lines


def run_demo(out="runs/demo", data_root="data", epochs=None, subset=None, progress=True) -> int:
    config = TrainConfig(**(DEMO | {"data_root": str(data_root)}
                            | ({"epochs": epochs} if epochs is not None else {})
                            | ({"subset": subset} if subset is not None else {}))).validate()
    print(f"Training {config.model} (resnet_cifar, width {config.width}, conv={config.conv!r}, "
          f"heads {config.heads}, pruning rate {config.pruning_rate}) on {config.subset:,} "
          f"{config.dataset} images for {config.epochs} epochs; run folder {out}\n")
    trainer = Trainer(config, out, resume=True, progress=progress)
    history = trainer.fit()
    if trainer.recording is None:  # a finished run: evaluate once more to get the recording
        trainer.evaluate()
    rec = trainer.recording
    last = history.iloc[-1]

    overlap = head_overlap(rec, chance=True).groupby("layer", sort=False)[
        ["jaccard", "jaccard_chance"]].mean()
    per_layer = realized_macs(rec, per_layer=True).groupby("layer", sort=False)[
        ["realized", "paper"]].mean()
    print(f"\n{'DGC layer':<24} {'C_in':>5} {'k':>4} {'kept/head':>10} {'head overlap':>13} "
          f"{'(chance)':>9} {'realized/paper MACs':>20}")
    for name in rec.layer_names:
        info = rec.layer_info(name)
        kept = rec.selections(name).sum(-1).float().mean()
        print(f"{name:<24} {info['in_channels']:>5} {info['inactive_channels']:>4} "
              f"{kept:>10.1f} {overlap.jaccard[name]:>13.2f} {overlap.jaccard_chance[name]:>9.2f} "
              f"{per_layer.realized[name] / per_layer.paper[name]:>20.2f}")

    from .report import write_report

    report = write_report(out)
    print(f"\ntest accuracy {last.test_acc:.4f} after {int(last.epoch)} epochs")
    print(f"MACs per image: paper convention {last.paper_macs / 1e6:.2f}M, realized (what the "
          f"test images really used) {last.realized_macs / 1e6:.2f}M")
    print(f"report: {Path(report).resolve()}")
    published = published_accuracy(data_root)
    if published:
        print(f"\nThis demo trains {config.epochs} epochs on {config.subset:,} images to finish in "
              f"minutes. The same recipe on all 60,000 images (python -m dgclab.bench accuracy):")
        print("\n".join(published))
    print("\n'head overlap' is the mean Jaccard of two heads' kept channels over the test images; "
          "'chance' is what heads picking channels at random would give.")
    return 0
