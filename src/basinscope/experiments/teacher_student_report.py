"""The teacher-student study's report, drawn from the results dict."""

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

__all__ = ["write_report"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, pol, defs = results["config"], results["policies"], results["definitions"]
    m, d = cfg["teacher_units"], cfg["in_features"]
    rep = Report(
        "Teacher-student minima of two-layer ReLU networks",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{results['setup']['teacher']} · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "With Gaussian inputs, the loss of a two-layer network depends on its first-layer "
        "weights only through the overlaps R = W V^T / d (with the teacher) and Q = W W^T / d "
        "(among the student's units), so every minimum has an exact low-dimensional "
        "description ('Sharp description of local minima in the loss landscape of "
        "high-dimensional two-layer ReLU neural networks'). The theory: minima are isolated in "
        "the well-specified case K = M and become connected by flat directions as the student "
        "widens: parallel student units can share a teacher unit in any proportion, which "
        f"leaves the function unchanged and gives the Hessian d (K - M) zero modes.\n\n"
        f"Teacher: {results['setup']['teacher']}. Student: {results['setup']['student']}. "
        f"Data: {pol['data']}. Training: {pol['training']}."
    )
    rep.heading("What the numbers show")
    rep.text("\n\n".join(results["conclusions"]))
    rows = results["summary"]
    rep.heading("Distinct minima against width")
    rep.figure(
        _counts(results),
        f"Left: distinct minima (clusters: {defs['distinct']}; threshold "
        f"{cfg['cluster_threshold']:g}) and sharing types ({defs['sharing']}) among "
        f"{cfg['seeds']} seeds per width K (teacher M = {m}). Theory: one isolated minimum at "
        "K = M for this small M (spurious minima only at larger M), a continuum at K > M, so "
        "the count of clusters grows with the seeds there. Right: the Hessian's zero modes at "
        f"every converged minimum against d (K - M) (d = {d}, dotted: theory), and the "
        "negative modes (theory: none at a minimum).",
        save_as=figs / "minima",
    )
    rep.table(
        [
            {
                "K": r["width"],
                "runs": r["runs"],
                "converged": r["converged"],
                "zero loss": r["zero_loss"],
                "distinct minima": r["distinct"],
                "sharing types": r["types"],
                "zero modes": ", ".join(map(str, r["zero_modes"])),
                "theory": r["predicted_zero_modes"],
                "negative modes": ", ".join(map(str, r["negative_modes"])),
                "max barrier": r["max_barrier"],
                "max Bezier loss": r["max_curve_loss"],
                "max merge-path loss": r["max_merge_path_loss"],
                "loss of f = 0": r["loss_at_zero"],
            }
            for r in rows
        ],
        f"Per width. Zero modes: {defs['zero_modes']} ({pol['hessian']}). Barrier: "
        f"{defs['barrier']}.",
    )
    rep.heading("The order parameters of the minima")
    rep.figure(
        _overlaps(results),
        "The aligned student-teacher overlaps R_km of every minimum reached, one panel per "
        "width: each point is a student unit, at its best teacher unit m (x, jittered by "
        "seed) and its overlap R_km (y). At K = M every unit sits at R = T_mm = 1, the "
        "teacher; at K > M units share a teacher unit with overlaps summing to 1, in "
        "proportions that vary from seed to seed: the flat directions.",
        save_as=figs / "overlaps",
    )
    rep.heading("Connectivity between minima")
    rep.figure(
        _paths(results),
        f"Loss on the straight line (solid; {defs['barrier']}) and on the Bezier curve "
        f"(dashed; {defs['curve']}) between permutation-aligned minima of each width, and on "
        f"the merge path (dotted, plotted against its fraction of points; {defs['merge_path']}"
        "; floored at 1e-18). Theory: at K > M the minima are connected at zero loss through "
        "flat directions; the merge path is such a connection when the folded units are "
        "parallel, while the straight line may still climb when the two minima share "
        "different teacher units (the zero-loss set is not convex). Between distinct isolated "
        "minima every path climbs. "
        + (
            ""
            if cfg["curve_steps"]
            else "The Bezier curves were not trained (curve_steps = 0): straight line only."
        ),
        save_as=figs / "paths",
    )
    rep.heading("How these numbers were made")
    rep.text(
        "Every student and every width's analysis is a stage stored in a folder named by a "
        "hash of its settings; result.json beside this report holds every number. "
        f"Precision: {pol['precision']}. Connectivity: {pol['connectivity']}."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _counts(results):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    a1, a2 = fig.subplots(1, 2)
    rows = results["summary"]
    k = [r["width"] for r in rows]
    a1.plot(k, [r["distinct"] for r in rows], "o-", label="distinct minima (clusters)")
    a1.plot(k, [r["types"] for r in rows], "s--", label="sharing types")
    a1.plot(k, [r["runs"] for r in rows], ":", color="k", label="seeds")
    a1.set_xlabel("student width K")
    a1.set_ylabel("count")
    a1.legend(fontsize=8)
    for w in results["widths"]:
        for m in w["minima"]:
            if m["converged"]:
                a2.plot(w["width"], m["hessian"]["zero"], "o", color=COLORS[0], alpha=0.4)
                a2.plot(w["width"], m["hessian"]["negative"], "x", color=COLORS[1], alpha=0.6)
    a2.plot(k, [r["predicted_zero_modes"] for r in rows], ":", color="k", label="d (K - M)")
    a2.plot([], [], "o", color=COLORS[0], label="zero modes")
    a2.plot([], [], "x", color=COLORS[1], label="negative modes")
    a2.set_xlabel("student width K")
    a2.set_ylabel("Hessian eigenvalues")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return fig


def _overlaps(results):
    from basinscope.plotting._common import new_figure

    widths = results["widths"]
    fig = new_figure((3.2 * len(widths) + 1, 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(widths), sharey=True))
    for ax, w in zip(axes, widths, strict=True):
        n = max(1, len(w["minima"]))
        for i, m in enumerate(w["minima"]):
            r = np.asarray(m["aligned_R"])
            best = r.argmax(1)
            ax.plot(
                best + 0.6 * (i / n - 0.5),
                r[np.arange(len(r)), best],
                "o",
                ms=4,
                color=COLORS[m["cluster"] % len(COLORS)],
                alpha=0.7,
            )
        ax.set_title(f"K = {w['width']}")
        ax.set_xlabel("teacher unit m")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("overlap R_km")
    return fig


def _paths(results):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    ax = fig.subplots(1, 1)
    for i, w in enumerate(results["widths"]):
        col = COLORS[i % len(COLORS)]
        for j, p in enumerate(w["pairs"]):
            lab = f"K = {w['width']}" if j == 0 else None
            ax.plot(p["line_alphas"], np.maximum(p["line_loss"], 1e-18), "-", color=col, label=lab)
            mp = np.asarray(p["merge_path"])
            ax.plot(np.linspace(0, 1, len(mp)), np.maximum(mp, 1e-18), ":", color=col)
            if p["curve"] is not None:
                c = p["curve"]
                ax.plot(c["t"], np.maximum(c["loss"], 1e-18), "--", color=col)
    ax.set_yscale("log")
    ax.set_xlabel("alpha (line) / t (curve)")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if any(w["pairs"] for w in results["widths"]):
        ax.legend(fontsize=8)
    return fig
