"""plot_contour, plot_surface3d and plot_side_by_side on synthetic 2D landscapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.contour import QuadContourSet
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

from basinscope.errors import BasinscopeError
from basinscope.plotting import (
    Trajectory,
    plot_contour,
    plot_side_by_side,
    plot_surface3d,
    save_figure,
)


def _contour_set(ax: Axes) -> QuadContourSet:
    (cs,) = [c for c in ax.collections if isinstance(c, QuadContourSet)]
    return cs


def _traj(label: str = "SGD", n: int = 12, **kw: object) -> Trajectory:
    t = np.linspace(0.0, 1.0, n)
    return Trajectory(label, alpha=0.8 * (1 - t), beta=0.5 * (1 - t) ** 2, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["contour", "filled"])
def test_contour_types_limits_and_colorbar(bowl: xr.Dataset, kind: str) -> None:
    fig, ax = plot_contour(bowl, kind=kind)  # type: ignore[arg-type]
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    cs = _contour_set(ax)
    assert cs.filled == (kind == "filled")
    assert ax.get_xlim() == (-1.0, 1.0) and ax.get_ylim() == (-1.0, 1.0)
    assert len(fig.axes) == 2  # the panel and its colorbar
    assert fig.axes[1].get_ylabel() == "train loss"
    assert ax.get_title() == "Quadratic bowl"
    assert "filter-normalized" in ax.get_xlabel() and ax.get_ylabel().startswith(r"$\beta$")
    # Linear levels are evenly spaced round numbers; filled contours cover all the data.
    step = np.diff(cs.levels)
    np.testing.assert_allclose(step, step[0])
    assert np.isclose(step[0], [0.1, 0.2, 0.25]).any()
    if kind == "filled":
        assert cs.levels[0] <= 0.1 and cs.levels[-1] >= 3.1


def test_contour_limits_follow_non_square_coords(ramp: xr.Dataset) -> None:
    _, ax = plot_contour(ramp, kind="filled")
    assert ax.get_xlim() == (-1.0, 2.0) and ax.get_ylim() == (-1.0, 1.0)


def test_heatmap_is_transposed_and_centred_on_grid_points(ramp: xr.Dataset) -> None:
    _, ax = plot_contour(ramp, kind="heatmap")
    (image,) = ax.images
    assert isinstance(image, AxesImage)
    arr = image.get_array()
    np.testing.assert_array_equal(arr, ramp["train_loss"].values.T)
    # z = alpha + 2 varies along x (columns) only.
    assert np.all(np.diff(arr, axis=1) > 0) and np.all(np.diff(arr, axis=0) == 0)
    assert image.origin == "lower"
    assert ax.get_xlim() == pytest.approx((-1.125, 2.125))  # half a cell (0.25) each side
    assert ax.get_ylim() == pytest.approx((-1 - 1 / 6, 1 + 1 / 6))


def test_contour_lines_follow_alpha(ramp: xr.Dataset) -> None:
    _, ax = plot_contour(ramp, kind="contour", levels=[1.5, 2.5, 3.5])
    cs = _contour_set(ax)
    assert list(cs.levels) == [1.5, 2.5, 3.5]
    for level, segs in zip(cs.levels, cs.allsegs):
        xy = np.concatenate(segs)
        # z = alpha + 2, so the level-c line is the vertical line alpha = c - 2.
        np.testing.assert_allclose(xy[:, 0], level - 2.0, atol=1e-9)
        assert np.ptp(xy[:, 1]) == pytest.approx(2.0)


def test_heatmap_on_non_uniform_grid_uses_pcolormesh(ramp: xr.Dataset) -> None:
    ds = ramp.assign_coords(alpha=ramp["alpha"].values ** 3)
    _, ax = plot_contour(ds, kind="heatmap")
    assert not ax.images
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    np.testing.assert_array_equal(mesh.get_array().reshape(7, 13), ds["train_loss"].values.T)


@pytest.mark.parametrize("kind", ["contour", "filled", "heatmap"])
def test_log_gives_lognorm_and_log_levels(bowl: xr.Dataset, kind: str) -> None:
    fig, ax = plot_contour(bowl, kind=kind, log=True, levels=12)  # type: ignore[arg-type]
    mappable = ax.images[0] if kind == "heatmap" else _contour_set(ax)
    assert isinstance(mappable.norm, LogNorm)
    assert mappable.norm.vmin == pytest.approx(0.1) and mappable.norm.vmax == pytest.approx(3.1)
    if kind != "heatmap":
        ratios = np.asarray(mappable.levels[1:]) / np.asarray(mappable.levels[:-1])
        np.testing.assert_allclose(ratios, ratios[0])
    assert "log scale" in fig.axes[-1].get_ylabel()


def test_nonfinite_values_are_masked_and_reported(bowl_nonfinite: xr.Dataset) -> None:
    for kind in ("contour", "filled", "heatmap"):
        fig, ax = plot_contour(bowl_nonfinite, kind=kind, log=(kind == "filled"))  # type: ignore[arg-type]
        assert "3 non-finite grid values not shown" in ax.get_title()
        fig.canvas.draw()
    _, ax = plot_contour(bowl_nonfinite, kind="heatmap")
    assert ax.images[0].get_array().mask.sum() == 3


def test_all_nan_surface_does_not_crash(bowl: xr.Dataset) -> None:
    ds = bowl.copy()
    ds["train_loss"].values[:] = np.nan
    fig, ax = plot_contour(ds, trajectories=[_traj()])
    assert "441 non-finite grid values" in ax.get_title()
    assert len(fig.axes) == 1  # nothing to put on a colorbar
    fig.canvas.draw()


def test_trajectories_are_drawn_with_markers_and_legend(bowl: xr.Dataset) -> None:
    trajs = [
        _traj("SGD", steps=np.arange(12) * 100, distance=np.linspace(0, 0.25, 12)),
        _traj("Adam", n=5, color="tab:purple"),
    ]
    _, ax = plot_contour(bowl, trajectories=trajs)
    lines = [a for a in ax.lines if isinstance(a, Line2D)]
    assert len(lines) == 1 + 3 * len(trajs)  # centre marker + (path, start, end) each
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("center")
    assert legend[1] == "SGD (max. off-plane distance 0.25)" and legend[2] == "Adam"
    markers = [ln.get_marker() for ln in lines[1:]]
    assert markers == ["o", "o", "*", "o", "o", "*"]
    assert lines[4].get_color() == "tab:purple"
    # Start point of the first trajectory, and step annotations for its first/last points.
    np.testing.assert_allclose(lines[2].get_xydata(), [[0.8, 0.5]])
    assert [t.get_text() for t in ax.texts] == ["step 0", "step 1100"]


def test_center_marker_optional(bowl: xr.Dataset, ramp: xr.Dataset) -> None:
    _, ax = plot_contour(bowl, center_marker=False)
    assert not ax.lines
    _, ax = plot_contour(bowl.assign_attrs(label_center="pre-trained"))
    assert ax.lines[0].get_label() == "pre-trained"
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), [[0.0, 0.0]])


def test_vmax_clips_the_colour_scale(bowl: xr.Dataset) -> None:
    _, ax = plot_contour(bowl, kind="filled", vmax=2.0, title="clipped")
    cs = _contour_set(ax)
    assert cs.levels[-1] == 2.0 and cs.norm.vmax == 2.0
    assert cs.extend == "max"
    assert ax.get_title() == "clipped"


def test_existing_axes_and_no_colorbar(bowl: xr.Dataset) -> None:
    fig = Figure()
    ax = fig.add_subplot(122)
    out_fig, out_ax = plot_contour(bowl, "test_loss", ax=ax, colorbar=False)
    assert out_fig is fig and out_ax is ax and len(fig.axes) == 1


def test_bad_inputs_raise(bowl: xr.Dataset) -> None:
    with pytest.raises(BasinscopeError, match="no variable 'val_loss'"):
        plot_contour(bowl, "val_loss")
    with pytest.raises(BasinscopeError, match="kind must be one of"):
        plot_contour(bowl, kind="wireframe")  # type: ignore[arg-type]
    with pytest.raises(BasinscopeError, match="expected \\('alpha', 'beta'\\)"):
        plot_contour(bowl.isel(beta=0))


def test_surface3d(bowl_nonfinite: xr.Dataset, tmp_path: Path) -> None:
    fig, ax = plot_surface3d(bowl_nonfinite, "train_loss", log=True, vmax=2.0)
    assert ax.name == "3d"
    assert ax.get_zlabel() == "log$_{10}$ train loss"
    assert len(fig.axes) == 2  # with colorbar
    title = ax.get_title()
    assert "3 non-finite grid values" in title and "clipped at 2" in title
    paths = save_figure(fig, tmp_path / "surface")
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].stat().st_size > 1000


def test_surface3d_needs_3d_axes(bowl: xr.Dataset) -> None:
    fig = Figure()
    with pytest.raises(BasinscopeError, match="projection='3d'"):
        plot_surface3d(bowl, ax=fig.add_subplot())
    ax3 = fig.add_subplot(projection="3d")
    assert plot_surface3d(bowl, ax=ax3)[1] is ax3


@pytest.mark.parametrize("kind", ["contour", "filled", "heatmap"])
def test_side_by_side_shares_the_colour_scale(bowl: xr.Dataset, kind: str) -> None:
    steep = bowl.assign(train_loss=3.0 * bowl["train_loss"])
    fig = plot_side_by_side(
        [bowl, steep],
        "train_loss",
        titles=["random start", "pre-trained start"],
        trajectories_per_panel=[[_traj()], []],
        kind=kind,  # type: ignore[arg-type]
    )
    assert isinstance(fig, Figure)
    panels, cbars = fig.axes[:2], fig.axes[2:]
    assert len(cbars) == 1
    assert [a.get_title() for a in panels] == ["random start", "pre-trained start"]
    mappables = [a.images[0] if kind == "heatmap" else _contour_set(a) for a in panels]
    assert mappables[0].norm.vmin == mappables[1].norm.vmin
    assert mappables[0].norm.vmax == mappables[1].norm.vmax >= 3 * 3.1
    assert panels[0].get_legend() is not None and panels[1].get_legend() is None


def test_side_by_side_separate_scales_and_errors(bowl: xr.Dataset, tmp_path: Path) -> None:
    steep = bowl.assign(train_loss=3.0 * bowl["train_loss"])
    fig = plot_side_by_side([bowl, steep], kind="filled", shared_levels=False, suptitle="Two")
    assert len(fig.axes) == 4
    a, b = (_contour_set(ax) for ax in fig.axes[:2] if ax.get_label() != "<colorbar>")
    assert a.norm.vmax < b.norm.vmax
    assert save_figure(fig, tmp_path / "sbs", formats=("pdf",))[0].stat().st_size > 1000
    with pytest.raises(BasinscopeError, match="2 landscapes but 1 titles"):
        plot_side_by_side([bowl, steep], titles=["one"])
    with pytest.raises(BasinscopeError, match="at least one"):
        plot_side_by_side([])


@pytest.mark.parametrize("kind", ["contour", "filled", "heatmap"])
def test_quantile_levels_hold_as_many_points_each_and_are_named(bowl: xr.Dataset, kind: str):
    from matplotlib.colors import BoundaryNorm

    fig, ax = plot_contour(bowl, kind=kind, levels="quantile")  # type: ignore[arg-type]
    mappable = ax.images[0] if kind == "heatmap" else _contour_set(ax)
    assert isinstance(mappable.norm, BoundaryNorm)
    bounds = np.asarray(mappable.norm.boundaries)
    values = bowl["train_loss"].values.ravel()
    assert bounds[0] == values.min() and bounds[-1] == values.max()
    counts = np.histogram(values, bounds)[0]
    assert counts.max() <= 3 * values.size / (len(bounds) - 1)  # not crowded at the walls
    assert fig.axes[1].get_ylabel() == "train loss (quantile levels)"


def test_quantile_levels_are_shared_side_by_side_and_a_bad_choice_is_refused(bowl):
    steep = bowl.assign(train_loss=3.0 * bowl["train_loss"])
    fig = plot_side_by_side([bowl, steep], kind="filled", levels="quantile")
    a, b = (_contour_set(ax) for ax in fig.axes[:2])
    assert list(a.levels) == list(b.levels) and a.norm is b.norm
    assert fig.axes[2].get_ylabel() == "train loss (quantile levels)"
    with pytest.raises(BasinscopeError, match=r"levels='quantiles': expected a number of levels"):
        plot_contour(bowl, levels="quantiles")
