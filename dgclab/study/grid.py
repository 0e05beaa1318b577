"""The grid of the implicit filter sparsity study: which networks are trained, how, and for how
long (SPEC §7).

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495, found that a CNN with BN-ReLU features trained with Adam and a
coupled L2 penalty (``torch.optim.Adam(weight_decay=lambda)``) ends with many dead filters,
while decoupled weight decay (AdamW), SGD + L2 and no regularisation leave almost none. Their
exact grid was not retrievable; **this is dgclab's own grid** (SPEC §7), ``GRID``:

=========================  ==========  =========  ============  ======  =======  =====
arm                        model       optimizer  regularis.    lambda  lr       batch
=========================  ==========  =========  ============  ======  =======  =====
basicnet-adam-l2-{lam}     basicnet    adam       l2 (coupled)  5e-4,   1e-3     64
                                                                1e-4
basicnet-adamw-{lam}       basicnet    adamw      decoupled     same    1e-3     64
basicnet-sgd-l2-{lam}      basicnet    sgd        l2            same    0.05     64
basicnet-adam-none         basicnet    adam       none          0       1e-3     64
basicnet-adam-l2-5e-4-b256 basicnet    adam       l2 (coupled)  5e-4    1e-3     256
dgc-adam-l2-5e-4           resnet8-dgc adam       l2 (coupled)  5e-4    1e-3     64
dgc-adamw-5e-4             resnet8-dgc adamw      decoupled     5e-4    1e-3     64
dgc-sgd-l2-5e-4            resnet8-dgc sgd        l2            5e-4    0.05     64
dgc-adam-none              resnet8-dgc adam       none          0       1e-3     64
=========================  ==========  =========  ============  ======  =======  =====

* ``basicnet``: ``dgclab.models.basicnet`` (7 conv3x3-BN-ReLU, 32-64-64-128-128-256-256, max
  pool after layers 2, 4, 6, global pool, linear).
* ``resnet8-dgc``: ``resnet_cifar(8, width=16, conv="dgc", heads=4, pruning_rate=0.75)``, the
  DGC ResNet of dgclab (stages 16-32-64); with the DGC saliency lasso (1e-5) of the DGC recipe,
  which is not a weight regularisation and is the same in every DGC arm. Only the lambda = 5e-4
  row, to keep the grid's cost down.
* The batch-size variation is the arm that should show sparsity (Adam + L2, lambda = 5e-4) at
  batch 256, with the same epochs and learning rate (so 4x fewer steps), as Mehta et al.
  compare batch sizes.
* Every arm: ``dgclab.train.Trainer``: the SGD arms are Nesterov SGD with momentum 0.9; every
  arm's learning rate follows a per-iteration cosine to 0 without warm-up; random crops (and
  flips on CIFAR) on the training set.

Budget: ``BUDGETS`` gives a default training subset and number of epochs per dataset, chosen so
that one BasicNet arm takes about 10 CPU-minutes on one core of a loaded 2-core machine
(measured: about 240 training and 580 evaluation images/s; Fashion-MNIST 10,000 images x 8
epochs, ~9 min; a DGC arm takes about 1.3x as long). ``full=True`` trains on the full training
set instead.

A filter is dead by ``GAMMA_THRESHOLD`` (its BN ``|gamma|``, the authors' pruning rule) or by
``ACTIVATION_THRESHOLD`` (its ReLU output over the training set); ``dgclab.study.runner``
trains the arms and measures them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from ..train import TrainConfig

__all__ = [
    "Arm",
    "GRID",
    "MODELS",
    "STUDY_DATASETS",
    "BUDGETS",
    "GAMMA_THRESHOLD",
    "ACTIVATION_THRESHOLD",
    "ANALYSIS_BATCH",
    "BASICNET_MODELS",
    "PILOT_BUDGET",
    "select_arms",
]

STUDY_DATASETS = ("fashion-mnist", "cifar10", "synthetic")
# dataset -> (training images, epochs): about 10 CPU-minutes per BasicNet arm (module docstring).
BUDGETS = {"fashion-mnist": (10_000, 8), "cifar10": (8_000, 8), "synthetic": (2_000, 8)}
GAMMA_THRESHOLD = 1e-3  # the authors' pruning rule (SPEC §7)
ACTIVATION_THRESHOLD = 1e-12  # dead: max ReLU output over the training set below this
ANALYSIS_BATCH = 256  # images per batch when measuring a trained arm

# The pilot budget (data/sparsity-fmnist/PILOT.md): the whole Fashion-MNIST training set, the
# pilot's 30-epoch cosine, and the BasicNet arms at half width (the pilot's net).
PILOT_BUDGET = {"full": True, "epochs": 30, "basicnet": "basicnet-half"}
BASICNET_MODELS = ("basicnet", "basicnet-half")  # what the BasicNet arms may train

# model label -> TrainConfig fields
MODELS = {
    "basicnet": dict(model="basicnet", conv="dense"),  # conv: for config.json only
    "basicnet-half": dict(model="basicnet-half", conv="dense"),  # BasicNet at half the widths
    "resnet8-dgc": dict(model="resnet8", width=16, conv="dgc", heads=4, pruning_rate=0.75),
}


@dataclass(frozen=True)
class Arm:
    """One cell of the grid: a model trained by one optimizer with one regularisation."""

    name: str  # run folder prefix and the ``arm`` column
    model: str  # a key of MODELS
    optimizer: str  # "adam" | "adamw" | "sgd" (dgclab.train.build_optimizer)
    regularisation: str  # "l2" (coupled: in the gradient) | "decoupled" | "none"
    lam: float  # lambda, the optimizer's weight_decay (0 for "none")
    lr: float  # peak learning rate (cosine to 0)
    batch_size: int = 64

    def train_config(self, dataset: str, subset: int | None, epochs: int, seed: int,
                     data_root: str = "data", device: str = "auto",
                     download: bool = True) -> TrainConfig:
        """The ``TrainConfig`` of this arm for one seed."""
        return TrainConfig(
            **MODELS[self.model], dataset=dataset, data_root=data_root, subset=subset,
            epochs=epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
            momentum=0.9, weight_decay=self.lam, seed=seed, device=device, download=download,
        ).validate()

    def columns(self, seed: int) -> dict:
        """The arm's identifying columns in every table of the study."""
        return {"arm": self.name, "model": self.model, "optimizer": self.optimizer,
                "regularisation": self.regularisation, "lambda": self.lam, "lr": self.lr,
                "batch_size": self.batch_size, "seed": seed}


def _grid() -> tuple[Arm, ...]:
    arms = []
    for lam, tag in ((5e-4, "5e-4"), (1e-4, "1e-4")):
        arms += [
            Arm(f"basicnet-adam-l2-{tag}", "basicnet", "adam", "l2", lam, 1e-3),
            Arm(f"basicnet-adamw-{tag}", "basicnet", "adamw", "decoupled", lam, 1e-3),
            Arm(f"basicnet-sgd-l2-{tag}", "basicnet", "sgd", "l2", lam, 0.05),
        ]
    arms += [
        Arm("basicnet-adam-none", "basicnet", "adam", "none", 0.0, 1e-3),
        Arm("basicnet-adam-l2-5e-4-b256", "basicnet", "adam", "l2", 5e-4, 1e-3, batch_size=256),
        Arm("dgc-adam-l2-5e-4", "resnet8-dgc", "adam", "l2", 5e-4, 1e-3),
        Arm("dgc-adamw-5e-4", "resnet8-dgc", "adamw", "decoupled", 5e-4, 1e-3),
        Arm("dgc-sgd-l2-5e-4", "resnet8-dgc", "sgd", "l2", 5e-4, 0.05),
        Arm("dgc-adam-none", "resnet8-dgc", "adam", "none", 0.0, 1e-3),
    ]
    return tuple(arms)


GRID: tuple[Arm, ...] = _grid()


def select_arms(patterns: Sequence[str] | str | None = None,
                grid: Sequence[Arm] = GRID) -> list[Arm]:
    """The arms of ``grid`` whose names match any of ``patterns`` (exact names or shell
    patterns such as ``"dgc-*"``), in grid order; all of them for None.

    Raises ValueError naming a pattern that matches no arm.
    """
    if patterns is None:
        return list(grid)
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",")]
    patterns = [p.strip() for p in patterns if p.strip()]
    if not patterns:
        raise ValueError("arms is empty; name at least one arm (or leave it out for all)")
    names = [a.name for a in grid]
    for p in patterns:
        if not fnmatch.filter(names, p):
            raise ValueError(f"arm {p!r} matches no arm of the grid; arms are {names}")
    return [a for a in grid if any(fnmatch.fnmatchcase(a.name, p) for p in patterns)]
