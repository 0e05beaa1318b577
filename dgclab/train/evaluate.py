"""Evaluate a finished (or interrupted) run folder: rebuild its model, load its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .trainer import CHECKPOINT, CONFIG, Trainer

__all__ = ["load_run", "evaluate_run"]


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
