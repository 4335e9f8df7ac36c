"""Figures of the connectivity results (barriers, ...), registered by kind with
:func:`basinscope.plotting.plots`. Each draws its result on ``ax`` (or a new figure) and
returns ``(fig, ax)``; :func:`basinscope.plotting.plot` dispatches to it."""

from __future__ import annotations

from typing import Any

import numpy as np

from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, TICK_SIZE, new_figure, style_axes
from basinscope.plotting.dispatch import plots

__all__ = ["plot_barrier", "plot_barrier_matrix"]


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size)
    return fig, fig.add_subplot()


@plots("barrier")
def plot_barrier(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The curve on the line with the chord (``linear``) or the endpoints' mean, and the
    worst alpha marked."""
    fig, ax = _axes(ax, (5.2, 3.5))
    a = np.asarray(r.alphas, dtype=np.float64)
    v = np.asarray(r.values, dtype=np.float64)
    ax.plot(a, v, "o-", ms=3, lw=1.4, color="#4c72b0", label=f"{r.metric} on the line")
    f0, f1, w = r.f0, r.f1, r.worst_alpha
    if r.definition == "linear":
        ax.plot([0.0, 1.0], [f0, f1], "--", color="0.45", lw=1, label="chord")
        base = f0 + w * (f1 - f0)
    else:
        base = 0.5 * (f0 + f1)
        ax.axhline(base, ls="--", color="0.45", lw=1, label="mean of the endpoints")
    ax.vlines(w, base, r.f_worst, color="tab:red", lw=1.6)
    ax.plot([w], [r.f_worst], "v", color="tab:red", ms=7, label=f"worst alpha {w:.3f}")
    ax.set_xlabel(f"alpha  ({r.models[0]} -> {r.models[1]})", fontsize=LABEL_SIZE)
    ax.set_ylabel(f"{r.split} {r.metric}", fontsize=LABEL_SIZE)
    ci = f", {int(100 * r.ci_level)}% CI [{r.ci[0]:.3g}, {r.ci[1]:.3g}]" if r.ci else ""
    ax.set_title(f"{r.definition} barrier {r.value:.4g}{ci}", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig, ax


@plots("barrier_matrix")
def plot_barrier_matrix(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The pairwise barriers as an annotated heatmap."""
    matrix, labels = np.asarray(r.matrix, dtype=np.float64), list(r.labels)
    m = len(labels)
    size = max(3.6, 0.6 * m + 2.4)
    fig, ax = _axes(ax, (size + 0.8, size))
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(m), labels, rotation=45, ha="right", fontsize=TICK_SIZE)
    ax.set_yticks(range(m), labels, fontsize=TICK_SIZE)
    top = float(np.nanmax(matrix)) if matrix.size else 0.0
    for i in range(m):
        for j in range(m):
            color = "white" if matrix[i, j] < 0.5 * top else "black"
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.3g}",
                ha="center",
                va="center",
                fontsize=TICK_SIZE,
                color=color,
            )
    fig.colorbar(im, ax=ax, label=f"{r.definition} barrier ({r.metric})")
    ax.set_title(f"pairwise {r.definition} barriers of the {r.metric}", fontsize=LABEL_SIZE)
    return fig, ax
