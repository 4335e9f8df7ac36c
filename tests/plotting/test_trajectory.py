"""The Trajectory dataclass and draw_trajectory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib.figure import Figure

from basinscope.errors import BasinscopeError
from basinscope.plotting import Trajectory, draw_trajectory


def test_arrays_are_normalised_and_frozen() -> None:
    t = Trajectory("SGD", alpha=[0, 1, 2], beta=(0.5, 0.25, 0.0), steps=[0, 10, 20])
    assert isinstance(t.alpha, np.ndarray) and t.alpha.dtype == float
    assert t.beta.tolist() == [0.5, 0.25, 0.0]
    assert t.steps is not None and t.steps.tolist() == [0, 10, 20]
    assert len(t) == 3 and t.distance is None and t.color is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.label = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": [], "beta": []}, "has no points"),
        ({"alpha": [0, 1], "beta": [0]}, "beta has 1 entries but alpha has 2"),
        ({"alpha": [[0, 1]], "beta": [0, 1]}, "must be 1-D"),
        ({"alpha": [0, 1], "beta": [0, 1], "steps": [0]}, "steps has 1 entries"),
        ({"alpha": [0, 1], "beta": [0, 1], "distance": [0, 1, 2]}, "distance has 3"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(BasinscopeError, match=match):
        Trajectory("bad", **kwargs)


def test_legend_label_reports_largest_distance() -> None:
    t = Trajectory("SGD", [0, 1, 2], [0, 0, 0], distance=[0.0, -0.5, np.nan])
    assert t.legend_label() == "SGD (max. off-plane distance 0.5)"
    assert Trajectory("x", [0], [0], distance=[np.nan]).legend_label() == "x"


def test_draw_single_point_trajectory() -> None:
    ax = Figure().add_subplot()
    path, start, end = draw_trajectory(ax, Trajectory("one", [0.3], [0.4], steps=[7]))
    assert path.get_label() == "one" and start.get_label() == end.get_label() == "_nolegend_"
    assert [t.get_text() for t in ax.texts] == ["step 7"]
    assert path.get_color() == "tab:red"


def test_draw_with_float_steps_and_no_annotations() -> None:
    ax = Figure().add_subplot()
    t = Trajectory("f", [0, 1], [0, 1], steps=[0.5, 2.0], color="green")
    draw_trajectory(ax, t)
    assert [x.get_text() for x in ax.texts] == ["step 0.5", "step 2"]
    ax2 = Figure().add_subplot()
    lines = draw_trajectory(ax2, t, annotate_steps=False)
    assert not ax2.texts and all(ln.get_color() == "green" for ln in lines)
