"""Shared helpers for the plotting modules (private).

Everything here works on plain :class:`xarray.Dataset` landscapes as described in
:mod:`basinscope.plotting` and creates figures through :class:`matplotlib.figure.Figure`
directly, so no pyplot state and no backend is ever touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from basinscope.errors import BasinscopeError

#: Font sizes used throughout (points); readable in a single-column figure.
TITLE_SIZE = 11
LABEL_SIZE = 10
TICK_SIZE = 9
LEGEND_SIZE = 8.5


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A stand-alone figure with constrained layout (no pyplot, no backend change)."""
    return Figure(figsize=figsize, layout="constrained")


def figure_of(ax: Axes) -> Figure:
    """The top-level figure holding ``ax`` (the one to save)."""
    parent = ax.figure  # a Figure, or a SubFigure whose ``.figure`` is the root Figure
    fig = getattr(parent, "figure", parent)
    if not isinstance(fig, Figure):  # pragma: no cover - axes always belong to a figure
        raise BasinscopeError("the given axes belong to no figure; create them with add_subplot.")
    return fig


def style_axes(ax: Axes) -> None:
    """Apply the house tick size to ``ax``."""
    ax.tick_params(labelsize=TICK_SIZE)


def attr_str(attrs: Mapping[str, Any], key: str, default: str = "") -> str:
    """``attrs[key]`` as a string, or ``default`` when missing or empty."""
    value = attrs.get(key)
    if value is None:
        return default
    text = str(value).strip()
    return text or default


def require_var(ds: xr.Dataset, var: str, dims: tuple[str, ...]) -> xr.DataArray:
    """``ds[var]`` with dimensions ordered as ``dims``, or a :class:`BasinscopeError`."""
    if var not in ds.data_vars:
        available = ", ".join(sorted(str(v) for v in ds.data_vars)) or "none"
        raise BasinscopeError(
            f"the landscape has no variable {var!r}; available variables: {available}."
        )
    da = ds[var]
    if set(da.dims) != set(dims):
        raise BasinscopeError(
            f"variable {var!r} has dimensions {tuple(da.dims)}, expected {dims}; "
            f"pass a {'1D' if len(dims) == 1 else '2D'} landscape."
        )
    return da.transpose(*dims)


def var_label(ds: xr.Dataset, var: str) -> str:
    """Human-readable name of ``var``: its ``long_name`` attribute or ``train_loss`` -> ``train loss``.

    A ``units`` attribute, when present, is appended in brackets.
    """
    attrs = ds[var].attrs if var in ds.variables else {}
    label = attr_str(attrs, "long_name", var.replace("_", " "))
    units = attr_str(attrs, "units")
    return f"{label} [{units}]" if units else label


def masked_values(values: np.ndarray, *, log: bool = False) -> tuple[np.ma.MaskedArray, int, int]:
    """Mask values that cannot be drawn.

    Returns ``(masked, n_nonfinite, n_nonpositive)``: NaN and ±inf are always masked; with
    ``log`` the finite values ``<= 0`` are masked too (and counted separately).
    """
    values = np.asarray(values, dtype=float)
    nonfinite = ~np.isfinite(values)
    mask = nonfinite.copy()
    n_nonpositive = 0
    if log:
        nonpositive = np.zeros_like(mask)
        np.less_equal(values, 0.0, out=nonpositive, where=~nonfinite)
        n_nonpositive = int(nonpositive.sum())
        mask |= nonpositive
    return np.ma.masked_array(values, mask=mask), int(nonfinite.sum()), n_nonpositive


def hidden_note(n_nonfinite: int, n_nonpositive: int = 0, *, what: str = "points") -> str:
    """A short note such as ``"3 non-finite points not shown"`` (empty when nothing is hidden)."""
    parts = []
    if n_nonfinite:
        parts.append(f"{n_nonfinite} non-finite {what}")
    if n_nonpositive:
        parts.append(f"{n_nonpositive} non-positive {what} (log scale)")
    return " and ".join(parts) + " not shown" if parts else ""


def compose_title(title: str, note: str) -> str:
    """``title`` with ``note`` on a second line in parentheses (when there is a note)."""
    if not note:
        return title
    return f"{title}\n({note})" if title else f"({note})"


def finite_range(arrays: list[np.ma.MaskedArray]) -> tuple[float, float] | None:
    """Min and max over the unmasked entries of ``arrays``, or ``None`` when there are none."""
    chunks = [np.ma.compressed(a) for a in arrays]
    chunks = [c for c in chunks if c.size]
    if not chunks:
        return None
    allv = np.concatenate(chunks)
    return float(allv.min()), float(allv.max())


def direction_label(attrs: Mapping[str, Any], axis: int) -> str:
    """Axis label for a 2D plane coordinate (``axis`` 0 -> alpha/x, 1 -> beta/y).

    ``attrs["x_label"]`` / ``attrs["y_label"]`` override the default, which names the
    direction and its normalization, e.g. ``α  (step along δ₁, filter-normalized)``.
    """
    override = attr_str(attrs, "x_label" if axis == 0 else "y_label")
    if override:
        return override
    symbol = r"$\alpha$" if axis == 0 else r"$\beta$"
    direction = r"$\delta_1$" if axis == 0 else r"$\delta_2$"
    norm = attr_str(attrs, "normalization")
    if norm and norm.lower() != "none":
        return f"{symbol}  (step along {direction}, {norm}-normalized)"
    return f"{symbol}  (step along {direction})"
