"""DGC's pruning schedule: k, the input channels each head drops, from training progress.

SPEC §1.2. The official code moves k inside ``forward`` from a class-level global progress.
dgclab has no global: k changes only when the trainer (``dgclab.layers.set_progress``, which
calls every DGC layer's ``set_progress``), the user (``set_pruning_progress``, or
``layer.inactive_channels = k``) says so, in any mode, and ``forward`` never changes it.
"""

from __future__ import annotations

from ..checks import check_float
from .dgc_functional import final_inactive_channels

__all__ = ["pruning_schedule"]


def pruning_schedule(progress: float, in_channels: int, pruning_rate: float) -> int:
    """k (inactive channels) at training progress p, with the official expressions.

    ``p <= 1/12``: 0 (warm-up); ``1/12 < p < 3/4``: a linear ramp; ``p >= 3/4``: the final
    ``round(C_in * xi)``. Evaluated in the official order with Python's banker's rounding, so
    ties round as they do there. For C_in = 128, xi = 0.75: p = .1 -> 2, .5 -> 60, .75 -> 96.

    Args:
        progress: p in [0, 1], (epoch * batches + batch) / (epochs * batches).
        in_channels: C_in of the layer.
        pruning_rate: xi in [0, 1), and small enough to keep a channel: the final k, which
            bounds the ramp, must stay below C_in.

    Returns:
        k as an int, 0 <= k < C_in.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``progress`` outside [0, 1] (NaN included), ``in_channels < 1``,
            ``pruning_rate`` outside [0, 1) or one that would drop every channel.
    """
    progress = check_float("progress", progress, min=0, max=1)
    final = final_inactive_channels(in_channels, pruning_rate)  # checks C_in and the rate
    gate_factor = 1 - float(pruning_rate)  # the official code's parameter
    if progress >= 3.0 / 4:
        return final  # round(in_channels * (1 - gate_factor))
    if progress > 1.0 / 12:
        return round(in_channels * (1 - gate_factor) * 3.0 / 2 * (progress - 1.0 / 12))
    return 0
