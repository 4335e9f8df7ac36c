"""``basinscope interpolate`` and ``basinscope surface``: 1D and 2D landscapes, generated
from their specs. The run folder is the landscape's: journaled chunk by chunk (the same
command resumes an interrupted run), it holds a :class:`~basinscope.analyses.Landscape`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope.analyses.interpolation import RandomLineSpec, line_from_files
from basinscope.analyses.landscape import Landscape, grid_option, splits_option
from basinscope.analyses.surface import RandomSurfaceSpec, SurfaceFiles, surface_from_files
from basinscope.cli.generate import Command, Context
from basinscope.inputs import DataOptions, ModelOptions, TaskOptions, load_model, model_spec
from basinscope.spec import Spec, group, option

LOG = "Log-scale losses in the figures."


def _inputs(cmd: Any, ctx: Context) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Model A, the splits' data, and the keywords of every landscape function: the
    BatchNorm data, the run folder, progress, and what identifies the run's inputs."""
    m = cmd.model
    net = load_model(m.model, m.model_kwargs, m.weights)
    data = {s: cmd.data.load(s) for s in cmd.data.splits(cmd.splits)}
    identity = {**model_spec(m.model, m.model_kwargs, m.weights), **cmd.data.to_dict()}
    identity["task"] = cmd.task.to_dict()  # another loss is another landscape
    bn_data = data["train"] if "train" in data else cmd.data.load("train")
    kw = dict(bn_data=bn_data, run_dir=ctx.out, progress=ctx.progress, task=cmd.task.build())
    return net, data, {**kw, "identity": {**identity, "splits": list(data)}}


def _figures(land: Landscape, cmd: Any, out: Path) -> list[Path]:
    """Every figure of the landscape, as `basinscope plot` draws them, with --log."""
    from basinscope.plotting.run import render_landscape
    from basinscope.store import paths

    return render_landscape(land, out / paths.FIGURES, log=cmd.log)


@dataclass(frozen=True)
class InterpolateCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    to: Path | None = option(None, "Weights of model B: evaluate the line from A to B.")
    directions: Path | None = option(None, "Use the first direction in this .safetensors file.")
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    splits: tuple[str, ...] = splits_option()
    xrange: tuple[float, ...] | None = grid_option(
        "alpha grid START:STOP:NUM (default -0.5:1.5:41).", "--xrange"
    )
    line: RandomLineSpec = group(RandomLineSpec)
    log: bool = option(False, LOG)


def run_interpolate(cmd: InterpolateCommand, ctx: Context) -> Landscape:
    net, data, kw = _inputs(cmd, ctx)
    spec = cmd.line.replace(alphas=cmd.xrange)
    return line_from_files(net, data, spec, to=cmd.to, directions=cmd.directions, **kw)


INTERPOLATE_EXAMPLES = """
basinscope interpolate --model basinscope.models:lenet --weights A.safetensors \\
    --to B.safetensors --xrange -1:2:31 --out runs/a-to-b

basinscope interpolate --weights A.safetensors --xrange -1:1:41 --seed 3 --json
"""
INTERPOLATE = Command(
    "interpolate",
    InterpolateCommand,
    run_interpolate,
    INTERPOLATE_EXAMPLES,
    about=line_from_files,
    result=Landscape,
    figures=_figures,
)


@dataclass(frozen=True)
class SurfaceCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    splits: tuple[str, ...] = splits_option()
    surface: RandomSurfaceSpec = group(RandomSurfaceSpec)
    files: SurfaceFiles = group(SurfaceFiles)
    log: bool = option(False, LOG)


def run_surface(cmd: SurfaceCommand, ctx: Context) -> Landscape:
    net, data, kw = _inputs(cmd, ctx)
    return surface_from_files(net, data, cmd.surface, cmd.files, **kw)


SURFACE_EXAMPLES = """
basinscope surface --model basinscope.models:lenet --weights final.safetensors \\
    --xrange -1:1:21 --yrange -1:1:21 --out runs/surface

basinscope surface --weights runs/lenet/model.safetensors \\
    --pca runs/lenet/trajectory.safetensors --out runs/pca

basinscope surface --weights A.safetensors --plane B.safetensors --plane C.safetensors --bn recompute
"""
SURFACE = Command(
    "surface",
    SurfaceCommand,
    run_surface,
    SURFACE_EXAMPLES,
    about=surface_from_files,
    result=Landscape,
    figures=_figures,
)
