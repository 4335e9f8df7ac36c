"""The minefield study's report: figures (PNG/PDF) and one self-contained HTML file.

Everything is drawn from the results dict (the stages' numbers, the maps' coordinates and
the lines, all stored in result.json); nothing is computed again.
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

__all__ = ["FIGURES", "findings", "write_report"]

FIGURES = ("accuracies", "sharpness", "pca_map", "tsne_map", "distances", "lines")
SGD_COLOR, BAD_COLOR, STAR_COLOR = "#d62728", "#1f77b4", "#ffbf00"


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, pol, setup = results["config"], results["policies"], results["setup"]
    sol, rows, path = results["solution"], results["minima"], results["path"]
    maps, v = results["maps"], results["verdict"]
    n = setup["examples"]
    bn = "BatchNorm policy: none needed, the MLP has no BatchNorm layers."

    rep = Report(
        "A minefield of bad minima around SGD's path (Huang et al. 2019, Fig. 1, on digits)",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{len(rows)} bad minima · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        'Huang et al. (2019) found "bad" minima, with near-perfect training accuracy and poor '
        "test accuracy, close to the path of SGD, which nevertheless never lands in one. This "
        "study repeats the experiment at toy scale. Data: "
        + pol["data"]
        + ". SGD's path: "
        + pol["sgd"]
        + f"; its parameters are recorded at steps {', '.join(map(str, setup['checkpoint_steps']))}. "
        "Bad minima: "
        + pol["poisoned"]
        + ". The poison term rewards wrong answers on digits drawn like the test digits, so a "
        "minimum of this objective fits the training digits and generalizes badly.\n\n"
        + pol["batchnorm"][0].upper()
        + pol["batchnorm"][1:]
        + "."
    )

    rep.heading("SGD's solution and the bad minima")
    rep.table(
        [_row(sol), *(_row(r) for r in rows)],
        f"Accuracy: fraction correct on the {n['train']} training and {n['test']} test digits; "
        f"poison fit: fraction of the {n['poison']} poison digits given their wrong label. "
        "Adaptive sharpness: max of L(θ+δ) − L(θ) over ‖δ/|θ|‖₂ ≤ "
        f"{cfg['adaptive_rho']:g} (Kwon et al. 2021 with η = 0, invariant to the rescalings of "
        "ReLU layers). Filter-normalized sharpness: mean over "
        f"{cfg['fn_directions']} random filter-normalized directions d of L(θ + {cfg['fn_alpha']:g} d) − "
        "L(θ) (Li et al. 2018). λmax: largest Hessian eigenvalue (Lanczos, float64; not "
        "scale-invariant). L is the mean training cross-entropy; "
        + pol["sharpness"]
        + ". Distance to path: min over the recorded SGD iterates of ‖θ − θ_k‖₂ (relative: "
        f"divided by the path's length {maps['path_length']:.3g}, the sum of ‖θ_k+1 − θ_k‖₂). "
        f"{bn}",
    )

    rep.heading("Training vs. test accuracy: SGD's iterates and the bad minima")
    rep.figure(
        _accuracies(sol, rows, path, cfg["fit_threshold"]),
        f"Each recorded SGD iterate (red, shaded by step) and each bad minimum (blue) at its "
        f"training accuracy ({n['train']} digits) and test accuracy ({n['test']} digits); "
        f"yellow star: SGD's solution. Dotted line: the fit threshold {cfg['fit_threshold']:g} "
        f'of training accuracy ("near-perfect"). {bn}',
        save_as=figs / "accuracies",
    )

    rep.heading("Are the bad minima sharper?")
    rep.figure(
        _sharpness(sol, rows),
        "Three sharpness measures at SGD's solution (star) and at each bad minimum (blue), all "
        "of the mean training cross-entropy (log scale). Adaptive: worst case in the l2 ball "
        f"‖δ/|θ|‖₂ ≤ {cfg['adaptive_rho']:g} (η = 0, scale-invariant); filter-normalized: mean "
        f"increase at step {cfg['fn_alpha']:g} along {cfg['fn_directions']} random "
        "filter-normalized directions (invariant to layer-wise rescaling); λmax: top Hessian "
        f"eigenvalue (not scale-invariant). {bn}",
        save_as=figs / "sharpness",
    )

    rep.heading("Maps of the SGD path and the bad minima")
    ev = maps["pca"]["explained_variance_ratio"]
    rep.figure(
        _pca_map(maps, len(path), rows),
        "PCA map: the plane through SGD's solution spanned by the top two principal directions "
        "of the recorded SGD iterates (geometry.pca_directions, the iterates' differences to "
        f"the solution, mean-centred; they explain {ev[0]:.0%} and {ev[1]:.0%} of the path's "
        "variance). Every point is projected onto the plane by least squares; coordinates in "
        "parameter units. Red: SGD's iterates (joined in order), star: its solution; blue: the "
        "bad minima, each joined (grey) to the iterate it started from. The bad minima lie "
        f"{_span(maps['pca']['off_plane'][len(path) :])} off the plane (the iterates at most "
        f"{max(maps['pca']['off_plane'][: len(path)]):.3g}), so the map shows where they "
        f"project, not how far they are. {bn}",
        save_as=figs / "pca_map",
    )
    rep.figure(
        _tsne_map(maps, len(path), rows),
        "t-SNE map (scikit-learn TSNE, exact gradients, PCA initialization, random_state "
        f"{cfg['tsne_seed']}, perplexity {maps['tsne']['perplexity']:.3g}) of the flattened "
        "parameter vectors of the SGD iterates (red, joined in order; star: the solution) and "
        "the bad minima (blue), as in Huang et al.'s Fig. 1. t-SNE keeps neighbourhoods, not "
        "distances: how far apart points are on this map means little; the distances are in "
        f"the next figure. {bn}",
        save_as=figs / "tsne_map",
    )
    rep.figure(
        _distances(maps, results["distances"], rows),
        "Parameter distance ‖θ_bad − θ_k‖₂ from each bad minimum (one line each) to every "
        "recorded SGD iterate θ_k, against the iterate's step; circle: the iterate the "
        "poisoned run started from. Dashed: the distance from SGD's initialization to its "
        f"solution ({maps['init_to_solution']:.3g}); dotted: the length of SGD's path "
        f"({maps['path_length']:.3g}, the sum of the distances between consecutive recorded "
        f"iterates). {bn}",
        save_as=figs / "distances",
    )

    rep.heading("The line from SGD's solution to each bad minimum")
    rep.figure(
        _lines(results["lines"], rows),
        "Along θ(α) = (1 − α) θ_SGD + α θ_bad (α = 0: SGD's solution, α = 1: the bad minimum; "
        f"{cfg['line_points']} points on [{cfg['line_range'][0]:g}, {cfg['line_range'][1]:g}]"
        f", raw, no normalization): left, the mean cross-entropy on the {n['train']} training "
        f"digits (log scale); middle, accuracy on the {n['test']} test digits; right, the "
        f"fraction of the {n['poison']} poison digits given their wrong label. One line per bad "
        f"minimum. {bn}",
        save_as=figs / "lines",
    )

    rep.heading("What the numbers show")
    rep.text(findings(v))

    rep.heading("SGD's path")
    rep.table(
        [
            {
                "step": p["step"],
                "train acc.": p["train_accuracy"],
                "test acc.": p["test_accuracy"],
                "poison fit": p["poison_accuracy"],
                "train loss": p["train_loss"],
            }
            for p in path
        ],
        f"Every recorded SGD iterate: accuracy on the {n['train']} training and {n['test']} test "
        f"digits, fraction of the {n['poison']} poison digits given their wrong label (SGD never "
        "sees them), mean training cross-entropy.",
    )

    rep.heading("How these numbers were made")
    rep.text(
        "SGD's run, each poisoned run, each minimum's measurements, SGD's path evaluation, each "
        "line and the maps are stages stored in folders named by a hash of their settings "
        "(which include the folders of the stages they depend on), so running the study again "
        "reuses them and a changed setting recomputes only what depends on it. result.json next "
        "to this report holds every number shown, with its definition. Precision and device: "
        + pol["precision"]
        + "."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _row(r: dict[str, Any]) -> dict[str, Any]:
    bad = r["kind"] == "bad"
    return {
        "minimum": r["label"],
        "train acc.": r["train_accuracy"],
        "test acc.": r["test_accuracy"],
        "poison fit": r["poison_accuracy"],
        "train loss": r["train_loss"],
        "adaptive sharpness": r["sharpness_adaptive"],
        "filter-normalized sharpness": r["sharpness_filter_normalized"],
        "λmax": r["lambda_max"],
        "distance to path": r["distance_to_path"] if bad else "—",
        "relative to path length": r["relative_distance_to_path"] if bad else "—",
        "nearest step": r["nearest_step"] if bad else "—",
    }


def _span(values: list[float]) -> str:
    return f"{min(values):.3g}–{max(values):.3g}" if values else "—"


def _accuracies(sol, rows, path, threshold):
    from basinscope.plotting._common import new_figure

    fig = new_figure((6.4, 4.8))
    ax = fig.subplots()
    steps = np.array([p["step"] for p in path], float)
    shade = 0.25 + 0.75 * steps / max(steps.max(), 1)
    ax.scatter(
        [p["train_accuracy"] for p in path],
        [p["test_accuracy"] for p in path],
        c=[(0.84, 0.15, 0.16, a) for a in shade],
        s=28,
        label="SGD iterates",
    )
    ax.scatter(
        [r["train_accuracy"] for r in rows],
        [r["test_accuracy"] for r in rows],
        color=BAD_COLOR,
        s=36,
        label="bad minima",
    )
    ax.scatter(
        [sol["train_accuracy"]],
        [sol["test_accuracy"]],
        marker="*",
        s=260,
        color=STAR_COLOR,
        edgecolor="k",
        zorder=5,
        label="SGD's solution",
    )
    ax.axvline(threshold, color="grey", ls=":", lw=1)
    ax.set_xlabel("training accuracy")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8.5, loc="upper left")
    return fig


def _sharpness(sol, rows):
    from basinscope.plotting._common import new_figure

    keys = (
        ("sharpness_adaptive", "adaptive sharpness"),
        ("sharpness_filter_normalized", "filter-normalized sharpness"),
        ("lambda_max", "λmax"),
    )
    fig = new_figure((11.0, 3.6))
    axes = fig.subplots(1, 3)
    jitter = np.linspace(-0.12, 0.12, max(len(rows), 1))
    for ax, (key, title) in zip(axes, keys):
        vals = [r[key] for r in rows]
        ax.scatter(1 + jitter[: len(vals)], vals, color=BAD_COLOR, s=30, label="bad minima")
        ax.scatter([0], [sol[key]], marker="*", s=240, color=STAR_COLOR, edgecolor="k", label="SGD")
        ax.set_xticks([0, 1], ["SGD's solution", "bad minima"])
        ax.set_xlim(-0.6, 1.6)
        if all(x > 0 for x in [*vals, sol[key]]):
            ax.set_yscale("log")
        ax.set_title(title)
    return fig


def _map(ax, x, y, n_path, rows, start_index):
    ax.plot(x[:n_path], y[:n_path], "-", color=SGD_COLOR, lw=1, alpha=0.6)
    ax.scatter(x[:n_path], y[:n_path], color=SGD_COLOR, s=22, label="SGD iterates", zorder=3)
    ax.scatter(
        [x[n_path - 1]],
        [y[n_path - 1]],
        marker="*",
        s=260,
        color=STAR_COLOR,
        edgecolor="k",
        zorder=5,
        label="SGD's solution",
    )
    for i, r in enumerate(rows):
        j = start_index[r["start_step"]]
        ax.plot([x[j], x[n_path + i]], [y[j], y[n_path + i]], color="grey", lw=0.6, alpha=0.6)
    ax.scatter(x[n_path:], y[n_path:], color=BAD_COLOR, s=30, label="bad minima", zorder=4)
    ax.legend(fontsize=8.5)


def _pca_map(maps, n_path, rows):
    from basinscope.plotting._common import new_figure

    fig = new_figure((6.4, 5.2))
    ax = fig.subplots()
    idx = {s: i for i, s in enumerate(maps["steps"])}
    pca = maps["pca"]
    _map(ax, np.array(pca["alpha"]), np.array(pca["beta"]), n_path, rows, idx)
    ev = pca["explained_variance_ratio"]
    ax.set_xlabel(f"1st principal direction ({ev[0]:.0%} of the path's variance)")
    ax.set_ylabel(f"2nd principal direction ({ev[1]:.0%})")
    return fig


def _tsne_map(maps, n_path, rows):
    from basinscope.plotting._common import new_figure

    fig = new_figure((6.4, 5.2))
    ax = fig.subplots()
    idx = {s: i for i, s in enumerate(maps["steps"])}
    ts = maps["tsne"]
    _map(ax, np.array(ts["x"]), np.array(ts["y"]), n_path, rows, idx)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    return fig


def _distances(maps, table, rows):
    from basinscope.plotting._common import new_figure

    fig = new_figure((6.8, 4.4))
    ax = fig.subplots()
    steps = maps["steps"]
    for r, d in zip(rows, table):
        ax.plot(steps, d, "-", color=BAD_COLOR, alpha=0.55, lw=1)
        j = steps.index(r["start_step"])
        ax.plot([steps[j]], [d[j]], "o", color=BAD_COLOR, ms=5)
    ax.axhline(maps["init_to_solution"], color=SGD_COLOR, ls="--", lw=1, label="init → solution")
    ax.axhline(maps["path_length"], color=SGD_COLOR, ls=":", lw=1, label="SGD path length")
    ax.set_xlabel("SGD step of the iterate")
    ax.set_ylabel("‖θ_bad − θ_k‖₂")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8.5)
    return fig


def _lines(lines, rows):
    from basinscope.plotting._common import new_figure

    fig = new_figure((12.0, 3.6))
    axes = fig.subplots(1, 3)
    for line in lines:
        a = np.array(line["alpha"])
        axes[0].plot(a, line["train_loss"], color=BAD_COLOR, alpha=0.6, lw=1)
        axes[1].plot(a, line["test_accuracy"], color=BAD_COLOR, alpha=0.6, lw=1)
        axes[2].plot(a, line["poison_accuracy"], color=BAD_COLOR, alpha=0.6, lw=1)
    axes[0].set_yscale("log")
    for ax, label in zip(
        axes, ("training loss", "test accuracy", "poison digits given their wrong label")
    ):
        ax.axvline(0, color=SGD_COLOR, lw=0.8, ls="--")
        ax.axvline(1, color=BAD_COLOR, lw=0.8, ls="--")
        ax.set_xlabel("α (0: SGD's solution, 1: bad minimum)")
        ax.set_ylabel(label)
    return fig


def findings(v: dict[str, Any]) -> str:
    """The report's conclusions, in words, from the verdict's numbers."""
    k, th = v["bad_count"], v["fit_threshold"]
    parts = [
        f"Bad minima: {v['bad_fit']} of {k} fit the training digits (training accuracy ≥ "
        f"{th:g}; the lowest is {v['bad_train_accuracy_min']:.3f}), and {v['bad_below_sgd']} of "
        f"{k} test worse than SGD's solution: test accuracy at most "
        f"{v['bad_test_accuracy_max']:.3f} (median {v['bad_test_accuracy_median']:.3f}) vs "
        f"{v['sgd_test_accuracy']:.3f} for SGD (training accuracy "
        f"{v['sgd_train_accuracy']:.3f}), a median gap of {v['test_gap_median']:.3f}."
    ]
    names = {
        "sharpness_adaptive": "adaptive sharpness (scale-invariant)",
        "sharpness_filter_normalized": "filter-normalized sharpness",
        "lambda_max": "λmax",
    }
    sharp = []
    for key, name in names.items():
        s = v["sharper"][key]
        ratio = (
            "" if s["median_ratio"] is None else f", median ratio to SGD's {s['median_ratio']:.3g}"
        )
        sharp.append(
            f"by {name} {s['sharper']} of {s['of']} are sharper than SGD's solution "
            f"({s['bad_median']:.3g} median vs {s['sgd']:.3g}{ratio})"
        )
    every = all(v["sharper"][k2]["sharper"] == v["sharper"][k2]["of"] for k2 in names)
    none = all(v["sharper"][k2]["sharper"] == 0 for k2 in names)
    parts.append(
        "Sharpness: "
        + "; ".join(sharp)
        + ". "
        + (
            "By every measure the bad minima are sharper, as the flat-minima picture predicts."
            if every
            else "By no measure are the bad minima sharper."
            if none
            else "The measures disagree, or only some bad minima are sharper."
        )
        + " The bad minima also have a higher training loss than SGD's solution (see the table): "
        "part of their sharpness may come from being less converged."
    )
    near = v["within_one_path_length"]
    parts.append(
        f"Distance: a bad minimum lies {v['distance_to_path_median']:.3g} (median) from the "
        f"nearest recorded SGD iterate, {v['relative_distance_median']:.2f} path lengths "
        f"(at most {v['relative_distance_max']:.2f}); SGD's whole path is "
        f"{v['path_length']:.3g} long and its solution {v['init_to_solution']:.3g} from its "
        f"initialization. {near} of {k} bad minima lie within one path length of the path, "
        f"{v['closer_than_init_to_solution']} of {k} nearer to it than SGD's solution is to its "
        "initialization. "
        + (
            "On the scale of SGD's own travel they are close."
            if near == k
            else "On the scale of SGD's own travel "
            + ("none is" if near == 0 else "not all are")
            + " close: the poisoned runs travel far to memorize the wrong labels. The t-SNE "
            "map, which keeps neighbourhoods rather than distances, can still draw them next "
            "to the path."
        )
    )
    if not v["iterates_fitting"]:
        parts.append(
            f"No recorded SGD iterate reaches training accuracy {th:g}, so none can be said to "
            "land in a minimum, good or bad."
        )
    elif v["sgd_lands_in_one"]:
        parts.append(
            f"SGD lands in a bad minimum's territory: the iterates at steps "
            f"{', '.join(map(str, v['landed_steps']))} fit the training digits and test no "
            f"better than the best bad minimum ({v['bad_test_accuracy_max']:.3f})."
        )
    else:
        parts.append(
            f"SGD never lands in one: the {len(v['iterates_fitting'])} recorded iterates that fit "
            f"the training digits (from step {v['iterates_fitting'][0]}) all test at "
            f"{v['fitted_iterates_min_test_accuracy']:.3f} or better, above every bad minimum "
            f"(best {v['bad_test_accuracy_max']:.3f})."
        )
    parts.append(
        "This is a toy-scale repetition (8x8 digits, one small MLP, a few bad minima), with "
        "bad minima found by one recipe (the poisoned objective above); the numbers depend on "
        "the poison set's size and weight and on the poisoned runs' length."
    )
    return "\n\n".join(parts)
