"""User code and user files that fail: each failure is a BasinscopeError naming it.

``module:attr`` specs import the user's module (which runs its code) and call the user's
factory or data function; files may be damaged. The command-line side of the same cases
is in tests/cli/test_input_checks.py.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from basinscope.data import TensorData, resolve_data
from basinscope.errors import BasinscopeError
from basinscope.geometry import load_directions
from basinscope.models import build_model
from basinscope.training import load_trajectory
from basinscope.training.trajectory import FORMAT


@pytest.fixture
def modules(tmp_path, monkeypatch):
    files = {
        "bs_uc_dep": "import surely_not_installed_pkg_xyz\n",
        "bs_uc_syntax": "def f(:\n",
        "bs_uc_exit": "import sys\nsys.exit(3)\n",
        "bs_uc_ok": """
            def factory(width=2):
                raise ValueError(f"no model of width {width}")

            def typo_inside():
                return undefined_name_xyz  # NameError at call time

            def data(split):
                raise OSError("the data server is down")
            """,
    }
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in files:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            "bs_uc_dep:f",
            r"importing model module 'bs_uc_dep' \(from 'bs_uc_dep:f'\) failed: "
            r"ModuleNotFoundError: No module named 'surely_not_installed_pkg_xyz'\. Importing the "
            r"module runs its code; install the missing package 'surely_not_installed_pkg_xyz'",
        ),
        ("bs_uc_syntax:f", r"failed: SyntaxError: invalid syntax in .*bs_uc_syntax\.py, line 1\."),
        ("bs_uc_exit:f", r"failed: SystemExit: 3\. Importing the module runs its code"),
        (
            "bs_uc_ok:factory",
            r"model factory 'bs_uc_ok:factory' called with kwargs \{\} raised ValueError: no model "
            r"of width 2\. Fix the factory or its --model-kwargs",
        ),
        ("bs_uc_ok:typo_inside", r"raised NameError: name 'undefined_name_xyz' is not defined"),
    ],
)
def test_failing_model_code(modules, spec, match):
    with pytest.raises(BasinscopeError, match=match):
        build_model(spec)


def test_failing_data_code(modules):
    with pytest.raises(
        BasinscopeError,
        match=r"the data 'bs_uc_ok:data' raised OSError while calling data\(split='test'\): the "
        r"data server is down\. It is your code",
    ):
        resolve_data("bs_uc_ok:data", "test")
    with pytest.raises(BasinscopeError, match=r"importing module 'bs_uc_syntax'"):
        resolve_data("bs_uc_syntax:data", "train")


def test_a_builtin_model_with_kwargs_too_large():
    with pytest.raises(BasinscopeError, match=r"hidden_width must be <= 100,000"):
        build_model("mlp", {"hidden": [10**6]})


def test_nonfinite_inputs():
    x = torch.zeros(3, 4)
    x[1, 2] = float("inf")
    with pytest.raises(BasinscopeError, match=r"x holds non-finite values .* in 1 of 3 samples"):
        TensorData(x, torch.zeros(3, dtype=torch.long), name="d")


def test_damaged_directions_and_trajectory_files(tmp_path):
    d = tmp_path / "d.safetensors"
    save_file(
        {"d0/w": torch.zeros(2), "d5/w": torch.zeros(2)}, d, {"basinscope": '{"n_directions": 2}'}
    )
    with pytest.raises(BasinscopeError, match=r"is a damaged directions file \(IndexError"):
        load_directions(d)
    t = tmp_path / "t.safetensors"
    save_file({"x": torch.zeros(1)}, t, {"format": FORMAT, "names": "[]"})
    with pytest.raises(
        BasinscopeError, match=r"has broken trajectory metadata \(KeyError: 'steps'\)"
    ):
        load_trajectory(t)
