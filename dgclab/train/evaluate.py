"""Evaluate a finished (or interrupted) run folder: rebuild its model, load its checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from .._atomic import atomic_open
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .run_folder import CHECKPOINT, CONFIG, load_weights, model_of, read_checkpoint, read_config
from .trainer import Trainer

__all__ = ["load_run", "evaluate_run", "export_model", "load_model"]

MODEL_FORMAT = "dgclab-model/1"


def load_run(run, device: str = "auto") -> Trainer:
    """A Trainer rebuilt from ``run/config.json`` holding ``run/checkpoint.pt``'s weights.

    Nothing in the run folder is written.
    """
    run = _run_folder(run)
    config = read_config(run / CONFIG, device=device)
    state = read_checkpoint(run / CHECKPOINT)
    trainer = Trainer(config, out=None, progress=False)
    load_weights(trainer.model, state["model"], run / CHECKPOINT)
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
    run, path = _run_folder(run), Path(path)
    config = read_config(run / CONFIG)
    state = read_checkpoint(run / CHECKPOINT)
    load_weights(model_of(config), state["model"], run / CHECKPOINT)  # they fit the config
    payload = {"format": MODEL_FORMAT, "config": config.to_dict(),
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
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {MODEL_FORMAT} file (found {found!r})")
    for key, kind in (("config", dict), ("model", dict), ("metrics", dict)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{path}: its {key!r} entry is missing or not a {kind.__name__}")
    try:
        config = TrainConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: its config: {err}") from None
    model = model_of(config)
    load_weights(model, payload["model"], path)
    return model.to(device).eval(), config, dict(payload["metrics"])


def _run_folder(run) -> Path:
    run = Path(run)
    if not (run / CONFIG).is_file() or not (run / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run} is not a dgclab run folder (needs {CONFIG} and {CHECKPOINT})")
    return run
