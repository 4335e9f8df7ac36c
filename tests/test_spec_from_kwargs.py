"""Spec.from_kwargs: the spec of an analysis's keyword arguments (the inverse of kwargs)."""

from __future__ import annotations

import pytest

from basinscope.analyses.alignment import AlignSpec
from basinscope.analyses.curves import CurveEvalSpec
from basinscope.errors import BasinscopeError
from basinscope.spec import EvalOptions


def test_from_kwargs_inverts_kwargs_and_fills_the_nested_groups():
    spec = AlignSpec(method="activation", num_points=5, eval=EvalOptions(dtype="float64"))
    assert AlignSpec.from_kwargs(spec.kwargs()) == spec
    # a function's locals: other names are ignored, missing settings keep their defaults
    again = AlignSpec.from_kwargs({"method": "activation", "dtype": "float64", "model_a": 1})
    assert again == AlignSpec(method="activation", eval=EvalOptions(dtype="float64"))
    assert CurveEvalSpec.from_kwargs({"metrics": ["loss"]}).metrics == ("loss",)
    with pytest.raises(BasinscopeError, match="num_points must be an integer >= 3, got 2"):
        AlignSpec.from_kwargs({"num_points": 2})
