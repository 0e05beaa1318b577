"""Plain, residual, multipath: one parameter budget, and each wired as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgclab.graph import MODELS, MultiPathGCN, build_model, normalized_adjacency, parameter_count


@pytest.mark.parametrize("features, classes, hidden", [(34, 2, 128), (784, 10, 128), (5, 3, 7)])
def test_every_model_has_the_same_parameter_count(features, classes, hidden):
    expected = (features + 1) * hidden + 2 * (hidden + 1) * hidden + (hidden + 1) * classes
    counts = {name: parameter_count(build_model(name, features, classes, hidden))
              for name in MODELS}
    assert counts == dict.fromkeys(MODELS, expected)
    # the same tensors, wired differently (the MLP's Linear stores its weight transposed)
    shapes = {name: tuple(tuple(sorted(p.shape)) for p in build_model(
        name, features, classes, hidden).parameters()) for name in MODELS}
    assert len(set(shapes.values())) == 1


def _dense_case(seed=0):
    torch.manual_seed(seed)
    n, f = 9, 6
    a = (torch.rand(n, n) < 0.3).double()
    a = ((a + a.T) > 0).double().fill_diagonal_(0) + torch.eye(n, dtype=torch.float64)
    d = a.sum(1).rsqrt()
    adj_dense = d[:, None] * a * d[None, :]
    edges = (a - torch.eye(n, dtype=torch.float64)).nonzero().T
    adj = normalized_adjacency(edges, n, torch.float64)
    return torch.randn(n, f, dtype=torch.float64), adj, adj_dense


def _layers(model):
    return [(m.weight, m.bias) for m in (model.gc1, model.gc2, model.gc3)]


@pytest.mark.parametrize("name", list(MODELS))
def test_wiring_matches_the_formulas(name):
    x, adj, a = _dense_case()
    torch.manual_seed(1)
    model = build_model(name, x.shape[1], 3, hidden=5).double()
    (w1, b1), (w2, b2), (w3, b3) = _layers(model)
    relu = F.relu
    if name == "mlp":
        # Linear layers: weight (out, in); no Â anywhere
        h0 = relu(x @ w1.T + b1)
        logits = model.fc(relu(relu(h0 @ w2.T + b2) @ w3.T + b3))
    else:
        h0 = relu(a @ x @ w1 + b1)
        gc2, gc3 = (lambda h: a @ h @ w2 + b2), (lambda h: a @ h @ w3 + b3)
        if name == "plain":
            logits = model.fc(relu(gc3(relu(gc2(h0)))))
        elif name == "residual":
            logits = model.fc(relu(gc3(relu(gc2(h0)) + h0)))
        elif name == "multipath":  # SPEC §8: two one-layer paths on the shared stem
            logits = model.fc(relu(relu(gc2(h0)) + relu(gc3(h0))))
        else:  # the released code on Cora / Reddit: path b goes through gc2 again
            pa = relu(gc2(h0))
            logits = model.fc(relu(pa + relu(gc3(pa))))
    torch.testing.assert_close(model(x, adj), logits, rtol=1e-12, atol=1e-12)


def test_paths_are_what_forward_sums():
    x, adj, _ = _dense_case(2)
    for variant in MultiPathGCN.VARIANTS:
        torch.manual_seed(0)
        model = MultiPathGCN(x.shape[1], 4, hidden=6, variant=variant).double()
        a, b = model.paths(x, adj)
        assert a.shape == b.shape == (x.shape[0], 6)
        torch.testing.assert_close(model(x, adj), model.fc(F.relu(a + b)))
    assert "variant='reuse'" in repr(MultiPathGCN(3, 2, 4, variant="reuse"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("deep", 3, 2)
    with pytest.raises(TypeError, match="model must be one of"):
        build_model(3, 3, 2)
    with pytest.raises(ValueError, match="variant must be one of"):
        MultiPathGCN(3, 2, variant="serial")
    with pytest.raises(ValueError, match="hidden must be >= 1, got hidden=0"):
        build_model("plain", 3, 2, hidden=0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        build_model("plain", 3, 2.0)
