"""``basinscope plot RUN_DIR``: redraw a run's figures from its stored result."""

from pathlib import Path

import typer

from basinscope.cli.common import WAIT_OPT, emit_json, hold_out_folder, info
from basinscope.plotting.run import render_run
from basinscope.store import RunStore


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
    RunStore.load(run_dir)  # a folder that is no run folder is refused before it is locked
    hold_out_folder(run_dir, wait)
    files = render_run(run_dir, variables=var or None, kinds=kind or None, log=log, formats=fmt)
    if json_out:
        return emit_json({"run_dir": str(run_dir), "figures": [str(f) for f in files]})
    for f in files:
        info(str(f))


# the help: render_run's documentation (indented as a docstring's body) and the examples
plot_cmd.__doc__ = f"""{render_run.__doc__}
    Examples:

      basinscope plot runs/surface

      basinscope plot runs/barrier --format svg

      basinscope plot runs/surface --var test_loss --kind filled --kind html --log
    """
