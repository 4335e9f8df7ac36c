"""The "fit" section's part of the transfer-methods report: its tables and four figures,
drawn from the section's results alone (nothing is computed again)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["write_section"]


def _ci(s: dict[str, Any]) -> str:
    ci = s["ci"]
    return f"{s['mean']:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _steps(s: dict[str, Any]) -> str:
    vals = ", ".join("not reached" if v is None else str(v) for v in s["values"])
    if s["mean"] is None:
        return f"{s['reached']}/{s['runs']} reached ({vals})"
    ci = s["ci"]
    return (
        f"{s['mean']:.0f}" + ("" if ci is None else f" [{ci[0]:.0f}, {ci[1]:.0f}]") + f" ({vals})"
    )


def write_section(rep: Any, section: dict[str, Any], cfg: dict[str, Any], figs: Any) -> None:
    from basinscope.experiments.transfer_fit import DEFINITIONS, TITLE

    su, cks, sh = section["setup"], section["checkpoints"], section["shuffle"]
    level = f"{su['ci_level']:.0%}"
    thr = su["target_accuracy"]
    rep.heading(TITLE)
    rep.text(
        "Two experiments of the 'what is being transferred' talk (Neyshabur et al. 2020). "
        f"Fine-tuning: strategy ft, every parameter trained, {su['finetune_steps']} steps on "
        f"the digits rotated by {su['target_angle']:g}°, the target test accuracy measured "
        f"every {su['eval_every']} steps, {su['seeds']} seeds (data orders). Intervals: "
        f"Student-t at {level} over the seeds. Steps to {thr:.0%}: "
        + DEFINITIONS["steps_to_target"]
        + ". 'Without losing accuracy': "
        + DEFINITIONS["earliest_final"]
        + f" (fit_tolerance {su['tolerance']:g})."
    )
    rep.table(
        [
            {
                "checkpoint step": c["step"],
                "source accuracy": c["source_accuracy"],
                "target accuracy before": c["target_accuracy_before"],
                "final target accuracy": _ci(c["final_accuracy"]),
                f"steps to {thr:.0%} (per seed)": _steps(c["steps_to_target"]),
                "mean training loss": _ci(c["mean_train_loss"]),
            }
            for c in cks
        ],
        "Which pre-trained checkpoint: each kept pre-training checkpoint (step 0: the random "
        "initialization) fine-tuned on the target. Source accuracy: the checkpoint's own on "
        "the source test digits; target accuracy before: on the target test digits before "
        f"fine-tuning; final: after the {su['finetune_steps']} fine-tuning steps, converged or "
        f"not (mean [{level} interval]); mean training "
        "loss: " + DEFINITIONS["mean_train_loss"] + ".",
    )
    rep.figure(
        _checkpoints_figure(cks, thr),
        "Left: against the pre-training step of the checkpoint fine-tuned from (symlog axis; "
        "0 is the random initialization), the checkpoint's source test accuracy (the "
        "pre-training curve, grey) and the final target test accuracy after "
        f"{su['finetune_steps']} fine-tuning steps (mean over seeds, bars: {level} Student-t "
        f"interval). Right: steps to reach {thr:.0%} target test accuracy (first measured "
        f"step, every {su['eval_every']} steps); dots: seeds, line: mean where every seed "
        "reached it; seeds that never reach it are drawn as crosses at the top, 'not "
        "reached'.",
        save_as=figs / "fit_checkpoints",
    )
    rep.figure(
        _curves_figure(cks, thr),
        "Target test accuracy during fine-tuning (mean over seeds) from each pre-training "
        "checkpoint, colored by the checkpoint's step (dark: early, step 0 the random "
        f"initialization); dotted: the {thr:.0%} threshold of the steps to target.",
        save_as=figs / "fit_curves",
    )
    rows = []
    for r in sh["blocks"]:
        for init in ("P-T", "RI-T"):
            rows.append(
                {
                    "block": f"{r['block']}x{r['block']} ({r['tiles']} tiles)",
                    "init": init,
                    "final accuracy": _ci(r[init]["final_accuracy"]),
                    "mean training loss": _ci(r[init]["mean_train_loss"]),
                    f"steps to {su['speed_fraction']:.0%} of final": _steps(
                        r[init]["steps_to_fraction"]
                    ),
                    "relative drop": _ci(r["relative_drop"]) if init == "P-T" else "",
                    "loss-area gap (RI-T - P-T)": _ci(r["loss_area_gap"]) if init == "P-T" else "",
                }
            )
    rep.table(
        rows,
        f"Block shuffle: the target digits (rotated by {su['target_angle']:g}°) cut into b x b "
        f"tiles permuted by one fixed permutation (seed {su['shuffle_seed']}; 8x8 = one tile, "
        f"unshuffled); P-T and RI-T trained {su['shuffle_steps']} steps each. Relative drop: "
        + DEFINITIONS["relative_drop"]
        + ". Loss-area gap: "
        + DEFINITIONS["loss_area_gap"]
        + f". Mean [{level} interval] over the seeds.",
    )
    rep.figure(
        _shuffle_figure(sh["blocks"], su),
        "Per block size b (b x b tiles; 8 = unshuffled): left, the final test accuracy of P-T "
        "(fine-tuned from the pre-trained model) and RI-T (trained from the random "
        f"initialization), {su['shuffle_steps']} steps each; middle, the relative accuracy "
        "drop (acc(P-T) - acc(RI-T)) / acc(P-T), paired by seed; right, the convergence speed "
        "as the mean training loss over the run (area under the minibatch cross-entropy "
        f"curve per step; lower is faster). Points: mean over seeds; bars: {level} Student-t "
        "intervals.",
        save_as=figs / "fit_shuffle",
    )
    rep.figure(
        _blocks_figure(sh),
        f"One test digit (label {sh['example_label']}): upright (the source), then rotated by "
        f"{su['target_angle']:g}° and block-shuffled with each block size (b x b tiles, one "
        "fixed permutation for every image; 8x8 is the rotated digit itself).",
        save_as=figs / "fit_blocks",
    )


def _checkpoints_figure(cks, thr):
    from basinscope.plotting._common import new_figure

    fig = new_figure((10.5, 4.0))
    ax, bx = fig.subplots(1, 2, sharex=True)
    x = np.array([c["step"] for c in cks], float)
    ax.plot(
        x, [c["source_accuracy"] for c in cks], "s-", color="0.55", label="source (pre-training)"
    )
    m = [c["final_accuracy"]["mean"] for c in cks]
    lo = [m[i] - (c["final_accuracy"]["ci"] or [m[i]] * 2)[0] for i, c in enumerate(cks)]
    hi = [(c["final_accuracy"]["ci"] or [m[i]] * 2)[1] - m[i] for i, c in enumerate(cks)]
    ax.errorbar(x, m, yerr=[lo, hi], fmt="o-", color="C0", capsize=3, label="target, fine-tuned")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("pre-training step of the checkpoint")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    top = max(c["eval_step"][-1] for c in cks)  # the runs' last step
    for c in cks:
        for v in c["steps_to_target"]["values"]:
            if v is None:
                bx.plot([c["step"]], [top * 1.1], "x", color="C3", ms=8)
            else:
                bx.plot([c["step"]], [v], ".", color="C1", alpha=0.6)
    mx = [c["step"] for c in cks if c["steps_to_target"]["mean"] is not None]
    my = [c["steps_to_target"]["mean"] for c in cks if c["steps_to_target"]["mean"] is not None]
    bx.plot(mx, my, "o-", color="C1", label="mean (every seed reached)")
    bx.axhline(top * 1.1, color="C3", lw=0.5, ls=":")
    bx.text(x[0], top * 1.12, "not reached", color="C3", fontsize=8)
    bx.set_ylim(0, top * 1.25)
    bx.set_xlabel("pre-training step of the checkpoint")
    bx.set_ylabel(f"fine-tuning steps to {thr:.0%} target accuracy")
    bx.legend(fontsize=8)
    return fig


def _curves_figure(cks, thr):
    import matplotlib

    from basinscope.plotting._common import new_figure

    fig = new_figure((6.5, 4.2))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    n = len(cks)
    for i, c in enumerate(cks):
        ax.plot(
            c["eval_step"],
            np.mean(c["accuracy_curves"], axis=0),
            color=cmap(i / max(n - 1, 1)),
            label=f"checkpoint {c['step']}",
        )
    ax.axhline(thr, color="0.4", ls=":", lw=1)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("target test accuracy")
    ax.legend(fontsize=7)
    return fig


def _err(s):
    ci = s["ci"] or [s["mean"], s["mean"]]
    return [[s["mean"] - ci[0]], [ci[1] - s["mean"]]]


def _shuffle_figure(blocks, su):
    from basinscope.plotting._common import new_figure

    fig = new_figure((12.0, 3.8))
    axes = fig.subplots(1, 3)
    xs = np.arange(len(blocks))
    labels = [f"{r['block']}x{r['block']}" for r in blocks]
    for k, (init, col) in enumerate((("P-T", "C0"), ("RI-T", "C3"))):
        for i, r in enumerate(blocks):
            for ax, key in ((axes[0], "final_accuracy"), (axes[2], "mean_train_loss")):
                s = r[init][key]
                ax.errorbar(
                    [i + (k - 0.5) * 0.15],
                    [s["mean"]],
                    yerr=_err(s),
                    fmt="o",
                    color=col,
                    capsize=3,
                    label=init if i == 0 else None,
                )
    for i, r in enumerate(blocks):
        s = r["relative_drop"]
        axes[1].errorbar([i], [s["mean"]], yerr=_err(s), fmt="o", color="C2", capsize=3)
    axes[1].axhline(0, color="0.5", lw=0.8)
    ylab = ("final test accuracy", "relative drop (P-T - RI-T) / P-T", "mean training loss")
    for ax, y in zip(axes, ylab):
        ax.set_xticks(xs, labels)
        ax.set_xlabel("block size (tiles)")
        ax.set_ylabel(y)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    return fig


def _blocks_figure(sh):
    from basinscope.plotting._common import new_figure

    ex = sh["examples"]
    n = len(ex) + 1
    fig = new_figure((1.6 * n, 2.0))
    axes = np.atleast_1d(fig.subplots(1, n))
    axes[0].imshow(np.array(sh["example_upright"]), cmap="gray_r")
    axes[0].set_title("source", fontsize=9)
    for ax, (b, img) in zip(axes[1:], ex.items()):
        ax.imshow(np.array(img), cmap="gray_r")
        ax.set_title(f"{b}x{b} tiles", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
