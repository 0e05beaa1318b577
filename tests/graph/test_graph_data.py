"""Graphs: construction, checks with clear errors, the offline datasets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dgclab.graph import (
    Graph,
    build_model,
    digits_graph,
    fashion_mnist_graph,
    karate_graph,
    knn_graph,
    load_graph,
    make_graph,
)


def test_make_graph_from_edges_and_matrices_agree():
    x = np.random.default_rng(0).normal(size=(5, 3))
    edges = torch.tensor([[0, 1, 1, 3, 2], [1, 0, 2, 4, 2]])  # a duplicate, a self-loop, 1 way
    dense = np.zeros((5, 5))
    dense[[0, 1, 3, 2], [1, 2, 4, 2]] = 1.0
    graphs = [make_graph(x, edges, [0, 1, 0, 1, -1]), make_graph(x, dense, [0, 1, 0, 1, -1]),
              make_graph(x, sp.csr_matrix(dense), [0, 1, 0, 1, -1]),
              make_graph(torch.tensor(x), torch.tensor(dense), torch.tensor([0, 1, 0, 1, -1]))]
    want = [[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]]  # both ways, once, no self-loop, sorted
    for g in graphs:
        assert g.edge_index.tolist() == want
        assert g.num_classes == 2 and g.num_edges == 3 and g.x.dtype == torch.float64
    assert "labelled=4" in repr(graphs[0])


def test_isolated_nodes_are_valid():
    # Node 3 has no edge (as CiteSeer's isolated nodes): the graph is valid and models run.
    g = make_graph(torch.randn(4, 3), torch.tensor([[0, 1], [1, 2]]), [0, 1, 0, 1])
    logits = build_model("multipath", 3, 2, hidden=4)(g.x, g.adjacency())
    assert torch.isfinite(logits).all() and logits.shape == (4, 2)


def test_bad_graphs_get_clear_errors():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    edges = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"got label 2 at node 1"):
        Graph(x, edges, torch.tensor([0, 2, 0, 1]), 2)
    with pytest.raises(ValueError, match=r"got label -3 at node 0"):
        Graph(x, edges, torch.tensor([-3, 1, 0, 1]), 2)
    with pytest.raises(ValueError, match=r"the adjacency is 5 x 5 but x has 4 rows"):
        make_graph(x, np.eye(5), y)
    with pytest.raises(ValueError, match=r"node 4, but the graph has num_nodes=4"):
        Graph(x, torch.tensor([[0, 4], [4, 0]]), y, 2)
    with pytest.raises(ValueError, match=r"node 7, but the graph has num_nodes=4"):
        make_graph(x, torch.tensor([[0, 7]]).T, y)
    with pytest.raises(ValueError, match=r"y has 3 labels but x has 4 rows"):
        Graph(x, edges, y[:3], 2)
    with pytest.raises(ValueError, match="must be square"):
        make_graph(x, np.ones((4, 3)), y)
    with pytest.raises(ValueError, match="x must be finite"):
        Graph(torch.tensor([[float("nan")]] * 4), edges, y, 2)
    with pytest.raises(TypeError, match="x must be a Tensor, got list"):
        Graph([[0.0]] * 4, edges, y, 2)
    with pytest.raises(TypeError, match="adjacency must be a"):
        make_graph(x, [[0, 1], [1, 0]], y)
    with pytest.raises(TypeError, match="y must hold integer labels"):
        make_graph(x, edges, [0.0, 1.0, 0.0, 1.0])
    with pytest.raises(TypeError, match="num_classes must be an int"):
        Graph(x, edges, y, 2.0)


def test_knn_graph_is_the_brute_force_neighbours_made_symmetric():
    pts = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    k = 3
    edges = knn_graph(pts, k)
    dist = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    near = np.argsort(dist, 1)[:, :k]
    want = {(i, int(j)) for i in range(40) for j in near[i]}
    want |= {(j, i) for i, j in want}
    assert set(map(tuple, edges.T.tolist())) == want
    assert torch.bincount(edges[0], minlength=40).min() >= k
    with pytest.raises(ValueError, match="k must be in"):
        knn_graph(pts, 40)


def test_karate():
    g = karate_graph()
    assert (g.num_nodes, g.num_edges, g.num_classes) == (34, 78, 2)
    assert torch.bincount(g.y).tolist() == [17, 17]
    assert int(g.y[0]) == 0 and int(g.y[33]) == 1  # Mr. Hi and the officer lead the factions
    assert torch.equal(g.x, torch.eye(34))


def test_digits_graph():
    g = digits_graph(k=5)
    assert (g.num_nodes, g.x.shape[1], g.num_classes) == (1797, 64, 10)
    assert float(g.x.max()) == 1.0
    same = (g.y[g.edge_index[0]] == g.y[g.edge_index[1]]).float().mean()
    assert same > 0.9  # neighbours in pixel space mostly share the digit


def test_fashion_mnist_graph_needs_the_files_and_downloads_nothing(tmp_path, monkeypatch):
    # Debian's dataset-fashion-mnist would be copied (offline); without it: an error, no download
    monkeypatch.setattr("dgclab.data.fashion_mnist.DEBIAN_DIR", tmp_path / "no-debian-package")
    with pytest.raises(RuntimeError, match="download: not allowed"):
        fashion_mnist_graph(tmp_path)
    with pytest.raises(ValueError, match="graph must be one of"):
        load_graph("cora")
