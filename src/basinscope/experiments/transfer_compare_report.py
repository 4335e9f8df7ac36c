"""The "compare" section's part of the transfer-methods report: the adaptation-forgetting
figure, where each method lands relative to the pre-trained basin, and the table of every
number. Everything is drawn from the section's results; nothing is computed again."""

from __future__ import annotations

from typing import Any

__all__ = ["write_section"]

GROUP_COLORS = {
    "baseline": "tab:gray",
    "basin": "tab:blue",
    "sharpness-aware": "tab:green",
    "mask": "tab:orange",
}
BN = "No BatchNorm: the LeNet's loss is a function of its weights alone."


def _ci(s: dict[str, Any]) -> str:
    ci = s["ci"]
    return f"{s['mean']:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _bars(s: dict[str, Any]) -> list[list[float]]:
    ci = s["ci"] or [s["mean"], s["mean"]]
    return [[s["mean"] - ci[0]], [ci[1] - s["mean"]]]


def write_section(rep: Any, section: dict[str, Any], cfg: dict[str, Any], figs: Any) -> None:
    from basinscope.experiments.transfer_compare import TITLE

    setup, crit, ms = section["setup"], section["criteria"], section["methods"]
    n, lvl = setup["seeds"], cfg["ci_level"]
    rep.heading(f"Compare: {TITLE}")
    rep.text(
        f"From the pre-trained LeNet, every method fine-tunes on the digits rotated by "
        f"{setup['shift'][1]:g}° ({cfg['steps']} steps; data orders 0..{n - 1}). Baselines: "
        f"ft (every parameter), lp (the head), lp-ft (the head for {cfg['compare_lp_steps']} "
        f"steps, then everything), surgical ({setup['surgical_block']} only) and dfr (the "
        f"head re-initialized and trained on {setup['dfr_examples']} held-out target digits "
        "only: the last ones of the training split). Basin-informed: l2sp (alpha "
        f"{cfg['compare_l2sp_strength']:g}), ewc (alpha {cfg['compare_ewc_strength']:g}, "
        f"Fisher on {cfg['compare_fisher_examples']} source digits), trust-region (source-loss "
        f"rise <= {cfg['compare_trust_epsilon']:g}, checked every "
        f"{cfg['compare_trust_every']} steps), ft with SAM and with C-Flat (rho "
        f"{cfg['compare_sam_rho']:g}). Masks: each keeps exactly {setup['block_params']} "
        f"entries (the size of {setup['surgical_block']}, {setup['mask_fraction']:.2%} of "
        f"{setup['parameters']}). Where a solution lands: {crit['barrier']}; path criterion "
        f"{crit['path']}; in the pre-trained basin: {crit['in_basin']}. 'Clearly': "
        f"{crit['clearly']}. " + BN
    )
    rep.figure(
        _tradeoff(ms),
        "Adaptation (target test accuracy after minus before) against forgetting (source "
        "test accuracy before minus after), one point per method: the mean over the "
        f"{n} seeds, bars the {lvl:.0%} Student-t interval of the mean. Filled markers: in "
        f"the pre-trained basin ({crit['in_basin']}); open: not. Colors: baselines (gray), "
        "basin-informed (blue), sharpness-aware ft (green), masks (orange). Up and left is "
        "better.",
        save_as=figs / "compare_tradeoff",
    )
    rep.figure(
        _lands(ms, cfg),
        "Where each method lands, per seed (small dots) and mean (labelled marker): the L2 "
        "distance of its weights to the pre-trained weights against the barrier of the "
        f"source test {cfg['compare_barrier_metric']} on the straight path pre-trained -> "
        f"fine-tuned ({crit['barrier']}). Right: the flatness of the segment [theta_pre, "
        "theta_method] (Definition 3.1's condition 1: E|loss - mean loss| over uniform points "
        "of the segment, source test cross-entropy) with the threshold compare_basin_epsilon "
        f"= {cfg['compare_basin_epsilon']:g} dashed. Filled markers: in the pre-trained basin "
        f"({crit['in_basin']}); open: not. " + BN,
        save_as=figs / "compare_lands",
    )
    rep.table(
        [
            {
                "method": v["label"],
                "group": v["group"],
                "trainable": v["trainable_params"],
                "adaptation": _ci(v["adaptation"]),
                "forgetting": _ci(v["forgetting"]),
                "distance": _ci(v["distance"]),
                "relative distance": _ci(v["relative_distance"]),
                "source barrier": _ci(v["barrier"]),
                "path excess (max)": v["path_excess"]["max"],
                "source-loss rise": _ci(v["source_rise"]),
                "flatness (Def. 3.1 cond. 1)": _ci(v["flatness"]),
                "no barrier (seeds)": f"{v['connected_seeds']}/{n}",
                "in basin (seeds)": f"{v['in_basin_seeds']}/{n}",
                "Def. 3.1 holds (seeds)": f"{v['definition31_seeds']}/{n}",
            }
            for v in ms.values()
        ],
        f"Every method: mean [{lvl:.0%} Student-t interval] over {n} seeds. Adaptation and "
        "forgetting in accuracy; distance ||theta - theta_pre||_2 (relative: / "
        "||theta_pre||_2); source barrier: "
        + crit["barrier"]
        + "; path excess: "
        + crit["path"]
        + " (the largest over the seeds); source-loss rise: max_alpha f(alpha) - f(0) on the "
        "same path; flatness: Definition 3.1's condition 1 on the segment, E|loss - mean "
        "loss| over uniform points of it; no barrier: seeds whose path excess is <= "
        "compare_basin_epsilon; in basin: "
        + crit["in_basin"]
        + "; Def. 3.1 holds: "
        + crit["definition31"]
        + ".",
    )
    rep.table(
        [
            {
                "method": ms[r["method"]]["label"],
                "seed": r["seed"],
                "adaptation": r["adaptation"],
                "forgetting": r["forgetting"],
                "distance": r["distance"],
                "barrier": r["barrier"],
                "barrier CI": "" if r["barrier_ci"] is None else str(r["barrier_ci"]),
                "path excess": r["path_excess"],
                "flatness": r["flatness"],
                "in basin": r["in_basin"],
                "trust projections": r["trust_projections"],
                "fine-tuning stage": r["folders"]["finetune"],
            }
            for r in section["rows"]
        ],
        "Every fine-tuning (one row per method and seed); the barrier CI is the percentile "
        f"bootstrap over the source test digits ({cfg['compare_barrier_bootstrap']} "
        "resamples); trust projections: checks at which the trust region pulled the weights "
        "back along the segment.",
    )


def label_offsets(
    points: list[tuple[float, float]], *, width: float = 0.14, height: float = 0.045
) -> list[tuple[float, float]]:
    """Offsets, in axes fractions, that keep labels of ``points`` (in axes fractions) apart.

    Greedy, left to right: each label goes right of its point at the first of 0, -1, +1,
    -2, +2, ... label heights (up to 20) that stays inside the axes and whose box
    (``width`` x ``height``, left edge at the point) overlaps no label placed before; when
    none does, it stays at its point."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    placed: list[tuple[float, float]] = []
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(points)
    steps = [0, *(k * sign for k in range(1, 21) for sign in (-1, 1))]
    for i in order:
        x, y = points[i]
        for k in steps:
            ly = y + k * height
            inside = height / 2 <= ly <= 1 - height / 2 or k == 0
            if inside and all(abs(x - px) >= width or abs(ly - py) >= height for px, py in placed):
                break
        else:
            ly = y
        placed.append((x, ly))
        out[i] = (0.01, ly - y)
    return out


def label_points(ax: Any, pts: list[tuple[float, float, str]]) -> None:
    """Name each point (x, y, label) of ``ax`` with a label that does not sit on another's,
    joined to its point by a thin line when it had to move."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # autoscaled to the data drawn so far
    frac = [((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)) for x, y, _ in pts]
    for (x, y, label), (fx, fy), (dx, dy) in zip(pts, frac, label_offsets(frac), strict=True):
        moved = abs(dy) > 1e-12
        ax.annotate(
            label,
            (x, y),
            xytext=(fx + dx, fy + dy),
            textcoords="axes fraction",
            fontsize=7,
            va="center",
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if moved else None,
        )


def _tradeoff(ms: dict[str, Any]):
    from basinscope.plotting._common import new_figure

    fig = new_figure((7.5, 5.0))
    ax = fig.subplots()
    for v in ms.values():
        col = GROUP_COLORS[v["group"]]
        a, f = v["adaptation"], v["forgetting"]
        ax.errorbar(
            [f["mean"]],
            [a["mean"]],
            xerr=_bars(f),
            yerr=_bars(a),
            fmt="o",
            color=col,
            mfc=col if v["in_basin"] else "white",
            capsize=3,
        )
    label_points(
        ax, [(v["forgetting"]["mean"], v["adaptation"]["mean"], v["label"]) for v in ms.values()]
    )
    ax.set_xlabel("forgetting (source accuracy lost)")
    ax.set_ylabel("adaptation (target accuracy gained)")
    return fig


def _lands(ms: dict[str, Any], cfg: dict[str, Any]):
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.5))
    axes = fig.subplots(1, 2)
    for v in ms.values():
        col = GROUP_COLORS[v["group"]]
        mfc = col if v["in_basin"] else "white"
        for ax, key in zip(axes, ("barrier", "flatness"), strict=True):
            ax.plot(v["distance"]["values"], v[key]["values"], ".", color=col, alpha=0.4)
            ax.plot([v["distance"]["mean"]], [v[key]["mean"]], "o", color=col, mfc=mfc)
    for ax, key in zip(axes, ("barrier", "flatness"), strict=True):
        label_points(ax, [(v["distance"]["mean"], v[key]["mean"], v["label"]) for v in ms.values()])
    m = cfg["compare_barrier_metric"]
    axes[0].set_ylabel(f"{cfg['compare_barrier_definition']} source {m} barrier")
    axes[1].set_ylabel("flatness of the segment (source loss)")
    axes[1].axhline(cfg["compare_basin_epsilon"], ls="--", color="k", lw=0.8)
    for ax in axes:
        ax.set_xlabel("distance to the pre-trained weights (L2)")
    return fig
