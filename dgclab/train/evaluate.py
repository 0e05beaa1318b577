"""Read a finished (or interrupted) run folder back: its model, its test metrics, an export.

``load_run`` rebuilds the model from the config (through the model and conv registries) and
loads the checkpoint's weights; ``evaluate_run`` evaluates it (``dgclab.train.evaluate_model``); no
``Trainer`` is involved. ``export_model`` writes the weights and config to one small file that
``load_model`` (also ``dgclab.load_model``) reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .._atomic import atomic_open
from ..data import load_dataset
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .evaluation import evaluate_model, resolve_device
from .run_folder import CHECKPOINT, CONFIG, load_weights, model_of, read_checkpoint, read_config

__all__ = ["Run", "load_run", "evaluate_run", "export_model", "load_model"]

MODEL_FORMAT = "dgclab-model/1"


@dataclass
class Run:
    """A run folder read back: what ``load_run`` returns."""

    config: TrainConfig  # its config.json
    model: nn.Module  # its architecture with the checkpoint's weights, in eval mode
    epoch: int  # epochs the checkpoint has finished
    history: list[dict]  # one metrics row per finished epoch


def load_run(run, device: str = "auto") -> Run:
    """The model of ``run/config.json`` holding ``run/checkpoint.pt``'s weights, and its history.

    No trainer, optimizer or data is built, and nothing in the run folder is written.

    Raises:
        FileNotFoundError: not a run folder.
        ValueError: a malformed config or checkpoint, weights that do not fit, a bad device.
    """
    run = _run_folder(run)
    config = read_config(run / CONFIG, device=device)
    state = read_checkpoint(run / CHECKPOINT)
    model = model_of(config)
    load_weights(model, state["model"], run / CHECKPOINT)
    model = model.to(resolve_device(config.device)).eval()
    return Run(config, model, int(state["epoch"]), list(state["history"]))


def evaluate_run(run, device: str = "auto") -> dict:
    """Test accuracy, paper and realized MACs per image of a run's latest checkpoint.

    ``load_run``, then ``evaluate_model`` on the run's test set (its dataset, subset and seed).
    """
    loaded = load_run(run, device)
    config = loaded.config
    _, test_set, info = load_dataset(config.dataset, config.data_root, config.subset,
                                     config.seed, download=config.download, augment=config.augment)
    loader = DataLoader(test_set, config.eval_batch_size, shuffle=False,
                        num_workers=config.workers)
    input_size = (1, info.in_channels, info.image_size, info.image_size)
    row, _ = evaluate_model(loaded.model, loader, input_size, record=config.record)
    return row | {"images": len(test_set), "epoch": loaded.epoch}


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
