"""Planetoid-style splits: sizes, no overlap, fixed by the seed, clear errors."""

from __future__ import annotations

import pytest
import torch

from dgclab.graph import Split, make_graph, random_split


def _graph(labels, num_classes=None):
    y = torch.as_tensor(labels)
    return make_graph(torch.zeros(len(y), 1), torch.zeros(2, 0, dtype=torch.long), y,
                      num_classes=num_classes)


def _assert_disjoint_cover(split, graph):
    ids = torch.cat([split.train, split.val, split.test])
    assert len(ids.unique()) == len(ids)  # no node in two splits
    assert set(ids.tolist()) <= set((graph.y >= 0).nonzero().flatten().tolist())


def test_small_graph_rule():
    # classes of 17, 10, 3 and 1 nodes, 3 unlabelled
    labels = [0] * 17 + [1] * 10 + [2] * 3 + [3] + [-1] * 3
    g = _graph(labels)
    split = random_split(g, seed=0)
    _assert_disjoint_cover(split, g)
    for c, (n_train, n_val, n_test) in enumerate([(3, 7, 7), (2, 4, 4), (1, 1, 1), (1, 0, 0)]):
        got = [int((g.y[s] == c).sum()) for s in (split.train, split.val, split.test)]
        assert got == [n_train, n_val, n_test], c
    assert not (g.y[torch.cat([split.train, split.val, split.test])] < 0).any()


def test_large_graph_rule():
    g = _graph(torch.arange(2500) % 5)  # 2,500 labelled nodes, 5 classes
    split = random_split(g, seed=3)
    _assert_disjoint_cover(split, g)
    assert split.sizes() == {"train": 100, "val": 500, "test": 1000}
    assert torch.bincount(g.y[split.train]).tolist() == [20] * 5


def test_fixed_by_seed():
    g = _graph(torch.arange(300) % 3)
    a, b, c = random_split(g, 7), random_split(g, 7), random_split(g, 8)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert torch.equal(getattr(a, name), getattr(a, name).sort().values)
    assert not torch.equal(a.train, c.train)
    # a pinned draw (torch's CPU generator): the split a README number was measured on
    pinned = random_split(_graph([0] * 5 + [1] * 5), 0)
    assert (pinned.train.tolist(), pinned.val.tolist(), pinned.test.tolist()) == (
        [4, 7], [1, 3, 5, 9], [0, 2, 6, 8])


def test_empty_and_impossible_splits_are_refused():
    with pytest.raises(ValueError, match="the val split is empty"):
        random_split(_graph([0, 1, 2]))  # one node per class: all of it trains
    with pytest.raises(ValueError, match="no labelled node"):
        random_split(_graph([-1, -1], num_classes=2))
    labels = torch.cat([torch.zeros(2490, dtype=torch.long), torch.ones(11, dtype=torch.long)])
    with pytest.raises(ValueError, match="class 1 has 11 labelled nodes, fewer than the 20"):
        random_split(_graph(labels))
    with pytest.raises(TypeError, match="graph must be a Graph"):
        random_split(None)


def test_split_check():
    g = _graph([0, 1, 0, 1, 0, -1])
    t = torch.tensor
    Split(t([0, 1]), t([2]), t([3, 4])).check(g)
    with pytest.raises(ValueError, match="the test split is empty"):
        Split(t([0]), t([1]), t([], dtype=torch.long)).check(g)
    with pytest.raises(ValueError, match=r"node 2 is in split.test and in an earlier split"):
        Split(t([0]), t([1, 2]), t([2])).check(g)
    with pytest.raises(ValueError, match=r"node 0 is in split.train twice"):
        Split(t([0, 0]), t([1]), t([2])).check(g)
    with pytest.raises(ValueError, match=r"split.val holds node 9, but the graph has 6 nodes"):
        Split(t([0]), t([9]), t([2])).check(g)
    with pytest.raises(ValueError, match=r"split.test holds unlabelled node 5"):
        Split(t([0]), t([1]), t([5])).check(g)
