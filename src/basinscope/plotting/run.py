"""Figures for a stored run: everything `basinscope plot RUN_DIR` draws."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from basinscope.errors import BasinscopeError
from basinscope.plotting.interactive import line_figure, surface_html
from basinscope.plotting.io import save_figure
from basinscope.plotting.lines import plot_line
from basinscope.plotting.surfaces import plot_contour, plot_surface3d
from basinscope.plotting.trajectory import Trajectory
from basinscope.plotting.vtp import write_vtp
from basinscope.store.atomic import atomic_path

__all__ = ["SURFACE_KINDS", "load_trajectories", "render_run"]

SURFACE_KINDS = ("contour", "filled", "heatmap", "3d", "html", "vtp")


def load_trajectories(run_dir: str | Path) -> list[Trajectory]:
    """Trajectories projected onto a run's plane (``trajectories.json``), if any."""
    p = Path(run_dir) / "trajectories.json"
    if not p.is_file():
        return []
    return [
        Trajectory(
            label=t["label"],
            alpha=t["alpha"],
            beta=t["beta"],
            steps=t.get("steps"),
            distance=t.get("distance"),
        )
        for t in json.loads(p.read_text())
    ]


def render_run(
    run_dir: str | Path,
    *,
    variables: Sequence[str] | None = None,
    kinds: Sequence[str] = SURFACE_KINDS,
    log: bool = False,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Draw a landscape run's figures into ``RUN/figures`` and return the written files.

    1D runs get the line plot (loss and accuracy on twin axes, train and test) and an
    interactive HTML version; 2D runs get, per loss variable (or ``variables``), the kinds
    asked for: contour, filled contour, heatmap, 3D surface (PNG/PDF), interactive plotly
    surface (HTML) and a ParaView ``.vtp`` file, with projected trajectories drawn.
    """
    from basinscope.store import RunStore

    store = RunStore.load(run_dir)
    ds = store.read_results()
    out = store.figures
    written: list[Path] = []
    unknown = [k for k in kinds if k not in SURFACE_KINDS]
    if unknown:
        raise BasinscopeError(
            f"unknown figure kinds {unknown}: expected some of {', '.join(SURFACE_KINDS)}"
        )
    if variables:
        names = list(variables)
    elif ds.attrs.get("kind") == "curvature_map":
        names = [
            v for v in ("train_ratio", "train_lambda_min", "train_lambda_max") if v in ds.data_vars
        ]
    else:
        names = [v for v in ds.data_vars if v.endswith("_loss")] or list(ds.data_vars)
    missing = [v for v in names if v not in ds.data_vars]
    if missing:
        raise BasinscopeError(
            f"{run_dir} has no variables {missing}; it has {sorted(ds.data_vars)}"
        )
    if "beta" not in ds.dims:
        splits = sorted({v.split("_", 1)[0] for v in ds.data_vars})
        metrics = []
        for v in ds.data_vars:
            m = v.split("_", 1)[1]
            if m not in metrics:
                metrics.append(m)
        fig, _ = plot_line(ds, metrics=metrics, splits=splits, log=log)
        written += save_figure(fig, out / "line", formats)
        html = out / "line.html"
        with atomic_path(html, "figure") as tmp:
            line_figure(ds, metrics=metrics, splits=splits, log=log).write_html(
                tmp, include_plotlyjs=True, full_html=True
            )
        written.append(html)
        return written
    trajectories = load_trajectories(store.path)
    for var in names:
        for kind in kinds:
            stem = out / f"{var}_{kind}"
            if kind in ("contour", "filled", "heatmap"):
                fig, _ = plot_contour(ds, var, kind=kind, log=log, trajectories=trajectories)
                written += save_figure(fig, stem, formats)
            elif kind == "3d":
                fig, _ = plot_surface3d(ds, var, log=log)
                written += save_figure(fig, stem, formats)
            elif kind == "html":
                written.append(
                    surface_html(
                        ds, var, out / f"{var}_surface.html", log=log, trajectories=trajectories
                    )
                )
            elif kind == "vtp":
                written.append(write_vtp(ds, var, out / f"{var}.vtp", log=log))
    return written
