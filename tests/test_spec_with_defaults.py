"""spec.with_defaults: a spec with other defaults (and help texts), its checks and flags kept."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from basinscope.errors import BasinscopeError
from basinscope.spec import Spec, option, with_defaults


@dataclass(frozen=True)
class S(Spec):
    """A spec."""

    split: str | None = option(None, "Split.")
    steps: int = option(10, "Steps.", low=1, flag="--num-steps")
    metrics: tuple[str, ...] = option(("loss",), "Metrics.", choices=("loss", "error", "x"))


def _field(cls, name):
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def test_defaults_and_help_change_the_rest_stays():
    T = with_defaults(S, split=("test", "Split read."), steps=200)
    assert T().split == "test" and T().steps == 200 and S().split is None
    assert _field(T, "split").metadata["help"] == "Split read."
    assert _field(T, "steps").metadata["help"] == "Steps."  # a bare default keeps the help
    assert _field(T, "steps").metadata["flag"] == "--num-steps"
    assert T.__doc__ == S.__doc__ and issubclass(T, S)
    with pytest.raises(BasinscopeError, match="steps"):  # the checks stay
        T(steps=0)
    assert T(split="train").to_dict()["split"] == "train"


def test_a_tuple_field_takes_a_pair_of_strings_as_its_default():
    assert with_defaults(S, metrics=("loss", "error"))().metrics == ("loss", "error")
    T = with_defaults(S, metrics=(("loss", "error"), "Metrics evaluated."))
    assert T().metrics == ("loss", "error")
    assert _field(T, "metrics").metadata["help"] == "Metrics evaluated."


def test_an_unknown_field_is_refused():
    with pytest.raises(TypeError, match=r"S has no fields \['nope'\]"):
        with_defaults(S, nope=1)
