"""The flat public API: every name in ``basinscope.__all__`` resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import basinscope as bs


@pytest.mark.parametrize("name", [n for n in bs.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    value = getattr(bs, name)
    assert value is not None and (callable(value) or isinstance(value, type))


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nonesuch'"):
        _ = bs.nonesuch


def test_import_is_light_and_the_flat_api_computes(digits_xy):
    code = "import sys, basinscope; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    x, y = digits_xy
    a, b = bs.build_model("mlp", init_seed=0), bs.build_model("mlp", init_seed=1)
    r = bs.barrier(a, b, (x[:200], y[:200]), num_points=3, refine=False, strategy="loop")
    assert isinstance(r, bs.Result) and r.kind == "barrier" and r.spec.num_points == 3
