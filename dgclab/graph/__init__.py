"""Graph convolution and the MultiPath GCN, evaluated honestly (SPEC §8, §9).

- ``conv.py``: the GCN layer (Kipf & Welling), Â = D^-1/2 (A + I) D^-1/2 in plain PyTorch.
- ``models.py``: plain, residual and multipath GCNs (and an MLP) with one parameter budget.
- ``data.py``: ``Graph`` and the offline graphs (kNN over digits / Fashion-MNIST, karate).
- ``planetoid.py``: a reader for Planetoid's Cora / CiteSeer / PubMed files.
- ``splits.py``: Planetoid-style semi-supervised splits, fixed by a seed.
- ``train.py``: full-batch training, the epoch chosen on validation, beside the test-chosen one.
- ``diversity.py``: how much the two paths agree (linear CKA).
- ``plots.py``: the figures.
"""

from .conv import GCNConv, check_edge_index, gcn_conv, normalized_adjacency
from .data import (
    GRAPHS,
    Graph,
    digits_graph,
    fashion_mnist_graph,
    karate_graph,
    knn_graph,
    load_graph,
    make_graph,
)
from .diversity import linear_cka, path_similarity
from .models import (
    MODELS,
    GCNBase,
    GraphMLP,
    MultiPathGCN,
    PlainGCN,
    ResidualGCN,
    build_model,
    parameter_count,
)
from .planetoid import PLANETOID_PARTS, read_planetoid
from .plots import plot_path_similarity, plot_protocols, plot_selection
from .splits import Split, random_split
from .train import (
    HISTORY_COLUMNS,
    FitResult,
    fit,
    format_paired,
    format_paths,
    format_summary,
    paired_differences,
    run_protocol,
    summarize,
)

__all__ = [
    "GCNConv", "check_edge_index", "gcn_conv", "normalized_adjacency",
    "GRAPHS", "Graph", "digits_graph", "fashion_mnist_graph", "karate_graph", "knn_graph",
    "load_graph", "make_graph",
    "linear_cka", "path_similarity",
    "MODELS", "GCNBase", "GraphMLP", "MultiPathGCN", "PlainGCN", "ResidualGCN", "build_model",
    "parameter_count",
    "PLANETOID_PARTS", "read_planetoid",
    "plot_path_similarity", "plot_protocols", "plot_selection",
    "Split", "random_split",
    "HISTORY_COLUMNS", "FitResult", "fit", "format_paired", "format_paths", "format_summary",
    "paired_differences", "run_protocol", "summarize",
]
