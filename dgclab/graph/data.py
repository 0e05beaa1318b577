"""Labelled graphs that work offline (SPEC §9).

No package ships Cora, CiteSeer or PubMed (every loader downloads them), so dgclab's node
classification runs on real data that is already on the machine:

* ``digits``: scikit-learn's 1,797 handwritten 8x8 digits as a k-nearest-neighbour graph
  (64 pixel features, 10 classes);
* ``fashion-mnist``: the 10,000 Fashion-MNIST test images as a kNN graph (784 pixel features,
  10 classes), from ``data/FashionMNIST/raw`` (``python -m dgclab data fashion-mnist``);
* ``karate``: Zachary's karate club from networkx (34 members, 2 factions, one-hot identity
  features as in Kipf & Welling), the tiny case;
* Cora-like files a user has: ``dgclab.graph.read_planetoid``.

A kNN graph links each image to its k nearest images in pixel space (Euclidean), made
symmetric (i ~ j if either is among the other's k nearest). Its node features are the same
pixels, so a GCN there smooths each image with its look-alikes: a useful test bed for the
architectures, not a citation network (its homophily is far higher than Cora's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_int, check_type
from .conv import check_edge_index, normalized_adjacency

__all__ = ["GRAPHS", "Graph", "make_graph", "knn_graph", "digits_graph", "fashion_mnist_graph",
           "karate_graph", "load_graph"]

GRAPHS = ("karate", "digits", "fashion-mnist")


@dataclass(frozen=True, eq=False)
class Graph:
    """A node-classification graph, checked on construction.

    Attributes:
        x: (N, F) float node features.
        edge_index: (2, E) int64, symmetric, no self-loops (``make_graph`` makes it so).
        y: (N,) int64 labels in [0, num_classes), or -1 for an unlabelled node (never in a
            split).
        num_classes: C.
        name: for tables.

    Raises:
        TypeError: a field of the wrong type.
        ValueError: shapes that do not agree (an adjacency that does not match the features),
            a label out of range (naming the node), non-finite features.
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = "graph"

    def __post_init__(self) -> None:
        check_type("x", self.x, torch.Tensor)
        check_type("y", self.y, torch.Tensor)
        check_type("name", self.name, str)
        check_int("num_classes", self.num_classes, min=1)
        if not self.x.dtype.is_floating_point or self.x.dim() != 2:
            raise ValueError(f"x must be a float (N, F) tensor, got {self.x.dtype} "
                             f"{tuple(self.x.shape)}")
        n = self.x.shape[0]
        if n == 0:
            raise ValueError("x has no rows: a graph needs at least one node")
        if not torch.isfinite(self.x).all():
            raise ValueError("x must be finite, got NaN or Inf")
        check_edge_index(self.edge_index, n)
        if self.y.dtype.is_floating_point or self.y.dtype == torch.bool or self.y.dim() != 1:
            raise ValueError(f"y must be an integer (N,) tensor, got {self.y.dtype} "
                             f"{tuple(self.y.shape)}")
        if len(self.y) != n:
            raise ValueError(f"y has {len(self.y)} labels but x has {n} rows (nodes)")
        bad = (self.y < -1) | (self.y >= self.num_classes)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"labels must be in [0, num_classes={self.num_classes}) or -1 "
                             f"(unlabelled), got label {int(self.y[i])} at node {i}")

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        """Undirected edges (each listed twice in ``edge_index``)."""
        return self.edge_index.shape[1] // 2

    def adjacency(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Â = D^-1/2 (A + I) D^-1/2, sparse COO (N, N), in ``x``'s dtype by default."""
        return normalized_adjacency(self.edge_index, self.num_nodes, dtype or self.x.dtype)

    def __repr__(self) -> str:
        labelled = int((self.y >= 0).sum())
        return (f"Graph({self.name!r}, nodes={self.num_nodes}, edges={self.num_edges}, "
                f"features={self.x.shape[1]}, classes={self.num_classes}, labelled={labelled})")


def make_graph(x, adjacency, y, num_classes: int | None = None, name: str = "graph") -> Graph:
    """A ``Graph`` from features, any adjacency and labels, made undirected and simple.

    Args:
        x: (N, F) features (Tensor or array; stored as float32 unless already float64).
        adjacency: (2, E) edge list, or a square (N, N) matrix (Tensor, numpy array or scipy
            sparse), nonzero = edge; an array with 2 rows is read as an edge list. Made
            symmetric; self-loops and repeated edges dropped.
        y: (N,) integer labels, -1 for unlabelled.
        num_classes: default ``max(y) + 1``.
        name: for tables.

    Raises:
        TypeError, ValueError: as ``Graph``; ValueError names the sizes when the adjacency does
            not match the features.
    """
    import scipy.sparse as sp

    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    x = x if x.dtype == torch.float64 else x.float()
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer labels, got dtype={y.dtype}")
    y = y.long()
    n = x.shape[0] if x.dim() >= 1 else 0
    if sp.issparse(adjacency) or (isinstance(adjacency, (np.ndarray, torch.Tensor))
                                  and adjacency.ndim == 2 and adjacency.shape[0] != 2):
        if adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"an adjacency matrix must be square, got {tuple(adjacency.shape)}")
        if adjacency.shape[0] != n:
            raise ValueError(f"the adjacency is {adjacency.shape[0]} x {adjacency.shape[1]} but "
                             f"x has {n} rows (nodes): the adjacency does not match the features")
        if isinstance(adjacency, torch.Tensor):
            adjacency = (adjacency.to_dense() if adjacency.is_sparse else adjacency).numpy()
        coo = sp.coo_matrix(adjacency)
        keep = coo.data != 0
        edges = torch.from_numpy(np.stack([coo.row[keep], coo.col[keep]]).astype(np.int64))
    elif isinstance(adjacency, (np.ndarray, torch.Tensor)):
        edges = torch.as_tensor(adjacency)
    else:
        raise TypeError(f"adjacency must be a (2, E) edge list or an (N, N) matrix (Tensor, "
                        f"numpy array or scipy sparse), got {type(adjacency).__name__}")
    edges = check_edge_index(edges, max(n, 1))
    if num_classes is None:
        num_classes = int(y.max()) + 1 if len(y) and int(y.max()) >= 0 else 1
    return Graph(x, _undirected(edges, n), y, num_classes, name)


def _undirected(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Both directions of every edge, once each, no self-loops, sorted: (2, E)."""
    both = torch.cat([edge_index, edge_index.flip(0)], 1)
    both = both[:, both[0] != both[1]]
    key = torch.unique(both[0] * num_nodes + both[1])  # sorted, deduplicated
    return torch.stack([key // num_nodes, key % num_nodes])


def knn_graph(features, k: int = 10) -> torch.Tensor:
    """Symmetric k-nearest-neighbour edges (Euclidean), (2, E) int64, no self-loops.

    i ~ j when j is among i's k nearest or i among j's, so every node has degree >= k.
    """
    from sklearn.neighbors import kneighbors_graph

    features = np.asarray(features, dtype=np.float32)
    k = check_int("k", k, min=1, max=max(1, len(features) - 1))
    a = kneighbors_graph(features, k, mode="connectivity", include_self=False).tocoo()
    edges = torch.from_numpy(np.stack([a.row, a.col]).astype(np.int64))
    return _undirected(edges, len(features))


def digits_graph(k: int = 10) -> Graph:
    """scikit-learn's digits (1,797 8x8 images, 10 classes) as a kNN graph over the pixels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0  # (1797, 64) in [0, 1]
    return Graph(torch.from_numpy(x), knn_graph(x, k), torch.from_numpy(digits.target).long(),
                 10, "digits")


def fashion_mnist_graph(root: str | os.PathLike = "data", k: int = 10,
                        limit: int | None = None) -> Graph:
    """The Fashion-MNIST test images as a kNN graph over the pixels (784 features, 10 classes).

    Args:
        root: holds ``FashionMNIST/raw`` (``python -m dgclab data fashion-mnist --root ROOT``);
            nothing is downloaded here.
        k: neighbours per image.
        limit: keep the first ``limit`` test images (default all 10,000).

    Raises:
        RuntimeError: the files are missing (listing where dgclab looked).
    """
    from torchvision.datasets import FashionMNIST

    from ..data import ensure_fashion_mnist

    root = ensure_fashion_mnist(root, allow_apt=False, allow_download=False)
    test = FashionMNIST(str(root), train=False)
    n = len(test.data) if limit is None else check_int("limit", limit, min=2)
    x = test.data[:n].reshape(min(n, len(test.data)), -1).float() / 255.0  # (N, 784)
    return Graph(x, knn_graph(x.numpy(), k), test.targets[:n].long(), 10, "fashion-mnist")


def karate_graph() -> Graph:
    """Zachary's karate club (networkx): 34 nodes, 78 edges, 2 factions, identity features."""
    import networkx as nx

    g = nx.karate_club_graph()
    nodes = sorted(g.nodes)
    y = torch.tensor([0 if g.nodes[v]["club"] == "Mr. Hi" else 1 for v in nodes])
    edges = torch.tensor(list(g.edges), dtype=torch.long).T  # (2, 78)
    return Graph(torch.eye(len(nodes)), _undirected(edges, len(nodes)), y, 2, "karate")


def load_graph(name: str, root: str | os.PathLike = "data", k: int = 10) -> Graph:
    """One of ``GRAPHS`` by name (``root`` and ``k`` for the image graphs)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name == "karate":
        return karate_graph()
    if name == "digits":
        return digits_graph(k)
    if name == "fashion-mnist":
        return fashion_mnist_graph(root, k)
    raise ValueError(f"graph must be one of {GRAPHS}, got {name!r} (Planetoid files: "
                     f"dgclab.graph.read_planetoid)")
