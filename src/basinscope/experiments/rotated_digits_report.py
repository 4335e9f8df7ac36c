"""The rotated-digits study's report: figures (PNG and PDF) and one self-contained HTML file,
built from ``result.json`` and the stored stage folders only (nothing is recomputed)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

import basinscope
from basinscope.experiments.rotated_digits import (
    BASIN_CONDITIONS,
    SEED_MEANS,
    START_NAMES,
    STRATEGY_NAMES,
)
from basinscope.plotting import line_figure, plot_contour, surface_figure
from basinscope.plotting._common import LEGEND_SIZE, new_figure, style_axes
from basinscope.plotting.run import load_trajectories
from basinscope.report import Report
from basinscope.report.html import MISSING
from basinscope.store import paths
from basinscope.store.atomic import atomic_write_text

__all__ = ["TABLE_DIGITS", "TABLE_PRECISION", "figure_data", "write_report"]

#: The summary table's numbers: significant digits, and the magnitude below which a
#: number is shown as 0 (barriers and accuracy differences below it are rounding).
TABLE_DIGITS = 3
TABLE_PRECISION = 1e-6
#: The lines' variables kept in result.json (``figures.paths``): every curve drawn.
PATH_VARIABLES = ("source_loss", "target_loss", "source_accuracy", "target_accuracy")

NO_BN = "LeNet has no BatchNorm, so no statistics policy applies"
COLORS = {
    "ft": "#1f77b4",
    "lp": "#ff7f0e",
    "lp-ft": "#2ca02c",
    "surgical": "#d62728",
    "guided": "#9467bd",
}


def _open(stages: Path, name: str):
    from basinscope.store import load

    return load(stages / name).dataset


#: The summary table's columns: the key of each value in results["summary"] and its header.
SUMMARY_COLUMNS = {
    "angle": "angle",
    "start": "start",
    "strategy": "strategy",
    "seeds": "seeds",
    "target_acc_before": "target acc. before",
    "target_acc_after": "target acc. after",
    "source_acc_before": "source acc. before",
    "source_acc_after": "source acc. after",
    "forgetting": "forgetting",
    "barrier_copies": "barrier copies",
    "path_excess_target": "path excess (target)",
    "path_excess_source": "path excess (source)",
    "seeds_in_basin": "seeds in basin",
    "in_pretrained_basin": "in pre-trained basin",
    "basin_flatness": "Def. 3.1 (1) E|ℓ−μ|",
    "basin_noise_rise": "Def. 3.1 (2) rise, noise",
    "basin_step_rise": "Def. 3.1 (3) rise, step",
    "basin_test": "Def. 3.1 basin (seeds; CI-supported)",
    "tests_agree_seeds": "Def. 3.1 = barrier (seeds)",
    "relative_distance": "relative distance",
    "plateau_gain": "plateau gain",
    "cka_fc1_target": "CKA fc1 (target)",
    "lambda_max": "lambda_max",
    "trace": "trace",
}


def _cell(key: str, value: Any) -> Any:
    if key == "angle":
        return f"{value:g}°"
    if key == "in_pretrained_basin":
        return {True: "yes", False: "no", None: MISSING}[value]
    return value


def figure_data(stages: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The numbers of the report's curves that live in stage folders, for result.json
    (``figures``): per angle, each strategy's path pre-trained -> fine-tuned (``alpha`` and
    the loss and accuracy on the source and target test splits) and each start's projected
    fine-tuning trajectories (``alpha``, ``beta``, ``steps`` per copy). The surfaces'
    grids stay in their stage folders (``angles.<a>.surfaces.<start>.stage``)."""
    out: dict[str, Any] = {"paths": {}, "trajectories": {}}
    for a, res in results["angles"].items():
        paths_a = {}
        for strategy, line in res["lines"].items():
            ds = _open(stages, line["stage"])
            curve = {"alpha": [float(x) for x in ds.alpha.values]}
            for var in PATH_VARIABLES:
                if var in ds.data_vars:
                    curve[var] = [float(x) for x in ds[var].values]
            paths_a[strategy] = curve
        out["paths"][a] = paths_a
        out["trajectories"][a] = {
            start: [
                {
                    "label": t.label,
                    "steps": [int(x) for x in t.steps],
                    "alpha": [float(x) for x in t.alpha],
                    "beta": [float(x) for x in t.beta],
                }
                for t in load_trajectories(stages / surface["stage"])
            ]
            for start, surface in res["surfaces"].items()
        }
    return out


def _legend_outside(fig, ax, **kwargs) -> None:
    """``ax``'s legend to the right of the figure's panels, off the data (constrained
    layout makes room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=LEGEND_SIZE, **kwargs)


def _wrap(title: str, width: int = 42) -> str:
    """A panel title broken into lines of at most ``width`` characters (never clipped)."""
    return textwrap.fill(title, width)


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    cfg = results["config"]
    stages = Path(run_dir).parent / paths.STAGES
    figs = Path(run_dir) / paths.FIGURES
    figs.mkdir(exist_ok=True)
    angles = list(results["angles"])
    strategies = list(cfg["strategies"])
    defs = results["definitions"]
    # every drawn curve is in result.json (figures); a result.json without it: the stages
    curves = results.get("figures") or figure_data(stages, results)
    rep = Report(
        "Fine-tuning on rotated digits: does it stay in the pre-trained basin?",
        f"basinscope {basinscope.__version__} · study rotated-digits · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{results['seconds']} s · run folder {Path(run_dir).name}",
        formats=tuple(results["config"].get("figure_formats", ("png", "pdf"))),
    )
    pre = results["pretrained"]
    rep.text(
        f"A LeNet is pre-trained on upright 8x8 digits (scikit-learn's digits, the source distribution; "
        f"{cfg['pretrain_steps']} SGD steps, source test accuracy {pre['source_test_accuracy']:.3f}). "
        f"It is then fine-tuned for {cfg['finetune_steps']} gradient steps on the same digits rotated by "
        f"{', '.join(angles)} degrees (the targets) with each strategy "
        f"({', '.join(STRATEGY_NAMES[s] for s in strategies)}), and, for comparison, trained for the same "
        f"number of steps from a random initialization shared by the copies (the talk's control) and for "
        f"{cfg['independent_steps']} steps (to a plateau) from independent random initializations; "
        f"{cfg['copies']} copies of each with different SGD noise (data order), and the whole study "
        f"repeated for {cfg['seeds']} seeds. The question: does fine-tuning from the pre-trained start stay in the "
        "pre-trained basin, how far does it move, what does it forget, and how sharp is where it lands?"
    )

    _conclusion_section(rep, results)

    # -- the summary ------------------------------------------------------------------------
    rep.heading("Summary")
    rep.table(
        _summary_table(results["summary"]),
        "Per target angle and (start, strategy); accuracies are means over the copies on the test "
        f"splits; columns with an interval: {defs['mean and CI over seeds']}. Seeds: {defs['seeds']}. "
        f"Starts: {defs['random starts']}. Stayed in the pre-trained basin: "
        f"{defs['stayed in the pre-trained basin']}. Path criterion: {defs['path criterion']}. "
        f"Def. 3.1 columns: {defs['basin test (Definition 3.1)']}; 'Def. 3.1 basin' gives the "
        "seeds where the hull is a basin and the seeds whose intervals support their verdict; "
        f"'Def. 3.1 = barrier': the seeds where both verdicts agree ({defs['basin test vs. barrier']}). "
        f"Barriers: {defs['barrier']}. Forgetting: {defs['forgetting']}. λ_max and trace: "
        f"{defs['lambda_max']}; {defs['trace']}. CKA fc1: {defs['cka']}, at the penultimate layer "
        f"on the target test split. Numbers to {TABLE_DIGITS} significant digits; magnitudes "
        f"below {TABLE_PRECISION:g} are shown as 0; {MISSING}: not defined.",
        digits=TABLE_DIGITS,
        precision=TABLE_PRECISION,
    )

    # -- adaptation vs. forgetting -------------------------------------------------------------
    rep.heading("Adaptation and forgetting")
    rep.figure(
        _accuracy_figure(results, angles, strategies),
        "Test accuracy after fine-tuning on the target (left) and on the source (right) against the "
        "rotation angle, per strategy from the pre-trained start (solid) and from the random starts "
        "(black dashed: shared init; black dotted: independent inits); grey dotted: the pre-trained "
        f"model before fine-tuning. Means over {cfg['copies']} copies, then over {cfg['seeds']} seeds, "
        f"with error bars: {defs['mean and CI over seeds']}; {defs['accuracy']}. {NO_BN}.",
        save_as=figs / "accuracy_vs_angle",
    )

    # -- landscapes ------------------------------------------------------------------------------
    rep.heading("2D landscapes: random start vs. pre-trained start")
    for a in angles:
        res = results["angles"][a]
        fig = _surface_panels(stages, res, a)
        ev = {
            k: ", ".join(f"{100 * v:.0f}%" for v in s["explained_variance_ratio"])
            for k, s in res["surfaces"].items()
        }
        rep.figure(
            fig,
            f"Target {a}°. Mean cross-entropy (log colour scale, log-spaced contour levels, one scale "
            "per row shared by its two panels) on the source training images (top) and "
            f"on the target training images rotated by {a}° (bottom), on a {cfg['grid']}x{cfg['grid']} grid "
            "in the plane of the top two principal components of the fine-tuning trajectories of both "
            "copies (full fine-tuning), centred at their start: the random initialization (left) and "
            "the pre-trained model (right); + marks the start. "
            f"Trajectories: {defs['trajectories']}; the legend gives each copy's largest distance from the "
            f"plane. Explained variance of the two components: random start {ev['random']}, pre-trained "
            f"start {ev['pre-trained']}. Axes are distances in parameter space (unit directions). {NO_BN}.",
            save_as=figs / f"surfaces_angle{a}",
        )
    a_big = angles[-1]
    ds = _open(stages, results["angles"][a_big]["surfaces"]["pre-trained"]["stage"])
    trajs = load_trajectories(stages / results["angles"][a_big]["surfaces"]["pre-trained"]["stage"])
    rep.plotly(
        surface_figure(
            ds,
            "target_loss",
            log=True,
            trajectories=trajs,
            title=f"target loss ({a_big}°) around the pre-trained model",
        ),
        f"Interactive 3D view of the bottom-right panel for the target rotated by {a_big}°: log10 of the "
        f"mean cross-entropy on the {a_big}°-rotated training images, {cfg['grid']}x{cfg['grid']} grid, with "
        f"the trajectories of both fine-tuning copies. {NO_BN}.",
    )

    # -- the path pre-trained -> fine-tuned ----------------------------------------------------------
    rep.heading("The straight path from pre-trained to fine-tuned, extrapolated")
    rep.figure(
        _paths_figure(curves, angles, strategies),
        "Mean cross-entropy (log scale) along f(α) = L((1−α)θ_pre + αθ_ft) for α in [−1, 2] "
        f"({cfg['line_points']} points) on the source test split (top) and the target test split "
        "(bottom), one column per angle and one curve per strategy (copy 0); α = 0 is the pre-trained "
        "model, α = 1 the fine-tuned one. A target curve that falls monotonically from 0 to 1 and a "
        "source curve without a bump say the fine-tuned model sits in the pre-trained basin; the "
        f"extrapolation past 1 shows where that basin's walls are. {NO_BN}.",
        save_as=figs / "paths",
    )
    line = _open(stages, results["angles"][a_big]["lines"]["ft"]["stage"])
    rep.plotly(
        line_figure(line, metrics=("loss", "accuracy"), splits=("source", "target")),
        f"The FT path for the target rotated by {a_big}°, interactive: loss and accuracy on the source "
        f"and target test splits, {cfg['line_points']} points on α in [−1, 2]. {NO_BN}.",
    )

    # -- barriers -------------------------------------------------------------------------------
    rep.heading("Barriers: pre-trained start vs. random start")
    rep.figure(
        _barrier_figure(results, angles, strategies, cfg),
        f"Left: the {cfg['barrier_metric']} barrier between the two fine-tuned copies on the target test "
        "split, full fine-tuning from the pre-trained start (blue), from a random start shared by the "
        "copies (black) and from independent random starts (grey), and for the other strategies from the "
        "pre-trained start. Right: the path criterion's excess on the path pre-trained → fine-tuned on "
        f"the target test split ({defs['path criterion']}). Dashed: basin_epsilon = "
        f"{cfg['basin_epsilon']:g}. Bars: means over {cfg['seeds']} seeds, error bars: "
        f"{defs['mean and CI over seeds']}. {defs['barrier']}. {NO_BN}.",
        save_as=figs / "barriers",
    )
    _barrier_seed_table(rep, results)

    # -- the Definition 3.1 basin test ------------------------------------------------------------
    rep.heading("The Definition 3.1 basin test next to the barrier verdict")
    eps = cfg["basin_epsilon"]
    rep.figure(
        _basin_test_figure(results, angles, strategies, cfg),
        f"The three conditions of Definition 3.1 (Neyshabur et al. 2020) on the convex hull S of "
        f"the {cfg['copies']} fine-tuned copies, ℓ = target test {cfg['barrier_metric']}, per "
        "strategy from the pre-trained start and for FT from the random starts (black: shared "
        "init; grey: independent inits). Left: condition 1, E|ℓ(w) − μ| over w uniform in S "
        f"(μ = the mean of ℓ over S), to be at most ε = {eps:g} (dashed). Middle: condition 2, the "
        f"expected rise E[ℓ(f + ν)] − μ under isotropic Gaussian noise ν of total scale δ = "
        f"{cfg['basin_delta']:g} at the point f where a random ray through S leaves it. Right: "
        "condition 3, the expected rise after an outward step of length |ν|, ν ~ N(0, δ²), along "
        f"that ray. Conditions 2 and 3 need at least 2ε = {2 * eps:g} (dashed). Monte Carlo: "
        f"{cfg['basin_samples']} points and {cfg['basin_pairs']} pairs per seed. Bars: means over "
        f"{cfg['seeds']} seeds, error bars: {defs['mean and CI over seeds']}. {NO_BN}.",
        save_as=figs / "basin_test",
    )
    _basin_seed_table(rep, results)

    # -- representations and parameters ----------------------------------------------------------
    rep.heading("How far did fine-tuning move? Distance and per-layer CKA")
    rep.figure(
        _similarity_figure(results, angles, strategies),
        f"Left: per-module relative distance ||θ_ft − θ_pre|| / ||θ_pre|| of full fine-tuning (copy 0) per "
        f"angle. Right: per-layer linear CKA between the pre-trained and the fully fine-tuned model on the "
        f"target test split (450 images); {defs['cka']}. {NO_BN}.",
        save_as=figs / "distance_and_cka",
    )

    # -- criticality --------------------------------------------------------------------------------
    rep.heading("Which layers are critical? Module criticality")
    rep.figure(
        _criticality_figure(results, angles),
        "Module criticality μ_i per layer of full fine-tuning (copy 0), from the pre-trained start "
        f"(θ⁰ = pre-trained; left) and from a random start (θ⁰ = the random initialization; right); "
        f"{defs['module criticality']}; {cfg['criticality_points']}x{cfg['criticality_sigmas']} "
        f"(α, σ) grid, {cfg['criticality_samples']} noise draws each, the first {cfg['criticality_examples']} "
        f"target training images; ε = final loss + 0.1. 0: the module can be rewound all the way to θ⁰ within ε; ∞: no feasible point on the grid. Symmetric-log scale. {NO_BN}.",
        save_as=figs / "criticality",
    )
    _criticality_edge_table(rep, results)

    # -- curvature ------------------------------------------------------------------------------
    rep.heading("How sharp is where fine-tuning lands? Hessian")
    rep.figure(
        _curvature_figure(results, angles, strategies),
        f"λ_max (left) and trace (right, with 95% CI) of the Hessian of each solution (copy 0); "
        f"{defs['lambda_max']}; {defs['trace']}. Grey dotted: the pre-trained model on the same target "
        f"data. {NO_BN}.",
        save_as=figs / "curvature",
    )

    # -- how it was made ------------------------------------------------------------------------
    rep.heading("How these numbers were made")
    rep.text(
        "Every landscape point is a full pass over its dataset with basinscope's engine; losses are means "
        "over all examples. Every stage (pre-training, each fine-tuning, each analysis) is stored in its own "
        "folder under stages/, named by a hash of its settings, which include the folders it depends on: "
        "running the study again reuses them, and a changed setting recomputes only what depends on it. "
        "result.json next to this report holds every number shown (the curves of the paths and the "
        "projected trajectories under figures; the surfaces' grids in the stage folders it names); "
        "`basinscope report RUN_DIR` rebuilds this page from it."
    )
    rep.table(
        [{"setting": k, "value": v} for k, v in cfg.items()],
        "The study's configuration (change with --set key=value or --config FILE.toml).",
    )
    rep.table(
        [{"term": k, "definition": v} for k, v in defs.items()],
        "Definitions.",
    )
    rep.table(
        [
            {
                "stage": r["stage"],
                "reused": "yes" if r["reused"] else "no",
                "seconds": r["seconds"],
            }
            for r in results["stages"]
        ],
        "Stages of the last run.",
        digits=TABLE_DIGITS,
    )
    return atomic_write_text(Path(run_dir) / paths.REPORT, rep.render(), "report")


# -- the numbers of the study's science: conclusion, CIs, grid edges ------------------------


def _ci_text(mean, ci) -> str:
    if mean is None:
        return "N/A"
    return f"{mean:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _summary_table(rows: list[dict]) -> list[dict]:
    """The summary rows for the table: each mean over seeds with its CI in one cell, N/A where
    a value is not defined (forgetting from a random start)."""
    out = []
    for r in rows:
        cells = {}
        for k, header in SUMMARY_COLUMNS.items():
            if k not in r:
                continue
            if k in SEED_MEANS or k == "plateau_gain":
                cells[header] = _ci_text(r[k], r.get(f"{k}_ci"))
            elif k == "start":
                cells[header] = START_NAMES[r[k]]
            elif k == "basin_test":
                cells[header] = _basin_verdict_text(r)
            elif k == "tests_agree_seeds":
                cells[header] = f"{r[k]}/{r['seeds']}"
            else:
                cells[header] = _cell(k, r[k])
        out.append(cells)
    return out


def _basin_verdict_text(r: dict) -> str:
    """A row's Definition 3.1 verdict: yes (every seed), no (none) or mixed, with the seeds
    where the hull is a basin and those whose intervals support their verdict."""
    verdict = {True: "yes", False: "no", None: "mixed"}[r["basin_test"]]
    n = r["seeds"]
    return f"{verdict} ({r['basin_test_seeds']}/{n}; {r['basin_test_supported_seeds']}/{n})"


def _conclusion_section(rep, results) -> None:
    """What the data show: the sentences the study computed from its numbers."""
    rep.heading("Conclusion")
    for sentence in results["conclusion"]["text"]:
        rep.text(sentence)


def _barrier_seed_table(rep, results) -> None:
    """Every seed's copies barrier and path excess, with the barrier's bootstrap CI."""
    defs = results["definitions"]
    rows = []
    for a, res in results["angles"].items():
        for key, per in res["per_seed"].items():
            start, s = key.split("/")
            row = {"angle": f"{a}°", "start": START_NAMES[start], "strategy": STRATEGY_NAMES[s]}
            row["barrier copies per seed (bootstrap CI)"] = "; ".join(
                _ci_text(r["barrier_copies"], r["barrier_copies_ci"]) for r in per
            )
            row["path excess per seed"] = (
                "; ".join(f"{r['path_excess_target']:.3f}" for r in per)
                if start == "pre-trained"
                else "N/A"
            )
            rows.append(row)
    rep.table(
        rows,
        f"Per seed (0, 1, ...): the barrier between the copies on the target test split with its "
        f"bootstrap CI ({defs['barrier']}), and the path excess ({defs['path criterion']}).",
    )


def _basin_seed_table(rep, results) -> None:
    """Every seed's Definition 3.1 numbers with their Monte Carlo intervals, and both
    verdicts."""
    defs, cfg = results["definitions"], results["config"]
    yes = {True: "yes", False: "no"}
    rows = []
    for a, res in results["angles"].items():
        for key, per in res["per_seed"].items():
            start, s = key.split("/")
            row = {"angle": f"{a}°", "start": START_NAMES[start], "strategy": STRATEGY_NAMES[s]}
            for n, col in enumerate(BASIN_CONDITIONS, 1):
                row[f"({n}) per seed (MC interval)"] = "; ".join(
                    _ci_text(r[col], r[f"{col}_mc_ci"]) for r in per
                )
            row["Def. 3.1 basin per seed"] = "; ".join(
                yes[r["basin_test_holds"]] + ("" if r["basin_test_supported"] else "?") for r in per
            )
            row["barrier verdict per seed"] = "; ".join(yes[r["barrier_verdict"]] for r in per)
            rows.append(row)
    rep.table(
        rows,
        f"Per seed (0, 1, ...): the three conditions of Definition 3.1 on the convex hull of the "
        f"copies, each estimate with its {cfg['basin_confidence']:g} Monte Carlo interval: (1) "
        f"E|ℓ−μ| inside the hull, to be at most ε = {cfg['basin_epsilon']:g}; (2) the expected "
        f"rise of ℓ under isotropic noise of scale δ = {cfg['basin_delta']:g} where a random ray "
        f"leaves the hull, and (3) after an outward step |ν|, ν ~ N(0, δ²), along it, each to be "
        f"at least 2ε = {2 * cfg['basin_epsilon']:g}. Verdict: yes when all three hold; '?': "
        f"the intervals do not support that verdict. Barrier verdict: "
        f"{defs['basin test vs. barrier']}. {defs['basin test (Definition 3.1)']}.",
        digits=TABLE_DIGITS,
    )


def _criticality_edge_table(rep, results) -> None:
    """Where sigma* sits on the sigma grid, per angle, start and module (seed 0)."""
    rows = []
    for a, res in results["angles"].items():
        for start, g in res["criticality_grid"].items():
            for m, v in g["modules"].items():
                rows.append(
                    {
                        "angle": f"{a}°",
                        "start": start,
                        "module": m,
                        "sigma*": "–" if v["sigma_star"] is None else f"{v['sigma_star']:.3g}",
                        "feasible points": v["feasible_points"],
                        "on the grid's edge": v["on_edge"] or "no",
                    }
                )
    rep.table(
        rows,
        "Module criticality's minimiser on the log-spaced σ grid: σ* at the grid's smallest or "
        "largest value is flagged (μ is then bounded by the grid, not found); 'none feasible': no "
        "grid point within ε; μ = 0 (α* = 0) is not flagged, since σ* means nothing there.",
    )


# -- figures ---------------------------------------------------------------------------------


def _accuracy_figure(results, angles, strategies):
    """From the summary rows (means over the copies)."""
    fig = new_figure((12, 4))
    axes = fig.subplots(1, 2, sharey=True)
    x = [float(a) for a in angles]
    rows = {(r["angle"], r["start"], r["strategy"]): r for r in results["summary"]}

    def col(start, strategy, column):
        return [rows[(a, start, STRATEGY_NAMES[strategy])][column] for a in x]

    def err(start, strategy, column):
        return _yerr(
            col(start, strategy, column),
            [rows[(a, start, STRATEGY_NAMES[strategy])].get(f"{column}_ci") for a in x],
        )

    for ax, side in zip(axes, ("target", "source"), strict=True):
        after = f"{side}_acc_after"
        for s in strategies:
            ax.errorbar(
                x,
                col("pre-trained", s, after),
                yerr=err("pre-trained", s, after),
                fmt="o-",
                color=COLORS[s],
                label=STRATEGY_NAMES[s],
                capsize=2,
            )
        for start, fmt in (("random", "s--"), ("random-independent", "d:")):
            ax.errorbar(
                x,
                col(start, "ft", after),
                yerr=err(start, "ft", after),
                fmt=fmt,
                color="black",
                label=f"{START_NAMES[start]}, FT",
                capsize=2,
            )
        before = col("pre-trained", "ft", f"{side}_acc_before")
        ax.plot(x, before, ":", color="grey", label="pre-trained, before")
        ax.set_xlabel("rotation of the target (degrees)")
        ax.set_ylabel(f"{side} test accuracy after fine-tuning")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{side} ({'adaptation' if side == 'target' else 'forgetting'})")
        style_axes(ax)
    _legend_outside(fig, axes[0])
    return fig


def _surface_panels(stages: Path, res, a):
    """Two rows (source and target loss) of two panels (random and pre-trained start); the
    two panels of a row share one log colour scale and its colorbar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    from basinscope.plotting._grid import color_scale, surface_grid
    from basinscope.plotting.surfaces import _add_colorbar

    fig = new_figure((11.5, 9))
    axes = fig.subplots(2, 2)
    starts = ("random", "pre-trained")
    data = {s: _open(stages, res["surfaces"][s]["stage"]) for s in starts}
    trajs = {s: load_trajectories(stages / res["surfaces"][s]["stage"]) for s in starts}
    rows = (("source_loss", "source loss (upright)"), ("target_loss", f"target loss ({a}°)"))
    for row, (var, what) in enumerate(rows):
        grids = [surface_grid(data[s], var, log=True)[2] for s in starts]
        chunks = [np.ma.compressed(g) for g in grids if np.ma.count(g)]
        lo_hi = (float(min(c.min() for c in chunks)), float(max(c.max() for c in chunks)))
        norm, _ = color_scale(lo_hi if chunks else None, levels=30, log=True)
        for col, start in enumerate(starts):
            plot_contour(
                data[start],
                var,
                kind="filled",
                log=True,
                trajectories=trajs[start],
                ax=axes[row, col],
                title=_wrap(f"{what}, {start} start"),
                vmin=float(norm.vmin),
                vmax=float(norm.vmax),
                colorbar=False,
            )
        mappable = ScalarMappable(norm=norm, cmap=colormaps["viridis"])
        _add_colorbar(fig, mappable, list(axes[row]), f"{what} (log scale)")
    fig.suptitle(f"target: digits rotated by {a}°")
    return fig


def _paths_figure(curves, angles, strategies):
    """From result.json's ``figures.paths``: every curve drawn is a list there."""
    from matplotlib.ticker import FuncFormatter

    fig = new_figure((3.2 * len(angles) + 2.5, 6.5))
    axes = np.atleast_2d(fig.subplots(2, len(angles), sharey="row", sharex=True, squeeze=False))
    for j, a in enumerate(angles):
        for s in strategies:
            curve = curves["paths"][a][s]
            for i, side in enumerate(("source", "target")):
                axes[i, j].semilogy(
                    curve["alpha"],
                    curve[f"{side}_loss"],
                    color=COLORS[s],
                    label=STRATEGY_NAMES[s],
                )
        for i, side in enumerate(("source", "target")):
            ax = axes[i, j]
            for x in (0, 1):
                ax.axvline(x, color="grey", lw=0.6, ls=":")
            ax.set_title(f"{a}°: {side} test loss", fontsize=10)
            ax.set_xlabel(_wrap("α (0: pre-trained, 1: fine-tuned)", 24))
            for axis_ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis_ticks(FuncFormatter(lambda v, _: f"{v:.3g}"))  # not 2.25 x 10^0
            style_axes(ax)
    _legend_outside(fig, axes[0, 0])
    return fig


def _yerr(means, cis) -> np.ndarray | None:
    """Asymmetric error bars from CIs (``None`` where a CI is missing: no bar)."""
    if all(c is None for c in cis):
        return None
    lo = [0.0 if c is None else m - c[0] for m, c in zip(means, cis, strict=True)]
    hi = [0.0 if c is None else c[1] - m for m, c in zip(means, cis, strict=True)]
    return np.array([lo, hi])


def _bar_series(results, angles, strategies) -> list[tuple[str, str, str, list[dict]]]:
    """``(start, color, label, summary row per angle)`` of each bar series of the barrier
    and basin-test figures: every strategy from the pre-trained model, then FT from the
    random and the independent random starts."""
    keys = [f"pre-trained/{s}" for s in strategies] + ["random/ft", "random-independent/ft"]
    rows = {(r["angle"], r["start"], r["strategy"]): r for r in results["summary"]}
    series = []
    for key in keys:
        start, s = key.split("/")
        color = {"random": "black", "random-independent": "grey"}.get(start, COLORS[s])
        label = f"{START_NAMES[start]}, FT" if start != "pre-trained" else STRATEGY_NAMES[s]
        series.append(
            (start, color, label, [rows[(float(a), start, STRATEGY_NAMES[s])] for a in angles])
        )
    return series


def _barrier_figure(results, angles, strategies, cfg):
    """Means over seeds with their CIs, from the summary rows."""
    fig = new_figure((11, 4))
    axes = fig.subplots(1, 2)  # the copies' barrier and the path excess: own scales
    series = _bar_series(results, angles, strategies)
    width = 0.8 / len(series)
    x = np.arange(len(angles))
    for k, (start, color, label, sel) in enumerate(series):
        cols = [("barrier_copies", axes[0])]
        if start == "pre-trained":
            cols.append(("path_excess_target", axes[1]))
        for column, ax in cols:
            vals = [r[column] for r in sel]
            yerr = _yerr(vals, [r[f"{column}_ci"] for r in sel])
            ax.bar(x + k * width, vals, width, color=color, label=label, yerr=yerr, capsize=2)
    for ax, title in zip(
        axes,
        ("between the two fine-tuned copies", "path excess pre-trained → fine-tuned"),
        strict=True,
    ):
        ax.axhline(cfg["basin_epsilon"], color="grey", ls="--", lw=1)
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels([f"{a}°" for a in angles])
        ax.set_title(title)
        style_axes(ax)
    axes[0].set_ylabel(f"{cfg['barrier_metric']} barrier ({cfg['barrier_definition']})")
    axes[1].set_ylabel(f"{cfg['barrier_metric']} excess over max(f(0), f(1))")
    axes[1].set_ylim(bottom=0)
    _legend_outside(fig, axes[0])
    return fig


def _basin_test_figure(results, angles, strategies, cfg):
    """The Definition 3.1 conditions' estimates, means over seeds with their CIs, from the
    summary rows."""
    fig = new_figure((14, 4))
    axes = fig.subplots(1, 3)
    series = _bar_series(results, angles, strategies)
    width = 0.8 / len(series)
    x = np.arange(len(angles))
    for k, (_start, color, label, sel) in enumerate(series):
        for column, ax in zip(BASIN_CONDITIONS, axes, strict=True):
            vals = [r[column] for r in sel]
            yerr = _yerr(vals, [r[f"{column}_ci"] for r in sel])
            ax.bar(x + k * width, vals, width, color=color, label=label, yerr=yerr, capsize=2)
    eps = cfg["basin_epsilon"]
    metric = cfg["barrier_metric"]
    panels = (
        ("(1) flat inside: E|ℓ − μ| ≤ ε", f"E|ℓ − μ| ({metric})", eps),
        ("(2) noise at the exit: rise ≥ 2ε", f"expected rise of the {metric}", 2 * eps),
        ("(3) step out along the ray: rise ≥ 2ε", f"expected rise of the {metric}", 2 * eps),
    )
    for ax, (title, ylabel, level) in zip(axes, panels, strict=True):
        ax.axhline(level, color="grey", ls="--", lw=1)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels([f"{a}°" for a in angles])
        ax.set_title(_wrap(title, 40))
        ax.set_ylabel(ylabel)
        style_axes(ax)
    _legend_outside(fig, axes[0])
    return fig


def _similarity_figure(results, angles, strategies):
    fig = new_figure((12, 4))
    axes = fig.subplots(1, 2)
    sims = [results["angles"][a]["similarity"]["pre-trained/ft"] for a in angles]
    modules = list(sims[0]["distance"]["per_module"])
    layers = list(sims[0]["cka"]["tgt_test"])
    width = 0.8 / len(angles)
    cmap = _angle_colors(len(angles))
    for j, (a, sim) in enumerate(zip(angles, sims, strict=True)):
        vals = [sim["distance"]["per_module"][m]["relative"] for m in modules]
        axes[0].bar(np.arange(len(modules)) + j * width, vals, width, color=cmap[j], label=f"{a}°")
        axes[1].plot(
            range(len(layers)),
            [sim["cka"]["tgt_test"][n] for n in layers],
            "o-",
            color=cmap[j],
            label=f"{a}°",
        )
    axes[0].set_xticks(np.arange(len(modules)) + 0.4 - width / 2)
    axes[0].set_xticklabels(modules)
    axes[0].set_ylabel("relative distance to pre-trained")
    axes[0].set_title("parameters (full fine-tuning)")
    axes[1].set_xticks(range(len(layers)))
    axes[1].set_xticklabels(layers)
    axes[1].set_ylabel("linear CKA to pre-trained")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("representations (target test split)")
    for ax in axes:
        style_axes(ax)
    _legend_outside(fig, axes[1], title="target")
    return fig


def _angle_colors(n: int) -> list:
    from matplotlib import colormaps

    cm = colormaps["viridis"]
    return [cm(t) for t in np.linspace(0.05, 0.9, n)]


def _mu(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _criticality_figure(results, angles):
    fig = new_figure((12, 4))
    axes = fig.subplots(1, 2, sharey=True)
    cmap = _angle_colors(len(angles))
    for ax, start in zip(axes, ("pre-trained", "random"), strict=True):
        crits = [results["angles"][a]["criticality"][start] for a in angles]
        modules = list(crits[0]["modules"])
        width = 0.8 / len(angles)
        for j, (a, c) in enumerate(zip(angles, crits, strict=True)):
            vals = np.array([_mu(c["modules"][m]["mu"]) for m in modules])
            xs = np.arange(len(modules)) + j * width
            finite = np.isfinite(vals)
            ax.bar(xs[finite], vals[finite], width, color=cmap[j], label=f"{a}°")
            for x, v in zip(xs, vals, strict=True):
                if not np.isfinite(v) or v == 0:
                    ax.text(x, 0, "∞" if not np.isfinite(v) else "0", ha="center", va="bottom")
        ax.set_xticks(np.arange(len(modules)) + 0.4 - width / 2)
        ax.set_xticklabels(modules)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{start} start")
        ax.set_ylabel("module criticality μ")
        style_axes(ax)
    _legend_outside(fig, axes[0], title="target")
    return fig


def _curvature_figure(results, angles, strategies):
    fig = new_figure((12, 4))
    axes = fig.subplots(1, 2)
    x = [float(a) for a in angles]
    keys = [f"pre-trained/{s}" for s in strategies] + ["random/ft", "pre-trained (start)"]
    for key in keys:
        curv = [results["angles"][a]["curvature"][key] for a in angles]
        if key == "pre-trained (start)":
            style, color, label = ":", "grey", "pre-trained, before"
        elif key == "random/ft":
            style, color, label = "s--", "black", "random start (FT)"
        else:
            s = key.split("/")[1]
            style, color, label = "o-", COLORS[s], STRATEGY_NAMES[s]
        axes[0].plot(x, [c["lambda_max"] for c in curv], style, color=color, label=label)
        axes[1].errorbar(
            x,
            [c["trace"] for c in curv],
            yerr=[c["trace_ci_halfwidth"] for c in curv],
            fmt=style,
            color=color,
            label=label,
            capsize=2,
        )
    axes[0].set_ylabel("λ_max of the Hessian")
    axes[1].set_ylabel("trace of the Hessian")
    for ax in axes:
        ax.set_xlabel("rotation of the target (degrees)")
        ax.set_yscale("log")
        style_axes(ax)
    _legend_outside(fig, axes[0])
    return fig
