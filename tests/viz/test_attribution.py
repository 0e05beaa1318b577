"""dgclab.viz.attribution: Captum on a DGC ResNet, the heads' selection of one image, the figure."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dgclab.layers import dgc_layers, set_pruning_progress  # noqa: E402
from dgclab.models.resnet_cifar import resnet_cifar  # noqa: E402
from dgclab.viz import (  # noqa: E402
    image_attributions,
    image_selection,
    plot_image_explanation,
    top_channel_maps,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
    set_pruning_progress(model, 1.0)  # the final k: every head drops 3/4 of its channels
    with torch.no_grad():  # BN running statistics that are not the identity
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    return model.train()


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_attribution_shapes_and_mode_restored(model, image):
    attr = image_attributions(model, image)
    assert attr["gradcam"].shape == (28, 28)
    assert attr["integrated_gradients"].shape == (1, 28, 28)
    assert (attr["gradcam"] >= 0).all()  # ReLU'd Grad-CAM
    assert attr["gradcam_layer"] == dgc_layers(model)[-1][0]
    with torch.no_grad():
        assert attr["prediction"] == int(model.eval()(image[None]).argmax())
    model.train()
    assert attr["target"] == attr["prediction"]
    assert model.training  # the eval mode of the attribution was undone

    other = (attr["prediction"] + 1) % 10
    again = image_attributions(model, image[None], target=other, layer="layer2.0.conv2", steps=8)
    assert again["target"] == other and again["gradcam_layer"] == "layer2.0.conv2"
    assert again["gradcam"].shape == (28, 28)


@pytest.mark.parametrize("progress", [0.0, 1.0])
def test_integrated_gradients_complete_up_to_the_selection_jumps(model, image, progress):
    """sum(IG) = f(x) - f(0) - (the jumps of f where a head's top-k selection changes).

    The jumps are measured directly: f on 1025 points of the path, summing the steps of f over
    the intervals where some DGC layer's selection changed. At k = 0 nothing is dropped, there
    is no jump, and IG is complete as in any ReLU network.
    """
    set_pruning_progress(model, progress)
    try:
        attr = image_attributions(model, image, steps=128)
        target = attr["target"]
        alphas = torch.linspace(0, 1, 1025 if progress else 129)  # k = 0: no jump to find
        with torch.no_grad():
            f = model.eval()(alphas.view(-1, 1, 1, 1) * image)[:, target]  # (1025,)
            switched = torch.zeros(len(alphas) - 1, dtype=torch.bool)
            for _, layer in dgc_layers(model):
                sel = layer.last_selection  # (1025, heads, C)
                switched |= (sel[1:] != sel[:-1]).flatten(1).any(1)
    finally:
        set_pruning_progress(model, 1.0)
        model.train()
    gap = float(f[-1] - f[0])
    jumps = float((f[1:] - f[:-1])[switched].sum())
    total = float(attr["integrated_gradients"].sum())
    scale = float(f.abs().max())  # float32 logits: compare to their size
    delta = attr["convergence_delta"]
    assert total - gap == pytest.approx(delta, abs=1e-4 + 1e-5 * scale)  # Captum's delta
    assert (progress == 0.0) == (not switched.any())
    assert total == pytest.approx(gap - jumps, abs=1e-3 + 0.02 * abs(gap))
    if progress == 1.0:  # the jumps are no rounding error: they explain the delta
        assert abs(total - (gap - jumps)) < 0.25 * abs(delta)


def test_image_selection_is_the_layers_own_decision(model):
    """One image alone selects what the same image selected inside a batch (eval mode)."""
    batch = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        model(batch)
    in_batch = {name: (layer.last_saliency[2].clone(), layer.last_selection[2].clone())
                for name, layer in dgc_layers(model)}
    model.train()
    alone = image_selection(model, batch[2])
    assert list(alone) == [name for name, _ in dgc_layers(model)]
    assert model.training
    for name, (saliency, selection) in in_batch.items():
        assert alone[name]["selection"].dtype == torch.bool
        assert torch.equal(alone[name]["selection"], selection)
        torch.testing.assert_close(alone[name]["saliency"], saliency, rtol=1e-4, atol=1e-5)
    # and it reads the layers' state, it does not recompute it
    layer = dict(dgc_layers(model))["layer1.0.conv1"]
    assert torch.equal(alone["layer1.0.conv1"]["selection"], layer.last_selection[0])


def test_top_channel_maps_are_the_bn_relu_input(model, image):
    name = "layer2.0.conv2"
    layer = dict(dgc_layers(model))[name]
    caught = {}
    handle = layer.register_forward_pre_hook(lambda m, args: caught.update(x=args[0].clone()))
    try:
        top = top_channel_maps(model, image, name, k=5)
    finally:
        handle.remove()
    model.eval()
    with torch.no_grad():
        expected = torch.relu(layer.norm(caught["x"]))[0]  # (C, H, W), the layer's BN-ReLU
    model.train()
    mean_saliency = layer.last_saliency[0].mean(0)
    assert top["maps"].shape == (5, *expected.shape[-2:])
    assert torch.equal(top["channels"], mean_saliency.argsort(descending=True, stable=True)[:5])
    torch.testing.assert_close(top["maps"], expected[top["channels"]])
    torch.testing.assert_close(top["saliency"], mean_saliency[top["channels"]])
    assert torch.equal(top["kept"], layer.last_selection[0][:, top["channels"]].T)

    by_head = top_channel_maps(model, image, layer, k=100, head=2)
    assert len(by_head["channels"]) == layer.in_channels  # k is clipped to C_in
    assert torch.equal(by_head["saliency"], by_head["saliency"].sort(descending=True).values)
    with pytest.raises(ValueError, match="head=4"):
        top_channel_maps(model, image, name, head=4)
    with pytest.raises(ValueError, match="not a DGC layer.*layer1.0.conv1"):
        top_channel_maps(model, image, "fc")


def test_plot_image_explanation(model, image):
    heads = dict(dgc_layers(model))["layer1.0.conv1"].heads
    fig = plot_image_explanation(model, image, "layer1.0.conv1", classes=[f"c{i}" for i in
                                                                          range(10)], label=3, k=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 + heads + 4  # image, Grad-CAM, IG; one bar panel per head; maps
    titles = " | ".join(a.get_title() for a in fig.axes)
    assert "label c3" in titles and "Grad-CAM" in titles and "Integrated Gradients" in titles
    assert sum(len(a.patches) for a in fig.axes) >= heads * 8  # 8 channel bars per head

    attr = image_attributions(model, image)
    one_head = plot_image_explanation(model, image, head=1, k=3, attributions=attr)
    assert len(one_head.axes) == 3 + 1 + 3
    assert "head 1" in " | ".join(a.get_title(loc="left") for a in one_head.axes)


def test_bad_inputs(model, image):
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        image_attributions(model, torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="target"):
        image_attributions(model, image, target=10)
    with pytest.raises(ValueError, match="steps"):
        image_attributions(model, image, steps=0)
    with pytest.raises(ValueError, match="no DGCConv2d"):
        image_selection(resnet_cifar(8, width=8, in_channels=1), image)


def test_wrong_types_are_type_errors_naming_the_value(model, image):
    with pytest.raises(TypeError, match="image must be a torch.Tensor, got list"):
        image_attributions(model, image.tolist())
    with pytest.raises(TypeError, match=r"steps must be an int, got steps=8.0"):
        image_attributions(model, image, steps=8.0)
    with pytest.raises(TypeError, match="target must be an int, got target='3'"):
        image_attributions(model, image, target="3")
    with pytest.raises(TypeError, match="k must be an int, got k=True"):
        top_channel_maps(model, image, "layer1.0.conv1", k=True)
    with pytest.raises(TypeError, match="head must be an int, got head=1.0"):
        top_channel_maps(model, image, "layer1.0.conv1", head=1.0)


def test_explaining_an_image_inside_a_recording_records_nothing(model, image):
    from dgclab import Recorder

    with Recorder(model) as rec:
        rec.tag(labels=torch.tensor([4, 2]))
        model.eval()(torch.randn(2, 1, 28, 28))
        image_attributions(model, image, steps=4)
        image_selection(model, image)
        top_channel_maps(model, image, "layer3.0.conv2", k=2)
    assert len(rec) == 2 and rec.labels.tolist() == [4, 2]
    model.train()
