"""Figures of the transfer results (CKA, distances, mistakes, rewinding, module criticality,
fine-tuning), registered by kind with :func:`basinscope.plotting.plots`. Each draws its
result on ``ax`` (or a new figure) and returns ``(fig, ax)``; results of several panels draw
their first panel on a given ``ax`` (a new figure gets them all and returns the first)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from basinscope.errors import BasinscopeError
from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, TICK_SIZE, new_figure, style_axes
from basinscope.plotting.dispatch import plots

__all__ = [
    "plot_cka",
    "plot_criticality",
    "plot_distance",
    "plot_distance_and_mistakes",
    "plot_finetune",
    "plot_finetune_comparison",
    "plot_mistakes",
    "plot_rewind",
    "plot_valley",
]


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size)
    return fig, fig.add_subplot()


def _bars(ax: Any, names: Sequence[str], series: dict[str, Sequence[float | None]]) -> None:
    """Grouped bars, one group per name and one bar per series (None drawn as no bar)."""
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series.items()):
        v = [float(a) if a is not None else np.nan for a in vals]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=label)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xticks(x, list(names), rotation=30, ha="right")
    if len(series) > 1:
        ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)


def _bar_size(n: int) -> tuple[float, float]:
    return (max(4.5, 0.8 * n + 2.0), 3.4)


# -- similarity ------------------------------------------------------------------------------
@plots("cka")
def plot_cka(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """Heatmap of ``result.matrix`` with a colorbar: rows are ``layers_a``, columns
    ``layers_b``; the title names the estimator."""
    size = (1.6 + 0.5 * len(result.layers_b), 1.4 + 0.5 * len(result.layers_a))
    fig, ax = _axes(ax, (max(size[0], 3.6), max(size[1], 3.0)))
    image = ax.imshow(
        np.asarray(result.matrix, dtype=np.float64),
        vmin=0.0,
        vmax=1.0,
        cmap="magma",
        origin="lower",
    )
    ax.set_xticks(range(len(result.layers_b)), list(result.layers_b), rotation=90)
    ax.set_yticks(range(len(result.layers_a)), list(result.layers_a))
    a, b = getattr(result, "models", ("model A", "model B"))
    ax.set_xlabel(f"{b} layer", fontsize=LABEL_SIZE)
    ax.set_ylabel(f"{a} layer", fontsize=LABEL_SIZE)
    ax.set_title(f"CKA ({result.method}, n={result.num_examples})", fontsize=LABEL_SIZE)
    fig.colorbar(image, ax=ax, label="CKA")
    style_axes(ax)
    return fig, ax


# -- distance and mistakes -------------------------------------------------------------------
@plots("distance")
def plot_distance(result: Any, ax: Any = None, *, metric: str = "relative") -> tuple[Any, Any]:
    """Bars of one statistic per module (default: the relative distance)."""
    if metric not in result.overall:
        raise BasinscopeError(
            f"unknown statistic {metric!r}: expected one of {', '.join(result.overall)}"
        )
    names = list(result.per_module)
    fig, ax = _axes(ax, _bar_size(len(names)))
    _bars(ax, names, {metric: [result.per_module[m][metric] for m in names]})
    ax.set_ylabel(metric, fontsize=LABEL_SIZE)
    a, b = result.models
    ax.set_title(
        f"{a} vs {b}: {metric} per module (all: {float(result.overall[metric]):.3g})",
        fontsize=LABEL_SIZE,
    )
    return fig, ax


@plots("mistakes")
def plot_mistakes(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """How many examples both models get right, both wrong (same or different label), or
    only one of them wrong."""
    a, b = result.models
    names = [
        "both right",
        "both wrong (same)",
        "both wrong (diff.)",
        f"only {a} wrong",
        f"only {b} wrong",
    ]
    counts = [
        result.both_right,
        result.both_wrong_same,
        result.both_wrong_different,
        result.only_a_wrong,
        result.only_b_wrong,
    ]
    fig, ax = _axes(ax, _bar_size(len(names)))
    _bars(ax, names, {"examples": counts})
    ax.set_ylabel("examples", fontsize=LABEL_SIZE)
    on = f" on {result.split}" if result.split else ""
    ax.set_title(f"{a} vs {b}{on}: agreement {result.agreement:.3f}", fontsize=LABEL_SIZE)
    return fig, ax


@plots("distance_and_mistakes")
def plot_distance_and_mistakes(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """The relative distance per module and the mistake counts side by side."""
    if ax is not None:
        return plot_distance(result.distance, ax=ax)
    fig = new_figure((2 * _bar_size(len(result.distance.per_module))[0], 3.6))
    left, right = fig.subplots(1, 2)
    plot_distance(result.distance, ax=left)
    plot_mistakes(result.mistakes, ax=right)
    return fig, left


# -- rewinding -------------------------------------------------------------------------------
@plots("rewind")
def plot_rewind(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """The damage of rewinding each module: the accuracy drop (final minus rewound), or the
    change of the first metric when no accuracy was measured."""
    names = list(result.rewound)
    fig, ax = _axes(ax, _bar_size(len(names)))
    if "accuracy" in result.baseline:
        values = [-result.change[m]["accuracy"] for m in names]
        label, final = "accuracy drop", f"final accuracy {result.baseline['accuracy']:.3f}"
    else:
        metric = next(iter(result.baseline))
        values = [result.change[m][metric] for m in names]
        label, final = f"{metric} change", f"final {metric} {result.baseline[metric]:.3g}"
    _bars(ax, names, {label: values})
    ax.set_ylabel(f"{result.split} {label}", fontsize=LABEL_SIZE)
    ax.set_title(f"rewinding one module to init ({final})", fontsize=LABEL_SIZE)
    return fig, ax


# -- criticality -----------------------------------------------------------------------------
def plot_valley(result: Any, module: str, ax: Any = None, *, levels: int = 20):
    """Filled contour of the mean loss over ``alpha x sigma`` with the ``loss = epsilon``
    boundary of the feasible region and the minimiser; returns ``(fig, ax)``."""
    if module not in result.modules:
        raise BasinscopeError(
            f"no module {module!r} in this result: modules are {list(result.modules)}"
        )
    if len(result.alphas) < 2 or len(result.sigmas) < 2:
        raise BasinscopeError(
            f"a valley plot needs at least 2 alphas and 2 sigmas, got {len(result.alphas)} and "
            f"{len(result.sigmas)}: evaluate a grid, e.g. alphas=np.linspace(0, 1, 11)"
        )
    m = result.modules[module]
    fig, ax = _axes(ax, (4.5, 3.6))
    A, S = np.meshgrid(result.alphas, result.sigmas, indexing="ij")
    loss = np.asarray(m.loss, dtype=np.float64)
    finite = np.isfinite(loss)
    z = np.where(finite, loss, np.max(loss[finite]) if finite.any() else 0.0)
    cs = ax.contourf(A, S, z, levels=levels)
    fig.colorbar(cs, ax=ax, label=result.settings.get("metric", "loss"))
    if z.min() < result.epsilon < z.max():
        ax.contour(A, S, z, levels=[result.epsilon], colors="white", linewidths=1.5)
    if math.isfinite(m.mu):
        ax.plot([m.alpha_star], [m.sigma_star], "r*", markersize=10)
    ax.set_xlabel("alpha", fontsize=LABEL_SIZE)
    relative = result.settings.get("noise") == "frobenius"
    ax.set_ylabel("sigma" + (" (x ||theta_F|| / sqrt(n))" if relative else ""), fontsize=LABEL_SIZE)
    mu = f"{m.mu:.3g}" if math.isfinite(m.mu) else "inf"
    ax.set_title(f"{module}: mu={mu}, eps={result.epsilon:.3g}", fontsize=LABEL_SIZE)
    style_axes(ax)
    return fig, ax


def _plot_mu(result: Any, ax: Any) -> None:
    names = list(result.modules)
    mu = np.array([result.modules[m].mu for m in names], dtype=np.float64)
    finite = np.isfinite(mu)
    x = np.arange(len(names))
    ax.bar(x[finite], mu[finite], 0.6, color="#4c72b0")
    for xi, v in zip(x, mu):
        if not np.isfinite(v):
            ax.text(xi, 0, "inf", ha="center", va="bottom", fontsize=TICK_SIZE, color="tab:red")
    ax.set_xticks(x, names, rotation=30, ha="right")
    if finite.any() and mu[finite].max() > 0:
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("module criticality mu", fontsize=LABEL_SIZE)
    nc = result.network_criticality
    ax.set_title(
        f"network criticality {nc:.3g}" if math.isfinite(nc) else "network criticality inf",
        fontsize=LABEL_SIZE,
    )
    style_axes(ax)


@plots("criticality")
def plot_criticality(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """Each module's criticality ``mu`` (the first panel, the one drawn on a given ``ax``),
    then each module's valley (:func:`plot_valley`) when the grid has 2 x 2 points or more."""
    if ax is not None:
        _plot_mu(result, ax)
        return ax.figure, ax
    valleys = list(result.modules) if min(len(result.alphas), len(result.sigmas)) >= 2 else []
    n = 1 + len(valleys)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = new_figure((4.6 * cols, 3.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    _plot_mu(result, axes[0])
    for name, a in zip(valleys, axes[1:]):
        plot_valley(result, name, ax=a)
    for a in axes[n:]:
        a.set_visible(False)
    return fig, axes[0]


# -- fine-tuning -----------------------------------------------------------------------------
@plots("finetune")
def plot_finetune(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """The training loss of one fine-tuning run by step (lp-ft: its LP phase dashed)."""
    fig, ax = _axes(ax, (5.2, 3.4))
    h = result.history
    step = np.asarray(h.get("step", []), dtype=np.float64)
    loss = np.asarray(h.get("loss", []), dtype=np.float64)
    phase = np.asarray(h.get("phase", [0.0] * len(step)), dtype=np.float64)
    for p, style in ((0.0, "-" if result.strategy != "lp-ft" else "--"), (1.0, "-")):
        keep = phase == p
        if keep.any():
            label = {"lp-ft": ("LP", "FT")[int(p)]}.get(result.strategy, result.strategy)
            ax.plot(step[keep], loss[keep], style, lw=1.2, label=label)
    ax.set_xlabel("step", fontsize=LABEL_SIZE)
    ax.set_ylabel("training loss (minibatch)", fontsize=LABEL_SIZE)
    parts = [f"{result.strategy}"]
    if result.forgetting is not None:
        parts.append(f"forgetting {result.forgetting:.3f}")
    if result.adaptation is not None:
        parts.append(f"adaptation {result.adaptation:.3f}")
    ax.set_title(", ".join(parts), fontsize=LABEL_SIZE)
    if result.strategy == "lp-ft":
        ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig, ax


@plots("finetune_comparison")
def plot_finetune_comparison(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """Forgetting and adaptation of each strategy."""
    names = [r.strategy for r in result.strategies]
    fig, ax = _axes(ax, _bar_size(2 * len(names)))
    _bars(
        ax,
        names,
        {
            "forgetting": [r.forgetting for r in result.strategies],
            "adaptation": [r.adaptation for r in result.strategies],
        },
    )
    ax.set_ylabel(f"accuracy change ({result.eval_split or 'eval'})", fontsize=LABEL_SIZE)
    src, tgt = result.source or {}, result.target or {}
    if "rotation" in src and "rotation" in tgt:
        title = f"source rotation {src['rotation']:g} -> target rotation {tgt['rotation']:g}"
    else:
        title = "fine-tuning from the source to the target"
    ax.set_title(title, fontsize=LABEL_SIZE)
    return fig, ax
