"""eval_mode: eval inside the block, every submodule's own mode back afterwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dgclab.modes import eval_mode


def mixed() -> nn.Module:
    """Root and dropout in train mode, the BN block in eval mode (a frozen part)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
                          nn.Dropout())
    model[1].eval()
    return model


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_eval_inside_and_mixed_modes_restored():
    model = mixed()
    before = modes(model)
    assert set(before.values()) == {True, False}
    with eval_mode(model) as entered:
        assert entered is None
        assert not any(modes(model).values())
    assert modes(model) == before


def test_restored_when_the_block_raises():
    model = mixed()
    before = modes(model)
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            raise RuntimeError("inside")
    assert modes(model) == before


def test_nested_blocks_restore_their_own_entry_modes():
    model = mixed()
    before = modes(model)
    with eval_mode(model):
        model[2].train()  # changed inside the outer block: the inner one restores this
        with eval_mode(model):
            assert not any(modes(model).values())
        assert model[2].training and not model.training
    assert modes(model) == before


def test_several_models_the_same_twice_and_shared_submodules():
    a, b = mixed(), nn.Sequential(nn.Linear(2, 2)).train()
    shared = nn.Sequential(a[1], nn.Dropout())  # a's eval BN block, shared
    before = [modes(m) for m in (a, b, shared)]
    with eval_mode(a, b, a, shared):
        assert not any(m.training for model in (a, b, shared) for m in model.modules())
    assert [modes(m) for m in (a, b, shared)] == before


def test_no_model_is_a_no_op():
    with eval_mode():
        pass


@pytest.mark.parametrize("bad", [[nn.Linear(2, 2)], "model", None])
def test_a_non_module_is_a_type_error_naming_it_and_changes_nothing(bad):
    model = mixed()
    before = modes(model)
    with pytest.raises(TypeError, match=rf"models\[1\] must be a Module, got {type(bad).__name__}"):
        with eval_mode(model, bad):
            pass  # pragma: no cover
    assert modes(model) == before


def test_last_forward_kept_restores_every_grouping_layers_last_attributes():
    from dgclab.layers import DGCConv2d
    from dgclab.modes import last_forward_kept

    model = nn.Sequential(DGCConv2d(8, 8, 3, padding=1, heads=2))
    model(torch.randn(2, 8, 4, 4))
    before = model[0].last_selection
    with pytest.raises(RuntimeError):
        with last_forward_kept(model):
            model(torch.randn(5, 8, 4, 4))
            assert model[0].last_selection.shape[0] == 5
            model[0].last_extra = 1
            raise RuntimeError
    assert model[0].last_selection is before and model[0].last_extra is None
