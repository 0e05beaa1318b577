"""dgclab.viz.widgets: explorers driven as a user would, by setting their controls' values.

Outside a kernel ``interactive_output`` still calls the update on every change, but an
``Output`` captures nothing; the explorers keep ``last_figure`` for these tests, and a test with
a real kernel (nbclient) checks what the ``Output`` receives there.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from IPython.display import Image  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import dgclab.viz.widgets as widgets_module  # noqa: E402
from dgclab.data import load_dataset  # noqa: E402
from dgclab.layers import set_pruning_progress  # noqa: E402
from dgclab.models.resnet_cifar import resnet_cifar  # noqa: E402
from dgclab.record import Recorder, Recording, save_recording  # noqa: E402
from dgclab.viz import diversity_explorer, epoch_explorer, image_explorer  # noqa: E402
from dgclab.viz.widgets import dataset_labels  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    _, test, info = load_dataset("synthetic", subset=40)
    return test, info


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    set_pruning_progress(model, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def snapshots(model, data):
    """Three 'epochs': the test set recorded at three points of the pruning schedule."""
    test, _ = data
    x = torch.stack([test[i][0] for i in range(len(test))])
    recordings = {}
    for epoch, progress in ((1, 0.2), (2, 0.5), (3, 1.0)):
        set_pruning_progress(model, progress)
        with Recorder(model) as rec, torch.no_grad():
            rec.tag(labels=test.labels)
            model(x)
        recordings[epoch] = rec
    set_pruning_progress(model, 1.0)
    return recordings


def suptitles(fig):
    texts = [fig.get_suptitle()] + [s.get_suptitle() for s in fig.subfigs]
    return " | ".join(texts + [a.get_title() for a in fig.axes])


def test_image_explorer_redraws_on_each_control(model, data):
    test, info = data
    explorer = image_explorer(model, test, classes=info.classes, steps=8)
    assert explorer.draws == 1 and isinstance(explorer.default_figure, Figure)
    assert explorer.last_figure is explorer.default_figure
    assert explorer.output.layout.height == "760px"
    assert explorer.controls["image"].continuous_update is False
    assert "layer3.0.downsample.0" in suptitles(explorer.default_figure)  # the default layer

    explorer.controls["image"].value = 3
    assert explorer.draws == 2 and explorer.index == 3
    assert explorer.last_figure is not explorer.default_figure
    assert explorer.output.outputs == ()  # no kernel: the Output captures nothing

    explorer.controls["layer"].value = "layer1.0.conv1"
    assert "layer1.0.conv1" in suptitles(explorer.last_figure)
    all_heads = len(explorer.last_figure.axes)
    explorer.controls["head"].value = 2
    assert len(explorer.last_figure.axes) == all_heads - 3  # one bar panel instead of four
    assert explorer.draws == 4
    assert len(explorer._cache) == 2  # attributions of images 0 and 3, reused for layer / head


def test_image_explorer_class_filter(model, data):
    test, info = data
    explorer = image_explorer(model, test, classes=info.classes, layers=["layer2.0.conv1"],
                              steps=8)
    labels = dataset_labels(test)
    cls = int(labels[5])
    members = np.flatnonzero(labels == cls)
    slider = explorer.controls["image"]
    slider.value = 7
    draws = explorer.draws
    explorer.controls["cls"].value = cls
    assert slider.max == len(members) - 1 and slider.value == 0
    assert explorer.draws == draws + 1  # the slider's reset drew nothing of its own
    shown = []
    for position in range(slider.max + 1):
        slider.value = position
        shown.append(explorer.index)
    assert shown == members.tolist()  # exactly the images of that class, in order
    assert info.classes[cls] in explorer.status.value

    explorer.controls["cls"].value = -1  # "any": the whole dataset again
    assert slider.max == len(test) - 1 and explorer.index == 0
    assert explorer.controls["layer"].options == ("layer2.0.conv1",)
    with pytest.raises(ValueError, match="DGC layers"):
        image_explorer(model, test, layers=["fc"])
    with pytest.raises(TypeError, match="model must be an nn.Module, got OrderedDict"):
        image_explorer(model.state_dict(), test)


def test_displays_one_png_per_change_inside_a_kernel(model, snapshots, monkeypatch):
    shown = []
    monkeypatch.setattr(widgets_module, "in_kernel", lambda: True)
    monkeypatch.setattr(widgets_module, "display", shown.append)
    explorer = diversity_explorer(snapshots[3])
    explorer.controls["head"].value = 1
    explorer.controls["head"].value = 1  # no change, no redraw
    assert explorer.draws == 2 and len(shown) == 2
    assert all(isinstance(s, Image) and s.data[:4] == b"\x89PNG" for s in shown)


def test_epoch_explorer(snapshots, data, tmp_path):
    _, info = data
    explorer = epoch_explorer(snapshots, classes=info.classes)
    assert explorer.controls["epoch"].options == (1, 2, 3)
    assert explorer.controls["epoch"].value == 3 and explorer.draws == 1
    assert explorer.controls["epoch"].continuous_update is False
    last = explorer.last_figure.axes[0].images[0].get_array().copy()  # the selection heat map
    explorer.controls["epoch"].value = 1
    assert explorer.last_figure.get_suptitle() == "epoch 1"
    first = explorer.last_figure.axes[0].images[0].get_array()
    assert first.mean() > last.mean()  # earlier in the schedule the heads keep more channels
    explorer.controls["layer"].value = "layer3.0.conv2"
    assert "layer3.0.conv2, head 0" in explorer.last_figure.axes[0].get_title()
    explorer.controls["head"].value = 3
    assert "head 3" in explorer.last_figure.axes[0].get_title()
    assert explorer.draws == 4

    # a list stands for epochs 1, 2, ...; a path is loaded when its epoch is shown
    save_recording(snapshots[1], tmp_path / "e1.npz")
    listed = epoch_explorer([tmp_path / "e1.npz", snapshots[2]])
    assert listed.controls["epoch"].options == (1, 2)
    listed.controls["epoch"].value = 1
    assert isinstance(listed.snapshots[1], Recording)
    with pytest.raises(ValueError, match="empty"):
        epoch_explorer({})
    with pytest.raises(TypeError, match="snapshots must be a dict .*, got Recorder"):
        epoch_explorer(snapshots[1])


def hand_recording():
    """Layer "a": 2 heads, head 0 static, head 1 follows the class; layer "b": 4 heads."""
    n = 30
    labels = torch.arange(n) % 3
    a = torch.zeros(n, 2, 8, dtype=torch.bool)
    a[:, 0, :4] = True
    for i, y in enumerate(labels.tolist()):
        a[i, 1, y:y + 4] = True
    b = torch.rand(n, 4, 16, generator=torch.Generator().manual_seed(0)).argsort(-1) < 8

    def info(c, heads):
        return {"in_channels": c, "out_channels": c, "kernel_size": (3, 3), "stride": (1, 1),
                "padding": (1, 1), "dilation": (1, 1), "heads": heads, "hidden": 2,
                "pruning_rate": 0.5, "inactive_channels": c // 2, "input_hw": (8, 8)}

    return Recording({"a": a, "b": b}, {"a": info(8, 2), "b": info(16, 4)}, labels=labels)


def test_diversity_explorer():
    explorer = diversity_explorer(hand_recording(), classes=["x", "y", "z"])
    head = explorer.controls["head"]
    assert [v for _, v in head.options] == [-1, 0, 1]  # "all" and layer a's two heads
    overlap, _, usage = explorer.default_figure.axes[:3]
    assert overlap.images[0].get_array().shape == (2, 2)
    assert usage.images[0].get_array().shape == (2, 8)  # heads x channels

    head.value = 1  # one head: its usage per class
    usage = [a for a in explorer.last_figure.axes if a.images and "class" in a.get_ylabel()][0]
    np.testing.assert_allclose(usage.images[0].get_array(), np.eye(3, 8) + np.eye(3, 8, 1)
                               + np.eye(3, 8, 2) + np.eye(3, 8, 3))  # class y keeps y..y+3

    draws = explorer.draws
    explorer.controls["layer"].value = "b"
    assert explorer.draws == draws + 1  # new head options, one drawing
    assert [v for _, v in head.options] == [-1, 0, 1, 2, 3]
    assert head.value == 1  # the choice survives where the new layer has that head
    assert explorer.last_choice == {"layer": "b", "head": 1}
    head.value = 3
    explorer.controls["layer"].value = "a"
    assert head.value == -1  # layer a has no head 3: back to "all"
    assert explorer.last_choice == {"layer": "a", "head": -1}


@pytest.mark.slow
def test_output_captures_the_figure_in_a_real_kernel():
    """In a Jupyter kernel the Output widget receives exactly one PNG per change (nbclient
    mirrors the front end's capture into the widget state)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import find_kernel_specs

    if "python3" not in find_kernel_specs():
        pytest.skip("no python3 kernel")
    code = [
        "import torch\n"
        "from dgclab.record import Recording\n"
        "from dgclab.viz import diversity_explorer\n"
        "info = dict(in_channels=8, out_channels=8, kernel_size=(1, 1), stride=(1, 1),\n"
        "            padding=(0, 0), dilation=(1, 1), heads=2, hidden=2, pruning_rate=0.5,\n"
        "            inactive_channels=4, input_hw=(4, 4))\n"
        "selections = torch.rand(12, 2, 8, generator=torch.Generator().manual_seed(0)) < 0.5\n"
        "recording = Recording({'a': selections}, {'a': info}, labels=torch.arange(12) % 3)\n"
        "explorer = diversity_explorer(recording)\n"
        "explorer",
        "explorer.controls['head'].value = 1\nexplorer.draws",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in code])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            store_widget_state=True).execute()
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "2"
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    outputs = [w["state"].get("outputs", []) for w in state.values()
               if w["model_name"] == "OutputModel"]
    assert len(outputs) == 1
    assert [list(o["data"]) for o in outputs[0]] == [["image/png", "text/plain"]]


def test_threshold_explorer_maps_its_slider_to_the_tables():
    import pandas as pd

    from dgclab.viz import threshold_explorer
    frames = {tau: pd.DataFrame({"label": [0, 1, 1], "correct": [True, False, True],
                                 "pruning_rate": [0.7, 0.8, 0.75],
                                 "macs": [1e6 * (2 - tau), 1.5e6, 1.2e6]})
              for tau in (0.5, 1.0, 2.0)}
    explorer = threshold_explorer(frames, classes=["a", "b"])
    assert explorer.last_choice == {"threshold": 1.0, "by": None}
    assert "threshold 1: accuracy 66.67 %" in explorer.default_figure.axes[0].get_title()
    explorer.controls["threshold"].value = 2.0
    explorer.controls["by"].value = "label"
    assert explorer.last_choice == {"threshold": 2.0, "by": "label"} and explorer.draws == 3
    with pytest.raises(ValueError, match="non-empty mapping"):
        threshold_explorer({})
