"""The copies section's part of the transfer-methods report: tables and figures drawn from
the section's results (nothing is computed again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_section"]

COLORS = {
    "P-T & P-T": "tab:blue",
    "RI-T & RI-T": "tab:red",
    "P-T & P": "tab:cyan",
    "RI-T & P": "tab:orange",
    "P-T & RI-T": "tab:purple",
    "RI-T & RI-T (own inits)": "tab:brown",
}


def _ci(ci) -> str:
    return "—" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _pm(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def write_section(rep: Any, sec: dict[str, Any], cfg: dict[str, Any], figs: Path) -> None:
    from basinscope.experiments.transfer_copies import OTHER_INITS, TITLE

    tol, lvl = sec["tolerance"], f"{sec['ci_level']:.0%}"
    definition = sec["definition"]
    acc = sec["accuracy"]
    rep.heading(TITLE)
    rep.text(
        f"On the target ({sec['target']}): {cfg['seeds']} P-T copies, fine-tuned from the "
        f"pre-trained model P ({cfg['steps']} steps, lr {cfg['lr']:g}), test accuracy "
        f"{_pm(acc['P-T'])}; and {cfg['seeds']} RI-T copies, trained from the random "
        f"initialization P started from (the same for every copy; "
        f"{cfg['copies_random_steps']} steps, lr {cfg['copies_random_lr']:g}), test accuracy "
        f"{_pm(acc['RI-T'])} (mean ± std over the seeds = data orders)"
        + (
            "; the control, RI-T models each from its own random init (init_seed + 1 + "
            f"seed), {_pm(acc['RI-T own init'])}"
            if "RI-T own init" in acc
            else ""
        )
        + f". A barrier is absent "
        f"when its {lvl} bootstrap interval ({cfg['copies_bootstrap']} resamples of the test "
        f"digits) lies at or below the tolerance {tol:g}, present when it lies above. "
        "No BatchNorm: the LeNet's loss is a function of its weights alone."
    )
    rows = []
    for kind, s in sec["summary"].items():
        rows.append(
            {
                "pair": kind,
                "pairs": s["pairs"],
                f"{definition} error barrier": _pm(s["error_barrier"]),
                "error barrier intervals (lowest low, highest high)": _ci(
                    [s["error_barrier_ci_low"], s["error_barrier_ci_high"]]
                ),
                f"{definition} loss barrier": _pm(s["loss_barrier"]),
                "L2 distance (whole)": _pm(s["distance"]["whole"]),
                **{f"CKA {m}": f"{v['mean']:.3f}" for m, v in s["cka"].items()},
            }
        )
    rep.table(
        rows,
        f"Pairs of models on the target test digits: mean ± std over the pairs of the "
        f"{definition} barrier of the test error and of the test loss (along "
        "(1 − α)θ_A + αθ_B, α ∈ [0, 1]), the L2 distance of all parameters and linear CKA "
        "(Kornblith et al. 2019) of each layer's outputs. P-T & P-T, RI-T & RI-T"
        + (" and the control RI-T & RI-T (own inits)" if OTHER_INITS in sec["summary"] else "")
        + ": every pair of seeds; P-T & P, RI-T & P, P-T & RI-T: one per seed (the same seed).",
    )
    rep.table(
        [
            {
                "pair": r["kind"],
                "seeds": ", ".join(map(str, r["seeds"])),
                "error barrier": r["error"]["barrier"],
                f"{lvl} interval": _ci(r["error"]["ci"]),
                "worst α": r["error"]["worst_alpha"],
                "loss barrier": r["loss"]["barrier"],
                f"loss {lvl} interval": _ci(r["loss"]["ci"]),
                **{f"distance {m}": v for m, v in r["distance"].items()},
            }
            for r in sec["pairs"]
        ],
        "Every pair: barriers with their bootstrap intervals, and the L2 distance of all "
        f"parameters and of each module. Barrier: {sec['pairs'][0]['error']['formula']}.",
    )
    rep.figure(
        _barriers(sec),
        "Test accuracy (left) and test loss (right) on the target test digits along "
        "(1 − α)θ_A + αθ_B, α on an even grid of [−1, 2] (extrapolated beyond both models; "
        "the shaded band is [0, 1]), one line per pair, coloured by the kind of pair. θ_A is "
        "the first model of the pair's name (the P-T or RI-T copy), θ_B the second.",
        save_as=figs / "copies_barriers",
    )
    rep.figure(
        _similarity(sec),
        "Left: linear CKA of each layer's outputs on the target test digits between the two "
        "models of a pair (1: the same representation up to rotation and scale). Right: L2 "
        "distance in parameter space, all parameters (whole) and each module's. Points: mean "
        "over the pairs of that kind; bars: their range (min to max).",
        save_as=figs / "copies_similarity",
    )
    m = sec["mistakes"]
    a, b = m["only_pt_wrong"], m["only_ri_wrong"]
    rep.table(
        [
            {
                "set": "P-T wrong, RI-T right",
                "digits (pooled over seeds)": a["count"],
                "mean ambiguity": a["mean_ambiguity"],
                "easy fraction": a["easy_fraction"],
            },
            {
                "set": "P-T right, RI-T wrong",
                "digits (pooled over seeds)": b["count"],
                "mean ambiguity": b["mean_ambiguity"],
                "easy fraction": b["easy_fraction"],
            },
            {
                "set": "all test digits",
                "digits (pooled over seeds)": m["all_examples"]["count"],
                "mean ambiguity": m["all_examples"]["mean_ambiguity"],
                "easy fraction": 0.5,
            },
        ],
        "Mistakes on the target test digits. Ambiguity: entropy (nats) of the mean softmax "
        "of all P-T and RI-T copies, H(mean_m p_m(x)); easy: ambiguity below its median over "
        f"all test digits ({m['median_ambiguity']:.3f}). Difference of the two sets' mean "
        f"ambiguity {_num(m['ambiguity_gap'])}, {lvl} bootstrap interval "
        f"{_ci(m['ambiguity_gap_ci'])}. Jaccard index |A ∩ B| / |A ∪ B| of the mistake sets: "
        + "; ".join(f"{k} {', '.join(_num(v) for v in vs)}" for k, vs in m["jaccard"].items())
        + f" (P-T pairs minus RI-T pairs: {_num(m['jaccard_gap'])}, interval "
        f"{_ci(m['jaccard_gap_ci'])}). Mistakes per copy: P-T {m['mistakes']['P-T']}, RI-T "
        f"{m['mistakes']['RI-T']} of {m['all_examples']['count']}.",
    )
    rep.figure(
        _mistakes(m),
        "Target test digits (8×8, as the models see them) that the seed-0 P-T copy gets "
        "wrong and the seed-0 RI-T copy right (top row), and the reverse (bottom row), the "
        f"first {cfg['copies_shown']} of each set in test order. Title: the true label y, "
        "the P-T and RI-T predictions, and the ambiguity H (entropy of the mean softmax of "
        "all copies, nats).",
        save_as=figs / "copies_mistakes",
    )
    rep.table(
        [
            {
                "models": c["family"],
                "domains": " / ".join(c["domains"]),
                "error barrier (union)": c["barrier"],
                f"{lvl} interval": _ci(c["barrier_ci"]),
                "boost (union)": c["boost"],
                "boost α": c["boost_alpha"],
                **{f"boost on {d}": v["boost"] for d, v in c["domain_boost"].items()},
            }
            for c in sec["cross"]
        ],
        "Cross-domain interpolation between the seed-0 models of two target domains "
        f"(trained accuracy on their own domain: P-T {_accs(sec, 'P-T')}; RI-T "
        f"{_accs(sec, 'RI-T')}). Error barrier ({definition}) on the union of both domains' "
        "test digits; boost: max over 0 < α < 1 of the accuracy minus the better endpoint's "
        "(on the union, and on each domain alone).",
    )
    rep.figure(
        _cross(sec),
        "Test accuracy on each of the two domains (colours) along (1 − α)θ_A + αθ_B, θ_A the "
        "model trained on the first domain of the panel's title, θ_B on the second; solid: "
        "P-T models (fine-tuned from P), dashed: RI-T models (from the shared random init); "
        "black: the mean over both domains (the union).",
        save_as=figs / "copies_cross",
    )


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _accs(sec, fam) -> str:
    return ", ".join(f"{d} {v:.3f}" for d, v in sec["domain_accuracy"][fam].items())


def _barriers(sec):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    axes = fig.subplots(1, 2)
    labelled = set()
    for r in sec["pairs"]:
        kind, line = r["kind"], r["line"]
        label = None if kind in labelled else kind
        labelled.add(kind)
        for ax, key in zip(axes, ("accuracy", "loss")):
            ax.plot(line["alpha"], line[key], color=COLORS[kind], lw=1.2, label=label)
    for ax, name in zip(axes, ("test accuracy (target)", "test loss (target)")):
        ax.axvspan(0, 1, color="0.9", zorder=0)
        ax.set_xlabel("α")
        ax.set_ylabel(name)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    return fig


def _similarity(sec):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.2))
    axes = fig.subplots(1, 2)
    kinds = list(sec["summary"])
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        s = sec["summary"][kind]
        for ax, key in zip(axes, ("cka", "distance")):
            names = list(s[key])
            x = np.arange(len(names)) + (k - (len(kinds) - 1) / 2) * width
            mean = [s[key][n]["mean"] for n in names]
            err = [
                [s[key][n]["mean"] - s[key][n]["min"] for n in names],
                [s[key][n]["max"] - s[key][n]["mean"] for n in names],
            ]
            ax.bar(x, mean, width, color=COLORS[kind], label=kind)
            ax.errorbar(x, mean, yerr=err, fmt="none", color="k", capsize=2, lw=0.8)
            ax.set_xticks(np.arange(len(names)), names)
    axes[0].set_ylabel("linear CKA (target test digits)")
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylabel("L2 distance in parameter space")
    axes[1].legend(fontsize=8)
    return fig


def _mistakes(m):
    from basinscope.plotting._common import new_figure

    sets = (("P-T wrong, RI-T right", "only_pt_wrong"), ("P-T right, RI-T wrong", "only_ri_wrong"))
    cols = max(1, *(len(m["examples"][k]) for _, k in sets))
    fig = new_figure((1.5 * cols + 1.0, 3.8))
    axes = np.asarray(fig.subplots(2, cols, squeeze=False))
    for row, (title, key) in enumerate(sets):
        ex = m["examples"][key]
        for c in range(cols):
            ax = axes[row, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(ex):
                ax.axis("off")
                continue
            e = ex[c]
            ax.imshow(np.asarray(e["image"]), cmap="gray_r")
            ax.set_title(
                f"y={e['label']} P-T:{e['pt']} RI-T:{e['ri']}\nH={e['ambiguity']:.2f}", fontsize=7
            )
        axes[row, 0].set_ylabel(title, fontsize=8)
        if not ex:
            axes[row, 0].axis("on")
            axes[row, 0].set_xticks([])
            axes[row, 0].set_yticks([])
            axes[row, 0].text(0.5, 0.5, "none", ha="center", va="center")
    return fig


def _cross(sec):
    from basinscope.plotting._common import new_figure

    pairs = []
    for c in sec["cross"]:
        if tuple(c["domains"]) not in pairs:
            pairs.append(tuple(c["domains"]))
    n = len(pairs)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = new_figure((4.0 * cols, 3.4 * rows))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax, doms in zip(axes, pairs):
        for c in sec["cross"]:
            if tuple(c["domains"]) != doms:
                continue
            style = "-" if c["family"] == "P-T" else "--"
            for d, col in zip(doms, ("tab:blue", "tab:orange")):
                ax.plot(
                    c["alpha"], c["accuracy"][d], style, color=col, label=f"{c['family']} on {d}"
                )
            ax.plot(
                c["alpha"],
                c["union_accuracy"],
                style,
                color="k",
                lw=0.8,
                label=f"{c['family']} mean",
            )
        ax.set_title(f"{doms[0]} → {doms[1]}", fontsize=9)
        ax.set_xlabel("α")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
    for ax in axes[n:]:
        ax.axis("off")
    axes[0].legend(fontsize=7)
    return fig
