"""The transfer commands: each a spec class with its ``run``, its docstring the examples."""

import inspect
import json
from dataclasses import dataclass
from typing import Any

from basinscope.analyses import DistanceAndMistakes, mistake_analysis, parameter_distance
from basinscope.analyses.criticality import CriticalityResult, CriticalitySpec, module_criticality
from basinscope.analyses.distance import DistanceResult, DistanceSpec, MistakeSpec, group_by_module
from basinscope.analyses.rewind import RewindResult, RewindSpec, rewind
from basinscope.analyses.similarity import CKAResult, CKASpec, cka_matrix
from basinscope.cli.generate import Command, Context
from basinscope.inputs import (
    DataOptions,
    ModelOptions,
    ModelPair,
    TaskOptions,
    TrainedAndInit,
    fingerprints,
    load_model,
    parse_json_kwargs,
    require,
)
from basinscope.result import result_class
from basinscope.spec import Spec, group, option, with_defaults
from basinscope.store import paths
from basinscope.training import FinetuneComparison, FinetuneComparisonSpec, compare_strategies

__all__ = ["CRITICALITY", "DISTANCE", "FINETUNE", "REWIND", "SIMILARITY"]

_AB = with_defaults(ModelPair, weights=((), "Weights of model A (the reference), then of model B."))
_CKAOnTest = with_defaults(CKASpec, split=("test", "Split whose activations are compared."))
_MistakesOnTest = with_defaults(MistakeSpec, split=("test", "Split of the mistake analysis."))
_RewindOnTest = with_defaults(RewindSpec, split=("test", "Split the models are evaluated on."))
_CritOnTrain = with_defaults(CriticalitySpec, split=("train", "Split whose loss L is thresholded."))
_Pretrained = with_defaults(ModelOptions, weights=(None, "Weights of the pretrained model."))


def _command(name: str, spec: Any, about: type[Spec]) -> Command:
    result = result_class(about.kind)  # the result of the analysis that ``about`` specifies
    return Command(name, spec, spec.run, inspect.cleandoc(spec.__doc__), about, result)


def _kwargs_b(text: str) -> str:
    return json.dumps(parse_json_kwargs(text, "--model-kwargs-b"), sort_keys=True)


@dataclass(frozen=True)
class SimilarityCommand(Spec):
    """basinscope similarity --model mlp --weights a.safetensors --weights b.safetensors

    basinscope similarity --weights a.safetensors --weights b.safetensors --method linear \\
        --layers-a conv1 --layers-a fc1 --layers-b conv1 --layers-b fc1 --json

    basinscope similarity --model lenet --weights lenet.safetensors --weights mlp.safetensors \\
        --model-b mlp --max-examples 500
    """

    models: ModelPair = group(ModelPair)
    model_b: str | None = option(
        None, "Model B's factory (default: --model); module:factory runs that module's code."
    )
    model_kwargs_b: str | None = option(
        None, "Model B's JSON kwargs (default: --model-kwargs).", parse=_kwargs_b, metavar="JSON"
    )
    cka: _CKAOnTest = group(_CKAOnTest)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)

    def run(self, ctx: Context) -> CKAResult:
        m, spec, b_kwargs = self.models, self.cka, self.model_kwargs_b
        b_kwargs = b_kwargs if self.model_b is not None else b_kwargs or m.model_kwargs
        net_a = load_model(m.model, m.model_kwargs, m.weights[0])
        net_b = load_model(self.model_b or m.model, b_kwargs, m.weights[1])
        ds = self.data.load(spec.split)
        ctx.open(fingerprints([net_a, net_b], {spec.split: ds}))
        a, b = labels = tuple(m.labels())
        ctx.say(f"{spec.method} CKA between {a} and {b} on {spec.split} ({len(ds)} examples) ...")
        return cka_matrix(net_a, net_b, ds, spec=spec, labels=labels, task=self.task.build())


@dataclass(frozen=True)
class DistanceCommand(Spec):
    """basinscope distance --model mlp --weights init.safetensors --weights final.safetensors

    basinscope distance --weights a.safetensors --weights b.safetensors --modules fc1 \\
        --modules fc2 --mistakes --split test --json
    """

    models: _AB = group(_AB)
    distance: DistanceSpec = group(DistanceSpec)
    mistakes: bool = option(
        False, "Also compare the models' mistakes on --split.", flag="--mistakes/--no-mistakes"
    )
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    mistake: _MistakesOnTest = group(_MistakesOnTest)

    def run(self, ctx: Context) -> DistanceResult | DistanceAndMistakes:
        nets, split = self.models.load(2, "a distance"), self.mistake.split
        a, b = labels = tuple(self.models.labels())
        data = {split: self.data.load(split)} if self.mistakes else {}
        dist = parameter_distance(*nets, spec=self.distance, labels=labels)
        ctx.open(fingerprints(nets, data))
        if not self.mistakes:
            return dist
        ctx.say(f"mistakes of {a} and {b} on {split} ...")
        mistakes = mistake_analysis(
            *nets, data[split], spec=self.mistake, labels=labels, task=self.task.build()
        )
        return DistanceAndMistakes(distance=dist, mistakes=mistakes)


def _open(cmd: TrainedAndInit, split: str, ctx: Context) -> tuple[Any, Any, dict[str, Any]]:
    final, start, data = cmd.load(split)
    ctx.open(fingerprints([final, start], data))
    return final, start, data


@dataclass(frozen=True)
class RewindCommand(TrainedAndInit):
    """basinscope rewind --model mlp --weights final.safetensors --init init.safetensors

    basinscope rewind --weights final.safetensors --init init.safetensors --modules fc1 \\
        --split train --json
    """

    rewind: _RewindOnTest = group(_RewindOnTest)

    def run(self, ctx: Context) -> RewindResult:
        final, start, data = _open(self, split := self.rewind.split, ctx)
        ctx.say(f"rewinding each module on {split} ({len(data[split])} examples) ...")
        return rewind(final, start, data, spec=self.rewind, task=self.task.build())


@dataclass(frozen=True)
class CriticalityCommand(TrainedAndInit):
    """basinscope criticality --model mlp --weights final.safetensors --init init.safetensors

    basinscope criticality --weights final.safetensors --init init.safetensors \\
        --alphas 0:1:6 --sigmas 0.05:0.5:4 --samples 2 --noise-variant frobenius --json
    """

    criticality: _CritOnTrain = group(_CritOnTrain)

    def run(self, ctx: Context) -> CriticalityResult:
        spec = self.criticality
        final, start, data = _open(self, split := spec.split, ctx)
        n = len(group_by_module([p for p, _ in final.named_parameters()], spec.modules))
        grid = f"{len(spec.alphas)} x {len(spec.sigmas)} grid, {spec.samples} draws per point"
        ctx.say(f"criticality of {n} modules on {split} ({len(data[split])} examples): {grid} ...")
        return module_criticality(final, start, data, spec=spec, task=self.task.build())


@dataclass(frozen=True)
class FinetuneCommand(FinetuneComparisonSpec):
    """basinscope finetune --model mlp --weights pretrained.safetensors --data digits \\
        --rotation 35 --strategy ft --strategy lp --strategy lp-ft

    basinscope finetune --model lenet --weights lenet.safetensors --rotation 35 \\
        --strategy surgical --blocks 'conv*' --steps 200 --lr 0.01 --json
    """

    model: _Pretrained = group(_Pretrained)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    source_rotation: float = option(0.0, "Rotation of the source distribution (degrees).")

    def check(self) -> None:
        require(self.model, "weights", "the pretrained model", "model.safetensors")
        super().check()

    def run(self, ctx: Context) -> FinetuneComparison:
        net, target, split = self.model.load(), self.data, self.eval_split
        source = DataOptions(data=target.data, rotation=self.source_rotation)
        train, tgt, src = target.load("train"), target.load(split), source.load(split)
        data = {"target_train": train, f"target_{split}": tgt, f"source_{split}": src}
        src_train = None
        if {"ewc", "trust-region"} & set(self.strategies):  # they measure the source loss
            src_train = data["source_train"] = source.load("train")
        ctx.open(fingerprints([net], data))
        about = {"source": source.to_dict(), "target": target.to_dict(), "say": ctx.say}
        out = ctx.out / paths.MODELS
        return compare_strategies(
            net,
            train,
            spec=self,
            eval_source=src,
            eval_target=tgt,
            source_data=src_train,
            save_dir=out,
            task=self.task.build(),
            **about,
        )


SIMILARITY = _command("similarity", SimilarityCommand, CKASpec)
DISTANCE = _command("distance", DistanceCommand, DistanceSpec)
REWIND = _command("rewind", RewindCommand, RewindSpec)
CRITICALITY = _command("criticality", CriticalityCommand, CriticalitySpec)
FINETUNE = _command("finetune", FinetuneCommand, FinetuneComparisonSpec)
