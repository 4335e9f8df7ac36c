"""The relu-conservation study's report, drawn from the results dict."""

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
    rep = Report(
        "Conservation laws and a topological obstruction in shallow ReLU networks",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{results['setup']['student']} · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "A ReLU neuron is positively homogeneous: scaling its input weights by lambda and its "
        "output weight by 1/lambda leaves the network unchanged. Under gradient flow this "
        "conserves c_j = ||w_j||^2 - a_j^2 for each neuron, so training stays on a product of "
        "quadrics fixed by the initialisation. With a scalar output, a neuron with c_j < 0 "
        "can never change the sign of a_j: the invariant set has 2^(number of such neurons) "
        "components, and for some initialisations none of the global optima is in the "
        "trajectory's component ('Topological obstruction to the training of shallow ReLU "
        "neural networks').\n\n"
        f"Data: {pol['data']}. Training: {pol['training']}. Initialisations: {pol['inits']}."
    )
    rep.heading("What the numbers show")
    rep.text("\n\n".join(results["conclusions"]))

    rep.heading("Conservation under gradient descent and SGD")
    rep.figure(
        _drift(results),
        f"Left: |c_j(t) - c_j(0)| against time lr x step for every neuron ({defs['c']}), for "
        f"gradient descent at step sizes {list(cfg['drift_lrs'])} and SGD at lr "
        f"{cfg['sgd_lr']:g} (batch {cfg['sgd_batch_size']}). Right: the drift ({defs['drift']}) "
        "over the horizon against the step size, log-log; theory: each step changes c_j by "
        "exactly eta^2 (||g_w||^2 - g_a^2), so over a fixed time the drift is O(eta) (slope 1, "
        f"dotted), and zero under the flow. Measured slope: "
        + ("—" if results["drift"]["order"] is None else f"{results['drift']['order']:.2f}")
        + ".",
        save_as=figs / "drift",
    )
    rep.table(
        [
            {"optimizer": r["optimizer"], "lr": r["lr"], "steps": r["steps"], "drift": r["drift"]}
            for r in results["drift"]["rows"]
        ],
        f"Drift of the conserved quantities. {defs['drift']}.",
    )
    rep.heading("An obstruction: one output sign flipped")
    d = results["designed"]
    rep.figure(
        _curves(d),
        "Loss of gradient descent from the two designed initialisations (same input weights, "
        f"c_j < 0 for every neuron). 'blocked': every a_j of one sign, so by the rule "
        f"({defs['reachable']}) no global optimum is in the trajectory's component; the dotted "
        f"line is the sign bound ({defs['sign_bound']}), below which theory says the blocked "
        "run can never go. 'reachable': the signs of the teacher. Right: the output weights "
        "a_j against step: a locked neuron's a_j never crosses zero.",
        save_as=figs / "obstruction",
    )
    rep.table(
        [
            {
                "init": k,
                "c_j(0)": ", ".join(f"{c:.3g}" for c in v["judged"]["c0"]),
                "signs of a_j": "".join("+" if a > 0 else "-" for a in v["judged"]["a0"]),
                "components": v["judged"]["components"],
                "rule: optimum reachable": v["judged"]["reachable"],
                "sign bound": v["judged"]["sign_bound"],
                "final loss": v["judged"]["final_loss"],
                "reached optimum": v["judged"]["reached"],
            }
            for k, v in d.items()
        ],
        f"The designed initialisations. Components: {defs['components']}.",
    )
    if "moves" in results:
        _moves_section(rep, results, figs)
    if results["random"]:
        rep.heading("Random initialisations: the rule against where gradient descent ends")
        rep.table(
            [
                {
                    "seed": x["seed"],
                    "c_j(0)": ", ".join(f"{c:.3g}" for c in x["c0"]),
                    "signs of a_j": "".join("+" if a > 0 else "-" for a in x["a0"]),
                    "components": x["components"],
                    "rule: reachable": x["reachable"],
                    "sign bound": x["sign_bound"],
                    "final loss": x["final_loss"],
                    "reached": x["reached"],
                    "locked signs kept": all(x["a_signs_kept"]),
                }
                for x in results["random"]
            ],
            f"Reached: {defs['reached']} (optimum_tol = {cfg['optimum_tol']:g}). The rule is "
            "necessary: an unreachable initialisation can never reach the optimum; a reachable "
            "one may still stop elsewhere.",
        )
    rep.heading("How these numbers were made")
    rep.text(
        "Every run is a stage stored in a folder named by a hash of its settings (the "
        "initial weights among them); result.json beside this report holds every number. "
        f"Precision: {pol['precision']}."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _moves_section(rep, results, figs):
    mv, defs, d = results["moves"], results["definitions"], results["designed"]
    b = mv["blocked"]
    rep.heading("Moves between components: rescaling and permutation")
    rep.figure(
        _moves_curves(d["blocked"], mv["unlocked_run"]),
        "Loss of gradient descent from the blocked initialisation and from the same function "
        f"moved to another component ('unlocked'). Rescaling: {defs['rescale']}; {defs['unlock']}"
        ". The rescaling leaves f unchanged but not the conserved quantities, so it jumps "
        "between invariant sets, which gradient flow cannot do: the moved start is the same "
        "network in a component whose rule verdict is "
        + ("reachable" if b["unlocked_reachable"] else "unreachable")
        + f". Permutation: {defs['permute']}. Right: the output weights a_j; an unlocked "
        "neuron's a_j may cross zero.",
        save_as=figs / "moves",
    )
    rows = [
        {
            "move": f"rescale neuron {r['neuron']}",
            "c_j before": r["c"],
            "alpha* (c_j = 0)": r["alpha_threshold"],
            "alpha used": r["alpha"],
            "c_j after": r["c_after"],
            "formula": r["c_predicted"],
            "max |Δf|": r["max_df"],
        }
        for r in b["rescales"]
    ]
    rows.append(
        {
            "move": f"unlock neurons {b['unlocked_neurons']}: {b['pattern']} -> "
            f"{b['unlocked_pattern']}",
            "c_j after": ", ".join(f"{c:.3g}" for c in b["unlocked_c"]),
            "max |Δf|": b["unlocked_max_df"],
        }
    )
    for k in ("blocked", "reachable"):
        for s in mv[k]["swaps"]:
            rows.append(
                {
                    "move": f"{k}: swap {s['swap'][0]} <-> {s['swap'][1]}: "
                    f"{mv[k]['pattern']} -> {s['to']}",
                    "max |Δf|": s["max_df"],
                }
            )
    cols = ["move", "c_j before", "alpha* (c_j = 0)", "alpha used", "c_j after", "formula"]
    rep.table(
        rows,
        columns=[*cols, "max |Δf|"],
        caption="The moves found from the designed initialisations. Patterns: the sign of a_j on "
        "locked neurons, 0 on free ones. "
        + defs["max_df"]
        + ". Permutations of the blocked "
        + (
            "pattern map it to another component."
            if b["swaps"]
            else "pattern map it to itself (the pattern is symmetric): no permutation leaves it."
        ),
    )


def _moves_curves(blocked, unlocked):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    a1, a2 = fig.subplots(1, 2)
    a2.axhline(0, color="k", lw=0.6)
    for i, (k, v) in enumerate((("blocked", blocked), ("unlocked", unlocked))):
        a1.plot(v["steps"], np.maximum(v["loss"], 1e-18), color=COLORS[i], label=k)
        a2.plot(v["steps"], np.asarray(v["a"]), color=COLORS[i], lw=1.2)
    b = blocked["judged"]["sign_bound"]
    if b is not None:
        a1.axhline(b, color=COLORS[0], ls=":", lw=1.0, label="sign bound (blocked)")
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    a1.legend(fontsize=8)
    a2.set_xlabel("step")
    a2.set_ylabel("output weights a_j")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return fig


def _drift(results):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    a1, a2 = fig.subplots(1, 2)
    for i, (label, v) in enumerate(sorted(results["drift_curves"].items())):
        c = np.asarray(v["c"])
        t = np.asarray(v["steps"]) * v["lr"]
        d = np.abs(c - c[0])
        for j in range(d.shape[1]):
            a1.plot(
                t[1:],
                np.maximum(d[1:, j], 1e-18),
                color=COLORS[i % len(COLORS)],
                lw=1.0,
                label=label.replace("drift-", "") if j == 0 else None,
            )
    a1.set_yscale("log")
    a1.set_xlabel("time (lr x step)")
    a1.set_ylabel("|c_j(t) - c_j(0)|")
    a1.legend(fontsize=8)
    gd = [r for r in results["drift"]["rows"] if r["optimizer"] == "GD"]
    lrs = np.array([r["lr"] for r in gd])
    dr = np.array([r["drift"] for r in gd])
    a2.loglog(lrs, dr, "o-", label="gradient descent")
    if len(lrs) and dr.max() > 0:
        a2.loglog(lrs, dr.max() * lrs / lrs.max(), ":", color="k", label="slope 1 (theory)")
    sgd = results["drift"]["rows"][-1]
    a2.loglog([sgd["lr"]], [max(sgd["drift"], 1e-18)], "s", color="#d62728", label=sgd["optimizer"])
    a2.set_xlabel("step size")
    a2.set_ylabel("drift over the horizon")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return fig


def _curves(designed):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    a1, a2 = fig.subplots(1, 2)
    for i, (k, v) in enumerate(designed.items()):
        col = COLORS[i]
        a1.plot(v["steps"], v["loss"], color=col, label=k)
        b = v["judged"]["sign_bound"]
        if b is not None:
            a1.axhline(b, color=col, ls=":", lw=1.0)
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    a1.legend(fontsize=8)
    a2.axhline(0, color="k", lw=0.6)
    for i, (_, v) in enumerate(designed.items()):
        a = np.asarray(v["a"])
        a2.plot(v["steps"], a, color=COLORS[i], lw=1.2)
        for c0, a0 in zip(v["judged"]["c0"], v["judged"]["a0"], strict=True):
            if c0 < 0:  # |a_j| can never go below sqrt(-c_j)
                a2.axhline(np.sign(a0) * np.sqrt(-c0), color=COLORS[i], ls="--", lw=0.8)
    a2.set_xlabel("step")
    a2.set_ylabel("output weights a_j; dashed: ±sqrt(-c_j)")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return fig
