"""Argument checks that name the argument and its bad value (torchvision style).

dgclab checks arguments where they enter (constructors, public functions, files), so that a
bad value fails at once, with a message such as ``stride must be >= 1, got stride=0``, instead
of deep inside torch, differently per code path, or not at all. The convention:

* ``TypeError`` for a value of the wrong type (``bool`` is not an ``int`` here, a ``str`` is
  not a number);
* ``ValueError`` for a value of the right type that is out of range (NaN and Inf included).

Every helper returns the value in its canonical form (``int``, ``float``, a pair of ints), so a
check and a conversion are one line::

    self.stride = check_pair("stride", stride, min=1)
    rate = check_float("pruning_rate", rate, min=0, max=1, max_inclusive=False)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = [
    "check_bool", "check_choice", "check_conv_geometry", "check_float", "check_int", "check_pair",
    "check_type",
]

_REPR_MAX = 80  # characters of a bad value quoted in a message


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def _interval(min, max, min_inclusive: bool = True, max_inclusive: bool = True) -> str:
    """``[0, 1)``, ``>= 1``, ``< 5`` or ``""`` for no bound."""
    if min is not None and max is not None:
        return f"in {'[' if min_inclusive else '('}{min}, {max}{']' if max_inclusive else ')'}"
    if min is not None:
        return f"{'>=' if min_inclusive else '>'} {min}"
    if max is not None:
        return f"{'<=' if max_inclusive else '<'} {max}"
    return ""


def _in_range(value, min, max, min_inclusive: bool, max_inclusive: bool) -> bool:
    if min is not None and not (value >= min if min_inclusive else value > min):
        return False
    return max is None or (value <= max if max_inclusive else value < max)


def check_type(name: str, value, types: type | tuple[type, ...]):
    """``value`` itself, or TypeError unless it is an instance of ``types``.

    The message quotes the type only (a model's repr would fill a screen):
    ``model must be a Module, got list``.
    """
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise TypeError(f"{name} must be a {names}, got {type(value).__name__}")
    return value


def check_bool(name: str, value) -> bool:
    """``value``, or TypeError unless it is a ``bool`` (1 and "yes" are not)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {name}={_shown(value)} "
                        f"({type(value).__name__})")
    return value


def check_int(name: str, value, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an ``int`` in ``[min, max]`` (bounds inclusive, None for none).

    Raises:
        TypeError: not an integer (``bool``, ``float`` and ``str`` are not; numpy integers are).
        ValueError: out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {name}={_shown(value)} "
                        f"({type(value).__name__})")
    value = int(value)
    if not _in_range(value, min, max, True, True):
        raise ValueError(f"{name} must be {_interval(min, max)}, got {name}={value}")
    return value


def check_float(
    name: str,
    value,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    finite: bool = True,
) -> float:
    """``value`` as a ``float`` in the interval given by ``min`` and ``max``.

    Args:
        min, max: bounds (None for none); ``*_inclusive`` says whether each is allowed.
        finite: refuse ±Inf (NaN is always refused: it is in no interval).

    Raises:
        TypeError: not a real number (``bool`` and ``str`` are not; ints and numpy floats are).
        ValueError: NaN, Inf (with ``finite``), or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {name}={_shown(value)} "
                        f"({type(value).__name__})")
    shown = _shown(value)
    value = float(value)
    interval = _interval(min, max, min_inclusive, max_inclusive)
    if math.isnan(value) or (finite and math.isinf(value)):
        if finite:
            expected = "finite" + (f" and {interval}" if interval else "")
        else:
            expected = "a number (not NaN)" + (f" {interval}" if interval else "")
        raise ValueError(f"{name} must be {expected}, got {name}={shown}")
    if not _in_range(value, min, max, min_inclusive, max_inclusive):
        raise ValueError(f"{name} must be {interval}, got {name}={shown}")
    return value


def check_pair(name: str, value, *, min: int | None = None) -> tuple[int, int]:
    """An int or a pair of ints (as ``nn.Conv2d``'s ``stride``), as a pair, each ``>= min``.

    Raises:
        TypeError: neither an int nor a tuple or list of ints (a ``str`` is not).
        ValueError: a sequence of another length, or an entry below ``min``.
    """
    expected = f"{name} must be an int or a pair of ints, got {name}={_shown(value)}"
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(expected)
        items = value
    else:
        items = (value, value)
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
        raise TypeError(f"{expected} ({type(value).__name__})")
    pair = (int(items[0]), int(items[1]))
    if min is not None and any(v < min for v in pair):
        raise ValueError(f"{name} must be {_interval(min, None)}, got {name}={_shown(value)}")
    return pair


def check_choice(name: str, value, choices: Sequence):
    """``value``, or an error unless it is one of ``choices``.

    Raises:
        TypeError: ``value``'s type is none of the choices' types (3 for a str option).
        ValueError: the right type, but not a choice.
    """
    choices = tuple(choices)
    if not any(type(value) is type(c) for c in choices):
        raise TypeError(f"{name} must be one of {choices}, got {name}={_shown(value)} "
                        f"({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {name}={_shown(value)}")
    return value


def check_conv_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, *,
                        string_padding: bool = False) -> tuple:
    """The geometry arguments of a 2-D conv, checked in this order and normalised.

    Channels are ints >= 1; kernel, stride and dilation ints or pairs >= 1; padding an int or a
    pair >= 0 (or, with ``string_padding``, a string, which ``nn.Conv2d`` checks itself).

    Returns:
        ``(in_channels, out_channels, kernel_size, stride, padding, dilation)``, pairs as tuples.
    """
    in_channels = check_int("in_channels", in_channels, min=1)
    out_channels = check_int("out_channels", out_channels, min=1)
    kernel_size = check_pair("kernel_size", kernel_size, min=1)
    stride = check_pair("stride", stride, min=1)
    if not (string_padding and isinstance(padding, str)):
        padding = check_pair("padding", padding, min=0)
    dilation = check_pair("dilation", dilation, min=1)
    return in_channels, out_channels, kernel_size, stride, padding, dilation
