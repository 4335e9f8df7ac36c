"""``basinscope study``, ``basinscope demo`` and ``basinscope report``: registered studies,
run end to end on built-in data, and their reports."""

from __future__ import annotations

from pathlib import Path

import typer

from basinscope.cli.common import WAIT_OPT, emit_json, info
from basinscope.store.atomic import check_writable_folder

STUDY_HELP = """Run a registered study: every stage is stored under --out/stages (folders
named by a hash of their settings) and reused when a study runs again, so an
interrupted study resumes and a changed setting recomputes only what depends on
it. The run folder --out/<study>-<hash of the configuration> gets report.html
(self-contained, works offline), figures/ (PNG and PDF) and results.json (every
number in the report).

Settings: the study's defaults, then --quick's reductions (then --smoke's: every
stage and figure in seconds, numbers too small to mean anything), then --config
FILE.toml (keys at the top level or in a [<study>] table), then each --set
key=value (TOML values: 3, 0.1, true, "ft", [0, 15, 35]). `basinscope study
--list` shows the studies; `basinscope study NAME --show-config` their settings.

Examples:

  basinscope study --list

  basinscope study rotated-digits

  basinscope study rotated-digits --quick --set angles=[0,90] --set grid=11

  basinscope study flatness-vs-batch-size --config my-settings.toml

  basinscope study skip-connections --show-config
"""

DEMO_HELP = """The main job: `basinscope study rotated-digits` with its defaults. Pre-trains a
LeNet on upright digits, fine-tunes it on digits rotated by 0-90 degrees with
FT, LP, LP-FT and (landscape-guided) surgical fine-tuning from the pre-trained
start and from a random start, and writes an HTML report: adaptation vs.
forgetting, 2D landscapes with the fine-tuning trajectories, the extrapolated
path pre-trained -> fine-tuned, barriers, distances and CKA, module criticality,
and the curvature of each solution, with a summary table.

Runs on a 2-core CPU in a few minutes (--quick: under one). Every stage is stored
under --out and reused when the demo runs again.

Examples:

  basinscope demo

  basinscope demo --quick

  basinscope demo --set angles=[0,45,90] --out runs/demo
"""

REPORT_HELP = """Write report.html for a finished run folder from its stored results; nothing is
recomputed. A study's run folder gets the study's report (from results.json and the stage
folders); the folder of any other command gets a page with the result's definition, every
number, its figure, the settings and the inputs' fingerprints.

Examples:

  basinscope report basinscope-runs/rotated-digits-1a2b3c4d5e

  basinscope report runs/barrier
"""

OUT = typer.Option(
    Path("basinscope-runs"),
    "--out",
    help="Output root: stages/ (shared, reused) and one run folder per configuration.",
)
SETS = typer.Option(
    None,
    "--set",
    help="Override a setting, key=value (TOML value syntax); repeatable.",
)
CONFIG = typer.Option(None, "--config", help="A TOML file of settings.")
QUICK = typer.Option(False, "--quick", help="The reduced version (about a minute).")
SMOKE = typer.Option(
    False,
    "--smoke",
    help="The smoke version: every stage and figure in seconds, with numbers too small to "
    "mean anything (pipeline checks and tests).",
)
JSON = typer.Option(False, "--json", help="Print the results as one JSON object on stdout.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")


def _run(name, out, sets, config, quick, smoke, json_out, progress, show_config=False, wait=False):
    from basinscope.experiments.registry import config_dict, make_config, run_study

    cfg = make_config(name, quick=quick, smoke=smoke, toml=config, sets=list(sets or []))
    if show_config:
        emit_json(config_dict(cfg)) if json_out else _print_config(cfg)
        return
    check_writable_folder(out)
    results = run_study(
        name,
        out,
        cfg,
        progress=progress and not json_out,
        say=lambda m: info(m, json_out),
        wait=wait,
    )
    if json_out:
        emit_json(results)
        return
    reused = sum(r["reused"] for r in results["stages"])
    info(
        f"\n{len(results['stages'])} stages ({reused} reused) in {results['seconds']} s"
        f"\nreport: {results['report']}\nall numbers: {Path(results['run_dir']) / 'results.json'}"
    )


def _print_config(cfg) -> None:
    from basinscope.experiments.registry import config_dict

    for k, v in config_dict(cfg).items():
        typer.echo(f"{k} = {v!r}")


def study_cmd(
    name: str = typer.Argument(None, help="The study (see --list)."),
    list_: bool = typer.Option(False, "--list", help="List the registered studies and exit."),
    show_config: bool = typer.Option(
        False, "--show-config", help="Print the resulting settings and exit (nothing runs)."
    ),
    out: Path = OUT,
    sets: list[str] = SETS,
    config: Path = CONFIG,
    quick: bool = QUICK,
    smoke: bool = SMOKE,
    json_out: bool = JSON,
    progress: bool = PROGRESS,
    wait: bool = WAIT_OPT,
) -> None:
    from basinscope.errors import BasinscopeError
    from basinscope.experiments.registry import list_studies

    if list_:
        studies = list_studies()
        if json_out:
            emit_json([{"name": s.name, "summary": s.summary} for s in studies])
            return
        for s in studies:
            typer.echo(f"{s.name:<24} {s.summary}")
        return
    if name is None:
        names = ", ".join(s.name for s in list_studies())
        raise BasinscopeError(
            f"which study? Give its name (registered: {names}), e.g. `basinscope study rotated-digits`"
        )
    _run(name, out, sets, config, quick, smoke, json_out, progress, show_config, wait)


def demo_cmd(
    out: Path = OUT,
    sets: list[str] = SETS,
    config: Path = CONFIG,
    quick: bool = QUICK,
    smoke: bool = SMOKE,
    json_out: bool = JSON,
    progress: bool = PROGRESS,
    wait: bool = WAIT_OPT,
) -> None:
    _run("rotated-digits", out, sets, config, quick, smoke, json_out, progress, wait=wait)


def report_cmd(
    run_dir: Path = typer.Argument(
        ..., help="A run folder written by any basinscope command, study or demo."
    ),
    json_out: bool = JSON,
    wait: bool = WAIT_OPT,
) -> None:
    from basinscope.experiments.registry import rebuild_report
    from basinscope.report.run import run_report

    if (Path(run_dir) / "study.json").is_file():
        path = rebuild_report(run_dir, wait=wait)
    else:
        path = run_report(run_dir)
    if json_out:
        emit_json({"report": str(path)})
    else:
        info(f"report: {path}")


study_cmd.__doc__ = STUDY_HELP
demo_cmd.__doc__ = DEMO_HELP
report_cmd.__doc__ = REPORT_HELP
