"""A run folder's files and how they are read back, every problem named with its file.

The trainer writes, the command line's ``eval``, ``export`` and ``report`` and the notebooks
read; all of them go through here, so a malformed folder (a hand-edited ``config.json``, a
checkpoint from another program, weights of another width) is one line that names the file
and the problem, never a traceback from deep inside json, torch or pandas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch.nn as nn

from ..data import dataset_info
from ..layers import scale_saliency_init, set_threshold
from ..models.registry import build_model
from .checkpoint import load_checkpoint
from .config import TrainConfig

__all__ = [
    "CONFIG", "METRICS", "CHECKPOINT", "RECORDING", "REPORT", "CHECKPOINT_FORMAT",
    "read_config", "read_checkpoint", "load_weights", "config_changes", "model_of",
]

CONFIG = "config.json"  # the TrainConfig
METRICS = "metrics.csv"  # one row per finished epoch, rebuilt from the checkpoint's history
CHECKPOINT = "checkpoint.pt"  # the latest finished epoch
RECORDING = "test_recording.npz"  # the recording of that epoch's evaluation
REPORT = "report.html"
CHECKPOINT_FORMAT = "dgclab-checkpoint/1"

# What a checkpoint holds, with the type of each entry.
_CHECKPOINT_ENTRIES = {"format": str, "epoch": int, "config": dict, "model": dict,
                       "optimizer": dict, "scheduler": dict, "rng": dict, "history": list}
# Fields that may differ between the run that wrote a checkpoint and the one resuming it: where
# it runs, not what it computes.
RESUMABLE_CHANGES = ("device", "workers")


def read_config(path, **overrides) -> TrainConfig:
    """The validated ``TrainConfig`` of a ``config.json`` (``overrides`` replace fields).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not an object, unknown keys or bad values; the message names the
            file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of config fields, got a "
                         f"{type(data).__name__}")
    try:
        return TrainConfig.from_dict(data | overrides)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def read_checkpoint(path, map_location="cpu") -> dict:
    """A trainer checkpoint, checked entry by entry (``torch.load(weights_only=True)``).

    Returns:
        The checkpoint dict (see ``Trainer``), its ``config`` validated.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, not a ``dgclab-checkpoint/1`` dict, an entry missing or of the
            wrong type, a history that does not hold one row per epoch; the message names the
            file.
    """
    state = load_checkpoint(path, map_location=map_location)

    def bad(problem: str):
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint: {problem}")

    if not isinstance(state, dict):
        bad(f"it holds a {type(state).__name__}, not a dict")
    if state.get("format") != CHECKPOINT_FORMAT:
        bad(f"format={state.get('format')!r}")
    for key, kind in _CHECKPOINT_ENTRIES.items():
        if key not in state:
            bad(f"no {key!r} entry")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            bad(f"{key!r} is a {type(state[key]).__name__}, expected a {kind.__name__}")
    epoch, history = state["epoch"], state["history"]
    if epoch < 0 or len(history) != epoch or not all(isinstance(r, dict) for r in history):
        bad(f"epoch={epoch} with {len(history)} history rows (expected one dict per epoch)")
    try:
        TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as err:
        bad(f"its config: {err}")
    return state


def model_of(config: TrainConfig) -> nn.Module:
    """A freshly initialised model of ``config``'s architecture, shaped for its dataset."""
    info = dataset_info(config.dataset, config.data_root)
    model = build_model(config.model, in_channels=info.in_channels,
                        num_classes=info.num_classes, width=config.width, conv=config.conv,
                        heads=config.heads, pruning_rate=config.pruning_rate)
    if config.selection == "threshold":
        set_threshold(model, 0.0)  # DGC-G; the trainer's ThresholdFollower moves it
    if config.saliency_init != 1.0:
        scale_saliency_init(model, config.saliency_init)  # an ablation (issue #21)
    return model


def load_weights(model: nn.Module, state_dict: dict, path) -> None:
    """``model.load_state_dict(state_dict)``; weights that do not fit name the file."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ValueError(f"{path}: its weights do not fit the model its config describes "
                         f"({detail})") from None


def config_changes(saved: dict, now: TrainConfig) -> dict[str, tuple]:
    """Fields whose values differ between a saved config and ``now``: ``{key: (saved, now)}``.

    ``device`` and ``workers`` are not compared (where a run computes, not what). A field the
    saved config lacks (it predates the field) counts as its default.
    """
    current, defaults = now.to_dict(), TrainConfig().to_dict()
    changes = {}
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key, defaults.get(key)), current.get(key)
        same = a == b or (isinstance(a, float) and isinstance(b, float)
                          and math.isnan(a) and math.isnan(b))
        if not same:
            changes[key] = (a, b)
    return changes
