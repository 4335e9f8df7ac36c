"""Names from user input that become file or folder names are checked before anything is
written (``basinscope.store.safe_component``)."""

from __future__ import annotations

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.store import safe_component
from processes import invoke, surface_cmd


@pytest.mark.parametrize("name", ["train", "test_rot90", "tgt-test", "Zielmenge", "a b", "x.y"])
def test_usable_names_pass_unchanged(name):
    assert safe_component(name, "split name") == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escape", "path separator"),
        ("a/b", "path separator"),
        ("..\\b", "path separator"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("a\0b", "NUL or another control character"),
        ("tab\there", "NUL or another control character"),
        ("", "empty"),
        (" train", "starts or ends with a space"),
        ("x" * 201, "longer than 200 bytes"),
    ],
)
def test_unusable_names_are_refused_with_the_reason(name, why):
    with pytest.raises(BasinscopeError, match=f"split name .* cannot be used.*{why}") as info:
        safe_component(name, "split name")
    assert "Use letters, digits" in str(info.value)


def test_an_analysis_refuses_a_split_name_before_writing(tmp_path, small_data):
    from torch import nn

    from basinscope.analyses import random_surface

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(BasinscopeError, match=r"split name '\.\./evil' cannot be used"):
        random_surface(
            model,
            {"../evil": small_data["train"]},
            alphas=np.linspace(-1, 1, 3),
            betas=[0.0],
            run_dir=tmp_path / "run",
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "evil").exists()


def test_the_cli_refuses_a_split_name_with_one_line(tmp_path, monkeypatch):
    """A data module that accepts any split name (as a user's may): `--splits ../x` used to
    reach Zarr's paths and end in a traceback."""
    (tmp_path / "anysplit.py").write_text(
        "from basinscope.data import load_digits\n"
        "def data(split):\n"
        "    return load_digits('train')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    args = surface_cmd(out, 3, "--no-plot")
    args[args.index("--splits") + 1] = "train,../outside"
    code, _, err = invoke(*args, "--data", "anysplit:data")
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: split name '../outside' cannot be used"), line
    assert not (tmp_path / "outside").exists()
    assert not (out / "journal").exists()
