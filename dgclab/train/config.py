"""The configuration of a training run: one dataclass, each field with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from ..data import DATASETS
from ..models.registry import MODEL_NAMES

__all__ = ["TrainConfig", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "adamw")
CONVS = ("dense", "group", "dgc")


@dataclass
class TrainConfig:
    # --- the network
    model: str = "resnet20"  # a name of dgclab.models.registry.MODEL_NAMES
    width: int = 16  # resnet base width (stages: w, 2w, 4w)
    conv: str = "dgc"  # "dense" | "group" (static groups=heads) | "dgc"
    heads: int = 4  # DGC heads, or the number of static groups
    pruning_rate: float = 0.75  # xi: the fraction of input channels each DGC head drops at the end
    # --- the data
    dataset: str = "fashion-mnist"  # one of dgclab.data.DATASETS
    data_root: str = "data"  # where datasets live (torchvision layouts)
    subset: int | None = None  # keep this many train (and at most this many test) images
    augment: bool = True  # random crop + flip on the training set
    download: bool = True  # may install/download missing data
    # --- the optimisation (the paper's recipe is SGD nesterov 0.9, lr 0.1, wd 1e-4, cosine)
    epochs: int = 5
    batch_size: int = 64  # per process
    optimizer: str = "sgd"  # "sgd" (nesterov; wd = L2), "adam" (wd = coupled L2), "adamw" (decoupled)
    lr: float = 0.1  # peak learning rate; cosine to 0 per iteration, no warm-up
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    lasso_lambda: float = 1e-5  # weight of the DGC saliency lasso, active from step 0
    # --- the run
    seed: int = 0  # model init, data order (seed + epoch) and augmentation
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    eval_batch_size: int = 256
    record: bool = True  # record the test set's channel selections at every evaluation
    workers: int = 0  # DataLoader workers (0: in the main process, fully reproducible)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field; return self."""
        def bad(name, why):
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        if self.model not in MODEL_NAMES:
            bad("model", f"must be one of {MODEL_NAMES}")
        if self.conv not in CONVS:
            bad("conv", f"must be one of {CONVS}")
        if self.dataset not in DATASETS:
            bad("dataset", f"must be one of {DATASETS}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {OPTIMIZERS}")
        for name in ("width", "heads", "epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                bad(name, "must be a positive int")
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset <= 0):
            bad("subset", "must be a positive int or None")
        if self.workers < 0:
            bad("workers", "must be >= 0")
        if not 0 <= self.pruning_rate < 1:
            bad("pruning_rate", "must be in [0, 1)")
        for name in ("lr", "momentum", "weight_decay", "lasso_lambda"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                bad(name, "must be a number >= 0")
        if self.lr == 0:
            bad("lr", "must be > 0")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**data).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
