"""``basinscope similarity``, ``distance``, ``rewind``, ``criticality`` and ``finetune``: each
command is its spec with a short ``run``, and its examples; the help is the library's doc."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope.analyses import DistanceAndMistakes, mistake_analysis, parameter_distance
from basinscope.analyses.criticality import CriticalityResult, CriticalitySpec, module_criticality
from basinscope.analyses.distance import DistanceResult, DistanceSpec, MistakeSpec, group_by_module
from basinscope.analyses.rewind import RewindResult, RewindSpec, rewind
from basinscope.analyses.similarity import CKAResult, CKASpec, cka_matrix
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelOptions, ModelsOptions, fingerprints, load_model
from basinscope.spec import Spec, group, option, with_defaults
from basinscope.store import paths
from basinscope.training import FinetuneComparison, FinetuneSpec, FinetuneTraining
from basinscope.training.finetune import STRATEGIES, compare_strategies

__all__ = ["CRITICALITY", "DISTANCE", "FINETUNE", "REWIND", "SIMILARITY"]
__all__ += ["criticality_cmd", "distance_cmd", "finetune_cmd", "rewind_cmd", "similarity_cmd"]

_ModelsAB = with_defaults(
    ModelsOptions, weights=((), "Weights of model A, then of model B (exactly two).")
)
_ModelsRef = with_defaults(
    ModelsOptions, weights=((), "Weights of model A (the reference), then of model B.")
)
_CKAOnTest = with_defaults(CKASpec, split=("test", "Split whose activations are compared."))
_MistakesOnTest = with_defaults(MistakeSpec, split=("test", "Split of the mistake analysis."))
_Trained = with_defaults(ModelOptions, weights=(None, "Weights of the trained model."))
_RewindOnTest = with_defaults(RewindSpec, split=("test", "Split the models are evaluated on."))
_CriticalityOnTrain = with_defaults(
    CriticalitySpec, split=("train", "Split whose loss L is thresholded.")
)
_Pretrained = with_defaults(ModelOptions, weights=(None, "Weights of the pretrained model."))


def _required(spec: Spec, name: str, what: str, example: str) -> None:
    if getattr(spec, name) is None:
        flag = spec.name_of(name)
        raise BasinscopeError(f"{flag} is required: {what}, e.g. {flag} {example}")


def _command(name: str, spec: Any, examples: str, about: Any, result: type) -> Command:
    """The command ``name``: its spec class runs it (``spec.run``); ``about`` documents it."""
    return Command(name, spec, spec.run, examples, about=about, result=result)


def _kwargs_b(text: str) -> str:
    from basinscope.inputs import parse_json_kwargs

    return json.dumps(parse_json_kwargs(text, "--model-kwargs-b"), sort_keys=True)


@dataclass(frozen=True)
class _TwoModels(Spec):
    """Model A and model B: exactly two --weights."""

    models: _ModelsAB = group(_ModelsAB)

    def check(self) -> None:
        if len(self.models.weights) != 2:
            w = self.models.name_of("weights")
            raise BasinscopeError(
                f"pass exactly two {w} (model A, then model B), got {len(self.models.weights)}: "
                f"e.g. {w} a.safetensors {w} b.safetensors"
            )


@dataclass(frozen=True)
class SimilarityCommand(_TwoModels):
    model_b: str | None = option(
        None, "Model B's factory (default: --model); module:factory runs that module's code."
    )
    model_kwargs_b: str | None = option(
        None, "Model B's JSON kwargs (default: --model-kwargs).", parse=_kwargs_b, metavar="JSON"
    )
    cka: _CKAOnTest = group(_CKAOnTest)
    data: DataOptions = group(DataOptions)

    def run(self, ctx: Context) -> CKAResult:
        m, spec, kw_b = self.models, self.cka, self.model_kwargs_b
        net_a = load_model(m.model, m.model_kwargs, m.weights[0])
        kw_b = kw_b if self.model_b is not None else kw_b or m.model_kwargs
        net_b = load_model(
            self.model_b or m.model, kw_b, m.weights[1], kwargs_flag="--model-kwargs-b"
        )
        ds = self.data.load(spec.split)
        ctx.open(fingerprints([net_a, net_b], {spec.split: ds}))
        a, b = labels = tuple(m.labels())
        ctx.say(f"{spec.method} CKA between {a} and {b} on {spec.split} ({len(ds)} examples) ...")
        return cka_matrix(net_a, net_b, ds, spec=spec, labels=labels)


@dataclass(frozen=True)
class DistanceCommand(_TwoModels):
    models: _ModelsRef = group(_ModelsRef)
    distance: DistanceSpec = group(DistanceSpec)
    mistakes: bool = option(
        False, "Also compare the models' mistakes on --split.", flag="--mistakes/--no-mistakes"
    )
    data: DataOptions = group(DataOptions)
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
        mistakes = mistake_analysis(*nets, data[split], spec=self.mistake, labels=labels)
        return DistanceAndMistakes(distance=dist, mistakes=mistakes)


@dataclass(frozen=True)
class _FinalAndInit(Spec):
    """A trained model (--weights), the same model at initialisation (--init) and data."""

    model: _Trained = group(_Trained)
    init: Path | None = option(None, "Weights of the same model at initialisation.")
    data: DataOptions = group(DataOptions)

    def check(self) -> None:
        _required(self.model, "weights", "the trained model", "final.safetensors")
        _required(self, "init", "the same model at initialisation", "init.safetensors")

    def open(self, split: str, ctx: Context) -> tuple[Any, Any, dict[str, Any]]:
        """The final and the initial model and ``{split: data}``, the run folder opened."""
        final, start = self.model.load(), self.model.replace(weights=self.init).load()
        data = {split: self.data.load(split)}
        ctx.open(fingerprints([final, start], data))
        return final, start, data


@dataclass(frozen=True)
class RewindCommand(_FinalAndInit):
    rewind: _RewindOnTest = group(_RewindOnTest)

    def run(self, ctx: Context) -> RewindResult:
        final, start, data = self.open(split := self.rewind.split, ctx)
        ctx.say(f"rewinding each module on {split} ({len(data[split])} examples) ...")
        return rewind(final, start, data, spec=self.rewind)


@dataclass(frozen=True)
class CriticalityCommand(_FinalAndInit):
    criticality: _CriticalityOnTrain = group(_CriticalityOnTrain)

    def run(self, ctx: Context) -> CriticalityResult:
        spec = self.criticality
        final, start, data = self.open(spec.split, ctx)
        n = len(group_by_module([p for p, _ in final.named_parameters()], spec.modules))
        ctx.say(
            f"criticality of {n} modules on {spec.split} ({len(data[spec.split])} examples): "
            f"{len(spec.alphas)} x {len(spec.sigmas)} grid, {spec.samples} draws per point ..."
        )
        return module_criticality(final, start, data, spec=spec)


@dataclass(frozen=True)
class FinetuneCommand(Spec):
    model: _Pretrained = group(_Pretrained)
    strategies: tuple[str, ...] = option(
        (),
        "ft, lp, lp-ft, surgical, dfr or guided; repeat (default: ft).",
        flag="--strategy",
        choices=STRATEGIES,
    )
    finetune: FinetuneSpec = group(FinetuneSpec)
    dfr_examples: int = option(
        200, "dfr: held-out target examples the head is retrained on.", low=1
    )
    data: DataOptions = group(DataOptions)
    source_rotation: float = option(0.0, "Rotation of the source distribution (degrees).")
    eval_split: str = option("test", "Split of the before/after evaluation.")
    train: FinetuneTraining = group(FinetuneTraining)

    def check(self) -> None:
        _required(self.model, "weights", "the pretrained model", "model.safetensors")
        flag, blocks = self.name_of("strategies"), self.finetune.name_of("blocks")
        if len(set(self.strategies)) != len(self.strategies):
            raise BasinscopeError(f"each {flag} may be given once, got {list(self.strategies)}")
        if self.finetune.blocks and "surgical" not in self.strategies:
            raise BasinscopeError(
                f"{blocks} is only used by {flag} surgical; add it or drop {blocks}"
            )

    def run(self, ctx: Context) -> FinetuneComparison:
        net, target, split = self.model.load(), self.data, self.eval_split
        source = DataOptions(data=target.data, rotation=self.source_rotation)
        train, tgt, src = target.load("train"), target.load(split), source.load(split)
        ctx.open(
            fingerprints(
                [net], {"target_train": train, f"target_{split}": tgt, f"source_{split}": src}
            )
        )
        kw = dict(config=self.train.config(), spec=self.finetune, dfr_examples=self.dfr_examples)
        kw |= dict(eval_source=src, eval_target=tgt, save_dir=ctx.out / paths.MODELS, say=ctx.say)
        kw |= dict(eval_split=split, source=source.to_dict(), target=target.to_dict())
        return compare_strategies(net, train, self.strategies or ("ft",), **kw)


# -- examples ----------------------------------------------------------------------------------
SIMILARITY_EXAMPLES = """
basinscope similarity --model mlp --weights a.safetensors --weights b.safetensors

basinscope similarity --weights a.safetensors --weights b.safetensors --method linear \\
    --layers-a conv1 --layers-a fc1 --layers-b conv1 --layers-b fc1 --json

basinscope similarity --model lenet --weights lenet.safetensors --weights mlp.safetensors \\
    --model-b mlp --max-examples 500
"""
DISTANCE_EXAMPLES = """
basinscope distance --model mlp --weights init.safetensors --weights final.safetensors

basinscope distance --weights a.safetensors --weights b.safetensors --modules fc1 \\
    --modules fc2 --mistakes --split test --json
"""
REWIND_EXAMPLES = """
basinscope rewind --model mlp --weights final.safetensors --init init.safetensors

basinscope rewind --weights final.safetensors --init init.safetensors --modules fc1 \\
    --split train --json
"""
CRITICALITY_EXAMPLES = """
basinscope criticality --model mlp --weights final.safetensors --init init.safetensors

basinscope criticality --weights final.safetensors --init init.safetensors \\
    --alphas 0:1:6 --sigmas 0.05:0.5:4 --samples 2 --noise-variant frobenius --json
"""
FINETUNE_EXAMPLES = """
basinscope finetune --model mlp --weights pretrained.safetensors --data digits \\
    --rotation 35 --strategy ft --strategy lp --strategy lp-ft

basinscope finetune --model lenet --weights lenet.safetensors --rotation 35 \\
    --strategy surgical --blocks 'conv*' --steps 200 --lr 0.01 --json
"""

# -- the commands ----------------------------------------------------------------------------
SIMILARITY = _command("similarity", SimilarityCommand, SIMILARITY_EXAMPLES, CKASpec, CKAResult)
DISTANCE = _command("distance", DistanceCommand, DISTANCE_EXAMPLES, DistanceSpec, DistanceResult)
REWIND = _command("rewind", RewindCommand, REWIND_EXAMPLES, RewindSpec, RewindResult)
CRITICALITY = _command(
    "criticality", CriticalityCommand, CRITICALITY_EXAMPLES, CriticalitySpec, CriticalityResult
)
FINETUNE = _command(
    "finetune", FinetuneCommand, FINETUNE_EXAMPLES, compare_strategies, FinetuneComparison
)
similarity_cmd = typer_command(SIMILARITY)
distance_cmd = typer_command(DISTANCE)
rewind_cmd = typer_command(REWIND)
criticality_cmd = typer_command(CRITICALITY)
finetune_cmd = typer_command(FINETUNE)
