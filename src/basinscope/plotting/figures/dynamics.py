"""Figures of the training dynamics, registered by kind with :func:`basinscope.plotting.plots`:
the quantities a :class:`~basinscope.analyses.tracking.Tracker` recorded along a training run
(kind ``tracking``), one panel per group of tracked variables against the step. Each draws on
``ax`` (or a new figure) and returns ``(fig, ax)``; a new figure of several panels returns its
first."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes
from basinscope.plotting.dispatch import plots

__all__ = ["TRACKING_PANELS", "plot_tracking", "tracking_panels"]

#: the panels of a tracking figure, in order: (name, y label, log scale when positive)
TRACKING_PANELS = (
    ("loss", "loss (mean cross-entropy)", True),
    ("error", "error (1 − accuracy)", False),
    ("weight_norm", "weight norm ‖θ‖₂", False),
    ("effective_lr", "effective LR η / ‖w_l‖²", True),
    ("lr", "learning rate η", True),
    ("lambda_max", "λmax of the Hessian", False),
    ("sharpness", "sharpness", False),
    ("noise_scale", "gradient noise scale B_simple", True),
)
_SPLIT_STYLE = {"train": "-", "test": "--"}
_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3"]


def _finite(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _present(ds: Any, name: str) -> bool:
    return name in ds.data_vars and bool(np.isfinite(_finite(ds[name].values)).any())


def tracking_panels(ds: Any) -> list[str]:
    """The panels of :data:`TRACKING_PANELS` that ``ds`` (a Tracking's dataset) has finite
    values for: ``loss`` for any ``*_loss`` variable, ``error`` for any ``*_error``
    (``train``/``test`` and further evaluations a study added), the others by name
    (``weight_norm`` also for the per-module ``module_norm``)."""
    out = []
    for name, _, _ in TRACKING_PANELS:
        if name in ("loss", "error"):
            if any(_present(ds, v) for v in ds.data_vars if str(v).endswith(f"_{name}")):
                out.append(name)
        elif name == "weight_norm":
            if _present(ds, "weight_norm") or _present(ds, "module_norm"):
                out.append(name)
        elif _present(ds, name):
            out.append(name)
    return out


def _label(var: str) -> str:
    return var.rsplit("_", 1)[0].replace("_", " ")


def _split_lines(ax: Any, ds: Any, suffix: str, steps: np.ndarray) -> None:
    names = sorted(
        (str(v) for v in ds.data_vars if str(v).endswith(f"_{suffix}") and _present(ds, str(v))),
        key=lambda v: ({"train": 0, "test": 1}.get(v.split("_", 1)[0], 2), v),
    )
    for i, var in enumerate(names):
        split = var.split("_", 1)[0]
        style = _SPLIT_STYLE.get(split, ":") if var.count("_") == 1 else ":"
        ax.plot(
            steps,
            _finite(ds[var].values),
            style,
            marker="o",
            ms=3,
            lw=1.4,
            color=_COLORS[i % len(_COLORS)],
            label=_label(var),
        )


def _per(ax: Any, ds: Any, var: str, dim: str, steps: np.ndarray) -> None:
    da = ds[var].transpose("step", dim)
    for i, name in enumerate(ds[dim].values):
        ax.plot(
            steps,
            _finite(da.values[:, i]),
            "-",
            marker="o",
            ms=2.5,
            lw=1.0,
            color=_COLORS[(i + 1) % len(_COLORS)],
            label=str(name),
        )


def _draw(ax: Any, ds: Any, panel: str) -> None:
    steps = _finite(ds["step"].values)
    if panel in ("loss", "error"):
        _split_lines(ax, ds, panel, steps)
    elif panel == "weight_norm":
        if _present(ds, "module_norm"):
            _per(ax, ds, "module_norm", "module", steps)
        if _present(ds, "weight_norm"):
            ax.plot(steps, _finite(ds["weight_norm"].values), "k-", lw=2.0, label="total")
    elif panel == "effective_lr":
        _per(ax, ds, "effective_lr", "layer", steps)
    else:
        ax.plot(steps, _finite(ds[panel].values), "-", marker="o", ms=3, lw=1.4, color="#4c72b0")


def _positive(ax: Any) -> bool:
    ys = [np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()]
    vals = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    return vals.size > 0 and bool((vals > 0).all())


def _panel(ax: Any, ds: Any, panel: str, settings: dict) -> None:
    ylabel, log = next((lab, lg) for n, lab, lg in TRACKING_PANELS if n == panel)
    if panel == "sharpness" and settings.get("sharpness"):
        ylabel = f"{str(settings['sharpness']).replace('_', '-')} sharpness"
    _draw(ax, ds, panel)
    if log and _positive(ax):
        ax.set_yscale("log")
    if panel == "error":
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step", fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    if len(ax.get_lines()) > 1:
        ax.legend(fontsize=LEGEND_SIZE)
    ax.grid(alpha=0.25)
    style_axes(ax)


@plots("tracking")
def plot_tracking(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """The tracked quantities against the step, one panel each that the run recorded: losses
    and errors (train solid, test dashed, further evaluations dotted), the weight norm (total
    and per module), the effective learning rate of each scale-invariant layer (log scale),
    the learning rate, λmax, the scale-invariant sharpness and the gradient noise scale.
    Given ``ax``, only the first panel is drawn on it."""
    ds = result.dataset
    settings = dict(getattr(result, "settings", {}) or {})
    panels = tracking_panels(ds) if ds.sizes.get("step", 0) else []
    if ax is not None:
        fig = ax.figure
        if panels:
            _panel(ax, ds, panels[0], settings)
        else:
            _nothing(ax)
        return fig, ax
    if not panels:
        fig = new_figure((4.8, 3.2))
        ax = fig.add_subplot()
        _nothing(ax)
        return fig, ax
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = new_figure((3.7 * cols, 2.9 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for a, panel in zip(axes, panels, strict=False):
        _panel(a, ds, panel, settings)
    for a in axes[len(panels) :]:
        a.set_axis_off()
    return fig, axes[0]


def _nothing(ax: Any) -> None:
    ax.text(
        0.5,
        0.5,
        "nothing tracked: no step recorded a value",
        ha="center",
        va="center",
        fontsize=LABEL_SIZE,
        transform=ax.transAxes,
    )
    ax.set_axis_off()
