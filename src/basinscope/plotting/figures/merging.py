"""Figures of the merging results, registered by kind with :func:`basinscope.plotting.plots`:
a merge (the validation curve of the hyper-parameter it chose, or the merged model's
accuracy per task) and the decomposition of the merging error against the rank of the
task-vector subspace. Each draws on ``ax`` (or a new figure) and returns ``(fig, ax)``; a
new figure of several panels returns its first."""

from __future__ import annotations

from typing import Any

import numpy as np

from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, TICK_SIZE, new_figure, style_axes
from basinscope.plotting.dispatch import plots

__all__ = ["plot_merge", "plot_merge_decomposition"]

#: how a hyper-parameter is named on an axis
_HYPER_LABEL = {
    "lam": r"$\lambda$ (scale of the task vectors)",
    "density": "density (fraction of each task vector kept)",
    "drop_rate": "drop rate (fraction of each task vector dropped)",
    "rank": "rank of the task-vector subspace",
}
_METRIC_LABEL = {
    "mean_accuracy": "mean accuracy over tasks",
    "worst_accuracy": "worst-task accuracy",
    "mean_loss": "mean loss over tasks",
}
#: one colour per geometry of the subspace merge, the same in every figure
_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#8172b2", "#937860", "#da8bc3", "#8c8c8c"]
_GEOMETRY_COLOR = {"curvature": "#c44e52", "flat": "#4c72b0", "spectral": "#55a868"}


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size)
    return fig, fig.add_subplot()


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _select_metric(result: Any) -> str:
    spec = getattr(result, "spec", None)
    return str(
        getattr(result, "select_metric", "")
        or getattr(spec, "select_metric", "")
        or "mean_accuracy"
    )


# -- a merge ---------------------------------------------------------------------------------
@plots("merge")
def plot_merge(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """A merge: with a hyper-parameter chosen on validation, the validation metric of every
    candidate against it (mean and worst-task accuracy, the chosen value marked); else the
    merged model's accuracy on each task's validation data; without validation data, the
    singular values of the task-vector subspace (method subspace) or a note."""
    if getattr(result, "selected", ()) and getattr(result, "selection", ()):
        return _selection_curve(result, ax)
    if getattr(result, "metrics", None):
        return _task_bars(result, ax)
    if (getattr(result, "subspace", None) or {}).get("singular_values") is not None:
        return _singular_values(result, ax)
    fig, ax = _axes(ax, (4.8, 3.2))
    ax.text(
        0.5,
        0.5,
        f"{result.method} merge of {len(result.labels)} models\n"
        "no validation data: pass --val-data (val_data=)\nfor the per-task accuracy",
        ha="center",
        va="center",
        fontsize=LABEL_SIZE,
        transform=ax.transAxes,
    )
    ax.set_axis_off()
    return fig, ax


def _selection_curve(result: Any, ax: Any) -> tuple[Any, Any]:
    rows = list(result.selection)
    x_name, others = result.selected[0], list(result.selected[1:])
    metric = _select_metric(result)
    groups: dict[tuple[float, ...], list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(_num(row.get(h)) for h in others), []).append(row)
    fig, ax = _axes(ax, (5.2 if len(groups) == 1 else 6.4, 3.6))
    # one group: the selection metric and the worst task; several (a second hyper-parameter
    # selected too): the selection metric only, one line per value of the others
    shown = [metric]
    if len(groups) == 1 and metric == "mean_accuracy":
        shown.append("worst_accuracy")
    for g, (key, members) in enumerate(sorted(groups.items())):
        members = sorted(members, key=lambda r: _num(r.get(x_name)))
        x = np.array([_num(r.get(x_name)) for r in members])
        color = _COLORS[g % len(_COLORS)]
        tag = ", ".join(f"{h} {v:g}" for h, v in zip(others, key))
        for name in shown:
            y = np.array([_num(r.get(name)) for r in members])
            dashed = name != metric
            label = tag if len(groups) > 1 else _METRIC_LABEL.get(name, name)
            ax.plot(
                x,
                y,
                "s--" if dashed else "o-",
                ms=4,
                lw=1.2 if dashed else 1.5,
                color=color,
                alpha=0.75 if dashed else 1.0,
                label=label,
            )
    chosen = _num(result.hyper.get(x_name))
    best = [
        r for r in rows if all(_num(r.get(h)) == _num(result.hyper.get(h)) for h in result.selected)
    ]
    if best and np.isfinite(chosen):
        what = ", ".join(f"{h} {_num(result.hyper.get(h)):g}" for h in result.selected)
        ax.plot(
            [chosen],
            [_num(best[0].get(metric))],
            "*",
            ms=13,
            color="#c44e52",
            markeredgecolor="black",
            markeredgewidth=0.6,
            zorder=5,
            label=f"chosen: {what}",
        )
    ax.set_xlabel(_HYPER_LABEL.get(x_name, x_name), fontsize=LABEL_SIZE)
    loss = metric == "mean_loss"
    ax.set_ylabel(
        _METRIC_LABEL[metric]
        if len(groups) > 1
        else f"validation {'loss' if loss else 'accuracy'}",
        fontsize=LABEL_SIZE,
    )
    how = "minimising" if loss else "maximising"
    ax.set_title(
        f"{result.method} merge of {len(result.labels)} models: {x_name} chosen on validation\n"
        f"({how} the {_METRIC_LABEL.get(metric, metric)}, {len(rows)} candidates)",
        fontsize=LABEL_SIZE,
    )
    if len(groups) > 1:
        ax.legend(
            fontsize=LEGEND_SIZE,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            title=" and ".join(others),
            title_fontsize=LEGEND_SIZE,
        )
    else:
        ax.legend(fontsize=LEGEND_SIZE)
    ax.grid(alpha=0.3)
    style_axes(ax)
    return fig, ax


def _task_bars(result: Any, ax: Any) -> tuple[Any, Any]:
    labels = [str(t) for t in result.metrics]
    acc = [_num(result.metrics[t].get("accuracy")) for t in result.metrics]
    fig, ax = _axes(ax, (max(4.5, 0.7 * len(labels) + 2.4), 3.6))
    x = np.arange(len(labels))
    ax.bar(x, acc, 0.6, color="#4c72b0", label="merged model")
    for xi, a in zip(x, acc):
        if np.isfinite(a):
            ax.text(xi, a, f"{a:.3f}", ha="center", va="bottom", fontsize=TICK_SIZE)
    mean, worst = _num(result.mean_accuracy), _num(result.worst_accuracy)
    if np.isfinite(mean):
        ax.axhline(mean, color="#c44e52", lw=1.2, ls="--", label=f"mean {mean:.3f}")
    if np.isfinite(worst):
        ax.axhline(worst, color="0.35", lw=1.0, ls=":", label=f"worst {worst:.3f}")
    ax.set_xticks(
        x,
        labels,
        rotation=30 if len(labels) > 3 else 0,
        ha="right" if len(labels) > 3 else "center",
    )
    ax.set_ylim(0.0, 1.22)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel("validation accuracy", fontsize=LABEL_SIZE)
    hyper = ", ".join(f"{k} {_num(v):g}" for k, v in result.hyper.items())
    ax.set_title(f"{result.method} merge" + (f" ({hyper})" if hyper else ""), fontsize=LABEL_SIZE)
    ax.legend(fontsize=LEGEND_SIZE, loc="upper center", ncol=3, frameon=False)
    style_axes(ax)
    return fig, ax


def _singular_values(result: Any, ax: Any) -> tuple[Any, Any]:
    s = np.asarray(result.subspace["singular_values"], dtype=np.float64).ravel()
    index = np.arange(1, len(s) + 1)
    fig, ax = _axes(ax, (4.8, 3.4))
    ax.plot(index, s, "o-", ms=5, lw=1.5, color="#4c72b0", label="singular value")
    rank = _num(result.subspace.get("rank"))
    if np.isfinite(rank):
        ax.axvline(rank + 0.5, color="#c44e52", ls="--", lw=1.2, label=f"rank {int(rank)} kept")
    ax.set_ylim(bottom=0.0)
    _integer_ticks(ax, index)
    ax.set_xlabel("direction of the task-vector subspace", fontsize=LABEL_SIZE)
    ax.set_ylabel("singular value of [τ1; …; τK]", fontsize=LABEL_SIZE)
    geometry = result.subspace.get("geometry", "")
    ax.set_title(
        f"{result.method} merge ({geometry} geometry) of {len(result.labels)} models",
        fontsize=LABEL_SIZE,
    )
    ax.legend(fontsize=LEGEND_SIZE)
    ax.grid(alpha=0.3)
    style_axes(ax)
    return fig, ax


# -- the decomposition of the merging error ---------------------------------------------------
@plots("merge_decomposition")
def plot_merge_decomposition(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """Against the rank of the subspace, averaged over tasks: the measured loss increase of
    the merge and the quadratic model's prediction, one colour per geometry (curvature,
    flat); a new figure also shows the prediction's terms, the Fréchet variance inside the
    subspace per geometry and the residual energy outside it (the same for every geometry)."""
    table = result.table
    if ax is not None:
        fig, first, second = ax.figure, ax, None
    else:
        fig = new_figure((9.8, 3.8))
        first, second = fig.subplots(1, 2)
    ranks = np.asarray(table["rank"].values, dtype=np.float64)
    for g in [str(g) for g in table["geometry"].values]:
        color = _GEOMETRY_COLOR.get(g, "0.3")
        sel = table.sel(geometry=g)
        measured = sel["measured"].mean("task").values
        predicted = sel["predicted"].mean("task").values
        first.plot(ranks, measured, "o-", ms=4, lw=1.5, color=color, label=f"{g}: measured")
        first.plot(ranks, predicted, "x--", ms=5, lw=1.2, color=color, label=f"{g}: predicted")
        if second is not None:
            variance = sel["variance"].mean("task").values
            second.plot(ranks, variance, "o-", ms=4, lw=1.5, color=color, label=f"{g}: variance")
    curv = getattr(result, "curvature", "")
    first.set_title(f"loss increase of the merge ({curv} quadratic model)", fontsize=LABEL_SIZE)
    first.set_ylabel("loss increase (mean over tasks)", fontsize=LABEL_SIZE)
    panels = [first]
    if second is not None:
        # the residual depends on the subspace only: one line for every geometry
        residual = table["residual"].isel(geometry=0).mean("task").values
        second.plot(ranks, residual, "s:", ms=4, lw=1.5, color="0.3", label="residual energy")
        second.set_title("Fréchet variance (inside) and residual (outside)", fontsize=LABEL_SIZE)
        second.set_ylabel("term of the prediction (mean over tasks)", fontsize=LABEL_SIZE)
        panels.append(second)
    for p in panels:
        p.set_xlabel("rank of the task-vector subspace", fontsize=LABEL_SIZE)
        p.legend(fontsize=LEGEND_SIZE)
        p.grid(alpha=0.3)
        _integer_ticks(p, ranks)
        style_axes(p)
    return fig, first


def _integer_ticks(ax: Any, ranks: np.ndarray) -> None:
    if len(ranks) and len(ranks) <= 12:
        ax.set_xticks(ranks, [f"{int(r)}" for r in ranks])
