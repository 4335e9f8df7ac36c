"""The dln-saddles study's report: figures (PNG/PDF) and one self-contained HTML file, drawn
from the results dict (nothing is computed again)."""

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


def _main(results):
    return next(c for c in results["curves"] if c["batch_size"] == 0 and c["label_noise"] == 0)


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, pol, defs, setup = (results[k] for k in ("config", "policies", "definitions", "setup"))
    main = _main(results)
    lr, depth = cfg["lr"], cfg["depth"]
    rep = Report(
        "Saddle-to-saddle dynamics of a deep linear network",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{setup['model']}, {setup['parameters']} parameters · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "From a small initialisation, gradient descent on a deep linear network learns the "
        "teacher's singular modes one at a time, largest first: the loss falls in steps "
        "separated by plateaus, each plateau a saddle, and the number of descent directions "
        "(negative Hessian eigenvalues) should fall as modes are learned (Saxe et al. 2014; "
        "Corlouer et al., 'SGD in the saddle-to-saddle regime of deep linear networks').\n\n"
        f"Data: {pol['data']}. Training: {pol['training']}."
    )
    rep.heading("What the numbers show")
    rep.text("\n\n".join(results["conclusions"]))

    rep.heading("Loss and plateaus")
    rep.figure(
        _loss(main, results["plateaus"]),
        f"Training loss of full-batch gradient descent on clean targets ({defs['loss']}), log "
        f"scale, against step. Shaded: the plateaus detected from the numbers ({defs['plateau']}; "
        f"window {cfg['plateau_window']}, tol {cfg['plateau_tol']:g}, at least "
        f"{cfg['plateau_min_steps']} steps). Dotted lines: the loss of the saddle with the "
        "first k modes learned, (1/2) sum_{a>k} s_a^2 (the theory's plateau levels with "
        "whitened inputs).",
        save_as=figs / "loss",
    )
    rep.heading("Singular values against the analytic solution")
    rep.figure(
        _modes(main, lr),
        "Left: the mode strengths u_a = r_a^T W v_a of gradient descent (solid) and the "
        "gradient-flow solution of Saxe et al. (2014) (dashed): "
        + (
            "u(t) = s e^{2st} / (e^{2st} - 1 + s/u0), t = lr x step, "
            if depth == 2
            else f"du/dt = {depth} u^(2-2/{depth}) (s - u) integrated, t = lr x step, "
        )
        + "which assumes whitened inputs, balanced weights aligned with the singular vectors "
        "of Sigma_yx and gradient flow (lr -> 0). The initialisation here is random, neither "
        f"balanced nor aligned; u0 is the effective initial strength ({defs['u0']}). Right: the "
        "singular values of the end-to-end map W (the top rank + 1) with the teacher's s_a "
        "(dotted). Where the solid and dashed curves separate, the measurement and the theory "
        "disagree; the conclusions above give the transition steps of both.",
        save_as=figs / "modes",
    )
    rep.table(
        [
            {
                "mode": a + 1,
                "s_a": main["teacher_s"][a],
                "u0 (effective)": main["u0"][a],
                "transition step (measured)": main["transition_steps"][a],
                "transition step (theory)": main["theory_transition_steps"][a],
            }
            for a in range(setup["rank"])
        ],
        f"Per mode, gradient descent on clean targets. {defs['transition_step']}.",
    )
    rep.heading("The saddles: bottom Hessian eigenvalues at each plateau")
    if results["plateaus"]:
        rep.figure(
            _hessians(results["plateaus"], setup["negative_threshold"]),
            f"Left: the {cfg['hessian_k']} smallest Hessian eigenvalues at the middle of each "
            f"plateau ({pol['hessian']}); symlog scale; dashed: the threshold "
            f"-{setup['negative_threshold']:g}. Right: the number of negative eigenvalues "
            f"({defs['negative_count']}) against the plateau, with the modes learned there. "
            "Theory: it falls from plateau to plateau and is zero at the minimum"
            + (
                f"; at the origin of a depth-2 network it is rank x width = "
                f"{setup['origin_negative_prediction']}."
                if setup["origin_negative_prediction"] is not None
                else "."
            ),
            save_as=figs / "hessians",
        )
    rep.table(
        [
            {
                "plateau": i + 1,
                "steps": f"{p['start']}–{p['end']}",
                "Hessian at step": p["middle"],
                "loss": p["loss"],
                "modes learned": p["modes_learned"],
                "negative eigenvalues": p["negative_count"],
                "predicted (r-k)(h-k)": p["predicted_negative_count"],
                "smallest eigenvalue": p["min_eigenvalue"],
                "Lanczos converged": p["converged"],
            }
            for i, p in enumerate(results["plateaus"])
        ],
        "Plateaus of gradient descent and the Hessian at their middles.",
    )
    rep.heading("Batch size and label noise")
    rep.figure(
        _timing(results),
        "Left: the loss of every run (colour: batch size, 0 = full batch; dashed: label "
        "noise). Right: the step at which each mode reaches s_a/2, per setting (mean over SGD "
        "seeds), with the gradient-flow prediction from that setting's own Sigma_yx (x). The "
        "theory of Corlouer et al. predicts that SGD noise does not change the saddle-to-saddle "
        "sequence; label noise changes Sigma_yx slightly, and its stationary spread around "
        "each mode (not measured here) grows with the noise.",
        save_as=figs / "timing",
    )
    rep.table(
        [
            {
                "batch size": r["batch_size"] or "full",
                "label noise": r["label_noise"],
                "runs": r["runs"],
                "transition steps": ", ".join(
                    "—" if t is None else f"{t:.0f}" for t in r["transition_steps"]
                ),
                "theory": ", ".join(f"{t:.0f}" for t in r["theory_transition_steps"]),
                "shift vs GD": ", ".join(
                    "—" if t is None else f"{t:+.1%}" for t in r["shift_vs_gd"]
                ),
                "final loss": r["final_loss"],
            }
            for r in results["summary"]
        ],
        "Mode transitions per setting.",
    )
    rep.heading("How these numbers were made")
    rep.text(
        "Each run and the Hessians are stages stored in folders named by a hash of their "
        "settings; result.json beside this report holds every number shown, with its "
        f"definition. Precision: {pol['precision']}."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _loss(main, plateaus):
    from basinscope.plotting._common import new_figure

    fig = new_figure((7.5, 4.2))
    ax = fig.subplots()
    ax.plot(main["steps"], main["loss"], color="k", lw=1.4)
    s = np.asarray(main["teacher_s"])
    for k in range(len(s)):
        ax.axhline(0.5 * float(np.sum(s[k:] ** 2)), color="#888", ls=":", lw=0.8)
    for i, p in enumerate(plateaus):
        ax.axvspan(p["start"], p["end"], color=COLORS[i % len(COLORS)], alpha=0.15)
        ax.plot([p["middle"]], [p["loss"]], "o", color=COLORS[i % len(COLORS)])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    return fig


def _modes(main, lr):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    a1, a2 = fig.subplots(1, 2)
    steps = np.asarray(main["steps"])
    u = np.asarray(main["u"])
    th = main.get("theory")
    for a in range(u.shape[1]):
        c = COLORS[a % len(COLORS)]
        a1.plot(
            steps, u[:, a], color=c, lw=1.6, label=f"mode {a + 1} (s = {main['teacher_s'][a]:.3g})"
        )
        if th is not None:
            a1.plot(th["steps"], th["u"][a], "--", color=c, lw=1.2)
        a2.axhline(main["teacher_s"][a], color=c, ls=":", lw=0.8)
    sv = np.asarray(main["singular_values"])
    for j in range(sv.shape[1]):
        a2.plot(steps, sv[:, j], color=COLORS[j % len(COLORS)], lw=1.4, label=f"σ{j + 1}(W)")
    a1.set_ylabel("u_a = r_a^T W v_a")
    a2.set_ylabel("singular values of W")
    for ax in (a1, a2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _hessians(plateaus, thr):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    a1, a2 = fig.subplots(1, 2)
    for i, p in enumerate(plateaus):
        e = np.asarray(p["eigenvalues"])
        a1.plot(np.full(len(e), i + 1), e, "_", ms=14, color=COLORS[i % len(COLORS)])
    a1.axhline(-thr, color="k", ls="--", lw=0.8)
    a1.set_yscale("symlog", linthresh=max(thr, 1e-6))
    a1.set_xlabel("plateau")
    a1.set_ylabel("bottom Hessian eigenvalues")
    x = np.arange(1, len(plateaus) + 1)
    a2.bar(x, [p["negative_count"] for p in plateaus], color="#d62728")
    for xi, p in zip(x, plateaus, strict=True):
        a2.annotate(
            f"{p['modes_learned']} learned",
            (xi, p["negative_count"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    a2.set_xlabel("plateau")
    a2.set_ylabel("negative eigenvalues")
    for ax in (a1, a2):
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    return fig


def _timing(results):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    a1, a2 = fig.subplots(1, 2)
    sizes = sorted({c["batch_size"] for c in results["curves"]})
    color = {b: COLORS[i % len(COLORS)] for i, b in enumerate(sizes)}
    for c in results["curves"]:
        ls = "-" if c["label_noise"] == 0 else "--"
        a1.plot(c["steps"], c["loss"], ls, color=color[c["batch_size"]], lw=1.0, alpha=0.8)
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    rows = results["summary"]
    for i, r in enumerate(rows):
        t = [np.nan if v is None else v for v in r["transition_steps"]]
        modes = np.arange(1, len(t) + 1) + (i - len(rows) / 2) * 0.06
        ls = "-" if r["label_noise"] == 0 else "--"
        a2.plot(
            modes,
            t,
            ls,
            marker="o",
            color=color[r["batch_size"]],
            label=f"batch {r['batch_size'] or 'full'}, noise {r['label_noise']:g}",
        )
        a2.plot(modes, r["theory_transition_steps"], "x", color=color[r["batch_size"]])
    a2.set_xlabel("mode")
    a2.set_ylabel("transition step (u = s/2)")
    a2.legend(fontsize=7.5)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return fig
