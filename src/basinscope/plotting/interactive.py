"""Interactive plotly figures: rotatable 3D surfaces and 1D curves, as offline HTML files."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from matplotlib.colors import to_hex
from plotly.subplots import make_subplots

from basinscope.plotting._common import (
    attr_str,
    compose_title,
    hidden_note,
    masked_values,
    require_var,
    var_label,
)
from basinscope.plotting._grid import surface_grid
from basinscope.plotting.lines import (
    LEFT_COLOR,
    RIGHT_COLORS,
    alpha_label,
    default_line_title,
    endpoint_markers,
    line_style,
    line_variables,
)
from basinscope.plotting.trajectory import TRAJECTORY_COLORS, Trajectory

__all__ = ["line_figure", "surface_figure", "surface_html", "to_plotly_text"]

_GREEK = {r"\alpha": "α", r"\beta": "β", r"\theta": "θ", r"\delta": "δ", r"\cdot": "·"}
_DASH = {"-": "solid", "--": "dash", "-.": "dashdot", ":": "dot"}
_FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 13}


def to_plotly_text(text: str) -> str:
    """Turn matplotlib mathtext such as ``$\\theta_A$`` into plotly HTML (``θ<sub>A</sub>``).

    Only the small subset used by basinscope labels is handled: Greek letters, sub- and
    superscripts and thin spaces. The text is HTML-escaped first (labels, file names and
    settings come from the user), so only the ``<sub>``/``<sup>`` made here are markup.
    """

    def convert(match: re.Match[str]) -> str:
        s = match.group(1)
        for tex, uni in _GREEK.items():
            s = s.replace(tex, uni)
        s = s.replace(r"\,", " ").replace(r"\ ", " ")
        s = re.sub(r"_\{([^}]*)\}|_(\S)", lambda m: f"<sub>{m.group(1) or m.group(2)}</sub>", s)
        s = re.sub(r"\^\{([^}]*)\}|\^(\S)", lambda m: f"<sup>{m.group(1) or m.group(2)}</sup>", s)
        return s

    return re.sub(r"\$([^$]*)\$", convert, _esc(text))


def _esc(text: object) -> str:
    """``text`` with ``&``, ``<`` and ``>`` escaped: plotly renders labels as HTML."""
    return html.escape(str(text), quote=False)


def _with_gaps(values: np.ma.MaskedArray) -> list:
    """Masked entries become ``None`` (gaps in plotly), the rest plain floats."""
    data = np.asarray(values.filled(0.0), dtype=float).astype(object)
    data[np.ma.getmaskarray(values)] = None
    return data.tolist()


def _title(text: str) -> dict:
    return {"text": to_plotly_text(text).replace("\n", "<br>"), "x": 0.5, "xanchor": "center"}


def surface_figure(
    ds: xr.Dataset,
    var: str = "train_loss",
    *,
    log: bool = False,
    title: str | None = None,
    zmax: float | None = None,
    trajectories: Sequence[Trajectory] = (),
) -> go.Figure:
    """An interactive 3D surface of a 2D landscape.

    Args:
        ds: 2D landscape with coordinates ``alpha``/``beta`` and ``var`` stored as
            ``(alpha, beta)``.
        var: Variable to plot.
        log: Plot ``log10`` of the positive values.
        title: Title; defaults to ``attrs["title"]`` or the variable's name.
        zmax: Clip values above this (data units, before ``log``).
        trajectories: Paths to draw on the surface (their height is the surface value,
            bilinearly interpolated at each point; points off the grid are left out).

    Returns:
        A :class:`plotly.graph_objects.Figure`; non-finite (and, under ``log``,
        non-positive) values are ``None`` gaps and counted in the title.
    """
    alpha, beta, z, n_bad, n_nonpos = surface_grid(ds, var, log=log)
    if zmax is not None:
        z = np.ma.minimum(z, zmax)
    if log:
        z = np.ma.log10(z)
    label = _esc(var_label(ds, var))
    zlabel = f"log<sub>10</sub> {label}" if log else label
    surface = go.Surface(
        x=alpha.tolist(),
        y=beta.tolist(),
        z=_with_gaps(z),
        colorscale="Viridis",
        colorbar={"title": {"text": zlabel}},
        contours={"z": {"show": True, "usecolormap": True, "project": {"z": True}}},
        hovertemplate=f"α=%{{x:.4g}}<br>β=%{{y:.4g}}<br>{zlabel}=%{{z:.4g}}<extra></extra>",
        name=_esc(var),
    )
    fig = go.Figure(data=[surface])
    if trajectories and alpha.size > 1 and beta.size > 1:
        from scipy.interpolate import RegularGridInterpolator  # slow import, needed rarely

        interp = RegularGridInterpolator(
            (beta, alpha), np.ma.filled(z, np.nan), bounds_error=False, fill_value=np.nan
        )
        for i, traj in enumerate(trajectories):
            tz = np.ma.masked_invalid(interp(np.column_stack([traj.beta, traj.alpha])))
            color = to_hex(traj.color or TRAJECTORY_COLORS[i % len(TRAJECTORY_COLORS)])
            fig.add_trace(
                go.Scatter3d(
                    x=traj.alpha.tolist(),
                    y=traj.beta.tolist(),
                    z=_with_gaps(tz),
                    mode="lines+markers",
                    line={"color": color, "width": 5},
                    marker={"size": 2.5, "color": color},
                    name=to_plotly_text(traj.legend_label()),
                )
            )
    base = title if title is not None else attr_str(ds.attrs, "title", var_label(ds, var))
    fig.update_layout(
        title=_title(compose_title(base, hidden_note(n_bad, n_nonpos, what="grid values"))),
        font=_FONT,
        scene={
            "xaxis": {"title": {"text": "α"}},
            "yaxis": {"title": {"text": "β"}},
            "zaxis": {"title": {"text": zlabel}},
        },
        margin={"l": 10, "r": 10, "b": 10, "t": 60},
        legend={"x": 0.0, "y": 1.0},
    )
    return fig


def surface_html(
    ds: xr.Dataset,
    var: str,
    path: str | Path,
    *,
    log: bool = False,
    title: str | None = None,
    include_plotlyjs: bool | str = True,
    zmax: float | None = None,
    trajectories: Sequence[Trajectory] = (),
) -> Path:
    """Write :func:`surface_figure` as a standalone HTML page and return its path.

    With ``include_plotlyjs=True`` (the default) plotly.js is embedded (about 4.5 MB), so
    the page works offline; ``"cdn"`` gives a small file that loads plotly.js from the web.
    Missing parent folders are created.
    """
    fig = surface_figure(ds, var, log=log, title=title, zmax=zmax, trajectories=trajectories)
    from basinscope.store.atomic import atomic_path

    out = Path(path)
    with atomic_path(out, "figure") as tmp:
        fig.write_html(
            tmp,
            include_plotlyjs=include_plotlyjs,
            full_html=True,
            config={"displaylogo": False, "responsive": True},
        )
    return out


def line_figure(
    ds: xr.Dataset,
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    splits: Sequence[str] = ("train", "test"),
    log: bool = False,
    title: str | None = None,
) -> go.Figure:
    """An interactive version of :func:`~basinscope.plotting.plot_line` for a 1D landscape.

    Same layout and conventions: first metric on the left y axis (log scale with ``log``),
    the others on a secondary right axis, solid train / dashed test, dotted reference
    lines at the interpolation end points. Non-finite values are ``None`` gaps.
    """
    groups = line_variables(ds, metrics, splits)
    ordered = list(groups)
    left_metric, right_metrics = ordered[0], ordered[1:]
    fig = make_subplots(specs=[[{"secondary_y": bool(right_metrics)}]])
    alpha = np.asarray(ds["alpha"].values, dtype=float).tolist()
    n_bad = n_nonpos = 0
    for m_index, metric in enumerate(ordered):
        is_left = metric == left_metric
        color = to_hex(LEFT_COLOR if is_left else RIGHT_COLORS[(m_index - 1) % len(RIGHT_COLORS)])
        for s_index, (split, var) in enumerate(groups[metric]):
            values = require_var(ds, var, ("alpha",)).values
            masked, nb, npos = masked_values(values, log=log and is_left)
            n_bad += nb
            n_nonpos += npos
            style = line_style(split, s_index)
            fig.add_trace(
                go.Scatter(
                    x=alpha,
                    y=_with_gaps(masked),
                    mode="lines",
                    name=_esc(var_label(ds, var)),
                    line={"color": color, "dash": _DASH.get(style, "longdashdot"), "width": 2},
                ),
                secondary_y=False if is_left else True,
            )
    for x, label in endpoint_markers(ds.attrs):
        if alpha and min(alpha) <= x <= max(alpha):
            fig.add_vline(
                x=x,
                line={"dash": "dot", "color": "#595959", "width": 1.5},
                annotation_text=to_plotly_text(label),
                annotation_position="top right",
            )
    fig.update_xaxes(title_text=to_plotly_text(alpha_label(ds.attrs)))
    fig.update_yaxes(
        title_text=_esc(left_metric.replace("_", " ")),
        type="log" if log else "linear",
        color=to_hex(LEFT_COLOR),
        secondary_y=False,
    )
    if right_metrics:
        fig.update_yaxes(
            title_text=_esc(" / ".join(m.replace("_", " ") for m in right_metrics)),
            secondary_y=True,
        )
    base = default_line_title(ds.attrs) if title is None else title
    fig.update_layout(
        title=_title(compose_title(base, hidden_note(n_bad, n_nonpos, what="points"))),
        font=_FONT,
        template="plotly_white",
        hovermode="x unified",
    )
    return fig
