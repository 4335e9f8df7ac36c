"""The merging study's report: figures (PNG and PDF) and one self-contained HTML file, built
from ``result.json`` and the stored stage folders only (nothing is recomputed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import basinscope
from basinscope.experiments.merging import CHANCE, FAMILIES
from basinscope.experiments.stages import stages_table
from basinscope.report import Report
from basinscope.store import paths
from basinscope.store.atomic import atomic_write_text

__all__ = ["write_report"]

NO_BN = "the MLP has no BatchNorm, so no statistics policy applies"
MARKERS = "osD^vP*Xph<>"


def _load(stages: Path, name: str):
    from basinscope.store import load

    return load(stages / name)


def _mean(metrics: dict[str, dict[str, float]]) -> tuple[float, float]:
    acc = [m["accuracy"] for m in metrics.values()]
    return float(np.mean(acc)), float(np.min(acc))


def _hyper(h: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in h.items()) or "–"


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    cfg, defs = results["config"], results["definitions"]
    stages = run_dir.parent / paths.STAGES
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    tasks = results["tasks"]
    fams = results["families"]
    pre = results["pretrained"]
    rep = Report(
        "Model merging on the loss landscape: from a pre-trained and from a random start",
        f"basinscope {basinscope.__version__} · study merging · {time.strftime('%Y-%m-%d %H:%M')} "
        f"· {results['seconds']} s · run folder {run_dir.name}",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        f"An MLP (hidden layers {cfg['hidden']}) is pre-trained on upright 8x8 digits "
        f"({cfg['pretrain_steps']} SGD steps; source test accuracy "
        f"{pre['source_test_accuracy']:.3f}). From it, one model per target distribution "
        f"({', '.join(tasks)}) is fine-tuned for {cfg['finetune_steps']} SGD steps (learning rate "
        f"{cfg['finetune_lr']:g}); as a control, the same tasks are fine-tuned for the same "
        f"number of steps from a random initialization (learning rate {cfg['random_start_lr']:g}). "
        "Each family is merged with every method, at a matched rank and a matched validation "
        "budget. The question: do models fine-tuned from one pre-trained start share a basin "
        "in which their weights can be combined, and does merging fail without that start?\n\n"
        f"Tasks: {defs['tasks']}. Matched validation budget: {defs['matched validation budget']}. "
        f"Matched rank: {defs['matched rank']}."
    )

    rep.heading("What the numbers show")
    rep.text(results["conclusion"])

    # -- accuracy -------------------------------------------------------------------------
    rep.heading("Accuracy of every merge, per task, mean and worst task")
    rep.table(
        _accuracy_rows(fams, tasks),
        "Test accuracy on each task and its mean and minimum over the tasks. Rows per family: "
        "the start (zero-shot), each task's own fine-tuned model on its own task, the best "
        "single fine-tuned model on every task, then every merge with the hyper-parameters "
        f"chosen on validation (validation mean accuracy in its column). {defs['accuracy']}. "
        f"Merging works: {defs['merging works']}.",
    )
    rep.figure(
        _accuracy_figure(fams),
        "Mean (bars) and worst-task (black dots) test accuracy of each merge, pre-trained "
        "family (left) and control from a random start (right). Dashed: the start's mean "
        "accuracy; dotted: the best single fine-tuned model's; solid grey: each task's own "
        f"model on its task; red: chance ({CHANCE:g}). {NO_BN}.",
        save_as=figs / "accuracy",
    )
    rep.figure(
        _selection_figure(fams, cfg),
        "Validation: the mean accuracy over the tasks' validation splits of every candidate "
        f"λ of each method that selects one ({cfg['budget']} candidates each, the matched "
        "budget); the circled point is the one chosen. Pre-trained family left, control right.",
        save_as=figs / "selection",
    )

    # -- the decomposition ---------------------------------------------------------------
    rep.heading("Curvature-aware vs. flat subspace merging across ranks")
    dec = {f: _load(stages, fams[f]["decomposition"]).table for f in FAMILIES}
    rep.figure(
        _decomposition_figure(dec),
        "Loss increase over the tasks (sum over tasks) of the subspace merge at each rank, "
        "curvature-aware (solid) and flat (dashed): the Fréchet variance inside the subspace, "
        "the residual energy outside it, the prediction of the quadratic model (variance + "
        "residual + cross term) and the measured increase. Decomposition: "
        f"{defs['decomposition']}. Pre-trained family left, control right.",
        save_as=figs / "decomposition",
    )
    rep.table(
        _decomposition_rows(dec),
        "The same terms per family, geometry and rank (sums over the tasks), with the mean "
        "residual fraction ||r_i||²/||τ_i||² (the share of each task vector outside the "
        "subspace).",
    )

    # -- the planes ----------------------------------------------------------------------
    rep.heading("The plane through the start and two task vectors, with the merged points")
    for f in FAMILIES:
        land = _load(stages, fams[f]["plane"]["stage"])
        rep.figure(
            _plane_figure(land.dataset, fams[f]["plane"], tasks, f),
            f"{f.capitalize()} family: test loss of each task (log colour scale per panel) on "
            f"the {defs['plane']}. Black markers: the start θ0 and the two fine-tuned models "
            "spanning the plane; coloured markers: each merge's projection (its distance from "
            f"the plane in the legend). {NO_BN}.",
            save_as=figs / f"plane_{f}",
        )

    # -- the barriers --------------------------------------------------------------------
    rep.heading("Barriers between each fine-tuned model and each merge")
    rep.table(
        _barrier_rows(fams, tasks),
        f"Barrier on each task's test split between that task's fine-tuned model θ_i and the "
        f"merge, and its mean over the tasks. Definition: {defs['barrier']}. {NO_BN}.",
    )

    rep.heading("How these numbers were made")
    rep.text(
        "Each model, merge, decomposition, plane and set of barriers is a stage stored in its "
        "own folder (named by a hash of its settings, which include the folders of the stages "
        "it depends on), so running the study again reuses them and a changed setting "
        "recomputes only what depends on it. result.json next to this report holds every "
        f"number shown, with its definition. Precision and device: {defs['precision']}."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _accuracy_rows(fams: dict[str, Any], tasks: list[str]) -> list[dict[str, Any]]:
    rows = []
    for f in FAMILIES:
        fam, v = fams[f], fams[f]["verdict"]

        def row(what, metrics, val=None, hyper="–", f=f):
            mean, worst = _mean(metrics)
            out = {"family": f, "model": what, "hyper-parameters": hyper, "val. mean": val}
            out.update({t: metrics[t]["accuracy"] for t in tasks})
            return {**out, "mean": mean, "worst": worst}

        rows.append(row("start (zero-shot)", fam["start_test"], "–"))
        rows.append(row("own model on each task", fam["own_test"], "–"))
        best = v["best_single_model"]
        rows.append(row(f"best single model ({tasks[best]})", fam["single_test"][best], "–"))
        for name, m in fam["merges"].items():
            val = m["val_mean_accuracy"]
            mark = " (chosen)" if name == v["chosen"] else ""
            rows.append(row(f"merge: {name}{mark}", m["test"], val, _hyper(m["hyper"])))
    return rows


def _accuracy_figure(fams: dict[str, Any]):
    from basinscope.plotting._common import new_figure, style_axes

    fig = new_figure((12.0, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, f in zip(axes, FAMILIES, strict=True):
        fam, v = fams[f], fams[f]["verdict"]
        names = list(fam["merges"])
        x = np.arange(len(names))
        means = [fam["merges"][n]["test_mean_accuracy"] for n in names]
        worst = [fam["merges"][n]["test_worst_accuracy"] for n in names]
        colors = ["#1f77b4" if n != v["chosen"] else "#2ca02c" for n in names]
        ax.bar(x, means, color=colors, label="mean over tasks (green: chosen on validation)")
        ax.plot(x, worst, "ko", label="worst task")
        ax.axhline(v["start_mean_accuracy"], color="k", ls="--", lw=1, label="start")
        ax.axhline(v["best_single_mean_accuracy"], color="k", ls=":", lw=1.2, label="best single")
        ax.axhline(v["individual_mean_accuracy"], color="0.5", lw=1, label="own models")
        ax.axhline(CHANCE, color="#d62728", lw=0.8, label="chance")
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{f} start: merging {'works' if v['works'] else 'fails'}")
        ax.set_ylim(0, 1.0)
        style_axes(ax)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(fontsize=7.5, loc="upper right")
    return fig


def _selection_figure(fams: dict[str, Any], cfg: dict[str, Any]):
    from basinscope.plotting._common import new_figure, style_axes

    fig = new_figure((12.0, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, f in zip(axes, FAMILIES, strict=True):
        for k, (name, m) in enumerate(fams[f]["merges"].items()):
            sel = [r for r in m["selection"] if "lam" in r]
            if not sel:
                continue
            lam = [r["lam"] for r in sel]
            acc = [r["mean_accuracy"] for r in sel]
            (line,) = ax.plot(lam, acc, marker=MARKERS[k % len(MARKERS)], ms=4, label=name)
            ax.plot(
                [m["hyper"]["lam"]],
                [m["val_mean_accuracy"]],
                "o",
                ms=11,
                mfc="none",
                color=line.get_color(),
            )
        ax.set_xlabel("λ")
        ax.set_title(f"{f} start")
        style_axes(ax)
    axes[0].set_ylabel(f"validation {cfg['select_metric'].replace('_', ' ')}")
    axes[1].legend(fontsize=7.5)
    return fig


TERMS = {
    "variance": "#1f77b4",
    "residual": "#ff7f0e",
    "predicted": "#2ca02c",
    "measured": "#d62728",
}


def _decomposition_figure(dec: dict[str, Any]):
    from basinscope.plotting._common import new_figure, style_axes

    fig = new_figure((12.0, 4.0))
    axes = fig.subplots(1, 2)
    for ax, f in zip(axes, FAMILIES, strict=True):
        t = dec[f].sum("task")
        ranks = t["rank"].values
        for g, ls in (("curvature", "-"), ("flat", "--")):
            if g not in t.geometry.values:
                continue
            for term, color in TERMS.items():
                ax.plot(
                    ranks,
                    t[term].sel(geometry=g).values,
                    ls=ls,
                    marker="o",
                    ms=3,
                    color=color,
                    label=f"{term} ({g})",
                )
        ax.set_xlabel("rank of the subspace")
        ax.set_xticks(ranks)
        ax.set_ylabel("loss increase, summed over tasks")
        ax.set_title(f"{f} start")
        style_axes(ax)
    axes[1].legend(fontsize=7, ncol=2)
    return fig


def _decomposition_rows(dec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for f in FAMILIES:
        t = dec[f]
        for g in t.geometry.values:
            for r in t["rank"].values:
                s = t.sel(geometry=g, rank=r)
                rows.append(
                    {
                        "family": f,
                        "geometry": str(g),
                        "rank": int(r),
                        **{
                            v: float(s[v].sum("task"))
                            for v in ("variance", "residual", "cross", "predicted", "measured")
                        },
                        "residual fraction": float(s["residual_fraction"].mean("task")),
                    }
                )
    return rows


def _plane_figure(ds, plane: dict[str, Any], tasks: list[str], family: str):
    from basinscope.plotting import plot_contour
    from basinscope.plotting._common import new_figure

    n = len(tasks)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = new_figure((4.6 * cols, 4.0 * rows + 0.8))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    pts = np.asarray(plane["model_points"])
    labels = plane["model_labels"]
    for ax, task in zip(axes, tasks, strict=False):
        var = f"{task}_loss"
        plot_contour(
            ds,
            var,
            kind="filled",
            log=True,
            center_marker=False,
            ax=ax,
            title=f"{task}: test loss",
        )
        for (x, y), lab, mk in zip(pts, labels, ("X", "s", "D"), strict=False):
            ax.plot(x, y, mk, color="k", ms=8, mfc="white", mew=1.5, label=f"θ: {lab}")
        for k, (name, (x, y, dist)) in enumerate(plane["merged_points"].items()):
            ax.plot(
                x,
                y,
                MARKERS[k % len(MARKERS)],
                ms=7,
                color=f"C{k % 10}",
                mec="k",
                mew=0.5,
                label=f"{name} (off-plane {dist:.2g})",
            )
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    for ax in axes[n:]:
        ax.set_axis_off()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=4, fontsize=7.5, frameon=False)
    fig.suptitle(f"{family} start: the plane through θ0, {labels[1]} and {labels[2]}")
    return fig


def _barrier_rows(fams: dict[str, Any], tasks: list[str]) -> list[dict[str, Any]]:
    rows = []
    for f in FAMILIES:
        for name, per_task in fams[f]["barriers"]["values"].items():
            vals = [per_task[t]["value"] for t in tasks]
            rows.append(
                {
                    "family": f,
                    "merge": name,
                    **{t: v for t, v in zip(tasks, vals, strict=True)},
                    "mean": float(np.mean(vals)),
                }
            )
    return rows
