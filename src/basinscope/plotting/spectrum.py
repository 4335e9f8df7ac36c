"""Curvature spectra: SLQ eigenvalue densities and per-module curvature bars.

:func:`plot_spectral_density` draws the Gaussian-smoothed density of a
:class:`~basinscope.curvature.slq.SpectralDensity` on a logarithmic y axis, as in
Ghorbani, Krishnan & Xiao (2019), Fig. 1, where the log scale makes the few outlier
eigenvalues next to the bulk visible. :func:`plot_per_module` compares the modules of a
:func:`~basinscope.curvature.per_module.per_module_curvature` result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from basinscope.errors import BasinscopeError
from basinscope.plotting._common import (
    LABEL_SIZE,
    LEGEND_SIZE,
    TITLE_SIZE,
    figure_of,
    new_figure,
    style_axes,
)

if TYPE_CHECKING:
    from basinscope.curvature.per_module import ModuleCurvature
    from basinscope.curvature.slq import SpectralDensity

__all__ = ["plot_per_module", "plot_spectral_density"]

#: Densities below this fraction of the peak are clipped on the log axis (its lower limit).
LOG_FLOOR = 1e-6


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig = new_figure(figsize)
        return fig, fig.add_subplot()
    return figure_of(ax), ax


def plot_spectral_density(
    sd: SpectralDensity,
    *,
    sigma: float | None = None,
    log: bool = True,
    ax: Axes | None = None,
    title: str | None = None,
    n_points: int = 1000,
) -> tuple[Figure, Axes]:
    """Plot the smoothed eigenvalue density of ``sd`` against the eigenvalue.

    Args:
        sd: The result of :func:`~basinscope.curvature.slq.spectral_density`.
        sigma: Gaussian kernel width; ``sd.default_sigma()`` (1% of the node spread) when
            omitted.
        log: Logarithmic density axis (Ghorbani et al. 2019, Fig. 1); values below
            :data:`LOG_FLOOR` times the peak are clipped to it.
        ax: Axes to draw on; a new 5.2 x 3.6 inch figure is created when omitted.
        title: Title; defaults to the operator, dimension and SLQ settings.
        n_points: Grid points (``sd.default_grid(n_points)``).

    Returns:
        ``(fig, ax)``. The smallest and largest Ritz values over all runs are marked with
        dotted vertical lines and their values.
    """
    sigma = sd.default_sigma() if sigma is None else float(sigma)
    if not sigma > 0:
        raise BasinscopeError(f"sigma must be a positive kernel width, got {sigma}")
    fig, ax = _axes(ax, (5.2, 3.6))
    grid = sd.default_grid(n_points, pad=max(6.0 * sigma, 0.02 * max(sd.spread, 1e-12)))
    dens = sd.density(grid, sigma)
    if log:
        peak = float(dens.max()) if dens.size else 1.0
        floor = LOG_FLOOR * peak if peak > 0 else LOG_FLOOR
        dens = np.maximum(dens, floor)
        ax.set_yscale("log")
        ax.set_ylim(floor, 3.0 * max(peak, floor))
    ax.plot(grid, dens, color="tab:blue", lw=1.2)
    if not log:
        ax.fill_between(grid, dens, color="tab:blue", alpha=0.15)
    lo, hi = sd.extremes()
    for value, name, align in ((lo, "min", "left"), (hi, "max", "right")):
        ax.axvline(value, color="0.3", ls=":", lw=1.0)
        ax.annotate(
            f"$\\lambda_{{\\mathrm{{{name}}}}}\\approx${value:.4g}",
            xy=(value, 0.97),
            xycoords=("data", "axes fraction"),
            ha=align,
            va="top",
            fontsize=LEGEND_SIZE,
            xytext=(3 if align == "left" else -3, 0),
            textcoords="offset points",
        )
    ax.set_xlabel("eigenvalue", fontsize=LABEL_SIZE)
    ax.set_ylabel("density" + (" (log scale)" if log else ""), fontsize=LABEL_SIZE)
    if title is None:
        op = sd.semantics.get("operator", "operator")
        title = (
            f"{op} eigenvalue density\n(SLQ: n={sd.dimension}, {sd.num_runs} runs x "
            f"{sd.lanczos_steps} steps, σ={sigma:.2g})"
        )
    ax.set_title(title, fontsize=TITLE_SIZE)
    style_axes(ax)
    return fig, ax


def plot_per_module(
    results: Sequence[ModuleCurvature], ax: Axes | None = None, *, title: str | None = None
) -> tuple[Figure, Axes]:
    """Grouped bars of each module's top eigenvalue and trace (its diagonal block).

    Traces estimated stochastically carry error bars of their confidence-interval
    half-width; missing quantities (``top=False`` or ``trace=False``) are left out.
    Returns ``(fig, ax)``.
    """
    if not results:
        raise BasinscopeError("plot_per_module needs at least one ModuleCurvature result")
    fig, ax = _axes(ax, (max(4.0, 0.9 * len(results) + 2.0), 3.6))
    names = [r.module or "(root)" for r in results]
    x = np.arange(len(results))
    tops = [np.nan if r.top_eigenvalue is None else r.top_eigenvalue for r in results]
    traces = [np.nan if r.trace is None else r.trace.estimate for r in results]
    errs = [0.0 if r.trace is None else r.trace.ci_halfwidth for r in results]
    has_top = not all(np.isnan(tops))
    has_trace = not all(np.isnan(traces))
    width = 0.4 if has_top and has_trace else 0.7
    if has_top:
        ax.bar(
            x - width / 2 if has_trace else x, tops, width, label="top eigenvalue", color="tab:blue"
        )
    if has_trace:
        ax.bar(
            x + width / 2 if has_top else x,
            traces,
            width,
            yerr=errs if any(errs) else None,
            capsize=3,
            label="trace",
            color="tab:orange",
        )
    ax.axhline(0.0, color="0.4", lw=0.6)
    ax.set_xticks(x, [f"{n}\n({r.num_params})" for n, r in zip(names, results)])
    ax.set_xlabel("module (parameters)", fontsize=LABEL_SIZE)
    ax.set_ylabel("diagonal-block curvature", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    op = next((r.trace.semantics.get("operator") for r in results if r.trace is not None), None)
    ax.set_title(title or f"Per-module {op or 'curvature'} blocks", fontsize=TITLE_SIZE)
    style_axes(ax)
    return fig, ax
