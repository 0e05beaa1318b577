"""Property-based tests of DGCConv2d (Hypothesis).

* Bad constructor arguments, whatever they are, fail at once with a TypeError or a ValueError
  that names the argument.
* For any small valid layer and input (NaN and Inf at a few positions included, empty batches
  included), every execution gives the numbers of the mask execution, the reference: the fused
  CPU kernel, the PyTorch gather and the mask, in eval and in train mode, with and without
  autograd; NaN exactly where the mask execution has NaN.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dgclab.layers import DGCConv2d, select_channels
from dgclab.layers.dgc import EXECUTIONS, select_top_channels

from helpers import assert_executions_agree, assert_three_ways_agree, make_layer, run

# Bounded for CI: about 15 s for the whole file on one core, most of it imports. No example
# database (it would be written into the working tree).
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one_thread only sets threads
)

NAN, INF = math.nan, math.inf

# ---- the constructor refuses bad arguments cleanly --------------------------------------------

VALID = dict(in_channels=16, out_channels=16, kernel_size=3, stride=1, padding=1, dilation=1,
             heads=4, squeeze_rate=4, pruning_rate=0.5, execution="auto")

NOT_AN_INT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=4),
    st.none(), st.just([4]), st.just(b"4"), st.just(torch.tensor(4)),
)


def bad_pair(minimum: int) -> st.SearchStrategy:
    """Not an int >= minimum nor a pair of them."""
    ok = st.integers(minimum, 3)
    too_small = st.integers(max_value=minimum - 1)
    return st.one_of(
        NOT_AN_INT.filter(lambda v: not isinstance(v, list)),
        too_small,
        st.tuples(ok, too_small),
        st.tuples(too_small, ok),
        st.tuples(ok, ok, ok),
        st.tuples(ok),
        st.tuples(st.floats(), ok),
        st.tuples(ok, st.booleans()),
    )


BAD_ARGUMENTS = {
    "in_channels": st.one_of(NOT_AN_INT, st.integers(max_value=0),
                             st.integers(1, 64).filter(lambda c: c % 4)),  # heads=4 must divide
    "out_channels": st.one_of(NOT_AN_INT, st.integers(max_value=0),
                              st.integers(1, 64).filter(lambda c: c % 4)),
    "kernel_size": bad_pair(1),
    "stride": bad_pair(1),
    "padding": bad_pair(0),
    "dilation": bad_pair(1),
    "heads": st.one_of(NOT_AN_INT, st.integers(max_value=0), st.sampled_from([3, 5, 6, 7, 32])),
    # C_in = 16 < 80 halves the rate: 16 // (rate // 2) is 0 from 34 on, and for rate 1
    "squeeze_rate": st.one_of(NOT_AN_INT, st.integers(max_value=1), st.integers(34, 10**6)),
    "pruning_rate": st.one_of(
        st.floats().filter(lambda r: not 0 <= r < 1),
        st.floats(0.97, 1, exclude_max=True),  # round(16 * rate) = 16: every channel dropped
        st.text(max_size=4), st.booleans(), st.none(), st.just(torch.tensor(0.5)),
    ),
    "execution": st.one_of(st.text(max_size=8).filter(lambda s: s not in EXECUTIONS),
                           st.integers(), st.none(), st.booleans(), st.just(["mask"])),
}

BAD_ARGUMENT = st.sampled_from(sorted(BAD_ARGUMENTS)).flatmap(
    lambda name: st.tuples(st.just(name), BAD_ARGUMENTS[name])
)


@SETTINGS
@given(bad=BAD_ARGUMENT)
def test_bad_constructor_arguments_raise_clean_errors(bad):
    name, value = bad
    with pytest.raises((TypeError, ValueError)) as info:
        DGCConv2d(**(VALID | {name: value}))
    assert type(info.value) in (TypeError, ValueError)
    assert name in str(info.value)


# ---- every execution gives the mask execution's numbers ---------------------------------------


@st.composite
def layer_and_input(draw):
    """A small valid layer (BN statistics set, k in [0, C)) and an input for it that may hold
    NaN or Inf at a few positions."""
    heads = draw(st.sampled_from([1, 2, 4]))
    cin = heads * draw(st.integers(1, 4))
    cout = heads * draw(st.integers(1, 3))
    kernel = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    stride = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    padding = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    # the padded input must hold the dilated kernel
    smallest = [max(1, d * (k - 1) + 1 - 2 * p) for k, p, d in zip(kernel, padding, dilation)]
    h, w = draw(st.integers(smallest[0], 6)), draw(st.integers(smallest[1], 6))
    batch = draw(st.integers(0, 3))
    squeeze_rate = draw(st.sampled_from([2, 4] if cin >= 2 else [2]))  # hidden >= 1
    seed = draw(st.integers(0, 2**16))
    layer = make_layer(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                       heads=heads, k=draw(st.integers(0, cin - 1)), seed=seed,
                       squeeze_rate=squeeze_rate, pruning_rate=0.5)
    x = torch.randn(batch, cin, h, w, generator=torch.Generator().manual_seed(seed))
    if batch:
        position = st.tuples(st.integers(0, batch - 1), st.integers(0, cin - 1),
                             st.integers(0, h - 1), st.integers(0, w - 1))
        for index, value in draw(st.lists(st.tuples(position, st.sampled_from([NAN, INF, -INF])),
                                          max_size=3)):
            x[index] = value
    return layer, x


@SETTINGS
@given(case=layer_and_input())
def test_every_execution_agrees_in_inference(one_thread, case):
    """Eval mode, no autograd: the fused kernel (BN-ReLU included), the PyTorch gather and the
    mask execution."""
    layer, x = case
    assert_three_ways_agree(layer.eval(), x)


@SETTINGS
@given(case=layer_and_input(), train=st.booleans(), autograd=st.booleans())
def test_every_execution_agrees_in_train_mode_and_under_autograd(one_thread, case, train,
                                                                 autograd):
    """Train mode (batch statistics) and/or autograd. Without autograd the kernel still runs
    (after the PyTorch BN-ReLU); under autograd mask and gather agree on gradients too where
    the input is finite, and on outputs, NaN included, where it is not."""
    layer, x = case
    assume(not train or x.shape[0] * x.shape[2] * x.shape[3] > 1)  # BN needs 2 values
    layer.train(train)
    if not autograd:
        assert_three_ways_agree(layer, x)
    elif torch.isfinite(x).all():
        assert_executions_agree(layer, x, train)
    else:
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        ref = run(layer, x, "mask")
        layer.load_state_dict(state)
        got = run(layer, x, "gather")
        torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(got[3], ref[3], equal_nan=True)
        assert torch.equal(got[4], ref[4])


SALIENCIES = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, NAN, INF])  # ties, NaN and Inf


@SETTINGS
@given(data=st.data(), shape=st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(1, 8)))
def test_selections_agree_with_ties_nan_and_inf(data, shape):
    """kthvalue (mask) and topk (gather) select the same channels; the indices cover them."""
    b, heads, c = shape
    g = torch.tensor(data.draw(st.lists(SALIENCIES, min_size=b * heads * c,
                                        max_size=b * heads * c))).view(b, heads, c)
    k = data.draw(st.integers(0, c - 1))
    mask, idx = select_top_channels(g, k)
    assert torch.equal(mask, select_channels(g, k))
    assert idx.shape == (b, heads, c - k)
    assert mask.gather(-1, idx).sum() == mask.sum()  # every kept channel is indexed
    gate = g * mask
    assert (gate.isnan() == (g.isnan() | (g.isinf() & ~mask))).all()  # NaN gates, never lost
