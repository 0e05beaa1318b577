"""The trainer: recipe, run folder, exact resume, kill safety, the CLI, multi-process runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from dgclab.data import load_dataset, read_cifar
from dgclab.record import load_recording
from dgclab.train import METRIC_COLUMNS, Trainer, TrainConfig, load_checkpoint

from helpers import TINY, StopAfter, tiny

ROOT = Path(__file__).resolve().parents[2]


class Steps:
    def __init__(self):
        self.logs = []

    def on_step_end(self, trainer, step, epoch, logs):
        self.logs.append((step, epoch, logs))


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("model", "resnet9"), ("conv", "sparse"), ("dataset", "mnist"), ("optimizer", "lamb"),
    ("epochs", 0), ("batch_size", -1), ("pruning_rate", 1.0), ("lr", 0.0), ("subset", 0),
    ("weight_decay", -1e-4), ("schedule_end", 0.0), ("schedule_end", 1.5),
    ("saliency_init", -0.1),
])
def test_bad_config_names_the_value(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}".replace("(", r"\(")):
        TrainConfig(**{field: value}).validate()


def test_build_optimizer_refuses_what_is_not_a_model_or_a_config():
    from dgclab.train import build_optimizer

    with pytest.raises(TypeError, match="model must be a Module, got list"):
        build_optimizer([nn.Parameter(torch.ones(1))], TrainConfig())
    with pytest.raises(TypeError, match="config must be a TrainConfig, got dict"):
        build_optimizer(nn.Linear(1, 1), {"optimizer": "sgd"})
    with pytest.raises(TypeError, match="config must be a TrainConfig, got dict"):
        Trainer({"epochs": 1}, progress=False)


def test_schedule_end_speeds_up_every_schedule_and_is_exact_when_official():
    official, early = Trainer(tiny(), progress=False), Trainer(tiny(schedule_end=0.5),
                                                              progress=False)
    total = official.total_steps
    for step in range(total + 1):  # the official progress is step / total, bit for bit
        assert official.schedule_progress(step) == step / total
    assert early.schedule_progress(total // 2) == pytest.approx(0.75)  # k final at 1/2
    assert early.schedule_progress(total) == 1.0  # capped


def test_saliency_init_scales_fc2_weights_only():
    from dgclab.layers import dgc_layers, scale_saliency_init
    from dgclab.train.run_folder import model_of

    torch.manual_seed(0)
    official = model_of(tiny())
    torch.manual_seed(0)
    flat = model_of(tiny(saliency_init=0.1))
    (_, a), (_, b) = dgc_layers(official)[0], dgc_layers(flat)[0]
    for ha, hb in zip(a.heads_list, b.heads_list):
        torch.testing.assert_close(hb.fc2.weight, 0.1 * ha.fc2.weight)
        assert torch.equal(hb.fc2.bias, ha.fc2.bias) and torch.equal(hb.fc1.weight, ha.fc1.weight)
    with pytest.raises(ValueError, match="scale"):
        scale_saliency_init(official, -1.0)
    with pytest.raises(TypeError, match="model"):
        scale_saliency_init("resnet8", 0.1)
    assert scale_saliency_init(torch.nn.Linear(2, 2), 0.1) == 0  # no DGC layer: nothing to do


def test_sync_bn_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        Trainer(tiny(sync_bn=True), progress=False)


# ---- one run -----------------------------------------------------------------------------


def test_fit_writes_the_run_folder(tmp_path):
    steps = Steps()
    trainer = Trainer(tiny(), tmp_path / "run", callbacks=[steps], progress=False)
    history = trainer.fit()
    assert list(history.columns) == METRIC_COLUMNS
    assert history["epoch"].tolist() == [1, 2]
    run = tmp_path / "run"
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == trainer.config
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics.notna().all().all()
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2
    rec = load_recording(run / "test_recording.npz")
    assert len(rec) == len(trainer.test_set)
    assert rec.labels.min() >= 0  # every test image was tagged with its label
    # the schedule: k rises from 0 (warm-up) to 3/4 of the channels; cosine lr ends at 0
    k = [logs["k_frac"] for _, _, logs in steps.logs]
    assert k[0] == 0 and k == sorted(k) and metrics["k_frac"].iloc[-1] == pytest.approx(0.75)
    assert metrics["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)
    assert [s for s, _, _ in steps.logs] == list(range(1, trainer.total_steps + 1))
    assert (metrics["lasso"] > 0).all()
    # once k is final an image costs at most the paper's figure (before, it can cost more)
    assert metrics["realized_macs"].iloc[-1] <= metrics["paper_macs"].iloc[-1]
    assert metrics["realized_macs"].iloc[0] > metrics["realized_macs"].iloc[-1]


def test_dense_model_has_no_recording_and_no_lasso(tmp_path):
    history = Trainer(tiny(conv="dense", epochs=1), tmp_path, progress=False).fit()
    assert history["lasso"].iloc[0] == 0
    assert not (tmp_path / "test_recording.npz").exists()
    assert history["realized_macs"].iloc[0] == history["paper_macs"].iloc[0]


@pytest.mark.parametrize("name,cls,decoupled", [("sgd", torch.optim.SGD, False),
                                                ("adam", torch.optim.Adam, False),
                                                ("adamw", torch.optim.AdamW, True)])
def test_optimizers_and_weight_decay_modes(name, cls, decoupled):
    trainer = Trainer(tiny(optimizer=name, weight_decay=5e-4, epochs=1), progress=False)
    opt = trainer.optimizer
    assert type(opt) is cls and opt.defaults["weight_decay"] == 5e-4
    if name == "sgd":
        assert opt.defaults["nesterov"] is True
    assert opt.defaults.get("decoupled_weight_decay", cls is torch.optim.AdamW) is decoupled


# ---- resume --------------------------------------------------------------------------------


def test_resume_continues_exactly(tmp_path):
    straight = Trainer(tiny(), tmp_path / "a", progress=False)
    straight.fit()

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(), tmp_path / "b", callbacks=[StopAfter(1)], progress=False).fit()
    assert pd.read_csv(tmp_path / "b" / "metrics.csv")["epoch"].tolist() == [1]
    resumed = Trainer(tiny(), tmp_path / "b", resume=True, progress=False)
    assert resumed.epoch == 1
    resumed.fit()

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert pd.read_csv(tmp_path / "b" / "metrics.csv")["epoch"].tolist() == [1, 2]


def test_an_existing_run_is_never_overwritten(tmp_path):
    Trainer(tiny(epochs=1), tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(tiny(epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr was 0.05, now 0.1"):
        Trainer(tiny(epochs=1, lr=0.1), tmp_path, resume=True, progress=False)


KILL_SCRIPT = """
import os, signal, sys
from dgclab.train import Trainer, TrainConfig

class Kill:
    def on_step_end(self, trainer, step, epoch, logs):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

config = TrainConfig(**{tiny})
Trainer(config, sys.argv[1], callbacks=[Kill()], progress=False).fit()
"""


def test_sigkill_loses_at_most_the_current_epoch(tmp_path):
    run = tmp_path / "run"
    script = KILL_SCRIPT.replace("{tiny}", repr(TINY | {"epochs": 3}))
    done = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    history = Trainer(tiny(epochs=3), run, resume=True, progress=False).fit()
    assert history["epoch"].tolist() == [1, 2, 3]
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


# ---- data ------------------------------------------------------------------------------------


def _write_cifar(root: Path, n_per_file=4):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n_per_file).tolist(),
                 "batch_label": name}
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return base


def test_cifar_reader_on_a_tiny_file_in_cifar_format(tmp_path):
    base = _write_cifar(tmp_path)
    x, y, classes = read_cifar(tmp_path, "cifar10", train=True)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and len(y) == 20
    with open(base / "data_batch_1", "rb") as f:
        first = pickle.load(f)
    assert torch.equal(x[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)))
    train, test, info = load_dataset("cifar10", tmp_path, download=False)
    assert len(train) == 20 and len(test) == 4 and info.in_channels == 3
    assert classes[3] == "c3"
    img, label = train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32


def test_cifar_reader_refuses_foreign_pickles(tmp_path):
    base = _write_cifar(tmp_path)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": os.system, "labels": []}, f)  # a pickle that would call code
    with pytest.raises(ValueError, match="not allowed"):
        read_cifar(tmp_path, "cifar10", train=False)


def test_tensor_image_dataset_refuses_what_it_cannot_read():
    from dgclab.data import TensorImageDataset, synthetic_images, synthetic_templates

    templates = synthetic_templates(3, 1, 8)
    assert synthetic_images(2, templates)[0].shape == (2, 1, 8, 8)
    with pytest.raises(TypeError, match="n must be an int, got n=2.0"):
        synthetic_images(2.0, templates)
    with pytest.raises(TypeError, match="templates must be a Tensor, got ndarray"):
        synthetic_images(2, templates.numpy())
    with pytest.raises(ValueError, match=r"\(K, C, S, S\), got shape \(3, 8, 8\)"):
        synthetic_images(2, templates[:, 0])
    with pytest.raises(ValueError, match="noise must be >= 0, got noise=-0.1"):
        synthetic_images(2, templates, noise=-0.1)

    with pytest.raises(TypeError, match="images must be a uint8 Tensor, got ndarray"):
        TensorImageDataset(np.zeros((2, 1, 4, 4), np.uint8), [0, 1], (0.5,), (0.5,))
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, C, H, W\), got torch.float32"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4), [0, 1], (0.5,), (0.5,))


def test_an_unknown_dataset_is_named():
    from dgclab.data import dataset_info

    for call in (dataset_info, load_dataset):
        with pytest.raises(ValueError, match="dataset must be one of .*, got dataset='mnist'"):
            call("mnist")
        with pytest.raises(TypeError, match=r"dataset must be one of .*, got dataset=10 \(int\)"):
            call(10)


def test_dataset_info_without_loading_agrees_with_the_loaders(tmp_path):
    from dgclab.data import dataset_info

    _write_cifar(tmp_path)
    _, _, loaded = load_dataset("cifar10", tmp_path, download=False)
    info = dataset_info("cifar10")
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    assert (loaded.num_classes, loaded.in_channels, loaded.image_size) == (10, 3, 32)
    assert load_dataset("synthetic", subset=16)[2] == dataset_info("synthetic")
    for cls in ("b", "a"):
        (tmp_path / "imagenet" / "train" / cls).mkdir(parents=True)
    assert dataset_info("imagenet", tmp_path / "imagenet").classes == ("a", "b")
    with pytest.raises(ValueError, match="'mnist'"):
        dataset_info("mnist")


def test_missing_cifar_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path, download=False)


def test_synthetic_data_is_learnable_and_seeded():
    a, _, _ = load_dataset("synthetic", subset=64, seed=3)
    b, _, _ = load_dataset("synthetic", subset=64, seed=3)
    assert torch.equal(a.images, b.images)
    # nearest class template classifies far above chance: there is structure to learn
    x = a.images.float().flatten(1)
    means = torch.stack([x[a.labels == c].mean(0) for c in a.labels.unique()])
    pred = a.labels.unique()[torch.cdist(x, means).argmin(1)]
    assert (pred == a.labels).float().mean() > 0.8


# ---- command line ---------------------------------------------------------------------------


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dgclab", *args], capture_output=True,
                          text=True, cwd=kw.get("cwd", ROOT), timeout=600)


def test_cli_train_then_eval(tmp_path):
    run = tmp_path / "cli"
    done = _cli("train", "--model", "resnet8", "--width", "8", "--dataset", "synthetic",
                "--subset", "128", "--epochs", "1", "--no-progress", "--out", str(run))
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
    done = _cli("eval", str(run))
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and "MACs" in done.stdout
    done = _cli("train", "--model", "resnet8", "--dataset", "synthetic", "--out", str(run))
    assert done.returncode == 2 and "already holds a run" in done.stderr


def test_export_and_load_model(tmp_path):
    from dgclab.train.evaluate import export_model, load_model

    trainer = Trainer(tiny(epochs=1), tmp_path / "run", progress=False)
    trainer.fit()
    path = export_model(tmp_path / "run", tmp_path / "model.pt")
    model, config, metrics = load_model(path)
    assert config == trainer.config and metrics["epoch"] == 1
    x = torch.randn(3, 1, 28, 28)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), trainer.model(x))
    with pytest.raises(ValueError, match="not a dgclab-model/1 file"):
        load_model(tmp_path / "run" / "checkpoint.pt")


def test_cli_rejects_bad_values():
    done = _cli("train", "--model", "resnet8", "--epochs", "0", "--out", "x")
    assert done.returncode == 2 and "epochs=0" in done.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    run = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dgclab", "train",
         "--model", "resnet8", "--width", "8", "--dataset", "synthetic", "--subset", "256",
         "--epochs", "1", "--no-progress", "--device", "cpu", "--out", str(run)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1]
    assert metrics["step"].iloc[0] == 2  # 256 images / (64 per process x 2 processes)
    assert done.stdout.count("test accuracy") == 1  # only rank 0 reports


def test_recalibrate_bn_sets_the_plain_average_of_the_batches_statistics():
    from dgclab.train import recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3, momentum=0.1))
    weights = {n: p.clone() for n, p in model.named_parameters()}
    xs = [torch.randn(4, 2, 5, 5) * 3 + 1, torch.randn(6, 2, 5, 5)]
    with torch.no_grad():
        ys = [model[0](x) for x in xs]
    out = recalibrate_bn(model, [(x, torch.zeros(len(x))) for x in xs])
    bn = model[1]
    assert out is model and not model.training and bn.momentum == 0.1
    mean = torch.stack([y.mean((0, 2, 3)) for y in ys]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    var = torch.stack([y.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for y in ys]).mean(0)
    torch.testing.assert_close(bn.running_var, var)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    recalibrate_bn(model, xs, max_batches=1)  # bare inputs, the first batch only
    torch.testing.assert_close(bn.running_mean, ys[0].mean((0, 2, 3)))


def test_recalibrate_bn_rejects_bad_input():
    from dgclab.train import recalibrate_bn

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
    with pytest.raises(TypeError, match="model"):
        recalibrate_bn("resnet8", [])
    with pytest.raises(ValueError, match="max_batches"):
        recalibrate_bn(model, [torch.randn(3, 2)], max_batches=0)
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_bn(model, [])
    plain = torch.nn.Linear(2, 2)
    assert recalibrate_bn(plain, []) is plain  # nothing to recalibrate
