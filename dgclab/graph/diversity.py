"""Do the two paths of a multipath GCN learn different things?

dgclab asks the same of DGC's heads (``dgclab.analysis.head_overlap``: Jaccard of the channel
sets two heads pick, beside what chance would give). A GCN path has no channel set, but it has
a representation: the (N, h) matrix it adds into the sum. Linear CKA (Kornblith, Norouzi, Lee,
Hinton, ICML 2019, arXiv 1905.00414) compares two such matrices over the same nodes:

    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F),  X_c = X - column means

1 when one is an orthogonal transform of the other times a scalar (the paths compute the same
thing up to a rotation), near 0 when they share no linear structure. It is invariant to the
order and scale of the h units, so two paths that learned the same features in another order
still count as the same. Its chance level is not 0: ``path_similarity`` also reports the CKA
of path a against path b with its nodes shuffled (the same two marginals, no node-wise
agreement), the baseline to read it against (as ``jaccard_chance`` for heads).

Caveat: with fewer nodes than units (karate: 34 nodes, h = 128) linear CKA is biased upwards;
compare numbers within a dataset, not across.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checks import check_int, check_type
from ..modes import eval_mode
from .data import Graph

__all__ = ["linear_cka", "path_similarity"]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same N samples, in [0, 1].

    Args:
        x: (N, p).
        y: (N, q).

    Returns:
        The CKA (computed in float64); NaN when either is constant over the samples (a path
        whose units are all dead has no structure to compare).

    Example:
        >>> x = torch.randn(100, 8)
        >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8))[0]), 6)
        1.0
    """
    check_type("x", x, torch.Tensor)
    check_type("y", y, torch.Tensor)
    if x.dim() != 2 or y.dim() != 2 or len(x) != len(y):
        raise ValueError(f"x and y must be (N, p) and (N, q) over the same N samples, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).square().sum()  # ||Y^T X||_F^2
    norm = (x.T @ x).norm() * (y.T @ y).norm()  # ||X^T X||_F ||Y^T Y||_F
    return float(cross / norm) if norm > 0 else float("nan")


def path_similarity(model: nn.Module, graph: Graph, adj: torch.Tensor | None = None,
                    seed: int = 0) -> dict:
    """CKA between the two paths of a multipath model over all nodes of ``graph``.

    Args:
        model: a model with ``paths(x, adj) -> (a, b)`` (``MultiPathGCN``).
        graph: the graph.
        adj: Â of ``graph`` (computed when None).
        seed: of the node shuffle of the baseline.

    Returns:
        ``{"cka": CKA(a, b), "cka_shuffled": CKA(a, b with its nodes permuted)}``.
    """
    check_type("graph", graph, Graph)
    seed = check_int("seed", seed, min=0)
    if not callable(getattr(model, "paths", None)):
        raise TypeError(f"model must have paths(x, adj) (a multipath model), got "
                        f"{type(model).__name__}")
    adj = graph.adjacency() if adj is None else adj
    with eval_mode(model), torch.no_grad():
        a, b = model.paths(graph.x, adj)  # (N, h) each
    perm = torch.randperm(len(b), generator=torch.Generator().manual_seed(seed))
    return {"cka": linear_cka(a, b), "cka_shuffled": linear_cka(a, b[perm])}
