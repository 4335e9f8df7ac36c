"""The certified-training study's report: figures (PNG/PDF) and one self-contained HTML file.

Everything is drawn from the results dict and the landscapes stored in the stage folders it
names (reopened with :func:`basinscope.store.load`); nothing is computed again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import basinscope
from basinscope.experiments.stages import stage_folders, stages_table
from basinscope.report import Report
from basinscope.store import paths
from basinscope.store.atomic import atomic_write_text

__all__ = ["findings", "write_report"]

LABELS = {
    "lambda_max": "λmax at θ*",
    "ratio_center": "|λmin/λmax| at θ*",
    "map_ratio_mean": "mean |λmin/λmax| over the map",
    "adaptive_sharpness": "adaptive sharpness (η = 0)",
    "fn_sharpness": "filter-normalized sharpness",
    "surface_mean_rise": "mean rise of the surface",
    "surface_nonconvex_fraction": "surface non-convex fraction",
}
COLORS = {"standard": "#1f77b4", "ibp": "#d62728", "matched": "#7f7f7f"}


def _open(folders: dict[str, Path], name: str):
    from basinscope.store import load

    return load(folders[name]).dataset


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    stages = stage_folders(run_dir, results)
    cfg, pol, rows = results["config"], results["policies"], results["models"]
    eps = results["epsilons"]
    surfaces = {k: _open(stages, r["stages"]["surface"]) for k, r in rows.items()}
    maps = {k: _open(stages, r["stages"]["map"]) for k, r in rows.items() if "map" in r["stages"]}
    grid, span = cfg["grid"], cfg["span"]
    plane = (
        f"two random Gaussian directions (seed {cfg['direction_seed']}), filter-normalized "
        "(each filter rescaled to the norm of the model's filter), bias components zeroed, the "
        "same for both models"
    )
    claim = (
        "The talk's claim: certified training with IBP has a smoother loss landscape, which "
        "is why its loose bounds train well."
    )

    rep = Report(
        "Certified (IBP) training and the smoothness of the loss landscape, on digits",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"2 models · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "Interval bound propagation (IBP; Gowal et al. 2018) trains a network to be certifiably "
        "robust by minimising the cross-entropy of worst-case logits over an L∞ ball around "
        'each input, bounded layer by layer. The abstract "Towards Better Understanding of '
        'Training Certifiably Robust Models" argues that IBP trains better than methods with '
        "tighter bounds because its loss landscape is smoother. This study trains one small "
        f"CNN (conv {cfg['channels'][0]} → conv {cfg['channels'][1]} stride 2 → linear "
        f"{cfg['hidden']} → 10, ReLU, no BatchNorm) twice on scikit-learn's 8x8 digits: "
        f"standard training and IBP training. Training: {pol['training']}.\n\n"
        "It then measures, around both solutions, the landscape of the natural (clean) "
        "training loss: filter-normalized surfaces, Hessian extremes and |λmin/λmax| maps, "
        "and two scale-invariant sharpness measures. Note what this is not: the talk compares "
        "the landscapes of the certified training objectives of several relaxation methods; "
        "here one IBP model is compared with a standard one, on the natural loss."
    )

    std, ibp = rows["standard"], rows["ibp"]
    comp = results["comparison"]
    mt = results.get("matched")
    matched_text = (
        ""
        if mt is None
        else f" Third row: the standard run's checkpoint at step {mt['step']}, whose natural "
        f"training loss ({mt['losses'][str(mt['step'])]:.3g}) is the closest of its "
        f"{len(mt['losses'])} checkpoints to the IBP model's ({mt['target']:.3g}): a control "
        "for the loss level, since the curvature of the cross-entropy shrinks with the loss."
    )
    rep.heading("Models and certified accuracy")
    rep.table(
        [
            {
                "model": r["label"],
                "parameters": r["parameters"],
                "train acc.": r["train_accuracy"],
                "test acc.": r["test_accuracy"],
                **{f"certified @ ε={e:g}": c for e, c in zip(eps, r["certified_accuracy"])},
                "train s": _fmt(r["train_seconds"], ".1f"),
            }
            for r in rows.values()
        ],
        "Accuracy on the full 1,347 training and 450 test digits. Certified at ε: share of the "
        "test digits whose true class's IBP lower bound is above every other class's upper "
        "bound over the L∞ ball of radius ε (pixels in [0, 1], ball clipped to [0, 1]); a "
        "certified digit is classified correctly at every point of the ball. The IBP bounds are "
        "checked against 10,000 sampled perturbations in tests/analyses/test_ibp.py."
        + matched_text,
    )
    rep.figure(
        _certified(rows, eps, cfg),
        f"Certified accuracy on the 450 test digits against ε (IBP bounds, ball clipped to "
        f"[0, 1]). Dashed line: the IBP training radius ε = {cfg['eps_train']:g}. At that ε the "
        f"IBP model certifies {comp['certified_ibp']:.1%} of the test digits, the standard one "
        f"{comp['certified_standard']:.1%}; IBP costs "
        f"{comp['clean_accuracy_cost']:+.1%} of clean test accuracy.",
        save_as=figs / "certified_accuracy",
    )
    rep.figure(
        _training(rows),
        "Training curves (minibatch losses, smoothed over 5 records): natural cross-entropy "
        "(left) and IBP loss (right) of both models at the ε of the IBP model's schedule at that "
        f"step ({cfg['warmup']} steps at ε = 0, then a linear ramp to {cfg['eps_train']:g} over "
        f"{cfg['ramp']} steps); only the IBP model trains on it.",
        save_as=figs / "training",
    )

    rep.heading("Loss surfaces of the natural loss")
    rep.figure(
        _surface_pair(surfaces, rows),
        f"Natural training loss f(α, β) = L(θ* + αδ + βη) (mean cross-entropy on "
        f"{pol['surface_data']}, log colour scale shared by both panels) on a {grid}x{grid} "
        f"grid over [−{span:g}, {span:g}]², centred at each solution θ* (+). δ, η: {plane}. "
        f"Mean rise of the surface above its centre: standard {std['surface_mean_rise']:.3g}, "
        f"IBP {ibp['surface_mean_rise']:.3g}; non-convex fraction "
        f"{std['surface_nonconvex_fraction']:.2f} vs {ibp['surface_nonconvex_fraction']:.2f}. "
        f"{claim} "
        + _agree(comp, ("surface_mean_rise", "surface_nonconvex_fraction"))
        + _agree_matched(comp, ("surface_mean_rise", "surface_nonconvex_fraction")),
        save_as=figs / "surfaces",
    )
    if maps:
        mg = cfg["map_grid"]
        rep.figure(
            _map_pair(maps, rows),
            f"|λmin/λmax| of the Hessian of the natural training loss on {pol['hessian_data']} "
            f"at each point of a {mg}x{mg} grid over [−{span:g}, {span:g}]² in the same planes as "
            f"the surfaces (Lanczos in float64, tolerance {cfg['hessian_tol']:g}). Near 0: no "
            "significant negative curvature (locally convex). Mean over the map: standard "
            f"{_fmt(std['map_ratio_mean'])}, IBP {_fmt(ibp['map_ratio_mean'])}. "
            + _agree(comp, ("map_ratio_mean",))
            + _agree_matched(comp, ("map_ratio_mean",)),
            save_as=figs / "curvature_maps",
        )

    rep.heading("Flatness measures side by side")
    cm = (comp.get("matched") or {}).get("measures", {})
    rep.table(
        [
            {
                "measure": LABELS[k],
                "standard": m["standard"],
                "IBP": m["ibp"],
                "IBP / standard": _fmt(m["ratio"]),
                "IBP is": m["verdict"],
                **(
                    {
                        "standard at IBP's loss": _fmt(cm[k]["standard"]),
                        "IBP is (vs that)": cm[k]["verdict"],
                    }
                    if k in cm
                    else {}
                ),
            }
            for k, m in comp["measures"].items()
        ],
        f"Lower is flatter for every row. λmax, λmin: Hessian of the natural loss on "
        f"{pol['hessian_data']} at the solution. Adaptive sharpness: largest loss increase "
        f"with every weight moved by at most {cfg['adaptive_rho']:g} of its magnitude "
        f"({cfg['sharpness_steps']} ascent steps, {pol['sharpness_data']}); filter-normalized "
        f"sharpness: mean loss increase at step {cfg['fn_alpha']:g} along "
        f"{cfg['fn_directions']} filter-normalized random directions. Both are invariant to "
        "layer-wise rescaling of the ReLU network. "
        + claim
        + " "
        + _agree(comp, None)
        + _agree_matched(comp, None),
    )
    rep.figure(
        _bars(comp),
        "The flatness measures of the table, IBP divided by standard (solid) and by the standard "
        "checkpoint at the IBP model's loss level (hatched, where measured), log scale; below 1 "
        "(left of the line) the IBP model is flatter by that measure. Surfaces: filter-normalized "
        "random directions as above. " + _agree(comp, None) + _agree_matched(comp, None),
        save_as=figs / "flatness",
    )
    rep.heading("What the numbers show")
    rep.text(findings(results))

    from basinscope.plotting import surface_figure

    for name, ds in surfaces.items():
        rep.plotly(
            surface_figure(ds, "train_loss", log=True, title=rows[name]["label"]),
            f"Interactive 3D view: log10 natural training loss around the {rows[name]['label']} "
            f"solution ({pol['surface_data']}, {grid}x{grid} grid, filter-normalized random "
            "directions).",
        )

    rep.heading("How these numbers were made")
    rep.text(
        "Each model, centre measurement, surface and map is a stage stored in its own folder "
        "named by a hash of its settings (which include the folders of the stages it depends "
        "on), so running the study again reuses them. result.json next to this report holds "
        "every number shown, with its definition. Precision and device: " + pol["precision"] + "."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _agree(comp: dict[str, Any], keys) -> str:
    ms = comp["measures"]
    keys = [k for k in (keys or ms) if k in ms]
    yes = [LABELS[k] for k in keys if ms[k]["verdict"] == "flatter"]
    no = [LABELS[k] for k in keys if ms[k]["verdict"] == "sharper"]
    same = [LABELS[k] for k in keys if ms[k]["verdict"] == "equal"]
    if same and not yes and not no:
        return "Measured: no difference (" + ", ".join(same) + ")."
    if not no:
        return "Measured: the IBP model is flatter here (" + ", ".join(yes) + "), as claimed."
    if not yes:
        return (
            "Measured: the IBP model is NOT flatter here (" + ", ".join(no) + "): this disagrees "
            "with the claim."
        )
    return (
        f"Measured: mixed. IBP flatter by {', '.join(yes)}; not by {', '.join(no)}, where the "
        "measurement disagrees with the claim."
    )


def _agree_matched(comp: dict[str, Any], keys) -> str:
    """The same comparison against the standard checkpoint at the IBP model's loss level."""
    if not comp.get("matched"):
        return ""
    text = _agree(comp["matched"], keys)
    return (
        " Against the standard checkpoint at the IBP model's loss level: "
        + text[0].lower()
        + text[1:]
    )


def findings(results: dict[str, Any]) -> str:
    comp, rows = results["comparison"], results["models"]
    std, ibp = rows["standard"], rows["ibp"]
    k, n, sh = comp["ibp_flatter_count"], comp["measure_count"], comp["ibp_sharper_count"]
    e = comp["eps_closest_to_train"]
    parts = [
        f"Certification: at ε = {e:g} the IBP model certifies {comp['certified_ibp']:.1%} of the "
        f"test digits and the standard model {comp['certified_standard']:.1%}; clean test "
        f"accuracy {ibp['test_accuracy']:.3f} (IBP) vs {std['test_accuracy']:.3f} (standard).",
        f"Curvature at the solution: λmax {ibp['lambda_max']:.3g} (IBP) vs "
        f"{std['lambda_max']:.3g} (standard); |λmin/λmax| {ibp['ratio_center']:.3f} vs "
        f"{std['ratio_center']:.3f}. Sharpness: adaptive {ibp['adaptive_sharpness']:.3g} vs "
        f"{std['adaptive_sharpness']:.3g}, filter-normalized {ibp['fn_sharpness']:.3g} vs "
        f"{std['fn_sharpness']:.3g}. Surfaces: mean rise {ibp['surface_mean_rise']:.3g} vs "
        f"{std['surface_mean_rise']:.3g}.",
    ]
    if comp["ibp_flatter_overall"]:
        verdict = (
            f"The IBP model's natural-loss landscape is flatter by {k} of {n} measures and "
            f"sharper by {sh}: the direction the talk's smoothness argument predicts."
        )
    else:
        verdict = (
            f"The IBP model's natural-loss landscape is flatter by only {k} of {n} measures and "
            f"sharper by {sh}: the measurement does not support the claim that IBP training "
            "ends in a smoother landscape, at this scale."
        )
    not_flatter = [LABELS[m] for m, v in comp["measures"].items() if v["verdict"] == "sharper"]
    if not_flatter and comp["ibp_flatter_overall"]:
        verdict += " It is not flatter by " + ", ".join(not_flatter) + "."
    lower = "standard" if std["train_loss"] < ibp["train_loss"] else "IBP"
    verdict += (
        " Caveats: one seed and one small CNN on 8x8 digits. The natural training losses differ "
        f"({ibp['train_loss']:.3g} for IBP vs {std['train_loss']:.3g} standard): near zero "
        "cross-entropy the softmax saturates and the loss's curvature shrinks with the loss "
        "(its Gauss-Newton part scales with p(1 - p)), so the lower loss of the "
        f"{lower} model by itself makes it look flatter by the curvature and sharpness "
        "measures. And the talk compares the landscapes of the certified training objectives "
        "of several relaxation methods, not the natural loss of an IBP and a standard model."
    )
    cm = comp.get("matched")
    if cm:
        mt = results["matched"]
        verdict += (
            f"\n\nControl for the loss level: against the standard run's checkpoint at step "
            f"{mt['step']} (natural training loss {mt['losses'][str(mt['step'])]:.3g}, the IBP "
            f"model's {mt['target']:.3g}), the IBP model is flatter by {cm['ibp_flatter_count']} "
            f"of {cm['measure_count']} measures and sharper by {cm['ibp_sharper_count']}"
            + (
                ": at equal loss the IBP landscape is the flatter one, as the talk predicts."
                if cm["ibp_flatter_overall"]
                else ": at equal loss too, the measurement does not support the smoothness claim."
            )
            + " (The checkpoint is a point on the standard run's path, not a minimum: its "
            "gradient is not zero, and curvature early in training need not be that of a "
            "solution.)"
        )
    return "\n\n".join([*parts, verdict])


def _certified(rows, eps, cfg):
    from basinscope.plotting._common import new_figure

    fig = new_figure((5.6, 3.8))
    ax = fig.subplots()
    for name, r in rows.items():
        ax.plot(eps, r["certified_accuracy"], "o-", color=COLORS[name], label=r["label"])
    ax.axvline(cfg["eps_train"], color="0.5", ls="--", lw=1)
    ax.set_xlabel("ε (L∞ radius, pixels in [0, 1])")
    ax.set_ylabel("certified test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8.5)
    return fig


def _smooth(v, w: int = 5):
    v = np.asarray(v, dtype=float)
    if len(v) < w:
        return v
    return np.convolve(np.pad(v, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, "valid")


def _training(rows):
    from basinscope.plotting._common import new_figure

    fig = new_figure((10.0, 3.6))
    axes = fig.subplots(1, 2)
    for name, r in rows.items():
        h = r["history"]
        if h is None:  # the matched checkpoint: the standard run's curves
            continue
        axes[0].plot(h["step"], _smooth(h["natural"]), color=COLORS[name], label=r["label"])
        axes[1].plot(h["step"], _smooth(h["ibp"]), color=COLORS[name], label=r["label"])
    axes[0].set_ylabel("natural loss (minibatch)")
    axes[1].set_ylabel("IBP loss at the step's ε (minibatch)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=8.5)
    return fig


def _surface_pair(surfaces, rows):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    from basinscope.plotting import plot_contour
    from basinscope.plotting._common import new_figure

    vals = np.concatenate([ds["train_loss"].values.ravel() for ds in surfaces.values()])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        hi = lo * 1.01
    levels = np.geomspace(lo, hi, 30)
    fig = new_figure((4.8 * len(surfaces), 4.0))
    axes = fig.subplots(1, len(surfaces), squeeze=False)[0]
    for ax, (name, ds) in zip(axes, surfaces.items()):
        plot_contour(
            ds,
            "train_loss",
            kind="filled",
            log=True,
            levels=levels,
            vmin=lo,
            vmax=hi,
            ax=ax,
            colorbar=False,
            title=rows[name]["label"],
        )
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    sm = ScalarMappable(norm=LogNorm(lo, hi), cmap=colormaps["viridis"])
    fig.colorbar(sm, ax=list(axes), shrink=0.85, label="natural training loss (log scale)")
    return fig


def _map_pair(maps, rows):
    from basinscope.plotting import plot_contour
    from basinscope.plotting._common import new_figure

    fig = new_figure((4.8 * len(maps), 4.0))
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (name, ds) in zip(axes, maps.items()):
        ratio = ds["train_ratio"].values
        ds["train_ratio"].attrs["long_name"] = "|λmin/λmax| of the Hessian"
        plot_contour(
            ds,
            "train_ratio",
            kind="heatmap",
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
            ax=ax,
            title=f"{rows[name]['label']}: mean {np.mean(ratio):.2f}",
        )
    return fig


def _bars(comp):
    from basinscope.plotting._common import new_figure

    cm = (comp.get("matched") or {}).get("measures", {})
    items = [(k, m) for k, m in comp["measures"].items() if m["ratio"] and m["ratio"] > 0]
    fig = new_figure((6.4, 0.7 * max(len(items), 1) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(items))
    h = 0.4 if cm else 0.8
    ratios = [m["ratio"] for _, m in items]
    ax.barh(
        y,
        ratios,
        height=h,
        color=["#2ca02c" if r < 1 else "#d62728" for r in ratios],
        label="IBP / standard",
    )
    if cm:
        r2 = [cm[k]["ratio"] if cm.get(k, {}).get("ratio") else np.nan for k, _ in items]
        colors = ["#2ca02c" if r < 1 else "#d62728" for r in r2]
        ax.barh(
            y + h,
            r2,
            height=h,
            color=colors,
            hatch="//",
            alpha=0.6,
            label="IBP / standard at IBP's loss",
        )
        ax.legend(fontsize=8)
    ax.set_yticks(y + (h / 2 if cm else 0), [LABELS[k] for k, _ in items])
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("IBP / standard (below 1: IBP flatter)")
    return fig
