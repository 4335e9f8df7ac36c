"""The figures of the merging results, drawn through plot(result): every branch of a
merge's figure and the error decomposition, on tiny MLPs (no training)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from basinscope.analyses.merging import merge, merge_decomposition
from basinscope.plotting import plot


@pytest.fixture(scope="module")
def setup(digits_xy):
    x, y = digits_xy

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))

    base = net(0)
    models = []
    for seed in (1, 2, 3):
        m = net(0)
        with torch.no_grad():
            for p, q in zip(m.parameters(), net(seed).parameters()):
                p.add_(0.1 * q)
        models.append(m)
    data = [(x[i * 40 : (i + 1) * 40], y[i * 40 : (i + 1) * 40]) for i in range(3)]
    return base, models, data


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_selection_draws_the_validation_curve_and_marks_the_choice(setup):
    base, models, data = setup
    res = merge(base, models, select=("lam",), lams=(0.5, 1.0), val_data=data)
    fig, ax = plot(res)
    assert isinstance(fig, Figure) and ax in fig.axes
    chosen = res.hyper["lam"]
    assert _legend(ax) == [
        "mean accuracy over tasks",
        "worst-task accuracy",
        f"chosen: lam {chosen:g}",
    ]
    assert "lam chosen on validation" in ax.get_title()


def test_two_selected_hyper_parameters_get_one_line_per_value_of_the_second(setup):
    base, models, data = setup
    res = merge(
        base,
        models,
        method="ties",
        select=("lam", "density"),
        lams=(0.5, 1.0),
        densities=(0.2, 1.0),
        val_data=data,
    )
    _, ax = plot(res)
    assert _legend(ax)[:2] == ["density 0.2", "density 1"]
    assert ax.get_legend().get_title().get_text() == "density"


def test_without_selection_the_per_task_accuracy_else_the_subspace_else_a_note(setup):
    base, models, data = setup
    _, ax = plot(merge(base, models, method="uniform", val_data=data, labels=["a", "b", "c"]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert len(ax.patches) == 3
    _, ax = plot(merge(base, models, method="subspace", geometry="flat", rank=2))
    assert "rank 2 kept" in _legend(ax) and "flat geometry" in ax.get_title()
    _, ax = plot(merge(base, models, method="uniform"))
    assert "no validation data" in ax.texts[0].get_text()


def test_the_decomposition_shows_measured_predicted_and_the_terms(setup):
    base, models, data = setup
    res = merge_decomposition(base, models, data, ranks=(1, 2))
    fig, ax = plot(res)
    assert len(fig.axes) == 2 and ax is fig.axes[0]
    assert _legend(ax) == [
        "curvature: measured",
        "curvature: predicted",
        "flat: measured",
        "flat: predicted",
    ]
    assert _legend(fig.axes[1]) == ["curvature: variance", "flat: variance", "residual energy"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    other = Figure()
    given = other.add_subplot()
    assert plot(res, ax=given) == (other, given) and len(other.axes) == 1
