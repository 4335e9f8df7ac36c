"""Every figure of a landscape: what ``basinscope interpolate``/``surface`` draw and
``basinscope plot RUN_DIR`` redraws from a landscape run's stored result.

:func:`render_run` draws the figures of any run folder from its stored result.
1D landscapes get the line plot (loss and accuracy on twin axes, train and test) and an
interactive HTML version; 2D landscapes get, per variable, the kinds asked for: contour,
filled contour, heatmap, 3D surface (PNG/PDF), interactive plotly surface (HTML) and a
ParaView ``.vtp`` file, with the result's projected trajectories drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from basinscope.errors import BasinscopeError

__all__ = [
    "LOG_SUFFIX",
    "SURFACE_KINDS",
    "default_levels",
    "default_variables",
    "landscape_figures",
    "line_groups",
    "load_trajectories",
    "render_landscape",
    "render_result",
    "render_run",
    "trajectories_of",
]

SURFACE_KINDS = ("contour", "filled", "heatmap", "3d", "html", "vtp")
#: Appended to the name of every log-scaled figure (``train_loss_contour-log.png``), so
#: that ``basinscope plot --log`` writes beside the linear-scale files, never over them.
LOG_SUFFIX = "-log"


def default_levels(var: str, log: bool) -> int | str:
    """The contour levels of ``var``'s 2D figures: a loss without ``log`` gets quantile
    levels (a loss surface spans orders of magnitude: 30 evenly spaced levels crowd its
    walls and leave its basin one colour); ``log`` gets log-spaced levels; other
    variables 30 evenly spaced ones. The colorbar's label names the choice."""
    return "quantile" if var.endswith("_loss") and not log else 30


def trajectories_of(land: Any) -> list[Any]:
    """The trajectories projected onto a landscape's plane (its ``trajectories`` field), as
    :class:`~basinscope.plotting.Trajectory` objects."""
    from basinscope.plotting.trajectory import Trajectory

    return [
        Trajectory(label=t.label, alpha=t.alpha, beta=t.beta, steps=t.steps, distance=t.distance)
        for t in getattr(land, "trajectories", ())
    ]


def load_trajectories(run_dir: str | Path) -> list[Any]:
    """The trajectories projected onto the plane of the landscape stored in ``run_dir``."""
    from basinscope.store import load

    return trajectories_of(load(run_dir))


def default_variables(ds: Any) -> list[str]:
    """The variables drawn unless others are asked for: every loss (a curvature map's ratio
    and eigenvalues), or every variable when there is no loss."""
    if ds.attrs.get("kind") == "curvature_map":
        return [
            v for v in ("train_ratio", "train_lambda_min", "train_lambda_max") if v in ds.data_vars
        ]
    return [v for v in ds.data_vars if v.endswith("_loss")] or list(ds.data_vars)


def line_groups(ds: Any) -> tuple[list[str], list[str]]:
    """``(splits, metrics)`` of a 1D landscape's ``<split>_<metric>`` variables."""
    splits = sorted({v.split("_", 1)[0] for v in ds.data_vars})
    metrics: list[str] = []
    for v in ds.data_vars:
        m = v.split("_", 1)[1] if "_" in v else v
        if m not in metrics:
            metrics.append(m)
    return splits, metrics


def landscape_figures(
    land: Any,
    folder: str | Path,
    *,
    variables: Sequence[str] | None = None,
    kinds: Sequence[str] = SURFACE_KINDS,
    log: bool = False,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Draw the figures of the landscape ``land`` into ``folder``; returns the written files.

    1D landscapes: ``line.<format>`` and ``line.html``. 2D landscapes: for each of
    ``variables`` (default: :func:`default_variables`) and each of ``kinds``,
    ``<var>_<kind>.<format>`` (contour, filled, heatmap, 3d), ``<var>_surface.html`` (html)
    and ``<var>.vtp`` (vtp). With ``log`` every name ends in :data:`LOG_SUFFIX`
    (``line-log.png``, ``train_loss_contour-log.png``): the linear-scale files stay. Loss
    contours have :func:`default_levels`.
    """
    from basinscope.plotting.interactive import line_figure, surface_html
    from basinscope.plotting.io import save_figure
    from basinscope.plotting.lines import plot_line
    from basinscope.plotting.surfaces import plot_contour, plot_surface3d
    from basinscope.plotting.vtp import write_vtp
    from basinscope.store.atomic import atomic_path

    ds, out = land.dataset, Path(folder)
    unknown = [k for k in kinds if k not in SURFACE_KINDS]
    if unknown:
        raise BasinscopeError(
            f"unknown figure kinds {unknown}: expected some of {', '.join(SURFACE_KINDS)}"
        )
    names = list(variables) if variables else default_variables(ds)
    missing = [v for v in names if v not in ds.data_vars]
    if missing:
        where = getattr(land, "run_dir", None) or "the landscape"
        raise BasinscopeError(f"{where} has no variables {missing}; it has {sorted(ds.data_vars)}")
    written: list[Path] = []
    sfx = LOG_SUFFIX if log else ""
    if "beta" not in ds.dims:
        splits, metrics = line_groups(ds)
        fig, _ = plot_line(ds, metrics=metrics, splits=splits, log=log)
        written += save_figure(fig, out / f"line{sfx}", formats)
        html = out / f"line{sfx}.html"
        with atomic_path(html, "figure") as tmp:
            line_figure(ds, metrics=metrics, splits=splits, log=log).write_html(
                tmp, include_plotlyjs=True, full_html=True
            )
        written.append(html)
        return written
    trajectories = trajectories_of(land)
    for var in names:
        for kind in kinds:
            stem = out / f"{var}_{kind}{sfx}"
            if kind in ("contour", "filled", "heatmap"):
                fig, _ = plot_contour(
                    ds,
                    var,
                    kind=kind,
                    log=log,
                    levels=default_levels(var, log),
                    trajectories=trajectories,
                )
                written += save_figure(fig, stem, formats)
            elif kind == "3d":
                fig, _ = plot_surface3d(ds, var, log=log)
                written += save_figure(fig, stem, formats)
            elif kind == "html":
                written.append(
                    surface_html(
                        ds,
                        var,
                        out / f"{var}_surface{sfx}.html",
                        log=log,
                        trajectories=trajectories,
                    )
                )
            elif kind == "vtp":
                written.append(write_vtp(ds, var, out / f"{var}{sfx}.vtp", log=log))
    return written


def render_landscape(
    land: Any,
    folder: str | Path,
    *,
    variables: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    log: bool = False,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Every figure of the landscape ``land`` in ``folder``: the result's own figure
    (:func:`basinscope.plotting.plot`, ``landscape.<format>``) and :func:`landscape_figures`
    of every kind; with ``variables`` or ``kinds``, only the figures asked for. With
    ``log``, only the log-scaled figures (named ``...-log``; the own figure has no log
    scale, and the linear-scale files are left as they are)."""
    from basinscope.plotting.io import save_figure

    others = landscape_figures(
        land, folder, variables=variables, kinds=kinds or SURFACE_KINDS, log=log, formats=formats
    )
    if variables or kinds or log:
        return others
    stem = Path(folder) / land.kind
    same = _same_figure(land, Path(folder), log)
    if same is not None:  # drawn already: copy its files instead of drawing it again
        return _copy_figure(same, stem, formats) + others
    from basinscope.plotting.dispatch import plot

    fig, _ = plot(land)
    return save_figure(fig, stem, formats) + others


def _same_figure(land: Any, folder: Path, log: bool) -> Path | None:
    """The stem of a figure of :func:`landscape_figures` that is the landscape's own
    figure (``plot(land)``) exactly, or None: a plane's own figure is the contour of its
    first loss with the trajectories, a line's the line plot, both without ``log``."""
    if land.kind != "landscape" or log:
        return None
    ds = land.dataset
    if "beta" not in ds.dims:
        return folder / "line"
    return folder / f"{default_variables(ds)[0]}_contour"


def _copy_figure(source: Path, stem: Path, formats: Sequence[str]) -> list[Path]:
    import shutil

    from basinscope.store.atomic import atomic_path

    written = []
    for fmt in (f.lower().lstrip(".") for f in formats):
        path = stem.parent / f"{stem.name}.{fmt}"
        with atomic_path(path, "figure") as tmp:
            shutil.copyfile(source.parent / f"{source.name}.{fmt}", tmp)
        written.append(path)
    return written


def render_run(
    run_dir: str | Path,
    *,
    variables: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    log: bool = False,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Draw the figures of a finished run from its stored result.

    Any run: its result's figure (basinscope.plotting.plot) as figures/<kind>. Landscapes
    (`basinscope interpolate`, `surface`, `hessian --map`) also get, as their commands draw
    them: 1D, loss and accuracy on twin axes (train solid, test dashed) and an interactive HTML
    version; 2D, per variable, contour, filled contour, heatmap, 3D surface, an interactive
    plotly surface (.html) and a ParaView .vtp file, with projected trajectories drawn;
    loss contours have quantile levels (each colour band holds about as many grid points).
    --var and --kind (`variables`, `kinds`) draw only the landscape figures asked for. --log
    (`log`) draws the landscape figures with log-scaled values and log-spaced levels into
    files named with a -log suffix (line-log.png, train_loss_contour-log.png), beside the
    linear-scale ones, which stay. Files go to RUN_DIR/figures; their paths are returned.
    """
    from basinscope.store import load, paths

    return render_result(
        load(run_dir),
        Path(run_dir) / paths.FIGURES,
        variables=variables,
        kinds=kinds,
        log=log,
        formats=formats,
    )


def render_result(
    result: Any,
    folder: str | Path,
    *,
    variables: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    log: bool = False,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Every figure of ``result`` in ``folder`` (see :func:`render_run`): a landscape's
    figures (:func:`render_landscape`), else ``plot(result)`` as ``<kind>.<format>``."""
    from basinscope.plotting.dispatch import plot
    from basinscope.plotting.io import save_figure

    if result.kind == "landscape":
        return render_landscape(
            result, folder, variables=variables, kinds=kinds, log=log, formats=formats
        )
    fig, _ = plot(result)
    return save_figure(fig, Path(folder) / result.kind, formats)
