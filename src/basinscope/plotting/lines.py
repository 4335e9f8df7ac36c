"""1D landscapes: loss and accuracy along a line in parameter space (Li et al. 2018, Fig. 2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from basinscope.errors import BasinscopeError
from basinscope.plotting._common import (
    LABEL_SIZE,
    LEGEND_SIZE,
    TITLE_SIZE,
    attr_str,
    compose_title,
    figure_of,
    hidden_note,
    masked_values,
    new_figure,
    require_var,
    style_axes,
    var_label,
)

__all__ = ["LEFT_COLOR", "RIGHT_COLORS", "line_variables", "plot_line"]

#: Colour of the left-axis metric (normally the loss).
LEFT_COLOR = "tab:blue"
#: Colours of the right-axis metrics (accuracy first, then e.g. error).
RIGHT_COLORS = ("tab:red", "tab:green", "tab:purple", "tab:brown")
_SPLIT_STYLES = {"train": "-", "test": "--"}
_OTHER_STYLES = ("-.", ":", (0, (5, 1, 1, 1)))


def line_variables(
    ds: xr.Dataset, metrics: Sequence[str], splits: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """The ``<split>_<metric>`` variables of ``ds`` to draw, grouped by metric.

    Returns ``{metric: [(split, var), ...]}`` in the order of ``metrics`` and ``splits``,
    leaving out combinations that ``ds`` lacks. Raises :class:`BasinscopeError` when none
    is present, or when ``ds`` has no ``alpha`` coordinate.
    """
    if "alpha" not in ds.coords:
        raise BasinscopeError(
            f"a 1D landscape needs an 'alpha' coordinate; found coordinates {list(ds.coords)}."
        )
    found: dict[str, list[tuple[str, str]]] = {}
    for metric in metrics:
        pairs = [(s, f"{s}_{metric}") for s in splits if f"{s}_{metric}" in ds.data_vars]
        if pairs:
            found[metric] = pairs
    if not found:
        wanted = ", ".join(f"{s}_{m}" for m in metrics for s in splits)
        available = ", ".join(sorted(str(v) for v in ds.data_vars)) or "none"
        raise BasinscopeError(
            f"none of the variables {wanted} is in the landscape; available: {available}. "
            "Choose metrics= and splits= that match."
        )
    return found


def line_style(split: str, index: int) -> Any:
    """Line style of a split: solid train, dashed test, others from a fixed cycle."""
    return _SPLIT_STYLES.get(split, _OTHER_STYLES[index % len(_OTHER_STYLES)])


def endpoint_markers(attrs: Mapping[str, Any]) -> list[tuple[float, str]]:
    """Reference points to mark on a 1D landscape: ``[(alpha, label), ...]``.

    Interpolations mark ``θ_A`` at 0 and ``θ_B`` at 1 (``attrs["label_a"]`` /
    ``attrs["label_b"]`` override the names); random lines mark the centre at 0
    (``attrs["label_center"]``, default ``θ*``).
    """
    kind = attr_str(attrs, "kind")
    if kind == "interpolation":
        return [
            (0.0, attr_str(attrs, "label_a", r"$\theta_A$")),
            (1.0, attr_str(attrs, "label_b", r"$\theta_B$")),
        ]
    if kind == "random_line":
        return [(0.0, attr_str(attrs, "label_center", r"$\theta^*$"))]
    return []


def alpha_label(attrs: Mapping[str, Any]) -> str:
    """x-axis label defining α for the landscape's ``kind`` (``attrs["x_label"]`` overrides)."""
    override = attr_str(attrs, "x_label")
    if override:
        return override
    kind = attr_str(attrs, "kind")
    if kind == "interpolation":
        la = attr_str(attrs, "label_a", r"$\theta_A$")
        lb = attr_str(attrs, "label_b", r"$\theta_B$")
        return rf"interpolation coefficient $\alpha$  ($\alpha$=0: {la}, $\alpha$=1: {lb})"
    if kind == "random_line":
        norm = attr_str(attrs, "normalization")
        suffix = f", {norm}-normalized" if norm and norm.lower() != "none" else ""
        return (
            rf"step $\alpha$ along random direction $\delta$  ($\theta^* + \alpha\delta${suffix})"
        )
    return r"$\alpha$"


def default_line_title(attrs: Mapping[str, Any]) -> str:
    """Title from ``attrs["title"]`` or, failing that, from the landscape's ``kind``."""
    title = attr_str(attrs, "title")
    if title:
        return title
    kind = attr_str(attrs, "kind")
    if kind == "interpolation":
        return "Linear interpolation"
    if kind == "random_line":
        norm = attr_str(attrs, "normalization")
        return f"Random direction ({norm}-normalized)" if norm else "Random direction"
    return ""


def plot_line(
    ds: xr.Dataset,
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    splits: Sequence[str] = ("train", "test"),
    log: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """Plot a 1D landscape: loss on the left axis, accuracy (or error) on a twin right axis.

    Li et al. (2018), Fig. 2 style: the first metric (normally the loss) is blue on the left
    axis, the others (accuracy, error) red/green on a twin right axis; train is solid and
    test dashed. One legend lists the curves of both axes: below the axes (in
    ``fig.legends``) when the figure is created here, inside ``ax`` (``ax.get_legend()``)
    when ``ax`` is given. Interpolations get dotted
    vertical lines at α=0 and α=1 labelled ``θ_A``/``θ_B`` (or ``attrs["label_a"]`` /
    ``attrs["label_b"]``); random lines get one at the centre α=0.

    Args:
        ds: 1D landscape with coordinate ``alpha`` and variables ``<split>_<metric>``.
        metrics: Metrics to draw, in order; the first present one goes on the left axis.
        splits: Data splits to draw; combinations missing from ``ds`` are skipped.
        log: Logarithmic scale for the left (loss) axis.
        ax: Axes to draw on; a new 6 x 4.4 inch figure is created when omitted.
        title: Title; defaults to ``ds.attrs["title"]`` or a description of ``kind``.

    Returns:
        ``(fig, ax)`` with ``ax`` the left axis; the twin right axis, when there is one, is
        the last of ``fig.axes``.

    Non-finite values (NaN, inf from far extrapolation), and non-positive values on a log
    axis, are left out as gaps and their count is added to the title.
    """
    groups = line_variables(ds, metrics, splits)
    owns_figure = ax is None
    if ax is None:
        fig = new_figure((6.0, 4.4))
        ax = fig.add_subplot()
    else:
        fig = figure_of(ax)
    alpha = np.asarray(ds["alpha"].values, dtype=float)
    ordered = list(groups)
    left_metric, right_metrics = ordered[0], ordered[1:]
    twin = ax.twinx() if right_metrics else None

    n_nonfinite = n_nonpositive = 0
    handles = []
    for m_index, metric in enumerate(ordered):
        target = ax if metric == left_metric else twin
        assert target is not None
        color = (
            LEFT_COLOR if metric == left_metric else RIGHT_COLORS[(m_index - 1) % len(RIGHT_COLORS)]
        )
        use_log = log and metric == left_metric
        for s_index, (split, var) in enumerate(groups[metric]):
            values = require_var(ds, var, ("alpha",)).values
            masked, n_bad, n_nonpos = masked_values(values, log=use_log)
            n_nonfinite += n_bad
            n_nonpositive += n_nonpos
            (line,) = target.plot(
                alpha,
                masked,
                color=color,
                linestyle=line_style(split, s_index),
                linewidth=1.8,
                label=var_label(ds, var),
            )
            handles.append(line)

    ax.set_xlabel(alpha_label(ds.attrs), fontsize=LABEL_SIZE)
    left_label = left_metric.replace("_", " ") + (" (log scale)" if log else "")
    ax.set_ylabel(left_label, fontsize=LABEL_SIZE, color=LEFT_COLOR)
    ax.tick_params(axis="y", colors=LEFT_COLOR)
    if log:
        ax.set_yscale("log")
    style_axes(ax)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    if alpha.size > 1:
        ax.set_xlim(float(alpha.min()), float(alpha.max()))

    if twin is not None:
        right_label = " / ".join(m.replace("_", " ") for m in right_metrics)
        right_color = RIGHT_COLORS[0] if len(right_metrics) == 1 else "black"
        twin.set_ylabel(right_label, fontsize=LABEL_SIZE, color=right_color)
        twin.tick_params(axis="y", colors=right_color)
        style_axes(twin)
        # Draw the main axes (and its legend) above the twin, so the legend is never hidden.
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)

    lo, hi = (float(alpha.min()), float(alpha.max())) if alpha.size else (0.0, 0.0)
    for x, label in endpoint_markers(ds.attrs):
        if lo <= x <= hi:
            ax.axvline(x, color="0.35", linestyle=":", linewidth=1.2, zorder=1)
            ax.annotate(
                label,
                xy=(x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                ha="left",
                va="top",
                fontsize=LABEL_SIZE,
                color="0.2",
            )

    if owns_figure:
        # Below the axes: curves on two y axes leave no reliable free spot inside.
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(ordered), 4),
            fontsize=LEGEND_SIZE,
            frameon=False,
        )
    else:
        ax.legend(handles=handles, fontsize=LEGEND_SIZE, loc="best", framealpha=0.85)
    base = default_line_title(ds.attrs) if title is None else title
    note = hidden_note(n_nonfinite, n_nonpositive, what="points")
    ax.set_title(compose_title(base, note), fontsize=TITLE_SIZE)
    return fig, ax
