"""Data: where the datasets come from and how they are made available offline (SPEC §9)."""

from .datasets import (
    DATASETS,
    DatasetInfo,
    TensorImageDataset,
    dataset_info,
    load_dataset,
    read_cifar,
    synthetic_images,
    synthetic_templates,
)
from .fashion_mnist import ensure_fashion_mnist, fashion_mnist_ready

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "TensorImageDataset",
    "dataset_info",
    "ensure_fashion_mnist",
    "fashion_mnist_ready",
    "load_dataset",
    "read_cifar",
    "synthetic_images",
    "synthetic_templates",
]
