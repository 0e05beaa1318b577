"""Training: the paper's recipe on any dgclab model, with checkpoints that survive a kill."""

from .._atomic import atomic_write_text
from .checkpoint import atomic_torch_save, load_checkpoint
from .config import OPTIMIZERS, TrainConfig
from .trainer import METRIC_COLUMNS, Trainer, TrainingDiverged, build_optimizer, fit

__all__ = [
    "METRIC_COLUMNS",
    "OPTIMIZERS",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "atomic_torch_save",
    "atomic_write_text",
    "build_optimizer",
    "fit",
    "load_checkpoint",
]
