"""The configuration of a training run: one dataclass, each field with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from ..checks import check_bool, check_choice, check_float, check_int, check_type
from ..data import DATASETS
from ..layers import CONV_KINDS
from ..models.registry import MODEL_NAMES

__all__ = ["TrainConfig", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SELECTIONS = ("head-wise", "threshold")  # dgclab.train.threshold for the threshold rule


@dataclass
class TrainConfig:
    # --- the network
    model: str = "resnet20"  # a name of dgclab.models.registry.MODEL_NAMES
    width: int = 16  # resnet base width (stages: w, 2w, 4w)
    conv: str = "dgc"  # a kind of dgclab.layers.CONV_KINDS: "dense", "group" (static), "dgc", ...
    heads: int = 4  # DGC heads, or the number of groups of another grouping kind
    pruning_rate: float = 0.75  # xi: the fraction of input channels each DGC head drops at the end
    selection: str = "head-wise"  # DGC's rule: "head-wise" (official) or "threshold" (DGC-G)
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
    # --- ablations of DGC's recipe (issue #21: why DGC lags early); the defaults are official
    schedule_end: float = 0.75  # progress at which DGC's k is final (official 3/4): the trainer
    # feeds every layer's schedule progress * 0.75 / schedule_end, warm-up and ramp shrink alike
    saliency_init: float = 1.0  # scale of DGC's fc2 weights at init (official Kaiming: 1; 0.1
    # starts every saliency g near its bias, 1; dgclab.layers.scale_saliency_init)
    # --- the run
    seed: int = 0  # model init, data order (seed + epoch) and augmentation
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    eval_batch_size: int = 256
    record: bool = True  # record the test set's channel selections at every evaluation
    workers: int = 0  # DataLoader workers (0: in the main process, fully reproducible)

    def validate(self) -> "TrainConfig":
        """Raise TypeError (wrong type) or ValueError (bad value) naming the first bad field and
        its value; return self."""
        check_choice("model", self.model, MODEL_NAMES)
        check_choice("conv", self.conv, tuple(CONV_KINDS))  # kinds registered by now
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("selection", self.selection, SELECTIONS)
        if self.selection == "threshold" and self.conv != "dgc":
            raise ValueError(f"selection='threshold' is a rule of DGC layers, got "
                             f"conv={self.conv!r}")
        for name in ("data_root", "device"):
            check_type(name, getattr(self, name), str)
        for name in ("augment", "download", "sync_bn", "record"):
            check_bool(name, getattr(self, name))
        for name in ("width", "heads", "epochs", "batch_size", "eval_batch_size"):
            check_int(name, getattr(self, name), min=1)
        if self.subset is not None:
            check_int("subset", self.subset, min=1)
        check_int("workers", self.workers, min=0)
        # numpy's legacy seeding and the data order's generator (seed * 100003 + epoch, an
        # int64) both need a seed below 2**32
        check_int("seed", self.seed, min=0, max=2**32 - 1)
        check_float("pruning_rate", self.pruning_rate, min=0, max=1, max_inclusive=False)
        check_float("lr", self.lr, min=0, min_inclusive=False)
        for name in ("momentum", "weight_decay", "lasso_lambda", "saliency_init"):
            check_float(name, getattr(self, name), min=0)
        check_float("schedule_end", self.schedule_end, min=0, max=1, min_inclusive=False)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise TypeError(f"a config must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**data).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
