"""Data: where the datasets come from and how they are made available offline (SPEC §9)."""

from .fashion_mnist import ensure_fashion_mnist, fashion_mnist_ready

__all__ = ["ensure_fashion_mnist", "fashion_mnist_ready"]
