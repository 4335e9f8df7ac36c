"""The report of the flatness-vs-batch-size study, drawn only from stored results.

Reads ``results`` (the dict that :func:`basinscope.experiments.batch_size.run` returned)
and the stage folders it names (training histories, the interpolation line and the two
surfaces, reopened with :func:`basinscope.store.load`); computes nothing. :func:`definitions`
words what each number is; ``run`` stores its output in ``results["definitions"]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import basinscope
from basinscope.experiments.stages import stages_table
from basinscope.report import Report
from basinscope.store import load, paths
from basinscope.store.atomic import atomic_write_text

__all__ = ["definitions", "write_report"]

ROWS = (  # (key in results["solutions"], label in the table)
    ("batch_size", "batch size B"),
    ("epochs", "epochs"),
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
    ("train_accuracy", "train accuracy"),
    ("test_accuracy", "test accuracy"),
    ("accuracy_gap", "train − test accuracy"),
    ("param_norm", "‖θ‖₂"),
    ("distance_from_init", "‖θ − θ₀‖₂"),
    ("lambda_max", "λ_max(H)"),
    ("trace", "tr(H)"),
    ("sharpness_keskar", "Keskar ε-sharpness (%)"),
    ("sharpness_worst_l2", "worst-case ℓ2 sharpness"),
    ("sharpness_adaptive", "adaptive sharpness"),
    ("sharpness_filter_normalized", "filter-normalized sharpness"),
)
COLORS = {"small": "tab:blue", "large": "tab:red"}
LABEL = {"small": "small batch", "large": "large batch"}
RATIO_LABELS = (
    ("lambda_max", "λ_max"),
    ("trace", "trace"),
    ("sharpness_keskar", "Keskar ε-sharpness"),
    ("sharpness_worst_l2", "ℓ2 worst case"),
    ("sharpness_adaptive", "adaptive"),
    ("sharpness_filter_normalized", "filter-normalized"),
)
NO_RATIO = ("batch_size", "train_accuracy", "test_accuracy", "accuracy_gap")
PLUS_MINUS = {
    "trace": "trace_ci_halfwidth",
    "sharpness_filter_normalized": "sharpness_filter_normalized_se",
}


def definitions(cfg: Any, n_hess: int, bn: str) -> dict[str, str]:
    """What each number of ``results["solutions"]`` is (formula, split, points, normalization)."""
    L = "L = mean cross-entropy over the examples, model in eval mode"
    hess = (
        f"the first {n_hess} train digits" if cfg.hessian_subset else f"all {n_hess} train digits"
    )
    train = "train split (1347 digits)"
    asc = (
        f"projected gradient ascent on the full-data loss, {cfg.ascent_steps} steps x "
        f"{cfg.ascent_restarts} restarts (a lower bound on the maximum)"
    )
    return {
        "batch_size": "examples per SGD step (a batch >= 1347 is full-batch gradient descent)",
        "epochs": "passes over the train split: steps x min(batch, 1347) / 1347",
        "train_loss": f"{L}, all of the {train}",
        "train_accuracy": f"fraction correct on the {train}",
        "test_loss": f"{L}, all of the test split (450 digits)",
        "test_accuracy": "fraction correct on the test split (450 digits)",
        "accuracy_gap": "train accuracy - test accuracy",
        "param_norm": "||theta||_2 over all parameters (weights and biases)",
        "distance_from_init": "||theta - theta_0||_2, theta_0 the common initialization",
        "lambda_max": f"largest eigenvalue of the Hessian of L on {hess} "
        f"(Lanczos with full reorthogonalization, relative residual <= {cfg.lanczos_tol:g}; float64)",
        "trace": f"tr(H) of the same Hessian by Hutchinson's estimator with Rademacher probes "
        f"(stops at 95% CI half-width <= {cfg.trace_rtol:g} x estimate or {cfg.trace_max_probes} probes)",
        "trace_ci_halfwidth": "half-width of the 95% confidence interval of the trace",
        "sharpness_keskar": f"Keskar et al. 2017 eq. 3: 100 x max_(|delta_i| <= eps (|theta_i| + 1)) "
        f"[L(theta + delta) - L(theta)] / (1 + L(theta)), eps = {cfg.keskar_eps:g}, on the {train}; {asc}",
        "sharpness_worst_l2": f"max_(||delta||_2 <= {cfg.l2_rho:g}) L(theta + delta) - L(theta) on the "
        f"{train} (not normalized: depends on the scale of the weights); {asc}",
        "sharpness_adaptive": f"adaptive worst case (Kwon et al. 2021; Andriushchenko et al. 2023, eta = 0): "
        f"max_(||delta / |theta| ||_2 <= {cfg.adaptive_rho:g}) L(theta + delta) - L(theta) on the {train} "
        f"(invariant to the rescaling symmetries of ReLU layers); {asc}",
        "sharpness_filter_normalized": f"Li et al. 2018: mean over {cfg.fn_directions} Gaussian directions d_i "
        f"of L(theta + {cfg.fn_alpha:g} d_i) - L(theta), d_i filter-normalized (each filter/row scaled to "
        f"the norm of theta's filter; biases zeroed), on the {train}",
        "sharpness_filter_normalized_se": "standard error of the filter-normalized sharpness over directions",
        "bn_policy": bn,
        "precision": f"losses, accuracies, the line, the surfaces and the sharpness measures in "
        f"{cfg.dtype} on {cfg.device}; Hessian numbers in float64 on {cfg.device}; training in "
        f"float32 on {cfg.device}",
    }


def _stage(run_dir: Path, name: str) -> Path:
    """A stage folder: ``<root>/stages/<name>`` (:data:`~basinscope.store.paths.STAGES`) next to the run folder."""
    return Path(run_dir).parent / paths.STAGES / name


def _landscape(run_dir: Path, name: str):
    return load(_stage(run_dir, name)).dataset


def _fmt_pm(v: float, pm: float | None) -> str:
    return f"{v:.4g} ± {pm:.2g}" if pm is not None else f"{v:.4g}"


def _table(results: dict[str, Any]) -> list[dict[str, Any]]:
    sol, defs = results["solutions"], results["definitions"]
    rows = []
    for key, label in ROWS:
        s, lg = sol["small"][key], sol["large"][key]
        pm = PLUS_MINUS.get(key)
        cells = {
            f"{LABEL[k]} (B={sol[k]['batch_size']})": _fmt_pm(sol[k][key], sol[k][pm])
            if pm
            else sol[k][key]
            for k in ("small", "large")
        }
        ratio = lg / s if key not in NO_RATIO and s else ""
        rows.append({"quantity": label, **cells, "large / small": ratio, "definition": defs[key]})
    return rows


def _training_figure(histories: dict[str, dict], batches: dict[str, int]):
    from basinscope.plotting._common import new_figure

    fig = new_figure((6.4, 3.8))
    ax = fig.add_subplot()
    for key, h in histories.items():
        loss = np.asarray(h["loss"], dtype=float)
        steps = np.asarray(h["step"], dtype=float)
        w = max(1, min(len(loss) // 20, 1347 // max(batches[key], 1)))  # about one epoch
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps, loss, color=COLORS[key], alpha=0.2, linewidth=0.6)
        ax.plot(steps[w - 1 :], smooth, color=COLORS[key], label=f"B={batches[key]}")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("minibatch training loss (log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def _slices_figure(results: dict[str, Any]):
    from basinscope.plotting._common import new_figure

    fig = new_figure((10.5, 3.9))
    ax_loss, ax_acc = fig.subplots(1, 2)
    sol = results["solutions"]
    for key, s in results["surfaces"].items():
        a = np.asarray(s["slice_alpha"])
        for split, style in (("train", "-"), ("test", "--")):
            lab = f"B={sol[key]['batch_size']}, {split}"
            ax_loss.plot(a, s[f"slice_{split}_loss"], style, color=COLORS[key], label=lab)
            ax_acc.plot(a, s[f"slice_{split}_accuracy"], style, color=COLORS[key], label=lab)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (log scale)")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel(
            r"step $\alpha$ along $\delta_1$ (filter-normalized, $\theta^* + \alpha\delta_1$)"
        )
        ax.axvline(0.0, color="0.5", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    ax_acc.legend(fontsize=8)
    return fig


def _summary(results: dict[str, Any]) -> str:
    """What the numbers say, worded from the numbers (nothing here is assumed)."""
    r, sol = results["ratios_large_over_small"], results["solutions"]
    raw = [r[k] for k in ("lambda_max", "trace", "sharpness_worst_l2") if k in r]
    fair = [r[k] for k in ("sharpness_adaptive", "sharpness_filter_normalized") if k in r]
    ratios = "; ".join(f"{label} {r[k]:.2g}x" for k, label in RATIO_LABELS if k in r)
    if not raw or not fair:
        verdict = "Some measures are zero for the small batch, so not every ratio is defined."
    elif max(fair) < 1.25 and min(raw) > 1.5:
        verdict = (
            "The raw measures call the large-batch minimum sharper, but the scale-invariant ones "
            "barely differ: most of the raw difference comes from the different weight scales."
        )
    elif min(fair) > 1 and max(fair) < min(raw):
        verdict = (
            "The scale-invariant measures give smaller ratios than the raw ones, so part of the raw "
            "difference reflects the different weight scales, but the large-batch minimum stays "
            "sharper by them too."
        )
    elif min(fair + raw) > 1:
        verdict = "The large-batch minimum is sharper by every measure."
    else:
        verdict = "The measures disagree on which minimum is sharper."
    acc = {k: sol[k]["test_accuracy"] for k in ("small", "large")}
    norms = {k: sol[k]["param_norm"] for k in ("small", "large")}
    return (
        f"Large batch / small batch in this run: {ratios}. {verdict} Test accuracy: "
        f"{acc['small']:.3f} (small batch) vs. {acc['large']:.3f} (large batch); ‖θ‖₂: "
        f"{norms['small']:.3g} vs. {norms['large']:.3g}. Raw measures (λ_max, the trace, the ℓ2 "
        "worst case, the interpolation line) change when a ReLU layer's weights are scaled up and the "
        "next layer's down, which leaves the network's function unchanged; the adaptive sharpness "
        "(η = 0) is invariant to such rescalings and the filter-normalized one to rescaling whole "
        "layers or filters (Li et al. 2018's argument for comparing solutions with normalized directions)."
    )


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/figures/*.png|pdf`` from stored results."""
    from basinscope.plotting import line_figure, plot_line, plot_side_by_side, surface_figure

    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, setup, sol = results["config"], results["setup"], results["solutions"]
    bs = {k: sol[k]["batch_size"] for k in ("small", "large")}
    bn = setup["bn_policy"]
    model = setup["description"]
    rep = Report(
        "Flatness vs. batch size: small-batch and large-batch minima",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · {model}, "
        f"{setup['parameters']} parameters · B = {bs['small']} vs. {bs['large']} · "
        f"this run took {results.get('seconds', '?')} s",
        formats=tuple(results["config"].get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        f"One {model} ({setup['parameters']} parameters) on scikit-learn's 8x8 digits is trained twice "
        f"from the same initialization, with batch size {bs['small']} and with batch size {bs['large']} "
        f"({setup['same']}; {sol['small']['epochs']:.3g} vs. {sol['large']['epochs']:.4g} epochs). "
        "Keskar et al. 2017 found large-batch minima sharper; Li et al. 2018 showed that such "
        "comparisons depend on the scale of the weights unless the directions are filter-normalized. "
        f"Both solutions are compared along the raw line through them, on filter-normalized random "
        f"planes, and by curvature and sharpness numbers. {bn[0].upper() + bn[1:]}."
    )
    rep.text(_summary(results))

    rep.heading("The two solutions")
    rep.table(
        _table(results),
        "Numbers per solution (± is the 95% CI half-width of the trace and the standard error of the "
        "filter-normalized sharpness). result.json holds every number with its settings.",
    )

    hist = {
        k: load(_stage(run_dir, results["stage_folders"][k]["train"])).history
        for k in ("small", "large")
    }
    rep.figure(
        _training_figure(hist, bs),
        f"Minibatch training loss at each of the {cfg['steps']} SGD steps of both runs (faint; "
        f"the loss of the batch used for that step, model in training mode), and its running mean "
        f"over about one epoch (solid); log scale. Schedule: {cfg['schedule']}, peak lr {cfg['lr']}, "
        f"momentum {cfg['momentum']}.",
        save_as=figs / "training",
    )

    rep.heading("The line through both solutions (raw, not normalized)")
    line = _landscape(run_dir, results["interpolation"]["stage"])
    n_line = len(line.alpha)
    fig, _ = plot_line(
        line,
        metrics=("loss", "accuracy"),
        splits=("train", "test"),
        log=True,
        title=f"θ_small (α=0, B={bs['small']}) → θ_large (α=1, B={bs['large']})",
    )
    rep.figure(
        fig,
        f"f(α) = L((1−α)θ_small + αθ_large) for α in [{cfg['line_range'][0]:g}, {cfg['line_range'][1]:g}] "
        f"({n_line} points; raw interpolation, no normalization): mean cross-entropy (left, blue, log scale) "
        f"and accuracy (right, red) on all {setup['train_examples']} train digits (solid) and all "
        f"{setup['test_examples']} test digits (dashed); {bn}. Keskar et al.'s Fig. 3: a loss that rises "
        "faster beyond α=1 than before α=0 suggests a sharper large-batch minimum, but the line's scale "
        f"is ‖θ_large − θ_small‖₂ = {results['distance_between_solutions']:.3g}, so the two sides are "
        "not measured in units of either solution's weights.",
        save_as=figs / "interpolation",
    )
    rep.plotly(
        line_figure(line, metrics=("loss", "accuracy"), splits=("train", "test"), log=True),
        "The same line, interactive.",
    )

    rep.heading("Filter-normalized surfaces around each solution")
    surf = {k: _landscape(run_dir, results["surfaces"][k]["stage"]) for k in ("small", "large")}
    grid = len(surf["small"].alpha)
    r = cfg["surface_range"]
    fig = plot_side_by_side(
        [surf["small"], surf["large"]],
        "train_loss",
        titles=[f"small batch (B={bs['small']})", f"large batch (B={bs['large']})"],
        kind="filled",
        log=True,
        suptitle="train loss, filter-normalized random plane (same colour scale)",
    )
    how = (
        f"f(α, β) = L(θ* + αδ₁ + βδ₂) on a {grid}x{grid} grid, α, β in [−{r:g}, {r:g}], around each "
        f"solution θ*; δ₁, δ₂ Gaussian directions (seeds {cfg['direction_seed']} and "
        f"{cfg['direction_seed'] + 1}, the same draws for both solutions), filter-normalized to each "
        "solution (every filter / output row scaled to the norm of θ*'s filter; biases zeroed), Li et "
        f"al. 2018; {bn}"
    )
    rep.figure(
        fig,
        f"Train loss (mean cross-entropy on all {setup['train_examples']} train digits, log colour "
        f"scale shared by both panels). {how}. With filter normalization a unit step changes every "
        "filter by its own norm in both solutions, so the widths of the two basins can be compared.",
        save_as=figs / "surfaces_filter_normalized",
    )
    rep.figure(
        _slices_figure(results),
        f"The β = 0 row of each surface above: the 1D filter-normalized line θ* + αδ₁ ({grid} points), "
        f"loss (left, log scale) and accuracy (right) on all train (solid) and test (dashed) digits, "
        f"small batch blue, large batch red (Li et al. 2018, Fig. 3); {bn}.",
        save_as=figs / "lines_filter_normalized",
    )
    for k in ("small", "large"):
        rep.plotly(
            surface_figure(surf[k], "train_loss", log=True, title=f"B={bs[k]}: train loss (log10)"),
            f"Interactive 3D view of the {LABEL[k]} surface (B={bs[k]}); log10 of the train loss.",
        )

    rep.heading("How these numbers were made")
    h = results["details"]["small"]["hessian"]["semantics"]
    probes = {k: results["details"][k]["hessian"]["trace"] for k in ("small", "large")}
    probes_text = "; ".join(
        f"{LABEL[k]}: {t['num_samples']} probes, stopping rule "
        + ("met" if t["converged"] else "not met (the CI shows the remaining uncertainty)")
        for k, t in probes.items()
    )
    rep.text(
        f"Hessian numbers use the mean cross-entropy on {setup['hessian_examples']} train examples in "
        f"{h.get('dtype', 'float64')} (Hessian-vector products by {h.get('method', '?')}; trace: "
        f"{probes_text}); the sharpness "
        f"measures use all {setup['train_examples']} train examples in {cfg.get('dtype', 'float32')}; "
        f"everything ran on {cfg.get('device', 'cpu')}; every loss is evaluated in "
        f"eval mode ({bn}). Each stage is stored in its own folder under stages/ (named by a hash of its "
        "settings, which include the folders of the stages it uses); running the study again reuses them."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")
