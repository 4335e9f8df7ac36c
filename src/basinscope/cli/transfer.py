"""Comparing trained models and adapting them to a shift, from the command line:
``basinscope similarity`` (CKA between layers), ``distance`` (parameter distances and
shared mistakes), ``rewind`` (one module rewound to its initialisation at a time),
``criticality`` (module criticality and the network criticality) and ``finetune``
(fine-tuning strategies under a distribution shift, with forgetting and adaptation).

Each command is its spec (the option groups and the analysis's spec), a ``run`` function
returning the analysis's result, its help text and its summary lines; the run folder,
``--json`` and the figure come from :mod:`basinscope.cli.generate`. Where a command reads a
split or a model file differently from the library's defaults, a subclass of the group
below says so (its default and help text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope.analyses.criticality import CriticalitySpec
from basinscope.analyses.distance import DistanceSpec, MistakeSpec
from basinscope.analyses.rewind import RewindSpec
from basinscope.analyses.similarity import CKASpec
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelOptions, ModelsOptions, fingerprints
from basinscope.spec import Spec, group, option
from basinscope.training.finetune import STRATEGIES, FinetuneSpec, FinetuneTraining

__all__ = [
    "CRITICALITY",
    "DISTANCE",
    "FINETUNE",
    "REWIND",
    "SIMILARITY",
    "criticality_cmd",
    "distance_cmd",
    "finetune_cmd",
    "rewind_cmd",
    "similarity_cmd",
]


def _fmt(x: Any) -> str:
    """Four significant digits, without a signed zero ("-0")."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{v + 0.0:.4g}"


def _required(spec: Spec, name: str, what: str, example: str) -> None:
    if getattr(spec, name) is None:
        flag = spec.name_of(name)
        raise BasinscopeError(f"{flag} is required: {what}, e.g. {flag} {example}")


def _two_weights(models: ModelsOptions, first: str, second: str) -> None:
    n = len(models.weights)
    if n != 2:
        flag = models.name_of("weights")
        raise BasinscopeError(
            f"pass exactly two {flag} ({first}, then {second}), got {n}: e.g. "
            f"{flag} a.safetensors {flag} b.safetensors"
        )


# -- similarity ------------------------------------------------------------------------------
SIMILARITY_HELP = """CKA similarity between the layers of two models.

matrix[i, j] is the centered kernel alignment between the outputs of layer i of model A
(the first --weights) and layer j of model B (the second), on --split, by the estimator
--method: minibatch (unbiased HSIC averaged over batches, Nguyen et al. 2021; batches of
at least 4), linear (exact full-data linear CKA, streamed), debiased (Kornblith et al.
2019 with the unbiased HSIC estimator) or rbf (Gaussian kernel of width --sigma-factor x
the median distance). Layers are named as in named_modules() (--layers-a, --layers-b,
repeatable); default: every leaf module with parameters. Model B can be a different
architecture (--model-b, --model-kwargs-b). figures/cka is the heatmap.

JSON (--json): the CKA result: kind, schema, matrix, layers_a, layers_b, method (the
estimator), definition (its formula), num_examples, batch_size, sigma_factor, models,
split and spec. The run folder is --out.

Examples:

  basinscope similarity --model mlp --weights a.safetensors --weights b.safetensors

  basinscope similarity --weights a.safetensors --weights b.safetensors --method linear \\
      --layers-a conv1 --layers-a fc1 --layers-b conv1 --layers-b fc1 --json

  basinscope similarity --model lenet --weights lenet.safetensors --weights mlp.safetensors \\
      --model-b mlp --max-examples 500
"""


def _kwargs_b(text: str) -> str:
    from basinscope.inputs import parse_json_kwargs

    return json.dumps(parse_json_kwargs(text, "--model-kwargs-b"), sort_keys=True)


@dataclass(frozen=True)
class _ModelsAB(ModelsOptions):
    weights: tuple[Path, ...] = option((), "Weights of model A, then of model B (exactly two).")


@dataclass(frozen=True)
class _CKAOnTest(CKASpec):
    split: str | None = option("test", "Split whose activations are compared.")


@dataclass(frozen=True)
class SimilarityCommand(Spec):
    models: _ModelsAB = group(_ModelsAB)
    model_b: str | None = option(
        None, "Model B's factory (default: --model); module:factory runs that module's code."
    )
    model_kwargs_b: str | None = option(
        None, "Model B's JSON kwargs (default: --model-kwargs).", parse=_kwargs_b, metavar="JSON"
    )
    cka: _CKAOnTest = group(_CKAOnTest)
    data: DataOptions = group(DataOptions)

    def check(self) -> None:
        _two_weights(self.models, "model A", "model B")


def run_similarity(cmd: SimilarityCommand, ctx: Context):
    from basinscope.analyses.similarity import cka_matrix
    from basinscope.inputs import load_model

    m = cmd.models
    net_a = load_model(m.model, m.model_kwargs, m.weights[0])
    kwargs_b = (
        cmd.model_kwargs_b if cmd.model_b is not None else cmd.model_kwargs_b or m.model_kwargs
    )
    net_b = load_model(
        cmd.model_b or m.model, kwargs_b, m.weights[1], kwargs_flag="--model-kwargs-b"
    )
    spec = cmd.cka
    ds = cmd.data.load(spec.split)
    ctx.open(fingerprints([net_a, net_b], {spec.split: ds}))
    labels = m.labels()
    ctx.say(
        f"{spec.method} CKA between {labels[0]} and {labels[1]} on {spec.split} "
        f"({len(ds)} examples) ..."
    )
    return cka_matrix(net_a, net_b, ds, spec=spec, labels=tuple(labels))


def _similarity_lines(r) -> list[str]:
    lines = [
        f"{r.method} CKA on {r.num_examples} examples: {len(r.layers_a)} x {len(r.layers_b)} layers"
    ]
    try:
        diagonal = r.diagonal()
    except BasinscopeError:
        return [*lines, "the models share no layer names: see the matrix in result.json"]
    return [*lines, f"{'layer':<24} CKA"] + [f"{n:<24} {_fmt(v)}" for n, v in diagonal.items()]


SIMILARITY = Command(
    "similarity", SimilarityCommand, run_similarity, text=SIMILARITY_HELP, summary=_similarity_lines
)
similarity_cmd = typer_command(SIMILARITY)


# -- distance --------------------------------------------------------------------------------
DISTANCE_HELP = """Parameter distance between two models, per module; optionally their shared mistakes.

For the parameter vectors a (the first --weights) and b (the second), overall and per
module: l2 = ||a - b||, relative = ||a - b|| / ||a||, angle_deg = arccos(<a, b> / (||a|| ||b||))
in degrees (plus the norms). --modules picks modules (a parent collects its children's
parameters); default: every module that owns parameters. figures/distance is the bar
plot of the relative distance per module. --mistakes also counts, on --split, the examples
both models get right, both wrong (with the same or a different label) or only one wrong,
and their agreement (figures/distance_and_mistakes shows both).

JSON (--json): without --mistakes the distance result (kind distance: overall, per_module,
definition, models, spec); with --mistakes kind distance_and_mistakes: distance (that
result) and mistakes (n, both_right, both_wrong_same, both_wrong_different, only_a_wrong,
only_b_wrong, agreement, extra: accuracy_a and accuracy_b, definition, models, split,
spec). The run folder is --out.

Examples:

  basinscope distance --model mlp --weights init.safetensors --weights final.safetensors

  basinscope distance --weights a.safetensors --weights b.safetensors --modules fc1 \\
      --modules fc2 --mistakes --split test --json
"""


@dataclass(frozen=True)
class _ModelsRef(ModelsOptions):
    weights: tuple[Path, ...] = option((), "Weights of model A (the reference), then of model B.")


@dataclass(frozen=True)
class _MistakesOnTest(MistakeSpec):
    split: str | None = option("test", "Split of the mistake analysis.")


@dataclass(frozen=True)
class DistanceCommand(Spec):
    models: _ModelsRef = group(_ModelsRef)
    distance: DistanceSpec = group(DistanceSpec)
    mistakes: bool = option(
        False, "Also compare the models' mistakes on --split.", flag="--mistakes/--no-mistakes"
    )
    data: DataOptions = group(DataOptions)
    mistake: _MistakesOnTest = group(_MistakesOnTest)

    def check(self) -> None:
        _two_weights(self.models, "model A", "model B")


def run_distance(cmd: DistanceCommand, ctx: Context):
    from basinscope.analyses.distance import (
        DistanceAndMistakes,
        mistake_analysis,
        parameter_distance,
    )

    nets = cmd.models.load(2, "a distance")
    labels = tuple(cmd.models.labels())
    split = cmd.mistake.split
    datasets = {split: cmd.data.load(split)} if cmd.mistakes else {}
    dist = parameter_distance(nets[0], nets[1], spec=cmd.distance, labels=labels)
    ctx.open(fingerprints(nets, datasets))
    if not cmd.mistakes:
        return dist
    ctx.say(f"mistakes of {labels[0]} and {labels[1]} on {split} ...")
    mistakes = mistake_analysis(nets[0], nets[1], datasets[split], spec=cmd.mistake, labels=labels)
    return DistanceAndMistakes(distance=dist, mistakes=mistakes)


def _distance_lines(r) -> list[str]:
    dist = getattr(r, "distance", r)
    lines = [f"{'module':<20} {'l2':>10} {'relative':>10} {'angle (deg)':>11}"]
    lines += [
        f"{row['module']:<20} {_fmt(row['l2']):>10} {_fmt(row['relative']):>10}  "
        f"{_fmt(row['angle_deg']):>10}"
        for row in dist.table()
    ]
    m = getattr(r, "mistakes", None)
    if m is not None:
        a, b = m.models
        lines.append(
            f"mistakes on {m.split} ({m.n} examples): both right {m.both_right}, both wrong "
            f"{m.both_wrong} ({m.both_wrong_same} with the same label), only {a} wrong "
            f"{m.only_a_wrong}, only {b} wrong {m.only_b_wrong}; agreement {_fmt(m.agreement)}"
        )
    return lines


DISTANCE = Command(
    "distance", DistanceCommand, run_distance, text=DISTANCE_HELP, summary=_distance_lines
)
distance_cmd = typer_command(DISTANCE)


# -- rewind ----------------------------------------------------------------------------------
REWIND_HELP = """Rewind one module at a time to its initial value and measure the damage.

For every module M (--modules; default every module that owns parameters), the model
with M's parameters set back to --init and the rest left at --weights is evaluated on
--split; change = metric(M rewound) - metric(final), for the loss and the accuracy (Zhang,
Bengio & Singer 2019, "Are all layers created equal?"). Buffers stay final.
figures/rewind shows the accuracy drop (final minus rewound) per module.

JSON (--json): the rewind result: kind, schema, baseline (the final model's loss and
accuracy), rewound and change (per module), split, definition and spec. The run folder is
--out.

Examples:

  basinscope rewind --model mlp --weights final.safetensors --init init.safetensors

  basinscope rewind --weights final.safetensors --init init.safetensors --modules fc1 \\
      --split train --json
"""


@dataclass(frozen=True)
class _Trained(ModelOptions):
    weights: Path | None = option(None, "Weights of the trained model.")


@dataclass(frozen=True)
class _RewindOnTest(RewindSpec):
    split: str | None = option("test", "Split the models are evaluated on.")


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
        from basinscope.inputs import load_model

        m = self.model
        final, start = m.load(), load_model(m.model, m.model_kwargs, self.init)
        data = {split: self.data.load(split)}
        ctx.open(fingerprints([final, start], data))
        return final, start, data


@dataclass(frozen=True)
class RewindCommand(_FinalAndInit):
    rewind: _RewindOnTest = group(_RewindOnTest)


def run_rewind(cmd: RewindCommand, ctx: Context):
    from basinscope.analyses.rewind import rewind

    spec = cmd.rewind
    final, start, data = cmd.open(spec.split, ctx)
    ctx.say(f"rewinding each module on {spec.split} ({len(data[spec.split])} examples) ...")
    return rewind(final, start, data, spec=spec)


def _rewind_lines(r) -> list[str]:
    base = r.baseline
    lines = [
        f"final model on {r.split}: loss {_fmt(base['loss'])}, accuracy {_fmt(base['accuracy'])}",
        f"{'module rewound':<20} {'loss':>10} {'accuracy':>10} {'acc. drop':>10}",
    ]
    return lines + [
        f"{m:<20} {_fmt(v['loss']):>10} {_fmt(v['accuracy']):>10} "
        f"{_fmt(-r.change[m]['accuracy']):>10}"
        for m, v in r.rewound.items()
    ]


REWIND = Command("rewind", RewindCommand, run_rewind, text=REWIND_HELP, summary=_rewind_lines)
rewind_cmd = typer_command(REWIND)


# -- criticality -----------------------------------------------------------------------------
CRITICALITY_HELP = """Module criticality and network criticality (Chatterji, Neyshabur & Sedghi 2020).

For module i, theta_i^alpha = (1 - alpha) theta_i^0 + alpha theta_i^F interpolates
between its initial value (--init, alpha = 0) and its final value (--weights, alpha = 1)
with the rest final; mu_i(epsilon) is the minimum over the
grid of --alphas x --sigmas of alpha^2 ||theta_i^F - theta_i^0||^2 / sigma_eff^2 subject
to E_u L(theta_i^alpha + u) <= epsilon, u ~ N(0, sigma_eff^2 I) (--samples antithetic
draws, an even number). --noise-variant absolute: sigma_eff = sigma; frobenius: sigma_eff =
sigma ||theta_i^F|| / sqrt(n_i). --epsilon defaults to the final model's loss + 0.1.
The network criticality is the sum of mu_i. figures/criticality shows mu per module and
each module's mean loss over the grid, with the loss = epsilon boundary and the minimiser.

JSON (--json): the criticality result: kind, schema, modules (per module: mu, alpha_star,
sigma_star, delta_sq_norm, weight_norm, numel, noise_scale, noise_sq_norm, loss,
feasible), alphas, sigmas, epsilon, baseline_loss, settings, network_criticality,
definition and spec. An infeasible module has mu "inf". The run folder is --out.

Examples:

  basinscope criticality --model mlp --weights final.safetensors --init init.safetensors

  basinscope criticality --weights final.safetensors --init init.safetensors \\
      --alphas 0:1:6 --sigmas 0.05:0.5:4 --samples 2 --noise-variant frobenius --json
"""


@dataclass(frozen=True)
class _CriticalityOnTrain(CriticalitySpec):
    split: str | None = option("train", "Split whose loss L is thresholded.")


@dataclass(frozen=True)
class CriticalityCommand(_FinalAndInit):
    criticality: _CriticalityOnTrain = group(_CriticalityOnTrain)


def run_criticality(cmd: CriticalityCommand, ctx: Context):
    from basinscope.analyses.criticality import module_criticality
    from basinscope.analyses.distance import group_by_module

    spec = cmd.criticality
    final, start, data = cmd.open(spec.split, ctx)
    groups = group_by_module([n for n, _ in final.named_parameters()], spec.modules)
    ctx.say(
        f"criticality of {len(groups)} modules on {spec.split} ({len(data[spec.split])} "
        f"examples): {len(spec.alphas)} x {len(spec.sigmas)} grid, {spec.samples} draws per "
        "point ..."
    )
    return module_criticality(final, start, data, spec=spec)


def _criticality_lines(r) -> list[str]:
    lines = [
        f"epsilon {_fmt(r.epsilon)} (final {r.settings['split']} loss {_fmt(r.baseline_loss)}); "
        f"noise {r.settings['noise']}",
        f"{'module':<20} {'mu':>10} {'alpha*':>8} {'sigma*':>8}",
    ]
    lines += [
        f"{name:<20} {_fmt(m.mu):>10} {_fmt(m.alpha_star):>8} {_fmt(m.sigma_star):>8}"
        for name, m in r.modules.items()
    ]
    return [*lines, f"network criticality: {_fmt(r.network_criticality)}"]


CRITICALITY = Command(
    "criticality",
    CriticalityCommand,
    run_criticality,
    text=CRITICALITY_HELP,
    summary=_criticality_lines,
)
criticality_cmd = typer_command(CRITICALITY)


# -- finetune --------------------------------------------------------------------------------
FINETUNE_HELP = """Fine-tune a pretrained model on a shifted target; forgetting and adaptation.

The data options (--data, --rotation, --block-shuffle, --noise) describe the target
distribution; the source is the same --data with --source-rotation and no other shift.
Each --strategy (repeat to compare several in one run) trains a copy of the model on the
target's train split: ft (all parameters), lp (the head only, BatchNorm frozen), lp-ft
(--lp-steps of LP, then FT; Kumar et al. 2022), surgical (the modules matching --blocks,
fnmatch patterns; Lee et al. 2022), dfr (the re-initialised head on the first
--dfr-examples of the target's train split; Kirichenko et al. 2022) or guided (the top
--guided-top-k modules by --guided-signal on the target). Source and target accuracy are
measured on --eval-split before and after: forgetting = source accuracy before - after,
adaptation = target accuracy after - before. Each strategy's weights are saved as
RUN/models/<strategy>.safetensors; figures/finetune_comparison shows forgetting and
adaptation.

JSON (--json): the comparison: kind, schema, strategies (one fine-tuning result per
strategy: strategy, trainable, ranking, signal, before, after, forgetting, adaptation,
config, history, trainable_params, definition, spec), eval_split, source, target (the
data options of each), weights_files (strategy -> file) and definition. The run folder is
--out.

Examples:

  basinscope finetune --model mlp --weights pretrained.safetensors --data digits \\
      --rotation 35 --strategy ft --strategy lp --strategy lp-ft

  basinscope finetune --model lenet --weights lenet.safetensors --rotation 35 \\
      --strategy surgical --blocks 'conv*' --steps 200 --lr 0.01 --json
"""


@dataclass(frozen=True)
class _Pretrained(ModelOptions):
    weights: Path | None = option(None, "Weights of the pretrained model.")


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
        flag = self.name_of("strategies")
        if len(set(self.strategies)) != len(self.strategies):
            raise BasinscopeError(f"each {flag} may be given once, got {list(self.strategies)}")
        if self.finetune.blocks and "surgical" not in self.strategies:
            blocks = self.finetune.name_of("blocks")
            raise BasinscopeError(
                f"{blocks} is only used by {flag} surgical; add it or drop {blocks}"
            )


def run_finetune(cmd: FinetuneCommand, ctx: Context):
    from basinscope.models import save_weights
    from basinscope.store import paths
    from basinscope.training.finetune import (
        FinetuneComparison,
        finetune,
        head_parameters,
        surgical_parameters,
    )

    strategies = cmd.strategies or ("ft",)
    base, config = cmd.finetune, cmd.train.config()
    net = cmd.model.load()
    if "surgical" in strategies:
        surgical_parameters(net, base.blocks)  # the patterns, checked before any work
    if base.head is not None or {"lp", "lp-ft", "dfr"} & set(strategies):
        head_parameters(net, base.head)
    target = cmd.data
    source = DataOptions(data=target.data, rotation=cmd.source_rotation)
    split = cmd.eval_split
    target_train, target_eval = target.load("train"), target.load(split)
    source_eval = source.load(split)
    dfr_data = None
    if "dfr" in strategies:
        n = min(cmd.dfr_examples, len(target_train))
        dfr_data = target_train.subset(list(range(len(target_train) - n, len(target_train))))
    datasets = {"target_train": target_train, f"target_{split}": target_eval}
    datasets[f"source_{split}"] = source_eval
    ctx.open(fingerprints([net], datasets))
    results, files = [], {}
    for s in strategies:
        n_train = len(dfr_data) if s == "dfr" else len(target_train)
        ctx.say(f"fine-tuning with {s} for {config.steps} steps on {n_train} target examples")
        r = finetune(
            net,
            target_train,
            spec=base.replace(strategy=s),
            config=config,
            dfr_data=dfr_data,
            source_data=source_eval,
            eval_target=target_eval,
        )
        files[s] = str(save_weights(r.model, ctx.out / paths.MODELS / f"{s}.safetensors"))
        results.append(r)
    return FinetuneComparison(
        strategies=tuple(results),
        eval_split=split,
        source=source.to_dict(),
        target=target.to_dict(),
        weights_files=files,
    )


def _finetune_lines(r) -> list[str]:
    lines = [
        f"{'strategy':<10} {'params':>8} {'src before':>10} {'src after':>10} "
        f"{'tgt before':>10} {'tgt after':>10} {'forgetting':>10} {'adaptation':>10}"
    ]
    lines += [
        f"{row['strategy']:<10} {row['trainable_params']:>8} "
        f"{_fmt(row['source_accuracy_before']):>10} {_fmt(row['source_accuracy_after']):>10} "
        f"{_fmt(row['target_accuracy_before']):>10} {_fmt(row['target_accuracy_after']):>10} "
        f"{_fmt(row['forgetting']):>10} {_fmt(row['adaptation']):>10}"
        for row in r.table()
    ]
    folder = Path(next(iter(r.weights_files.values()))).parent if r.weights_files else None
    return [*lines, f"fine-tuned weights: {folder}"] if folder else lines


FINETUNE = Command(
    "finetune", FinetuneCommand, run_finetune, text=FINETUNE_HELP, summary=_finetune_lines
)
finetune_cmd = typer_command(FINETUNE)
