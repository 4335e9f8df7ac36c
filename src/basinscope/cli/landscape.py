"""``basinscope interpolate`` and ``basinscope surface``: 1D and 2D landscapes.

Each is generated from its spec (:mod:`basinscope.cli.generate`): the model and data
option groups, the landscape function's spec (:class:`~basinscope.analyses.RandomLineSpec`,
:class:`~basinscope.analyses.RandomSurfaceSpec`) and the command's own files. The run
folder is the landscape's: it is journaled chunk by chunk (the same command resumes an
interrupted run) and holds a :class:`~basinscope.analyses.Landscape` result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope._checks import grid_range as parse_range
from basinscope._checks import split_names as parse_splits
from basinscope.analyses.interpolation import RandomLineSpec
from basinscope.analyses.landscape import grid_option
from basinscope.analyses.surface import RandomSurfaceSpec
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelOptions, load_model, model_spec
from basinscope.spec import Spec, group, option


def _splits(text: str) -> tuple[str, ...]:
    return tuple(parse_splits(text))


def _split_option() -> Any:
    return option(
        ("train", "test"),
        "Comma-separated splits to evaluate on, in one run (default train,test).",
        parse=_splits,
        metavar="SPLITS",
    )


LOG_HELP = "Log-scale losses in the figures."


def _inputs(cmd: Any, ctx: Context) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Model A, the splits, and the keywords every landscape function gets: the BatchNorm
    data, the run folder, progress, and what identifies the run's inputs."""
    m = cmd.model
    net = load_model(m.model, m.model_kwargs, m.weights)
    datasets = {s: cmd.data.load(s) for s in cmd.splits}
    identity = {
        **model_spec(m.model, m.model_kwargs, m.weights),
        **cmd.data.to_dict(),
        "splits": list(datasets),
    }
    kw = dict(
        bn_data=datasets["train"] if "train" in datasets else cmd.data.load("train"),
        run_dir=ctx.out,
        progress=ctx.progress,
        identity=identity,
    )
    return net, datasets, kw


def _summary(land: Any) -> list[str]:
    ev = land.evaluation
    lines = [
        f"{land.definition}: {ev.get('points')} points, strategy {ev.get('strategy')}, "
        f"{ev.get('points_per_second', float('nan')):.1f} points/s"
    ]
    for name, count in (ev.get("nonfinite") or {}).items():
        lines.append(f"note: {count} non-finite values of {name} recorded as they are (NaN/inf)")
    for name in land.dataset.data_vars:
        v = land.dataset[name].values
        lines.append(f"  {name}: min {_fmt(v.min())}, max {_fmt(v.max())}")
    return lines


def _figures(land: Any, cmd: Any, out: Path) -> list[Path]:
    from basinscope.plotting.run import render_landscape
    from basinscope.store import paths

    return render_landscape(land, out / paths.FIGURES, log=cmd.log)


def _fmt(x) -> str:
    return f"{float(x):.4g}"


# -- interpolate -----------------------------------------------------------------------------
INTERP_HELP = """The 1D landscape between two models, or along a random normalized direction.

f(alpha) = L((1 - alpha) theta_A + alpha theta_B) with extrapolation outside [0, 1], A the
--weights and B the --to model; without --to, f(alpha) = L(theta + alpha d) around the
--weights for a filter-normalized random d (or the first direction of --directions).
Figures: the line (figures/landscape), and line.png/.pdf/.html.

JSON (--json): the landscape: dataset (coords alpha, one variable <split>_<metric> per
split and metric, attrs with every setting), evaluation (strategy, points,
points_evaluated, points_per_second, ...), run_dir, trajectories, spec, definition
(interpolation or random_line), definition_formula.

Examples:

  basinscope interpolate --model basinscope.models:lenet --weights A.safetensors \\
      --to B.safetensors --xrange -1:2:31 --out runs/a-to-b

  basinscope interpolate --weights A.safetensors --xrange -1:1:41 --seed 3 --json
"""

LINE_GRID = "-0.5:1.5:41"


@dataclass(frozen=True)
class InterpolateCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    to: Path | None = option(None, "Weights of model B: evaluate the line from A to B.")
    directions: Path | None = option(None, "Use the first direction in this .safetensors file.")
    data: DataOptions = group(DataOptions)
    splits: tuple[str, ...] = _split_option()
    xrange: tuple[float, ...] | None = grid_option(
        f"alpha grid START:STOP:NUM (default {LINE_GRID}).", "--xrange"
    )
    line: RandomLineSpec = group(RandomLineSpec)
    log: bool = option(False, LOG_HELP)


def run_interpolate(cmd: InterpolateCommand, ctx: Context):
    from basinscope.analyses import InterpolationSpec, interpolate, random_line
    from basinscope.geometry import check_directions_fit, get_params, load_directions

    alphas = cmd.xrange or tuple(parse_range(LINE_GRID, "--xrange").tolist())
    line = cmd.line.replace(alphas=alphas)
    net, datasets, kw = _inputs(cmd, ctx)
    if cmd.to is not None:
        other = load_model(cmd.model.model, cmd.model.model_kwargs, cmd.to)
        kw["identity"]["to"] = str(cmd.to)
        spec = InterpolationSpec(alphas=alphas, metrics=line.metrics, eval=line.eval)
        return interpolate(net, other, datasets, spec=spec, **kw)
    direction = None
    if cmd.directions is not None:
        dirs, _ = load_directions(cmd.directions)
        check_directions_fit(dirs[:1], get_params(net), str(cmd.directions))
        direction = dirs[0]
        kw["identity"]["directions"] = str(cmd.directions)
    return random_line(net, datasets, spec=line, direction=direction, **kw)


INTERPOLATE = Command(
    "interpolate",
    InterpolateCommand,
    run_interpolate,
    text=INTERP_HELP,
    summary=_summary,
    figures=_figures,
)
interpolate_cmd = typer_command(INTERPOLATE)


# -- surface ---------------------------------------------------------------------------------
SURFACE_HELP = """The 2D landscape f(alpha, beta) = L(theta* + alpha delta + beta eta).

The plane: two filter-normalized random directions around the --weights (default), the
top two PCA directions of a training trajectory (--pca), the plane through three models
(--weights A, --plane B --plane C), or directions from a file (--directions). Trajectories
(--trajectory) are projected onto the plane and drawn, with each point's distance from it.
Figures: the contours of the first loss with the trajectories (figures/landscape), and per
loss contour, filled, heatmap, 3d (.png/.pdf), an interactive surface (.html) and a
ParaView .vtp file.

JSON (--json): the landscape: dataset (coords alpha and beta, one variable
<split>_<metric> per split and metric, attrs with every setting), evaluation (strategy,
points, points_evaluated, points_per_second, ...), run_dir, trajectories (label, steps,
alpha, beta, distance of each), spec, definition (surface, pca_surface or plane_surface),
definition_formula.

Examples:

  basinscope surface --model basinscope.models:lenet --weights final.safetensors \\
      --xrange -1:1:21 --yrange -1:1:21 --out runs/surface

  basinscope surface --weights runs/lenet/model.safetensors \\
      --pca runs/lenet/trajectory.safetensors --out runs/pca

  basinscope surface --weights A.safetensors --plane B.safetensors --plane C.safetensors --bn recompute
"""


@dataclass(frozen=True)
class SurfaceCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    splits: tuple[str, ...] = _split_option()
    surface: RandomSurfaceSpec = group(RandomSurfaceSpec)
    directions: Path | None = option(
        None,
        "Two directions from a .safetensors file (e.g. RUN/tensors/directions.safetensors).",
    )
    pca: Path | None = option(
        None,
        "Trajectory (.safetensors from `basinscope train`) whose top-2 PCA directions span "
        "the plane.",
    )
    plane: tuple[Path, ...] = option(
        (),
        "Weights of model B, then of model C (give --plane twice): the plane through A "
        "(--weights), B and C.",
    )
    trajectory: tuple[Path, ...] = option(
        (), "Trajectory file to project onto the plane and draw (repeatable)."
    )
    log: bool = option(False, LOG_HELP)

    def check(self) -> None:
        plane = self.name_of("plane")
        if self.plane and len(self.plane) != 2:
            raise BasinscopeError(
                f"{plane} needs exactly two weight files (models B and C), got "
                f"{len(self.plane)}: {plane} B.safetensors {plane} C.safetensors"
            )
        chosen = [self.name_of(n) for n in ("directions", "pca", "plane") if getattr(self, n)]
        if len(chosen) > 1:
            raise BasinscopeError(f"choose one way to make the plane, got {' and '.join(chosen)}")


def run_surface(cmd: SurfaceCommand, ctx: Context):
    from basinscope.analyses import (
        PCASurfaceSpec,
        PlaneSurfaceSpec,
        pca_surface,
        plane_surface,
        project_trajectory,
        random_surface,
    )
    from basinscope.geometry import (
        check_checkpoints_fit,
        check_directions_fit,
        get_params,
        load_directions,
    )
    from basinscope.training import load_trajectory

    s = cmd.surface
    net, datasets, kw = _inputs(cmd, ctx)
    trajs = {str(p): load_trajectory(p) for p in cmd.trajectory}
    for path, ckpts in trajs.items():  # before the surface is computed, not after
        check_checkpoints_fit(ckpts, get_params(net), f"trajectory {path!r}")
    kw["identity"]["trajectories"] = list(trajs)
    grid = dict(alphas=s.alphas, betas=s.betas, metrics=s.metrics, eval=s.eval)
    projections = []
    if cmd.pca is not None:
        kw["identity"]["pca"] = str(cmd.pca)
        land, proj = pca_surface(
            net, load_trajectory(cmd.pca), datasets, spec=PCASurfaceSpec(**grid), **kw
        )
        projections.append(dataclasses.replace(proj, label=cmd.pca.parent.name or "trajectory"))
    elif cmd.plane:
        b, c = (load_model(cmd.model.model, cmd.model.model_kwargs, p) for p in cmd.plane)
        kw["identity"]["plane"] = [str(p) for p in cmd.plane]
        land, _ = plane_surface(net, b, c, datasets, spec=PlaneSurfaceSpec(**grid), **kw)
    else:
        given = None
        if cmd.directions is not None:
            given, _ = load_directions(cmd.directions)
            check_directions_fit(given, get_params(net), str(cmd.directions))
            kw["identity"]["directions"] = str(cmd.directions)
        land = random_surface(net, datasets, spec=s, directions=given, **kw)
    for path, ckpts in trajs.items():
        label = Path(path).parent.name or Path(path).stem
        projections.append(project_trajectory(land, ckpts, label))
    return dataclasses.replace(land, trajectories=tuple(projections))


SURFACE = Command(
    "surface", SurfaceCommand, run_surface, text=SURFACE_HELP, summary=_summary, figures=_figures
)
surface_cmd = typer_command(SURFACE)
