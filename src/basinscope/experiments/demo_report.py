"""The demo's report: figures (PNG/PDF) and one self-contained HTML file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import basinscope
from basinscope.plotting import (
    Trajectory,
    line_figure,
    plot_line,
    plot_side_by_side,
    surface_figure,
)
from basinscope.report import Report

__all__ = ["write_demo_report"]


def _traj(p, color=None) -> Trajectory:
    return Trajectory(
        label=p.label, alpha=p.alpha, beta=p.beta, steps=p.steps, distance=p.distance, color=color
    )


def write_demo_report(out: Path, cfg, results: dict[str, Any], line, surfaces, projections) -> Path:
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    rep = Report(
        "basinscope demo: fine-tuning on rotated digits",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · target: digits rotated by "
        f"{cfg.rotation:g}° · {results['seconds']} s",
    )
    rep.text(
        "A LeNet is pre-trained on upright 8x8 digits (the source distribution, scikit-learn's digits, "
        f"{cfg.pretrain_steps} SGD steps) and then fine-tuned for {cfg.finetune_steps} gradient steps on the same "
        f"digits rotated by {cfg.rotation:g} degrees (the target distribution), once from the pre-trained weights "
        "and once from a random initialization. The question: does fine-tuning from the pre-trained start stay "
        "in the pre-trained basin, and what does it forget?"
    )

    rep.heading("Adaptation and forgetting")
    rep.table(
        results["adaptation_and_forgetting"],
        "Accuracy on the test split of each distribution before and after fine-tuning, and the Euclidean "
        "distance in parameter space between the start and the fine-tuned model (relative: divided by ‖θ_start‖).",
    )

    rep.heading("The straight path from pre-trained to fine-tuned")
    ds = line.dataset
    fig, _ = plot_line(
        ds,
        metrics=("loss", "accuracy"),
        splits=("source", "target"),
        title="pre-trained (α=0) → fine-tuned (α=1)",
    )
    rep.figure(
        fig,
        "Loss (left, blue, log scale) and accuracy (right, red) along f(α) = L((1−α)θ_pre + αθ_ft) for α in [−1, 2] "
        f"({len(ds.alpha)} points), on the test split of the source (solid) and target (dashed) distributions. "
        "Mean cross-entropy; LeNet without BatchNorm, so no statistics policy applies. A path that stays low "
        "on both datasets between 0 and 1 says the fine-tuned model did not leave the pre-trained basin.",
        save_as=figs / "line",
    )
    rep.plotly(
        line_figure(ds, metrics=("loss", "accuracy"), splits=("source", "target")),
        "The same path, interactive.",
    )

    rep.heading("2D landscapes of fine-tuning: random start vs. pre-trained start")
    labels = ["random start", "pre-trained start"]
    trajs = [[_traj(projections[k])] for k in labels]
    grid = len(surfaces[labels[0]].dataset.alpha)
    fig = plot_side_by_side(
        [surfaces[k].dataset for k in labels],
        "target_loss",
        titles=[f"from a {k}" for k in labels],
        trajectories_per_panel=trajs,
        kind="filled",
        log=True,
        suptitle=f"target loss (digits rotated by {cfg.rotation:g}°)",
    )
    rep.figure(
        fig,
        f"Target training loss (mean cross-entropy, log color scale) on a {grid}x{grid} grid in the plane of the top two "
        "principal components of each fine-tuning trajectory, centred at the fine-tuned model; the trajectory "
        f"({cfg.finetune_steps} steps, a checkpoint every {cfg.checkpoint_every}) is projected onto the plane; its legend "
        "gives the largest distance of a checkpoint from the plane. Explained variance of the two components: "
        + "; ".join(
            f"{k}: {', '.join(f'{100 * v:.0f}%' for v in results['surfaces'][k]['explained_variance_ratio'])}"
            for k in labels
        )
        + ".",
        save_as=figs / "surfaces_target_random_vs_pretrained",
    )

    rep.heading("Forgetting in the landscape: source vs. target loss around the pre-trained start")
    pre = surfaces["pre-trained start"].dataset
    fig = _source_target_panels(pre, trajs[1], cfg)
    rep.figure(
        fig,
        "The same plane as the right panel above (fine-tuning from the pre-trained start), evaluated on the source "
        "training images (left) and the target training images (right): where the trajectory ends relative to the "
        "source basin shows what fine-tuning forgot.",
        save_as=figs / "surfaces_source_vs_target",
    )
    rep.plotly(
        surface_figure(
            pre,
            "target_loss",
            log=True,
            trajectories=trajs[1],
            title="target loss around the pre-trained start",
        ),
        "Interactive 3D view of the target loss in the plane of the pre-trained-start fine-tuning (log10 scale).",
    )

    rep.heading("How these numbers were made")
    rep.text(
        "Every landscape point is a full pass over its dataset with basinscope's engine "
        f"(evaluation strategy: {', '.join(sorted({s['strategy'] for s in results['surfaces'].values()}))}, chosen by timing); "
        "losses are means over all examples. Each stage is stored in its own run folder with a manifest "
        "(settings, versions, fingerprints of models and data); run `basinscope demo` again to reuse them, "
        "or `basinscope plot RUN_DIR` to redraw a stage. results.json next to this report holds every number shown."
    )
    rep.table(
        [{"stage": k, "run folder": v} for k, v in results["stages"].items()], "Training stages."
    )
    return rep.write(out / "report.html")


def _source_target_panels(ds, trajs, cfg):
    from basinscope.plotting._common import new_figure
    from basinscope.plotting.surfaces import plot_contour

    fig = new_figure((11, 4.6))
    axes = fig.subplots(1, 2)
    for ax, var, title in zip(
        axes,
        ["source_loss", "target_loss"],
        ["source loss (upright digits)", f"target loss (rotated {cfg.rotation:g}°)"],
    ):
        plot_contour(ds, var, kind="filled", log=True, trajectories=trajs, ax=ax, title=title)
    return fig
