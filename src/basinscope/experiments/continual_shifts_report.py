"""The continual-shifts study's report: figures (PNG/PDF) and one self-contained HTML file.

Everything is drawn from the results dict (stored in result.json); nothing is computed again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import basinscope
from basinscope.experiments.stages import stages_table
from basinscope.report import Report
from basinscope.store import paths
from basinscope.store.atomic import atomic_write_text

__all__ = ["FIGURES", "findings", "write_report"]

FIGURES = ("matrices", "forgetting", "sharpness_barrier", "subnetworks")
BN = "BatchNorm policy: none needed, the LeNet has no BatchNorm layers."


def _pm(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, pol, setup = results["config"], results["policies"], results["setup"]
    cont, sub, v = results["continual"], results["subnetworks"], results["verdict"]
    angles = setup["angles"]
    seq = " → ".join(f"{a:g}°" for a in angles)
    seeds = cfg["seeds"]

    rep = Report(
        f"Continual learning across rotations ({seq}) and subnetworks from the landscape",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{len(cont)} methods × {seeds} seeds · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "Issue 17's methods, tested. Data: "
        + pol["data"]
        + ". Model: "
        + pol["model"]
        + ". Pre-training: "
        + pol["pretrain"]
        + ". Then "
        + pol["stages"]
        + ". Methods: ft (every parameter) with SGD, SAM and C-Flat; "
        + pol["anchors"]
        + "; "
        + pol["mask"]
        + ". "
        + pol["sharpness_aware"]
        + ". Spread: mean ± sample standard deviation over the seeds (data orders 0.."
        + f"{seeds - 1}; the pre-trained model is shared).\n\n"
        + BN
    )

    rep.heading("What the numbers show")
    rep.text(findings(v))

    rep.heading("1. Continual learning: forgetting, final accuracy, plasticity")
    rep.table(
        [
            {
                "method": c["label"],
                "average forgetting": _pm(c["average_forgetting"]),
                "average final accuracy": _pm(c["average_final_accuracy"]),
                "learning accuracy": _pm(c["learning_accuracy"]),
                "adaptation cost": v["methods"][m]["adaptation_cost"],
                "mean sharpness": _pm(c["mean_sharpness"]),
                "mean barrier": _pm(c["mean_barrier"]),
            }
            for m, c in cont.items()
        ],
        "Average forgetting (Chaudhry et al. 2018): mean over the tasks but the last of the "
        "best test accuracy the task had before the last stage minus its final one. Average "
        "final accuracy: mean over all tasks of the test accuracy after the last stage. "
        "Learning accuracy: mean over stages j ≥ 1 of task j's accuracy just after learning "
        "it; adaptation cost: ft (SGD)'s learning accuracy minus the method's. Sharpness: "
        f"adaptive worst case, max of L(w+δ) − L(w) over ‖δ/|w|‖₂ ≤ {cfg['sharpness_rho']:g} "
        "(Kwon et al. 2021, η = 0, scale-invariant), L the mean cross-entropy on the first "
        f"{cfg['sharpness_examples']} training digits of the solution's own task, averaged "
        f"over stages 1..{len(angles) - 1}. Barrier: {cfg['barrier_definition']} "
        f"{cfg['barrier_metric']} barrier between consecutive solutions on the union of both "
        "tasks' test digits, averaged over the transitions. " + BN,
    )
    rep.figure(
        _matrices(cont, angles),
        "Accuracy matrix of each method (mean over the seeds): cell (task i, stage j) is the "
        f"fraction of task i's {setup['examples']['test']} test digits (rotated by angles[i]) "
        "classified correctly after stage j (stage 0: pre-training; stage j: fine-tuned on "
        "task j from stage j − 1). Below the diagonal: old tasks (forgetting); above: tasks "
        "not seen yet. " + BN,
        save_as=figs / "matrices",
    )
    rep.figure(
        _forgetting(cont),
        "Each method's average forgetting (Chaudhry et al. 2018; lower is better) against its "
        "learning accuracy (each new task's test accuracy just after learning it; higher is "
        "better) and its average final accuracy over all tasks. Points: mean over the seeds; "
        "bars: the seeds' range (min to max). " + BN,
        save_as=figs / "forgetting",
    )
    rep.figure(
        _sharpness_barrier(cont, angles, cfg),
        "Left: adaptive worst-case sharpness (η = 0, scale-invariant; radius "
        f"{cfg['sharpness_rho']:g} in |w|-scaled units) of each stage's solution on its own "
        "task's training digits (stage 0: the shared pre-trained model). Right: the "
        f"{cfg['barrier_definition']} {cfg['barrier_metric']} barrier "
        f"({results['continual']['ft-sgd']['runs'][0]['stages'][1].get('barrier_formula', '') or 'see the definitions'}) "
        "on the straight line between stage j − 1's and stage j's solutions, on the union of "
        "both tasks' test digits; bars: the "
        f"{cfg['ci_level']:.0%} bootstrap CI ({cfg['barrier_bootstrap']} resamples of the "
        "digits) of seed 0. Lines: mean over the seeds. " + BN,
        save_as=figs / "sharpness_barrier",
    )
    mats = []
    for c in cont.values():
        for r in c["runs"]:
            for i, row in enumerate(r["accuracy"]):
                mats.append(
                    {
                        "method": c["label"],
                        "seed": r["seed"],
                        "task": f"{angles[i]:g}°",
                        **{f"after stage {j}": x for j, x in enumerate(row)},
                    }
                )
    rep.table(mats, "Every accuracy matrix, row by row (task i's test accuracy after stage j).")

    rep.heading("2. Subnetworks from the landscape, at equal trainable-parameter counts")
    sh = setup["shift"]
    rep.figure(
        _subnetworks(sub["summary"]),
        f"From the pre-trained model, {cfg['steps']} steps on the digits rotated by "
        f"{sh[1]:g}°: target gain (test accuracy on the rotated digits after minus before) "
        f"against source forgetting (test accuracy on the {sh[0]:g}° digits before minus "
        "after). One panel per trainable-parameter count, set by a surgical block (every "
        "parameter of that LeNet module): each mask keeps exactly that many entries, the "
        "top ones by its signal on the rotated training digits (gradient |∇L|, Fisher "
        "diagonal, Hutchinson |diag H|, relative change under a 20-step probe) or at random. "
        "Points: mean over the seeds; bars: the seeds' range. " + BN,
        save_as=figs / "subnetworks",
    )
    rep.table(
        [
            {
                "count (block)": f"{b['block_params']} ({block}, {b['fraction']:.2%})",
                "method": name if name == "surgical" else f"mask ({name})",
                "trainable": m["trainable_params"],
                "target gain": _pm(m["target_gain"]),
                "source forgetting": _pm(m["source_forgetting"]),
            }
            for block, b in sub["summary"].items()
            for name, m in b["methods"].items()
        ],
        "Target gain and source forgetting, mean ± sample standard deviation over "
        f"{seeds} seeds (data orders; the random mask's seed too). 'trainable': the entries "
        "the method may change, equal within a count by construction.",
    )

    rep.heading("How these numbers were made")
    rep.text(
        "Pre-training, every fine-tuning stage, every subnetwork run and every measurement "
        "(accuracies, sharpness, barrier) is a stage stored in a folder named by a hash of its "
        "settings, which include the folder of the stage it starts from; running the study "
        "again reuses them. result.json beside this report holds every number, with its "
        "definition. Precision and device: " + pol["precision"] + "."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _matrices(cont, angles):
    from basinscope.plotting._common import new_figure

    n = len(cont)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = new_figure((3.0 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    t = len(angles)
    for ax, c in zip(axes, cont.values()):
        a = np.array(c["mean_accuracy"])
        ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
        for i in range(t):
            for j in range(t):
                ax.text(
                    j,
                    i,
                    f"{a[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if a[i, j] < 0.6 else "k",
                )
        ax.set_xticks(range(t), [str(j) for j in range(t)])
        ax.set_yticks(range(t), [f"{x:g}°" for x in angles])
        ax.set_xlabel("after stage")
        ax.set_ylabel("task")
        ax.set_title(c["label"], fontsize=9)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def _err(s):
    return [[s["mean"] - s["min"]], [s["max"] - s["mean"]]]


def _forgetting(cont):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    axes = fig.subplots(1, 2)
    colors = _colors(len(cont))
    for (_m, c), col in zip(cont.items(), colors):
        f = c["average_forgetting"]
        for ax, key in zip(axes, ("learning_accuracy", "average_final_accuracy")):
            y = c[key]
            ax.errorbar(
                [f["mean"]],
                [y["mean"]],
                xerr=_err(f),
                yerr=_err(y),
                fmt="o",
                color=col,
                capsize=3,
                label=c["label"],
            )
    axes[0].set_ylabel("learning accuracy")
    axes[1].set_ylabel("average final accuracy")
    for ax in axes:
        ax.set_xlabel("average forgetting")
    axes[1].legend(fontsize=8, loc="best")
    return fig


def _colors(n):
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _sharpness_barrier(cont, angles, cfg):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    axes = fig.subplots(1, 2)
    t = len(angles)
    for (_m, c), col in zip(cont.items(), _colors(len(cont))):
        sharp = np.mean([[st["sharpness"] for st in r["stages"]] for r in c["runs"]], axis=0)
        axes[0].plot(range(t), sharp, "o-", color=col, label=c["label"])
        bars = np.mean([[st["barrier"] for st in r["stages"][1:]] for r in c["runs"]], axis=0)
        x = np.arange(1, t)
        axes[1].plot(x, bars, "o-", color=col, label=c["label"])
        ci = [st["barrier_ci"] for st in c["runs"][0]["stages"][1:]]
        if all(b is not None for b in ci):
            lo = [b[0] for b in ci]
            hi = [b[1] for b in ci]
            axes[1].vlines(x, lo, hi, color=col, alpha=0.5)
    axes[0].set_xticks(range(t), [f"{j}\n({angles[j]:g}°)" for j in range(t)])
    axes[0].set_xlabel("stage (its task)")
    axes[0].set_ylabel("adaptive sharpness")
    axes[1].set_xticks(range(1, t), [f"{j - 1}→{j}" for j in range(1, t)])
    axes[1].set_xlabel("consecutive solutions")
    axes[1].set_ylabel(f"{cfg['barrier_definition']} {cfg['barrier_metric']} barrier")
    axes[0].legend(fontsize=8)
    return fig


def _subnetworks(summary):
    from basinscope.plotting._common import new_figure

    n = len(summary)
    fig = new_figure((5.5 * n, 4.2))
    axes = np.atleast_1d(fig.subplots(1, n)).reshape(-1)
    for ax, (block, b) in zip(axes, summary.items()):
        names = list(b["methods"])
        for (name, m), col in zip(b["methods"].items(), _colors(len(names))):
            g, f = m["target_gain"], m["source_forgetting"]
            ax.errorbar(
                [f["mean"]],
                [g["mean"]],
                xerr=_err(f),
                yerr=_err(g),
                fmt="s" if name == "surgical" else ("x" if name == "random" else "o"),
                color=col,
                capsize=3,
                label=name if name == "surgical" else f"mask ({name})",
            )
        ax.set_title(f"{b['block_params']} trainable entries (= {block}, {b['fraction']:.2%})")
        ax.set_xlabel("source forgetting")
        ax.set_ylabel("target gain")
        ax.legend(fontsize=8)
    return fig


def findings(v: dict[str, Any]) -> str:
    """The report's conclusions, in words, from the verdict's numbers."""
    ms = v["methods"]
    base = ms["ft-sgd"]
    least = ms[v["least_forgetting"]]
    parts = []
    order = ", ".join(f"{ms[m]['label']} {ms[m]['forgetting']:.3f}" for m in v["forgetting_order"])
    cost = v["least_forgetting_cost"]
    parts.append(
        f"Forgetting: {least['label']} forgets least (average forgetting "
        f"{least['forgetting']:.3f} vs {base['forgetting']:.3f} for ft with SGD; order: "
        f"{order}). Its adaptation cost is {cost:+.3f} in learning accuracy "
        f"({least['learning_accuracy']:.3f} vs {base['learning_accuracy']:.3f}): "
        + (
            "it learns each new task less well, the price of remembering."
            if cost > 0.01
            else "it learns each new task about as well."
            if cost > -0.01
            else "it even learns each new task better."
        )
        + f" The best average final accuracy is {ms[v['best_final']]['label']}'s "
        f"({ms[v['best_final']]['final_accuracy']:.3f}, ft with SGD "
        f"{base['final_accuracy']:.3f})."
    )
    clear = [ms[m]["label"] for m in ms if ms[m]["forgets_less_than_ft_clearly"]]
    parts.append(
        f"Methods forgetting less than ft with SGD in every seed (the {v['seeds']} seeds' "
        f"ranges apart): {', '.join(clear)}."
        if clear
        else f"No method forgets less than ft with SGD in every seed ({v['seeds']} seeds)."
    )
    hi = v.get("barrier_ci_high_max")
    parts.append(
        f"Barriers: the largest barrier between consecutive solutions, over every method, "
        f"seed and transition, is {v['barrier_max']:.3g}"
        + ("" if hi is None else f" (the highest bootstrap CI bound {hi:.3g})")
        + (
            ": each stage's solution stays linearly connected to the previous one on both "
            "tasks (the loss on the segment never rises above the chord), whatever the method."
            if v["barrier_max"] <= 1e-6
            else "."
        )
    )
    for r in v["sharpness_aware"].values():
        flat = (
            "clearly flatter (every seed)"
            if r["flatter_clearly"]
            else "flatter on average, not in every seed"
            if r["flatter"]
            else "not flatter"
        )
        forget = (
            "forgets less in every seed"
            if r["forgets_less_clearly"]
            else "forgets less on average, not in every seed"
            if r["forgets_less"]
            else "does not forget less"
        )
        parts.append(
            f"{r['label']}: its solutions are {flat} than SGD's (mean adaptive sharpness "
            f"{r['sharpness']:.4g} vs {r['sgd_sharpness']:.4g}), and it {forget} (average "
            f"forgetting {r['forgetting']:.3f} vs {r['sgd_forgetting']:.3f})."
            + (
                " Flatter solutions did not bring less forgetting here."
                if r["flatter"] and not r["forgets_less"]
                else ""
            )
        )
    for block, b in v["masks"].items():
        rows = b["signals"]
        txt = "; ".join(
            f"{s} {r['target_gain']:+.3f}"
            for s, r in sorted(rows.items(), key=lambda x: -x[1]["target_gain"])
        )
        beat = b["landscape_beating_random_clearly"]
        below = b["landscape_below_random"]
        random_gain = next(iter(rows.values()))["random_gain"]
        parts.append(
            f"Subnetworks of {b['trainable_params']} entries ({b['fraction']:.2%}, the size of "
            f"{block}): target gain of random masks {random_gain:+.3f}; {txt}. "
            + (
                f"Landscape-chosen masks that beat random ones in every seed: {', '.join(beat)}."
                if beat
                else "No landscape-chosen mask beats random ones in every seed."
            )
            + (f" Below random on average: {', '.join(below)}." if below else "")
            + (
                " Surgical fine-tuning of the block beats random masks in every seed."
                if rows["surgical"]["beats_random_clearly"]
                else " Surgical fine-tuning of the block does not beat random masks in every seed."
            )
        )
    parts.append(
        f"A toy-scale test ({v['seeds']} seeds, one LeNet on 8x8 digits, one setting of each "
        "method's strength): the ranking of the anchored methods depends on their strengths "
        "(l2sp's alpha, ewc's alpha, the trust region's epsilon), which trade forgetting for "
        "plasticity; 'in every seed' with few seeds is weak evidence."
    )
    return "\n\n".join(parts)
