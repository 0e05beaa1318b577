"""Sliding-channel convolution (DSXplore, SPEC §3) against oracles written another way: the
formula as a loop, a grouped 1x1 conv (o = 0), a rolled dense 1x1 conv (g = 1), autograd in
float64, and the official float32 window starts; both executions (dense weight, banded)."""

import pytest
import torch
import torch.nn.functional as F

import dgclab
from dgclab.layers import (
    DepthwiseSlidingConv2d, SlidingChannelConv2d, make_conv, scc_banded_conv2d, scc_bands,
    scc_starts,
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


@pytest.mark.parametrize("execution", ["dense", "banded", "auto"])
@pytest.mark.parametrize("c_in,c_out,groups,overlap", [
    (8, 6, 2, 0.5), (12, 12, 3, 0.25), (16, 24, 4, 0.75), (8, 8, 1, 0.33), (10, 4, 5, 0.0),
    (64, 48, 4, 0.33), (96, 96, 8, 0.6)])
def test_forward_is_the_formula(c_in, c_out, groups, overlap, execution):
    torch.manual_seed(0)
    scc = SlidingChannelConv2d(c_in, c_out, groups, overlap, execution=execution)
    x = torch.randn(3, c_in, 5, 4)
    torch.testing.assert_close(scc(x), by_formula(scc, x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in scc.parameters()) == c_out * c_in // groups  # whatever o


@pytest.mark.parametrize("step", [1, 2, 3, 8, 17, 33])
@pytest.mark.parametrize("stride", [1, 2])
def test_banded_forward_at_every_step_and_stride(step, stride):
    torch.manual_seed(4)
    c_in, c_out, groups, overlap = 48, 40, 3, 0.33  # D = 16: step <= 33
    scc = SlidingChannelConv2d(c_in, c_out, groups, overlap, stride=stride)
    bands = scc_bands(scc.starts, c_in, c_in // groups, step)
    x = torch.randn(2, c_in, 7, 6)
    dense = F.conv2d(x, scc_dense_weight(scc.weight, c_in, scc.starts)[:, :, None, None],
                     stride=stride)
    torch.testing.assert_close(scc_banded_conv2d(x, scc.weight, bands, (stride, stride)), dense,
                               rtol=1e-5, atol=1e-5)


def test_bands_cover_every_window_once():
    for c_in, c_out, groups, overlap in [(128, 128, 4, 0.33), (512, 128, 16, 0.33), (12, 7, 1, 0.4)]:
        starts = scc_starts(c_in, c_out, groups, overlap)
        d = c_in // groups
        for step in (None, 1, min(5, c_in - d + 1)):  # g = 1: step 1 only
            b = scc_bands(starts, c_in, d, step)
            assert d <= b.width <= min(d + b.step - 1, c_in)
            assert b.out_rows.unique().numel() == c_out
            if step is None:  # the cheapest of every step
                assert b.cost == min(scc_bands(starts, c_in, d, s).cost
                                     for s in range(1, c_in - d + 2))
            assert b.weight_index.unique().numel() == c_out * d  # no weight lands twice
            # W[c, k] sits in band j's row out_rows[c], at a column u that reads j * step + u
            band, col = b.weight_index // b.width // b.rows, b.weight_index % b.width
            assert torch.equal(band, (b.out_rows // b.rows)[:, None].expand(-1, d))
            read = (band * b.step + col) % c_in
            assert torch.equal(read, (starts[:, None] + torch.arange(d)) % c_in)


def test_bands_compute_exactly_the_windows_where_starts_repeat():
    # o = 0.5, D = 32: starts step by 16, so 8 distinct starts, each shared by 16 outputs
    b = scc_bands(scc_starts(128, 128, 4, 0.5), 128, 32)
    assert (b.step, b.bands, b.rows, b.width) == (16, 8, 16, 32)
    assert b.macs == 128 * 32  # the windows' own MACs, a quarter of the dense GEMM's
    # o = 0 is a grouped conv: g bands of O / g outputs
    b = scc_bands(scc_starts(64, 32, 4, 0.0), 64, 16)
    assert (b.bands, b.rows, b.macs) == (4, 8, 32 * 16)


def test_auto_takes_the_cheaper_execution():
    wide = SlidingChannelConv2d(128, 128, 4, 0.5)  # banded: a quarter of the MACs
    assert wide.resolved_execution() == "banded" and "auto (banded)" in repr(wide)
    assert wide.resolved_execution(torch.zeros(2, 128, 8, 8)) == "banded"
    assert wide.resolved_execution(torch.zeros(1, 128, 8, 8)) == "dense"  # 64 output pixels
    assert wide.resolved_execution(torch.zeros(64, 128, 16, 16)) == "dense"  # 16384
    tiny = SlidingChannelConv2d(8, 6, 2, 0.5)  # reading the bands outweighs the saved MACs
    assert tiny.resolved_execution() == "dense"
    tiny.execution = "banded"
    assert tiny.resolved_execution() == "banded"
    assert set(wide.state_dict()) == {"weight"}  # the bands are rebuilt, never saved


def test_the_kept_banded_weight_follows_the_weight():
    torch.manual_seed(5)
    scc = SlidingChannelConv2d(32, 32, 4, 0.5, execution="banded").eval()
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        first = scc(x)
        scc.weight.mul_(2)  # in place: a new version of the same storage
        torch.testing.assert_close(scc(x), 2 * first)
        scc.weight = torch.nn.Parameter(-scc.weight)  # a new tensor
        torch.testing.assert_close(scc(x), -2 * first)
    scc(x).sum().backward()  # with grad: built in the graph, so the weight gets its gradient
    assert scc.weight.grad is not None and scc.weight.grad.abs().sum() > 0


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
    for step in (1, 3):
        bands = scc_bands(scc.starts, 8, 4, step)
        assert torch.autograd.gradcheck(lambda x, w: scc_banded_conv2d(x, w, bands),
                                        (x[:, :, :2], scc.weight))


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
    with pytest.raises(ValueError, match="execution='sparse'"):
        SlidingChannelConv2d(8, 8, 2, 0.5, execution="sparse")
    with pytest.raises(ValueError, match="step must be .*, got step=6"):
        scc_bands(scc_starts(8, 8, 2, 0.5), 8, 4, step=6)  # a band would read over C channels
    bands = scc_bands(scc_starts(8, 8, 2, 0.5), 8, 4)
    with pytest.raises(TypeError, match="bands must be a SCCBands, got tuple"):
        scc_banded_conv2d(torch.zeros(1, 8, 2, 2), torch.zeros(8, 4), tuple(bands))
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\), got shape \(8, 2, 2\)"):
        scc_banded_conv2d(torch.zeros(8, 2, 2), torch.zeros(8, 4), bands)


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
