"""Sliding-channel convolution (DSXplore, SPEC §3) against oracles written another way: the
formula as a loop, a grouped 1x1 conv (o = 0), a rolled dense 1x1 conv (g = 1), autograd in
float64, and the official float32 window starts."""

import pytest
import torch
import torch.nn.functional as F

import dgclab
from dgclab.layers import (
    DepthwiseSlidingConv2d, SlidingChannelConv2d, make_conv, scc_starts,
)
from dgclab.layers.scc import scc_dense_weight
from dgclab.models import resnet_cifar
from dgclab.record import Recorder


def by_formula(scc: SlidingChannelConv2d, x: torch.Tensor) -> torch.Tensor:
    """y[b, c] = sum_k W[c, k] x[b, (start_c + k) mod C], one output channel at a time."""
    c_in = scc.in_channels
    d = c_in // scc.groups
    out = []
    for c in range(scc.out_channels):
        start = int(torch.floor(torch.tensor(c, dtype=torch.float32)
                                * (1 - torch.tensor(scc.overlap, dtype=torch.float32)) * d))
        cols = [(start + k) % c_in for k in range(d)]
        out.append(torch.einsum("k,bkhw->bhw", scc.weight[c], x[:, cols]))
    return torch.stack(out, 1)


@pytest.mark.parametrize("c_in,c_out,groups,overlap", [
    (8, 6, 2, 0.5), (12, 12, 3, 0.25), (16, 24, 4, 0.75), (8, 8, 1, 0.33), (10, 4, 5, 0.0)])
def test_forward_is_the_formula(c_in, c_out, groups, overlap):
    torch.manual_seed(0)
    scc = SlidingChannelConv2d(c_in, c_out, groups, overlap)
    x = torch.randn(3, c_in, 5, 4)
    torch.testing.assert_close(scc(x), by_formula(scc, x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in scc.parameters()) == c_out * c_in // groups  # whatever o


def test_official_float32_starts_are_pinned():
    # D = 32, o = 0.33: the float32 rule lands one below the exact start at these channels
    starts = scc_starts(512, 128, 16, 0.33)
    assert starts[[25, 50, 75, 100, 125]].tolist() == [23, 47, 71, 95, 119]
    assert starts[[24, 26]].tolist() == [514 % 512, 557 % 512]  # elsewhere exact: floor(c*21.44)
    assert scc_starts(64, 4, 2, 0.0).tolist() == [0, 32, 0, 32]


def test_no_overlap_is_a_grouped_1x1_conv_up_to_an_output_permutation():
    torch.manual_seed(1)
    c_in, c_out, g = 12, 9, 3
    scc = SlidingChannelConv2d(c_in, c_out, g, 0.0)
    per_group = c_out // g
    # output c reads group c mod g: it is output (c mod g) * (O / g) + c // g of the grouped conv
    position = torch.tensor([(c % g) * per_group + c // g for c in range(c_out)])
    weight = torch.empty(c_out, c_in // g, 1, 1)
    weight[position] = scc.weight.detach()[:, :, None, None]
    x = torch.randn(2, c_in, 4, 4)
    grouped = F.conv2d(x, weight, groups=g)
    torch.testing.assert_close(scc(x), grouped[:, position], rtol=1e-5, atol=1e-6)


def test_one_group_is_a_dense_1x1_conv_with_rolled_rows():
    torch.manual_seed(2)
    scc = SlidingChannelConv2d(8, 5, 1, 0.6)
    rolled = torch.stack([torch.roll(scc.weight.detach()[c], int(s))
                          for c, s in enumerate(scc.starts)])
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(scc(x), F.conv2d(x, rolled[:, :, None, None]), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("overlap", [0.25, 0.33, 0.5, 0.75])
def test_gradients_are_exact_in_float64(overlap):
    torch.manual_seed(3)
    scc = SlidingChannelConv2d(8, 6, 2, overlap).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: F.conv2d(
        x, scc_dense_weight(w, 8, scc.starts)[:, :, None, None]),
        (x, scc.weight))


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="groups must divide in_channels, got groups=3"):
        SlidingChannelConv2d(8, 8, 3, 0.5)
    with pytest.raises(ValueError, match="overlap"):
        SlidingChannelConv2d(8, 8, 2, 1.0)
    with pytest.raises(ValueError, match="overlap"):
        SlidingChannelConv2d(8, 8, 2, -0.1)
    with pytest.raises(ValueError, match="groups"):
        SlidingChannelConv2d(8, 8, 0, 0.5)
    with pytest.raises(TypeError, match="overlap"):
        SlidingChannelConv2d(8, 8, 2, "half")


def test_protocol_registry_and_network():
    scc = SlidingChannelConv2d(16, 8, 4, 0.5)
    conn = scc.connectivity()  # (O, C): one group per output channel, its window
    assert conn.shape == (8, 16) and conn.sum(1).eq(4).all()
    assert scc.macs((5, 5)) == 8 * 16 // 4 * 25  # a grouped 1x1 conv's cost, whatever o
    assert dgclab.count_macs(torch.nn.Sequential(scc), (1, 16, 5, 5)) == scc.macs((5, 5))
    assert isinstance(make_conv("scc", 16, 8, 1), SlidingChannelConv2d)
    block = make_conv("scc", 16, 8, 3, 2, 1)
    assert isinstance(block, DepthwiseSlidingConv2d)
    assert block(torch.randn(1, 16, 8, 8)).shape == (1, 8, 4, 4)

    model = resnet_cifar(8, width=16, conv="scc", heads=2, in_channels=1).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with Recorder(model) as rec:  # every SCC recorded once, as its windows
        model(torch.randn(3, 1, 28, 28))
    name = rec.layer_names[0]
    assert not rec.is_dynamic(name) and rec.layer_info(name)["kind"] == "scc"
    assert torch.equal(rec.connectivity(name), model.get_submodule(name).connectivity())
