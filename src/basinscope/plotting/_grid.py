"""Grids and colour scales shared by the 2D plotting and export modules (private)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.colors import BoundaryNorm, LogNorm, Normalize
from matplotlib.ticker import MaxNLocator

from basinscope.errors import BasinscopeError
from basinscope.plotting._common import masked_values, require_var


def surface_grid(
    ds: xr.Dataset, var: str, *, log: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ma.MaskedArray, int, int]:
    """``(alpha, beta, Z, n_nonfinite, n_nonpositive)`` for ``ds[var]``.

    ``Z`` has shape ``(len(beta), len(alpha))`` (rows follow the y axis, as matplotlib and
    plotly expect), i.e. the transpose of the stored ``(alpha, beta)`` layout, with
    non-finite (and, under ``log``, non-positive) values masked.
    """
    for coord in ("alpha", "beta"):
        if coord not in ds.coords:
            raise BasinscopeError(
                f"a 2D landscape needs coordinates 'alpha' and 'beta'; found {list(ds.coords)}."
            )
    da = require_var(ds, var, ("alpha", "beta"))
    alpha = np.asarray(ds["alpha"].values, dtype=float)
    beta = np.asarray(ds["beta"].values, dtype=float)
    z, n_bad, n_nonpos = masked_values(np.asarray(da.values, dtype=float).T, log=log)
    return alpha, beta, z, n_bad, n_nonpos


def _nice_levels(lo: float, hi: float, n: int, *, exact_lo: bool, exact_hi: bool) -> np.ndarray:
    """About ``n`` evenly spaced round levels covering ``[lo, hi]`` (e.g. 0, 0.2, ..., 3.2).

    The levels extend to the next round value beyond the data, except at an ``exact_*``
    end (a user's ``vmin``/``vmax``), where the end value itself is the outermost level.
    """
    lv = MaxNLocator(nbins=max(n - 1, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    tol = 1e-9 * (hi - lo)
    if exact_lo:
        lv = np.concatenate([[lo], lv[lv > lo + tol]])
    if exact_hi:
        lv = np.concatenate([lv[lv < hi - tol], [hi]])
    return lv if lv.size >= 2 else np.linspace(lo, hi, n)


def color_scale(
    data_range: tuple[float, float] | None,
    *,
    levels: int | Sequence[float] = 30,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[Normalize, np.ndarray]:
    """Normalization and contour levels covering ``data_range`` (clipped to ``vmin``/``vmax``).

    An integer ``levels`` gives that many levels, evenly spaced, or log-spaced when ``log``.
    An explicit sequence is used as is (non-positive levels are dropped under ``log``).
    """
    lo, hi = data_range if data_range is not None else ((1.0, 10.0) if log else (0.0, 1.0))
    if not isinstance(levels, (int, np.integer)):
        lv = np.unique(np.asarray(levels, dtype=float))
        if log:
            lv = lv[lv > 0]
        if lv.size == 0:
            raise BasinscopeError("levels= has no usable (positive, for log=True) value.")
        lo, hi = (float(lv[0]), float(lv[-1])) if lv.size > 1 else (lo, hi)
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if log and lo <= 0:
        raise BasinscopeError(f"log=True needs a positive lower bound, got vmin={lo:g}.")
    if hi <= lo:
        hi = lo * 10.0 if log else lo + max(abs(lo), 1.0) * 1e-3 + 1e-12
    if isinstance(levels, (int, np.integer)):
        if levels < 2:
            raise BasinscopeError(f"levels= must be at least 2, got {levels}.")
        if log:
            lv = np.geomspace(lo, hi, int(levels))
        else:
            exact = {"exact_lo": vmin is not None, "exact_hi": vmax is not None}
            lv = _nice_levels(lo, hi, int(levels), **exact)
            lo, hi = float(lv[0]), float(lv[-1])
    norm: Normalize = LogNorm(vmin=lo, vmax=hi) if log else Normalize(vmin=lo, vmax=hi)
    return norm, lv


def is_uniform(x: np.ndarray) -> bool:
    """Whether ``x`` is strictly increasing with (numerically) constant spacing."""
    if x.size < 2:
        return False
    d = np.diff(x)
    return bool(np.all(d > 0) and np.allclose(d, d[0], rtol=1e-6, atol=0.0))


def colorbar_extend(data_range: tuple[float, float] | None, norm: Normalize) -> str:
    """Colorbar ``extend`` value: whether the data reach below/above ``norm``'s range."""
    if data_range is None:
        return "neither"
    below = data_range[0] < float(norm.vmin)  # type: ignore[arg-type]
    above = data_range[1] > float(norm.vmax)  # type: ignore[arg-type]
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
        (below, above), "neither"
    )


#: ``levels="quantile"``: contour levels at evenly spaced quantiles of the values.
QUANTILE = "quantile"
#: How many quantile levels (at most; equal quantiles merge).
QUANTILE_LEVELS = 21


def is_quantile(levels: object) -> bool:
    """Whether ``levels`` asks for quantile levels (the string ``"quantile"``)."""
    if isinstance(levels, str):
        if levels != QUANTILE:
            raise BasinscopeError(
                f"levels={levels!r}: expected a number of levels, the level values, or "
                f"{QUANTILE!r} (levels at evenly spaced quantiles of the values)"
            )
        return True
    return False


def quantile_scale(
    grids: Sequence[np.ma.MaskedArray], n: int = QUANTILE_LEVELS
) -> tuple[Normalize, np.ndarray]:
    """Levels at ``n`` evenly spaced quantiles (0, 5%, ..., 100%) of the unmasked values of
    ``grids``, and a :class:`~matplotlib.colors.BoundaryNorm` that gives each band between
    two levels its own colour: every band holds about as many grid points, so the low
    region of a loss surface (its basin) is resolved as finely as its walls, whatever the
    loss's range. Equal quantiles (a flat region) merge."""
    chunks = [np.ma.compressed(g) for g in grids]
    chunks = [c for c in chunks if c.size]
    if not chunks:
        lv = np.linspace(0.0, 1.0, n)
    else:
        lv = np.unique(np.quantile(np.concatenate(chunks), np.linspace(0.0, 1.0, n)))
        if lv.size < 2:
            lo = float(lv[0])
            lv = np.array([lo, lo + max(abs(lo), 1.0) * 1e-3 + 1e-12])
    return BoundaryNorm(lv, ncolors=256), lv
