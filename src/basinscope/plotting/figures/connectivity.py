"""Figures of the connectivity results (barriers, basins, curves, alignments, instability,
ensembles), registered by kind with :func:`basinscope.plotting.plots`. Each draws its
result on ``ax`` (or a new figure) and returns ``(fig, ax)``;
:func:`basinscope.plotting.plot` dispatches to it. Results with a second view (a basin's
margins, the children's curves of an instability sweep, ...) draw it beside the first
when no ``ax`` is given; ``ax`` is then the first panel."""

from __future__ import annotations

from typing import Any

import numpy as np

from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, TICK_SIZE, new_figure, style_axes
from basinscope.plotting.dispatch import plots

__all__ = [
    "plot_alignment",
    "plot_barrier",
    "plot_barrier_comparison",
    "plot_barrier_matrix",
    "plot_basin",
    "plot_basin_condition",
    "plot_curve",
    "plot_curve_evaluation",
    "plot_ensemble",
    "plot_instability",
    "plot_instability_sweep",
    "plot_transfer_instability",
]


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size)
    return fig, fig.add_subplot()


def _panels(ax: Any, n: int, size: tuple[float, float]) -> tuple[Any, list[Any]]:
    """``ax`` alone, or a new figure of ``n`` panels side by side."""
    if ax is not None:
        return ax.figure, [ax]
    fig = new_figure(size)
    return fig, list(np.atleast_1d(fig.subplots(1, n)))


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _finite(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


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


# -- basin ---------------------------------------------------------------------------------
def _margins(ax: Any, conds: Any) -> None:
    ys = np.arange(len(conds))[::-1]
    for y, c in zip(ys, conds):
        lo, hi = c.margin_ci
        ax.errorbar(
            [c.margin],
            [y],
            xerr=[[c.margin - lo], [hi - c.margin]],
            fmt="o",
            color="tab:green" if c.holds else "tab:red",
            capsize=4,
        )
    ax.axvline(0.0, color="0.5", lw=1)
    ax.set_yticks(ys, [f"({c.condition}) {c.name}" for c in conds], fontsize=8)
    ax.set_xlabel("margin (>= 0: the condition holds)", fontsize=LABEL_SIZE)
    style_axes(ax)


@plots("basin")
def plot_basin(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The losses inside the hull, at the noisy boundary points and after the outward
    steps; beside them each condition's margin with its interval."""
    fig, axes = _panels(ax, 2, (8.4, 3.4))
    groups = (
        ("inside S", r.inside_losses, "tab:blue"),
        ("(2) noise at the boundary", r.noise_losses, "tab:orange"),
        ("(3) outward step", r.step_losses, "tab:red"),
    )
    finite = np.concatenate([_finite(v) for _, v, _ in groups])
    spread = finite.size and finite.max() > finite.min()
    bins = np.linspace(finite.min(), finite.max(), 25) if spread else 10
    hist = axes[0]
    for name, vals, c in groups:
        hist.hist(_finite(vals), bins=bins, alpha=0.55, color=c, label=name)
    hist.axvline(r.mean_loss, color="k", lw=1, label="mu")
    hist.axvline(r.mean_loss + 2 * r.epsilon, color="k", ls="--", lw=1, label="mu + 2 eps")
    hist.set_xlabel(r.settings.get("metric", "loss"), fontsize=LABEL_SIZE)
    hist.set_ylabel("count", fontsize=LABEL_SIZE)
    hist.legend(fontsize=LEGEND_SIZE)
    style_axes(hist)
    verdict = "a basin" if r.holds else "not a basin"
    title = f"(eps={r.epsilon:.3g}, delta={r.delta:.3g}): {verdict}"
    if len(axes) > 1:
        _margins(axes[1], r.conditions)
        fig.suptitle(title, fontsize=LABEL_SIZE)
    else:
        hist.set_title(title, fontsize=LABEL_SIZE)
    return fig, hist


@plots("basin_condition")
def plot_basin_condition(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """One condition's margin with its interval."""
    fig, ax = _axes(ax, (5.0, 1.8))
    _margins(ax, [r])
    return fig, ax


# -- curves --------------------------------------------------------------------------------
def _curve_panels(ev: Any, axes: list[Any], labels: Any) -> None:
    names = [str(v) for v in ev.curve.data_vars]
    splits = list(dict.fromkeys(n.rsplit("_", 1)[0] for n in names))
    colors = dict(zip(splits, ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")))
    metrics = [m for m in ("loss", "error", "accuracy") if any(n.endswith(f"_{m}") for n in names)]
    t = ev.curve["t"].values
    for ax, m in zip(axes, metrics):
        for s in splits:
            var = f"{s}_{m}"
            if var not in ev.curve:
                continue
            c = colors.get(s, "0.3")
            ax.plot(t, ev.curve[var].values, "-", color=c, lw=1.6, label=f"{s}, curve")
            if ev.line is not None and var in ev.line:
                ax.plot(ev.line["alpha"].values, ev.line[var].values, "--", color=c, lw=1.2,
                        label=f"{s}, line")  # fmt: skip
        ax.set_xlabel(f"t  ({labels[0]} -> {labels[1]})", fontsize=LABEL_SIZE)
        ax.set_ylabel(m, fontsize=LABEL_SIZE)
        ax.legend(fontsize=LEGEND_SIZE)
        style_axes(ax)


def _curve_metrics(ev: Any) -> int:
    names = [str(v) for v in ev.curve.data_vars]
    return max(1, sum(any(n.endswith(f"_{m}") for n in names) for m in ("loss", "error")))


@plots("curve_evaluation")
def plot_curve_evaluation(r: Any, ax: Any = None, labels: Any = ("A", "B")) -> tuple[Any, Any]:
    """Loss and error along the curve (solid) and the straight line (dashed), per split."""
    n = _curve_metrics(r)
    fig, axes = _panels(ax, n, (4.2 * n, 3.4))
    _curve_panels(r, axes, labels)
    fig.suptitle(
        f"{r.settings.get('kind', 'curve')} curve vs straight line: length ratio "
        f"{r.length_ratio:.3f}",
        fontsize=LABEL_SIZE,
    )
    return fig, axes[0]


@plots("curve")
def plot_curve(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The evaluated curve next to the line (:func:`plot_curve_evaluation`), or without an
    evaluation the training loss at the sampled t."""
    if r.metrics is not None:
        return plot_curve_evaluation(r.metrics, ax=ax, labels=r.labels)
    fig, ax = _axes(ax, (5.0, 3.4))
    h = r.history
    sc = ax.scatter(h.get("step", []), h.get("loss", []), c=h.get("t", []), s=8, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="t")
    ax.set_xlabel("update", fontsize=LABEL_SIZE)
    ax.set_ylabel("minibatch loss at phi(t)", fontsize=LABEL_SIZE)
    ax.set_title(f"training the {r.curve_kind} curve", fontsize=LABEL_SIZE)
    style_axes(ax)
    return fig, ax


# -- alignment -----------------------------------------------------------------------------
@plots("barrier_comparison")
def plot_barrier_comparison(
    r: Any, ax: Any = None, labels: Any = ("A", "B"), title: str = ""
) -> tuple[Any, Any]:
    """The lines A -> B and A -> aligned B, with their barriers."""
    fig, ax = _axes(ax, (5.2, 3.5))
    ax.plot(r.alphas, r.curve_before, "o-", ms=3, color="tab:red", label="A -> B")
    ax.plot(r.alphas, r.curve_after, "o-", ms=3, color="tab:green", label="A -> B aligned")
    ax.set_xlabel(f"alpha  ({labels[0]} -> {labels[1]})", fontsize=LABEL_SIZE)
    ax.set_ylabel(f"{r.split} {r.metric}", fontsize=LABEL_SIZE)
    ax.set_title(
        f"{title}{r.definition} barrier {r.before:.3g} -> {r.after:.3g}", fontsize=LABEL_SIZE
    )
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    return fig, ax


@plots("alignment")
def plot_alignment(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The barriers before and after aligning (:func:`plot_barrier_comparison`), or without
    them the number of units each group's permutation moves."""
    if r.barrier is not None:
        short = r.method.replace("_matching", "")
        return plot_barrier_comparison(r.barrier, ax, r.labels, f"{short} matching: ")
    fig, ax = _axes(ax, (5.2, 3.5))
    groups = list(r.permutations)
    moved = [int(np.sum(np.asarray(p) != np.arange(len(p)))) for p in r.permutations.values()]
    ax.bar(range(len(groups)), moved, color="#4c72b0")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=TICK_SIZE)
    ax.set_ylabel("units moved", fontsize=LABEL_SIZE)
    ax.set_title(f"{r.method}: {sum(moved)} units moved", fontsize=LABEL_SIZE)
    style_axes(ax)
    return fig, ax


# -- instability ---------------------------------------------------------------------------
def _children_lines(ax: Any, results: Any, names: Any, colors: Any, metric: str) -> None:
    for r, name, c in zip(results, names, colors):
        for n, d in enumerate(r.details):
            ax.plot(d["alphas"], np.asarray(d["values"], dtype=np.float64), "-", color=c,
                    lw=1.2, alpha=1.0 if n == 0 else 0.5, label=name if n == 0 else None)  # fmt: skip
    ax.set_xlabel("alpha (child i -> child j)", fontsize=LABEL_SIZE)
    ax.set_ylabel(metric, fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)


@plots("instability")
def plot_instability(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The line between every pair of children spawned at ``k``."""
    fig, ax = _axes(ax, (5.0, 3.4))
    _children_lines(ax, [r], [f"k={r.k}"], _colors(1), r.metric)
    ax.set_title(f"k={r.k}: {r.definition} barrier {r.value:.3g}", fontsize=LABEL_SIZE)
    return fig, ax


@plots("instability_sweep")
def plot_instability_sweep(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """Barrier vs spawning step ``k`` (mean over pairs; with more than two children the
    largest pair too; logarithmic ``k`` when the positive ``k`` span a decade), and beside
    it the lines between the children."""
    fig, axes = _panels(ax, 2, (9.0, 3.4))
    ax = axes[0]
    ks = np.asarray(r.ks, dtype=np.float64)
    ax.plot(ks, r.values, "o-", color="tab:blue", label="mean over pairs")
    if any(len(x.pairs) > 1 for x in r.results):
        ax.plot(ks, r.max_values, "v--", color="tab:red", label="max over pairs")
        ax.legend(fontsize=LEGEND_SIZE)
    positive = ks[ks > 0]
    if positive.size and positive.max() / positive.min() >= 10:
        ax.set_xscale("symlog", linthresh=1.0) if (ks == 0).any() else ax.set_xscale("log")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("spawning step k", fontsize=LABEL_SIZE)
    ax.set_ylabel(f"{r.definition} barrier ({r.metric})", fontsize=LABEL_SIZE)
    style_axes(ax)
    if len(axes) > 1:
        names = [f"k={x.k}" for x in r.results]
        _children_lines(axes[1], r.results, names, _colors(len(r.results)), r.metric)
        axes[1].set_title("the line between the children", fontsize=LABEL_SIZE)
    return fig, ax


@plots("transfer_instability")
def plot_transfer_instability(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The lines between the children of each start, and beside them both barriers."""
    fig, axes = _panels(ax, 2, (8.0, 3.3))
    runs = (r.pretrained, r.scratch)
    _children_lines(axes[0], runs, ("pre-trained", "random init"), ("tab:blue", "tab:orange"),
                    r.metric)  # fmt: skip
    if len(axes) > 1:
        bx = axes[1]
        bx.bar(["pre-trained", "random init"], [r.pretrained_barrier, r.scratch_barrier],
               color=["tab:blue", "tab:orange"])  # fmt: skip
        bx.set_ylabel(f"{r.definition} barrier ({r.metric})", fontsize=LABEL_SIZE)
        style_axes(bx)
        fig.suptitle("children from a pre-trained start vs a random initialization", fontsize=10)
    return fig, axes[0]


# -- ensembles -----------------------------------------------------------------------------
@plots("ensemble")
def plot_ensemble(r: Any, ax: Any = None) -> tuple[Any, Any]:
    """The members' accuracies and the ensemble's (or the SWA model's), and beside them the
    barriers between consecutive members."""
    fig, axes = _panels(ax, 2 if r.barriers else 1, (8.8 if r.barriers else 4.4, 3.4))
    ax = axes[0]
    names = list(r.member_names) or [str(i) for i in range(len(r.member_accuracies))]
    x = np.arange(len(names))
    ax.bar(x, r.member_accuracies, color="#4c72b0", label="members")
    label = "SWA model" if r.method == "swa" else "ensemble"
    ax.axhline(r.ensemble_accuracy, color="tab:red", lw=1.5, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    lo = min([*r.member_accuracies, r.ensemble_accuracy])
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    split = r.metrics.get("split", "evaluation") if isinstance(r.metrics, dict) else "evaluation"
    ax.set_ylabel(f"{split} accuracy", fontsize=LABEL_SIZE)
    ax.set_title(f"{r.method}: budget {r.budget}, diversity {r.diversity:.3g}", fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE)
    style_axes(ax)
    if len(axes) > 1:
        bx = axes[1]
        pairs = np.arange(len(r.barriers))
        bx.bar(pairs, r.barriers, color="tab:purple")
        bx.set_xticks(pairs, [f"{i}-{i + 1}" for i in pairs], fontsize=8)
        bx.set_xlabel("consecutive members (i - i+1)", fontsize=LABEL_SIZE)
        bx.set_ylabel(f"{r.barrier_definition} barrier ({r.barrier_metric})", fontsize=LABEL_SIZE)
        bx.axhline(0.0, color="0.6", lw=0.8)
        style_axes(bx)
    return fig, ax
