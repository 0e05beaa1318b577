"""record(): the recording loop in one call, against the hand-written ``with Recorder`` loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from dgclab.layers import set_pruning_progress
from dgclab.models import resnet_cifar
from dgclab.record import Recorder
from dgclab.record.loop import record

from helpers import assert_no_hooks, assert_same_recording


def tiny_model() -> nn.Module:
    """A DGC ResNet-8 of width 8, in train mode, with k > 0 (pruning progress 0.9)."""
    torch.manual_seed(0)
    model = resnet_cifar(8, conv="dgc", in_channels=1, width=8)
    set_pruning_progress(model, 0.9)
    return model


def batches(sizes=(5, 3, 7), seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 1, 28, 28, generator=g), torch.randint(0, 10, (b,), generator=g))
            for b in sizes]


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def by_hand(model: nn.Module, data, **options) -> Recorder:
    """The loop as the notebooks wrote it, eval mode set and reset by hand."""
    was_training = model.training
    model.eval()
    try:
        with Recorder(model, **options) as rec, torch.no_grad():
            for x, y in data:
                rec.tag(labels=y)
                model(x)
    finally:
        model.train(was_training)
    return rec


@pytest.mark.parametrize("options", [
    {},
    {"saliency": True, "activations": True},
    {"max_samples": 6, "seed": 3},
], ids=["selections", "saliency+activations", "reservoir"])
def test_same_as_the_hand_written_loop_bit_for_bit(options):
    model, data = tiny_model(), batches()
    assert model.layer1[0].conv1.inactive_channels > 0
    expected = by_hand(model, data, **options)
    rec = record(model, data, **options)
    assert isinstance(rec, Recorder) and not rec.recording
    assert rec.samples_seen == 15
    assert_same_recording(rec, expected)
    assert rec.ids.tolist() == expected.ids.tolist()  # positions in the stream when untagged


def test_a_data_loader_with_progress_bar():
    model, data = tiny_model(), batches((4, 4, 4))
    loader = DataLoader(TensorDataset(torch.cat([x for x, _ in data]),
                                      torch.cat([y for _, y in data])), batch_size=4)
    assert_same_recording(record(model, loader, progress=True, device="cpu"),
                          by_hand(model, data))


def test_ids_and_labels_are_tagged():
    model, data = tiny_model(), batches((3, 2))
    ids = [torch.tensor([10, 11, 12]), torch.tensor([40, 41])]
    rec = record(model, [(x, y, i) for (x, y), i in zip(data, ids)])
    assert rec.ids.tolist() == [10, 11, 12, 40, 41]
    assert rec.labels.tolist() == torch.cat([y for _, y in data]).tolist()

    # lists are batches too, and y or ids may be None
    rec = record(model, [[data[0][0], None, ids[0]], [data[1][0], data[1][1]]])
    assert rec.ids.tolist() == [10, 11, 12, 3, 4]
    assert rec.labels.tolist() == [-1, -1, -1, *data[1][1].tolist()]


def test_bare_tensors_are_untagged_batches():
    model, data = tiny_model(), batches((3, 2))
    rec = record(model, [x for x, _ in data])
    assert rec.labels.tolist() == [-1] * 5 and rec.ids.tolist() == [0, 1, 2, 3, 4]
    expected = by_hand(model, [(x, None) for x, _ in data])
    assert_same_recording(rec, expected)


@pytest.mark.parametrize("bad, got", [
    ({"x": torch.zeros(1, 1, 28, 28)}, "batch 1 must be a Tensor or an .* got dict"),
    ((torch.zeros(1, 1, 28, 28),), "batch 1 must be .*, got a tuple of 1 items"),
    ((torch.zeros(1, 1, 28, 28), None, None, None), "batch 1 must be .*, got a tuple of 4 items"),
    ("batch", "batch 1 must be .*, got str"),
    (([[0.0]], torch.tensor([0])), "the x of batch 1 must be a Tensor, got list"),
])
def test_a_bad_batch_is_a_type_error_and_leaves_the_model_as_it_was(bad, got):
    model = tiny_model()
    model.layer1.eval()  # mixed modes
    before = modes(model)
    with pytest.raises(TypeError, match=got):
        record(model, [batches((2,))[0], bad])
    assert modes(model) == before
    assert_no_hooks(model)


@pytest.mark.parametrize("data, got", [
    (torch.zeros(2, 1, 28, 28), "got Tensor, which yields single samples"),
    (TensorDataset(torch.zeros(2, 1, 28, 28)), "got TensorDataset, which yields single samples"),
    (3, "got int"),
])
def test_data_that_is_not_an_iterable_of_batches_is_a_type_error(data, got):
    with pytest.raises(TypeError, match=f"data must be an iterable of batches, {got}"):
        record(tiny_model(), data)


def test_argument_errors():
    model, data = tiny_model(), batches((2,))
    with pytest.raises(TypeError, match="model must be a Module, got str"):
        record("model", data)
    with pytest.raises(TypeError, match="progress must be a bool, got progress=1"):
        record(model, data, progress=1)
    with pytest.raises(TypeError, match="device must be a device or str, got int"):
        record(model, data, device=0)
    with pytest.raises(ValueError, match="max_samples must be >= 1"):
        record(model, data, max_samples=0)
    with pytest.raises(ValueError, match="Conv2d has no .*to record"):  # Recorder's message
        record(nn.Conv2d(1, 2, 3), data)
    with pytest.raises(ValueError, match="tag\\(labels=...\\) has 3 entries"):
        record(model, [(data[0][0], torch.tensor([1, 2, 3]))])


def test_modes_restored_and_no_hook_left():
    model = tiny_model()
    model.layer2.eval()  # mixed modes
    before = modes(model)
    inside = []
    handle = model.register_forward_pre_hook(
        lambda m, args: inside.append((m.training, m.layer3.training, torch.is_grad_enabled())))
    rec = record(model, batches((2, 2)))
    handle.remove()
    assert inside == [(False, False, False)] * 2
    assert modes(model) == before
    assert_no_hooks(model)
    assert len(rec) == 4


def test_no_batch_gives_an_empty_recording():
    rec = record(tiny_model(), [])
    assert len(rec) == 0 and rec.samples_seen == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_inputs_move_to_the_models_device():
    model, data = tiny_model(), batches()
    expected = by_hand(model, data)
    rec = record(model.cuda(), data)  # CPU batches, CUDA model
    assert len(rec) == len(expected)
    assert torch.equal(rec.labels, expected.labels) and torch.equal(rec.ids, expected.ids)
