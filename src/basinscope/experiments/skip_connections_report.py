"""The skip-connections study's report: figures (PNG/PDF) and one self-contained HTML file.

Everything is drawn from the results dict and the landscapes stored in the stage folders it
names (reopened with :func:`basinscope.store.load`); nothing is computed
again.
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
    depths = sorted({r["depth"] for r in rows})
    by = {(r["skip"], r["depth"]): r for r in rows}
    surfaces = {k: _open(stages, r["stages"]["surface"]) for k, r in by.items()}
    maps = {k: _open(stages, r["stages"]["map"]) for k, r in by.items() if "map" in r["stages"]}
    grid, mgrid, span = cfg["grid"], cfg["map_grid"], cfg["span"]
    plane = (
        f"two random Gaussian directions (seeds {cfg['direction_seed']} and "
        f"{cfg['direction_seed'] + 1}), filter-normalized (each filter of a direction rescaled "
        "to the norm of the model's filter), bias components zeroed (Li et al.)"
    )
    bn = "BatchNorm policy: none needed, the ResNets have no BatchNorm layers."

    rep = Report(
        "Skip connections and the loss landscape (Li et al. 2018, Fig. 5-7, on digits)",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{len(rows)} models · {results.get('seconds', '?')} s",
        formats=tuple(results["config"].get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "Li et al. (2018) found that without skip connections the loss surface around a "
        "trained ResNet turns chaotic and non-convex as the network gets deeper, while with "
        "skips it stays smooth and nearly convex. This study repeats the experiment at toy "
        f"scale: CIFAR-style ResNets of depths {', '.join(map(str, depths))} and width "
        f"{cfg['width']} (channels {cfg['width']}/{2 * cfg['width']}/{4 * cfg['width']}), "
        "each trained with and without its skip connections on scikit-learn's 8x8 digits "
        f"(1,347 training and 450 test images). Training: {pol['training']}.\n\n"
        f"{pol['batchnorm'][0].upper() + pol['batchnorm'][1:]}. Without BatchNorm, deep plain "
        "networks only train from a variance-preserving initialization (He initialization of "
        "the convolutions, the default; with PyTorch's default a no-skip ResNet-20 stayed at "
        "chance accuracy in a trial run)."
    )

    rep.heading("Models")
    rep.table(
        [
            {
                "model": r["label"],
                "depth": r["depth"],
                "width": r["width"],
                "skips": "yes" if r["skip"] else "no",
                "parameters": r["parameters"],
                "train acc.": r["train_accuracy"],
                "test acc.": r["test_accuracy"],
                "λmax": r["lambda_max"],
                "λmin": r["lambda_min"],
                "|λmin/λmax| at θ*": r["ratio_center"],
                "surface non-convex fraction": r["surface_nonconvex_fraction"],
                "mean |λmin/λmax| over the map": _fmt(r["map_ratio_mean"]),
            }
            for r in rows
        ],
        f"Accuracy on the full train/test splits. λmax, λmin: extreme eigenvalues of the Hessian "
        f"of the mean cross-entropy on {pol['hessian_data']} at the solution (Lanczos in float64, "
        f"relative residual tolerance {cfg['hessian_tol']:g}). Surface non-convex fraction: share "
        f"of the {max(grid - 2, 0)}x{max(grid - 2, 0)} interior points of the surface below where "
        "the 2x2 finite-difference Hessian of f(α, β) has a negative eigenvalue. Map mean: over "
        f"the {mgrid}x{mgrid} map below (— where no map was computed). {bn}",
    )

    rep.heading("Loss surfaces: with and without skip connections")
    rep.figure(
        _surface_grid(surfaces, depths),
        f"Training loss f(α, β) = L(θ* + αδ + βη) (mean cross-entropy on {pol['surface_data']}, "
        f"log colour scale shared by all panels) on a {grid}x{grid} grid over "
        f"[−{span:g}, {span:g}]², centred at each trained solution θ* (+). δ, η: {plane}. "
        f"Rows: with / without skip connections; columns: depth. {bn}",
        save_as=figs / "surfaces",
    )
    deepest = depths[-1]
    rep.figure(
        _surfaces_3d(surfaces, deepest),
        f"The ResNet-{deepest} surfaces above in 3D: log10 of the same training loss on the same "
        f"{grid}x{grid} grid, the same filter-normalized random directions. {bn}",
        save_as=figs / f"surfaces_3d_resnet{deepest}",
    )

    if maps:
        rep.heading("Convexity maps: |λmin/λmax| of the Hessian over the same plane")
        rep.figure(
            _map_grid(maps),
            f"|λmin/λmax| of the Hessian of the mean training loss on {pol['hessian_data']} at each "
            f"point of a {mgrid}x{mgrid} grid over [−{span:g}, {span:g}]² in the same planes as the "
            f"surfaces (the same filter-normalized random directions). Both eigenvalues by Lanczos in float64 "
            f"(tolerance {cfg['hessian_tol']:g}, at most {cfg['hessian_max_iter']} steps per point). "
            "Dark blue (ratio near 0): no significant negative curvature, the landscape is nearly "
            "convex there; yellow: negative curvature comparable to the positive one. Colour "
            f"scale clipped to [0, 1]. {bn}",
            save_as=figs / "curvature_maps",
        )

    rep.heading("Summary against depth")
    rep.figure(
        _summary(rows, depths),
        f"Left: largest Hessian eigenvalue at the solution ({pol['hessian_data']}, log scale). "
        f"Middle: share of the interior points of each {grid}x{grid} surface (filter-normalized "
        "random directions, as above) where the surface's "
        "2x2 finite-difference Hessian has a negative eigenvalue (a non-convexity of the plotted "
        "surface implies negative curvature of the full Hessian; not conversely). Right: "
        f"accuracy on the 450 test digits. {bn}",
        save_as=figs / "summary_vs_depth",
    )
    rep.heading("What the numbers show")
    rep.text(_findings(rows, depths))

    from basinscope.plotting import surface_figure

    for skip in (False, True):
        rep.plotly(
            surface_figure(
                surfaces[(skip, deepest)],
                "train_loss",
                log=True,
                title=f"ResNet-{deepest} {'with' if skip else 'without'} skips",
            ),
            f"Interactive 3D view: log10 training loss of ResNet-{deepest} "
            f"{'with' if skip else 'without'} skip connections ({pol['surface_data']}, "
            f"{grid}x{grid} grid, filter-normalized random directions). {bn}",
        )

    rep.heading("How these numbers were made")
    rep.text(
        "Each model, Hessian, surface and map is a stage stored in its own folder (named by a "
        "hash of its settings, which include the folders of the stages it depends on), so "
        "running the study again reuses them and a changed setting recomputes only what depends "
        "on it. Surfaces and maps are resumable landscape runs (manifest, journal of finished "
        "chunks, result.json). result.json next to this report holds every number shown, "
        "with its definition. Precision and device: "
        + pol.get("precision", "float32 evaluations and float64 Hessians on the CPU")
        + "."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")


def _surface_grid(surfaces, depths):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    from basinscope.plotting import plot_contour
    from basinscope.plotting._common import new_figure

    vals = np.concatenate([ds["train_loss"].values.ravel() for ds in surfaces.values()])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    lo, hi = float(vals.min()), float(vals.max())
    levels = np.geomspace(lo, hi, 30)
    n = len(depths)
    fig = new_figure((3.6 * n + 1.2, 7.0))
    axes = fig.subplots(2, n, squeeze=False)
    for i, skip in enumerate((True, False)):
        for j, depth in enumerate(depths):
            plot_contour(
                surfaces[(skip, depth)],
                "train_loss",
                kind="filled",
                log=True,
                levels=levels,
                vmin=lo,
                vmax=hi,
                ax=axes[i, j],
                colorbar=False,
                title=f"ResNet-{depth}, {'with' if skip else 'no'} skips",
            )
            if axes[i, j].get_legend() is not None:
                axes[i, j].get_legend().remove()
    sm = ScalarMappable(norm=LogNorm(lo, hi), cmap=colormaps["viridis"])
    fig.colorbar(sm, ax=axes, shrink=0.85, label="training loss (log scale)")
    return fig


def _surfaces_3d(surfaces, depth):
    from basinscope.plotting import plot_surface3d
    from basinscope.plotting._common import new_figure

    fig = new_figure((11.0, 4.8))
    for j, skip in enumerate((True, False)):
        ax = fig.add_subplot(1, 2, j + 1, projection="3d")
        title = f"ResNet-{depth}, {'with' if skip else 'no'} skips"
        plot_surface3d(surfaces[(skip, depth)], "train_loss", log=True, ax=ax, title=title)
    return fig


def _map_grid(maps):
    from basinscope.plotting import plot_contour
    from basinscope.plotting._common import new_figure

    depths = sorted({d for _, d in maps})
    fig = new_figure((9.6, 4.2 * len(depths)))
    axes = fig.subplots(len(depths), 2, squeeze=False)
    for i, depth in enumerate(depths):
        for j, skip in enumerate((True, False)):
            ds = maps.get((skip, depth))
            if ds is None:
                axes[i, j].set_axis_off()
                continue
            ratio = ds["train_ratio"].values
            ds["train_ratio"].attrs["long_name"] = "|λmin/λmax| of the Hessian"
            plot_contour(
                ds,
                "train_ratio",
                kind="heatmap",
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
                ax=axes[i, j],
                title=f"ResNet-{depth}, {'with' if skip else 'no'} skips: "
                f"mean {np.mean(ratio):.2f}",
            )
    return fig


def _summary(rows, depths):
    from basinscope.plotting._common import new_figure

    fig = new_figure((12.0, 3.6))
    axes = fig.subplots(1, 3)
    for skip, color in ((True, "#1f77b4"), (False, "#d62728")):
        sel = sorted((r for r in rows if r["skip"] == skip), key=lambda r: r["depth"])
        x = [r["depth"] for r in sel]
        label = "with skips" if skip else "without skips"
        for ax, key in zip(axes, ("lambda_max", "surface_nonconvex_fraction", "test_accuracy")):
            ax.plot(x, [r[key] for r in sel], "o-", color=color, label=label)
    for ax, ylabel in zip(
        axes, ("λmax at the solution", "surface non-convex fraction", "test accuracy")
    ):
        ax.set_xlabel("depth")
        ax.set_ylabel(ylabel)
        ax.set_xticks(depths)
        ax.legend(fontsize=8.5)
    axes[0].set_yscale("log")
    axes[1].set_ylim(-0.02, 1.02)
    return fig


def _findings(rows, depths) -> str:
    by = {(r["skip"], r["depth"]): r for r in rows}
    parts = []
    for d in depths:
        s, n = by[(True, d)], by[(False, d)]
        text = (
            f"ResNet-{d}: non-convex fraction of the surface {n['surface_nonconvex_fraction']:.2f} "
            f"without skips vs {s['surface_nonconvex_fraction']:.2f} with; λmax "
            f"{n['lambda_max']:.3g} vs {s['lambda_max']:.3g}; |λmin/λmax| at the solution "
            f"{n['ratio_center']:.2f} vs {s['ratio_center']:.2f}; test accuracy "
            f"{n['test_accuracy']:.3f} vs {s['test_accuracy']:.3f}"
        )
        if n["map_ratio_mean"] is not None and s["map_ratio_mean"] is not None:
            text += (
                f"; mean |λmin/λmax| over the map {n['map_ratio_mean']:.2f} vs "
                f"{s['map_ratio_mean']:.2f} (points with ratio < 0.1: "
                f"{n['map_convex_fraction']:.0%} vs {s['map_convex_fraction']:.0%})"
            )
        parts.append(text + ".")
    deep, shallow = depths[-1], depths[0]
    frac = {k: by[k]["surface_nonconvex_fraction"] for k in by}
    grows = frac[(False, deep)] > frac[(False, shallow)]
    worse = frac[(False, deep)] > frac[(True, deep)]
    mr = (by[(False, deep)]["map_ratio_mean"], by[(True, deep)]["map_ratio_mean"])
    map_worse = None if None in mr else mr[0] > mr[1]
    sharper = by[(False, deep)]["lambda_max"] > by[(True, deep)]["lambda_max"]
    verdict = (
        f"Without skips, the surface's non-convex fraction goes from {frac[(False, shallow)]:.2f} "
        f"at depth {shallow} to {frac[(False, deep)]:.2f} at depth {deep}; with skips from "
        f"{frac[(True, shallow)]:.2f} to {frac[(True, deep)]:.2f}. At depth {deep} the no-skip "
        f"surface is {'more' if worse else 'not more'} non-convex than the skip one"
        + (
            ""
            if map_worse is None
            else f", its Hessian map is {'less' if map_worse else 'not less'} convex on average"
        )
        + f", and its solution is {'sharper' if sharper else 'not sharper'} (λmax). "
        + (
            "This is the direction Li et al. report, "
            if grows and worse and map_worse is not False
            else "This only partly matches Li et al.'s picture, "
        )
        + "but at a much smaller scale (8x8 digits, narrow nets, coarse grids on a data subset): "
        "the effect is weaker than on CIFAR-10, surfaces with skips become somewhat less convex "
        "with depth too, and single numbers depend on the random plane."
    )
    gap = by[(True, deep)]["test_accuracy"] - by[(False, deep)]["test_accuracy"]
    if gap > 0.02:
        verdict += (
            f" Note that the no-skip ResNet-{deep} also trains worse in the same budget (test "
            f"accuracy {gap:.1%} lower), so it sits at a less finished point of its landscape."
        )
    return "\n\n".join([*parts, verdict])
