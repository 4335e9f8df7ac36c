"""The figure of a Tracking result (kind "tracking"), drawn through plot(result), on the
Tracker's record of a tiny training run of a BatchNorm MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from basinscope.analyses.tracking import Tracker
from basinscope.data import TensorData
from basinscope.plotting import plot
from basinscope.plotting.figures.dynamics import tracking_panels
from basinscope.training import TrainConfig, train


@pytest.fixture(scope="module")
def tracking(digits_xy):
    x, y = digits_xy
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10)
    )
    tr, te = TensorData(x[:200], y[:200], name="tr"), TensorData(x[200:300], y[200:300], name="te")
    tracker = Tracker(
        [2, 4, 6],
        train_data=tr,
        test_data=te,
        examples=32,
        hessian_max_iter=10,
        hessian_tol=1e-2,
        sharpness_kwargs={"num_directions": 2},
    )
    train(net, tr, TrainConfig(steps=6, batch_size=32, lr=0.1), callbacks=[tracker])
    return tracker.result()


def test_every_tracked_variable_gets_a_panel_against_the_step(tracking):
    panels = tracking_panels(tracking.dataset)
    assert panels == [
        "loss",
        "error",
        "weight_norm",
        "effective_lr",
        "lr",
        "lambda_max",
        "sharpness",
        "noise_scale",
    ]
    fig, ax = plot(tracking)
    assert isinstance(fig, Figure) and ax is fig.axes[0]
    drawn = [a for a in fig.axes if a.get_lines()]
    assert len(drawn) == len(panels)
    labels = [a.get_ylabel() for a in drawn]
    assert labels[0].startswith("loss") and labels[1].startswith("error")
    assert "filter-normalized sharpness" in labels
    # train solid, test dashed; the steps on the x axis
    loss = drawn[0]
    assert [line.get_label() for line in loss.get_lines()] == ["train", "test"]
    assert [line.get_linestyle() for line in loss.get_lines()] == ["-", "--"]
    assert np.array_equal(loss.get_lines()[0].get_xdata(), [2, 4, 6])
    # the effective LR of the scale-invariant layer, on a log scale
    eff = drawn[panels.index("effective_lr")]
    assert eff.get_yscale() == "log" and [x.get_label() for x in eff.get_lines()] == ["1"]
    assert drawn[panels.index("weight_norm")].get_lines()[-1].get_label() == "total"


def test_only_what_was_tracked_is_drawn_and_a_given_axis_gets_the_first_panel(tracking):
    from basinscope.analyses.tracking import Tracking

    ds = tracking.dataset[["weight_norm", "module_norm", "lr"]]
    only = Tracking(ds, ("weight_norm",))
    assert tracking_panels(ds) == ["weight_norm", "lr"]
    fig, _ = plot(only)
    assert len([a for a in fig.axes if a.get_lines()]) == 2
    given = Figure().add_subplot()
    _, ax2 = plot(tracking, ax=given)
    assert ax2 is given and ax2.get_ylabel().startswith("loss")
    # extra evaluations a study adds are drawn with the errors (dotted)
    extra = tracking.dataset.assign(patch_only_error=tracking.dataset["test_error"] * 0 + 0.5)
    _, ax3 = plot(Tracking(extra, tracking.measures), ax=Figure().add_subplot())
    assert ax3.get_ylabel().startswith("loss")
    fig4, _ = plot(Tracking(extra[["patch_only_error"]], ("loss",)))
    err = fig4.axes[0]
    assert [x.get_label() for x in err.get_lines()] == ["patch only"]
    assert err.get_lines()[0].get_linestyle() == ":"


def test_an_empty_record_says_so(tracking):
    from basinscope.analyses.tracking import Tracking

    empty = Tracking(tracking.dataset.isel(step=slice(0, 0)), tracking.measures)
    _, ax = plot(empty)
    assert "nothing tracked" in ax.texts[0].get_text()
