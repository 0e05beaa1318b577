"""Every public function and class of dgclab meets an argument of a foreign type with a
TypeError or ValueError at its boundary, never with an AttributeError from deep inside."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import matplotlib
import pytest

matplotlib.use("Agg")

MODULES = ("dgclab", "dgclab.layers", "dgclab.models", "dgclab.data", "dgclab.record",
           "dgclab.analysis", "dgclab.train", "dgclab.viz", "dgclab.study", "dgclab.graph")


def _public_callables():
    seen, found = set(), []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if id(obj) in seen or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            seen.add(id(obj))
            # records (dataclasses, NamedTuples) hold whatever they are given, by design
            if inspect.isclass(obj) and (dataclasses.is_dataclass(obj)
                                         or issubclass(obj, tuple)):
                continue
            try:
                params = inspect.signature(obj).parameters.values()
            except (TypeError, ValueError):
                continue
            required = [p for p in params if p.default is p.empty and p.kind in
                        (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
            if required:
                found.append(pytest.param(obj, len(required), id=f"{module_name}.{name}"))
    return found


@pytest.mark.parametrize("call, arity", _public_callables())
def test_a_foreign_argument_is_a_type_or_value_error(call, arity):
    with pytest.raises((TypeError, ValueError)):
        call(*[object()] * arity)
