"""The Planetoid reader on tiny files written here in the published layout (Cora's cannot be
downloaded in tests): pickled CSR features, one-hot labels, a dict-of-lists graph, a text test
index that is unsorted and has a gap (CiteSeer's isolated test nodes)."""

from __future__ import annotations

import os
import pickle
from collections import defaultdict

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dgclab.graph import PLANETOID_PARTS, read_planetoid

N_ALLX, N_TRAIN, CLASSES, FEATURES = 8, 2, 3, 4
TEST_INDEX = [11, 9, 8]  # unsorted; id 10 is missing from the test files (isolated, no label)


def _one_hot(labels):
    return np.eye(CLASSES, dtype=np.int32)[labels]


def _py2_style(data: bytes) -> bytes:
    """Module names as Python 2 / old numpy and scipy wrote them in the published files."""
    return (data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            .replace(b"scipy.sparse._csr", b"scipy.sparse.csr"))


def write_planetoid(root, name="tiny", *, graph=None, py2=True):
    rng = np.random.default_rng(0)
    allx = rng.integers(0, 3, size=(N_ALLX, FEATURES)).astype(np.float32)
    allx[5] = 0  # a node without features: row normalisation must leave it zero
    tx = rng.integers(1, 3, size=(len(TEST_INDEX), FEATURES)).astype(np.float32)
    ally = _one_hot([0, 1, 2, 0, 1, 2, 0, 1])
    ty = _one_hot([2, 1, 0])  # labels of nodes 11, 9, 8
    if graph is None:
        graph = defaultdict(list, {0: [1, 8], 1: [0, 2], 2: [1], 3: [4], 4: [3], 8: [0],
                                   9: [11], 11: [9]})  # 5, 6, 7 and 10 isolated
    parts = {"x": sp.csr_matrix(allx[:N_TRAIN]), "y": ally[:N_TRAIN], "tx": sp.csr_matrix(tx),
             "ty": ty, "allx": sp.csr_matrix(allx), "ally": ally, "graph": graph}
    for part, obj in parts.items():
        data = pickle.dumps(obj, protocol=2)
        (root / f"ind.{name}.{part}").write_bytes(_py2_style(data) if py2 else data)
    (root / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in TEST_INDEX))
    return allx, tx


def test_reads_features_labels_edges_and_the_standard_split(tmp_path):
    allx, tx = write_planetoid(tmp_path)
    g, split = read_planetoid(tmp_path, "tiny", row_normalize=False, val_size=3)
    assert g.num_nodes == 12 and g.num_classes == CLASSES and g.name == "tiny"
    np.testing.assert_array_equal(g.x[:N_ALLX].numpy(), allx)
    np.testing.assert_array_equal(g.x[[11, 9, 8]].numpy(), tx)  # tx rows in test.index order
    assert g.x[10].abs().sum() == 0
    assert g.y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, -1, 2]  # 10: no label
    edges = set(map(tuple, g.edge_index.T.tolist()))
    assert edges == {(0, 1), (1, 0), (0, 8), (8, 0), (1, 2), (2, 1), (3, 4), (4, 3), (9, 11),
                     (11, 9)}
    assert split.train.tolist() == [0, 1] and split.val.tolist() == [2, 3, 4]
    assert split.test.tolist() == [8, 9, 11]


def test_row_normalisation(tmp_path):
    write_planetoid(tmp_path, py2=False)  # files written by Python 3 read too
    g, _ = read_planetoid(tmp_path, "tiny", val_size=3)
    sums = g.x.sum(1)
    torch.testing.assert_close(sums[sums > 0], torch.ones(int((sums > 0).sum())))
    assert sums[5] == 0 and sums[10] == 0


def test_missing_part_and_mismatched_files(tmp_path):
    write_planetoid(tmp_path)
    with pytest.raises(ValueError, match=r"len\(y\) \+ val_size = 2 \+ 500"):
        read_planetoid(tmp_path, "tiny")  # the default 500 validation nodes do not exist here
    os.remove(tmp_path / "ind.tiny.graph")
    with pytest.raises(FileNotFoundError, match=r"ind.tiny.graph \(missing part 'graph'\)"):
        read_planetoid(tmp_path, "tiny", val_size=3)
    write_planetoid(tmp_path, graph=defaultdict(list, {0: [12]}))  # node 12 does not exist
    with pytest.raises(ValueError, match=r"node 12, but the graph has num_nodes=12"):
        read_planetoid(tmp_path, "tiny", val_size=3)
    assert set(PLANETOID_PARTS) == {p.name.split("tiny.")[1] for p in tmp_path.iterdir()}


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    write_planetoid(tmp_path)
    (tmp_path / "ind.tiny.graph").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(pickle.UnpicklingError, match="may not hold posix.getcwd"):
        read_planetoid(tmp_path, "tiny", val_size=3)
