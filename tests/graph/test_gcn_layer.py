"""The GCN layer against the dense formula D^-1/2 (A + I) D^-1/2 X W + b, in float64."""

from __future__ import annotations

import pytest
import torch

from dgclab.graph import GCNConv, gcn_conv, normalized_adjacency


def dense_normalized(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """The formula, written from scratch: binary A without its diagonal, plus I, scaled."""
    a = torch.zeros(n, n, dtype=torch.float64)
    a[edge_index[0], edge_index[1]] = 1.0  # duplicates count once
    a.fill_diagonal_(0.0)
    a_hat = a + torch.eye(n, dtype=torch.float64)
    d = a_hat.sum(1)
    return torch.diag(d.rsqrt()) @ a_hat @ torch.diag(d.rsqrt())


def random_edges(n: int, e: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, n, (2, e), generator=g)
    return torch.cat([edges, edges.flip(0)], 1)  # undirected


@pytest.mark.parametrize("n, e, seed", [(7, 9, 0), (30, 60, 1), (50, 20, 2)])
def test_sparse_adjacency_is_the_dense_formula(n, e, seed):
    edges = random_edges(n, e, seed)  # with repeated edges and self-loops; some nodes isolated
    adj = normalized_adjacency(edges, n, torch.float64)
    assert adj.is_sparse and adj.shape == (n, n)
    torch.testing.assert_close(adj.to_dense(), dense_normalized(edges, n), rtol=0, atol=1e-15)


@pytest.mark.parametrize("fin, fout", [(5, 3), (3, 5)])  # both orders of the product
def test_layer_is_the_dense_formula_forward_and_backward(fin, fout):
    n = 12
    edges = random_edges(n, 15, 3)
    torch.manual_seed(0)
    conv = GCNConv(fin, fout).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(n, fin, dtype=torch.float64, requires_grad=True)
    out = conv(x, normalized_adjacency(edges, n, torch.float64))
    ref_x = x.detach().clone().requires_grad_(True)
    w, b = conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()
    ref = dense_normalized(edges, n) @ ref_x @ w + b
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    proj = torch.randn(n, fout, dtype=torch.float64)
    (out * proj).sum().backward()
    (ref * proj).sum().backward()
    for got, want in ((x.grad, ref_x.grad), (conv.weight.grad, w.grad), (conv.bias.grad, b.grad)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_isolated_node_keeps_its_own_features():
    # CiteSeer has isolated nodes: with the self-loop, its row of Â is 1 on the diagonal.
    edges = torch.tensor([[0, 1], [1, 0]])
    adj = normalized_adjacency(edges, 3, torch.float64).to_dense()
    torch.testing.assert_close(adj[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(gcn_conv(x, adj, w)[2], x[2])
    adj_empty = normalized_adjacency(torch.zeros(2, 0, dtype=torch.long), 3).to_dense()
    torch.testing.assert_close(adj_empty, torch.eye(3))  # no edge at all: Â = I


def test_glorot_init_and_repr():
    torch.manual_seed(0)
    conv = GCNConv(300, 100)
    bound = (6 / 400) ** 0.5
    assert conv.weight.shape == (300, 100) and conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound and torch.equal(conv.bias, torch.zeros(100))
    assert repr(conv) == "GCNConv(300, 100, bias=True)"
    assert GCNConv(3, 2, bias=False).bias is None


def test_bad_input():
    x, adj, w = torch.randn(4, 3), torch.eye(4), torch.randn(3, 2)
    with pytest.raises(TypeError, match="weight must be a Tensor, got list"):
        gcn_conv(x, adj, w.tolist())
    with pytest.raises(ValueError, match=r"\(F_in, F_out\), got \(4, 3\) and \(2, 3\)"):
        gcn_conv(x, adj, w.T)
    with pytest.raises(ValueError, match=r"node 5, but the graph has num_nodes=5"):
        normalized_adjacency(torch.tensor([[0, 5], [5, 0]]), 5)
    with pytest.raises(ValueError, match=r"node -1"):
        normalized_adjacency(torch.tensor([[0, -1], [-1, 0]]), 5)
    with pytest.raises(ValueError, match=r"shape \(2, E\), got \(3, 2\)"):
        normalized_adjacency(torch.zeros(3, 2, dtype=torch.long), 5)
    with pytest.raises(TypeError, match="integer node ids"):
        normalized_adjacency(torch.zeros(2, 2), 5)
    with pytest.raises(TypeError, match="edge_index must be a Tensor, got list"):
        normalized_adjacency([[0, 1], [1, 0]], 5)
    with pytest.raises(ValueError, match="num_nodes must be >= 1, got num_nodes=0"):
        normalized_adjacency(torch.zeros(2, 0, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="in_features must be an int"):
        GCNConv(2.5, 3)
    conv = GCNConv(4, 2)
    adj = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4\), got \(3, 5\)"):
        conv(torch.randn(3, 5), adj)
    with pytest.raises(ValueError, match=r"adj must be \(4, 4\) for x with 4 nodes, got \(3, 3\)"):
        conv(torch.randn(4, 4), adj)
