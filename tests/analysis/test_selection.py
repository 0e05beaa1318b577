"""Selection metrics (dgclab.analysis.selection) on hand-built recordings with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dgclab.analysis import (
    binary_entropy,
    channel_usage,
    dgc_layer_macs,
    head_input_dependence,
    head_jaccard,
    head_overlap,
    jaccard_similarity,
    realized_macs,
    sample_similarity,
)
from dgclab.layers import DGCConv2d
from dgclab.record import Recording


def info(in_channels=4, out_channels=4, heads=2, kernel_size=(1, 1), padding=(0, 0),
         hidden=1, pruning_rate=0.5, inactive_channels=2, input_hw=(2, 2)) -> dict:
    return {
        "in_channels": in_channels, "out_channels": out_channels, "kernel_size": kernel_size,
        "stride": (1, 1), "padding": padding, "dilation": (1, 1), "heads": heads,
        "hidden": hidden, "pruning_rate": pruning_rate, "inactive_channels": inactive_channels,
        "input_hw": input_hw,
    }


def sets(*per_sample, channels=4) -> torch.Tensor:
    """Selections from channel-index sets: sets([{0, 1}, {1, 2}], ...) -> (N, heads, C) bool."""
    out = torch.zeros(len(per_sample), len(per_sample[0]), channels, dtype=torch.bool)
    for n, heads in enumerate(per_sample):
        for h, chosen in enumerate(heads):
            out[n, h, list(chosen)] = True
    return out


def recording(sel: torch.Tensor, labels=None, ids=None, **kw) -> Recording:
    c = sel.shape[-1]
    return Recording({"l": sel}, {"l": info(in_channels=c, heads=sel.shape[1], **kw)},
                     labels=labels, ids=ids)


# ---- functional core -------------------------------------------------------------------------


def test_jaccard_similarity_small_case():
    a = sets([{0, 1}], [{1, 2}], [{2, 3}], [set()])[:, 0]  # (4, C)
    sim = jaccard_similarity(a)
    expected = torch.tensor(
        [[1, 1 / 3, 0, 0], [1 / 3, 1, 1 / 3, 0], [0, 1 / 3, 1, 0], [0, 0, 0, 1]]
    )
    torch.testing.assert_close(sim, expected)


def test_head_jaccard_shapes_and_values():
    sel = sets([{0, 1}, {0, 1}, {2, 3}])  # heads 0 and 1 identical, head 2 disjoint
    jac = head_jaccard(sel)
    assert jac.shape == (1, 3, 3)
    torch.testing.assert_close(jac[0], torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))


def test_binary_entropy_in_bits():
    h = binary_entropy(torch.tensor([0.0, 0.5, 1.0, 0.25]))
    expected = [0.0, 1.0, 0.0, -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))]
    assert h.tolist() == pytest.approx(expected)


# ---- head overlap ----------------------------------------------------------------------------


def test_head_overlap_identical_disjoint_and_half():
    rec = recording(sets([{0, 1}, {0, 1}], [{0, 3}, {0, 3}]))
    table = head_overlap(rec)
    assert list(table.columns) == ["layer", "head_a", "head_b", "jaccard"]
    assert table["jaccard"].tolist() == [1.0]

    assert head_overlap(recording(sets([{0, 1}, {2, 3}])))["jaccard"].tolist() == [0.0]
    # {0, 1} vs {1, 2}: one shared channel out of three used.
    assert head_overlap(recording(sets([{0, 1}, {1, 2}])))["jaccard"].tolist() == [
        pytest.approx(1 / 3)
    ]
    # Mean over samples: identical (1) then disjoint (0).
    assert head_overlap(recording(sets([{0, 1}, {0, 1}], [{0, 1}, {2, 3}])))["jaccard"][0] == 0.5


def test_head_overlap_pairs_and_chance():
    rec = recording(sets([{0, 1}, {1, 2}, {0, 1}]), out_channels=3)  # 3 heads
    table = head_overlap(rec, chance=True)
    assert table[["head_a", "head_b"]].values.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert table["jaccard"].tolist() == pytest.approx([1 / 3, 1.0, 1 / 3])
    # Two random 2-subsets of 4 channels share 0, 1, 2 channels with probability 1/6, 4/6, 1/6:
    # E[J] = 4/6 * 1/3 + 1/6 * 1 = 7/18.
    assert table["jaccard_chance"].tolist() == pytest.approx([7 / 18] * 3)


def test_head_overlap_matches_a_live_layer():
    torch.manual_seed(0)
    layer = DGCConv2d(16, 16, 1, heads=4, pruning_rate=0.75)
    layer.inactive_channels = 12
    layer(torch.randn(5, 16, 4, 4))
    rec = Recording({"dgc": layer.last_selection}, {"dgc": info(16, 16, heads=4)})
    table = head_overlap(rec)
    jac = head_jaccard(layer.last_selection).mean(0)
    assert len(table) == 6
    for row in table.itertuples():
        assert row.jaccard == pytest.approx(float(jac[row.head_a, row.head_b]))


# ---- channel usage and input dependence ------------------------------------------------------


def test_channel_usage_overall_and_per_class():
    sel = sets([{0, 1}, {0}], [{0, 2}, {0}], [{1}, {3}], channels=4)
    rec = recording(sel, labels=[7, 7, 3])
    overall = channel_usage(rec)
    assert len(overall) == 2 * 4
    head0 = overall[overall["head"] == 0].set_index("channel")
    assert head0["count"].tolist() == [2, 2, 1, 0]
    assert head0["frequency"].tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0])
    assert (head0["samples"] == 3).all()

    per_class = channel_usage(rec, per_class=True)
    assert list(per_class.columns) == [
        "layer", "head", "channel", "label", "samples", "count", "frequency", "entropy"
    ]
    c7 = per_class[(per_class["label"] == 7) & (per_class["head"] == 0)].set_index("channel")
    assert c7["frequency"].tolist() == [1.0, 0.5, 0.5, 0.0]
    assert c7["entropy"].tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0])
    c3 = per_class[(per_class["label"] == 3) & (per_class["head"] == 1)].set_index("channel")
    assert c3["count"].tolist() == [0, 0, 0, 1] and (c3["samples"] == 1).all()


def test_head_input_dependence_always_never_entropy():
    # Head 0: channel 0 always, channel 1 never, channels 2 and 3 half the time -> entropy
    # (0 + 0 + 1 + 1) / 4 = 0.5 bit; two distinct selections, equally often -> 1 bit.
    # Head 1: the same channels for every sample (a static group).
    sel = sets(
        [{0, 2}, {1, 2}], [{0, 3}, {1, 2}], [{0, 2}, {1, 2}], [{0, 3}, {1, 2}], channels=4
    )
    table = head_input_dependence(recording(sel)).set_index("head")
    assert table.loc[0, ["always", "never", "entropy"]].tolist() == [0.25, 0.25, 0.5]
    assert table.loc[0, "distinct"] == 2 and table.loc[0, "pattern_entropy"] == 1.0
    assert table.loc[0, "mean_kept"] == 2.0
    assert table.loc[1, ["always", "never", "entropy"]].tolist() == [0.5, 0.5, 0.0]
    assert table.loc[1, "distinct"] == 1 and table.loc[1, "pattern_entropy"] == 0.0


# ---- sample similarity -----------------------------------------------------------------------


def test_sample_similarity_tiny_case():
    sel = sets([{0, 1}, {0}], [{0, 1}, {1}], [{2, 3}, {0}], channels=4)
    rec = recording(sel, ids=[10, 11, 12])
    sim = sample_similarity(rec)
    assert list(sim.index) == [10, 11, 12] and list(sim.columns) == [10, 11, 12]
    # Sets of (head, channel): s0 = {00, 01, 10}, s1 = {00, 01, 11}, s2 = {02, 03, 10}.
    expected = np.array([[1, 2 / 4, 1 / 5], [2 / 4, 1, 0], [1 / 5, 0, 1]], dtype=np.float32)
    np.testing.assert_allclose(sim.values, expected, rtol=1e-6)
    # Head 1 only: s0 = s2 = {0}, s1 = {1}.
    np.testing.assert_allclose(
        sample_similarity(rec, heads=[1]).values, [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    )
    sub = sample_similarity(rec, rows=rec.where(ids=[10, 12]))
    assert list(sub.index) == [10, 12] and sub.loc[10, 12] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="rows="):
        sample_similarity(rec, max_samples=2)


# ---- realized MACs ---------------------------------------------------------------------------


def test_realized_macs_by_hand():
    # DGC 8 -> 8, 3x3, padding 1, 2 heads, hidden 1, xi = 0.5, k = 4, input 4x4 (macs.py):
    # ReLU 8*16 + pool 8*16 = 256; saliency per head 8*1 + 1 + 1*8 + 3*8 = 41 -> 82; fixed 338.
    # One kept channel of one head: (8/2) * 9 * 16 = 576.
    # Paper: 338 + 2 heads * 8 channels * 576 * 0.5 = 338 + 4608 = 4946.
    sel = torch.zeros(2, 2, 8, dtype=torch.bool)
    sel[0, 0, :4] = sel[0, 1, :3] = True  # 7 channels -> 338 + 7 * 576 = 4370
    sel[1, 0, :2] = sel[1, 1, 4:] = True  # 6 channels -> 338 + 6 * 576 = 3794
    layer_info = info(8, 8, heads=2, kernel_size=(3, 3), padding=(1, 1), hidden=1,
                      pruning_rate=0.5, inactive_channels=4, input_hw=(4, 4))
    rec = Recording({"a": sel, "b": sel}, {"a": layer_info, "b": layer_info},
                    labels=[1, -1], ids=[5, 6])

    per_layer = realized_macs(rec, per_layer=True)
    assert list(per_layer.columns) == ["id", "label", "layer", "realized", "k_based", "paper"]
    assert per_layer["id"].tolist() == [5, 5, 6, 6]
    assert per_layer["layer"].tolist() == ["a", "b", "a", "b"]
    assert per_layer["realized"].tolist() == [4370, 4370, 3794, 3794]
    assert (per_layer["paper"] == 4946).all() and (per_layer["k_based"] == 4946).all()
    assert (per_layer["realized"] <= per_layer["paper"]).all()

    summary = realized_macs(rec)
    assert list(summary.columns) == ["id", "label", "realized", "k_based", "paper", "ratio"]
    assert summary["label"].tolist() == [1, -1]
    assert summary["realized"].tolist() == [2 * 4370, 2 * 3794]
    assert summary["paper"].tolist() == [2 * 4946] * 2
    assert summary["ratio"].tolist() == pytest.approx([4370 / 4946, 3794 / 4946])


def test_realized_macs_match_dgc_layer_macs_on_a_live_layer():
    torch.manual_seed(0)
    layer = DGCConv2d(16, 8, 3, stride=2, padding=1, heads=4, pruning_rate=0.75)
    layer.inactive_channels = 12
    layer(torch.randn(3, 16, 6, 6))
    layer_info = info(16, 8, heads=4, kernel_size=layer.kernel_size, padding=layer.padding,
                      hidden=layer.hidden, pruning_rate=0.75, inactive_channels=12,
                      input_hw=(6, 6))
    layer_info["stride"] = layer.stride
    rec = Recording({"dgc": layer.last_selection}, {"dgc": layer_info})
    table = realized_macs(rec, per_layer=True)
    expected = dgc_layer_macs(layer, (6, 6), "realized")  # from layer.last_selection
    assert table["realized"].tolist() == expected.tolist()
    assert (table["paper"] == dgc_layer_macs(layer, (6, 6), "paper")).all()
    # With k at its final value, no image costs more than the paper's count.
    assert (table["realized"] <= table["k_based"]).all()
    assert (table["k_based"] == table["paper"]).all()


@pytest.mark.parametrize("call", [channel_usage, head_overlap, head_input_dependence,
                                  sample_similarity, realized_macs])
def test_a_recording_of_the_wrong_type_is_a_type_error(call):
    with pytest.raises(TypeError, match="recording must be a dgclab Recording .*, got dict"):
        call({"l": torch.zeros(2, 1, 4, dtype=torch.bool)})


def test_tensor_functions_refuse_other_types():
    with pytest.raises(TypeError, match="a must be a Tensor, got list"):
        jaccard_similarity([[True, False]])
    with pytest.raises(TypeError, match="b must be a Tensor, got ndarray"):
        jaccard_similarity(torch.ones(1, 2, dtype=torch.bool), np.ones((1, 2), bool))
    with pytest.raises(TypeError, match="selection must be a Tensor, got ndarray"):
        head_jaccard(np.ones((1, 2, 3), bool))
    with pytest.raises(TypeError, match="p must be a Tensor, got float"):
        binary_entropy(0.5)


def test_unknown_layer_is_a_value_error():
    rec = recording(sets([{0}, {1}]))
    with pytest.raises(ValueError, match="nope"):
        head_overlap(rec, layers=["nope"])
    assert isinstance(channel_usage(rec, layers="l"), pd.DataFrame)
