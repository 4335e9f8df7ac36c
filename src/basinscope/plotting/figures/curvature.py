"""Figures of the curvature results (Hessian spectra, eigenpairs, spectral densities) and
of the sharpness results, registered by kind with :func:`basinscope.plotting.plots`. Each
draws its result on ``ax`` (or a new figure) and returns ``(fig, ax)``;
:func:`basinscope.plotting.plot` dispatches to it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from basinscope.plotting._common import (
    LABEL_SIZE,
    LEGEND_SIZE,
    TICK_SIZE,
    TITLE_SIZE,
    new_figure,
    style_axes,
)
from basinscope.plotting.dispatch import plots
from basinscope.plotting.spectrum import plot_per_module, plot_spectral_density

__all__ = [
    "plot_eigenpairs",
    "plot_hessian",
    "plot_sharpness",
    "plot_sharpness_measures",
    "plot_spectral_density_result",
]


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size)
    return fig, fig.add_subplot()


def _draw_ends(ax: Any, ends: list[tuple[str, Any]], trace: Any = None) -> None:
    """Eigenvalues of each end as points (filled: converged, hollow: not), the trace in
    the title."""
    labels: list[str] = []
    for (name, pairs), color in zip(ends, ("tab:blue", "tab:red")):
        x0 = len(labels)
        vals = np.asarray(pairs.eigenvalues, dtype=np.float64)
        conv = np.asarray(pairs.converged, dtype=bool)
        xs = np.arange(x0, x0 + len(vals))
        ax.vlines(xs, 0.0, vals, color=color, lw=1.2)
        if conv.any():
            ax.scatter(xs[conv], vals[conv], color=color, zorder=3, label=f"{name} (converged)")
        if (~conv).any():
            ax.scatter(
                xs[~conv],
                vals[~conv],
                facecolors="white",
                edgecolors=color,
                zorder=3,
                label=f"{name} (not converged)",
            )
        labels += [f"{name} {i + 1}" for i in range(len(vals))]
    ax.axhline(0.0, color="0.5", lw=0.7)
    if labels:
        ax.set_xticks(range(len(labels)), labels, fontsize=TICK_SIZE)
        ax.legend(fontsize=LEGEND_SIZE)
    else:
        ax.text(0.5, 0.5, "no eigenvalues computed", ha="center", va="center",
                transform=ax.transAxes, fontsize=LABEL_SIZE)  # fmt: skip
    ax.set_ylabel("eigenvalue", fontsize=LABEL_SIZE)
    op = next((p.semantics.get("operator") for _, p in ends if p.semantics), "operator")
    title = f"{op} eigenvalues (Lanczos, algebraic order)"
    if trace is not None:
        ci = f" ± {trace.ci_halfwidth:.2g}" if trace.ci_halfwidth else ""
        title += f"\ntrace {trace.estimate:.4g}{ci} ({trace.method})"
    ax.set_title(title, fontsize=TITLE_SIZE)
    style_axes(ax)


@plots("eigenpairs")
def plot_eigenpairs(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The eigenvalues, each marked converged (filled) or not (hollow)."""
    fig, ax = _axes(ax, (5.2, 3.6))
    _draw_ends(ax, [("top" if r.which != "smallest" else "bottom", r)])
    return fig, ax


@plots("spectral_density")
def plot_spectral_density_result(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The smoothed eigenvalue density on a log axis (Ghorbani et al. 2019, Fig. 1)."""
    return plot_spectral_density(r, ax=ax)


@plots("hessian")
def plot_hessian(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The eigenvalues at both ends with the trace; beside them the spectral density and the
    per-layer blocks when they were computed. On a given ``ax``: the eigenvalues only."""
    ends = [(name, p) for name, p in (("top", r.top), ("bottom", r.bottom)) if p is not None]
    panels = 1 + (r.density is not None) + bool(r.per_module)
    if ax is not None:
        _draw_ends(ax, ends, r.trace)
        return ax.figure, ax
    fig = new_figure((4.8 * panels, 3.8))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _draw_ends(axes[0], ends, r.trace)
    i = 1
    if r.density is not None:
        plot_spectral_density(r.density, ax=axes[i])
        i += 1
    if r.per_module:
        plot_per_module(r.per_module, ax=axes[i])
    return fig, axes[0]


@plots("sharpness")
def plot_sharpness(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The increase of each restart, sample, direction or batch, and the reported value."""
    fig, ax = _axes(ax, (5.6, 3.6))
    vals = np.asarray(r.values, dtype=np.float64)
    unit = {
        "worst_case": "restart",
        "adaptive": "restart" if r.params.get("kind", "worst") == "worst" else "sample",
        "average": "sample",
        "filter_normalized": "direction",
        "m_sharpness": "batch",
    }.get(r.measure, "draw")
    ax.bar(np.arange(len(vals)), vals, color="#4c72b0", alpha=0.8, label=f"each {unit}")
    ax.axhline(r.value, color="tab:red", lw=1.4, label=f"{r.measure} = {r.value:.4g}")
    if r.std_error is not None and math.isfinite(r.std_error):
        ax.axhspan(r.value - r.std_error, r.value + r.std_error, color="tab:red", alpha=0.15,
                   label="± standard error")  # fmt: skip
    ax.axhline(0.0, color="0.5", lw=0.7)
    ax.set_xlabel(unit, fontsize=LABEL_SIZE)
    relative = r.params.get("relative") is True  # Keskar et al.: percent of 1 + L(theta)
    ax.set_ylabel("increase, % of 1 + L" if relative else "loss increase", fontsize=LABEL_SIZE)
    ax.set_title(f"{r.measure} sharpness at base loss {r.base_loss:.4f}", fontsize=TITLE_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig, ax


@plots("sharpness_measures")
def plot_sharpness_measures(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """One bar per measure (with its standard error where it has one)."""
    fig, ax = _axes(ax, (6.5, 3.6))
    results = r.measures
    names = [m.measure for m in results]
    vals = [m.value for m in results]
    errs = [m.std_error or 0.0 for m in results]
    ax.bar(names, vals, yerr=errs, color="#4c72b0", capsize=4)
    ax.axhline(0.0, color="0.5", lw=0.7)
    ax.set_ylabel("sharpness (loss increase)", fontsize=LABEL_SIZE)
    ax.set_title(
        f"sharpness at base loss {results[0].base_loss:.4f}" if results else "sharpness",
        fontsize=TITLE_SIZE,
    )
    ax.tick_params(axis="x", rotation=20)
    style_axes(ax)
    return fig, ax
