"""dgclab.models against the official code's fixtures, the paper's counts, and bad inputs."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torchvision

from dgclab.layers import DGCConv2d, GroupConv2d, dgc_layers
from dgclab.models import (
    Conversion,
    convert,
    dydensenet,
    dydensenet74,
    dydensenet86,
    dyresnet18,
    load_official,
    resnet8,
    resnet14,
    resnet20,
    resnet_cifar,
)

from helpers import needs_compiler


def shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def densenet86():
    torch.manual_seed(0)
    return dydensenet86(num_classes=10)


# ---- official fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_fixture(fixtures_dir):
    return torch.load(fixtures_dir / "official_dydensenet_small.pt", weights_only=True)


def small_model(config: dict) -> nn.Module:
    """Our DyDenseNet from the official code's config names."""
    return dydensenet(
        config["stages"],
        config["growth"],
        bottleneck=config["bottleneck"],
        group_3x3=config["group_3x3"],
        heads=config["heads"],
        pruning_rate=config["pruning_rate"],
        squeeze_rate=config["squeeze_rate"],
        num_classes=config["num_classes"],
        data="cifar" if config["data"].startswith("cifar") else "imagenet",
    )


@pytest.mark.parametrize("execution", ["mask", "gather"])
def test_small_dydensenet_reproduces_official_logits(small_fixture, execution):
    model = load_official(small_model(small_fixture["config"]), small_fixture["checkpoint"])
    model.eval()
    layers = dgc_layers(model)
    assert len(layers) == 6
    assert all(layer.inactive_channels > 0 for _, layer in layers)  # k came with the checkpoint
    for _, layer in layers:
        layer.execution = execution
    with torch.no_grad():
        logits = model(small_fixture["input"])
    torch.testing.assert_close(logits, small_fixture["logits"], atol=1e-4, rtol=0)


@needs_compiler
def test_dydensenet_3x3_group_convs_take_the_kernel_in_inference(small_fixture):
    from dgclab.layers import KernelConv2d, cpu_kernel
    from dgclab.layers.group import kernel_pays

    assert cpu_kernel.load()
    model = load_official(small_model(small_fixture["config"]), small_fixture["checkpoint"]).eval()
    convs = [m for n, m in model.named_modules() if n.endswith(".conv_2.conv")]
    assert convs and all(type(m) is KernelConv2d and m.groups > 1 for m in convs)
    with torch.no_grad(), torch.autograd.profiler.profile() as prof:
        logits = model(small_fixture["input"])
    calls = sum(e.count for e in prof.key_averages() if e.key == "dgclab::cluster_conv2d")
    batch = len(small_fixture["input"])
    assert calls == sum(kernel_pays(m.weight.shape, m.groups, batch) for m in convs) > 0
    with torch.no_grad(), cpu_kernel.use(False):
        torch.testing.assert_close(logits, model(small_fixture["input"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, small_fixture["logits"], atol=1e-4, rtol=0)


def test_load_official_from_path_and_bare_state_dict(small_fixture, tmp_path):
    config, checkpoint = small_fixture["config"], small_fixture["checkpoint"]
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    from_path = load_official(small_model(config), path).eval()

    bare = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    from_bare = load_official(small_model(config), bare).eval()
    with torch.no_grad():
        for model in (from_path, from_bare):
            torch.testing.assert_close(
                model(small_fixture["input"]), small_fixture["logits"], atol=1e-4, rtol=0
            )


def test_load_official_rejects_missing_unexpected_and_misshapen_keys(small_fixture):
    config = small_fixture["config"]
    released = small_fixture["checkpoint"]["state_dict"]
    state = {k.removeprefix("module."): v for k, v in released.items()}

    missing = dict(state)
    del missing["classifier.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys: classifier\.bias"):
        load_official(small_model(config), missing)

    extra = dict(state, **{"features.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 unexpected keys: features\.extra\.weight"):
        load_official(small_model(config), extra)

    misshapen = dict(state, **{"classifier.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"classifier\.bias: checkpoint \(7,\) vs model \(10,\)"):
        load_official(small_model(config), misshapen)


def test_load_official_names_the_file_it_cannot_read(small_fixture, tmp_path):
    config, checkpoint = small_fixture["config"], small_fixture["checkpoint"]
    good = tmp_path / "good.pth.tar"
    torch.save(checkpoint, good)
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    empty = tmp_path / "empty.pth.tar"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(ValueError, match=rf"{path.name}.*not a readable PyTorch checkpoint"):
            load_official(small_model(config), path)
    with pytest.raises(FileNotFoundError, match="missing.pth.tar"):
        load_official(small_model(config), tmp_path / "missing.pth.tar")
    with pytest.raises(IsADirectoryError, match=tmp_path.name):
        load_official(small_model(config), tmp_path)


def test_load_official_names_what_the_file_holds(small_fixture, tmp_path):
    config, checkpoint = small_fixture["config"], small_fixture["checkpoint"]
    no_state = tmp_path / "no_state.pth.tar"
    torch.save({"epoch": 3, "best_prec1": 95.0}, no_state)
    with pytest.raises(ValueError, match=r"no_state.pth.tar holds no state dict.*epoch"):
        load_official(small_model(config), no_state)
    not_dict = tmp_path / "list.pth.tar"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(ValueError, match=r"list.pth.tar holds a list"):
        load_official(small_model(config), not_dict)
    wrong_keys = tmp_path / "wrong_keys.pth.tar"
    torch.save({"state_dict": {"module.x": torch.zeros(1)}}, wrong_keys)
    with pytest.raises(ValueError, match=r"wrong_keys.pth.tar does not match DyDenseNet.*missing"):
        load_official(small_model(config), wrong_keys)
    with pytest.raises(TypeError, match=r"model must be a Module, got str"):
        load_official("model", checkpoint)


@pytest.mark.parametrize("k", [16.0, -1.0, 2.5, float("nan")])
def test_load_official_refuses_a_bad_k_and_loads_nothing(small_fixture, k):
    config, checkpoint = small_fixture["config"], small_fixture["checkpoint"]
    model = small_model(config)
    before = {key: v.clone() for key, v in model.state_dict().items()}
    state = dict(checkpoint["state_dict"])
    key = "features.denseblock_2.denselayer_1.conv_1._inactive_channels"
    c_in = model.get_submodule(key.rsplit(".", 1)[0]).in_channels
    state["module." + key] = torch.tensor([c_in if k == 16.0 else k])
    with pytest.raises(ValueError, match=rf"{key}.*\[0, {c_in}\)"):
        load_official(model, dict(checkpoint, state_dict=state))
    for name, value in model.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[name]), name


def test_single_dgc_layer_reproduces_official_output(fixtures_dir):
    fx = torch.load(fixtures_dir / "official_dgc_layer.pt", weights_only=True)
    c = fx["config"]
    assert c["pruning_rate"] == pytest.approx(1 - c["gate_factor"])
    layer = DGCConv2d(
        c["in_channels"],
        c["out_channels"],
        c["kernel_size"],
        stride=c["stride"],
        padding=c["padding"],
        heads=c["heads"],
        squeeze_rate=c["squeeze_rate"],
        pruning_rate=c["pruning_rate"],
    )
    load_official(layer, fx["state_dict"]).eval()
    with torch.no_grad():
        out = layer(fx["input"])
    torch.testing.assert_close(out, fx["output"], atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.last_lasso, fx["lasso"], atol=1e-5, rtol=0)


def test_dyresnet18_keys_equal_official(fixtures_dir):
    official = json.loads((fixtures_dir / "official_dyresnet18_keys.json").read_text())
    ours = shapes(dyresnet18())
    assert len(ours) == 521
    assert ours == official
    assert list(ours) == list(official)  # same order, too


def test_dydensenet74_keys_equal_official(fixtures_dir):
    official = json.loads((fixtures_dir / "official_dydensenet74_keys.json").read_text())
    ours = shapes(dydensenet74(1000))
    assert ours == official
    assert list(ours) == list(official)


# ---- counts, shapes, init -------------------------------------------------------------------


def test_dydensenet86_counts(densenet86):
    assert sum(p.numel() for p in densenet86.parameters()) == 4_264_810  # SPEC §1.4
    assert len(densenet86.state_dict()) == 1184
    assert len(dgc_layers(densenet86)) == 42


def test_dydensenet86_forward(densenet86):
    assert densenet86(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_dyresnet18_forward():
    model = dyresnet18(num_classes=7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert len(dgc_layers(model)) == 19
    assert all(layer.pruning_rate == 0.55 for _, layer in dgc_layers(model))


@pytest.mark.parametrize("conv", ["dense", "group", "dgc"])
@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_resnet_cifar_forward(conv, in_channels, size):
    model = resnet_cifar(8, conv=conv, in_channels=in_channels, num_classes=10)
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, 10)


def test_resnet_cifar_conv_kinds():
    dense, group, dgc = (resnet_cifar(8, conv=c) for c in ("dense", "group", "dgc"))
    assert not dgc_layers(dense) and not any(isinstance(m, GroupConv2d) for m in dense.modules())
    group_convs = [m for m in group.modules() if isinstance(m, GroupConv2d)]
    assert len(group_convs) == 2 * 3 + 2  # two per block, two shortcut convs
    assert all(m.groups == 4 and m.shuffle for m in group_convs)
    assert len(dgc_layers(dgc)) == 2 * 3 + 2
    for model in (dense, group, dgc):
        assert type(model.conv1) is nn.Conv2d  # the stem stays plain
        # Our ReLUs are not in-place (hooks see clean tensors); only the DGC layers' own are.
        dgc_relus = {id(layer.relu) for _, layer in dgc_layers(model)}
        relus = [m for m in model.modules() if isinstance(m, nn.ReLU) and id(m) not in dgc_relus]
        assert relus and not any(m.inplace for m in relus)


def test_resnet_cifar_depths():
    for ctor, n in ((resnet8, 1), (resnet14, 2), (resnet20, 3)):
        model = ctor(conv="dense")
        assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [n, n, n]
    assert len(resnet_cifar(32).layer3) == 5
    # He et al. 2016 Table 6: ResNet-20 has 0.27M parameters (option A shortcuts; ours are
    # option B, 1x1 conv + BN, which adds about 3k).
    params = sum(p.numel() for p in resnet20().parameters())
    assert 0.27e6 < params < 0.28e6


def test_dydensenet_init(densenet86):
    layer = densenet86.features.denseblock_3.denselayer_14.conv_1  # DGC 768 -> 128, 1x1
    assert (layer.in_channels, layer.out_channels) == (768, 128)
    head = layer.headconv_0
    assert head.conv.weight.shape == (32, 768, 1, 1)
    expected = math.sqrt(2.0 / (1 * 1 * 32))  # the head's own out_channels
    assert head.conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    conv_2 = densenet86.features.denseblock_3.denselayer_14.conv_2.conv  # 3x3, 128 -> 32
    assert conv_2.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 32)), rel=0.05)
    # The saliency MLP keeps DGCHead's init: kaiming fan_in, fc2 bias 1.
    assert head.fc1.weight.std().item() == pytest.approx(math.sqrt(2.0 / 768), rel=0.05)
    for _, dgc in dgc_layers(densenet86):
        for h in dgc.heads_list:
            assert torch.all(h.fc2.bias == 1.0)
        assert torch.all(dgc.norm.weight == 1) and torch.all(dgc.norm.bias == 0)
    assert torch.all(densenet86.classifier.bias == 0)
    assert torch.all(densenet86.bn_last.weight == 1)


def test_dyresnet18_init():
    torch.manual_seed(0)
    model = dyresnet18()
    head = model.layer4[1].conv2.headconv_3  # (128, 512, 3, 3)
    expected = math.sqrt(2.0 / (128 * 9))  # kaiming fan_out with the head's out_channels
    assert head.conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert torch.all(head.fc2.bias == 1.0)
    assert torch.all(model.layer2[0].downsample[1].norm.weight == 1)


# ---- convert --------------------------------------------------------------------------------


def test_convert_torchvision_resnet18_to_dgc():
    torch.manual_seed(0)
    result = convert(torchvision.models.resnet18(weights=None, num_classes=10))
    assert isinstance(result, Conversion)
    model, converted, skipped = result
    assert list(skipped) == ["conv1"]
    assert "divisible" in skipped["conv1"]
    assert len(converted) == 19 and "layer2.0.downsample.0" in converted
    assert all(isinstance(model.get_submodule(name), DGCConv2d) for name in converted)
    assert len(dgc_layers(model)) == 19
    layer = model.layer3[0].conv1
    assert isinstance(layer, DGCConv2d)
    assert (layer.in_channels, layer.out_channels, layer.stride, layer.padding) == (
        128,
        256,
        (2, 2),
        (1, 1),
    )
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    # Converting again touches nothing new: DGC layers are not entered.
    again = convert(model)
    assert again.converted == []
    assert again.skipped["layer1.0.conv1"] == "already a DGCConv2d (4 groups)"


def test_convert_to_group():
    model, converted, skipped = convert(
        torchvision.models.resnet18(weights=None, num_classes=10), to="group", groups=2
    )
    assert list(skipped) == ["conv1"] and "groups=2" in skipped["conv1"]
    assert all(isinstance(model.get_submodule(n), GroupConv2d) for n in converted)
    assert model.layer1[0].conv1.groups == 2 and model.layer1[0].conv1.shuffle
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_convert_skips_with_reasons():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),  # already grouped
        nn.Conv2d(8, 8, 3, padding=1),  # bias
        nn.Conv2d(8, 8, 3, padding="same", bias=False),  # string padding
        nn.Conv2d(8, 8, 1, bias=False),  # 0-wide saliency MLP: 8 // 8 = 1 is fine...
        nn.Conv2d(4, 8, 1, bias=False),  # ...4 // 8 = 0 is not: DGCConv2d refuses it
        nn.Conv2d(8, 8, 1, bias=False),  # named in skip
        nn.Sequential(GroupConv2d(8, 8, 1, groups=4)),  # never entered
    )
    _, converted, skipped = convert(model, skip=["5"])
    assert converted == ["3"]
    assert "groups=2" in skipped["0"]
    assert "bias" in skipped["1"]
    assert "'same'" in skipped["2"]
    assert "0-wide saliency MLP" in skipped["4"]
    assert skipped["5"] == "listed in skip"
    assert "GroupConv2d" in skipped["6.0"]


def test_convert_keeps_shared_convs_shared():
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    model, converted, _ = convert(model, to="group")
    assert converted == ["0", "2"] and model[0] is model[2]


# ---- bad inputs -----------------------------------------------------------------------------


def test_bad_inputs_name_the_value():
    with pytest.raises(TypeError, match="depth must be an int, got depth='8'"):
        resnet_cifar("8")
    with pytest.raises(ValueError, match="depth=7"):
        resnet_cifar(7)
    with pytest.raises(ValueError, match="'foo'"):
        resnet_cifar(8, conv="foo")
    with pytest.raises(ValueError, match="'bar'"):
        convert(nn.Sequential(nn.Conv2d(8, 8, 1)), to="bar")
    with pytest.raises(ValueError, match="'mnist'"):
        dydensenet([2], [8], data="mnist")
    with pytest.raises(ValueError, match=r"stages=\[2, 2\]"):
        dydensenet([2, 2], [8])
    with pytest.raises(ValueError, match="nope"):
        convert(nn.Sequential(nn.Conv2d(8, 8, 1)), skip=["nope"])
    with pytest.raises(TypeError, match="model must be a Module, got OrderedDict"):
        convert(nn.Sequential(nn.Conv2d(8, 8, 1)).state_dict())
    with pytest.raises(TypeError, match="checkpoint dict"):
        load_official(nn.Linear(2, 2), [1, 2])
