"""Executions chosen by measurement, once per shape: dgclab's ``torch.backends.cudnn.benchmark``.

A DGC layer's two executions compute the same numbers; which is faster depends on the batch, the
map, the filters per head, the kept fraction and the machine (README, "Two executions": on one
2-core VM the fused kernel's break-even keep ran from about 0.35 C at batch 8 on 56x56 maps to
over 0.9 C at batch 1 on 7x7 maps). ``"auto"`` follows a fixed rule. With tuning on, the first
inference call of each new (layer shape, input shape, k, threads) times every candidate on that
very input and remembers the fastest for the rest of the process, as cuDNN's benchmark mode
does for its conv algorithms::

    from dgclab.layers import tuning
    with tuning.use(True), torch.no_grad():
        model.eval()(x)  # the first call per shape also times the candidates
        model(x)         # later calls run the remembered choice
    tuning.choices()     # {key: (choice, {candidate: seconds})}

Off by default, like cuDNN's: the first call of each shape costs a few extra calls, and the
choice, hence the floating-point order of the result (the executions agree to rounding, tested),
may differ between runs and machines. Only inference is tuned (no autograd, eval mode): timing a
training forward would run the BN updates and the graph several times.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Hashable

import torch

from ._switch import Switch

__all__ = ["enabled", "set_enabled", "use", "choose", "remembered", "choices", "clear", "ROUNDS",
           "MIN_SECONDS", "MAX_ROUNDS"]

ROUNDS = 3  # timed calls of each candidate at least, interleaved, after one untimed warm-up call
MIN_SECONDS = 2e-3  # and more rounds until every candidate has run this long in all (small
MAX_ROUNDS = 25  # layers take tens of microseconds: three calls are at the mercy of one
# preemption, and the choice stays for the process), at most this many

_lock = threading.Lock()
_switch = Switch(False)
_choices: dict[Hashable, tuple[str, dict[str, float]]] = {}


def enabled() -> bool:
    """Whether ``"auto"`` executions are chosen by measurement (off by default)."""
    return _switch.on


def set_enabled(flag: bool) -> None:
    """Choose ``"auto"`` executions by measurement (True) or by the fixed rule (False)."""
    _switch.set(flag)


def use(flag: bool):
    """``with tuning.use(True): ...`` runs the block with tuning on (or off)."""
    return _switch.use(flag)


def choose(key: Hashable, candidates: dict[str, Callable[[], object]]) -> str:
    """The remembered choice for ``key``, or the fastest of ``candidates`` measured now.

    Args:
        key: what the choice depends on (shapes, k, threads); hashable.
        candidates: name -> a call running that execution on the input in question. Each is
            called once untimed, then in interleaved rounds with the others, ``ROUNDS`` at
            least and more until each has run ``MIN_SECONDS`` in all (``MAX_ROUNDS`` at most);
            the one with the smallest median wins (ties: the first given).

    Returns:
        The chosen name.
    """
    if not isinstance(candidates, dict) or not candidates:
        raise ValueError(f"candidates must be a non-empty dict of name -> callable, got "
                         f"{candidates!r}")
    remembered = _choices.get(key)
    if remembered is not None:
        return remembered[0]
    for run in candidates.values():  # warm-up: first-call allocations, weight packing
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    rounds = 0
    while rounds < ROUNDS or (rounds < MAX_ROUNDS
                              and min(sum(t) for t in times.values()) < MIN_SECONDS):
        rounds += 1
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    choice = min(medians, key=medians.__getitem__)  # first of equals: dict order
    with _lock:
        _choices.setdefault(key, (choice, medians))
        return _choices[key][0]


def remembered(key: Hashable) -> str | None:
    """The choice made for ``key``, None if none was measured yet."""
    entry = _choices.get(key)
    return None if entry is None else entry[0]


def choices() -> dict[Hashable, tuple[str, dict[str, float]]]:
    """Every choice made so far: key -> (choice, median seconds per candidate)."""
    return dict(_choices)


def clear() -> None:
    """Forget every choice (the next call of each shape measures again)."""
    with _lock:
        _choices.clear()


def threads() -> int:
    """Part of every key: the same shape may choose differently on another thread count."""
    return torch.get_num_threads()
