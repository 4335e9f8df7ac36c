"""Commands generated from specs: a :class:`Command` per analysis, one :func:`run_command`.

:func:`typer_command` turns a command's spec (option groups and the analysis's spec) into a
typer callback: each field is an option (flag, type, default and help from the field), plus
``--out``, ``--json``, ``--progress``, ``--plot`` and ``--wait``. :func:`run_command` names
and locks the run folder (``basinscope-runs/<command>-<spec digest>`` by default), calls
``run(spec, ctx)`` collecting warnings, saves the result and its figures, and prints
``to_dict()`` (``--json``) or ``result.summary()``. See ARCHITECTURE.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil
import textwrap
import typing
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from basinscope.errors import BasinscopeError
from basinscope.spec import Spec, _optional, named_by_flags, spec_hash

__all__ = ["Command", "Context", "default_figures", "run_command", "typer_command"]


@dataclass(frozen=True)
class Command:
    """A command of the ``basinscope`` CLI, generated from its spec (see the module doc).

    Its ``--help`` is ``about``'s docstring (the library's own documentation of the
    analysis: its definition, in the spec's option names), the ``--json`` paragraph listing
    ``result``'s fields, and ``examples``. After a run without ``--json`` it prints
    ``result.summary()``.
    """

    name: str
    spec: type[Spec]
    run: Callable[[Any, Context], Any]
    examples: str = ""
    about: Any = None
    result: type | None = None
    #: ``figures(result, spec, out) -> files``: the command's figures, drawn after the result
    #: is saved (default: every figure of the result, :func:`default_figures`)
    figures: Callable[[Any, Any, Path], list[Path]] | None = None

    @property
    def help(self) -> str:
        """The ``--help`` text (see the class docstring)."""
        parts = [inspect.getdoc(self.about) or ""] if self.about is not None else []
        if self.result is not None:
            parts.append(json_paragraph(self.result))
        text = re.sub(
            r":(?:func|class|meth|data|attr|mod):`~?([^`]+)`", r"`\1`", "\n\n".join(parts)
        )
        parts = [_reflow(p) for p in text.replace("``", "`").split("\n\n")]  # reST to terminal
        examples = textwrap.indent(textwrap.dedent(self.examples).strip(), "  ")
        return "\n\n".join([*parts, "Examples:", examples]) + "\n"


def _reflow(paragraph: str) -> str:
    """A prose paragraph on one line, for the terminal to wrap (typer keeps line breaks);
    lists and indented lines (formulas, code) keep theirs."""
    lines = paragraph.splitlines()
    if any(line[:1].isspace() or line.lstrip().startswith(("- ", "* ")) for line in lines):
        return paragraph
    return " ".join(line.strip() for line in lines)


def json_paragraph(result: type) -> str:
    """``--json``'s paragraph of the help: the result's kind and its stored fields."""
    from basinscope.result import _stored

    names = [f.name for f in dataclasses.fields(result) if _stored(f)]
    return (
        f"JSON (--json): the {result.kind} result: kind, schema, {', '.join(names)}. "
        "The run folder is --out; `basinscope plot` and `basinscope report` read it."
    )


@dataclass
class Context:
    """What a command's ``run`` gets besides its spec."""

    command: str
    spec: Spec
    out: Path
    progress: bool = True
    quiet: bool = False

    def say(self, msg: str) -> None:
        """Progress on stderr (silent with --json or --no-progress)."""
        if not self.quiet:
            typer.echo(msg, err=True)

    def open(self, fingerprints: dict[str, Any]) -> Any:
        """Open the run folder for this spec and these input fingerprints (a folder that
        holds a different run is refused, before any long work); returns the RunStore."""
        from basinscope.store import RunStore

        return RunStore.open(self.out, self.command, self.spec.to_dict(), fingerprints)


# -- the shared part of every command -------------------------------------------------------
def run_command(
    cmd: Command,
    spec: Spec,
    *,
    out: Path | None = None,
    json_out: bool = False,
    progress: bool = True,
    plot: bool = True,
    wait: bool = False,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> Any:
    """Run ``cmd`` with ``spec`` end to end (see the module docstring); returns the result.

    ``executor``, ``address`` and ``workers`` say where the command's chunks run
    (:func:`basinscope.engine.make_executor`); they change where, not what, so they are not
    part of the spec or of the run folder's digest."""
    from basinscope.cli.common import emit_json, hold_out_folder, info
    from basinscope.engine.executors import make_executor, use_executor
    from basinscope.store import paths, save

    runner = make_executor(executor, address=address, workers=workers)  # checked up front

    out = Path(out or paths.default_run_dir(cmd.name, spec_hash(cmd.name, spec)))
    existed = out.exists() and any(out.iterdir())
    hold_out_folder(out, wait)
    ctx = Context(
        cmd.name, spec, out, progress=progress and not json_out, quiet=json_out or not progress
    )
    notes: list[str] = []
    with _warnings_as_notes(notes, info), use_executor(runner):
        try:
            result = cmd.run(spec, ctx)
        except BasinscopeError:
            if not existed:  # a corrected command must not meet a half-made folder
                _clear(out)
            raise
    extra = {"command": {"name": cmd.name, **spec.to_dict()}, "warnings": notes}
    save(result, out, extra={**extra, "executor": runner.describe()})
    figures = (cmd.figures or default_figures)(result, spec, out) if plot else []
    if json_out:
        emit_json(result.to_dict())
        return result
    for line in result.summary():
        info(line)
    shown = (
        [f"figures: {Path(figures[0]).parent} ({len(figures)} files)"]
        if len(figures) > 2
        else [f"figure: {f}" for f in figures]
    )
    for line in shown:
        info(line)
    info(f"run folder: {out}")
    return result


def _clear(out: Path) -> None:
    for p in out.iterdir():
        if p.name.startswith("."):
            continue  # the lock file: released (and removed) when the command ends
        shutil.rmtree(p) if p.is_dir() else p.unlink()


@contextmanager
def _warnings_as_notes(notes: list[str], say: Callable[[str], None]) -> Iterator[None]:
    """The analyses' warnings as ``warning:`` lines, collected into the manifest."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                if not issubclass(w.category, (UserWarning, RuntimeWarning)):
                    continue
                msg = " ".join(str(w.message).split())
                if msg not in notes:
                    notes.append(msg)
                    say(f"warning: {msg}")


def default_figures(result: Any, spec: Spec, out: Path) -> list[Path]:
    """Every figure of the result in ``figures/`` (:func:`basinscope.plotting.run.render_result`)."""
    from basinscope.plotting.run import render_result
    from basinscope.store import paths

    return render_result(result, out / paths.FIGURES)


# -- typer callbacks from specs ------------------------------------------------------------
@dataclass(frozen=True)
class _Flat:
    """One command-line option: the path of its field through the nested specs."""

    path: tuple[str, ...]
    field: dataclasses.Field
    tp: Any


def flat_fields(cls: type[Spec], prefix: tuple[str, ...] = ()) -> list[_Flat]:
    """Every command-line field of ``cls``, nested option groups flattened, in order."""
    hints = typing.get_type_hints(cls)
    out: list[_Flat] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and issubclass(tp, Spec):
            out += flat_fields(tp, (*prefix, f.name))
        elif f.metadata.get("cli", True):
            out.append(_Flat((*prefix, f.name), f, tp))
    # two groups may share a field name (a training and an evaluation batch_size) as long as
    # their flags differ (--batch-size, --eval-batch-size)
    flags = [_flag(x).split("/")[0] for x in out]
    dup = {n for n in flags if flags.count(n) > 1}
    if dup:
        raise TypeError(f"{cls.__name__}: options {sorted(dup)} appear in two option groups")
    return out


def _flag(x: _Flat) -> str:
    return x.field.metadata.get("flag") or "--" + x.path[-1].replace("_", "-")


def _typer_param(x: _Flat) -> inspect.Parameter:
    meta = x.field.metadata
    inner, _ = _optional(x.tp)
    default = x.field.default
    help_ = meta.get("help", "")
    if meta.get("choices"):
        help_ += f" One of: {', '.join(map(str, meta['choices']))}."
    flag = _flag(x)
    if meta.get("parse") is not None:
        annotation: Any = typing.Optional[str]
        default = None
    elif typing.get_origin(inner) is tuple:
        annotation = list[typing.get_args(inner)[0]]
        default = list(default or ())
    elif inner is bool:
        annotation = bool
        flag = flag if "/" in flag else f"{flag}/--no-{flag[2:]}"
    else:
        annotation = typing.Optional[inner] if default is None else inner
    opt = typer.Option(default, flag, help=escape(help_), metavar=meta.get("metavar"))
    return inspect.Parameter(
        "_".join(x.path), inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation
    )


def _build(cls: type[Spec], values: dict[str, Any], prefix: tuple[str, ...] = ()) -> Spec:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = (*prefix, f.name)
        if isinstance(tp, type) and issubclass(tp, Spec):
            kwargs[f.name] = _build(tp, values, path)
            continue
        key = "_".join(path)
        if key not in values:
            continue
        v = values[key]
        parse = f.metadata.get("parse")
        if parse is not None:
            v = f.default if v is None else parse(v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def _output_options() -> dict[str, tuple[Any, Any]]:
    """The options every command has besides its spec's: name -> (annotation, option)."""
    from basinscope.cli.common import WAIT_OPT, out_callback

    out_help = (
        "Run folder (default: basinscope-runs/<command>-<digest of the settings>); the same "
        "command and --out resume or reuse it."
    )
    return {
        "out": (Path | None, typer.Option(None, "--out", help=out_help, callback=out_callback)),
        "json_out": (
            bool,
            typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
        ),
        "progress": (
            bool,
            typer.Option(True, "--progress/--no-progress", help="Show progress on stderr."),
        ),
        "plot": (
            bool,
            typer.Option(True, "--plot/--no-plot", help="Draw the result into RUN/figures."),
        ),
        "wait": (bool, WAIT_OPT),
        **executor_options(),
    }


def executor_options() -> dict[str, tuple[Any, Any]]:
    """``--executor``, ``--address`` and ``--workers``: where a command's chunks (and a
    study's stages) run; every command and study has them (:mod:`basinscope.engine.executors`)."""
    from basinscope.engine.executors import EXECUTORS

    return {
        "executor": (
            str,
            typer.Option(
                "local",
                "--executor",
                help="Where chunked work runs (surfaces, lines, curvature maps, criticality "
                "grids, barriers, basin Monte Carlo, a study's stages): local (this process) "
                "or ray (Ray actors; needs the ray extra). Results are the same bit for bit. "
                f"One of: {', '.join(EXECUTORS)}.",
            ),
        ),
        "address": (
            str | None,
            typer.Option(
                None,
                "--address",
                help="With --executor ray: an existing Ray cluster (auto, HOST:6379 or "
                "ray://HOST:10001); default: start a local one.",
            ),
        ),
        "workers": (
            int | None,
            typer.Option(
                None,
                "--workers",
                help="With --executor ray: the number of Ray workers (actors); default: one "
                "per CPU of the cluster (per GPU for a CUDA device).",
            ),
        ),
    }


def typer_command(cmd: Command) -> Callable[..., None]:
    """A typer callback for ``cmd``: the spec's options and the output options."""
    output = _output_options()
    params = [_typer_param(x) for x in flat_fields(cmd.spec)] + [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t)
        for n, (t, o) in output.items()
    ]

    def callback(**kwargs: Any) -> None:
        out_opts = {n: kwargs.pop(n) for n in output}
        with named_by_flags():
            spec = _build(cmd.spec, kwargs)
        run_command(cmd, spec, **out_opts)

    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__doc__ = escape(cmd.help)  # typer renders rich markup: "matrix[i, j]" is text
    callback.__name__ = f"{cmd.name}_cmd"
    return callback
