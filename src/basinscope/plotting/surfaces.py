"""2D landscapes: contour plots, heat maps, 3D surfaces and side-by-side comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.colors import BoundaryNorm, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullLocator

from basinscope.errors import BasinscopeError
from basinscope.plotting._common import (
    LABEL_SIZE,
    LEGEND_SIZE,
    TITLE_SIZE,
    attr_str,
    compose_title,
    direction_label,
    figure_of,
    finite_range,
    hidden_note,
    new_figure,
    style_axes,
    var_label,
)
from basinscope.plotting._grid import (
    color_scale,
    colorbar_extend,
    is_quantile,
    is_uniform,
    quantile_scale,
    surface_grid,
)
from basinscope.plotting.trajectory import TRAJECTORY_COLORS, Trajectory, draw_trajectory

__all__ = ["ContourKind", "plot_contour", "plot_side_by_side", "plot_surface3d"]

ContourKind = Literal["contour", "filled", "heatmap"]
_KINDS = ("contour", "filled", "heatmap")


def _draw_contour(
    ax: Axes,
    ds: xr.Dataset,
    var: str,
    *,
    kind: str,
    levels: int | Sequence[float] | str,
    log: bool,
    trajectories: Sequence[Trajectory],
    center_marker: bool,
    title: str | None,
    vmin: float | None,
    vmax: float | None,
    cmap: str,
    shared_norm: Normalize | None = None,
) -> tuple[ScalarMappable | None, str]:
    """Draw the panel of :func:`plot_contour` on ``ax``.

    Returns the colour mappable (``None`` when nothing could be drawn) and the colorbar
    ``extend`` (whether finite data lie below/above the colour scale).
    """
    if kind not in _KINDS:
        raise BasinscopeError(f"kind must be one of {_KINDS}, got {kind!r}.")
    alpha, beta, z, n_bad, n_nonpos = surface_grid(ds, var, log=log)
    data_range = finite_range([z])
    if shared_norm is not None:  # plot_side_by_side's panels: one scale for all
        norm, lv = shared_norm, np.asarray(levels, dtype=float)
    elif is_quantile(levels):
        norm, lv = quantile_scale([z])
    else:
        norm, lv = color_scale(data_range, levels=levels, log=log, vmin=vmin, vmax=vmax)
    cm = colormaps[cmap].with_extremes(bad="0.85")
    extend = colorbar_extend(data_range, norm)

    mappable: ScalarMappable | None = None
    if data_range is not None and kind == "heatmap":
        if is_uniform(alpha) and is_uniform(beta):
            da, db = alpha[1] - alpha[0], beta[1] - beta[0]
            extent = (alpha[0] - da / 2, alpha[-1] + da / 2, beta[0] - db / 2, beta[-1] + db / 2)
            mappable = ax.imshow(
                z,
                origin="lower",
                extent=extent,
                aspect="auto",
                norm=norm,
                cmap=cm,
                interpolation="nearest",
            )
        else:
            mappable = ax.pcolormesh(alpha, beta, z, shading="nearest", norm=norm, cmap=cm)
    elif data_range is not None and alpha.size > 1 and beta.size > 1:
        lv_in = lv[(lv >= data_range[0]) & (lv <= data_range[1])]
        if kind == "filled":
            mappable = ax.contourf(alpha, beta, z, levels=lv, norm=norm, cmap=cm, extend=extend)
        elif lv_in.size:  # line contours: matplotlib warns when no level meets the data
            cs = ax.contour(alpha, beta, z, levels=lv_in, norm=norm, cmap=cm, linewidths=1.0)
            mappable = ScalarMappable(norm=norm, cmap=cm) if lv_in.size < 2 else cs
    if kind != "heatmap" and alpha.size > 1 and beta.size > 1:
        ax.set_xlim(float(alpha.min()), float(alpha.max()))
        ax.set_ylim(float(beta.min()), float(beta.max()))

    if center_marker and alpha.min() <= 0 <= alpha.max() and beta.min() <= 0 <= beta.max():
        ax.plot(
            [0.0],
            [0.0],
            linestyle="none",
            marker="P",
            markersize=10,
            markerfacecolor="black",
            markeredgecolor="white",
            markeredgewidth=1.0,
            zorder=5,
            label=attr_str(ds.attrs, "label_center", r"center ($\alpha=\beta=0$)"),
        )
    for i, traj in enumerate(trajectories):
        draw_trajectory(ax, traj, color=TRAJECTORY_COLORS[i % len(TRAJECTORY_COLORS)])
    if trajectories:
        ax.legend(fontsize=LEGEND_SIZE, loc="best", framealpha=0.85)

    x_span = float(np.ptp(alpha)) if alpha.size else 0.0
    y_span = float(np.ptp(beta)) if beta.size else 0.0
    if x_span > 0 and y_span > 0 and 1 / 3 <= x_span / y_span <= 3:
        ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(direction_label(ds.attrs, 0), fontsize=LABEL_SIZE)
    ax.set_ylabel(direction_label(ds.attrs, 1), fontsize=LABEL_SIZE)
    style_axes(ax)
    base = title if title is not None else attr_str(ds.attrs, "title", var_label(ds, var))
    ax.set_title(
        compose_title(base, hidden_note(n_bad, n_nonpos, what="grid values")), fontsize=TITLE_SIZE
    )
    return mappable, extend


def _add_colorbar(
    fig: Figure,
    mappable: ScalarMappable,
    ax: Axes | list[Axes],
    label: str,
    extend: str = "neither",
    shrink: float = 0.9,
) -> Colorbar:
    """Add a labelled colorbar for ``mappable`` next to ``ax``.

    Contour sets keep their own ``extend``. Log colour scales get ticks at 1, 2, 5 times
    powers of ten, written plainly (``0.2``, ``5``, ``100``) instead of the level values.
    """
    cbar = fig.colorbar(mappable, ax=ax, shrink=shrink, extend=extend)
    if isinstance(mappable.norm, BoundaryNorm):  # quantile levels: a readable subset
        bounds = np.asarray(mappable.norm.boundaries)
        step = max(1, int(np.ceil(len(bounds) / 8)))
        cbar.set_ticks(bounds[::step])
        cbar.formatter = FormatStrFormatter("%.3g")
        cbar.minorlocator = NullLocator()
    elif isinstance(mappable.norm, LogNorm):
        cbar.locator = LogLocator(subs=(1.0, 2.0, 5.0))
        cbar.formatter = FormatStrFormatter("%g")
        cbar.minorlocator = NullLocator()
    cbar.set_label(label, fontsize=LABEL_SIZE)
    cbar.ax.tick_params(labelsize=LEGEND_SIZE + 0.5)
    return cbar


def plot_contour(
    ds: xr.Dataset,
    var: str = "train_loss",
    *,
    kind: ContourKind = "contour",
    levels: int | Sequence[float] | str = 30,
    log: bool = False,
    trajectories: Sequence[Trajectory] = (),
    center_marker: bool = True,
    ax: Axes | None = None,
    title: str | None = None,
    vmax: float | None = None,
    vmin: float | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
) -> tuple[Figure, Axes]:
    """Plot a 2D landscape as contour lines, filled contours or a heat map, with a colorbar.

    Args:
        ds: 2D landscape with coordinates ``alpha`` (x axis) and ``beta`` (y axis) and
            ``var`` stored as ``(alpha, beta)``.
        var: Variable to plot, e.g. ``"train_loss"``.
        kind: ``"contour"`` (lines), ``"filled"`` (``contourf``) or ``"heatmap"`` (one cell
            per grid point; ``imshow`` on uniform grids, ``pcolormesh`` otherwise).
        levels: Number of contour levels, explicit level values, or ``"quantile"``: levels
            at evenly spaced quantiles of the values, each band its own colour, so a basin
            is resolved as finely as its walls (the colorbar label says so). Heat maps use
            the levels only through ``"quantile"``'s banded colours.
        log: Log-spaced levels and a :class:`~matplotlib.colors.LogNorm` over the finite,
            positive values (as Li et al. do for loss surfaces).
        trajectories: Paths to overlay (see :class:`~basinscope.plotting.Trajectory`).
        center_marker: Mark the centre ``(0, 0)`` (the point the plane is centred on) with
            a black plus, labelled ``attrs["label_center"]`` in the legend.
        ax: Axes to draw on; a new 5.2 x 4.4 inch figure is created when omitted.
        title: Title; defaults to ``attrs["title"]`` or the variable's name.
        vmax: Upper end of the colour scale (values above it are not contoured, or coloured
            as "over" in filled plots and heat maps); defaults to the finite maximum.
        vmin: Lower end of the colour scale; defaults to the finite minimum.
        cmap: Matplotlib colour-map name.
        colorbar: Add a colorbar next to ``ax``.

    Returns:
        ``(fig, ax)``. Contour axes span exactly the grid's coordinate ranges; heat-map
        cells are centred on the grid points, so the limits extend half a cell further.

    Masked values (non-finite, or non-positive under ``log``) are left blank (grey in heat
    maps) and counted in the title.
    """
    if ax is None:
        fig = new_figure((5.2, 4.4))
        ax = fig.add_subplot()
    else:
        fig = figure_of(ax)
    mappable, extend = _draw_contour(
        ax,
        ds,
        var,
        kind=kind,
        levels=levels,
        log=log,
        trajectories=trajectories,
        center_marker=center_marker,
        title=title,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
    )
    if colorbar and mappable is not None:
        _add_colorbar(fig, mappable, ax, scale_label(ds, var, log, levels), extend)
    return fig, ax


def scale_label(ds: xr.Dataset, var: str, log: bool, levels: object) -> str:
    """The colorbar's label: the variable and the colour scale's choice (log scale,
    quantile levels), so that a caption or reader can name it."""
    choices = [c for c, on in (("log scale", log), ("quantile levels", is_quantile(levels))) if on]
    return var_label(ds, var) + (f" ({', '.join(choices)})" if choices else "")


def plot_surface3d(
    ds: xr.Dataset,
    var: str = "train_loss",
    *,
    log: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
) -> tuple[Figure, Axes]:
    """Plot a 2D landscape as a 3D surface (mpl_toolkits ``Axes3D``) with a colorbar.

    Args:
        ds: 2D landscape (see :func:`plot_contour`).
        var: Variable to plot.
        log: Plot ``log10`` of the positive values (3D axes have no true log scale).
        ax: A 3D axes (``fig.add_subplot(projection="3d")``); created when omitted.
        title: Title; defaults to ``attrs["title"]`` or the variable's name.
        vmax: Clip values above this (in data units, before ``log``), like ``zmax`` in
            Li et al.'s ``h52vtp.py``; clipped values are counted in the title.
        cmap: Matplotlib colour-map name.

    Returns:
        ``(fig, ax)`` with ``ax`` the 3D axes.
    """
    if ax is None:
        fig = new_figure((6.0, 5.0))
        ax = fig.add_subplot(projection="3d")
    else:
        if getattr(ax, "name", "") != "3d":
            raise BasinscopeError(
                "plot_surface3d needs 3D axes; create them with fig.add_subplot(projection='3d')."
            )
        fig = figure_of(ax)
    alpha, beta, z, n_bad, n_nonpos = surface_grid(ds, var, log=log)
    n_clipped = 0
    if vmax is not None:
        n_clipped = int(np.ma.sum(z > vmax))
        z = np.ma.minimum(z, vmax)
    if log:
        z = np.ma.log10(z)
    label = var_label(ds, var)
    zlabel = f"log$_{{10}}$ {label}" if log else label
    a_grid, b_grid = np.meshgrid(alpha, beta)
    if finite_range([z]) is not None and alpha.size > 1 and beta.size > 1:
        surf = ax.plot_surface(  # type: ignore[attr-defined]
            a_grid,
            b_grid,
            z,
            cmap=cmap,
            rcount=min(beta.size, 200),
            ccount=min(alpha.size, 200),
            linewidth=0,
            antialiased=True,
        )
        _add_colorbar(fig, surf, ax, zlabel, shrink=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(r"$\alpha$", fontsize=LABEL_SIZE)
    ax.set_ylabel(r"$\beta$", fontsize=LABEL_SIZE)
    ax.set_zlabel(zlabel, fontsize=LABEL_SIZE)  # type: ignore[attr-defined]
    style_axes(ax)
    note = hidden_note(n_bad, n_nonpos, what="grid values")
    if n_clipped:
        note = "; ".join(p for p in (note, f"{n_clipped} values clipped at {vmax:g}") if p)
    base = title if title is not None else attr_str(ds.attrs, "title", label)
    ax.set_title(compose_title(base, note), fontsize=TITLE_SIZE)
    return fig, ax


def plot_side_by_side(
    datasets: Sequence[xr.Dataset],
    var: str = "train_loss",
    titles: Sequence[str] | None = None,
    trajectories_per_panel: Sequence[Sequence[Trajectory]] | None = None,
    kind: ContourKind = "contour",
    shared_levels: bool = True,
    *,
    levels: int | Sequence[float] | str = 30,
    log: bool = False,
    vmax: float | None = None,
    cmap: str = "viridis",
    suptitle: str | None = None,
) -> Figure:
    """Panels of :func:`plot_contour` in one row, e.g. random start vs pre-trained start.

    Args:
        datasets: One 2D landscape per panel.
        var: Variable plotted in every panel.
        titles: One title per panel (default: each landscape's own title).
        trajectories_per_panel: One sequence of trajectories per panel.
        kind: ``"contour"``, ``"filled"`` or ``"heatmap"``.
        shared_levels: Use the same levels and colour scale in every panel (computed over
            all panels' finite values) with a single colorbar; otherwise each panel gets
            its own scale and colorbar.
        levels, log, vmax, cmap: As in :func:`plot_contour`.
        suptitle: Optional title above all panels.

    Returns:
        The figure; its first ``len(datasets)`` axes are the panels.
    """
    n = len(datasets)
    if n == 0:
        raise BasinscopeError("plot_side_by_side needs at least one landscape.")
    titles_ = list(titles) if titles is not None else [None] * n
    trajs_ = list(trajectories_per_panel) if trajectories_per_panel is not None else [()] * n
    if len(titles_) != n or len(trajs_) != n:
        raise BasinscopeError(
            f"got {n} landscapes but {len(titles_)} titles and {len(trajs_)} trajectory lists; "
            "give one of each per landscape."
        )
    fig = new_figure((4.6 * n + 1.0, 4.4))
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    panel_levels: int | Sequence[float] | str = levels
    vmin = None
    shared: ScalarMappable | None = None
    shared_norm: Normalize | None = None
    if shared_levels:
        grids = [surface_grid(d, var, log=log)[2] for d in datasets]
        data_range = finite_range(grids)
        if is_quantile(levels):
            norm, lv = quantile_scale(grids)
            shared_norm = norm
        else:
            norm, lv = color_scale(data_range, levels=levels, log=log, vmax=vmax)
        panel_levels, vmin, vmax = lv, float(norm.vmin), float(norm.vmax)  # type: ignore[arg-type]
        shared = ScalarMappable(norm=norm, cmap=colormaps[cmap])
        shared_extend = colorbar_extend(data_range, norm)
    label = scale_label(datasets[0], var, log, levels)
    drawn = []
    for ax, d, t, tr in zip(axes, datasets, titles_, trajs_):
        m, extend = _draw_contour(
            ax,
            d,
            var,
            kind=kind,
            levels=panel_levels,
            log=log,
            trajectories=tr,
            center_marker=True,
            title=t,
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            shared_norm=shared_norm,
        )
        if m is not None:
            drawn.append(m)
            if shared is None:
                _add_colorbar(fig, m, ax, label, extend)
    if shared is not None and drawn:
        # Filled contours share their levels, so their colorbar shows the same bands;
        # lines and heat maps get a continuous bar over the shared normalization.
        same = [m for m in drawn if getattr(m, "extend", None) == shared_extend]
        mappable = (same or drawn)[0] if kind == "filled" else shared
        _add_colorbar(fig, mappable, axes, label, shared_extend)
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_SIZE + 1)
    return fig
