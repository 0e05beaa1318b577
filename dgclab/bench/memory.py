"""Peak tensor memory of a piece of code, on any device.

``PeakTensorMemory`` is a ``TorchDispatchMode``: it sees every tensor an operator returns, adds
its storage's bytes to a running total the first time it sees that storage, and subtracts them
when the storage is freed. The peak of that total is the peak memory of the tensors created
inside the block (inputs and parameters created before it are not counted; a library's private
workspace, such as oneDNN's, is not a tensor and is not counted either).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["PeakTensorMemory"]


class PeakTensorMemory(TorchDispatchMode):
    """Context manager; ``.peak`` and ``.current`` are in bytes.

    Example:
        >>> with PeakTensorMemory() as mem:
        ...     y = torch.randn(1000) * 2
        >>> mem.peak >= 8000
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self._live:
                continue  # a view or an in-place result of a storage already counted
            self._live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, key)
        return out
