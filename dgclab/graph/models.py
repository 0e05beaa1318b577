"""Plain, residual and multipath GCNs with one parameter budget (SPEC §8).

MultiPath GCN: Das et al., arXiv 2105.01510. Instead of one deep stack of graph convolutions,
several shallow paths on a shared stem, summed. Every model here holds the same four layers

    gc1: GCN F -> h,   gc2: GCN h -> h,   gc3: GCN h -> h,   fc: Linear h -> classes

and differs only in how they are wired (h0 = ReLU(gc1(X)) throughout):

* ``plain``: h1 = ReLU(gc2(h0)), h2 = ReLU(gc3(h1)), logits = fc(h2) (3 GCN layers, 3 hops).
* ``residual``: h1 = ReLU(gc2(h0)) + h0, h2 = ReLU(gc3(h1)), logits = fc(h2) (the released
  code's residual block around layer 2).
* ``multipath`` (SPEC §8; the released code on CiteSeer, Coauthor, Amazon and CoraFull): two
  one-layer paths on the shared stem, a = ReLU(gc2(h0)), b = ReLU(gc3(h0)),
  logits = fc(ReLU(a + b)). Its receptive field is 2 hops, one fewer than the baselines'.
* ``multipath-reuse`` (the released code on Cora and Reddit): a = ReLU(gc2(h0)),
  b = ReLU(gc3(a)), logits = fc(ReLU(a + b)). Path b goes through gc2 again, so this is a
  residual block around layer 3 (the released code computes gc2(h0) twice; it is the same
  tensor, computed once here).
* ``mlp``: the plain wiring with every GCN layer replaced by a Linear of the same shape (no
  graph): how much the graph adds at all.

**How the budget is matched.** The same four layers with the same shapes in every model: at the
same hidden width h each has exactly (F + 1) h + 2 (h + 1) h + (h + 1) C parameters
(``parameter_count``; tested). The released code broke this once: CiteSeer's multipath ran at
h = 256 against baselines at 128, twice the parameters; dgclab does not reproduce that.

Every model takes ``(x, adj)`` with Â from ``normalized_adjacency`` and returns logits (N, C);
the multipath models also expose ``paths(x, adj) -> (a, b)``, the two summed representations
(``dgclab.graph.diversity``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_choice, check_int, check_type
from .conv import GCNConv

__all__ = ["MODELS", "GCNBase", "PlainGCN", "ResidualGCN", "MultiPathGCN", "GraphMLP",
           "build_model", "parameter_count"]


class GCNBase(nn.Module):
    """The four layers every model holds: gc1 (F -> h), gc2, gc3 (h -> h), fc (h -> C)."""

    layer = GCNConv

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features, min=1)
        num_classes = check_int("num_classes", num_classes, min=1)
        hidden = check_int("hidden", hidden, min=1)
        self.gc1 = self.layer(in_features, hidden)
        self.gc2 = self.layer(hidden, hidden)
        self.gc3 = self.layer(hidden, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def stem(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gc1(x, adj))  # h0 (N, h)


class PlainGCN(GCNBase):
    """Three GCN layers in a stack, then a linear classifier (3 hops)."""

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.gc2(self.stem(x, adj), adj))
        return self.fc(F.relu(self.gc3(h, adj)))  # (N, C)


class ResidualGCN(GCNBase):
    """The plain stack with a skip around layer 2: h1 = ReLU(gc2(h0)) + h0."""

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h0 = self.stem(x, adj)
        h1 = F.relu(self.gc2(h0, adj)) + h0
        return self.fc(F.relu(self.gc3(h1, adj)))  # (N, C)


class MultiPathGCN(GCNBase):
    """Two paths summed: logits = fc(ReLU(a + b)).

    Args:
        in_features, num_classes, hidden: as every model here.
        variant: ``"parallel"`` (SPEC §8: a = ReLU(gc2(h0)), b = ReLU(gc3(h0)), two one-layer
            paths) or ``"reuse"`` (the released code on Cora/Reddit: b = ReLU(gc3(a))).
    """

    VARIANTS = ("parallel", "reuse")

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128,
                 variant: str = "parallel") -> None:
        super().__init__(in_features, num_classes, hidden)
        self.variant = check_choice("variant", variant, self.VARIANTS)

    def paths(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b), each (N, h): the two representations that are summed."""
        h0 = self.stem(x, adj)
        a = F.relu(self.gc2(h0, adj))
        b = F.relu(self.gc3(a if self.variant == "reuse" else h0, adj))
        return a, b

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        a, b = self.paths(x, adj)
        return self.fc(F.relu(a + b))  # (N, C); a, b >= 0, so the ReLU is the released code's

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


class _Linear(nn.Linear):
    """A Linear with a GCN layer's signature (it ignores the graph)."""

    def forward(self, x: torch.Tensor, adj: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class GraphMLP(PlainGCN):
    """The plain model without the graph: the same shapes, Linear instead of GCN layers."""

    layer = _Linear


MODELS = {
    "mlp": GraphMLP,
    "plain": PlainGCN,
    "residual": ResidualGCN,
    "multipath": MultiPathGCN,
    "multipath-reuse": lambda f, c, h: MultiPathGCN(f, c, h, variant="reuse"),
}


def build_model(name: str, in_features: int, num_classes: int, hidden: int = 128) -> nn.Module:
    """One of ``MODELS`` by name.

    Example:
        >>> build_model("multipath", 64, 10, hidden=16)(torch.randn(5, 64), torch.eye(5)).shape
        torch.Size([5, 10])
    """
    check_choice("model", name, tuple(MODELS))
    return MODELS[name](in_features, num_classes, hidden)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    check_type("model", model, nn.Module)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
