"""``basinscope plot RUN_DIR``: redraw a run's figures from its stored result."""

from __future__ import annotations

from pathlib import Path

import typer

from basinscope.cli.common import WAIT_OPT, emit_json, hold_out_folder, info

HELP = """Draw the figures of a finished run from its stored result.

Any run: its result's figure (basinscope.plotting.plot) as figures/<kind>. Landscapes
(`basinscope interpolate`, `surface`, `hessian --map`) also get, as their commands draw
them: 1D, loss and accuracy on twin axes (train solid, test dashed) and an interactive HTML
version; 2D, per variable, contour, filled contour, heatmap, 3D surface, an interactive
plotly surface (.html) and a ParaView .vtp file, with projected trajectories drawn. --var
and --kind draw only the landscape figures asked for. Files go to RUN_DIR/figures.

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
    from basinscope.plotting import plot
    from basinscope.plotting.io import save_figure
    from basinscope.plotting.run import render_landscape
    from basinscope.store import RunStore, load, paths

    RunStore.load(run_dir)  # a folder that is no run folder is refused before it is locked
    hold_out_folder(run_dir, wait)
    result = load(run_dir)
    figures = Path(run_dir) / paths.FIGURES
    if result.kind == "landscape":
        files = render_landscape(
            result, figures, variables=var or None, kinds=kind or None, log=log, formats=fmt
        )
    else:
        fig, _ = plot(result)
        files = save_figure(fig, figures / result.kind, fmt)
    if json_out:
        emit_json({"run_dir": str(run_dir), "figures": [str(f) for f in files]})
    else:
        for f in files:
            info(str(f))


plot_cmd.__doc__ = HELP
