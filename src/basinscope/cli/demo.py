"""``basinscope demo``: the rotated-digits transfer demo, end to end, on built-in data."""

from __future__ import annotations

from pathlib import Path

import typer

from basinscope.cli.common import emit_json, info, sanitize

HELP = """Pre-train a LeNet on upright digits, fine-tune it on rotated digits from the
pre-trained start and from a random start, and write an HTML report with the 1D path
(pre-trained -> fine-tuned, alpha in [-1, 2]) and the 2D landscapes of the source
and target losses with the fine-tuning trajectories drawn on them.

Runs on the CPU in a few minutes (--quick: well under one). Every stage is stored
under --out and reused when the demo runs again.

Examples:

  basinscope demo

  basinscope demo --rotation 60 --out runs/demo60

  basinscope demo --quick --json
"""


def demo_cmd(
    out: Path = typer.Option(
        Path("basinscope-runs/demo"),
        "--out",
        help="Output folder (stages, figures, report.html, results.json).",
    ),
    rotation: float = typer.Option(
        35.0, "--rotation", help="Rotation of the target digits in degrees."
    ),
    grid: int = typer.Option(
        None, "--grid", help="Points per axis of the 2D surfaces (default 21; --quick: 7)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A reduced version (fewer steps, coarse grids) for a fast check."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the results as one JSON object on stdout."
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show progress bars on stderr."
    ),
) -> None:
    from basinscope.errors import BasinscopeError
    from basinscope.experiments.rotated_digits import DemoConfig, run_demo

    overrides = {"rotation": rotation}
    if grid is not None:
        if grid < 2:
            raise BasinscopeError(f"--grid must be at least 2, got {grid}")
        overrides["grid"] = grid
    cfg = DemoConfig.quick(**overrides) if quick else DemoConfig(**overrides)
    results = run_demo(
        out, cfg, progress=progress and not json_out, log=lambda m: info(m, json_out)
    )
    if json_out:
        emit_json(sanitize(results))
        return
    info("")
    for row in results["adaptation_and_forgetting"]:
        info(
            f"{row['start']:>18}: target acc. {row['target acc. before']:.3f} -> {row['target acc. after']:.3f}, "
            f"source acc. {row['source acc. before']:.3f} -> {row['source acc. after']:.3f}, "
            f"moved {row['‖θ_ft − θ_start‖']:.2f} ({100 * row['relative distance']:.0f}% of ‖θ_start‖)"
        )
    info(
        f"\nreport: {results['report']}\nall numbers: {Path(out) / 'results.json'} ({results['seconds']} s)"
    )


demo_cmd.__doc__ = HELP
