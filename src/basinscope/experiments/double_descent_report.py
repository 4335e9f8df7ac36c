"""The double-descent study's report: figures (PNG/PDF) and one self-contained HTML file.

Everything is drawn from the results dict (every curve is in it); nothing is computed again.
"""

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

NOISE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
MARKS = {  # the phase boundaries drawn on every epoch-wise panel
    "test_loss_peak_step": ("#d62728", "-", "test-loss peak"),
    "weight_norm_max_step": ("#1f77b4", "--", "weight-norm max"),
    "sharpness_max_step": ("#2ca02c", ":", "sharpness max (width min)"),
    "interpolation_step": ("#7f7f7f", "-.", "train error reaches tolerance"),
}


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _yes(v: Any) -> str:
    return "—" if v is None else ("yes" if v else "no")


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, pol, defs = results["config"], results["policies"], results["definitions"]
    curves = results["modelwise"]["curves"]
    runs = results["epochwise"]["runs"]
    tol = cfg["interpolation_tol"]
    bn = f"BatchNorm policy: {pol['batchnorm']}."

    rep = Report(
        "Double descent: model-wise, epoch-wise, and the memorisation-consolidation check",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{len(results['modelwise']['rows'])} sweep trainings, {len(runs)} tracked runs · "
        f"{results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "Deep double descent (Nakkiran et al. 2020): with label noise, the test error of models "
        "trained to completion falls with their size, peaks near the interpolation threshold "
        "(the smallest model that fits every training label, the wrong ones included) and falls "
        "again beyond it; over training, the test loss of a model near the threshold peaks "
        "about when it reaches zero training error. The talk this study follows (Vetrov, "
        "'Loss landscape in deep neural networks') explains the epoch-wise peak in BatchNorm "
        "networks, whose hidden layers are scale-invariant, by two phases: memorisation (the "
        "weight norm grows, the minimum found is narrow, the test loss peaks), then "
        "consolidation (the weight norm drops under weight decay, the minimum widens, the test "
        "loss improves). Here it is tested at toy scale, on numbers computed from the runs.\n\n"
        f"Data: {pol['data']}. Training: {pol['training']}. {bn}"
    )

    rep.heading("What the numbers show")
    rep.text("\n\n".join(results["conclusions"]))

    rep.heading("Model-wise: a width sweep through the interpolation threshold")
    rep.figure(
        _modelwise(curves, tol),
        "Test error, test loss, train error and memorised fraction at the end of training "
        f"({cfg['steps']} steps) against the hidden width (log scale), mean over {cfg['seeds']} "
        f"initialization(s). Colour: label-noise rate; solid: no BatchNorm, dashed: BatchNorm. "
        f"Test error and loss: {defs['test_error']}; {defs['test_loss']}. Train error: "
        f"{defs['train_error']}. Memorised: {defs['memorised']}. Vertical lines (matching "
        f"colour and style): the interpolation threshold, {defs['interpolation_threshold']} "
        f"(interpolation_tol = {tol:g}). {bn}",
        save_as=figs / "modelwise",
    )
    rep.table(
        [
            {
                "setting": c["label"],
                "threshold width": _fmt(c["interpolation_threshold"], "d"),
                "test error at threshold": _fmt(c["test_error_at_threshold"]),
                "test-error peak width": _fmt(c["test_error_peak_width"], "d"),
                "peak score": c["test_error_peak_score"],
                "double descent (error)": _yes(c["test_error_double_descent"]),
                "test-loss peak width": _fmt(c["test_loss_peak_width"], "d"),
                "double descent (loss)": _yes(c["test_loss_double_descent"]),
                "test error, widest": c["test_error"][-1],
            }
            for c in curves
        ],
        f"Per sweep setting. Peak: {defs['modelwise_peak']} (dd_margin = {cfg['dd_margin']:g}, "
        "in error or in nats of loss). Threshold: as in the figure.",
    )

    rep.heading("Epoch-wise: long runs at the threshold width, tracked")
    rep.text(
        f"Each run trains {cfg['epoch_steps']} steps and is measured at "
        f"{len(results['epochwise']['tracked_steps'])} log-spaced steps. "
        f"Sharpness: {pol['sharpness']}. lambda_max: {defs['lambda_max']}. Effective "
        f"learning rate: {defs['effective_lr']}. Widths: "
        + "; ".join(f"{r['label']}: {r['width_source']}" for r in runs)
        + "."
    )
    for i, r in enumerate(runs):
        rep.figure(
            _epochwise(r, tol),
            f"{r['label']}: (a) train error (noisy labels), train error against the true labels "
            "and test error; (b) train and test loss (mean cross-entropy); (c) weight norm "
            f"||theta||_2 and, with BatchNorm, {defs['scale_invariant_norm']}; (d) sharpness "
            f"({cfg['sharpness']}, scale-invariant; effective width = 1/sharpness); (e) "
            "lambda_max (not scale-invariant); (f) effective learning rate lr/||w_l||^2 of the "
            "scale-invariant layers (BatchNorm) or the memorised fraction of the flipped labels. "
            "Vertical lines: the test-loss peak (red, "
            f"{defs['test_loss_peak']}), the weight-norm maximum (blue dashed), the sharpness "
            "maximum = width minimum (green dotted), the first step with train error <= "
            f"{tol:g} (grey). Log step axis. {bn}",
            save_as=figs / f"epochwise_{i}",
        )
    rep.figure(
        _overlay(runs),
        "Test loss, weight norm and sharpness of each epoch-wise run on one axis, each rescaled "
        "to [0, 1] by its own minimum and maximum over the run (shape only): memorisation "
        "followed by consolidation would show the three rising together to a common maximum "
        "and falling after it. Red line: the test-loss peak. Sharpness: "
        f"{cfg['sharpness']} (scale-invariant). {bn}",
        save_as=figs / "check_overlay",
    )
    rep.table(
        [
            {
                "run": r["label"],
                "first descent ends": _fmt(r["check"]["first_descent_end_step"], "d"),
                "test-loss peak": _fmt(r["check"]["test_loss_peak_step"], "d"),
                "train err <= tol": _fmt(r["check"]["interpolation_step"], "d"),
                "|θ| max": _fmt(r["check"]["weight_norm_max_step"], "d"),
                "sharpness max": _fmt(r["check"]["sharpness_max_step"], "d"),
                "λmax max": _fmt(r["check"]["lambda_max_max_step"], "d"),
                "|θ| coincides": _yes(r["check"]["weight_norm_coincides"]),
                "sharpness coincides": _yes(r["check"]["sharpness_coincides"]),
                "test-loss fall after peak": _fmt(r["check"].get("test_loss_fall_after_peak")),
                "|θ| fall": _fmt(r["check"]["weight_norm_fall_after_max"]),
                "sharpness fall": _fmt(r["check"]["sharpness_fall_after_max"]),
                "consolidation": _yes(r["check"]["consolidation"]),
                "hypothesis supported": _yes(r["check"]["supported"]),
            }
            for r in runs
        ],
        "Phase boundaries (steps) and the memorisation-consolidation check. "
        f"{defs['test_loss_peak']}; first descent: {defs['first_descent_end']}; "
        f"{defs['coincide']} (coincidence_steps = {cfg['coincidence_steps']}); falls: "
        f"{defs['fall_after_peak']}; consolidation: all three fall by >= "
        f"{cfg['consolidation_drop']:g}; supported: both maxima coincide with the peak and "
        "consolidation is seen.",
    )

    rep.heading("How these numbers were made")
    rep.text(
        "Each training is a stage stored in its own folder, named by a hash of its settings "
        "(model, width, BatchNorm, initialization, data, noise rate and seed, training recipe, "
        "tracked steps and measures), so running the study again reuses it and a changed "
        "setting recomputes only what depends on it. An epoch-wise stage's result is the "
        "Tracking itself (basinscope.load(stage folder)), with the trained weights beside it. "
        "result.json next to this report holds every number shown, with its definition. "
        f"Precision and device: {pol['precision']}."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _modelwise(curves, tol):
    from basinscope.plotting._common import new_figure

    rates = sorted({c["noise_rate"] for c in curves})
    color = {r: NOISE_COLORS[i % len(NOISE_COLORS)] for i, r in enumerate(rates)}
    fig = new_figure((11.0, 7.2))
    axes = fig.subplots(2, 2).ravel()
    keys = ("test_error", "test_loss", "train_error", "memorised")
    labels = ("test error", "test loss", "train error (noisy labels)", "memorised fraction")
    for c in curves:
        style = "--" if c["batchnorm"] else "-"
        w = np.asarray(c["widths"])
        for ax, key in zip(axes, keys, strict=True):
            y = _arr(c[key])
            if np.isfinite(y).any():
                ax.plot(
                    w, y, style, marker="o", ms=3.5, color=color[c["noise_rate"]], label=c["label"]
                )
            if c["interpolation_threshold"] is not None:
                ax.axvline(
                    c["interpolation_threshold"],
                    color=color[c["noise_rate"]],
                    ls=style,
                    lw=0.9,
                    alpha=0.6,
                )
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].axhline(tol, color="k", lw=0.7, ls=":")
    axes[0].legend(fontsize=8)
    return fig


def _marks(ax, check) -> None:
    for key, (col, ls, _) in MARKS.items():
        s = check.get(key)
        if s is not None:
            ax.axvline(s, color=col, ls=ls, lw=1.0, alpha=0.8)


def _epochwise(r, tol):
    from matplotlib.lines import Line2D

    from basinscope.plotting._common import new_figure

    s = np.asarray(r["steps"])
    fig = new_figure((12.0, 6.6))
    ax = fig.subplots(2, 3).ravel()
    ax[0].plot(s, _arr(r["train_error"]), "-o", ms=3, label="train (noisy labels)")
    ax[0].plot(s, _arr(r["clean_train_error"]), "-", label="train (true labels)")
    ax[0].plot(s, _arr(r["test_error"]), "-o", ms=3, label="test")
    ax[0].axhline(tol, color="k", lw=0.7, ls=":")
    ax[0].set_ylabel("error")
    ax[1].plot(s, _arr(r["train_loss"]), "-o", ms=3, label="train")
    ax[1].plot(s, _arr(r["test_loss"]), "-o", ms=3, label="test")
    ax[1].set_ylabel("loss (cross-entropy)")
    ax[2].plot(s, _arr(r["weight_norm"]), "-o", ms=3, label="||θ|| (all)")
    if r.get("scale_invariant_norm"):
        ax[2].plot(s, _arr(r["scale_invariant_norm"]), "-", label="scale-invariant layers")
    ax[2].set_ylabel("weight norm")
    ax[3].plot(s, _arr(r["sharpness"]), "-o", ms=3, color="#2ca02c")
    ax[3].set_ylabel("sharpness (scale-invariant)")
    ax[4].plot(s, _arr(r["lambda_max"]), "-o", ms=3, color="#8c564b")
    ax[4].set_ylabel("λmax (not scale-invariant)")
    if r["effective_lr"]:
        for name, v in r["effective_lr"].items():
            ax[5].plot(s, _arr(v), "-o", ms=3, label=name)
        ax[5].set_ylabel("effective lr = lr/||w||²")
        ax[5].set_yscale("log")
    else:
        ax[5].plot(s, _arr(r["memorised"]), "-o", ms=3, color="#9467bd")
        ax[5].set_ylabel("memorised fraction of flipped labels")
    for i, a in enumerate(ax):
        a.set_xscale("log")
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        _marks(a, r["check"])
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7.5)
        a.set_title(f"({'abcdef'[i]})", loc="left", fontsize=9)
    handles = [Line2D([], [], color=c, ls=ls) for c, ls, _ in MARKS.values()]
    fig.legend(
        handles, [t for *_, t in MARKS.values()], loc="outside lower center", ncols=4, fontsize=8
    )
    fig.suptitle(r["label"], fontsize=10)
    return fig


def _unit(v: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(v), np.nanmax(v)
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def _overlay(runs):
    from basinscope.plotting._common import new_figure

    n = len(runs)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig = new_figure((5.4 * cols, 3.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for a, r in zip(axes, runs, strict=False):
        s = np.asarray(r["steps"])
        for key, col, label in (
            ("test_loss", "#d62728", "test loss"),
            ("weight_norm", "#1f77b4", "weight norm"),
            ("sharpness", "#2ca02c", "sharpness"),
        ):
            a.plot(s, _unit(_arr(r[key])), "-o", ms=3, color=col, label=label)
        peak = r["check"]["test_loss_peak_step"]
        if peak is not None:
            a.axvline(peak, color="#d62728", lw=1.0)
        a.set_xscale("log")
        a.set_xlabel("step")
        a.set_ylabel("rescaled to [0, 1]")
        a.set_title(r["label"], fontsize=9)
        a.grid(alpha=0.3)
        a.legend(fontsize=7.5)
    for a in axes[n:]:
        a.set_axis_off()
    return fig
