"""Read Cora, CiteSeer or PubMed from Planetoid's files, for users who have them.

Planetoid (Yang, Cohen, Salakhutdinov, ICML 2016, arXiv 1603.08861) ships each dataset as eight
files ``ind.<name>.<part>`` in one folder:

* ``x``, ``tx``, ``allx``: scipy CSR feature matrices (pickled) of the training nodes, the test
  nodes, and all non-test nodes (training ones first);
* ``y``, ``ty``, ``ally``: their one-hot labels (pickled numpy arrays);
* ``graph``: a dict {node: [neighbours]} (pickled);
* ``test.index``: the graph ids of the test nodes, one per line (text).

Node ids: ``allx``'s rows are nodes 0 .. len(allx) - 1; ``tx``'s rows are the test ids, in the
order of ``test.index``, which is not sorted. As in Kipf's ``load_data`` (and torch_geometric's
reader), the test ids span ``min .. max`` of ``test.index``; ids in that range missing from it
(CiteSeer has 15) get zero features and no label (-1 here; they are isolated nodes, in no
split, and still valid for the GCN: their self-loop keeps them).

The standard split comes with the files: the first len(y) nodes train, the next 500 validate,
the ids in ``test.index`` test.

The pickles are read by an unpickler that allows only what these files hold (numpy arrays,
scipy CSR matrices, a defaultdict of lists): a file from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..checks import check_bool, check_int, check_type
from .data import Graph, make_graph
from .splits import Split

__all__ = ["PLANETOID_PARTS", "read_planetoid"]

PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


class _PlanetoidUnpickler(pickle.Unpickler):
    """Only numpy arrays, scipy CSR matrices and containers; Python 2 pickles included."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
        ("scipy.sparse", "csr_matrix"), ("collections", "defaultdict"), ("builtins", "list"),
        ("builtins", "dict"), ("builtins", "set"), ("builtins", "object"),
        ("copyreg", "_reconstructor"),
    }

    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # Py 2
        if module.startswith("numpy.core"):  # Python 2 / numpy 1 pickles
            module = "numpy._core" + module[len("numpy.core"):]
        if module in ("scipy.sparse.csr", "scipy.sparse._csr"):  # where CSR lived over time
            module = "scipy.sparse"
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a Planetoid file may not hold {module}.{name}")
        return super().find_class(module, name)


def _load(path: Path):
    with open(path, "rb") as f:
        return _PlanetoidUnpickler(f, encoding="latin1").load()  # latin1: Python 2 pickles


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense() if hasattr(matrix, "todense") else matrix,
                      dtype=np.float32)


def _labels(one_hot: np.ndarray) -> np.ndarray:
    """argmax of each one-hot row, -1 where a row is all zero (no label)."""
    return np.where(one_hot.any(1), one_hot.argmax(1), -1)


def read_planetoid(root: str | os.PathLike, name: str, row_normalize: bool = True,
                   val_size: int = 500) -> tuple[Graph, Split]:
    """The graph and the standard split of ``root/ind.<name>.*``.

    Args:
        root: the folder holding the eight files.
        name: ``cora``, ``citeseer``, ``pubmed`` or any name with files in that layout.
        row_normalize: divide each feature row by its sum (Kipf's preprocessing; DGL's Cora,
            which the MultiPath GCN code used, is stored so). Zero rows stay zero.
        val_size: validation nodes of the standard split, after the training ones (500).

    Returns:
        ``(graph, split)``: the ``Graph`` (N = len(allx) + the test id range) and the files'
        ``Split`` (len(y) train, ``val_size`` val, the ``test.index`` ids test).

    Raises:
        FileNotFoundError: a part is missing (naming it).
        ValueError: parts that do not agree (row counts, graph ids outside the nodes).
        pickle.UnpicklingError: a pickle holding something else than these files do.
    """
    check_type("name", name, str)
    check_bool("row_normalize", row_normalize)
    val_size = check_int("val_size", val_size, min=1)
    root = Path(root)
    paths = {part: root / f"ind.{name}.{part}" for part in PLANETOID_PARTS}
    for part, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"Planetoid {name!r} needs {path} (missing part {part!r})")
    x, y, tx, ty, allx, ally, graph = (_load(paths[p]) for p in PLANETOID_PARTS[:-1])
    x, tx, allx = _dense(x), _dense(tx), _dense(allx)
    y, ty, ally = (np.asarray(a) for a in (y, ty, ally))
    test_index = np.loadtxt(paths["test.index"], dtype=np.int64, ndmin=1)
    for (a, b), (na, nb) in (((x, y), ("x", "y")), ((tx, ty), ("tx", "ty")),
                             ((allx, ally), ("allx", "ally"))):
        if len(a) != len(b):
            raise ValueError(f"{na} has {len(a)} rows but {nb} has {len(b)}")
    if len(tx) != len(test_index):
        raise ValueError(f"tx has {len(tx)} rows but test.index lists {len(test_index)} ids")
    if len(test_index) and test_index.min() < len(allx):
        raise ValueError(f"test.index holds id {test_index.min()}, inside allx's "
                         f"{len(allx)} nodes")
    if len(y) + val_size > len(ally):
        raise ValueError(f"the standard split needs len(y) + val_size = {len(y)} + {val_size} "
                         f"labelled non-test nodes, ally has {len(ally)}")

    # Test ids span min..max of test.index; rows of ids missing there stay zero (CiteSeer).
    first = int(test_index.min()) if len(test_index) else len(allx)
    span = int(test_index.max()) - first + 1 if len(test_index) else 0
    n = max(len(allx), first) + span
    features = np.zeros((n, allx.shape[1]), dtype=np.float32)
    one_hot = np.zeros((n, ally.shape[1]), dtype=ally.dtype)
    features[: len(allx)], one_hot[: len(allx)] = allx, ally
    features[test_index], one_hot[test_index] = tx, ty
    if row_normalize:
        sums = features.sum(1, keepdims=True)
        features = np.divide(features, sums, out=np.zeros_like(features), where=sums != 0)

    edges = [(int(i), int(j)) for i, nbrs in graph.items() for j in nbrs]
    edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T  # (2, E)
    labels = _labels(one_hot)
    g = make_graph(features, edge_index, labels, num_classes=one_hot.shape[1], name=name)
    split = Split(torch.arange(len(y)), torch.arange(len(y), len(y) + val_size),
                  torch.from_numpy(np.sort(test_index)))
    return g, split.check(g)
