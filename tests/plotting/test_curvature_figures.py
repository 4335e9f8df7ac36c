"""The figures of the curvature and sharpness results, drawn through plot(result)."""

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from basinscope.analyses.hessian import hessian_analysis
from basinscope.analyses.sharpness_measures import sharpness_measures
from basinscope.plotting import plot


@pytest.fixture(scope="module")
def setup(digits_xy):
    x, y = digits_xy
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
    return net, (x[:60], y[:60])


def _labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_hessian_report_panels_and_its_parts(setup):
    net, xy = setup
    rep = hessian_analysis(
        net, xy, k_top=2, k_bottom=1, tol=1e-3, trace="exact", density=True, density_steps=15
    )
    fig, ax = plot(rep)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and ax is fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["top 1", "top 2", "bottom 1"]
    assert "trace" in ax.get_title() and "(exact)" in ax.get_title()
    assert "density" in fig.axes[1].get_title()
    # on a given axes: the eigenvalues only
    other = Figure()
    given = other.add_subplot()
    assert plot(rep, ax=given) == (other, given) and len(other.axes) == 1
    _, ax = plot(rep.top)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["top 1", "top 2"]
    _, ax = plot(rep.bottom)
    assert _labels(ax) == ["bottom (converged)"]
    _, ax = plot(rep.density)
    assert ax.get_yscale() == "log"


def test_unconverged_eigenvalues_are_drawn_hollow(setup):
    net, xy = setup
    rep = hessian_analysis(net, xy, k_top=2, k_bottom=0, max_iter=2, trace="none")
    assert not rep.top.converged.any()
    fig, ax = plot(rep)
    assert _labels(ax) == ["top (not converged)"] and len(fig.axes) == 1


def test_sharpness_figures(setup):
    net, xy = setup
    res = sharpness_measures(
        net, xy, measure=("worst_case", "average"), steps=1, restarts=2, samples=3, strategy="loop"
    )
    _, ax = plot(res)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["worst_case", "average"]
    _, ax = plot(res["average"])
    assert {"each sample", "± standard error"} <= set(_labels(ax))
    _, ax = plot(res["worst_case"])
    assert "each restart" in _labels(ax) and ax.get_ylabel() == "loss increase"
    keskar = sharpness_measures(
        net, xy, measure=("worst_case",), relative=True, norm="linf", rho=1e-3, steps=1
    )
    _, ax = plot(keskar.measures[0])
    assert ax.get_ylabel() == "increase, % of 1 + L"
