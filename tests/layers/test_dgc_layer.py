"""DGCConv2d against its oracles: the official fixture, the masked formulation, plain convs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

import dgclab
from dgclab.layers import (
    DGCConv2d,
    GroupConv2d,
    dgc_gather_conv,
    dgc_mask_conv,
    pruning_schedule,
    saliency_loss,
    select_channels,
    set_pruning_progress,
)
from dgclab.layers import cpu_kernel
from dgclab.layers import dgc_gather
from dgclab.layers.dgc import interleave_heads, select_top_channels

from helpers import LAYER_SHAPES, assert_executions_agree, fixed_saliency, make_layer


# ---- the official fixture -----------------------------------------------------------------


@pytest.mark.parametrize("execution", ["mask", "gather", "auto"])
def test_reproduces_official_layer(fixtures_dir, execution):
    fx = torch.load(fixtures_dir / "official_dgc_layer.pt", weights_only=True)
    c = fx["config"]
    layer = DGCConv2d(
        c["in_channels"], c["out_channels"], c["kernel_size"], c["stride"], c["padding"],
        heads=c["heads"], squeeze_rate=c["squeeze_rate"], pruning_rate=c["pruning_rate"],
        execution=execution,
    )
    layer.load_state_dict(fx["state_dict"])
    layer.eval()
    assert layer.inactive_channels == 24  # the final k travels in the checkpoint
    with torch.no_grad():
        out = layer(fx["input"])
    torch.testing.assert_close(out, fx["output"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.last_lasso, fx["lasso"])


# ---- mask and gather agree -----------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,heads", LAYER_SHAPES)
def test_mask_and_gather_agree(cin, cout, ksize, stride, padding, dilation, heads, train):
    for k in sorted({0, 1, cin // 2, (3 * cin) // 4, cin - 1}):
        layer = make_layer(cin, cout, ksize, stride=stride, padding=padding, dilation=dilation,
                           heads=heads, k=k, squeeze_rate=2)
        x = torch.randn(3, cin, 9, 9)
        assert_executions_agree(layer, x, train)


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_mask_and_gather_agree_batch_one(heads):
    layer = make_layer(16, 16, 3, padding=1, heads=heads, k=12, squeeze_rate=2)
    assert_executions_agree(layer, torch.randn(1, 16, 6, 6), train=False)


@pytest.mark.parametrize("cin,cout,ksize,stride,padding,dilation,heads", LAYER_SHAPES)
def test_mask_gating_inputs_or_weights_agree(cin, cout, ksize, stride, padding, dilation, heads):
    """The official per-head gated inputs and dgclab's per-image gated filters: same numbers."""
    kh, kw = _pair(ksize)
    x = torch.randn(3, cin, 9, 9)
    gate = torch.rand(3, heads, cin) * (torch.rand(3, heads, cin) > 0.5)  # some dropped
    weight = torch.randn(heads, cout // heads, cin, kh, kw)
    results = []
    for gate_on in ("input", "weight"):
        leaves = [t.clone().requires_grad_(True) for t in (x, gate, weight)]
        out = dgc_mask_conv(*leaves, stride, padding, dilation, gate_on=gate_on)
        proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * proj).sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # And "input" is the official formulation itself: heads stacked, then interleaved.
    ref = torch.cat([
        F.conv2d(x * gate[:, i, :, None, None], weight[i], None, stride, padding, dilation)
        for i in range(heads)
    ], dim=1)
    torch.testing.assert_close(results[0][0], interleave_heads(ref, heads), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gate_on", ["input", "weight"])
def test_mask_gating_gradcheck_float64(gate_on):
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(2, 2, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: dgc_mask_conv(*t, 2, 1, 1, gate_on=gate_on), (x, gate, weight)
    )


def test_interleave_heads_validates_heads():
    with pytest.raises(ValueError, match=r"heads=3, channels=8"):
        interleave_heads(torch.randn(1, 8, 2, 2), 3)


def test_mask_gate_on_is_validated():
    with pytest.raises(ValueError, match="gate_on='filters'"):
        dgc_mask_conv(torch.randn(1, 4, 3, 3), torch.rand(1, 2, 4), torch.randn(2, 2, 4, 1, 1),
                      gate_on="filters")


@pytest.mark.parametrize("special", [float("nan"), float("inf")])
def test_mask_gating_with_non_finite_gates_follows_the_official_formulation(special):
    """Gating the filters multiplies the zero padding by the gate: with a NaN or Inf gate that
    is NaN where the official formulation (the gated input, zero-padded) has 0, so "auto"
    gates the inputs then; without padding the two agree."""
    x = torch.rand(2, 4, 5, 5) + 0.5
    gate = torch.rand(2, 2, 4)
    gate[0, 1, 2] = special
    weight = torch.randn(2, 3, 4, 1, 1)  # 1x1 with padding 1: the border sees only padding
    official = dgc_mask_conv(x, gate, weight, 1, 1, 1, gate_on="input")
    assert not official[0, 1::2, 0, 0].isnan().any()  # padding-only outputs: exactly 0
    torch.testing.assert_close(dgc_mask_conv(x, gate, weight, 1, 1, 1), official, equal_nan=True)
    for padding in (0, 1):
        torch.testing.assert_close(
            dgc_mask_conv(x, gate, weight, 1, padding, 1, gate_on="auto"),
            dgc_mask_conv(x, gate, weight, 1, padding, 1, gate_on="input"),
            equal_nan=True,
        )


@pytest.mark.parametrize("gate_on", ["auto", "input", "weight"])
def test_mask_conv_of_an_empty_batch(gate_on):
    x = torch.randn(0, 4, 5, 5, requires_grad=True)
    out = dgc_mask_conv(x, torch.rand(0, 2, 4), torch.randn(2, 3, 4, 3, 3), 2, 1, 1,
                        gate_on=gate_on)
    assert out.shape == (0, 6, 3, 3)


def test_gather_in_chunks_agrees(monkeypatch):
    """Batches larger than one chunk are written into the interleaved output piecewise."""
    monkeypatch.setattr(dgc_gather, "GATHER_CHUNK_BYTES", 1)  # one sample per chunk
    for ksize in (1, 3):
        layer = make_layer(16, 16, ksize, padding=ksize // 2, k=10, squeeze_rate=2)
        assert_executions_agree(layer, torch.randn(5, 16, 7, 7), train=True)


def test_inference_scratch_buffers_are_reused_safely(monkeypatch):
    """Without autograd on CPU the gather reuses scratch buffers across chunks, calls, shapes
    and dtypes; no output may alias them."""
    monkeypatch.setattr(dgc_gather, "GATHER_CHUNK_SAMPLES", 2)  # three chunks for 5 samples
    with cpu_kernel.use(False):  # the PyTorch path (the kernel has no scratch buffers)
        dgc_gather.release_scratch()
        for dtype in (torch.float32, torch.float64):
            for ksize, cin, hw in ((3, 16, 7), (1, 16, 5), (3, 32, 4)):
                layer = make_layer(cin, cin, ksize, padding=ksize // 2, k=cin // 2, squeeze_rate=2)
                layer = layer.to(dtype).eval()
                x = torch.randn(5, cin, hw, hw, dtype=dtype)
                with torch.no_grad():
                    layer.execution = "mask"
                    ref = layer(x)
                    layer.execution = "gather"
                    first = layer(x)
                    kept = first.clone()
                    layer(torch.randn_like(x))  # overwrites the scratch buffers
                torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-5)
                assert torch.equal(first, kept)
        dtypes = {key[1] for key in dgc_gather.gather_scratch.buffers}
        assert dtypes == {torch.float32, torch.float64}
        dgc_gather.release_scratch()
        assert not dgc_gather.gather_scratch.buffers


def test_ties_drop_together():
    """Everything <= the k-th smallest saliency is dropped: ReLU zeros tie and drop together."""
    g = torch.tensor([[[0.0, 0.0, 0.0, 0.5, 0.7, 0.2, 0.0, 0.9]]])
    keep = select_channels(g, 2)  # 2nd smallest is 0 -> every zero goes, 4 survive (not 6)
    assert keep.tolist() == [[[False, False, False, True, True, True, False, True]]]
    mask, idx = select_top_channels(g, 2)
    assert torch.equal(mask, keep)
    assert idx.shape == (1, 1, 6)
    assert set(idx.flatten().tolist()) >= {3, 4, 5, 7}


def test_select_top_channels_matches_select_channels():
    torch.manual_seed(0)
    for k in range(0, 12):
        g = torch.randint(0, 4, (6, 3, 12)).float()  # many ties
        mask, idx = select_top_channels(g, k)
        assert torch.equal(mask, select_channels(g, k))
        assert mask.gather(-1, idx).sum() == mask.sum()  # every kept channel is indexed


def test_selection_of_nan_and_inf_saliencies():
    """kthvalue and topk both order NaN above every number: once k > 0 a NaN saliency is
    never kept (NaN > t is false), yet topk lists it and its gate, g * 0, stays NaN."""
    nan, inf = float("nan"), float("inf")
    g = torch.tensor([[[0.5, nan, 0.1, inf, 0.0, nan, 0.3, 0.2]]])
    for k in range(8):
        mask, idx = select_top_channels(g, k)
        assert torch.equal(mask, select_channels(g, k)), k
        assert k == 0 or not mask[..., [1, 5]].any()
        listed = {1, 5} & set(idx.flatten().tolist())  # NaNs come first: their gate spreads
        assert len(listed) == min(2, 8 - k)
        assert (g * mask)[..., [1, 5]].isnan().all()
    assert select_channels(g, 7).sum() == 0  # the 7th smallest is NaN: nothing is kept


@pytest.mark.parametrize("k", [-1, 8, 2.5, float("nan")])
def test_selection_refuses_k_outside_its_range(k):
    g = torch.rand(2, 2, 8)
    for select in (select_channels, select_top_channels):
        with pytest.raises(ValueError, match="inactive_channels"):
            select(g, k)


def test_functional_ops_check_their_operands_at_the_boundary():
    x, gate = torch.randn(2, 8, 5, 5), torch.rand(2, 4, 8)
    weight = torch.randn(4, 3, 8, 3, 3)
    keep_idx = gate.topk(6, dim=-1).indices  # (2, 4, 6)
    with pytest.raises(TypeError, match="saliency must be a Tensor, got list"):
        select_channels(gate.tolist(), 2)
    with pytest.raises(TypeError, match="x must be a Tensor, got ndarray"):
        dgc_mask_conv(x.numpy(), gate, weight)
    with pytest.raises(TypeError, match="keep_idx must be a Tensor, got list"):
        dgc_gather_conv(x, gate, keep_idx.tolist(), weight)
    with pytest.raises(TypeError, match="out must be a Tensor, got NoneType"):
        interleave_heads(None, 2)
    for conv in (dgc_mask_conv, lambda x, g, w: dgc_gather_conv(x, g, keep_idx, w)):
        with pytest.raises(ValueError, match=r"got \(2, 8, 5, 5\), \(2, 4, 7\) and"):
            conv(x, gate[..., :7], weight)  # a gate over 7 channels of 8
        with pytest.raises(ValueError, match=r"\(4, 3, 8, 3, 3\)"):
            conv(x[:, :, 0], gate, weight)  # a 3-D input
    with pytest.raises(ValueError, match=r"keep_idx must be \(B, heads, keep\).*got \(2, 6\)"):
        dgc_gather_conv(x, gate, keep_idx[:, 0], weight)
    with pytest.raises(ValueError, match=r"out must be \(B, C, H, W\), got shape \(2, 8\)"):
        interleave_heads(torch.zeros(2, 8), 2)


# ---- oracles a plain F.conv2d can give -----------------------------------------------------


@pytest.mark.parametrize("execution", ["mask", "gather"])
def test_equals_dense_conv_with_hand_built_weight(execution):
    """With fixed saliencies, DGC is one dense conv whose weight is the interleaved heads'
    filters, dropped columns zeroed and kept ones scaled by their saliency."""
    heads, cin, cout = 4, 8, 8
    layer = make_layer(cin, cout, 3, padding=1, heads=heads, k=5, execution=execution,
                       squeeze_rate=2).eval()
    sal = torch.rand(heads, cin) + 0.1
    fixed_saliency(layer, sal)
    x = torch.randn(2, cin, 5, 5)
    keep = select_channels(sal.unsqueeze(0), 5)[0]  # (heads, C)
    weight = torch.empty(cout, cin, 3, 3)
    for i, head in enumerate(layer.heads_list):
        cols = (sal[i] * keep[i]).view(1, cin, 1, 1)
        weight[i::heads] = head.conv.weight.detach() * cols  # head i channel j -> j*heads + i
    expected = F.conv2d(F.relu(layer.norm(x)), weight, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    assert layer.last_selection.sum(-1).tolist() == [[3, 3, 3, 3]] * 2


def test_one_head_no_pruning_unit_saliency_is_bn_relu_conv():
    layer = make_layer(8, 6, 3, padding=1, heads=1, k=0, squeeze_rate=2).eval()
    fixed_saliency(layer, torch.ones(1, 8))
    x = torch.randn(2, 8, 5, 5)
    expected = F.conv2d(F.relu(layer.norm(x)), layer.headconv_0.conv.weight, padding=1)
    for execution in ("mask", "gather"):
        layer.execution = execution
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_functional_core_matches_module():
    layer = make_layer(8, 8, 1, k=4, squeeze_rate=2).eval()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        out = layer(x)
        xn = F.relu(layer.norm(x))
        g = layer.saliency(xn.mean((2, 3)))
        keep, idx = select_top_channels(g, 4)
        w = torch.stack([h.conv.weight for h in layer.heads_list])
        torch.testing.assert_close(dgc_mask_conv(xn, g * keep, w), out)
        torch.testing.assert_close(dgc_gather_conv(xn, g * keep, idx, w), out)


# ---- float64 gradcheck ---------------------------------------------------------------------


@pytest.mark.parametrize("execution", ["mask", "gather"])
@pytest.mark.parametrize("ksize", [1, 3])
def test_gradcheck_float64(execution, ksize):
    """Tiny shapes with well separated saliencies, so a finite-difference step flips nothing."""
    torch.manual_seed(0)
    layer = DGCConv2d(4, 4, ksize, padding=ksize // 2, heads=2, squeeze_rate=2,
                      execution=execution).double().eval()
    layer.inactive_channels = 2
    with torch.no_grad():
        for i, head in enumerate(layer.heads_list):
            head.fc2.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).roll(i) * 10)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)
    names = ["headconv_0.conv.weight", "headconv_1.conv.weight", "headconv_0.fc2.bias",
             "headconv_1.fc1.weight"]

    def of_params(*values):
        out = torch.func.functional_call(layer, dict(zip(names, values)), (x.detach(),))
        return out.sum() + layer.last_lasso

    inputs = tuple(
        layer.get_parameter(n).detach().clone().requires_grad_(True) for n in names
    )
    assert torch.autograd.gradcheck(of_params, inputs, eps=1e-6, atol=1e-5)


# ---- k, the schedule, the lasso --------------------------------------------------------------


def test_schedule_matches_official_figures():
    # SPEC §1.2, measured on the official code for C_in = 128, xi = 0.75
    expected = {0.0: 0, 1 / 12: 0, 0.1: 2, 0.2: 17, 0.3: 31, 0.4: 46, 0.5: 60, 0.6: 74,
                0.7: 89, 0.75: 96, 0.9: 96, 1.0: 96}
    for p, k in expected.items():
        assert pruning_schedule(p, 128, 0.75) == k, p


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_progress_outside_unit_interval_is_refused(p):
    with pytest.raises(ValueError, match="progress"):
        set_pruning_progress(make_layer(8, 8, 1), p)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((0.5, 16, 1.0), ValueError, r"pruning_rate=1.0"),
        ((0.9, 16, 1.5), ValueError, r"pruning_rate=1.5"),
        ((0.5, 16, float("nan")), ValueError, r"pruning_rate=nan"),
        ((0.5, 16, -0.1), ValueError, r"pruning_rate=-0.1"),
        ((1.0, 4, 0.9), ValueError, r"pruning_rate=0.9 would drop all 4"),
        ((0.5, 0, 0.5), ValueError, r"in_channels=0"),
        ((0.5, 16.0, 0.5), TypeError, r"in_channels=16.0"),
        ((0.5, 16, "0.5"), TypeError, r"pruning_rate='0.5'"),
        (("0.5", 16, 0.5), TypeError, r"progress='0.5'"),
        ((float("nan"), 16, 0.5), ValueError, r"progress=nan"),
        ((True, 16, 0.5), TypeError, r"progress=True"),
    ],
)
def test_pruning_schedule_validates_its_arguments(args, error, match):
    with pytest.raises(error, match=match):
        pruning_schedule(*args)


def test_pruning_helpers_validate_their_arguments():
    with pytest.raises(TypeError, match="progress"):
        set_pruning_progress(make_layer(8, 8, 1), "1")
    with pytest.raises(TypeError, match=r"model must be a Module, got str"):
        set_pruning_progress("model", 0.5)
    with pytest.raises(TypeError, match=r"model must be a Module, got list"):
        saliency_loss([make_layer(8, 8, 1)])
    layer = make_layer(8, 8, 1)
    layer.pruning_rate = 1.0  # changed after construction: the schedule refuses it
    with pytest.raises(ValueError, match=r"pruning_rate=1.0"):
        set_pruning_progress(layer, 1.0)


def test_set_pruning_progress_in_any_mode_and_forward_never_changes_k():
    model = nn.Sequential(make_layer(32, 32, 1), nn.Sequential(make_layer(16, 16, 1)))
    wrapped = nn.Module()
    wrapped.module = model  # as DistributedDataParallel holds it
    model.eval()
    ks = set_pruning_progress(wrapped, 1.0)
    assert ks == {"module.0": 24, "module.1.0": 12}
    model.train()
    model[0](torch.randn(2, 32, 4, 4))
    assert model[0].inactive_channels == 24
    set_pruning_progress(model[0], 0.0)  # the layer itself is accepted
    assert model[0].inactive_channels == 0


def test_k_is_a_persistent_buffer_and_fresh_layers_prune_nothing():
    layer = make_layer(16, 16, 1)
    assert layer.inactive_channels == 0
    layer.inactive_channels = 7
    other = make_layer(16, 16, 1)
    other.load_state_dict(layer.state_dict())
    assert other.inactive_channels == 7
    assert layer.state_dict()["_inactive_channels"].shape == (1,)


BAD_K = [16.0, 17.0, -1.0, 2.7, float("nan"), float("inf")]


@pytest.mark.parametrize("k", BAD_K)
def test_k_loaded_from_a_state_dict_is_validated(k):
    """A bad k in a file fails where it enters, naming the key, its value and [0, C); the
    layer keeps its k."""
    model = nn.Sequential(nn.Identity(), make_layer(16, 16, 1, k=5))
    state = model.state_dict()
    state["1._inactive_channels"] = torch.tensor([k])
    with pytest.raises(ValueError, match=rf"1\._inactive_channels.*\[0, 16\).*={k}"):
        model.load_state_dict(state)
    assert model[1].inactive_channels == 5
    with pytest.raises(ValueError, match=r"1\._inactive_channels"):
        model.load_state_dict(state, strict=False)


def test_k_and_threshold_are_read_again_whenever_their_buffers_change():
    layer = make_layer(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 4, 4)
    layer(x)  # k = 0 read and remembered
    writes = {
        "fill_": lambda: layer._inactive_channels.fill_(99),
        ".data": lambda: setattr(layer._inactive_channels, "data", torch.tensor([99.0])),
        "a new buffer": lambda: setattr(layer, "_inactive_channels", torch.tensor([99.0])),
    }
    for how, write in writes.items():
        layer.inactive_channels = 4
        assert layer.inactive_channels == 4
        layer(x)
        write()
        with pytest.raises(ValueError, match=r"_inactive_channels.*\[0, 16\)"):
            layer(x)
    layer.inactive_channels = 4
    assert layer.threshold is None
    layer._threshold.fill_(0.5)  # behind the setter's back, as a checkpoint load does
    assert layer.threshold == 0.5
    layer._threshold.fill_(float("nan"))
    assert layer.threshold is None


@pytest.mark.parametrize("k", BAD_K)
def test_k_buffer_is_validated_at_forward(k):
    layer = make_layer(16, 16, 3, padding=1)
    layer._inactive_channels.fill_(k)  # written behind the setter's back
    for execution in ("mask", "gather", "auto"):
        layer.execution = execution
        with pytest.raises(ValueError, match=r"_inactive_channels.*\[0, 16\)"):
            layer(torch.randn(2, 16, 4, 4))
    assert f"k={k:g}/16" in repr(layer)  # the repr still shows it


def test_k_setter_types_and_values():
    layer = make_layer(8, 8, 1)
    layer.inactive_channels = 3.0  # a whole float, as the buffer stores it
    assert layer.inactive_channels == 3
    for k in ("3", None, True, torch.tensor(3), [3]):
        with pytest.raises(TypeError, match="inactive_channels"):
            layer.inactive_channels = k
    for k in (2.7, float("nan"), float("inf"), -1, 8):
        with pytest.raises(ValueError, match=rf"inactive_channels.*\[0, 8\).*{k}"):
            layer.inactive_channels = k
    assert layer.inactive_channels == 3
    with pytest.raises(ValueError, match=r"k must be in \[0, 8\), got k=8"):
        layer.resolved_execution(k=8)
    with pytest.raises(TypeError, match="autograd"):
        layer.resolved_execution(autograd="no")


def test_saliency_loss_is_sum_over_layers_and_heads():
    model = nn.Sequential(make_layer(16, 16, 1), make_layer(16, 16, 1, seed=1))
    with pytest.raises(ValueError, match="forward"):
        saliency_loss(model)
    model.eval()  # the lasso is computed in eval too
    x = torch.randn(2, 16, 4, 4)
    model(x)
    xn = F.relu(model[0].norm(x))
    g = model[0].saliency(xn.mean((2, 3)))
    per_head = [g[:, i].mean() for i in range(4)]
    torch.testing.assert_close(model[0].last_lasso, torch.stack(per_head).sum())
    torch.testing.assert_close(saliency_loss(model), model[0].last_lasso + model[1].last_lasso)
    assert saliency_loss(nn.Linear(2, 2)).item() == 0.0


# ---- construction, errors, repr ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=10, out_channels=8, heads=4), "heads=4, in_channels=10"),
        (dict(in_channels=8, out_channels=10, heads=4), "heads=4, out_channels=10"),
        (dict(heads=0), "heads=0"),
        (dict(heads=-2), "heads=-2"),
        (dict(pruning_rate=1.0), "pruning_rate=1.0"),
        (dict(pruning_rate=-0.1), "pruning_rate=-0.1"),
        (dict(in_channels=4, out_channels=4, pruning_rate=0.9, squeeze_rate=1), "pruning_rate=0.9"),
        (dict(in_channels=4, out_channels=4, squeeze_rate=16), "squeeze_rate=16"),
        (dict(squeeze_rate=1), "squeeze_rate=1"),
        (dict(execution="fast"), "execution='fast'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    args = dict(in_channels=16, out_channels=16, kernel_size=1, squeeze_rate=2) | kwargs
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        DGCConv2d(**args)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1, got kernel_size=0"),
        (dict(kernel_size=(3,)), ValueError, r"kernel_size=\(3,\)"),
        (dict(kernel_size=1.0), TypeError, r"kernel_size=1.0"),
        (dict(stride=0), ValueError, r"stride must be >= 1, got stride=0"),
        (dict(stride=(1, 0)), ValueError, r"stride=\(1, 0\)"),
        (dict(padding=-1), ValueError, r"padding must be >= 0, got padding=-1"),
        (dict(padding="same"), TypeError, r"padding='same'"),
        (dict(dilation=0), ValueError, r"dilation must be >= 1, got dilation=0"),
        (dict(in_channels=16.0), TypeError, r"in_channels=16.0"),
        (dict(out_channels=True), TypeError, r"out_channels=True"),
        (dict(in_channels=0), ValueError, r"in_channels=0"),
        (dict(heads=2.0), TypeError, r"heads=2.0"),
        (dict(squeeze_rate=True), TypeError, r"squeeze_rate=True"),
        (dict(pruning_rate=float("nan")), ValueError, r"pruning_rate=nan"),
        (dict(pruning_rate="0.5"), TypeError, r"pruning_rate='0.5'"),
        (dict(execution=3), TypeError, r"execution=3"),
        (dict(execution=None), TypeError, r"execution=None"),
    ],
)
def test_bad_conv_arguments_fail_at_construction(kwargs, error, match):
    args = dict(in_channels=16, out_channels=16, kernel_size=1, squeeze_rate=2) | kwargs
    with pytest.raises(error, match=match):
        DGCConv2d(**args)


def test_inputs_of_a_wrong_type_dtype_or_size_fail_clearly():
    layer = make_layer(8, 8, 3, padding=1, k=4)
    for execution in ("mask", "gather"):
        layer.execution = execution
        with pytest.raises(TypeError, match=r"dtype=torch.int64.*torch.float32"):
            layer(torch.ones(1, 8, 4, 4, dtype=torch.int64))
        with pytest.raises(TypeError, match=r"dtype=torch.float16.*torch.float32"):
            layer(torch.ones(1, 8, 4, 4, dtype=torch.float16))
        with pytest.raises(TypeError, match=r"dtype=torch.float32.*torch.float64"):
            layer.double()(torch.ones(1, 8, 4, 4))
        layer.float()
        with pytest.raises(TypeError, match=r"expects a Tensor, got list"):
            layer([[1.0]])
        # 3x3 with dilation 3 spans 7 pixels; 2 + 2 * 1 padding is too small, in every execution
        dilated = make_layer(8, 8, 3, padding=1, dilation=3, k=4, execution=execution)
        with pytest.raises(ValueError, match=r"2x2.*kernel_size=\(3, 3\).*dilation=\(3, 3\)"):
            dilated(torch.randn(1, 8, 2, 2))


@pytest.mark.parametrize("train", [False, True])
def test_empty_batch_in_every_execution(train):
    """nn.Conv2d takes an empty batch; so does every execution, with a lasso of 0."""
    layer = make_layer(16, 8, 3, stride=2, padding=1, heads=4, k=10, squeeze_rate=2).train(train)
    x = torch.randn(0, 16, 7, 7)
    for execution, use_kernel in (("mask", False), ("gather", False), ("gather", True)):
        layer.execution = execution
        with cpu_kernel.use(use_kernel):
            with torch.no_grad():
                assert layer(x).shape == (0, 8, 4, 4)
            out = layer(x.clone().requires_grad_(True))
        assert out.shape == (0, 8, 4, 4)
        assert layer.last_lasso.item() == 0.0 and layer.last_selection.shape == (0, 4, 16)
        (out.sum() + layer.last_lasso).backward()  # in the graph, as nn.Conv2d's output


def test_bad_k_and_bad_inputs():
    layer = make_layer(8, 8, 1)
    for k in (-1, 8, 100, 2.5):
        with pytest.raises(ValueError, match=str(k)):
            layer.inactive_channels = k
    with pytest.raises(ValueError, match=r"4-D.*\(8, 4, 4\)"):
        layer(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="expected 8 input channels, got 6"):
        layer(torch.randn(1, 6, 4, 4))
    with pytest.raises(ValueError, match="execution"):
        layer.execution = "dense"


def test_conv_arguments_accept_int_or_pair():
    layer = DGCConv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(1, 1), squeeze_rate=2)
    assert layer.kernel_size == (3, 1) and layer.stride == (2, 1)
    assert layer(torch.randn(1, 8, 6, 6)).shape == (1, 8, 3, 6)


def test_repr_shows_heads_rate_k_and_execution():
    layer = make_layer(16, 16, 3, padding=1, k=12)
    text = repr(layer)
    for part in ("heads=4", "pruning_rate=0.75", "k=12/16", "execution=auto(gather)"):
        assert part in text
    layer.inactive_channels = 0  # the rule without an input (the kernel's: resolved_execution)
    assert "execution=auto(mask)" in repr(layer)
    layer.inactive_channels = 6  # keeps 10/16: gather in inference, mask under autograd
    assert "execution=auto(gather; mask under autograd)" in repr(layer)
    layer.execution = "gather"
    assert "execution=gather" in repr(layer)


def test_auto_threshold_depends_on_autograd():
    layer = make_layer(16, 16, 3, padding=1, k=6)  # keeps 10 of 16
    assert layer.resolved_execution(autograd=False) == "gather"
    assert layer.resolved_execution(autograd=True) == "mask"
    with torch.no_grad():
        assert layer.resolved_execution() == "gather"
    assert layer.resolved_execution() == "mask"  # grad mode is on by default
    layer.inactive_channels = 8  # keeps half: still the mask under autograd
    assert layer.resolved_execution(autograd=True) == "mask"
    layer.inactive_channels = 12  # keeps a quarter: gather either way
    assert layer.resolved_execution(autograd=True) == "gather"


def test_auto_with_the_kernel_gathers_but_on_small_maps_at_large_batches():
    layer = make_layer(16, 16, 3, padding=1, k=0).eval()
    x = torch.randn(2, 16, 6, 6)
    kernel = cpu_kernel.available()
    with torch.no_grad():
        assert layer.resolved_execution() == "mask"  # no input: the kernel is not assumed
        assert layer.resolved_execution(input=x) == ("gather" if kernel else "mask")
        big = torch.randn(9, 16, 7, 9)  # 63 output pixels, batch 9
        assert layer.resolved_execution(input=big) == "mask"  # keeps all 16 channels
        layer.inactive_channels = 7  # keeps 9 of 16: still more than half
        assert layer.resolved_execution(input=big) == "mask"
        layer.inactive_channels = 8  # keeps half
        assert layer.resolved_execution(input=big) == ("gather" if kernel else "mask")
        layer.inactive_channels = 0
        for other in (big[:8], torch.randn(9, 16, 8, 8)):  # batch 8; 64 pixels
            assert layer.resolved_execution(input=other) == ("gather" if kernel else "mask")
        with cpu_kernel.use(False):
            assert layer.resolved_execution(input=x) == "mask"
        assert layer.resolved_execution(input=x.double()) == "mask"  # not float32
    assert layer.resolved_execution(input=x) == "mask"  # autograd: the kernel never applies
    with pytest.raises(TypeError, match="input must be a Tensor or None, got list"):
        layer.resolved_execution(input=[x])


def test_squeeze_quirk_below_80_channels():
    assert DGCConv2d(64, 64, 1).hidden == 64 // 8
    assert DGCConv2d(80, 80, 1, heads=4).hidden == 80 // 16
    head = DGCConv2d(64, 64, 1).headconv_0
    assert torch.all(head.fc2.bias == 1.0)


def test_public_api():
    assert dgclab.DGCConv2d is DGCConv2d
    assert dgclab.set_pruning_progress is set_pruning_progress
    assert dgclab.saliency_loss is saliency_loss
    layer = make_layer(8, 8, 1)
    for attr in ("in_channels", "out_channels", "heads", "pruning_rate", "execution",
                 "inactive_channels"):
        assert hasattr(layer, attr)


# ---- the static baseline ---------------------------------------------------------------------


def test_group_conv_is_conv2d_with_groups_and_optional_shuffle():
    torch.manual_seed(0)
    conv = GroupConv2d(8, 12, 3, padding=1, groups=4)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, padding=1, groups=4))
    conv.shuffle = True
    plain = F.conv2d(x, conv.weight, padding=1, groups=4)
    shuffled = conv(x)
    for i, j in itertools.product(range(4), range(3)):  # group i channel j -> j*G + i
        torch.testing.assert_close(shuffled[:, j * 4 + i], plain[:, i * 3 + j])
    with pytest.raises(ValueError, match="groups=3"):
        GroupConv2d(8, 8, 1, groups=3)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(stride=0), ValueError, r"stride must be >= 1, got stride=0"),
        (dict(padding=-1), ValueError, r"padding=-1"),
        (dict(dilation=(1, 0)), ValueError, r"dilation=\(1, 0\)"),
        (dict(kernel_size=0), ValueError, r"kernel_size=0"),
        (dict(in_channels=8.0), TypeError, r"in_channels=8.0"),
        (dict(out_channels=-4), ValueError, r"out_channels=-4"),
        (dict(groups=True), TypeError, r"groups=True"),
        (dict(shuffle="yes"), TypeError, r"shuffle='yes'"),
        (dict(bias=1), TypeError, r"bias=1"),
    ],
)
def test_group_conv_validates_its_arguments(kwargs, error, match):
    args = dict(in_channels=8, out_channels=8, kernel_size=3, groups=4) | kwargs
    with pytest.raises(error, match=match):
        GroupConv2d(**args)
    # nn.Conv2d's string paddings stay available
    assert GroupConv2d(8, 8, 3, padding="same", groups=4)(torch.randn(1, 8, 5, 5)).shape[-1] == 5


# ---- CUDA ------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("ksize", [1, 3])
def test_cuda_matches_cpu_in_both_executions(ksize):
    layer = make_layer(32, 32, ksize, padding=ksize // 2, k=24, squeeze_rate=4).eval()
    x = torch.randn(4, 32, 8, 8)
    with torch.no_grad():
        ref = layer(x)
        gpu = layer.cuda()
        for execution in ("mask", "gather"):
            gpu.execution = execution
            torch.testing.assert_close(gpu(x.cuda()).cpu(), ref, rtol=1e-3, atol=1e-4)
    assert_executions_agree(gpu, x.cuda(), train=True)
