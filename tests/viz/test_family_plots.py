"""dgclab.viz.family: the family's Pareto plot, the connectivity panels and their collector on a
tiny model of every kind, and the explorer driven as a user would."""

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from IPython.display import Image  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dgclab.analysis import self_group, to_grouped  # noqa: E402
from dgclab.bench.family import SUMMARY_COLUMNS  # noqa: E402
from dgclab.layers import set_progress  # noqa: E402
from dgclab.models import condense  # noqa: E402
from dgclab.models.resnet_cifar import resnet_cifar  # noqa: E402
from dgclab.viz import (  # noqa: E402
    connectivity_layers,
    family_connectivity,
    family_explorer,
    plot_connectivity,
    plot_family_pareto,
)

pytestmark = pytest.mark.usefixtures("one_thread")

POSITION = 3  # layer2.0.conv2 of resnet_cifar(8): 2 * width in, 2 * width out
WIDTH = 8


def summary(**changes) -> pd.DataFrame:
    """Five methods as the family bench writes them: dense and dgc over two seeds, group over
    one, lgc not timed, scc missing."""
    rows = [
        ("dense", 2, 0.92, 0.002, 37e6, 1.5),
        ("group", 1, 0.915, math.nan, 9.6e6, 1.0),
        ("lgc", 1, 0.90, math.nan, 9.9e6, math.nan),
        ("dgc", 2, 0.88, 0.004, 9.9e6, 1.2),
        ("scc", 0, math.nan, math.nan, math.nan, math.nan),
    ]
    frame = pd.DataFrame([dict.fromkeys(SUMMARY_COLUMNS, math.nan) | {
        "method": m, "seeds": s, "acc_mean": a, "acc_std": sd, "paper_macs": macs,
        "realized_macs": macs, "ms_per_image_b64": ms,
        "detail": "missing" if s == 0 else ""} for m, s, a, sd, macs, ms in rows],
        columns=SUMMARY_COLUMNS)
    for column, values in changes.items():
        frame[column] = values
    return frame


def points(ax) -> np.ndarray:
    (scatter,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    return scatter.get_offsets()


# --------------------------------------------------------------------------------------------
# plot_family_pareto
# --------------------------------------------------------------------------------------------


def test_pareto_one_point_per_finished_method_and_missing_named():
    fig = plot_family_pareto(summary())
    assert isinstance(fig, Figure)
    ax, colorbar = fig.axes  # the plot and the latency colour bar
    assert "ms / image" in colorbar.get_ylabel()
    xy = points(ax)
    assert len(xy) == 4  # scc (no finished seed) left out
    np.testing.assert_allclose(xy[:, 1], [92, 91.5, 90, 88])
    np.testing.assert_allclose(xy[:, 0], [37, 9.6, 9.9, 9.9])  # in M MACs
    assert "scc" in ax.get_title() and "left out" in ax.get_title()
    labels = [t.get_text() for t in ax.texts]
    assert labels[0].startswith("dense") and "1.50 ms" in labels[0]
    assert "not timed" in labels[2]  # lgc: NaN latency
    assert "M MACs" in ax.get_xlabel() and ax.get_xscale() == "linear"  # 37 / 9.6 < 8


def test_pareto_error_bars_only_with_several_seeds():
    ax = plot_family_pareto(summary()).axes[0]
    (bars,) = [c for c in ax.collections if not isinstance(c, PathCollection)]
    heights = [np.ptp(seg[:, 1]) for seg in bars.get_segments()]
    np.testing.assert_allclose(heights, [0.4, 0, 0, 0.8], atol=1e-9)  # 2 x std, in %


def test_pareto_front_skips_dominated_methods():
    ax = plot_family_pareto(summary()).axes[0]
    (front,) = [line for line in ax.lines if line.get_linestyle() == "--"]
    # group (cheapest) then dense; lgc and dgc cost more than group for less accuracy
    np.testing.assert_allclose(front.get_xdata(), [9.6, 37])


def test_pareto_log_axis_for_a_wide_range_and_no_colorbar_without_timings():
    frame = summary(paper_macs=[37e6, 1e6, 2e6, 3e6, math.nan],
                    ms_per_image_b64=[math.nan] * 5)
    fig = plot_family_pareto(frame)
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "log"


def test_pareto_refuses_bad_summaries():
    with pytest.raises(ValueError, match="no finished method"):
        plot_family_pareto(summary(seeds=0))
    with pytest.raises(ValueError, match="paper_macs"):
        plot_family_pareto(summary().drop(columns="paper_macs"))
    with pytest.raises(TypeError, match="DataFrame"):
        plot_family_pareto(summary().to_dict())


# --------------------------------------------------------------------------------------------
# The collector, on a tiny model of every kind
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    built = {}
    for kind in ("dense", "group", "lgc", "dgc", "scc"):
        model = resnet_cifar(8, width=WIDTH, in_channels=1, conv=kind)
        set_progress(model, 1.0)  # LGC: every condensing stage; DGC: the final k
        built[kind] = model.eval()
    sg = resnet_cifar(8, width=WIDTH, in_channels=1)
    self_group(sg, groups=4, rate=0.7)
    built["sg-cnn"] = sg.eval()
    return built


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2


def test_positions_line_up_across_kinds(models):
    names = {kind: [n for n, _ in connectivity_layers(m)] for kind, m in models.items()}
    assert all(len(v) == 8 for v in names.values())
    assert names["dense"][0] == "layer1.0.conv1"  # the stem is no position
    assert names["scc"][POSITION] == "layer2.0.conv2.scc"  # SCC's half after the depthwise conv
    assert {v[POSITION] for k, v in names.items() if k != "scc"} == {"layer2.0.conv2"}


def test_connectivity_shapes_and_structure(models, images):
    c = 2 * WIDTH
    panels = family_connectivity(models, POSITION, images[0])
    assert list(panels) == list(models)
    shapes = {k: tuple(v.shape) for k, v in panels.items()}
    assert shapes == {"dense": (1, c), "group": (4, c), "lgc": (4, c), "dgc": (4, c),
                      "scc": (c, c), "sg-cnn": (4, c)}
    assert all(v.dtype == torch.bool for v in panels.values())
    assert panels["dense"].all()
    # static groups: disjoint blocks of C / 4; LGC after its 3 stages: C / 4 each
    assert panels["group"].sum(1).tolist() == [c // 4] * 4
    assert panels["group"].sum(0).tolist() == [1] * c
    assert panels["lgc"].sum(1).tolist() == [c // 4] * 4
    # SCC: every window reads D = C / 4 consecutive channels, wrapping around
    assert panels["scc"].sum(1).tolist() == [c // 4] * c
    first = panels["scc"][0].nonzero().flatten()
    assert (torch.diff(first) == 1).all()


def test_connectivity_agrees_with_the_layers(models, images):
    """Oracles: each layer's own connectivity(), a plain forward's last_selection, the
    SelfGroupedConv2d that to_grouped builds, and the condensed LGC."""
    panels = family_connectivity(models, POSITION, images[0])
    for kind in ("group", "lgc", "scc"):
        layer = connectivity_layers(models[kind])[POSITION][1]
        assert torch.equal(panels[kind], layer.connectivity())
    dgc = models["dgc"]
    with torch.no_grad():
        dgc(images[0][None])
    assert torch.equal(panels["dgc"], dgc.layer2[0].conv2.last_selection[0])
    grouped = to_grouped(models["sg-cnn"])
    assert torch.equal(panels["sg-cnn"], grouped.layer2[0].conv2.connectivity())
    assert torch.equal(family_connectivity({"sg": grouped}, POSITION, images[0])["sg"],
                       panels["sg-cnn"])
    condensed = condense(models["lgc"])
    assert torch.equal(family_connectivity({"lgc": condensed}, POSITION, images[0])["lgc"],
                       panels["lgc"])


def test_only_dgc_changes_with_the_image(models, images):
    per_image = [family_connectivity(models, -2, x) for x in images]  # layer3.0.conv2
    for kind in models:
        same = [torch.equal(p[kind], per_image[0][kind]) for p in per_image[1:]]
        assert all(same) == (kind != "dgc"), kind


def test_connectivity_keeps_modes_and_refuses_bad_arguments(models, images):
    dgc = models["dgc"].train()
    try:
        family_connectivity({"dgc": dgc}, 0, images[0])
        assert dgc.training and dgc.layer1[0].bn1.training
    finally:
        dgc.eval()
    with pytest.raises(ValueError, match=r"'dense' \(8 positions\), got 8"):
        family_connectivity(models, 8, images[0])
    with pytest.raises(ValueError, match="image must be"):
        family_connectivity(models, 0, images[:2])
    with pytest.raises(ValueError, match="non-empty mapping"):
        family_connectivity({}, 0, images[0])


# --------------------------------------------------------------------------------------------
# plot_connectivity
# --------------------------------------------------------------------------------------------


def test_plot_connectivity_one_panel_per_method(models, images):
    panels = family_connectivity(models, POSITION, images[0])
    fig = plot_connectivity(panels, ncols=4, title="layer2.0.conv2")
    assert isinstance(fig, Figure) and len(fig.axes) == 6  # the 2 x 4 grid's spare cells gone
    for ax, (kind, mat) in zip(fig.axes, panels.items()):
        assert ax.get_title().startswith(f"{kind}: {mat.shape[0]} × {mat.shape[1]}")
        np.testing.assert_array_equal(ax.images[0].get_array(), mat.numpy().astype(np.uint8))
        assert ax.get_xlim() == (-0.5, 2 * WIDTH - 0.5)
    assert fig.axes[3].get_ylabel() == "heads" and fig.axes[4].get_ylabel() == "windows"
    assert "reads 100%" in fig.axes[0].get_title() and "reads 25%" in fig.axes[1].get_title()


def test_plot_connectivity_same_column_scale_and_into_an_axes():
    fig = Figure(layout="constrained")
    target = fig.add_subplot()
    out = plot_connectivity({"wide": torch.ones(2, 12, dtype=torch.bool),
                             "narrow": np.eye(3, 6, dtype=bool)}, ax=target)
    assert out is fig and target not in fig.axes and len(fig.axes) == 2
    assert fig.axes[1].get_xlim() == (-0.5, 11.5)  # the widest C_in for both
    assert fig.axes[1].get_title() == "narrow: 3 × 6, reads 17%"


def test_plot_connectivity_refuses_bad_panels():
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_connectivity({})
    with pytest.raises(ValueError, match=r"panels\['x'\].*shape \(4,\)"):
        plot_connectivity({"x": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="ncols"):
        plot_connectivity({"x": torch.ones(2, 4)}, ncols=0)


# --------------------------------------------------------------------------------------------
# The explorer
# --------------------------------------------------------------------------------------------


def test_family_explorer_redraws_on_each_control(models, images):
    captions = [f"img{i}" for i in range(len(images))]
    explorer = family_explorer(models, images, captions, layer=POSITION)
    assert explorer.draws == 1 and isinstance(explorer.default_figure, Figure)
    assert isinstance(explorer.default_image, Image)
    fig = explorer.default_figure
    assert fig.get_suptitle() == "layer 3: layer2.0.conv2"
    assert len(fig.axes) == 1 + len(models)  # the image, then one panel per method
    assert fig.axes[0].get_title() == "img0"

    assert family_explorer(models, images, captions, image=4).default_figure.axes[0] \
        .get_title() == "img4"
    explorer.controls["image"].value = 2
    assert explorer.draws == 2 and explorer.last_figure.axes[0].get_title() == "img2"
    explorer.controls["layer"].value = 0
    assert explorer.last_figure.get_suptitle() == "layer 0: layer1.0.conv1"
    assert explorer.last_figure.axes[1].get_title().startswith(f"dense: 1 × {WIDTH}")


def test_family_explorer_refuses_bad_arguments(models, images):
    with pytest.raises(ValueError, match="captions"):
        family_explorer(models, images, ["one"])
    with pytest.raises(ValueError, match="layer must be"):
        family_explorer(models, images, layer=8)
    with pytest.raises(ValueError, match="image must be"):
        family_explorer(models, images, image=len(images))
    with pytest.raises(ValueError, match="images is empty"):
        family_explorer(models, [])
    with pytest.raises(TypeError, match="layer must be an int, got layer='0'"):
        family_explorer(models, images, layer="0")
