"""dgclab.viz: every plot on small hand-made data; artists checked, bad inputs refused."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dgclab.layers import pruning_schedule  # noqa: E402
from dgclab.record import Recording  # noqa: E402
from dgclab.viz import (  # noqa: E402
    plot_accuracy_vs_macs,
    plot_channel_usage,
    plot_dead_filters,
    plot_head_overlap,
    plot_k_schedule,
    plot_learning_curves,
    plot_test_accuracy,
    plot_macs,
    plot_saliency_bars,
    plot_schedule_curve,
    plot_selection_heatmap,
)
from dgclab.viz.style import KEPT  # noqa: E402

N_PER_CLASS, CLASSES = 10, 3


def layer_info(c_in, c_out, heads, k, hw=(8, 8)):
    return {"in_channels": c_in, "out_channels": c_out, "kernel_size": (3, 3), "stride": (1, 1),
            "padding": (1, 1), "dilation": (1, 1), "heads": heads, "hidden": 2,
            "pruning_rate": 0.5, "inactive_channels": k, "input_hw": hw}


@pytest.fixture(scope="module")
def recording() -> Recording:
    """30 images of 3 classes (interleaved), two DGC layers.

    "a" (8 channels, 2 heads, k=4): head 0 always keeps channels 0-3 (static); head 1 keeps
    channels label .. label+3 (decided by the class). "b" (16 channels, 4 heads, k=8): random
    halves.
    """
    n = N_PER_CLASS * CLASSES
    labels = torch.arange(n) % CLASSES
    a = torch.zeros(n, 2, 8, dtype=torch.bool)
    a[:, 0, :4] = True
    for i, y in enumerate(labels.tolist()):
        a[i, 1, y:y + 4] = True
    g = torch.Generator().manual_seed(0)
    b = torch.rand(n, 4, 16, generator=g).argsort(-1) < 8  # (N, heads, C), 8 kept each
    info = {"a": layer_info(8, 8, 2, 4), "b": layer_info(16, 16, 4, 8, (4, 4))}
    return Recording({"a": a, "b": b}, info, labels=labels)


@pytest.fixture
def history() -> pd.DataFrame:
    return pd.DataFrame({
        "epoch": [1, 2, 3], "train_acc": [0.3, 0.6, 0.8], "test_acc": [0.25, 0.5, 0.7],
        "train_loss": [2.0, 1.2, 0.6], "test_loss": [2.1, 1.4, 0.9], "k_frac": [0.1, 0.5, 0.75],
        "dead_filters": [0, 2, 5], "paper_macs": [2e6, 2e6, 2e6],
        "realized_macs": [4e6, 3e6, 2e6],
    })


@pytest.fixture(autouse=True)
def no_global_state():
    """Plots create no pyplot figure and change no rcParams."""
    before = dict(matplotlib.rcParams)
    yield
    assert plt.get_fignums() == []
    assert dict(matplotlib.rcParams) == before
    plt.close("all")


def images(fig):
    return [im for ax in fig.axes for im in ax.images]


def titles(fig):
    return " | ".join(ax.get_title() for ax in fig.axes)


# ---- training history -----------------------------------------------------------------------


def test_learning_curves_two_panels(history):
    fig = plot_learning_curves(history)
    assert isinstance(fig, Figure)
    acc, loss = fig.axes
    assert acc.get_title() == "Accuracy" and loss.get_title() == "Loss"
    assert "%" in acc.get_ylabel() and acc.get_xlabel() == "epoch"
    np.testing.assert_allclose(acc.lines[1].get_ydata(), [25, 50, 70])  # test accuracy, in %
    np.testing.assert_allclose(loss.lines[0].get_ydata(), history["train_loss"])
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["train accuracy",
                                                                     "test accuracy"]


def test_learning_curves_into_ax_uses_a_twin(history):
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_learning_curves(history, ax=ax) is fig
    assert len(fig.axes) == 2  # ax and its twin for the losses
    assert len(ax.lines) == 2 and len(fig.axes[1].lines) == 2


def test_learning_curves_one_epoch(history):
    fig = plot_learning_curves(history.iloc[:1])
    assert len(fig.axes[0].lines[0].get_xdata()) == 1


@pytest.mark.parametrize("bad, match", [
    (lambda h: h.drop(columns="test_loss"), "test_loss"),
    (lambda h: h.iloc[:0], "no rows"),
])
def test_learning_curves_refuses_bad_history(history, bad, match):
    with pytest.raises(ValueError, match=match):
        plot_learning_curves(bad(history))


def test_learning_curves_refuses_a_history_of_another_type(history):
    with pytest.raises(TypeError, match="DataFrame"):
        plot_learning_curves(history.to_dict("list"))


def test_test_accuracy_one_line_per_run(history):
    later = history.assign(test_acc=history.test_acc + 0.1)
    fig = plot_test_accuracy({"dense": history, "dgc": later})
    (ax,) = fig.axes
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [25, 50, 70])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [35, 60, 80])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dense", "dgc"]
    with pytest.raises(TypeError, match="mapping"):
        plot_test_accuracy(history)
    with pytest.raises(ValueError, match="empty"):
        plot_test_accuracy({})
    with pytest.raises(ValueError, match="test_acc"):
        plot_test_accuracy({"x": history.drop(columns="test_acc")})


def test_k_schedule(history):
    fig = plot_k_schedule(history, pruning_rate=0.75)
    ax, twin = fig.axes
    np.testing.assert_allclose(ax.lines[0].get_ydata(), history["k_frac"])
    assert ax.lines[1].get_ydata()[0] == 0.75  # the target line
    np.testing.assert_allclose(twin.lines[0].get_ydata(), [25, 50, 70])
    assert "Pruning schedule" in ax.get_title()
    assert len(plot_k_schedule(history, accuracy=False).axes) == 1
    with pytest.raises(ValueError, match="k_frac"):
        plot_k_schedule(history.drop(columns="k_frac"))
    with pytest.raises(ValueError, match="pruning_rate"):
        plot_k_schedule(history, pruning_rate=1.5)
    with pytest.raises(TypeError, match="pruning_rate must be a real number, got pruning_rate='0.5'"):
        plot_k_schedule(history, pruning_rate="0.5")


def test_schedule_curve_follows_pruning_schedule():
    fig = plot_schedule_curve(128, 0.75)
    ax = fig.axes[0]
    line = ax.lines[0]
    p, k = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert k.max() == 96 and k[0] == 0
    for probe, expected in ((0.1, 2), (0.5, 60), (0.75, 96)):  # SPEC §1.2
        i = np.argmin(np.abs(p - probe))
        assert k[i] == pruning_schedule(float(p[i]), 128, 0.75)
        assert abs(k[i] - expected) <= 1
    assert "C_in = 128" in ax.get_title()
    with pytest.raises(ValueError, match="in_channels"):
        plot_schedule_curve(0)
    with pytest.raises(TypeError, match="in_channels must be an int, got in_channels=16.0"):
        plot_schedule_curve(16.0)
    with pytest.raises(ValueError, match="pruning_rate"):
        plot_schedule_curve(16, 1.0)


def test_dead_filters_over_epochs(history):
    fig = plot_dead_filters(history)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [0, 2, 5])
    assert "over training" in fig.axes[0].get_title()


def test_dead_filters_per_layer():
    table = pd.DataFrame({"layer": ["l1.bn", "l2.bn"], "relu": ["r1", "r2"], "filters": [16, 32],
                          "dead_gamma": [0, 8], "dead_activation": [1, 16]})
    ax = plot_dead_filters(table).axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert widths == [0, 25, 6.25, 50]  # per cent, by gamma then by activation
    assert [t.get_text() for t in ax.get_yticklabels()] == ["l1.bn", "l2.bn"]
    per_filter = pd.DataFrame({"layer": ["x"] * 4, "relu": ["r"] * 4, "filter": range(4),
                               "gamma": [0, 1, 1, 0], "dead_gamma": [True, False, False, True]})
    ax = plot_dead_filters(per_filter).axes[0]
    assert [p.get_width() for p in ax.patches] == [50]
    with pytest.raises(ValueError, match="filter_sparsity table"):
        plot_dead_filters(pd.DataFrame({"a": [1]}))


def test_macs_over_epochs(history):
    ax = plot_macs(history).axes[0]
    paper, realized = ax.lines
    np.testing.assert_allclose(paper.get_ydata(), [2, 2, 2])  # in M MACs
    np.testing.assert_allclose(realized.get_ydata(), [4, 3, 2])
    assert "M MACs" in ax.get_ylabel()


def test_macs_histogram_and_both(recording, history):
    fig = plot_macs(recording=recording)
    ax = fig.axes[0]
    assert len(ax.patches) == 41  # histogram bars
    assert "DGC layers only" in ax.get_title()
    fig = plot_macs(history, recording)
    assert len(fig.axes) == 2
    paper_line = fig.axes[1].lines[-1]
    assert paper_line.get_xdata()[0] == pytest.approx(2.0)  # last epoch's paper count, in M
    assert "whole network" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="history=, recording="):
        plot_macs()


def test_accuracy_vs_macs():
    frame = pd.DataFrame({"name": ["dense", "dgc"], "test_acc": [0.9, 0.88],
                          "paper_macs": [40e6, 12e6], "realized_macs": [np.nan, 13e6],
                          "test_acc_std": [0.01, 0.02]})
    ax = plot_accuracy_vs_macs(frame).axes[0]
    assert [t.get_text() for t in ax.texts] == ["dense", "dgc"]
    assert len(ax.containers) == 3  # errorbars: dense paper, dgc paper, dgc realized
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "paper count", "realized (mean per image)"]
    with pytest.raises(ValueError, match="realized_macs"):
        plot_accuracy_vs_macs(frame.drop(columns="realized_macs"))
    with pytest.raises(ValueError, match="fractions"):
        plot_accuracy_vs_macs(frame.assign(test_acc=[90, 88]))


# ---- recordings ----------------------------------------------------------------------------


def test_selection_heatmap_groups_by_class(recording):
    fig = plot_selection_heatmap(recording, "a", 1, classes=["cat", "dog", "eel"])
    (im,) = images(fig)
    image = im.get_array()
    assert image.shape == (30, 8)
    # grouped by class: head 1 keeps channels label .. label + 3
    assert image[:10, 0].all() and not image[10:, 0].any()
    assert image[20:, 5].all() and not image[:20, 5].any()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "eel"]
    boundaries = [line for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]]
    assert sorted(line.get_ydata()[0] for line in boundaries) == [9.5, 19.5]
    assert "a, head 1" in ax.get_title()


def test_selection_heatmap_static_head_and_cap(recording):
    (im,) = images(plot_selection_heatmap(recording, "a", 0, max_samples=12))
    image = im.get_array()
    assert image.shape == (12, 8)
    assert image[:, :4].all() and not image[:, 4:].any()


@pytest.mark.parametrize("kwargs, match", [
    ({"layer": "nope", "head": 0}, r"layers: \['a', 'b'\]"),
    ({"layer": "a", "head": 2}, "head=2"),
    ({"layer": "a", "head": -1}, "head=-1"),
    ({"layer": "a", "head": 0, "max_samples": 0}, "max_samples"),
])
def test_selection_heatmap_refuses(recording, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_selection_heatmap(recording, **kwargs)


def test_wrong_types_are_type_errors(recording, history):
    with pytest.raises(TypeError, match="expected a dgclab Recording .*, got dict"):
        plot_selection_heatmap({"a": 1}, "a", 0)
    with pytest.raises(TypeError, match="head must be an int, got head=0.0"):
        plot_selection_heatmap(recording, "a", 0.0)
    with pytest.raises(TypeError, match="max_samples must be an int, got max_samples='5'"):
        plot_selection_heatmap(recording, "a", 0, max_samples="5")
    with pytest.raises(TypeError, match="data must be a pandas DataFrame, got list"):
        plot_dead_filters(history.to_dict("records"))
    with pytest.raises(TypeError, match="frame must be a pandas DataFrame, got dict"):
        plot_accuracy_vs_macs({"name": ["dense"]})


def test_channel_usage(recording):
    fig = plot_channel_usage(recording, "a")
    (im,) = images(fig)
    freq = im.get_array()
    assert freq.shape == (2, 8)
    np.testing.assert_allclose(freq[0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(freq[1], [1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3, 0, 0])
    assert len(fig.axes) == 2  # the map and its colorbar


def test_channel_usage_per_class(recording):
    fig = plot_channel_usage(recording, "b", per_class=True, classes={0: "cat"})
    ims = images(fig)
    assert len(ims) == 4 and all(im.get_array().shape == (3, 16) for im in ims)
    assert fig.axes[0].get_yticklabels()[0].get_text() == "cat"
    (im,) = images(plot_channel_usage(recording, "a", per_class=True, head=1))
    np.testing.assert_allclose(im.get_array()[:, 0], [1, 0, 0])  # only class 0 keeps channel 0
    with pytest.raises(ValueError, match="head=4"):
        plot_channel_usage(recording, "b", per_class=True, head=4)
    with pytest.raises(ValueError, match="per_class=True"):
        plot_channel_usage(recording, "b", head=0)
    with pytest.raises(ValueError, match="layers"):
        plot_channel_usage(recording, "c")


def test_head_overlap_matrix(recording):
    fig = plot_head_overlap(recording, "a")
    (im,) = images(fig)
    m = im.get_array()
    assert m.shape == (2, 2)
    np.testing.assert_allclose(np.diag(m), 1)
    # head 0 keeps 0-3, head 1 keeps label..label+3: Jaccard 1, 3/5, 2/6 for labels 0, 1, 2
    np.testing.assert_allclose(m[0, 1], (1 + 3 / 5 + 2 / 6) / 3, rtol=1e-6)
    assert len(fig.axes[0].texts) == 4
    assert "chance" in fig.axes[0].get_title()


def test_head_overlap_per_layer(recording):
    ax = plot_head_overlap(recording).axes[0]
    assert len(ax.patches) == 2  # one bar per layer
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    chance = [line for line in ax.lines if line.get_label().startswith("chance")]
    assert len(chance) == 1
    with pytest.raises(ValueError, match="layers"):
        plot_head_overlap(recording, "zz")


def test_head_overlap_one_head_layers():
    rec = Recording({"x": torch.ones(4, 1, 8, dtype=torch.bool)}, {"x": layer_info(8, 8, 1, 0)})
    ax = plot_head_overlap(rec).axes[0]
    assert "two heads" in ax.texts[0].get_text()


def test_saliency_bars():
    g = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.7, 0.1, 0.2, 0.8], [0.3, 0.3, 0.9, 0.1]])
    kept = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    fig = plot_saliency_bars(g, kept, head_names=["first", "second", "third"])
    assert len(fig.axes) == 3
    for h, ax in enumerate(fig.axes):
        bars = ax.patches
        assert len(bars) == 4
        np.testing.assert_allclose([b.get_height() for b in bars], g[h].numpy(), rtol=1e-6)
        colored = [mcolors.same_color(b.get_facecolor(), KEPT) for b in bars]
        assert colored == kept[h].tolist()
    assert fig.axes[1].get_title(loc="left").startswith("second: kept 2 of 4")
    assert fig.axes[2].get_title(loc="left").startswith("third: kept 1 of 4")
    assert len(plot_saliency_bars(np.arange(5.0), np.arange(5) > 2).axes) == 1  # one head
    with pytest.raises(TypeError, match="saliency must be an array or tensor of numbers, got dict"):
        plot_saliency_bars({"a": 1.0}, np.ones(1, bool))


@pytest.mark.parametrize("sal, sel, names, match", [
    (np.ones((2, 4)), np.ones((2, 5), bool), None, "shape"),
    (np.ones((2, 4)), np.full((2, 4), 2), None, "bool"),
    (np.ones((2, 4)), np.ones((2, 4), bool), ["one"], "head_names"),
    (np.ones((2, 4, 1)), np.ones((2, 4, 1), bool), None, "heads, C"),
])
def test_saliency_bars_refuses(sal, sel, names, match):
    with pytest.raises(ValueError, match=match):
        plot_saliency_bars(sal, sel, head_names=names)


# ---- drawing into a given ax ---------------------------------------------------------------


@pytest.mark.parametrize("draw", [
    lambda ax, rec, h: plot_k_schedule(h, ax=ax),
    lambda ax, rec, h: plot_schedule_curve(32, 0.5, ax=ax),
    lambda ax, rec, h: plot_selection_heatmap(rec, "b", 3, ax=ax),
    lambda ax, rec, h: plot_channel_usage(rec, "b", ax=ax),
    lambda ax, rec, h: plot_channel_usage(rec, "b", ax=ax, per_class=True),
    lambda ax, rec, h: plot_head_overlap(rec, ax=ax),
    lambda ax, rec, h: plot_head_overlap(rec, "b", ax=ax),
    lambda ax, rec, h: plot_dead_filters(h, ax=ax),
    lambda ax, rec, h: plot_macs(h, rec, ax=ax),
    lambda ax, rec, h: plot_saliency_bars(np.ones((2, 3)), np.eye(2, 3, dtype=bool), ax=ax),
    lambda ax, rec, h: plot_accuracy_vs_macs(pd.DataFrame(
        {"name": ["r"], "test_acc": [0.5], "paper_macs": [1e6], "realized_macs": [9e5]}), ax=ax),
])
def test_draws_into_the_given_axes(recording, history, draw):
    fig = Figure(figsize=(12, 4))
    left, right = fig.subplots(1, 2)
    right.set_title("untouched")
    assert draw(left, recording, history) is fig
    assert right in fig.axes and right.get_title() == "untouched"
    assert len(fig.axes) >= 2


def test_dead_filters_per_layer_over_training_from_a_tracker_frame():
    frame = pd.DataFrame({
        "step": [1, 1, 2, 2], "epoch": [1, 1, 1, 1], "layer": ["bn1", "bn2", "bn1", "bn2"],
        "metric": ["dead_gamma"] * 4, "value": [0.0, 0.1, 0.25, 0.5]})
    fig = plot_dead_filters(frame)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["bn1", "bn2"]
    assert list(lines[1].get_ydata()) == [10.0, 50.0]
    with pytest.raises(ValueError, match="dead_gamma"):
        plot_dead_filters(frame.assign(metric="head_jaccard"))


def test_adaptive_compute_plots():
    from dgclab.viz import plot_anytime_curve, plot_macs_per_image
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"label": rng.integers(0, 3, 50), "correct": rng.random(50) > 0.2,
                          "macs": rng.normal(5e6, 4e5, 50)})
    for by in (None, "label", "correct"):
        fig = plot_macs_per_image(frame, by=by, classes=["a", "b", "c"])
        assert fig.axes and "MACs per image (M MACs)" in fig.axes[0].get_xlabel()
    sweep = pd.DataFrame({"rule": ["head-wise"] * 2 + ["threshold"] * 2, "target": [0.5, 0.75] * 2,
                          "accuracy": [0.9, 0.88, 0.91, 0.89], "macs_mean": [6e6, 4e6, 6e6, 4e6],
                          "macs_p10": [6e6, 4e6, 5e6, 3e6], "macs_p90": [6e6, 4e6, 7e6, 5e6]})
    fig = plot_anytime_curve(sweep)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["head-wise", "threshold"]
    with pytest.raises(ValueError, match="by must be one of"):
        plot_macs_per_image(frame, by="layer")
    with pytest.raises(ValueError, match="macs_p90"):
        plot_anytime_curve(sweep.drop(columns="macs_p90"))
    with pytest.raises(TypeError, match="DataFrame"):
        plot_anytime_curve(sweep.to_dict())

    from dgclab.viz import plot_cheapest_and_dearest
    frame["id"], frame["prediction"] = range(50), frame["label"]
    images = [(torch.rand(1, 8, 8), 0)] * 50
    fig = plot_cheapest_and_dearest(frame, images, classes=["a", "b", "c"], n=3)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="n must be"):
        plot_cheapest_and_dearest(frame, images, n=0)
