"""The ``basinscope`` command."""

from __future__ import annotations

import sys
import traceback

import typer

from basinscope.cli import barrier, curvature, curves, dynamics, landscape, plot, train, transfer
from basinscope.cli import demo as demo_cmd
from basinscope.cli.generate import typer_command
from basinscope.errors import internal_error_note, user_message

app = typer.Typer(
    name="basinscope",
    help=(
        "See, measure and compare the loss landscapes of neural networks: lines and planes "
        "through parameter space, with the definitions stated and every run resumable.\n\n"
        "Start with `basinscope demo`. Every command takes --help; --json prints one JSON "
        "object on stdout."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for cmd in (
    train.TRAIN,
    landscape.INTERPOLATE,
    landscape.SURFACE,
    curvature.HESSIAN,
    curvature.SHARPNESS,
    barrier.BARRIER,
    dynamics.INSTABILITY,
    barrier.BASIN,
    curves.CURVE,
    curves.ALIGN,
    dynamics.ENSEMBLE,
    transfer.SIMILARITY,
    transfer.DISTANCE,
    transfer.REWIND,
    transfer.CRITICALITY,
    transfer.FINETUNE,
):
    app.command(cmd.name)(typer_command(cmd))
app.command("plot")(plot.plot_cmd)
app.command("demo")(demo_cmd.demo_cmd)
app.command("study")(demo_cmd.study_cmd)
app.command("report")(demo_cmd.report_cmd)


INTERRUPTED = (
    "interrupted: finished chunks are saved in the run folder; run the same command again to resume"
)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the error boundary of every command.

    A user-caused failure (see :func:`basinscope.errors.user_message`) prints one line
    ``error: <what was expected, what was found, how to fix it>`` on stderr and exits with
    status 2, with no traceback; a command-line parse error prints click's usage message
    (status 2); Ctrl-C says how to resume (status 130). Anything else is a bug: the
    traceback is printed with a line asking to report it, and the status is 1.
    """
    from basinscope.spec import named_by_flags

    try:
        with named_by_flags():  # checks of settings name them as the user typed them
            rc = app(args=argv, standalone_mode=False)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        # usage errors of the command-line parser (click's ClickException, vendored by typer)
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        message = user_message(e)
        if message is not None:
            typer.echo(f"error: {message}", err=True)
            sys.exit(2)
        traceback.print_exc()
        typer.echo(internal_error_note(), err=True)
        sys.exit(1)
    if rc == 130:
        # typer catches Ctrl-C itself (KeyboardInterrupt -> exit status 130) and, with
        # standalone_mode=False, returns 130 instead of raising: say how to resume here too
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    if isinstance(rc, int) and rc:
        sys.exit(rc)
