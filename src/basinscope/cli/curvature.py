"""``basinscope hessian`` and ``basinscope sharpness``: the analyses' specs as commands."""

from __future__ import annotations

from dataclasses import dataclass, replace

from basinscope._checks import grid_range
from basinscope.analyses.hessian import HessianReport, HessianSpec, hessian_analysis
from basinscope.analyses.hessian_map import hessian_map
from basinscope.analyses.sharpness_measures import SharpnessMeasures, sharpness_measures
from basinscope.analyses.sharpness_spec import SharpnessSpec
from basinscope.cli.generate import Command, Context
from basinscope.curvature.loss import first_examples
from basinscope.inputs import DataOptions, ModelOptions, TaskOptions, fingerprints
from basinscope.spec import Spec, group, option


@dataclass(frozen=True)
class HessianCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    hessian: HessianSpec = group(HessianSpec)
    curvature_map: bool = option(
        False, "The |lambda_min/lambda_max| map over a random plane.", flag="--map"
    )
    xrange: str = option("-1:1:11", "--map: alpha grid START:STOP:NUM.")
    yrange: str = option("-1:1:11", "--map: beta grid START:STOP:NUM.")

    def check(self) -> None:
        for name in ("xrange", "yrange"):
            grid_range(getattr(self, name), self.name_of(name))


def run_hessian(cmd: HessianCommand, ctx: Context):
    spec = cmd.hessian
    net, ds = cmd.model.load(), first_examples(cmd.data.load(spec.split), spec.subset)
    if cmd.curvature_map:  # a landscape, stored (and resumed) in the run folder by the engine
        ctx.say(f"|lambda_min/lambda_max| map of the {spec.split} loss over {len(ds)} examples ...")
        xs, ys = grid_range(cmd.xrange, "--xrange"), grid_range(cmd.yrange, "--yrange")
        ids = {"model": cmd.model.to_dict(), "data": cmd.data.to_dict(), "task": cmd.task.to_dict()}
        return hessian_map(
            net,
            ds,
            spec,
            alphas=xs,
            betas=ys,
            run_dir=ctx.out,
            identity=ids,
            progress=ctx.progress,
            task=cmd.task.build(),
        )
    ctx.open(fingerprints([net], {spec.split: ds}))
    ctx.say(f"{spec.operator} spectrum of the {spec.split} loss over {len(ds)} examples ...")
    report = hessian_analysis(net, ds, spec=spec, progress=ctx.progress, task=cmd.task.build())
    return replace(report, spec=spec)  # with the split it was measured on


HESSIAN_EX = """
basinscope hessian --model mlp --weights runs/mlp/model.safetensors --top 3 --bottom 1

basinscope hessian --weights lenet.safetensors --density --per-layer --out runs/hess

basinscope hessian --model mlp --weights w.safetensors --map --xrange -1:1:11 --yrange -1:1:11
"""
HESSIAN = Command("hessian", HessianCommand, run_hessian, HESSIAN_EX, HessianSpec, HessianReport)


@dataclass(frozen=True)
class SharpnessCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    sharpness: SharpnessSpec = group(SharpnessSpec)


def run_sharpness(cmd: SharpnessCommand, ctx: Context):
    spec = cmd.sharpness
    net, ds = cmd.model.load(), first_examples(cmd.data.load(spec.split), spec.subset)
    ctx.open(fingerprints([net], {spec.split: ds}))
    res = sharpness_measures(net, ds, spec, say=ctx.say, task=cmd.task.build())
    return res.measures[0] if len(res.measures) == 1 else res


SHARPNESS_EX = """
basinscope sharpness --model mlp --weights w.safetensors --measure all --json

basinscope sharpness --weights lenet.safetensors --measure worst_case --rho 0.1 --norm linf
"""
SHARPNESS = Command(
    "sharpness", SharpnessCommand, run_sharpness, SHARPNESS_EX, SharpnessSpec, SharpnessMeasures
)
