"""The training loop used by the command line and the notebooks.

One ``Trainer`` runs the paper's recipe (SPEC §1.2-1.3) on any dgclab model: SGD nesterov /
Adam (coupled L2) / AdamW (decoupled), a per-iteration cosine learning rate, every grouping
layer's schedule driven by training progress (``dgclab.layers.set_progress``: DGC's pruning
schedule) and ``lambda * regularization_loss`` (DGC's lasso) added to the loss from step 0. The
trainer knows layers by the layer protocol only, never by class. After every epoch it evaluates
on the test set (``dgclab.train.evaluate_model``, inside a ``Recorder``: which channels every head
chose for every test image), appends a row of metrics, and writes the run folder:

====================  ======================================================================
``config.json``       the ``TrainConfig``
``metrics.csv``       one row per finished epoch (rewritten atomically from the checkpoint's
                      history, so it never holds an epoch twice)
``checkpoint.pt``     the latest epoch: model, optimizer, scheduler, RNG states, history
``test_recording.npz``  the last evaluation's recording (``dgclab.load_recording``)
====================  ======================================================================

A run killed at any moment loses at most its current epoch: ``resume=True`` continues from the
checkpoint exactly (data order depends only on seed and epoch; RNG states are restored).

Callbacks are plain objects with any of these methods, called on rank 0::

    on_train_begin(trainer)
    on_step_end(trainer, step, epoch, logs)        # logs: loss, acc, lasso, lr, k_frac
    on_epoch_end(trainer, epoch, row)              # row: the metrics.csv row as a dict
    on_train_end(trainer, history)                 # history: DataFrame

Distributed: started by ``torchrun``, each process trains on its share of every epoch
(DistributedSampler, gloo on CPU, nccl on CUDA); rank 0 evaluates, records and writes.
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..checks import check_type
from ..data import load_dataset
from ..layers import grouping_layers, regularization_loss, set_progress
from ..record import load_recording
from .._atomic import atomic_write_text, remove_stale_temporaries
from .checkpoint import atomic_torch_save, rng_state, set_rng_state
from .config import TrainConfig
from .evaluation import evaluate_model, resolve_device
from .threshold import ThresholdFollower
from .run_folder import (
    CHECKPOINT, CHECKPOINT_FORMAT, CONFIG, METRICS, RECORDING, config_changes, load_weights,
    model_of, read_checkpoint, read_config,
)

__all__ = ["Trainer", "TrainingDiverged", "fit", "METRIC_COLUMNS", "build_optimizer"]

METRIC_COLUMNS = [
    "epoch", "step", "lr", "train_loss", "train_acc", "lasso", "test_loss", "test_acc", "k_frac",
    "dead_filters", "head_overlap", "paper_macs", "realized_macs", "epoch_seconds",
]


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the run stopped before saving them."""


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (nesterov; weight decay is L2), Adam (coupled L2) or AdamW (decoupled decay)."""
    check_type("model", model, nn.Module)
    check_type("config", config, TrainConfig)
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


class Trainer:
    """Train a model under a ``TrainConfig``, writing the run folder ``out`` (optional).

    Args:
        config: the run's configuration (validated here).
        out: run folder; None keeps everything in memory (notebooks, tests).
        resume: continue from ``out/checkpoint.pt`` when it exists.
        callbacks: objects with ``on_*`` methods (see the module docstring).
        progress: tqdm bars for epochs and batches.
        model: use this model instead of building ``config.model`` (notebooks).

    Example:
        >>> config = TrainConfig(model="resnet8", dataset="synthetic", subset=256, epochs=1)
        >>> history = Trainer(config, progress=False).fit()  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, out: str | os.PathLike | None = None,
                 resume: bool = False, callbacks=(), progress: bool = True,
                 model: nn.Module | None = None) -> None:
        self.config = check_type("config", config, TrainConfig).validate()
        self.out = Path(out) if out is not None else None
        self.callbacks = list(callbacks)
        if config.selection == "threshold":  # DGC-G: the threshold follows the schedule
            self.callbacks.insert(0, ThresholdFollower())
        self.progress = progress
        self.history: list[dict] = []
        self.epoch = 0  # epochs finished
        self.recording = None

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = resolve_device(config.device)
        if self.world > 1:
            self._init_distributed()
        self.rank = dist.get_rank() if self.distributed else 0
        if config.selection == "threshold" and self.world > 1:
            raise ValueError("selection='threshold' trains in one process (the threshold is "
                             f"moved on rank 0), got WORLD_SIZE={self.world}")
        if config.sync_bn and self.device.type != "cuda":
            raise ValueError("sync_bn=True needs CUDA: PyTorch's SyncBatchNorm runs only on GPUs "
                             f"(device is {self.device})")

        # What resume continues: the checkpoint, checked against this config before any data
        # is loaded (every process reads it; the main one also checks the folder).
        resumed = None
        if self.out is not None:
            resumed = self._resume_state(resume)
            if self.is_main:
                self._prepare_out_dir()

        torch.manual_seed(config.seed)
        self.train_set, self.test_set, self.info = load_dataset(
            config.dataset, config.data_root, config.subset, config.seed,
            download=config.download, augment=config.augment)
        self.model = model if model is not None else model_of(config)
        self.model.to(self.device)
        self.input_size = (1, self.info.in_channels, self.info.image_size, self.info.image_size)
        self.optimizer = build_optimizer(self.model, config)
        self.steps_per_epoch = math.ceil(len(self.train_set) / (config.batch_size * self.world))
        self.total_steps = config.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.total_steps, eta_min=0.0)

        if resumed is not None:
            self._load(resumed, self.out / CHECKPOINT)
        self.net = self._wrap(self.model)
        if self.out is not None and self.is_main:
            atomic_write_text(self.out / CONFIG, config.to_json())
            self._write_metrics()  # a killed run's metrics.csv is rebuilt from its checkpoint

    # ---- distributed -------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _init_distributed(self) -> None:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.config.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.model = model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _all_sum(self, *values: float) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    # ---- the run folder ----------------------------------------------------------------------

    def _resume_state(self, resume: bool) -> dict | None:
        """The checkpoint to continue from (None: start afresh), after checking that the folder
        holds this run.

        The checkpoint's own config is the run's: a resume with other values (a new ``lr`` or
        ``epochs`` would keep the old optimizer and schedule while the files claimed the new
        ones) is refused with every differing field named. So is a folder whose history has
        no checkpoint to continue it from.
        """
        out = self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"the run folder {out} is a file, not a folder")
        checkpoint = out / CHECKPOINT
        if not checkpoint.is_file():
            # Outputs of finished epochs without the checkpoint they came from: a fresh start
            # would silently write a new history over them.
            left = [name for name in (METRICS, RECORDING)
                    if (out / name).is_file() and (name != METRICS or self._has_rows(out / name))]
            if left:
                raise ValueError(f"{out} holds {' and '.join(left)} but no {CHECKPOINT}: its "
                                 "history cannot be continued; move them away or choose another "
                                 "folder")
            if resume and (out / CONFIG).is_file():  # killed in its first epoch
                self._refuse_changes(read_config(out / CONFIG).to_dict(), out / CONFIG)
            return None
        if not resume:
            raise ValueError(f"{out} already holds a run ({CHECKPOINT}); pass resume=True "
                             "(--resume) to continue it, or choose another folder")
        state = read_checkpoint(checkpoint)
        self._refuse_changes(state["config"], checkpoint)
        return state

    def _refuse_changes(self, saved: dict, source: Path) -> None:
        changes = config_changes(saved, self.config)
        if changes:
            raise ValueError(f"cannot resume {self.out} with another config than {source}'s: "
                             + ", ".join(f"{k} was {a!r}, now {b!r}"
                                         for k, (a, b) in changes.items()))

    @staticmethod
    def _has_rows(metrics: Path) -> bool:
        with open(metrics, encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.strip()) > 1  # more than the header

    def _prepare_out_dir(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            # temporary files of atomic writes that a kill interrupted (never a finished file)
            remove_stale_temporaries(self.out)
        except OSError as err:
            raise ValueError(f"cannot use {self.out} as a run folder: {err.strerror or err}") from None
        if not os.access(self.out, os.W_OK):
            raise ValueError(f"cannot use {self.out} as a run folder: it is not writable")

    def _save(self) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        }
        atomic_torch_save(state, self.out / CHECKPOINT)

    def _load(self, state: dict, path: Path) -> None:
        """Continue from ``state`` (``read_checkpoint(path)``, already checked)."""
        load_weights(self.model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise ValueError(f"{path}: its optimizer, scheduler or RNG state cannot be restored "
                             f"({type(err).__name__}: {err})") from None
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    def _save_recording(self) -> None:
        if self.recording is not None:
            self.recording.attrs["epoch"] = self.epoch  # which checkpoint it belongs to
            self.recording.save(self.out / RECORDING)

    def _record_checkpoint_epoch(self) -> None:
        """Make the folder's recording the one of its checkpoint's epoch.

        A kill between an epoch's checkpoint and its recording leaves the previous epoch's
        recording (or none) beside the new checkpoint; so does a recording written before
        recordings said their epoch. The checkpoint's epoch is evaluated and recorded again,
        without touching the RNG streams the rest of the run draws from.
        """
        if (self.out is None or not self.is_main or self.epoch == 0 or not self.config.record
                or not any(layer.dynamic for _, layer in grouping_layers(self.model))):
            return
        try:
            current = load_recording(self.out / RECORDING).attrs.get("epoch") == self.epoch
        except (FileNotFoundError, ValueError):
            current = False
        if not current:
            with torch.random.fork_rng(devices=[]):  # a DataLoader draws its base seed
                self.evaluate(record=True)
            self._save_recording()

    def _write_metrics(self) -> None:
        frame = pd.DataFrame(self.history, columns=METRIC_COLUMNS)
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        atomic_write_text(self.out / METRICS, buf.getvalue())

    # ---- the loop ----------------------------------------------------------------------------

    def _train_loader(self, epoch: int) -> DataLoader:
        if self.distributed:
            sampler = DistributedSampler(self.train_set, seed=self.config.seed, shuffle=True)
            sampler.set_epoch(epoch)
            return DataLoader(self.train_set, self.config.batch_size, sampler=sampler,
                              num_workers=self.config.workers)
        order = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return DataLoader(self.train_set, self.config.batch_size, shuffle=True, generator=order,
                          num_workers=self.config.workers)

    def _call(self, hook: str, *args) -> None:
        if not self.is_main:
            return
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def schedule_progress(self, step: int) -> float:
        """The progress the layers' schedules see at ``step``: ``step / total_steps``, sped up by
        ``0.75 / schedule_end`` (exactly 1 for the official 3/4) and capped at 1."""
        speed = 0.75 / self.config.schedule_end
        return min(1.0, step / self.total_steps * speed)

    def k_frac(self) -> float:
        """Mean over the layers with a k (DGC) of k / C_in (0 for a model without any)."""
        layers = [layer for _, layer in grouping_layers(self.model)
                  if hasattr(layer, "inactive_channels")]
        if not layers:
            return 0.0
        return sum(layer.inactive_channels / layer.in_channels for layer in layers) / len(layers)

    def fit(self) -> pd.DataFrame:
        """Train the remaining epochs; return the history (one row per epoch) as a DataFrame."""
        cfg = self.config
        self._record_checkpoint_epoch()
        self._call("on_train_begin")
        epochs = tqdm(range(self.epoch, cfg.epochs), desc="epochs", initial=self.epoch,
                      total=cfg.epochs, disable=not (self.progress and self.is_main))
        for epoch in epochs:
            start = time.perf_counter()
            train = self._train_epoch(epoch)
            row = {"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch, **train}
            if self.is_main:
                row |= self.evaluate()
            row["epoch_seconds"] = time.perf_counter() - start
            self.epoch = epoch + 1
            self.history.append(row)
            if self.out is not None and self.is_main:
                self._save()  # checkpoint first: metrics.csv is rebuilt from its history
                self._write_metrics()
                self._save_recording()
            if self.distributed:
                dist.barrier()
            epochs.set_postfix(test_acc=f"{row.get('test_acc', float('nan')):.4f}")
            self._call("on_epoch_end", epoch + 1, row)
        history = self.history_frame()
        self._call("on_train_end", history)
        return history

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history, columns=METRIC_COLUMNS)

    def _train_epoch(self, epoch: int) -> dict:
        cfg = self.config
        self.net.train()
        loss_sum = lasso_sum = correct = seen = 0.0
        batches = tqdm(self._train_loader(epoch), desc=f"epoch {epoch + 1}", leave=False,
                       total=self.steps_per_epoch, disable=not (self.progress and self.is_main))
        for batch, (x, y) in enumerate(batches):
            step = epoch * self.steps_per_epoch + batch
            set_progress(self.model, self.schedule_progress(step))  # e.g. DGC's k
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits = self.net(x)
            ce = F.cross_entropy(logits, y)
            lasso = regularization_loss(self.model).to(ce.device)  # e.g. DGC's lasso
            loss = ce + cfg.lasso_lambda * lasso
            ce_value, lasso_value = ce.item(), lasso.item()
            finite = math.isfinite(ce_value) and math.isfinite(lasso_value)
            if self.distributed:  # every process stops together, or none does
                finite = self._all_sum(float(not finite))[0] == 0
            if not finite:
                raise self._diverged(epoch, f"step {step + 1}: the loss is {ce_value} and the "
                                     f"lasso {lasso_value}, before the optimizer step")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()

            n = y.numel()
            hits = (logits.argmax(1) == y).sum().item()
            loss_sum += ce_value * n
            lasso_sum += lasso_value * n
            correct += hits
            seen += n
            logs = {"loss": ce_value, "acc": hits / n, "lasso": lasso_value,
                    "lr": self.scheduler.get_last_lr()[0], "k_frac": self.k_frac()}
            batches.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['acc']:.3f}")
            self._call("on_step_end", step + 1, epoch + 1, logs)
        loss_sum, lasso_sum, correct, seen = self._all_sum(loss_sum, lasso_sum, correct, seen)
        bad = [name for name, p in self.model.state_dict().items()
               if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:  # the last step's update, whose loss was still finite
            raise self._diverged(epoch, f"its last optimizer step made {len(bad)} tensors "
                                 f"non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        return {"lr": self.scheduler.get_last_lr()[0], "train_loss": loss_sum / seen,
                "train_acc": correct / seen, "lasso": lasso_sum / seen, "k_frac": self.k_frac()}

    def _diverged(self, epoch: int, what: str) -> TrainingDiverged:
        lr = self.scheduler.get_last_lr()[0]
        kept = (f"{self.out / CHECKPOINT} still holds epoch {self.epoch}, the last finished one"
                if self.out is not None and self.epoch > 0 else "nothing was saved")
        return TrainingDiverged(f"training diverged in epoch {epoch + 1}, {what} (lr {lr:g}); "
                                f"{kept}. A smaller --lr is the usual cure.")

    def evaluate(self, record: bool | None = None) -> dict:
        """Test loss and accuracy; with recording, also head overlap and realized MACs.

        ``dgclab.train.evaluate_model`` on the unwrapped model (rank 0 only in distributed runs). The
        recording of the test set is kept as ``self.recording``.
        """
        record = self.config.record if record is None else record
        loader = DataLoader(self.test_set, self.config.eval_batch_size, shuffle=False,
                            num_workers=self.config.workers)
        row, recording = evaluate_model(self.model, loader, self.input_size, record=record,
                                  device=self.device)
        if recording is not None:
            self.recording = recording
        return row


def fit(config: TrainConfig, out=None, **kwargs) -> pd.DataFrame:
    """``Trainer(config, out, **kwargs).fit()``."""
    return Trainer(config, out, **kwargs).fit()
