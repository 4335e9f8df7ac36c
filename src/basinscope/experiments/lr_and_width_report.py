"""The lr-and-width study's report: figures (PNG/PDF) and one self-contained HTML file.

Everything is drawn from the results dict and the results stored in the stage folders it
names (the Trackings, surfaces and paths, reopened with :func:`basinscope.store.load`);
nothing is computed again.
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

__all__ = ["write_report"]

RUNS = ("small", "large", "annealed")
COLORS = {"small": "#4c72b0", "large": "#c44e52", "annealed": "#55a868"}
LABELS = {"small": "small LR", "large": "large LR", "annealed": "large LR, annealed"}


def _load(folders: dict[str, Path], name: str):
    from basinscope.store import load

    return load(folders[name])


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    stages = stage_folders(run_dir, results)
    cfg, pol, sol = results["config"], results["policies"], results["solutions"]
    tracks = {r: _load(stages, results["tracking"][r]) for r in RUNS}
    surfaces = {r: _load(stages, sol[r]["stages"]["surface"]).dataset for r in RUNS}
    lines = {(p["a"], p["b"]): _load(stages, p["stage"]).dataset for p in results["paths"]}
    anneal = results["anneal_step"]
    bn = "BatchNorm: " + pol["batchnorm"] + "."
    defs = results["definitions"]
    grid, span = cfg["grid"], cfg["span"]
    runs = (
        f"small LR: {cfg['small_lr']:g} throughout; large LR: {cfg['large_lr']:g} throughout; "
        f"annealed: {cfg['large_lr']:g}, then {cfg['small_lr']:g} from step {anneal} (grey line)"
    )

    rep = Report(
        "Learning rate and the width of minima (Li, Wei & Ma 2019, on patch-augmented digits)",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"3 runs · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "Li, Wei & Ma (2019) argue that a small learning rate first memorises patterns that "
        "are hard to fit but easy to generalize, a large learning rate learns the easy-to-fit "
        "ones and cannot fit the others, and a large learning rate annealed to a small one "
        "learns both; and that a larger learning rate ends in a wider minimum. Their test adds "
        "to each image a small class-indicating patch. This study repeats it at toy scale. "
        f"Data: {pol['data']}. Model: {cfg['model']} with BatchNorm. Training: "
        f"{pol['training']}.\n\n"
        "The patch-only evaluation images are the patch of each test label on a blank image: "
        "all images of a class are identical, so that accuracy moves in steps of about 1/10. "
        f"A run is said to have learned a pattern once its accuracy on it reaches "
        f"{cfg['learned']:g}."
    )

    rep.heading("Solutions")
    rep.table(
        [
            {
                "run": LABELS[r],
                "clean test acc.": sol[r]["test_accuracy"],
                "patch-only acc.": sol[r]["patch_only_accuracy"],
                "train acc.": sol[r]["train_accuracy"],
                "train acc. patch-only group": sol[r].get("train_patch_only_accuracy"),
                "train acc. image-only group": sol[r].get("train_image_only_accuracy"),
                "‖θ‖₂": sol[r]["weight_norm"],
                "λmax": sol[r]["lambda_max"],
                "filter-normalized sharpness": sol[r]["sharpness_filter_normalized"],
                "adaptive sharpness": sol[r]["sharpness_adaptive"],
            }
            for r in RUNS
        ],
        f"At the end of each run ({runs}). Clean test acc.: {defs['test_accuracy']}. "
        f"Patch-only acc.: {defs['patch_only_accuracy']}. Train acc. of a group: accuracy on "
        "the training images of that group. ‖θ‖₂: norm of all parameters. λmax: "
        f"{defs['lambda_max']} ({pol['curvature_data']}; tolerance {cfg['hessian_tol']:g}). "
        f"Filter-normalized sharpness: {defs['sharpness_filter_normalized']}, with "
        f"{cfg['sharpness_directions']} directions and α = {cfg['sharpness_alpha']:g}. "
        f"Adaptive sharpness: {defs['sharpness_adaptive']}, with ρ = {cfg['adaptive_rho']:g} "
        f"and {cfg['ascent_steps']} ascent steps. λmax is not invariant to rescaling the "
        f"BatchNorm-fed layers; both sharpness measures are. {bn}",
    )

    rep.heading("Which patterns each run learns, over training")
    rep.figure(
        _accuracy_figure(tracks, anneal),
        "Accuracy against the training step, every "
        f"{cfg['track_every']} steps. Top left: on the 450 clean test digits (no patch); top "
        "right: on the patch-only test images (each test label's patch on a blank image; all "
        "images of a class are identical, so it moves in steps of about 1/10). Bottom: on "
        "the training images that have only the patch, and only the image. Runs: "
        f"{runs}. Until annealing the annealed run is the large-LR run (the same steps and "
        "seeds), so its line covers the large-LR one there. Accuracies with the BatchNorm "
        f"running statistics of the step. {bn}",
        save_as=figs / "accuracy_over_training",
    )

    rep.heading("Tracked landscape quantities")
    rep.figure(
        _tracked_figure(tracks, anneal),
        "Against the training step, for the three runs "
        f"({runs}). Weight norm: {defs['tracked_weight_norm']}. Effective LR: "
        f"{defs['tracked_effective_lr']}, one line per layer (solid: the first, dashed: "
        f"the others), log scale. λmax: {defs['tracked_hessian']} "
        f"(curvature subset: {pol['curvature_data']}). Filter-normalized sharpness: "
        f"{defs['tracked_sharpness']} ({cfg['sharpness_directions']} directions, α = "
        f"{cfg['sharpness_alpha']:g}). Noise scale: {defs['tracked_noise_scale']}, log scale. "
        f"Training loss: {defs['tracked_loss']} (patch-augmented training images). Until "
        f"annealing the annealed run's lines cover the large-LR run's (the same run). {bn}",
        save_as=figs / "tracked",
    )
    from basinscope.plotting import plot

    for r in RUNS:
        fig, _ = plot(tracks[r])
        rep.figure(
            fig,
            f"Everything the Tracker recorded for the {LABELS[r]} run, against the step: loss "
            "and error on the patch-augmented training images (train, solid) and the clean test "
            "digits (test, dashed), with the errors on the patch-only test images and on each "
            "training group (dotted); the weight norm per module and in total; the effective LR "
            f"η/‖w_l‖² of each BatchNorm-fed layer; the learning rate; λmax; the "
            f"filter-normalized sharpness; the gradient noise scale. Definitions as above. {bn}",
            save_as=figs / f"tracking_{r}",
        )

    rep.heading("The paths between the solutions")
    rep.figure(
        _paths_figure(lines),
        "The line (1 − α)θ_a + αθ_b between two solutions (α = 0: the first, 1: the second), "
        f"{cfg['path_points']} points over [{cfg['path_range'][0]:g}, {cfg['path_range'][1]:g}]. "
        "Top: mean cross-entropy on the patch-augmented training images (solid) and the clean "
        "test digits (dashed), log scale. Bottom: accuracy on the training images, the clean "
        "test digits and the patch-only test images. BatchNorm statistics recomputed from the "
        f"training images at every point (10 batches). {bn}",
        save_as=figs / "paths",
    )
    rep.table(
        [
            {
                "path": f"{LABELS[p['a']]} → {LABELS[p['b']]}",
                "train-loss barrier": p["train_loss_barrier"],
                "test-loss barrier": p["test_loss_barrier"],
                "lowest clean test acc. on [0, 1]": p["min_test_accuracy"],
            }
            for p in results["paths"]
        ],
        f"Barrier: {defs['train_loss_barrier']}. Test-loss barrier: the same on the clean test "
        f"digits. {bn}",
    )

    rep.heading("Loss surfaces around the solutions")
    rep.figure(
        _surfaces_figure(surfaces),
        f"Training loss f(α, β) = L(θ* + αδ + βη) (mean cross-entropy on "
        f"{pol['surface_data']}) on a {grid}x{grid} grid over [−{span:g}, {span:g}]², centred "
        f"at each solution θ* (+), on ONE log colour scale shared by the three panels. δ, η: "
        f"{pol['directions']} (seed {cfg['direction_seed']}). {bn}",
        save_as=figs / "surfaces",
    )
    rep.figure(
        _sharpness_figure(sol),
        "Curvature and sharpness at each solution. Left: λmax of the Hessian "
        f"({defs['lambda_max']}). Middle: filter-normalized sharpness "
        f"({defs['sharpness_filter_normalized']}; bars: ± one standard error over the "
        f"{cfg['sharpness_directions']} directions). Right: adaptive sharpness "
        f"({defs['sharpness_adaptive']}). Only the last two are invariant to rescaling "
        f"the BatchNorm-fed layers. {bn}",
        save_as=figs / "sharpness",
    )

    rep.heading("What the numbers show")
    rep.text(_findings_text(results))

    from basinscope.plotting import surface_figure

    for r in RUNS:
        rep.plotly(
            surface_figure(surfaces[r], "train_loss", log=True, title=LABELS[r]),
            f"Interactive 3D view: log10 training loss around the {LABELS[r]} solution "
            f"({pol['surface_data']}, {grid}x{grid} grid, filter-normalized random directions, "
            f"the same for the three solutions). {bn}",
        )

    rep.heading("How these numbers were made")
    rep.text(
        "Each training (with its tracking), each solution's measurements, each path and each "
        "surface is a stage stored in its own folder, named by a hash of its settings (which "
        "include the folders of the stages it depends on), so running the study again reuses "
        "them and a changed setting recomputes only what depends on it. `basinscope.load` on "
        "a training stage's folder returns its Tracking (`basinscope plot` draws it). "
        "result.json next to this report holds every number shown, with its definition. "
        "Precision and device: " + pol["precision"] + "."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _mark_anneal(ax, anneal: int) -> None:
    ax.axvline(anneal, color="0.6", lw=1.0, zorder=0)


def _accuracy_figure(tracks, anneal: int):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    panels = [
        ("test_error", "accuracy, clean test digits"),
        ("patch_only_test_error", "accuracy, patch-only test images"),
        ("train_patch_only_error", "accuracy, training group: patch only"),
        ("train_image_only_error", "accuracy, training group: image only"),
    ]
    fig = new_figure((9.6, 6.4))
    axes = fig.subplots(2, 2).ravel()
    for ax, (var, label) in zip(axes, panels, strict=True):
        for r in RUNS:
            ds = tracks[r].dataset
            if var in ds:
                ax.plot(
                    ds["step"].values,
                    1 - ds[var].values,
                    "o-",
                    ms=3,
                    lw=1.4,
                    color=COLORS[r],
                    label=LABELS[r],
                )
        _mark_anneal(ax, anneal)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step", fontsize=LABEL_SIZE)
        ax.set_ylabel(label, fontsize=LABEL_SIZE)
        ax.grid(alpha=0.25)
        style_axes(ax)
    axes[0].legend(fontsize=LEGEND_SIZE)
    return fig


def _tracked_figure(tracks, anneal: int):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    panels = [
        ("train_loss", "training loss", True),
        ("weight_norm", "weight norm ‖θ‖₂", False),
        ("effective_lr", "effective LR η / ‖w_l‖²", True),
        ("lambda_max", "λmax of the Hessian", False),
        ("sharpness", "filter-normalized sharpness", False),
        ("noise_scale", "gradient noise scale B_simple", True),
    ]
    fig = new_figure((11.4, 6.4))
    axes = fig.subplots(2, 3).ravel()
    for ax, (var, label, log) in zip(axes, panels, strict=True):
        for r in RUNS:
            ds = tracks[r].dataset
            if var not in ds:
                continue
            steps = ds["step"].values
            if var == "effective_lr":
                da = ds[var].transpose("step", "layer")
                for i, layer in enumerate(ds["layer"].values):
                    ax.plot(
                        steps,
                        da.values[:, i],
                        "-" if i == 0 else "--",
                        lw=1.3,
                        color=COLORS[r],
                        label=f"{LABELS[r]}, {layer}",
                    )
            else:
                ax.plot(steps, ds[var].values, "o-", ms=3, lw=1.4, color=COLORS[r], label=LABELS[r])
        vals = np.concatenate([np.ravel(line.get_ydata()) for line in ax.get_lines()] or [[]])
        vals = vals[np.isfinite(vals)]
        if log and vals.size and (vals > 0).all():
            ax.set_yscale("log")
        _mark_anneal(ax, anneal)
        ax.set_xlabel("step", fontsize=LABEL_SIZE)
        ax.set_ylabel(label, fontsize=LABEL_SIZE)
        ax.grid(alpha=0.25)
        style_axes(ax)
    axes[1].legend(fontsize=LEGEND_SIZE)
    return fig


def _paths_figure(lines):
    from basinscope.plotting._common import LABEL_SIZE, LEGEND_SIZE, new_figure, style_axes

    fig = new_figure((11.4, 6.0))
    axes = fig.subplots(2, len(lines), squeeze=False)
    for j, ((a, b), ds) in enumerate(lines.items()):
        al = ds["alpha"].values
        top, bottom = axes[0, j], axes[1, j]
        top.plot(al, ds["train_loss"].values, "-", color="#4c72b0", label="train (patched)")
        top.plot(al, ds["test_loss"].values, "--", color="#dd8452", label="clean test")
        if (np.asarray(ds["train_loss"].values) > 0).all():
            top.set_yscale("log")
        for var, style, color, label in (
            ("train_accuracy", "-", "#4c72b0", "train (patched)"),
            ("test_accuracy", "--", "#dd8452", "clean test"),
            ("patch_only_accuracy", ":", "#55a868", "patch-only test"),
        ):
            if var in ds:
                bottom.plot(al, ds[var].values, style, color=color, lw=1.5, label=label)
        bottom.set_ylim(-0.02, 1.02)
        top.set_title(f"{LABELS[a]} (α=0) → {LABELS[b]} (α=1)", fontsize=LABEL_SIZE)
        for ax, ylabel in ((top, "loss"), (bottom, "accuracy")):
            for x in (0.0, 1.0):
                ax.axvline(x, color="0.75", lw=0.8, zorder=0)
            ax.set_xlabel("α", fontsize=LABEL_SIZE)
            ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
            ax.grid(alpha=0.25)
            style_axes(ax)
    axes[0, 0].legend(fontsize=LEGEND_SIZE)
    axes[1, 0].legend(fontsize=LEGEND_SIZE)
    return fig


def _surfaces_figure(surfaces):
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
    fig = new_figure((12.4, 4.0))
    axes = fig.subplots(1, len(surfaces), squeeze=False)[0]
    for ax, (r, ds) in zip(axes, surfaces.items(), strict=True):
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
            title=LABELS[r],
        )
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    sm = ScalarMappable(norm=LogNorm(lo, hi), cmap=colormaps["viridis"])
    fig.colorbar(sm, ax=axes, shrink=0.85, label="training loss (log scale, shared)")
    return fig


def _sharpness_figure(sol):
    from basinscope.plotting._common import LABEL_SIZE, new_figure, style_axes

    fig = new_figure((10.0, 3.4))
    axes = fig.subplots(1, 3)
    x = np.arange(len(RUNS))
    colors = [COLORS[r] for r in RUNS]
    for ax, key, label in zip(
        axes,
        ("lambda_max", "sharpness_filter_normalized", "sharpness_adaptive"),
        ("λmax of the Hessian", "filter-normalized sharpness", "adaptive sharpness"),
        strict=True,
    ):
        vals = [sol[r][key] for r in RUNS]
        err = None
        if key == "sharpness_filter_normalized":
            err = [sol[r].get("sharpness_filter_normalized_se") or 0.0 for r in RUNS]
        ax.bar(x, vals, yerr=err, color=colors, capsize=3)
        ax.set_xticks(x, [LABELS[r].replace(", ", ",\n") for r in RUNS])
        ax.set_ylabel(label, fontsize=LABEL_SIZE)
        ax.grid(alpha=0.25, axis="y")
        style_axes(ax)
    return fig


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _findings_text(results: dict[str, Any]) -> str:
    f, sol, cfg = results["findings"], results["solutions"], results["config"]
    level = cfg["learned"]
    parts = []
    for r in RUNS:
        x = f[r]
        first_p = sol[r]["first_step_patch_only_learned"]
        first_t = sol[r]["first_step_test_learned"]
        parts.append(
            f"{LABELS[r]}: at the end, clean test accuracy {x['test_accuracy']:.3f} and "
            f"patch-only accuracy {x['patch_only_accuracy']:.2f}; at step {f['early_step']} "
            f"(before annealing) {x['early_test_accuracy']:.3f} and "
            f"{x['early_patch_only_accuracy']:.2f}. Accuracy {level:g} was first reached on the "
            f"patch-only images at step {_fmt(first_p, 'd')}, on the clean digits at step "
            f"{_fmt(first_t, 'd')} (— never). Final weight norm {x['final_weight_norm']:.3g}, "
            f"mean effective LR of the BatchNorm-fed layers {_fmt(x['final_effective_lr'])}."
        )
    lf = f["large_flatter"]
    af = f["annealed_flatter_than_small"]
    s, lg, an = sol["small"], sol["large"], sol["annealed"]
    parts.append(
        "Is the large-LR solution flatter than the small-LR one? By the filter-normalized "
        f"sharpness {_yes(lf['sharpness_filter_normalized'])} "
        f"({lg['sharpness_filter_normalized']:.3g} vs {s['sharpness_filter_normalized']:.3g}), "
        f"by the adaptive sharpness {_yes(lf['sharpness_adaptive'])} "
        f"({lg['sharpness_adaptive']:.3g} vs {s['sharpness_adaptive']:.3g}), by λmax "
        f"{_yes(lf['lambda_max'])} ({lg['lambda_max']:.3g} vs {s['lambda_max']:.3g}; λmax is "
        "not scale-invariant, the two sharpness measures are). The annealed solution is "
        f"flatter than the small-LR one by the filter-normalized sharpness "
        f"{_yes(af['sharpness_filter_normalized'])} ({an['sharpness_filter_normalized']:.3g}), "
        f"by the adaptive sharpness {_yes(af['sharpness_adaptive'])} "
        f"({an['sharpness_adaptive']:.3g}), by λmax {_yes(af['lambda_max'])} "
        f"({an['lambda_max']:.3g})."
    )
    parts.append(
        f"Does the small-LR run learn the patch earlier than the large-LR run (reach {level:g} "
        f"on the patch-only images at an earlier tracked step)? {_yes(f['small_patch_earlier'])}. "
        f"Does the annealed run learn both patterns (accuracy ≥ {level:g} on the clean digits "
        f"and on the patch-only images at the end)? {_yes(f['annealed_learned_both'])}. "
        "Li, Wei & Ma's picture is: the small LR learns the patch early, the large LR does not "
        "learn it until annealing, the annealed run learns both, and the large-LR solutions "
        "are flatter. On 8x8 digits with a noiseless patch the patch can be learned at both "
        "learning rates, so the comparison depends on the patch's scale and the learning "
        "rates (settings patch_scale, small_lr, large_lr); read the answers above with the "
        "curves, not as a verdict on the paper."
    )
    barriers = ", ".join(
        f"{LABELS[p['a']]} → {LABELS[p['b']]} {p['train_loss_barrier']:.3g}"
        for p in results["paths"]
    )
    parts.append(f"Train-loss barriers on the paths between the solutions: {barriers}.")
    return "\n\n".join(parts)
