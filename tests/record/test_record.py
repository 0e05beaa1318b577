"""Recorder and the .npz format, against the layers' own decisions as the oracle.

The oracle is a forward hook of the test's own that copies every DGC layer's ``last_selection``
(and saliency, output) per forward; the recorder must store exactly that, in order.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import dgclab
from dgclab.layers import DGCConv2d, set_pruning_progress
from dgclab.layers import dgc_layers
from dgclab.models import resnet_cifar
from dgclab.record import (
    LAYER_INFO_KEYS, Recorder, Recording, load_recording, paused, save_recording,
)

from helpers import assert_no_hooks, assert_same_recording


# ---- helpers ---------------------------------------------------------------------------------


def small_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = resnet_cifar(8, width=16, conv="dgc", in_channels=1).eval()
    set_pruning_progress(model, 1.0)
    return model


def tiny_stack(seed: int = 0) -> nn.Module:
    """Two 1x1 DGC layers, 12 -> 16 -> 8 channels: cheap enough for long streams.

    Bit-packed selections per sample: 2 heads x 2 bytes (12 channels, 4 padding bits) and
    4 heads x 2 bytes.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(
        DGCConv2d(12, 16, 1, heads=2, squeeze_rate=2), DGCConv2d(16, 8, 1, heads=4, squeeze_rate=2)
    ).eval()
    set_pruning_progress(model, 1.0)
    return model


class Oracle:
    """Copies of every DGC layer's decision and output, per forward (hooks of the test's own)."""

    def __init__(self, model: nn.Module) -> None:
        self.sel, self.sal, self.out = {}, {}, {}
        self.handles = [
            layer.register_forward_hook(self._hook(name)) for name, layer in dgc_layers(model)
        ]

    def _hook(self, name):
        def hook(module, args, output):
            self.sel.setdefault(name, []).append(module.last_selection.clone())
            self.sal.setdefault(name, []).append(module.last_saliency.clone())
            self.out.setdefault(name, []).append(output.detach().clone())
        return hook

    def cat(self, what: str, name: str) -> torch.Tensor:
        return torch.cat(getattr(self, what)[name])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# ---- what is recorded ------------------------------------------------------------------------


def test_selections_are_the_layers_decisions_batch_by_batch_in_order():
    model = small_resnet()
    oracle = Oracle(model)
    with torch.no_grad(), Recorder(model) as rec:
        assert len(rec) == 0 and rec.layer_names == []
        for b in (5, 3, 7):
            model(torch.randn(b, 1, 28, 28))
            # queries work during the run, on what has been seen so far
            name = rec.layer_names[0]
            assert torch.equal(rec.selections(name), oracle.cat("sel", name))
    oracle.remove()
    assert isinstance(rec, Recording)
    assert rec.layer_names == [n for n, _ in dgc_layers(model)]
    assert len(rec) == 15
    for name, layer in dgc_layers(model):
        sel = rec.selections(name)
        assert sel.dtype == torch.bool and sel.shape == (15, layer.heads, layer.in_channels)
        assert torch.equal(sel, oracle.cat("sel", name))
        np.testing.assert_array_equal(
            rec.packed_selections(name), np.packbits(oracle.cat("sel", name).numpy(), axis=-1)
        )
        info = rec.layer_info(name)
        assert set(info) == set(LAYER_INFO_KEYS)
        assert info["inactive_channels"] == layer.inactive_channels > 0
        assert info["kernel_size"] == layer.kernel_size and info["hidden"] == layer.hidden
    assert rec.layer_info("layer1.0.conv1")["input_hw"] == (28, 28)
    assert rec.layer_info("layer3.0.conv2")["input_hw"] == (7, 7)
    assert rec.layer_info("layer2.0.downsample.0")["stride"] == (2, 2)


def test_ties_are_recorded_as_the_layer_kept_them():
    layer = DGCConv2d(16, 8, 3, padding=1, heads=2, squeeze_rate=4, pruning_rate=0.25).eval()
    layer.inactive_channels = 4
    with torch.no_grad():
        for head in layer.heads_list:  # saliency = fc2 bias: channels 0-7 tie at 1, 8-15 at 2
            head.fc2.weight.zero_()
            head.fc2.bias.copy_(torch.tensor([1.0] * 8 + [2.0] * 8))
    with torch.no_grad(), Recorder(layer) as rec:
        layer(torch.randn(3, 16, 6, 6))
    assert rec.layer_names == [""]  # the model itself is the layer
    sel = rec.selections("")
    expected = torch.tensor([False] * 8 + [True] * 8).expand(3, 2, 16)
    assert torch.equal(sel, expected)  # 8 kept, fewer than C - k = 12
    assert rec.layer_info("")["inactive_channels"] == 4


def test_saliencies_and_activation_maxima():
    model = small_resnet()
    oracle = Oracle(model)
    with torch.no_grad(), Recorder(model, saliency=True, activations=True) as rec:
        for b in (4, 6):
            model(torch.randn(b, 1, 28, 28))
    oracle.remove()
    for name, layer in dgc_layers(model):
        sal = rec.saliencies(name)
        assert sal.dtype == torch.float16 and sal.shape == (10, layer.heads, layer.in_channels)
        assert torch.equal(sal, oracle.cat("sal", name).half())
        amax = rec.activation_max(name)
        assert amax.dtype == torch.float32 and amax.shape == (10, layer.out_channels)
        assert torch.equal(amax, oracle.cat("out", name).amax(dim=(2, 3)))
    plain = Recorder(model)
    with torch.no_grad(), plain:
        model(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="saliency=True"):
        plain.saliencies("layer1.0.conv1")
    with pytest.raises(ValueError, match="activations=True"):
        plain.activation_max("layer1.0.conv1")


# ---- tags ------------------------------------------------------------------------------------


def test_tags_attach_and_where_finds_rows():
    model = tiny_stack()
    x = torch.randn(10, 12, 2, 2)
    with torch.no_grad(), Recorder(model) as rec:
        rec.tag(labels=torch.tensor([0, 1, 2, 3, 4]), ids=torch.arange(10, 15))
        model(x[:5])
        rec.tag(labels=np.array([3, 3, 9, 9, 3]), ids=[15, 16, 17, 18, 19])
        model(x[5:])
    assert rec.ids.tolist() == list(range(10, 20))
    assert rec.labels.tolist() == [0, 1, 2, 3, 4, 3, 3, 9, 9, 3]
    row = rec.where(ids=17)
    assert row.tolist() == [7]
    assert rec.where(labels=3).tolist() == [3, 5, 6, 9]
    assert rec.where(labels=[3, 9], ids=[16, 17, 19]).tolist() == [6, 7, 9]
    # "which channels did image 17 use in layer 1, head 2"
    single = Recorder(model)
    with torch.no_grad(), single:
        model(x[7:8])
    assert torch.equal(rec.selections("1")[row][0, 2], single.selections("1")[0, 2])


def test_ids_count_across_batches_when_untagged():
    model = tiny_stack()
    with torch.no_grad(), Recorder(model) as rec:
        model(torch.randn(3, 12, 1, 1))
        rec.tag(ids=[100, 101])  # a tagged batch still moves the counter
        model(torch.randn(2, 12, 1, 1))
        model(torch.randn(4, 12, 1, 1))  # tags applied to the previous forward only
    assert rec.ids.tolist() == [0, 1, 2, 100, 101, 5, 6, 7, 8]
    assert rec.labels.tolist() == [-1] * 9
    assert rec.samples_seen == 9


def test_tag_lengths_are_checked():
    model = tiny_stack()
    with torch.no_grad(), Recorder(model) as rec:
        model(torch.randn(2, 12, 1, 1))
        rec.tag(labels=torch.arange(3))
        with pytest.raises(ValueError, match=r"3 entries.*4 samples"):
            model(torch.randn(4, 12, 1, 1))
        assert len(rec) == 2 and rec.samples_seen == 2  # the forward was not recorded
        model(torch.randn(4, 12, 1, 1))  # and the tags are gone
        assert len(rec) == 6
        with pytest.raises(ValueError, match="3 labels and 2 ids"):
            rec.tag(labels=[1, 2, 3], ids=[1, 2])
        with pytest.raises(TypeError, match="labels must be integers"):
            rec.tag(labels=torch.tensor([0.5, 1.0]))
        with pytest.raises(ValueError, match="ids must fit in int64"):
            rec.tag(ids=np.array([2**63], dtype=np.uint64))  # would wrap to a negative id
        with pytest.raises(ValueError, match="1-D"):
            rec.tag(ids=torch.zeros(2, 2, dtype=torch.long))


def test_a_failed_forward_takes_its_tags_and_leaves_no_batch_open():
    model = small_resnet()
    with torch.no_grad(), Recorder(model) as rec:
        rec.tag(labels=torch.tensor([3, 7]), ids=torch.tensor([30, 70]))
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3, 28, 28))  # the stem wants 1 channel: fails after the pre-hook
        model(torch.randn(2, 1, 28, 28))  # the tags were for the failed forward, not this one
        assert rec.labels.tolist() == [-1, -1] and rec.ids.tolist() == [0, 1]
        # a forward that fails half way through leaves no batch that a layer called on its own
        # could write into
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3, 28, 28))
        with pytest.raises(RuntimeError, match="ran outside a forward"):
            model.layer2(torch.randn(2, 16, 28, 28))
        rec.tag(labels=[5])
        model(torch.randn(1, 1, 28, 28))
    assert rec.labels.tolist() == [-1, -1, 5] and len(rec) == rec.samples_seen == 3


def test_forwards_inside_paused_are_not_recorded_and_leave_the_tags_pending():
    model = small_resnet()
    with torch.no_grad(), Recorder(model) as rec:
        rec.tag(labels=torch.tensor([3, 7]))
        with paused():
            model(torch.randn(5, 1, 28, 28))
            model.layer2(torch.randn(1, 16, 28, 28))  # a part on its own: no error either
            with paused():  # nests
                model(torch.randn(1, 1, 28, 28))
            model(torch.randn(1, 1, 28, 28))  # still paused after the inner block
        model(torch.randn(2, 1, 28, 28))
    assert len(rec) == rec.samples_seen == 2 and rec.labels.tolist() == [3, 7]


# ---- reservoir -------------------------------------------------------------------------------


def test_reservoir_keeps_m_samples_the_same_for_every_layer_in_order():
    model = tiny_stack()
    torch.manual_seed(1)
    x = torch.randn(500, 12, 2, 2)
    oracle = Oracle(model)
    with torch.no_grad(), Recorder(model, max_samples=40, seed=3) as rec:
        for s in range(0, 500, 7):
            rec.tag(labels=torch.arange(s, min(s + 7, 500)) % 10)
            model(x[s : s + 7])
        assert rec.nbytes <= 40 * (8 + 8 + 8 + 2 * 2 + 4 * 2)  # never more than M rows
    oracle.remove()
    ids = rec.ids
    assert len(rec) == 40 and rec.samples_seen == 500
    assert torch.equal(ids, ids.sort().values) and len(set(ids.tolist())) == 40
    assert torch.equal(rec.labels, ids % 10)
    for name in rec.layer_names:  # row j of every layer is sample ids[j]
        assert torch.equal(rec.selections(name), oracle.cat("sel", name)[ids])
    # fewer samples than M: all kept, in order
    with torch.no_grad(), Recorder(model, max_samples=40) as few:
        model(x[:25])
    assert few.ids.tolist() == list(range(25))


def test_reservoir_is_uniform_and_deterministic():
    model = tiny_stack()
    x = torch.randn(200, 12, 1, 1)

    def kept(seed: int, batch: int = 9) -> list[int]:
        with torch.no_grad(), Recorder(model, max_samples=10, seed=seed) as rec:
            for s in range(0, 200, batch):
                model(x[s : s + batch])
        return rec.ids.tolist()

    assert kept(5) == kept(5) and kept(5) != kept(6)
    runs = np.array([kept(seed) for seed in range(150)])  # (150, 10)
    # Each of 200 samples is kept with probability 10/200: the mean id is (200 - 1) / 2 with a
    # standard error of 57.7 / sqrt(1500) = 1.5; every quarter of the stream holds 1/4 of them.
    assert abs(runs.mean() - 99.5) < 6
    quarters = np.bincount(runs.ravel() // 50, minlength=4) / runs.size
    assert np.all(np.abs(quarters - 0.25) < 0.04), quarters


# ---- hooks -----------------------------------------------------------------------------------


def test_hooks_are_removed_after_exit_and_after_an_exception():
    model = small_resnet()
    x = torch.randn(2, 1, 28, 28)
    rec = Recorder(model)
    with torch.no_grad():
        model(x)  # before: nothing recorded
        with rec:
            assert len(rec._handles) == len(dgc_layers(model)) + 3  # + begin, end, drop
            model(x)
        assert_no_hooks(model)
        model(x)  # after: nothing recorded
        assert len(rec) == 2 and not rec.recording

        with pytest.raises(KeyError):
            with Recorder(model) as failed:
                model(x)
                raise KeyError("boom")
        assert_no_hooks(model)
        assert len(failed) == 2

        with Recorder(model) as rec2:
            with pytest.raises(ValueError, match="expects a 4-D input"):
                model.layer2(torch.randn(2, 16, 28))  # raises inside a layer, before any hook
            with pytest.raises(RuntimeError):
                model(torch.randn(2, 3, 28, 28))  # a forward that fails commits nothing
            model(x)
        assert_no_hooks(model)
        assert len(rec2) == 2


def test_a_layer_run_outside_a_forward_of_the_model_raises():
    model = small_resnet()
    with torch.no_grad(), Recorder(model) as rec:
        with pytest.raises(RuntimeError, match=r"'layer2\.0\.conv1' ran outside a forward"):
            model.layer2(torch.randn(2, 16, 28, 28))
        model(torch.randn(3, 1, 28, 28))
    assert len(rec) == 3
    # a part can be recorded on its own
    with torch.no_grad(), Recorder(model.layer2) as part:
        model.layer2(torch.randn(2, 16, 28, 28))
    assert part.layer_names == ["0.conv1", "0.conv2", "0.downsample.0"] and len(part) == 2


def test_a_layer_run_twice_in_one_forward_raises():
    torch.manual_seed(0)
    layer = DGCConv2d(12, 12, 1, heads=2, squeeze_rate=2)
    model = nn.Sequential(layer, layer).eval()
    with torch.no_grad(), Recorder(model) as rec:
        with pytest.raises(RuntimeError, match="ran twice in one forward"):
            model(torch.randn(2, 12, 1, 1))
    assert len(rec) == 0


def test_reentry_continues_and_nesting_is_refused():
    model = tiny_stack()
    rec = Recorder(model)
    with torch.no_grad():
        with rec:
            model(torch.randn(2, 12, 1, 1))
            with pytest.raises(RuntimeError, match="already recording"):
                rec.__enter__()
        with rec:
            model(torch.randn(3, 12, 1, 1))
    assert len(rec) == 5 and rec.ids.tolist() == [0, 1, 2, 3, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="no grouping layer"):
        Recorder(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="model must be a Module, got str"):
        Recorder("resnet8")
    with pytest.raises(ValueError, match="max_samples=0"):
        Recorder(tiny_stack(), max_samples=0)
    with pytest.raises(TypeError, match="max_samples=2.5"):
        Recorder(tiny_stack(), max_samples=2.5)
    with pytest.raises(TypeError, match="saliency='no'"):
        Recorder(tiny_stack(), saliency="no")  # a non-empty string would mean True
    with pytest.raises(TypeError, match="activations=1"):
        Recorder(tiny_stack(), activations=1)


def test_a_change_of_k_during_recording_warns_once():
    model = tiny_stack()
    with torch.no_grad(), Recorder(model) as rec:
        model(torch.randn(2, 12, 1, 1))
        set_pruning_progress(model, 0.5)
        with pytest.warns(UserWarning, match="layer_info keeps the first"):
            model(torch.randn(2, 12, 1, 1))
    assert rec.layer_info("0")["inactive_channels"] == 9


# ---- memory ----------------------------------------------------------------------------------


def test_70000_fashion_mnist_images_through_resnet20_fit_in_200_mb():
    torch.manual_seed(0)
    model = resnet_cifar(20, width=16, conv="dgc", in_channels=1).eval()
    set_pruning_progress(model, 1.0)
    with torch.no_grad(), Recorder(model) as rec:
        for _ in range(2):
            model(torch.randn(64, 1, 28, 28))
    assert len(rec.layer_names) == 20
    per_sample = rec.nbytes / len(rec)  # exact after exit: 1 bit per head and channel + 16
    infos = [rec.layer_info(name) for name in rec.layer_names]
    bits = sum(i["heads"] * -(-i["in_channels"] // 8) * 8 for i in infos)
    assert per_sample == bits / 8 + 16  # + labels and ids
    # while recording, the arrays keep up to as many rows again as room for more
    assert 2 * per_sample * 70_000 < 200e6


def test_held_bytes_grow_by_doubling_and_are_trimmed_on_exit():
    model = tiny_stack()
    x = torch.randn(997, 12, 1, 1)
    with torch.no_grad(), Recorder(model) as rec:
        for _ in range(30):
            model(x)
        exact = len(rec) * (8 + 8 + 2 * 2 + 4 * 2)  # labels, ids, selections of 2 layers
        assert exact < rec.nbytes <= 2 * exact
    assert rec.nbytes == exact


# ---- a Recording built by hand ----------------------------------------------------------------


def hand_info(**changes) -> dict:
    info = {"in_channels": 12, "out_channels": 8, "kernel_size": (3, 3), "stride": (1, 1),
            "padding": (1, 1), "dilation": (1, 1), "heads": 2, "hidden": 3,
            "pruning_rate": 0.5, "inactive_channels": 6, "input_hw": (5, 5)}
    return info | changes


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"info": hand_info(stride=(0, 1))}, ValueError, r"layer_info\['l'\].*stride.*\(0, 1\)"),
        ({"info": hand_info(padding=(-1, 0))}, ValueError, "padding"),
        ({"info": hand_info(input_hw=(1, 1), padding=(0, 0))}, ValueError, "too small"),
        ({"info": hand_info(heads=3)}, ValueError, "heads must divide out_channels"),
        ({"info": hand_info(pruning_rate=float("nan"))}, ValueError, "pruning_rate"),
        ({"info": hand_info(pruning_rate=0.99)}, ValueError, "would drop all"),
        ({"info": hand_info(inactive_channels=12)}, ValueError, "inactive_channels"),
        ({"info": hand_info(stride="1")}, TypeError, "stride"),
        ({"info": hand_info(hidden=3.0)}, TypeError, "hidden"),
        ({"info": hand_info(extra=1)}, ValueError, r"unknown keys \['extra'\]"),
        ({"sel": torch.zeros(4, 3, 12, dtype=torch.bool)}, ValueError, "heads"),
        ({"sel": np.full((4, 2, 2), 255, np.uint8)}, ValueError, "padding"),
        ({"labels": [0.5, 1, 2, 3]}, TypeError, "labels must be integers"),
        ({"labels": torch.zeros(2, 2, dtype=torch.long)}, ValueError, "labels"),
        ({"saliencies": {"l": torch.zeros(4, 2, 11)}}, ValueError, "saliencies"),
        ({"saliencies": {"other": torch.zeros(4, 2, 12)}}, ValueError, "other"),
        ({"activation_max": {"l": torch.zeros(4, 12)}}, ValueError, "activation_max"),
    ],
)
def test_a_recording_is_refused_what_its_file_could_not_hold(kwargs, error, message):
    sel = kwargs.pop("sel", torch.zeros(4, 2, 12, dtype=torch.bool))
    info = kwargs.pop("info", hand_info())
    with pytest.raises(error, match=message):
        Recording({"l": sel}, {"l": info}, **kwargs)


def test_a_hand_built_recording_round_trips_exactly(tmp_path: Path):
    # lists where the recorder has tuples, numpy ints, an int rate: all read back the same
    info = hand_info(kernel_size=[3, 3], heads=np.int64(2), pruning_rate=0)
    info["inactive_channels"] = 0
    sel = torch.rand(4, 2, 12, generator=torch.Generator().manual_seed(0)) < 0.5
    rec = Recording({"l": sel}, {"l": info}, labels=np.arange(4, dtype=np.int32))
    assert rec.layer_info("l")["kernel_size"] == (3, 3)
    rec.save(tmp_path / "hand.npz")
    assert_same_recording(rec, load_recording(tmp_path / "hand.npz"))


# ---- save / load -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"saliency": True, "activations": True}, {"max_samples": 6}])
def test_save_load_round_trip_exactly(tmp_path: Path, kw):
    model = small_resnet()
    with torch.no_grad(), Recorder(model, **kw) as rec:
        for s in range(0, 20, 5):
            rec.tag(labels=torch.arange(s, s + 5) % 3, ids=torch.arange(s, s + 5) * 11)
            model(torch.randn(5, 1, 28, 28))
    path = tmp_path / "run.npz"
    rec.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]  # no .tmp left behind
    loaded = load_recording(path)
    assert type(loaded) is Recording
    assert_same_recording(rec, loaded)
    assert_same_recording(loaded, load_recording(str(path)))
    # and a loaded recording saves to the same thing
    save_recording(loaded, tmp_path / "again.npz")
    assert_same_recording(loaded, dgclab.load_recording(tmp_path / "again.npz"))


def test_save_uses_the_path_as_given_and_handles_an_empty_recording(tmp_path: Path):
    rec = Recorder(tiny_stack())
    rec.save(tmp_path / "empty.rec")
    loaded = load_recording(tmp_path / "empty.rec")
    assert len(loaded) == 0 and loaded.layer_names == []


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = tiny_stack()
    with torch.no_grad(), Recorder(model, saliency=True) as rec:
        model(torch.randn(40, 12, 3, 3))
    path = tmp_path / "good.npz"
    rec.save(path)
    return path


def _rewrite(path: Path, target: Path, change) -> Path:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    with open(target, "wb") as f:
        np.savez(f, **arrays)
    return target


def _set_meta(arrays, edit):
    meta = json.loads(arrays["metadata"].tobytes())
    edit(meta)
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def _set_info(arrays, **changes):
    _set_meta(arrays, lambda m: m["layers"][0]["info"].update(changes))


def test_a_missing_file_raises_file_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_recording(tmp_path / "nothing.npz")


def test_a_truncated_file_raises_value_error_naming_it(saved: Path):
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = saved.with_name(f"cut{cut}.npz")
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.npz"):
            load_recording(bad)


def test_random_bytes_and_a_flipped_byte_raise_value_error(saved: Path):
    bad = saved.with_name("random.npz")
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="random.npz.*not an .npz"):
        load_recording(bad)
    # corrupt the compressed data of the first member (its CRC or zlib stream breaks)
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.infolist()[0]
    local_header = bytes(data[info.header_offset : info.header_offset + 30])
    name_len, extra_len = np.frombuffer(local_header[26:30], "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)  # the member's data
    for i in range(start + 5, start + 25):
        data[i] ^= 0xFF
    flipped = saved.with_name("flipped.npz")
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="flipped.npz"):
        load_recording(flipped)
    npy = saved.with_name("array.npz")
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match="array.npz.*single .npy"):
        load_recording(npy)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("selections_1"), r"missing arrays \['selections_1'\]"),
        (lambda a: a.pop("metadata"), "no 'metadata' array"),
        (lambda a: a.update(extra=np.zeros(1)), r"unexpected arrays \['extra'\]"),
        (lambda a: a.update(labels=np.zeros(41, np.int64)), r"'labels' has shape \(41,\)"),
        (lambda a: a.update(saliencies_0=a["saliencies_0"][:, :1]), "'saliencies_0' has shape"),
        (lambda a: a.update(selections_0=a["selections_0"].astype(np.int16)), "dtype int16"),
        (lambda a: a.update(ids=a["ids"].astype(np.float64)), "'ids' has dtype float64"),
        (lambda a: a.update(selections_0=a["selections_0"] | 1), "padding must be 0"),
        (lambda a: a.update(metadata=np.frombuffer(b"{not json", np.uint8)), "not valid JSON"),
        (lambda a: _set_meta(a, lambda m: m.update(format="other")), "format is 'other'"),
        (lambda a: _set_meta(a, lambda m: m.update(version=2)), "version 2 is newer"),
        (lambda a: _set_meta(a, lambda m: m["layers"][0]["info"].pop("heads")),
         r"lacks \['heads'\]"),
        (lambda a: _set_meta(a, lambda m: m["layers"][1].update(saliencies=False)),
         r"unexpected arrays \['saliencies_1'\]"),
        (lambda a: _set_meta(a, lambda m: m.update(num_samples=39)), "expected"),
        # metadata that the arrays cannot contradict: every field is checked on its own
        (lambda a: _set_info(a, stride=[0, 1]),
         r"layer '0': stride must be >= 1, got stride=\[0, 1\]"),
        (lambda a: _set_info(a, kernel_size=[-1, 1]), r"kernel_size must be >= 1, got .*\[-1, 1\]"),
        (lambda a: _set_info(a, dilation=[1, 0]), r"dilation must be >= 1, got dilation=\[1, 0\]"),
        (lambda a: _set_info(a, padding=[0, -2]), r"padding must be >= 0, got padding=\[0, -2\]"),
        (lambda a: _set_info(a, input_hw=[0, 3]), r"input_hw must be >= 1, got input_hw=\[0, 3\]"),
        (lambda a: _set_info(a, kernel_size=[5, 5]), "too small"),
        (lambda a: _set_info(a, out_channels=15), "heads must divide out_channels"),
        (lambda a: _set_info(a, hidden=-1), "hidden .*-1"),
        (lambda a: _set_info(a, pruning_rate=0.99), "would drop all"),
        (lambda a: _set_info(a, pruning_rate="0.5"), "pruning_rate .*'0.5'"),
        (lambda a: _set_info(a, stride=[1, 1, 1]), r"stride .*\[1, 1, 1\]"),
        (lambda a: _set_info(a, strides=[1, 1]), r"unknown keys \['strides'\]"),
        (lambda a: _set_meta(a, lambda m: m["layers"][0].update(note="x")),
         r"layers\[0\] has unknown keys \['note'\]"),
        (lambda a: _set_meta(a, lambda m: m.update(samples=40)), r"unknown keys \['samples'\]"),
        (lambda a: a.update(metadata=np.frombuffer(
            a["metadata"].tobytes().replace(b'"num_samples": 40', b'"num_samples": 40, '
                                            b'"num_samples": 7'), np.uint8)),
         "'num_samples' twice"),
        (lambda a: a.update(metadata=np.frombuffer(b"[" * 100_000, np.uint8)), "not valid JSON"),
        (lambda a: a.update(metadata=np.frombuffer(b'{"version": 1' + b"0" * 5000 + b"}",
                                                   np.uint8)), "not valid JSON"),
    ],
)
def test_a_damaged_archive_raises_value_error_naming_it_and_the_problem(saved, change, message):
    bad = _rewrite(saved, saved.with_name("damaged.npz"), change)
    with pytest.raises(ValueError, match=message) as err:
        load_recording(bad)
    assert "damaged.npz" in str(err.value)


def test_a_member_that_is_not_an_npy_array_raises_value_error(saved: Path):
    # numpy hands such a member out as bytes: it must not get further than the reader
    bad = saved.with_name("member.npz")
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"not an array" if item.filename == "labels.npy" else data)
    with pytest.raises(ValueError, match=r"member.npz.*'labels' is not an .npy array"):
        load_recording(bad)


def test_a_strided_padded_layer_with_every_array_round_trips(tmp_path: Path):
    # the metadata checks accept what the recorder writes: stride 2, padding, a non-square input
    model = nn.Sequential(DGCConv2d(12, 8, 3, stride=2, padding=1, heads=4, squeeze_rate=2))
    set_pruning_progress(model, 1.0)
    with torch.no_grad(), Recorder(model.eval(), saliency=True, activations=True) as rec:
        model(torch.randn(3, 12, 5, 7))
    rec.save(tmp_path / "now.npz")
    loaded = load_recording(tmp_path / "now.npz")
    assert_same_recording(rec, loaded)
    assert loaded.layer_info("0")["stride"] == (2, 2)
    assert loaded.layer_info("0")["input_hw"] == (5, 7)


def test_a_reservoir_hands_out_copies_that_later_forwards_do_not_change():
    model = tiny_stack()
    with torch.no_grad(), Recorder(model, max_samples=8) as rec:
        model(torch.randn(8, 12, 1, 1))
        before = rec.packed_selections("0")
        kept = before.copy()
        for _ in range(20):
            model(torch.randn(8, 12, 1, 1))
    np.testing.assert_array_equal(before, kept)
    assert rec.ids.max() >= 8  # later samples did replace some


def test_a_file_written_before_layer_kinds_loads_as_dgc(tmp_path):
    """Recordings of the code before the layer protocol have no "kind" in a layer's info."""
    model = resnet_cifar(8, width=8, conv="dgc", in_channels=1).eval()
    set_pruning_progress(model, 1.0)
    with Recorder(model) as rec:
        model(torch.randn(3, 1, 12, 12))
    rec.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as f:
        arrays = dict(f)
    meta = json.loads(arrays["metadata"].tobytes())
    for layer in meta["layers"]:
        assert layer["info"].pop("kind") == "dgc"
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    old = load_recording(tmp_path / "old.npz")
    assert_same_recording(old, rec)
