"""dgclab.checks: TypeError for a wrong type, ValueError for a bad value, both naming the
argument and the value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch.nn as nn

from dgclab.checks import (
    check_bool, check_choice, check_conv_geometry, check_float, check_int, check_pair, check_type,
)


def test_check_int():
    assert check_int("heads", 4, min=1) == 4
    assert type(check_int("heads", np.int64(4))) is int  # numpy ints are ints, returned as int
    with pytest.raises(ValueError, match=r"^heads must be >= 1, got heads=0$"):
        check_int("heads", 0, min=1)
    with pytest.raises(ValueError, match=r"^k must be in \[0, 7\], got k=8$"):
        check_int("k", 8, min=0, max=7)
    for bad in (4.0, True, "4", None):
        with pytest.raises(TypeError, match=rf"^heads must be an int, got heads={bad!r} \("):
            check_int("heads", bad)


def test_check_float():
    assert check_float("rate", 1) == 1.0 and type(check_float("rate", 1)) is float
    assert check_float("rate", np.float32(0.5), min=0, max=1) == 0.5
    with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\), got rate=1.0$"):
        check_float("rate", 1.0, min=0, max=1, max_inclusive=False)
    with pytest.raises(ValueError, match=r"^lr must be > 0, got lr=0$"):
        check_float("lr", 0, min=0, min_inclusive=False)
    with pytest.raises(ValueError, match=r"^rate must be finite and in \[0, 1\], got rate=nan$"):
        check_float("rate", math.nan, min=0, max=1)
    with pytest.raises(ValueError, match=r"^x must be finite, got x=inf$"):
        check_float("x", math.inf)
    assert check_float("x", math.inf, finite=False) == math.inf
    with pytest.raises(ValueError, match=r"^x must be a number \(not NaN\), got x=nan$"):
        check_float("x", math.nan, finite=False)
    for bad in ("0.5", True, None, [0.5]):
        with pytest.raises(TypeError, match=r"^rate must be a real number, got rate="):
            check_float("rate", bad)


def test_check_pair():
    assert check_pair("stride", 2, min=1) == (2, 2)
    assert check_pair("stride", [1, 2], min=1) == (1, 2)
    with pytest.raises(ValueError, match=r"^stride must be >= 1, got stride=\(1, 0\)$"):
        check_pair("stride", (1, 0), min=1)
    with pytest.raises(ValueError, match=r"^padding must be >= 0, got padding=-1$"):
        check_pair("padding", -1, min=0)
    with pytest.raises(ValueError, match=r"an int or a pair of ints, got stride=\(1, 2, 3\)"):
        check_pair("stride", (1, 2, 3))
    for bad in (1.5, (1, 2.0), "same", None, (True, 1)):
        with pytest.raises(TypeError, match=r"^stride must be an int or a pair of ints, got"):
            check_pair("stride", bad)


def test_check_bool_choice_and_type():
    assert check_bool("shuffle", True) is True
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match=rf"^shuffle must be a bool, got shuffle={bad!r}"):
            check_bool("shuffle", bad)
    assert check_choice("to", "dgc", ("dgc", "group")) == "dgc"
    with pytest.raises(ValueError, match=r"^to must be one of \('dgc', 'group'\), got to='x'$"):
        check_choice("to", "x", ("dgc", "group"))
    with pytest.raises(TypeError, match=r"^to must be one of \('dgc', 'group'\), got to=3 \(int\)$"):
        check_choice("to", 3, ("dgc", "group"))
    layer = nn.Linear(2, 2)
    assert check_type("model", layer, nn.Module) is layer
    with pytest.raises(TypeError, match=r"^model must be a Module, got list$"):
        check_type("model", [1, 2], nn.Module)
    with pytest.raises(TypeError, match=r"^path must be a str or PathLike, got int$"):
        check_type("path", 3, (str, __import__("os").PathLike))


def test_conv_geometry_is_checked_in_order_and_normalised():
    assert check_conv_geometry(4, 8, 3, 2, 1, 1) == (4, 8, (3, 3), (2, 2), (1, 1), (1, 1))
    assert check_conv_geometry(4, 8, 3, 1, "same", 1, string_padding=True)[4] == "same"
    with pytest.raises(TypeError, match="padding"):
        check_conv_geometry(4, 8, 3, 1, "same", 1)
    with pytest.raises(ValueError, match="in_channels"):  # the first bad one is named
        check_conv_geometry(0, 0, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="dilation"):
        check_conv_geometry(4, 8, 3, 1, 0, 0)
