"""``basinscope study``, ``demo`` and ``report``: registered studies, run end to end on built-in
data, and their reports. What they do is documented in :mod:`basinscope.experiments.registry`
(``ABOUT``, each study's ``about``, ``build_report``); here are their options and examples."""

from __future__ import annotations

import inspect
from inspect import Parameter as P
from pathlib import Path
from typing import Any

import typer

from basinscope.cli.common import WAIT_OPT, emit_json, info
from basinscope.cli.generate import executor_options
from basinscope.engine.executors import make_executor
from basinscope.experiments import registry
from basinscope.experiments.results import StudyResult
from basinscope.store import paths
from basinscope.store.atomic import check_writable_folder

HELP = {  # each option's help, by flag (arguments by name)
    "NAME": "The study (see --list).",
    "--list": "List the registered studies and exit.",
    "--show-config": "Print the resulting settings and exit (nothing runs).",
    "RUN_DIR": "A run folder written by any basinscope command, study or demo.",
    "--out": "Output root: stages/ (shared, reused) and one run folder per configuration.",
    "--set": "Override a setting, key=value (TOML value syntax); repeatable.",
    "--config": "A TOML file of settings.",
    "--quick": "The reduced version (about a minute).",
    "--smoke": "The smoke version: every stage and figure in seconds, with numbers too small to mean anything (pipeline checks and tests).",
    "--json": "Print the results as one JSON object on stdout.",
    "--progress/--no-progress": "Show progress bars on stderr.",
    "--device": "Torch device of the study's computations: cpu, cuda, cuda:N or mps (the setting device; default cpu).",
    "--dtype": "Precision of the evaluations: float32 or float64 (the setting dtype; default float32; Hessians stay float64).",
    "--threads": "Torch CPU threads the stages compute with (default: OMP_NUM_THREADS, else the cores this process may use, at most 4; recorded in the manifest, not part of any folder's digest; float32 training may differ in its last bits at another count).",
}
# (parameter, type, default, flag): the options of study and demo (RUN), study's own, report's
RUN = [("out", Path, Path(paths.DEFAULT_ROOT), "--out"), ("sets", list[str], None, "--set")]
RUN += [("config", Path, None, "--config"), ("quick", bool, False, "--quick")]
RUN += [("smoke", bool, False, "--smoke"), ("json_out", bool, False, "--json")]
RUN += [("progress", bool, True, "--progress/--no-progress")]
RUN += [("device", str, None, "--device"), ("dtype", str, None, "--dtype")]
RUN += [("threads", int, None, "--threads")]
STUDY = [("name", str, None, "NAME"), ("list_", bool, False, "--list")]
STUDY += [("show_config", bool, False, "--show-config"), *RUN]
REPORT = [("run_dir", Path, ..., "RUN_DIR"), ("json_out", bool, False, "--json")]
# --executor, --address, --workers: where the stages run (the same options as every command's)
EXECUTOR = executor_options()


def _command(
    fn: Any, params: list[tuple[str, Any, Any, str]], about: str, extra: dict | None = None
) -> None:
    """Make ``fn(**kwargs)`` a typer command: its ``params``, the ``extra`` options (name ->
    (annotation, typer option)) and --wait; --help is ``about`` and then ``fn``'s docstring,
    which lists the examples (one command line each)."""

    def option(d: Any, flag: str) -> Any:  # flags in capitals name arguments
        if flag.isupper():
            return typer.Argument(d, help=HELP[flag])
        return typer.Option(d, flag, help=HELP[flag])

    sig = [P(n, P.KEYWORD_ONLY, default=option(d, f), annotation=t) for n, t, d, f in params]
    sig += [P(n, P.KEYWORD_ONLY, default=o, annotation=t) for n, (t, o) in (extra or {}).items()]
    sig.append(P("wait", P.KEYWORD_ONLY, default=WAIT_OPT, annotation=bool))
    fn.__signature__ = inspect.Signature(sig)
    fn.__annotations__ = {p.name: p.annotation for p in sig}
    examples = "\n\n".join(f"  basinscope {e.strip()}" for e in fn.__doc__.strip().splitlines())
    fn.__doc__ = f"{inspect.cleandoc(about)}\n\nExamples:\n\n{examples}\n"


def _run(
    name,
    out,
    sets,
    config,
    quick,
    smoke,
    json_out,
    progress,
    device,
    dtype,
    threads,
    wait,
    executor="local",
    address=None,
    workers=None,
    show_config=False,
):
    cfg = registry.make_config(
        name,
        quick=quick,
        smoke=smoke,
        toml=config,
        sets=list(sets or []),
        device=device,
        dtype=dtype,
    )
    settings = registry.config_dict(cfg)
    if show_config and json_out:
        return emit_json(settings)
    if show_config:
        return typer.echo("\n".join(f"{k} = {v!r}" for k, v in settings.items()))
    registry.check_threads(name, cfg, threads)
    if threads is None and getattr(cfg, "threads", None) is None:  # else the study's setting
        threads = registry.default_threads()
    runner = make_executor(executor, address=address, workers=workers)  # checked up front
    check_writable_folder(out)
    say, progress = (lambda m: info(m, json_out)), progress and not json_out
    res = registry.run_study(
        name, out, cfg, progress=progress, say=say, wait=wait, executor=runner, threads=threads
    )
    emit_json(res) if json_out else info("\n" + "\n".join(StudyResult(res).summary()))


def study_cmd(name, list_, show_config, **run) -> None:
    """study --list
    study rotated-digits
    study rotated-digits --quick --set angles=[0,90] --set grid=11
    study flatness-vs-batch-size --device cuda --dtype float64
    study flatness-vs-batch-size --config my-settings.toml
    study rotated-digits --executor ray --workers 8
    study rotated-digits --threads 2
    study skip-connections --show-config"""
    studies = registry.list_studies()
    if list_ and run["json_out"]:
        emit_json([{"name": s.name, "summary": s.summary} for s in studies])
    elif list_:
        typer.echo("\n".join(f"{s.name:<24} {s.summary}" for s in studies))
    else:  # no name: make_config says which studies there are
        _run(name, **run, show_config=show_config)


def demo_cmd(**run) -> None:
    """demo
    demo --quick
    demo --set angles=[0,45,90] --out runs/demo
    demo --threads 1
    demo --executor ray --address auto"""
    _run(registry.DEMO, **run)


def report_cmd(run_dir: Path, json_out: bool, wait: bool) -> None:
    """report basinscope-runs/rotated-digits-1a2b3c4d5e
    report runs/barrier"""
    path = registry.build_report(run_dir, wait=wait)
    emit_json({"report": str(path)}) if json_out else info(f"report: {path}")


_command(study_cmd, STUDY, registry.ABOUT, EXECUTOR)
demo = registry.get_study(registry.DEMO)
_command(
    demo_cmd,
    RUN,
    f"The main job: `basinscope study {demo.name}` with its defaults. {demo.about}",
    EXECUTOR,
)
_command(report_cmd, REPORT, inspect.getdoc(registry.build_report))
