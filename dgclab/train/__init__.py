"""Training: the paper's recipe on any dgclab model, with checkpoints that survive a kill."""

from .._atomic import atomic_write_text
from .checkpoint import atomic_torch_save, load_checkpoint
from .config import OPTIMIZERS, TrainConfig
from .evaluate import Run, evaluate_run, export_model, load_model, load_run
from .evaluation import evaluate_model, recalibrate_bn, resolve_device
from .trainer import METRIC_COLUMNS, Trainer, TrainingDiverged, build_optimizer, fit

__all__ = [
    "METRIC_COLUMNS",
    "OPTIMIZERS",
    "Run",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "atomic_torch_save",
    "atomic_write_text",
    "build_optimizer",
    "evaluate_model",
    "evaluate_run",
    "export_model",
    "fit",
    "load_checkpoint",
    "load_model",
    "load_run",
    "recalibrate_bn",
    "resolve_device",
]
