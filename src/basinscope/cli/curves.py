"""``basinscope curve`` (a trained low-loss curve between two models) and ``basinscope align``
(permutation alignment), generated from the specs of their analyses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from basinscope._checks import split_names
from basinscope.analyses.alignment import AlignmentResult, AlignModels, AlignSpec, align
from basinscope.analyses.curves import CurveEndpoints, CurveEvalSpec, CurveResult, CurveSpec, curve
from basinscope.cli.generate import Command, Context
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, TaskOptions, fingerprints
from basinscope.models.loading import WEIGHT_SUFFIXES
from basinscope.spec import Spec, group, option, with_defaults
from basinscope.store import paths

_CurveTraining = with_defaults(CurveSpec, steps=200)
# (default, help): a bare pair of strings would read as a default and its help
_CurveEvaluation = with_defaults(CurveEvalSpec, metrics=(("loss", "error"), "Metrics evaluated."))


@dataclass(frozen=True)
class CurveCommand(Spec):
    models: CurveEndpoints = group(CurveEndpoints)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    splits: tuple[str, ...] = option(
        (),
        "Comma-separated splits to evaluate on (training: train; default: train,test, or "
        "those of the two the data has).",
        parse=lambda text: tuple(split_names(text)),
        metavar="SPLIT,SPLIT",
    )
    curve: _CurveTraining = group(_CurveTraining)
    evaluation: _CurveEvaluation = group(_CurveEvaluation)


def run_curve(cmd: CurveCommand, ctx: Context):
    m, (a, b), data = cmd.models, cmd.models.load(2, "a curve"), cmd.data.load("train")
    evals = {s: data if s == "train" else cmd.data.load(s) for s in cmd.data.splits(cmd.splits)}
    ctx.open(fingerprints([a, b], {"train": data, **evals}))
    return curve(
        a,
        b,
        data,
        evals,
        spec=cmd.curve,
        evaluation=cmd.evaluation,
        labels=m.labels(),
        curve_file=ctx.out / paths.CURVE,
        metadata={"model": m.model, "model_kwargs": m.model_kwargs},
        progress=ctx.progress,
        say=ctx.say,
        task=cmd.task.build(),
    )


CURVE_EXAMPLES = """
basinscope curve --model mlp --weights a.safetensors --weights b.safetensors --steps 500

basinscope curve --model lenet --weights a.safetensors --weights b.safetensors \\
    --kind polychain --bends 1 --steps 1000 --lr 0.02 --splits train,test --json
"""
CURVE = Command("curve", CurveCommand, run_curve, CURVE_EXAMPLES, CurveSpec, CurveResult)


@dataclass(frozen=True)
class AlignCommand(Spec):
    models: AlignModels = group(AlignModels)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    align: AlignSpec = group(AlignSpec)
    save: Path | None = option(None, "Also write the aligned weights here (.safetensors or .pt).")

    def check(self) -> None:
        if self.save is not None and self.save.suffix.lower() not in WEIGHT_SUFFIXES:
            raise BasinscopeError(
                f"{self.name_of('save')} {str(self.save)!r}: the aligned weights are written "
                f"as .safetensors or .pt, e.g. {self.name_of('save')} aligned.safetensors"
            )


def run_align(cmd: AlignCommand, ctx: Context):
    spec, (a, b), labels = cmd.align, cmd.models.load(2, "align"), cmd.models.labels()
    splits = [spec.split, "train"] if spec.eval.bn_policy == "recompute" else [spec.split]
    data = {s: cmd.data.load(s) for s in dict.fromkeys(splits)}  # "train": BatchNorm's data
    ctx.open(fingerprints([a, b], data))
    ctx.say(spec.plan(labels))
    files = [ctx.out / paths.WEIGHTS, *([cmd.save] if cmd.save is not None else [])]
    return align(a, b, data, spec=spec, labels=labels, save_to=files, task=cmd.task.build())


ALIGN_EXAMPLES = """
basinscope align --model mlp --weights a.safetensors --weights b.safetensors

basinscope align --model lenet --weights a.safetensors --weights b.safetensors \\
    --method activation --metric error --save b-aligned.safetensors --json
"""
ALIGN = Command("align", AlignCommand, run_align, ALIGN_EXAMPLES, AlignSpec, AlignmentResult)
