"""Executions chosen by measurement (dgclab/layers/tuning.py): the choice is remembered per
key, it changes no result, and only inference in eval mode is tuned."""

from __future__ import annotations

import time

import pytest
import torch

from dgclab.layers import cpu_kernel, tuning

from helpers import make_layer, needs_compiler


@pytest.fixture(autouse=True)
def fresh():
    tuning.clear()
    yield
    tuning.clear()


def test_choose_measures_once_and_remembers():
    calls = {"slow": 0, "fast": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(tuning.MIN_SECONDS)  # one call is all the time a round needs

    def fast():
        calls["fast"] += 1

    assert tuning.choose("k", {"slow": slow, "fast": fast}) == "fast"
    # the fast one has not run MIN_SECONDS in ROUNDS calls, nor in MAX_ROUNDS
    assert calls == {"slow": 1 + tuning.MAX_ROUNDS, "fast": 1 + tuning.MAX_ROUNDS}
    assert tuning.choose("k", {"slow": slow, "fast": fast}) == "fast"  # remembered: no calls
    assert calls == {"slow": 1 + tuning.MAX_ROUNDS, "fast": 1 + tuning.MAX_ROUNDS}
    assert tuning.remembered("k") == "fast" and tuning.remembered("other") is None
    choice, medians = tuning.choices()["k"]
    assert choice == "fast" and set(medians) == {"slow", "fast"}
    tuning.clear()
    assert tuning.remembered("k") is None


def test_choose_takes_few_rounds_of_long_calls():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1
        time.sleep(tuning.MIN_SECONDS)

    def b():
        calls["b"] += 1
        time.sleep(10 * tuning.MIN_SECONDS)

    assert tuning.choose("long", {"a": a, "b": b}) == "a"
    assert calls == {"a": 1 + tuning.ROUNDS, "b": 1 + tuning.ROUNDS}


@pytest.mark.parametrize("bad", [{}, None, ["mask"]])
def test_choose_refuses_no_candidates(bad):
    with pytest.raises(ValueError, match="candidates"):
        tuning.choose("k", bad)


def test_use_restores_and_checks_type():
    assert not tuning.enabled()  # off by default, like cudnn.benchmark
    with tuning.use(True):
        assert tuning.enabled()
    assert not tuning.enabled()
    with pytest.raises(TypeError, match="flag"):
        tuning.set_enabled("yes")


@needs_compiler
@pytest.mark.parametrize("forced", ["gather", "mask"])
def test_tuned_dgc_layer_gives_the_untuned_result(monkeypatch, forced):
    """Whichever execution the measurement picks, the output and selection are the layer's (to
    rounding), the choice is remembered per shape and k, and resolved_execution reports it."""
    assert cpu_kernel.load()
    layer = make_layer(8, 8, 3, padding=1, heads=2, k=3, squeeze_rate=2).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        reference = layer(x)
        monkeypatch.setattr(tuning, "choose",
                            lambda key, candidates: tuning._choices.setdefault(key, (forced, {}))[0])
        with tuning.use(True):
            out = layer(x)
            assert layer.resolved_execution(input=x, autograd=False) == forced
            assert tuning.remembered(layer._tuning_key(x, 3)) == forced
            assert tuning.remembered(layer._tuning_key(x[:1], 3)) is None  # another batch
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert layer.last_selection.shape == (2, 2, 8)


@needs_compiler
def test_measured_choice_is_one_of_the_two_and_changes_no_result():
    assert cpu_kernel.load()
    layer = make_layer(16, 16, 3, padding=1, heads=4, k=8, squeeze_rate=2).eval()
    x = torch.randn(4, 16, 12, 12)
    with torch.no_grad():
        reference = layer(x)
        with tuning.use(True):
            out = layer(x)
    (choice, medians), = tuning.choices().values()
    assert choice in ("gather", "mask") and set(medians) == {"gather", "mask"}
    assert medians[choice] == min(medians.values())
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_dgc_layer_tunes_only_eval_inference_under_auto():
    assert cpu_kernel.load()
    x = torch.randn(2, 8, 9, 9)
    with tuning.use(True):
        layer = make_layer(8, 8, 3, padding=1, heads=2, k=3, squeeze_rate=2)
        with torch.no_grad():
            layer.train()(x)  # training mode: BN statistics would be updated per timed call
            assert tuning.choices() == {}
            layer.eval()
            layer.execution = "mask"
            layer(x)  # an explicit execution is never overridden
            assert tuning.choices() == {}
            layer.execution = "auto"
            layer(x)
        assert len(tuning.choices()) == 1
        layer(x)  # autograd: the PyTorch paths, untuned
        assert len(tuning.choices()) == 1
