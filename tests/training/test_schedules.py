"""Learning-rate schedules against hand-computed closed forms."""

from __future__ import annotations

import itertools
import math

import pytest

from basinscope.errors import BasinscopeError
from basinscope.training import SCHEDULES, lr_at


def test_constant() -> None:
    assert [lr_at(s, 50, 0.1, "constant") for s in (0, 25, 49, 80)] == [0.1] * 4


def test_step_milestones() -> None:
    kw = {"milestones": (30, 60), "gamma": 0.1}
    assert lr_at(0, 100, 1.0, "step", **kw) == 1.0
    assert lr_at(29, 100, 1.0, "step", **kw) == 1.0
    assert lr_at(30, 100, 1.0, "step", **kw) == pytest.approx(0.1)
    assert lr_at(59, 100, 1.0, "step", **kw) == pytest.approx(0.1)
    assert lr_at(60, 100, 1.0, "step", **kw) == pytest.approx(0.01)
    assert lr_at(99, 100, 1.0, "step", **kw) == pytest.approx(0.01)


def test_cosine_closed_form() -> None:
    assert lr_at(0, 100, 1.0, "cosine") == pytest.approx(1.0)
    assert lr_at(50, 100, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(25, 100, 1.0, "cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(100, 100, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    # midpoint with a floor is the mean of the two
    assert lr_at(50, 100, 1.0, "cosine", min_lr=0.2) == pytest.approx(0.6)
    # past the end it stays at min_lr
    assert lr_at(150, 100, 1.0, "cosine", min_lr=0.2) == pytest.approx(0.2)
    values = [lr_at(s, 100, 1.0, "cosine") for s in range(100)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_linear_closed_form() -> None:
    assert lr_at(0, 100, 1.0, "linear") == pytest.approx(1.0)
    assert lr_at(25, 100, 1.0, "linear") == pytest.approx(0.75)
    assert lr_at(50, 100, 2.0, "linear", min_lr=1.0) == pytest.approx(1.5)
    assert lr_at(200, 100, 1.0, "linear", min_lr=0.1) == pytest.approx(0.1)


def test_warmup_then_cosine() -> None:
    kw = {"warmup_steps": 10, "min_lr": 0.0}
    assert lr_at(0, 110, 1.0, "cosine", **kw) == pytest.approx(0.1)
    assert lr_at(4, 110, 1.0, "cosine", **kw) == pytest.approx(0.5)
    assert lr_at(9, 110, 1.0, "cosine", **kw) == pytest.approx(1.0)
    # the main schedule starts at base_lr and its midpoint is 50 steps after the warmup
    assert lr_at(10, 110, 1.0, "cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, 110, 1.0, "cosine", **kw) == pytest.approx(0.5)


def test_warmup_with_constant_and_step() -> None:
    assert lr_at(1, 20, 0.4, "constant", warmup_steps=4) == pytest.approx(0.2)
    assert lr_at(4, 20, 0.4, "constant", warmup_steps=4) == pytest.approx(0.4)
    kw = {"warmup_steps": 4, "milestones": (10,), "gamma": 0.5}
    assert lr_at(9, 20, 0.4, "step", **kw) == pytest.approx(0.4)
    assert lr_at(10, 20, 0.4, "step", **kw) == pytest.approx(0.2)


def test_cyclic_endpoints_and_midpoints() -> None:
    kw = {"cycle_steps": 10, "min_lr": 0.0}
    # t = ((s mod 10) + 1) / 10
    assert lr_at(0, 100, 1.0, "cyclic", **kw) == pytest.approx(0.8)  # t=0.1
    assert lr_at(2, 100, 1.0, "cyclic", **kw) == pytest.approx(0.4)  # t=0.3
    assert lr_at(4, 100, 1.0, "cyclic", **kw) == pytest.approx(0.0)  # t=0.5: the minimum
    assert lr_at(6, 100, 1.0, "cyclic", **kw) == pytest.approx(0.4)  # t=0.7
    assert lr_at(9, 100, 1.0, "cyclic", **kw) == pytest.approx(1.0)  # t=1: back to base
    assert lr_at(10, 100, 1.0, "cyclic", **kw) == pytest.approx(0.8)  # periodic
    assert lr_at(24, 100, 1.0, "cyclic", **kw) == pytest.approx(0.0)
    # with a floor: (1 - 2t) a1 + 2t a2 at t = 0.3
    assert lr_at(2, 100, 1.0, "cyclic", cycle_steps=10, min_lr=0.1) == pytest.approx(0.46)
    assert lr_at(4, 100, 1.0, "cyclic", cycle_steps=10, min_lr=0.1) == pytest.approx(0.1)


def test_cyclic_after_warmup() -> None:
    kw = {"cycle_steps": 4, "min_lr": 0.0, "warmup_steps": 2}
    assert lr_at(1, 20, 1.0, "cyclic", **kw) == pytest.approx(1.0)
    assert [lr_at(s, 20, 1.0, "cyclic", **kw) for s in range(2, 6)] == pytest.approx(
        [0.5, 0.0, 0.5, 1.0]
    )


def test_unknown_schedule_lists_valid_names() -> None:
    with pytest.raises(BasinscopeError, match="unknown learning-rate schedule 'poly'") as e:
        lr_at(0, 10, 0.1, "poly")
    for name in SCHEDULES:
        assert repr(name) in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "cyclic"}, "cycle_steps"),
        ({"schedule": "cyclic", "cycle_steps": 1}, "cycle_steps"),
        ({"schedule": "cosine", "min_lr": 0.5}, "min_lr"),
        ({"schedule": "constant", "warmup_steps": -1}, "warmup_steps"),
        ({"schedule": "step", "gamma": 0.0}, "gamma"),
        ({"schedule": "constant", "step": -1}, "step must be >= 0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    step = kwargs.pop("step", 0)
    schedule = kwargs.pop("schedule")
    with pytest.raises(BasinscopeError, match=match):
        lr_at(step, 10, 0.1, schedule, **kwargs)
