"""Optimization trajectories projected onto a 2D landscape plane."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from basinscope.errors import BasinscopeError
from basinscope.plotting._common import LEGEND_SIZE

__all__ = ["TRAJECTORY_COLORS", "Trajectory", "draw_trajectory"]

#: Default trajectory colours, chosen to stand out on the viridis colour map.
TRAJECTORY_COLORS = ("tab:red", "tab:orange", "magenta", "black", "tab:cyan", "tab:pink")


def _as_1d(name: str, value: object, n: int | None) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 1:
        raise BasinscopeError(f"Trajectory.{name} must be 1-D, got shape {arr.shape}.")
    if n is not None and arr.shape[0] != n:
        raise BasinscopeError(
            f"Trajectory.{name} has {arr.shape[0]} entries but alpha has {n}; "
            "give one value per trajectory point."
        )
    return arr


@dataclass(frozen=True)
class Trajectory:
    """A path through parameter space, projected onto the plane of a 2D landscape.

    Attributes:
        label: Legend entry, e.g. ``"SGD from pre-trained"``.
        alpha: Plane coordinate along the first direction (x axis), one per point.
        beta: Plane coordinate along the second direction (y axis), one per point.
        steps: Optional training step of each point; the first and last are annotated.
        distance: Optional distance of each point from the plane (how much of the path
            the projection hides); its maximum is reported in the legend entry.
        color: Optional matplotlib colour; by default one of :data:`TRAJECTORY_COLORS`.

    The arrays are converted to 1-D float arrays (``steps`` keeps integer values when
    given integers) and must all have the same length.
    """

    label: str
    alpha: np.ndarray
    beta: np.ndarray
    steps: np.ndarray | None = None
    distance: np.ndarray | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        alpha = _as_1d("alpha", self.alpha, None)
        if alpha.size == 0:
            raise BasinscopeError(f"trajectory {self.label!r} has no points.")
        n = alpha.shape[0]
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", _as_1d("beta", self.beta, n))
        if self.steps is not None:
            steps = np.asarray(self.steps)
            _as_1d("steps", steps, n)
            object.__setattr__(self, "steps", steps)
        if self.distance is not None:
            object.__setattr__(self, "distance", _as_1d("distance", self.distance, n))

    def __len__(self) -> int:
        return int(self.alpha.shape[0])

    def legend_label(self) -> str:
        """The legend entry: the label, plus the largest off-plane distance when known."""
        if self.distance is None:
            return self.label
        finite = self.distance[np.isfinite(self.distance)]
        if finite.size == 0:
            return self.label
        return f"{self.label} (max. off-plane distance {np.abs(finite).max():.3g})"


def _format_step(step: object) -> str:
    value = float(step)  # type: ignore[arg-type]
    if value.is_integer():
        return f"step {int(value)}"
    return f"step {value:g}"


def draw_trajectory(
    ax: Axes,
    traj: Trajectory,
    *,
    color: str | None = None,
    annotate_steps: bool = True,
    zorder: float = 4.0,
) -> list[Line2D]:
    """Draw ``traj`` on ``ax``: a line with small markers, a circle at the start, a star at the end.

    Args:
        ax: Axes whose data coordinates are (alpha, beta).
        traj: The trajectory to draw.
        color: Colour to use when ``traj.color`` is unset (defaults to the first of
            :data:`TRAJECTORY_COLORS`).
        annotate_steps: Write the first and last training steps next to the end markers
            (only when ``traj.steps`` is given).
        zorder: Drawing order; above contours and images by default.

    Returns:
        The three :class:`~matplotlib.lines.Line2D` artists: path (labelled for the legend),
        start marker and end marker (both excluded from the legend).
    """
    c = traj.color or color or TRAJECTORY_COLORS[0]
    n = len(traj)
    (path,) = ax.plot(
        traj.alpha,
        traj.beta,
        color=c,
        linewidth=1.6,
        marker="o",
        markersize=2.5 if n > 30 else 3.5,
        zorder=zorder,
        label=traj.legend_label(),
    )
    (start,) = ax.plot(
        traj.alpha[:1],
        traj.beta[:1],
        linestyle="none",
        color=c,
        marker="o",
        markersize=8,
        markerfacecolor=c,
        markeredgecolor="white",
        markeredgewidth=1.2,
        zorder=zorder + 0.1,
        label="_nolegend_",
    )
    (end,) = ax.plot(
        traj.alpha[-1:],
        traj.beta[-1:],
        linestyle="none",
        color=c,
        marker="*",
        markersize=13,
        markerfacecolor=c,
        markeredgecolor="white",
        markeredgewidth=1.0,
        zorder=zorder + 0.1,
        label="_nolegend_",
    )
    if annotate_steps and traj.steps is not None:
        ends = (
            [(0, (-6, -10), "right")]
            if n == 1
            else [(0, (-6, -10), "right"), (n - 1, (7, 5), "left")]
        )
        for idx, offset, ha in ends:
            ax.annotate(
                _format_step(traj.steps[idx]),
                xy=(traj.alpha[idx], traj.beta[idx]),
                xytext=offset,
                textcoords="offset points",
                ha=ha,
                va="center",
                fontsize=LEGEND_SIZE,
                color=c,
                zorder=zorder + 0.2,
                bbox={
                    "boxstyle": "round,pad=0.15",
                    "facecolor": "white",
                    "alpha": 0.7,
                    "linewidth": 0,
                },
            )
    return [path, start, end]
