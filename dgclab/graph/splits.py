"""Semi-supervised node splits, fixed by a seed.

Planetoid's protocol (Yang, Cohen, Salakhutdinov, ICML 2016; the split Kipf & Welling used):
20 labelled nodes per class for training, 500 for validation, 1,000 for test. ``random_split``
draws that where the graph has more than 2,000 labelled nodes; on a smaller graph 20 per class
plus 1,500 would leave little or nothing, so there each class gives a fifth of its nodes to
training (at least one) and the rest is halved, validation first (rounded down), test the
remainder. Unlabelled nodes (label -1) are in no split.

The same seed gives the same split on every machine (a ``torch.Generator`` draws it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int, check_type
from .data import Graph

__all__ = ["Split", "random_split", "LARGE_GRAPH", "PER_CLASS", "VAL_SIZE", "TEST_SIZE"]

LARGE_GRAPH = 2000  # more labelled nodes than this: Planetoid's 20 per class / 500 / 1,000
PER_CLASS, VAL_SIZE, TEST_SIZE = 20, 500, 1000


@dataclass(frozen=True, eq=False)
class Split:
    """Node ids (int64, sorted) of the three splits.

    Use ``check(graph)`` before training: every split non-empty, no node in two splits, every
    node labelled and inside the graph.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def check(self, graph: Graph) -> "Split":
        """``self``, or ValueError naming the split and the node at fault."""
        check_type("graph", graph, Graph)
        seen = torch.zeros(graph.num_nodes, dtype=torch.bool)
        for name in ("train", "val", "test"):
            ids = getattr(self, name)
            check_type(f"split.{name}", ids, torch.Tensor)
            if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1:
                raise ValueError(f"split.{name} must be a 1-D tensor of node ids, got "
                                 f"{ids.dtype} {tuple(ids.shape)}")
            if len(ids) == 0:
                raise ValueError(f"the {name} split is empty")
            if int(ids.min()) < 0 or int(ids.max()) >= graph.num_nodes:
                bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
                raise ValueError(f"split.{name} holds node {bad}, but the graph has "
                                 f"{graph.num_nodes} nodes")
            unlabelled = ids[graph.y[ids] < 0]
            if len(unlabelled):
                raise ValueError(f"split.{name} holds unlabelled node {int(unlabelled[0])}")
            uniq, counts = ids.unique(return_counts=True)
            if (counts > 1).any():
                raise ValueError(f"node {int(uniq[counts > 1][0])} is in split.{name} twice")
            again = ids[seen[ids]]
            if len(again):
                raise ValueError(f"node {int(again[0])} is in split.{name} and in an earlier "
                                 f"split (train, val, test must not overlap)")
            seen[ids] = True
        return self


def random_split(graph: Graph, seed: int = 0) -> Split:
    """Planetoid-style split of ``graph``'s labelled nodes (module docstring), fixed by ``seed``.

    Raises:
        ValueError: a split would be empty (too few labelled nodes), or on a large graph a
            class has fewer than 20 nodes (naming it).

    Example:
        >>> from dgclab.graph import karate_graph
        >>> random_split(karate_graph(), seed=0).sizes()  # 2 factions of 17: 3 + 7 + 7 each
        {'train': 6, 'val': 14, 'test': 14}
    """
    check_type("graph", graph, Graph)
    seed = check_int("seed", seed, min=0)
    gen = torch.Generator().manual_seed(seed)
    labelled = (graph.y >= 0).nonzero().flatten()
    if len(labelled) == 0:
        raise ValueError(f"graph {graph.name!r} has no labelled node to split")
    order = labelled[torch.randperm(len(labelled), generator=gen)]  # shuffled labelled ids
    y = graph.y[order]
    train, val, test = [], [], []
    large = len(labelled) > LARGE_GRAPH
    for c in range(graph.num_classes):
        members = order[y == c]  # this class, in the shuffled order
        if large:
            if len(members) < PER_CLASS:
                raise ValueError(f"class {c} has {len(members)} labelled nodes, fewer than the "
                                 f"{PER_CLASS} per class that Planetoid's split trains on")
            train.append(members[:PER_CLASS])
            continue
        n_train = max(1, len(members) // 5) if len(members) else 0
        n_val = (len(members) - n_train) // 2
        train.append(members[:n_train])
        val.append(members[n_train:n_train + n_val])
        test.append(members[n_train + n_val:])
    if large:
        taken = torch.zeros(graph.num_nodes, dtype=torch.bool)
        taken[torch.cat(train)] = True
        rest = order[~taken[order]]  # the other labelled nodes, still shuffled
        if len(rest) < VAL_SIZE + TEST_SIZE:
            raise ValueError(f"graph {graph.name!r} leaves {len(rest)} labelled nodes after "
                             f"training, fewer than {VAL_SIZE} + {TEST_SIZE}")
        val, test = [rest[:VAL_SIZE]], [rest[VAL_SIZE:VAL_SIZE + TEST_SIZE]]
    split = Split(*(torch.cat(s).sort().values for s in (train, val, test)))
    return split.check(graph)
