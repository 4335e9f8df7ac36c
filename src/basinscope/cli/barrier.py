"""``basinscope barrier`` and ``basinscope basin``: the analyses' specs as commands."""

from __future__ import annotations

from dataclasses import dataclass

from basinscope.analyses.barrier import BarrierResult, BarrierSpec, barriers, eval_data
from basinscope.analyses.basin import BasinResult, BasinSpec, basin_test
from basinscope.cli.generate import Command, Context
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelsOptions, TaskOptions, fingerprints
from basinscope.result import fmt  # noqa: F401 (cli.curves and cli.dynamics import it here)
from basinscope.spec import Spec, group, option, with_defaults


@dataclass(frozen=True)
class BarrierCommand(Spec):
    models: ModelsOptions = group(ModelsOptions)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    barrier: BarrierSpec = group(BarrierSpec)


def run_barrier(cmd: BarrierCommand, ctx: Context):
    spec, nets = cmd.barrier, cmd.models.load(2, "a barrier")
    ds, bn_data, datasets = eval_data(cmd.data, spec.split, spec.eval.bn_policy)
    ctx.open(fingerprints(nets, datasets))
    npairs = len(nets) * (len(nets) - 1) // 2
    ctx.say(
        f"{spec.definition} barrier of the {spec.metric} on {spec.split} ({len(ds)} examples) "
        f"between {len(nets)} models: {npairs} pair{'s' if npairs > 1 else ''}"
    )
    return barriers(
        nets, ds, labels=cmd.models.labels(), spec=spec, bn_data=bn_data, task=cmd.task.build()
    )


BARRIER_EX = """
basinscope barrier --model mlp --weights a.safetensors --weights b.safetensors

basinscope barrier --weights a.safetensors --weights b.safetensors --definition mean \\
    --metric loss --split test --bootstrap 200 --json

basinscope barrier --model lenet --weights s1.safetensors --weights s2.safetensors \\
    --weights s3.safetensors --bn recompute --out runs/barriers
"""
BARRIER = Command("barrier", BarrierCommand, run_barrier, BARRIER_EX, BarrierSpec, BarrierResult)

_HullVertices = with_defaults(
    ModelsOptions, weights=((), "Weights of a solution; repeat (the hull's vertices).")
)


@dataclass(frozen=True)
class BasinCommand(Spec):
    models: _HullVertices = group(_HullVertices)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    split: str = option("train", "Split whose mean loss is l.")
    basin: BasinSpec = group(BasinSpec)

    def check(self) -> None:
        if not self.models.weights:
            flag = self.models.name_of("weights")
            raise BasinscopeError(
                "the basin test needs the solutions whose convex hull is tested: pass "
                f"{flag} once per solution, e.g. {flag} a.safetensors {flag} b.safetensors"
            )


def run_basin(cmd: BasinCommand, ctx: Context):
    spec, nets = cmd.basin, cmd.models.load(1, "the basin test")
    ds, bn_data, datasets = eval_data(cmd.data, cmd.split, spec.eval.bn_policy)
    ctx.open(fingerprints(nets, datasets))
    ctx.say(
        f"basin test of the hull of {len(nets)} solutions on {cmd.split} ({len(ds)} examples): "
        f"{spec.samples} inside points, {spec.pairs} pairs, delta {spec.delta:g} ..."
    )
    labels = tuple(cmd.models.labels())
    return basin_test(nets, ds, spec=spec, bn_data=bn_data, labels=labels, task=cmd.task.build())


BASIN_EX = """
basinscope basin --model mlp --weights a.safetensors --weights b.safetensors \\
    --weights c.safetensors --delta 5

basinscope basin --weights a.safetensors --weights b.safetensors --delta 2 --epsilon 0.05 \\
    --samples 128 --pairs 128 --json
"""
BASIN = Command("basin", BasinCommand, run_basin, BASIN_EX, BasinSpec, BasinResult)
