"""The graph convolution of Kipf and Welling (GCN, ICLR 2017, arXiv 1609.02907).

One layer is ``H' = Â X W + b`` with the symmetric-normalised adjacency with self-loops

    Â = D^-1/2 (A + I) D^-1/2,        D = diag of the row sums of A + I,

so node i mixes its own features and its neighbours' with weights 1 / sqrt(d_i d_j). Every node
has degree >= 1 through its self-loop: an isolated node (CiteSeer has some) keeps its own
features, scaled by 1, and nothing divides by zero.

dgclab builds Â once per graph (``normalized_adjacency``, a sparse (N, N) tensor) and a layer
is one dense matmul and one sparse matmul (``gcn_conv``). This is plain PyTorch on purpose:
torch_geometric's ``GCNConv`` installs beside torch 2.14.1 but computes the same thing (checked
against it once, see the README), and the formula reads better than a message-passing framework
in a package that is read to learn the method. The tests check it against the dense formula in
float64.

Conventions: ``edge_index`` is (2, E) int64, an edge (i, j) means A[i, j] = 1 (node i reads
node j; torch_geometric lists the source first, the other way round, which makes no difference
on the undirected graphs of ``dgclab.graph``, where both directions are listed). Repeated edges
count once and self-loops already in ``edge_index`` are replaced by the one that Â adds (the
semantics of torch_geometric's ``add_remaining_self_loops`` with unit weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..checks import check_bool, check_int, check_type

__all__ = ["GCNConv", "gcn_conv", "normalized_adjacency", "check_edge_index"]


def check_edge_index(edge_index, num_nodes: int) -> torch.Tensor:
    """``edge_index`` as (2, E) int64, or an error naming what is wrong.

    Raises:
        TypeError: not an integer Tensor.
        ValueError: not of shape (2, E), or a node id outside [0, num_nodes) (an adjacency
            that does not match the features).
    """
    check_type("edge_index", edge_index, torch.Tensor)
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise TypeError(f"edge_index must hold integer node ids, got dtype={edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel():
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            bad = low if low < 0 else high
            raise ValueError(f"edge_index refers to node {bad}, but the graph has "
                             f"num_nodes={num_nodes} (ids 0..{num_nodes - 1}): the adjacency "
                             f"does not match the features")
    return edge_index.long()


def normalized_adjacency(edge_index: torch.Tensor, num_nodes: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Â = D^-1/2 (A + I) D^-1/2 as a sparse COO tensor (N, N), coalesced.

    Args:
        edge_index: (2, E) int64, an edge (i, j) sets A[i, j] = 1 (duplicates count once,
            self-loops are replaced by I's).
        num_nodes: N; nodes without edges are valid (their row of Â is their self-loop, 1).
        dtype: of the values.

    Example:
        >>> adj = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 3)
        >>> adj.to_dense()  # nodes 0 and 1 linked, node 2 isolated
        tensor([[0.5000, 0.5000, 0.0000],
                [0.5000, 0.5000, 0.0000],
                [0.0000, 0.0000, 1.0000]])
    """
    num_nodes = check_int("num_nodes", num_nodes, min=1)
    edge_index = check_edge_index(edge_index, num_nodes)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]  # I adds the self-loops
    loops = torch.arange(num_nodes, device=edge_index.device).expand(2, -1)
    index = torch.cat([edge_index, loops], 1)  # (2, E' + N)
    ones = torch.ones(index.shape[1], dtype=dtype, device=index.device)
    a = torch.sparse_coo_tensor(index, ones, (num_nodes, num_nodes), check_invariants=False)
    a = a.coalesce()  # ids were checked above
    index = a.indices()
    values = torch.ones_like(a.values())  # a duplicated edge summed to 2: count it once
    degree = torch.zeros(num_nodes, dtype=dtype, device=index.device).index_add_(
        0, index[0], values)  # (N,) row sums of A + I, >= 1
    inv_sqrt = degree.rsqrt()
    values = inv_sqrt[index[0]] * values * inv_sqrt[index[1]]  # 1 / sqrt(d_i d_j)
    return torch.sparse_coo_tensor(index, values, (num_nodes, num_nodes), check_invariants=False,
                                   is_coalesced=True)


def gcn_conv(x: torch.Tensor, adj: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """Â X W + b, the functional core of ``GCNConv``.

    Args:
        x: (N, F_in) node features.
        adj: (N, N) Â from ``normalized_adjacency`` (sparse; a dense tensor works too).
        weight: (F_in, F_out).
        bias: (F_out,) or None.

    Returns:
        (N, F_out).
    """
    for name, t in (("x", x), ("adj", adj), ("weight", weight)):
        check_type(name, t, torch.Tensor)
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"x and weight must be (N, F_in) and (F_in, F_out), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    # The product is associative: multiply by the smaller side first (as DGL's GraphConv).
    if weight.shape[1] <= weight.shape[0]:
        out = adj @ (x @ weight)  # (N, F_out)
    else:
        out = (adj @ x) @ weight  # (N, F_out)
    return out if bias is None else out + bias


class GCNConv(nn.Module):
    """One GCN layer, ``Â X W + b`` (Kipf & Welling 2017).

    Args:
        in_features: F_in.
        out_features: F_out.
        bias: add a learned bias (initialised to 0).

    Weights are Glorot-uniform, as in Kipf's code, DGL and torch_geometric.

    Shapes: x (N, F_in), adj (N, N) from ``normalized_adjacency`` -> (N, F_out).

    Example:
        >>> conv = GCNConv(4, 2)
        >>> adj = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 3)
        >>> conv(torch.randn(3, 4), adj).shape
        torch.Size([3, 2])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, min=1)
        self.out_features = check_int("out_features", out_features, min=1)
        check_bool("bias", bias)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))  # (F_in, F_out)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        bound = math.sqrt(6.0 / (in_features + out_features))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {tuple(x.shape)}")
        if adj.shape != (x.shape[0], x.shape[0]):
            raise ValueError(f"adj must be ({x.shape[0]}, {x.shape[0]}) for x with "
                             f"{x.shape[0]} nodes, got {tuple(adj.shape)}")
        return gcn_conv(x, adj, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
