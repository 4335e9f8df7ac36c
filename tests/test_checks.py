"""The shared argument checks (basinscope._checks): each message and each accepted value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from basinscope._checks import (
    MAX_COUNT,
    MAX_SEED,
    MAX_STEPS,
    at_least,
    check_seed,
    finite_float,
    in_range,
    one_of,
    positive_float,
    positive_int,
)
from basinscope.errors import BasinscopeError


def test_at_least_accepts_and_converts_integers():
    assert at_least("n", 3, 3) == 3
    assert type(at_least("n", np.int64(5), 1)) is int
    assert at_least("n", MAX_COUNT, 0) == MAX_COUNT
    assert at_least("n", 10**12, 0, high=None) == 10**12


@pytest.mark.parametrize(
    "value, message",
    [
        (2, "--num-points must be an integer >= 3, got 2"),
        (2.5, r"--num-points must be an integer >= 3, got 2\.5 \(float\)"),
        (True, r"--num-points must be an integer >= 3, got True \(bool\)"),
        ("4", r"--num-points must be an integer >= 3, got '4' \(str\)"),
        (MAX_COUNT + 1, r"--num-points must be <= 1,000,000,000 \(a larger count is refused as a"),
    ],
)
def test_at_least_refuses(value, message):
    with pytest.raises(BasinscopeError, match=message):
        at_least("--num-points", value, 3)


def test_at_least_explains_both_bounds_and_the_fix():
    with pytest.raises(BasinscopeError, match=r"children must be an integer >= 2, got 1 \(two\)"):
        at_least("children", 1, 2, why=" (two)")
    with pytest.raises(BasinscopeError, match=r"--steps must be <= 100,000,000 \(10\*\*8 steps"):
        at_least("--steps", MAX_STEPS + 1, 1, high=MAX_STEPS)
    with pytest.raises(BasinscopeError, match=r"copies must be <= 64 \(each is a run\), got 65; x"):
        at_least("copies", 65, 2, high=64, high_why=" (each is a run)", fix="x")


def test_positive_int():
    assert positive_int("width", 1) == 1
    for bad in (0, -3, 1.0, None):
        with pytest.raises(BasinscopeError, match=f"width must be a positive integer, got {bad!r}"):
            positive_int("width", bad)
    with pytest.raises(BasinscopeError, match=r"width must be <= 10 \(too wide\), got 11"):
        positive_int("width", 11, high=10, high_why=" (too wide)")


def test_check_seed():
    assert check_seed("--seed", 0) == 0
    assert check_seed("--seed", MAX_SEED) == MAX_SEED
    with pytest.raises(BasinscopeError, match=r"--seed must be an integer >= 0, got -1; seeds are"):
        check_seed("--seed", -1)
    with pytest.raises(BasinscopeError, match=r"--seed must be <= 9,223,372,036,854,775,807"):
        check_seed("--seed", 10**20)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.1", None, True])
def test_finite_float_refuses_what_is_not_a_finite_number(bad):
    with pytest.raises(BasinscopeError, match=f"lr must be a finite number, got {bad!r}"):
        finite_float("lr", bad)


def test_finite_float_bounds():
    assert finite_float("x", 1) == 1.0 and type(finite_float("x", 1)) is float
    assert finite_float("x", 0.0, low=0.0) == 0.0
    with pytest.raises(BasinscopeError, match=r"x must be > 0, got 0\.0"):
        finite_float("x", 0.0, low=0.0, low_open=True)
    with pytest.raises(BasinscopeError, match=r"momentum must be in \[0, 1\), got 1\.0"):
        finite_float("momentum", 1.0, low=0, high=1, high_open=True)
    with pytest.raises(BasinscopeError, match=r"x must be <= 2, got 3\.0; fix it"):
        finite_float("x", 3.0, high=2, fix="fix it")
    with pytest.raises(BasinscopeError, match=r"level must be in \[0, 1\], got 2\.0"):
        in_range("level", 2.0, 0, 1)


def test_positive_float():
    assert positive_float("rho", 0.5) == 0.5
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(
            BasinscopeError, match=rf"rho must be a positive number, got {bad!r}; e\.g\. rho=0\.05"
        ):
            positive_float("rho", bad, fix="e.g. rho=0.05")


def test_one_of():
    assert one_of("--bn", "stored", ("stored", "recompute")) == "stored"
    with pytest.raises(
        BasinscopeError,
        match=r"unknown BatchNorm policy 'x' for --bn: expected one of stored, recompute",
    ):
        one_of("--bn", "x", ("stored", "recompute"), what="BatchNorm policy")
