"""Datasets for training runs: Fashion-MNIST, CIFAR-10/100, ImageNet folders, and a synthetic
set with learnable structure for smoke tests (SPEC §9).

Small datasets are held in memory as uint8 tensors and augmented per item with tensor ops
(``TensorImageDataset``): on a 2-core CPU this is several times faster than torchvision's
PIL path. ImageNet goes through ``torchvision.datasets.ImageFolder``.

``load_dataset(name, ...)`` returns ``(train, test, info)``; ``subset=N`` keeps a seeded random
N training images (and at most N test images) for quick runs.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..checks import check_choice, check_float, check_int
from .fashion_mnist import ensure_fashion_mnist

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "TensorImageDataset",
    "dataset_info",
    "load_dataset",
    "read_cifar",
    "synthetic_images",
    "synthetic_templates",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagenet", "synthetic")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # side of the (square) network input
    classes: tuple[str, ...]


class TensorImageDataset(Dataset):
    """Images held as a uint8 tensor, normalised and (optionally) augmented per item.

    Args:
        images: (N, C, H, W) uint8.
        labels: (N,) int64.
        mean, std: per-channel statistics of the [0, 1] images.
        crop_padding: random crop of the original size after zero padding by this many pixels
            (0: none).
        flip: random horizontal flip.

    Items are ``(image float32 (C, H, W), label int)``. Augmentation draws from torch's global
    RNG, which a checkpoint saves, so a resumed run continues the same random stream.
    """

    def __init__(self, images, labels, mean, std, crop_padding: int = 0, flip: bool = False):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a uint8 Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.crop_padding = crop_padding
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i].float().div_(255).sub_(self.mean).div_(self.std)  # (C, H, W)
        if self.crop_padding:
            p = self.crop_padding
            h, w = x.shape[-2:]
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = padded[:, dy : dy + h, dx : dx + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])

    def without_augmentation(self) -> "TensorImageDataset":
        return TensorImageDataset(self.images, self.labels, self.mean.flatten().tolist(),
                                  self.std.flatten().tolist())


# ---- Fashion-MNIST -------------------------------------------------------------------------

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)


def _fashion_mnist(root, download, augment):
    from torchvision.datasets import FashionMNIST

    root = ensure_fashion_mnist(root, allow_apt=download, allow_download=download)
    splits = []
    for train in (True, False):
        ds = FashionMNIST(str(root), train=train)
        splits.append(TensorImageDataset(
            ds.data.unsqueeze(1), ds.targets, FASHION_MEAN, FASHION_STD,
            crop_padding=2 if (train and augment) else 0, flip=train and augment))
    info = dataset_info("fashion-mnist")
    return splits[0], splits[1], info


# ---- CIFAR ----------------------------------------------------------------------------------

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_LAYOUT = {
    # name: (folder, train files, test file, meta file, label key, class-name key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles; allow only what they contain (numpy arrays, builtins)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR file refers to {module}.{name}, which is not allowed")


def _load_cifar_file(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable CIFAR batch file: {type(err).__name__}: {err}") from err


def read_cifar(root, name: str = "cifar10", train: bool = True):
    """Read CIFAR-10/100 from torchvision's on-disk layout (the python version of the archive).

    Returns:
        images uint8 (N, 3, 32, 32), labels int64 (N,), class names.
    """
    if name not in _CIFAR_LAYOUT:
        raise ValueError(f"name must be one of {tuple(_CIFAR_LAYOUT)}, got name={name!r}")
    folder, train_files, test_file, meta_file, label_key, names_key = _CIFAR_LAYOUT[name]
    base = Path(root) / folder
    images, labels = [], []
    for fname in train_files if train else [test_file]:
        entry = _load_cifar_file(base / fname)
        if "data" not in entry or label_key not in entry:
            raise ValueError(f"{base / fname} lacks 'data' or '{label_key}'")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{base / fname}: data must be (N, 3072) uint8, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    meta = _load_cifar_file(base / meta_file)
    classes = tuple(meta.get(names_key, ()))
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long), classes


def _cifar(name, root, download, augment):
    folder = _CIFAR_LAYOUT[name][0]
    if not (Path(root) / folder).is_dir():
        if not download:
            raise FileNotFoundError(f"{Path(root) / folder} not found and download is off")
        from torchvision import datasets as tvd

        (tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100)(str(root), download=True)
    mean, std = CIFAR_STATS[name]
    x_tr, y_tr, classes = read_cifar(root, name, train=True)
    x_te, y_te, _ = read_cifar(root, name, train=False)
    train = TensorImageDataset(x_tr, y_tr, mean, std, crop_padding=4 if augment else 0, flip=augment)
    test = TensorImageDataset(x_te, y_te, mean, std)
    return train, test, dataclasses.replace(dataset_info(name), classes=classes)


# ---- ImageNet -------------------------------------------------------------------------------


def _imagenet(root, augment):
    from torchvision import datasets as tvd
    from torchvision import transforms as T

    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = (T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
                if augment else T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm]))
    test_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    for split in ("train", "val"):
        if not (Path(root) / split).is_dir():
            raise FileNotFoundError(f"ImageNet needs {Path(root) / split} (one folder per class)")
    train = tvd.ImageFolder(str(Path(root) / "train"), train_tf)
    test = tvd.ImageFolder(str(Path(root) / "val"), test_tf)
    return train, test, DatasetInfo("imagenet", len(train.classes), 3, 224, tuple(train.classes))


# ---- synthetic ------------------------------------------------------------------------------


def synthetic_templates(num_classes: int = 10, channels: int = 1, size: int = 28,
                        seed: int = 0) -> torch.Tensor:
    """One smooth random template per class, (num_classes, channels, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, max(size // 4, 1), max(size // 4, 1), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                           align_corners=False)


def synthetic_images(n: int, templates: torch.Tensor, noise: float = 0.35, seed: int = 0):
    """Images with learnable structure: a class template, shifted by up to 2 pixels, plus noise.

    Args:
        n: number of images.
        templates: (K, C, S, S) from ``synthetic_templates``.
        noise: std of the Gaussian noise added to the [0, 1] template.
        seed: seed of the labels, shifts and noise.

    Returns:
        images uint8 (n, C, S, S), labels int64 (n,).
    """
    n = check_int("n", n, min=0)
    if not isinstance(templates, torch.Tensor):
        raise TypeError(f"templates must be a Tensor, got {type(templates).__name__}")
    if templates.dim() != 4:
        raise ValueError(f"templates must be (K, C, S, S), got shape {tuple(templates.shape)}")
    noise = check_float("noise", noise, min=0)
    g = torch.Generator().manual_seed(check_int("seed", seed))
    labels = torch.randint(0, templates.shape[0], (n,), generator=g)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    x = torch.stack([templates[y].roll(tuple(s.tolist()), dims=(-2, -1))
                     for y, s in zip(labels, shifts)]) if n else templates[:0]
    x = x + noise * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _synthetic(n_train, n_test, seed):
    templates = synthetic_templates(seed=seed)
    x_tr, y_tr = synthetic_images(n_train, templates, seed=seed + 1)
    x_te, y_te = synthetic_images(n_test, templates, seed=seed + 2)
    mean, std = (0.5,), (0.3,)
    train = TensorImageDataset(x_tr, y_tr, mean, std)
    test = TensorImageDataset(x_te, y_te, mean, std)
    return train, test, dataset_info("synthetic")


# ---- what a model needs to know, without loading the data --------------------------------


def dataset_info(name: str, root: str | os.PathLike = "data") -> DatasetInfo:
    """Classes, input channels and image size of a named dataset, without loading its images.

    CIFAR class names come from the data files, so here they are empty; ImageNet's classes
    are the folders under ``root/train``.
    """
    check_choice("dataset", name, DATASETS)
    if name == "fashion-mnist":
        return DatasetInfo("fashion-mnist", 10, 1, 28, FASHION_CLASSES)
    if name == "synthetic":
        return DatasetInfo("synthetic", 10, 1, 28, tuple(f"class {i}" for i in range(10)))
    if name in ("cifar10", "cifar100"):
        return DatasetInfo(name, 100 if name == "cifar100" else 10, 3, 32, ())
    train = Path(root) / "train"  # ImageNet, the one left
    if not train.is_dir():
        raise FileNotFoundError(f"ImageNet needs {train} (one folder per class)")
    classes = tuple(sorted(d.name for d in train.iterdir() if d.is_dir()))
    return DatasetInfo("imagenet", len(classes), 3, 224, classes)


# ---- the one entry point --------------------------------------------------------------------


def _subset(ds, n: int, seed: int):
    if n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.sort().values.tolist())


def load_dataset(name: str, root: str | os.PathLike = "data", subset: int | None = None,
                 seed: int = 0, download: bool = True, augment: bool = True):
    """Train and test sets of a named dataset.

    Args:
        name: one of ``DATASETS``.
        root: folder holding the data (torchvision layouts; ImageNet: ``root/train``,
            ``root/val``).
        subset: keep a seeded random ``subset`` training images and at most ``subset`` test
            images (synthetic: generate exactly that many; default 2,000 / 500).
        seed: seed of the subset draw (and of the synthetic data).
        download: may install or download missing data (Fashion-MNIST: Debian package or
            torchvision; CIFAR: torchvision).
        augment: random crops and flips on the training set (crop padding 2 on Fashion-MNIST,
            the paper's 4 + flip on CIFAR).

    Returns:
        ``(train, test, info)``: two Datasets of ``(image, label)`` and a ``DatasetInfo``.
    """
    check_choice("dataset", name, DATASETS)
    if subset is not None and (not isinstance(subset, int) or subset <= 0):
        raise ValueError(f"subset must be a positive int or None, got subset={subset!r}")
    if name == "synthetic":
        n_train = subset or 2000
        return _synthetic(n_train, min(n_train, 500), seed)
    if name == "fashion-mnist":
        train, test, info = _fashion_mnist(root, download, augment)
    elif name in ("cifar10", "cifar100"):
        train, test, info = _cifar(name, root, download, augment)
    else:
        train, test, info = _imagenet(root, augment)
    if subset:
        train, test = _subset(train, subset, seed), _subset(test, subset, seed + 1)
    return train, test, info
