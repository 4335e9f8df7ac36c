"""``basinscope plot RUN_DIR``: redraw a run's figures from its stored results."""

from __future__ import annotations

from pathlib import Path

import typer

from basinscope.cli.common import WAIT_OPT, emit_json, hold_out_folder, info

HELP = """Draw the figures of a finished run from its stored results.

1D runs: loss and accuracy on twin axes (train solid, test dashed) and an
interactive HTML version. 2D runs: contour, filled contour, heatmap, 3D surface,
an interactive plotly surface (.html) and a ParaView .vtp file, with projected
trajectories drawn. Any other command's run: its result's figure
(basinscope.plotting.plot). Files go to RUN_DIR/figures.

Examples:

  basinscope plot runs/surface

  basinscope plot runs/barrier --format svg

  basinscope plot runs/surface --var test_loss --kind filled --kind html --log
"""


def plot_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder written by a basinscope command."),
    var: list[str] = typer.Option(
        [], "--var", help="Variable to draw, e.g. train_loss (repeatable; default: every loss)."
    ),
    kind: list[str] = typer.Option(
        [], "--kind", help="contour, filled, heatmap, 3d, html or vtp (repeatable; default: all)."
    ),
    log: bool = typer.Option(False, "--log", help="Log-scale the values."),
    fmt: list[str] = typer.Option(
        ["png", "pdf"], "--format", help="Static figure formats (png, pdf, svg)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
    wait: bool = WAIT_OPT,
) -> None:
    from basinscope.errors import BasinscopeError
    from basinscope.plotting.run import SURFACE_KINDS, render_run
    from basinscope.store import RunStore

    kind_of_run = RunStore.load(run_dir).kind
    manifest = RunStore.load(run_dir).manifest
    if kind_of_run != "landscape" and (manifest.get("result") or {}).get("kind"):
        # any command's result: its figure, from basinscope.plotting.plot
        from basinscope.plotting import plot
        from basinscope.plotting.io import save_figure
        from basinscope.store import load, paths

        hold_out_folder(run_dir, wait)
        result = load(run_dir)
        fig, _ = plot(result)
        files = save_figure(fig, Path(run_dir) / paths.FIGURES / result.kind, fmt)
    elif kind_of_run != "landscape":
        # e.g. a `basinscope train` folder: it has a manifest but never any results.zarr,
        # and "run the original command again to finish it" would send the user in circles
        raise BasinscopeError(
            f"{run_dir} holds a {kind_of_run} run, which has no landscape to draw; "
            "`basinscope plot` draws runs written by `basinscope interpolate` or "
            "`basinscope surface` (a train run's loss curve is in its figures/ folder)"
        )
    else:
        hold_out_folder(run_dir, wait)
        files = render_run(
            run_dir, variables=var or None, kinds=kind or SURFACE_KINDS, log=log, formats=fmt
        )
    if json_out:
        emit_json({"run_dir": str(run_dir), "figures": [str(f) for f in files]})
    else:
        for f in files:
            info(str(f))


plot_cmd.__doc__ = HELP
