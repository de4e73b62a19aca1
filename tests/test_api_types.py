"""The public API (cwnnk.__all__) is fully annotated: every parameter and every return of its callables, and of
the public methods, properties and constructor of its classes."""

import inspect

import pytest

import cwnnk


def _callables(name):
    """(qualified name, function) of a public name: the function itself, or for a class its constructor and the
    public methods and property getters it defines itself (not inherited ones)."""
    obj = getattr(cwnnk, name)
    if not inspect.isclass(obj):
        return [(name, obj)]
    out = []
    for attr, value in vars(obj).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        if isinstance(value, property):
            value = value.fget
        elif isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value):
            out.append((f"{name}.{attr}", value))
    return out


def _missing(function):
    """The parameters (self and cls aside) and the return of a function that carry no annotation."""
    signature = inspect.signature(function)
    missing = [f"parameter {p.name!r}" for p in signature.parameters.values()
               if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("the return")
    return missing


CALLABLES = [item for name in cwnnk.__all__ for item in _callables(name)]


def test_every_public_name_is_checked():
    checked = {qualified.split(".")[0] for qualified, _ in CALLABLES}
    assert checked == set(cwnnk.__all__)
    assert {"NNKResult.__init__", "NNKResult.n_sets", "NNKResult.channel", "LayerGraphs.__init__",
            "LayerGraphs.channel_graph", "LayerGraphs.aggregate_graph"} <= {qualified for qualified, _ in CALLABLES}


@pytest.mark.parametrize("qualified, function", CALLABLES, ids=[qualified for qualified, _ in CALLABLES])
def test_public_api_is_annotated(qualified, function):
    missing = _missing(function)
    assert not missing, f"cwnnk.{qualified} lacks annotations: {', '.join(missing)}"
