"""Evaluate a finished (or interrupted) run folder: rebuild its model, load its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._atomic import atomic_open
from ..data import dataset_info
from ..models.registry import build_model
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .trainer import CHECKPOINT, CONFIG, Trainer

__all__ = ["load_run", "evaluate_run", "export_model", "load_model"]

MODEL_FORMAT = "dgclab-model/1"


def load_run(run, device: str = "auto") -> Trainer:
    """A Trainer rebuilt from ``run/config.json`` holding ``run/checkpoint.pt``'s weights.

    Nothing in the run folder is written.
    """
    run = Path(run)
    if not (run / CONFIG).is_file() or not (run / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run} is not a dgclab run folder (needs {CONFIG} and {CHECKPOINT})")
    config = TrainConfig.from_dict(json.loads((run / CONFIG).read_text()) | {"device": device})
    trainer = Trainer(config, out=None, progress=False)
    state = load_checkpoint(run / CHECKPOINT, map_location=trainer.device)
    trainer.model.load_state_dict(state["model"])
    trainer.epoch = int(state["epoch"])
    trainer.history = list(state["history"])
    return trainer


def evaluate_run(run, device: str = "auto") -> dict:
    """Test accuracy, paper and realized MACs per image of a run's latest checkpoint."""
    trainer = load_run(run, device)
    row = trainer.evaluate()
    return row | {"images": len(trainer.test_set), "epoch": trainer.epoch}


def export_model(run, path) -> Path:
    """Write a run's trained weights, config and last metrics to one small file.

    The file (a dict of tensors and plain values, loadable with ``weights_only=True``) holds no
    optimizer state: a resnet8 of width 32 takes about 1.3 MB. ``load_model`` rebuilds it.
    """
    run, path = Path(run), Path(path)
    if not (run / CONFIG).is_file() or not (run / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run} is not a dgclab run folder (needs {CONFIG} and {CHECKPOINT})")
    state = load_checkpoint(run / CHECKPOINT)
    payload = {"format": MODEL_FORMAT, "config": json.loads((run / CONFIG).read_text()),
               "model": state["model"], "epoch": int(state["epoch"]),
               "metrics": state["history"][-1] if state["history"] else {}}
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_model(path, device: str = "cpu"):
    """The model of an ``export_model`` file, in eval mode, with its config and last metrics.

    Returns:
        ``(model, config, metrics)``: the nn.Module (DGC layers carry their final k), the
        ``TrainConfig`` and the last ``metrics.csv`` row as a dict.
    """
    payload = load_checkpoint(path, map_location=device)
    if payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a {MODEL_FORMAT} file (format={payload.get('format')!r})")
    config = TrainConfig.from_dict(payload["config"])
    info = dataset_info(config.dataset, config.data_root)
    model = build_model(config.model, in_channels=info.in_channels, num_classes=info.num_classes,
                        width=config.width, conv=config.conv, heads=config.heads,
                        pruning_rate=config.pruning_rate)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), config, dict(payload["metrics"])
