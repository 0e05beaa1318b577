"""Interleaved timing: every candidate runs once per round, medians over rounds; and models
wrapped so that a switch of dgclab's is flipped for their timed calls only."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import cpu_kernel, tuning


def interleaved_medians(
    candidates: dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 3,
    block: int = 1,
) -> dict[str, float]:
    """Median seconds per call of each candidate, measured round-robin.

    Round-robin order spreads a noisy neighbour's bursts over all candidates instead of
    penalising whichever ran during the burst.

    Args:
        candidates: name -> a call to time.
        rounds: rounds of the round robin.
        warmup: untimed calls of each candidate first.
        block: calls of a candidate in a row per round. 1 (default): every timed call follows
            another candidate's call, so it also pays for the state that call left behind
            (caches, and on CPU the allocator: glibc returns large freed blocks to the kernel
            and the next large allocation page-faults them back). With ``block > 1`` the first
            call of each block is discarded and the others are timed: the steady state of a
            candidate running repeatedly, as a layer does inside a network's loop.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got block={block}")
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            for i in range(block):
                start = time.perf_counter()
                fn()
                if block == 1 or i > 0:
                    samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def synchronized(fn: Callable[[], object], device: str | torch.device) -> Callable[[], object]:
    """``fn`` followed by a wait for the device, where it is a GPU: CUDA runs kernels
    asynchronously, so a timer around ``fn`` alone would see the launches only."""
    if torch.device(device).type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


class _Within(nn.Module):
    """``model`` whose forward runs inside ``self.setting()``, a context manager: a switch of
    dgclab's flipped for the timed call only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.setting():
            return self.model(x)


class WithoutKernel(_Within):
    """``model`` with dgclab's C++ kernel off in its forward (``cpu_kernel.use(False)``): its
    PyTorch execution, timed beside the kernel's."""

    @staticmethod
    def setting():
        return cpu_kernel.use(False)


class WithTuning(_Within):
    """``model`` with its "auto" executions chosen by measurement in its forward
    (``dgclab.layers.tuning``): the first call of each shape times the candidates."""

    @staticmethod
    def setting():
        return tuning.use(True)
