"""Interleaved timing: every candidate runs once per round, medians over rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    candidates: dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each candidate, measured round-robin.

    Round-robin order spreads a noisy neighbour's bursts over all candidates instead of
    penalising whichever ran during the burst.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in samples.items()}
