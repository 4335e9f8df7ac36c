"""plot_line: Li et al. style 1D plots with a twin accuracy axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from basinscope.errors import BasinscopeError
from basinscope.plotting import plot_line, save_figure


def _legend_texts(fig: Figure, ax: Axes) -> list[str]:
    legends = [*fig.legends, *([ax.get_legend()] if ax.get_legend() else [])]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def _finite(ds: xr.Dataset) -> xr.Dataset:
    return ds.map(lambda v: v.where(np.isfinite(v), 1.0))


def _dotted_x(ax: Axes) -> list[float]:
    return sorted(
        float(line.get_xdata()[0])
        for line in ax.lines
        if line.get_linestyle() == ":" and np.ptp(line.get_xdata()) == 0
    )


def test_types_twin_axes_and_labels(line: xr.Dataset, tmp_path: Path) -> None:
    fig, ax = plot_line(line)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    assert len(fig.axes) == 2
    twin = fig.axes[-1]
    assert twin is not ax and twin.get_shared_x_axes().joined(ax, twin)
    assert ax.get_ylabel() == "loss"
    assert twin.get_ylabel() == "accuracy"
    assert "interpolation coefficient" in ax.get_xlabel()
    assert ax.get_xlim() == (-0.5, 1.5)
    # Loss curves on the left (blue), accuracy on the right (red); train solid, test dashed.
    styles = {ln.get_label(): (ln.get_color(), ln.get_linestyle()) for ln in ax.lines}
    assert styles["train loss"] == ("tab:blue", "-")
    assert styles["test loss"] == ("tab:blue", "--")
    right = {ln.get_label(): (ln.get_color(), ln.get_linestyle()) for ln in twin.lines}
    assert right == {"train accuracy": ("tab:red", "-"), "test accuracy": ("tab:red", "--")}
    assert _legend_texts(fig, ax) == ["train loss", "test loss", "train accuracy", "test accuracy"]
    paths = save_figure(fig, tmp_path / "line")
    assert all(p.stat().st_size > 1000 for p in paths)


def test_interpolation_endpoints_dotted_and_labelled(line: xr.Dataset) -> None:
    _, ax = plot_line(line)
    assert _dotted_x(ax) == [0.0, 1.0]
    texts = [t.get_text() for t in ax.texts]
    assert r"$\theta_A$" in texts and r"$\theta_B$" in texts


def test_custom_endpoint_labels(line: xr.Dataset) -> None:
    ds = line.assign_attrs(label_a="pre-trained", label_b="fine-tuned")
    _, ax = plot_line(ds)
    texts = {t.get_text() for t in ax.texts}
    assert {"pre-trained", "fine-tuned"} <= texts
    assert "pre-trained" in ax.get_xlabel()


def test_random_line_marks_only_the_centre(line: xr.Dataset) -> None:
    _, ax = plot_line(line.assign_attrs(kind="random_line"))
    assert _dotted_x(ax) == [0.0]
    assert "filter-normalized" in ax.get_xlabel()
    assert ax.get_title().startswith("Random direction (filter-normalized)")


def test_nonfinite_points_are_masked_and_reported(line: xr.Dataset) -> None:
    fig, ax = plot_line(line)
    # train_loss: NaN + inf, test_loss: NaN + inf, train_accuracy: NaN, test_accuracy: NaN
    assert "6 non-finite points not shown" in ax.get_title()
    train = next(ln for ln in ax.lines if ln.get_label() == "train loss")
    ydata = train.get_ydata()
    assert np.ma.is_masked(ydata) and ydata.mask[0] and ydata.mask[-1]
    fig.canvas.draw()  # rendering must not fail on the gaps


def test_log_scale_masks_nonpositive(line: xr.Dataset) -> None:
    ds = line.copy()
    ds["train_loss"].values[5] = 0.0
    _, ax = plot_line(ds, log=True)
    assert ax.get_yscale() == "log"
    assert "log scale" in ax.get_ylabel()
    assert "1 non-positive points (log scale)" in ax.get_title()
    assert ax.figure.axes[-1].get_yscale() == "linear"


def test_title_argument_and_attrs(line: xr.Dataset) -> None:
    _, ax = plot_line(line.drop_vars(["train_loss", "test_loss"]), title="My line")
    assert ax.get_title().split("\n")[0] == "My line"
    _, ax = plot_line(_finite(line).assign_attrs(title="From attrs"))
    assert ax.get_title() == "From attrs"


def test_single_metric_has_no_twin_and_given_axes(line: xr.Dataset) -> None:
    fig = Figure()
    ax = fig.add_subplot(121)
    fig_out, ax_out = plot_line(line, metrics=("loss",), splits=("test",), ax=ax)
    assert fig_out is fig and ax_out is ax
    assert len(fig.axes) == 1
    assert [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")] == [
        "test loss"
    ]
    assert ax.get_legend() is not None  # inside the axes when the caller owns the figure
    assert not fig.legends


def test_error_metric_on_right_axis(line: xr.Dataset) -> None:
    ds = line.assign(train_error=1.0 - line["train_accuracy"])
    fig, _ = plot_line(ds, metrics=("loss", "accuracy", "error"))
    twin = fig.axes[-1]
    assert twin.get_ylabel() == "accuracy / error"
    assert "train error" in [ln.get_label() for ln in twin.lines]


def test_missing_variables_raise(line: xr.Dataset) -> None:
    with pytest.raises(BasinscopeError, match="available: test_accuracy"):
        plot_line(line, metrics=("perplexity",))
    with pytest.raises(BasinscopeError, match="'alpha' coordinate"):
        plot_line(line.rename({"alpha": "t"}))
