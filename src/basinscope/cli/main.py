"""The ``basinscope`` command."""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from basinscope.errors import internal_error_note, user_message

#: Every command: name -> (module, attribute, the summary ``basinscope --help`` lists). A
#: command's module (and with it torch and the analysis it runs) is imported only when the
#: command runs or shows its own --help, so ``basinscope --help`` starts fast; the attribute
#: is a generated :class:`~basinscope.cli.generate.Command` or a typer callback. Each
#: summary is the first sentence of the command's own help (a test checks that).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": (
        "basinscope.cli.train",
        "TRAIN",
        "Train a model deterministically and save its weights and trajectory.",
    ),
    "interpolate": (
        "basinscope.cli.landscape",
        "INTERPOLATE",
        "The 1D landscape between two models, or along a random normalized direction.",
    ),
    "surface": (
        "basinscope.cli.landscape",
        "SURFACE",
        "The 2D landscape f(alpha, beta) = L(theta* + alpha delta + beta eta).",
    ),
    "hessian": (
        "basinscope.cli.curvature",
        "HESSIAN",
        "Hessian spectrum of the mean training loss: both ends, trace, density, per layer.",
    ),
    "sharpness": (
        "basinscope.cli.curvature",
        "SHARPNESS",
        "Sharpness of a minimum, by named measures, each with its definition recorded.",
    ),
    "barrier": (
        "basinscope.cli.barrier",
        "BARRIER",
        "The loss or error barrier on the straight line between trained models.",
    ),
    "instability": (
        "basinscope.cli.dynamics",
        "INSTABILITY",
        "Instability analysis (Frankle et al. 2020): are children of one parent linearly "
        "connected?",
    ),
    "basin": (
        "basinscope.cli.barrier",
        "BASIN",
        "Is the convex hull of the solutions an (epsilon, delta)-basin? (Monte Carlo test)",
    ),
    "curve": (
        "basinscope.cli.curves",
        "CURVE",
        "Train a low-loss curve between two models (Garipov et al. 2018) and compare it with "
        "the line.",
    ),
    "align": (
        "basinscope.cli.curves",
        "ALIGN",
        "Permute the hidden units of model B to align it with model A, and the barrier it removes.",
    ),
    "ensemble": (
        "basinscope.cli.dynamics",
        "ENSEMBLE",
        "Ensembles from one run (FGE, SWA) or independent ensembles, with their budget.",
    ),
    "calibrate": (
        "basinscope.cli.calibration",
        "CALIBRATE",
        "Temperature scaling of a model or an ensemble, with NLL, accuracy, ECE, Brier score "
        "and classwise ECE before and after.",
    ),
    "similarity": (
        "basinscope.cli.transfer",
        "SIMILARITY",
        "CKA similarity between the layers of two models.",
    ),
    "distance": (
        "basinscope.cli.transfer",
        "DISTANCE",
        "Parameter distance between two models, per module; optionally their shared mistakes.",
    ),
    "rewind": (
        "basinscope.cli.transfer",
        "REWIND",
        "Rewind one module at a time to its initial value and measure the damage.",
    ),
    "criticality": (
        "basinscope.cli.transfer",
        "CRITICALITY",
        "Module criticality and network criticality (Chatterji, Neyshabur & Sedghi 2020).",
    ),
    "finetune": (
        "basinscope.cli.transfer",
        "FINETUNE",
        "Fine-tune a pretrained model on a shifted target; forgetting and adaptation.",
    ),
    "merge": (
        "basinscope.cli.merging",
        "MERGE",
        "Merge models fine-tuned from one base, with a named method (the formula is recorded).",
    ),
    "merge-decomposition": (
        "basinscope.cli.merging",
        "MERGE_DECOMPOSITION",
        "The error decomposition of subspace merges per task and rank.",
    ),
    "plot": (
        "basinscope.cli.plot",
        "plot_cmd",
        "Draw the figures of a finished run from its stored result.",
    ),
    "demo": (
        "basinscope.cli.demo",
        "demo_cmd",
        "The main job: `basinscope study rotated-digits` with its defaults.",
    ),
    "study": (
        "basinscope.cli.demo",
        "study_cmd",
        "Run a registered study: every stage is stored under --out/stages (folders named by "
        "a hash of their settings) and reused when a study runs again, so an interrupted "
        "study resumes and a changed setting recomputes only what depends on it.",
    ),
    "report": (
        "basinscope.cli.demo",
        "report_cmd",
        "Write report.html for a finished run folder from its stored results; nothing is "
        "recomputed.",
    ),
}


def load_command(name: str) -> Any:
    """The click command ``name`` (of :data:`COMMANDS`), its module imported now."""
    from basinscope.cli.generate import Command, typer_command

    module, attr, _ = COMMANDS[name]
    obj = getattr(importlib.import_module(module), attr)
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(name)(typer_command(obj) if isinstance(obj, Command) else obj)
    return typer.main.get_command(one)  # a typer app of one command is that command


class LazyCommands(TyperGroup):
    """The ``basinscope`` group: it lists :data:`COMMANDS` from their summaries and imports
    a command's module only to run it (or to show its own --help)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        # for the listing of `basinscope --help`: the summary, nothing imported
        return TyperCommand(cmd_name, help=COMMANDS[cmd_name][2])

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        if name in COMMANDS and name not in self.commands:
            self.commands[name] = load_command(name)
        return name, self.commands.get(name, cmd), rest


app = typer.Typer(
    name="basinscope",
    cls=LazyCommands,
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


@app.callback()
def _group() -> None:
    """The group itself takes no options (typer needs a callback for a group whose
    commands it does not hold)."""


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
