"""Figures of the landscape results (lines, planes, curvature maps) and of training runs,
registered by kind with :func:`basinscope.plotting.plots`. Each draws its result on ``ax``
(or a new figure) and returns ``(fig, ax)``; :func:`basinscope.plotting.plot` dispatches to
it. The other figures of a landscape (every variable as contour, filled contour, heatmap,
3D, HTML and VTP) are :func:`basinscope.plotting.run.landscape_figures`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes
from basinscope.plotting.dispatch import plots
from basinscope.plotting.lines import plot_line
from basinscope.plotting.run import (
    default_levels,
    default_variables,
    line_groups,
    trajectories_of,
)
from basinscope.plotting.surfaces import plot_contour

__all__ = ["plot_landscape", "plot_train"]


@plots("landscape")
def plot_landscape(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """A line: its metrics along alpha (loss left, accuracy right; train solid, test dashed).
    A plane: the contours of its first loss (a curvature map's ratio), with the projected
    trajectories."""
    ds = r.dataset
    if "beta" not in ds.dims:
        splits, metrics = line_groups(ds)
        return plot_line(ds, metrics=metrics, splits=splits, ax=ax)
    var = default_variables(ds)[0]
    levels = default_levels(var, log=False)
    return plot_contour(
        ds, var, kind="contour", levels=levels, trajectories=trajectories_of(r), ax=ax
    )


@plots("train")
def plot_train(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The minibatch loss of every update (log scale), and the evaluation loss if recorded."""
    if ax is None:
        fig = new_figure((5.0, 3.2))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    h = r.history
    ax.plot(np.asarray(h["step"]), np.asarray(h["loss"]), lw=1, label="minibatch loss")
    if "eval_loss" in h:
        ax.plot(np.asarray(h["eval_step"]), np.asarray(h["eval_loss"]), "o-", ms=3, label="eval")
        ax.legend(fontsize=LEGEND_SIZE)
    ax.set_xlabel("step", fontsize=LABEL_SIZE)
    ax.set_ylabel("minibatch loss", fontsize=LABEL_SIZE)
    if np.all(np.asarray(h["loss"]) > 0):
        ax.set_yscale("log")
    ax.set_title("training loss", fontsize=LABEL_SIZE)
    style_axes(ax)
    return fig, ax
