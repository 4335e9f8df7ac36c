"""Training dynamics from the command line: ``basinscope instability`` (are children of
one parent linearly connected?) and ``basinscope ensemble`` (FGE, SWA and independent
ensembles).

Each command is its spec (option groups and the analysis's spec), a ``run`` function that
returns the analysis's result, and its help; :mod:`basinscope.cli.generate` does the rest
(the run folder, ``--json``, the figure).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope._checks import MAX_COUNT, MAX_SEED, MAX_STEPS
from basinscope.analyses.ensembles import EnsembleSpec
from basinscope.analyses.instability import InstabilitySpec, _int_list
from basinscope.cli.barrier import fmt
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelOptions, fingerprints
from basinscope.spec import Spec, group, option
from basinscope.store import paths
from basinscope.training.config import OPTIMIZERS, TrainConfig
from basinscope.training.schedules import SCHEDULES


def _milestones(text: str) -> tuple[int, ...]:
    return _int_list("--milestones", "50,80")(text) if text.strip() else ()


@dataclass(frozen=True)
class TrainOptions(Spec):
    """The training of the parent and its children (a :class:`TrainConfig` without its
    length, which the instability analysis sets)."""

    lr: float = option(0.05, "Learning rate.")
    batch_size: int = option(64, "Minibatch size.", low=1, high=MAX_COUNT)
    optimizer: str = option("sgd", "sgd, adam or adamw.", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.0, "L2 penalty (decoupled for adamw).")
    schedule: str = option(
        "constant", "constant, step, cosine, linear or cyclic.", choices=SCHEDULES
    )
    warmup_steps: int = option(0, "Updates of linear warmup.", low=0, high=MAX_STEPS)
    milestones: tuple[int, ...] = option(
        (),
        "step schedule: e.g. 50,80.",
        parse=_milestones,
        metavar="STEP,STEP",
        low=0,
        high=MAX_STEPS,
    )
    gamma: float = option(0.1, "step schedule: factor per milestone.")
    min_lr: float = option(0.0, "cosine/linear/cyclic: lowest rate.")
    cycle_steps: int | None = option(None, "cyclic: updates per cycle.", low=1, high=MAX_STEPS)
    data_seed: int = option(0, "Data-order seed of the parent.", low=0, high=MAX_SEED)

    def config(self, steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, **self.kwargs())


@dataclass(frozen=True)
class StartModel(ModelOptions):
    weights: Path | None = option(
        None, "Initial weights theta_0 (with --transfer: the random initialization)."
    )
    init_seed: int = option(
        0, "Seed of the initialization when --weights is not given.", low=0, high=MAX_SEED
    )

    def load(self) -> Any:
        from basinscope.inputs import load_model

        return load_model(self.model, self.model_kwargs, self.weights, self.init_seed)


# -- instability -----------------------------------------------------------------------------
INSTABILITY_HELP = """Instability analysis (Frankle et al. 2020): are children of one parent linearly connected?

A parent is trained for k updates from the initial weights (--weights, or a fresh
initialization with --init-seed); --children copies then finish training to --total-steps
updates with different data orders (--child-seeds), starting from the parent's optimizer
state unless --reset-optimizer. The instability at k is the barrier (--definition, default
Frankle's mean; --metric, default error) between the children on --split, averaged over
pairs (the largest pair is reported too). Every k in --k is a separate parent: the sweep is
plotted as barrier vs k next to the children's curves (figures/instability_sweep).
--child-schedule continue makes parent + child follow one run's learning rate (constant,
step, cyclic at a cycle boundary); restart runs the schedule anew in each child.

With --transfer --pretrained W (Neyshabur et al. 2020): two children fine-tuned for
--total-steps from the pre-trained weights against two trained from a random
initialization (--weights, or W re-initialized with --init-seed)
(figures/transfer_instability).

JSON (--json): a sweep (kind "instability_sweep") has ks, values (mean barrier per k),
max_values, definition, metric, results (per k, kind "instability": value, max_value,
barriers, pairs, child_values, child_seeds, details with every barrier's curve,
settings), spec and config (the training settings); --transfer (kind
"transfer_instability") has pretrained_barrier, scratch_barrier, definition, metric,
pretrained and scratch (each such a per-k result), spec and config.

Examples:

  basinscope instability --model mlp --k 0,10,50 --total-steps 200 --lr 0.05

  basinscope instability --model lenet --weights init.safetensors --k 0,100,500 \\
      --total-steps 2000 --children 3 --child-seeds 1,2,3 --json

  basinscope instability --model lenet --transfer --pretrained runs/lenet/model.safetensors \\
      --data digits --rotation 35 --total-steps 200
"""


@dataclass(frozen=True)
class InstabilityCommand(Spec):
    model: StartModel = group(StartModel)
    data: DataOptions = group(DataOptions)
    split: str = option("test", "Split the barriers are measured on (training uses train).")
    instability: InstabilitySpec = group(InstabilitySpec)
    train: TrainOptions = group(TrainOptions)
    transfer: bool = option(
        False, "Pre-trained start vs random init (needs --pretrained).", flag="--transfer"
    )
    pretrained: Path | None = option(None, "With --transfer: the pre-trained weights.")

    def check(self) -> None:
        name = self.name_of
        if self.transfer and self.pretrained is None:
            raise BasinscopeError(
                f"{name('transfer')} needs {name('pretrained')} W: the pre-trained weights "
                "whose fine-tuned copies are compared with copies trained from a random "
                "initialization"
            )
        if self.pretrained is not None and not self.transfer:
            raise BasinscopeError(
                f"{name('pretrained')} is only used with {name('transfer')}; add "
                f"{name('transfer')} (or pass the initial weights with "
                f"{self.model.name_of('weights')} for a sweep over k)"
            )
        if self.transfer and self.instability.ks is not None:
            raise BasinscopeError(
                f"{name('transfer')} spawns the children at k=0 and trains them for "
                f"{self.instability.name_of('total_steps')}: drop "
                f"{self.instability.name_of('ks')}"
            )
        self.train.config(self.instability.total_steps)  # checked by TrainConfig


def run_instability(cmd: InstabilityCommand, ctx: Context):
    from basinscope.analyses.instability import instability_sweep, transfer_instability
    from basinscope.inputs import load_model

    spec = cmd.instability
    config = cmd.train.config(spec.total_steps)
    net = cmd.model.load()
    train_data = cmd.data.load("train")
    eval_data = train_data if cmd.split == "train" else cmd.data.load(cmd.split)
    nets = [net]
    if cmd.transfer:
        m = cmd.model
        nets.insert(0, load_model(m.model, m.model_kwargs, cmd.pretrained))
    ctx.open(fingerprints(nets, {"train": train_data, cmd.split: eval_data}))
    common = dict(
        config=config,
        eval_data=eval_data,
        bn_data=train_data if spec.bn_policy == "recompute" else None,
        spec=spec,
    )
    if cmd.transfer:
        ctx.say(
            f"transfer instability: {spec.children} children fine-tuned from {cmd.pretrained} "
            f"and {spec.children} from a random initialization, {spec.total_steps} updates "
            "each ..."
        )
        return transfer_instability(
            nets[0],
            train_data,
            steps=spec.total_steps,
            random_init=net if cmd.model.weights is not None else None,
            init_seed=cmd.model.init_seed,
            child_seeds=spec.child_seeds or tuple(range(1, spec.children + 1)),
            **common,
        )
    ks = spec.default_ks()
    ctx.say(
        f"instability at k = {', '.join(map(str, sorted(ks)))}: a parent per k, "
        f"{spec.children} children each, {spec.total_steps} updates in all ..."
    )
    return instability_sweep(net, train_data, **common)


def _instability_lines(r) -> list[str]:
    if r.kind == "transfer_instability":
        return [
            f"{r.definition} barrier of the {r.metric}: pre-trained start "
            f"{fmt(r.pretrained_barrier)}, random init {fmt(r.scratch_barrier)}"
        ]
    return [
        f"k={x.k:<6} {x.definition} barrier of the {x.metric}: {fmt(x.value)} (max over "
        f"pairs {fmt(x.max_value)}; children " + ", ".join(fmt(v) for v in x.child_values) + ")"
        for x in r.results
    ]


INSTABILITY = Command(
    "instability",
    InstabilityCommand,
    run_instability,
    text=INSTABILITY_HELP,
    summary=_instability_lines,
)
instability_cmd = typer_command(INSTABILITY)


# -- ensemble --------------------------------------------------------------------------------
ENSEMBLE_HELP = """Ensembles from one run (FGE, SWA) or independent ensembles, with their budget.

--method fge (fast geometric ensembling, Garipov et al. 2018): from the trained model
(--weights), --cycles cycles of --cycle-steps updates with a cyclic learning rate between
--lr-max and --lr-min; one snapshot per cycle at the lowest rate; the ensemble averages
the snapshots' softmax. --method swa (stochastic weight averaging, Izmailov et al. 2018):
from the trained model, --steps updates at the constant rate --lr, the weights averaged
after update --swa-start every --swa-every updates (BatchNorm statistics re-estimated).
--method independent: --members models from fresh initializations (seeds 0, 1, ...),
--steps updates each, or --budget updates in all (the baseline at the same budget).
The budget counts gradient steps, plus --pretrain-steps for the trained starting model.
Accuracy, diversity (mean pairwise disagreement) and the barriers between consecutive
members are measured on --split; figures/ensemble plots them. The members are saved in
models/ in the run folder.

JSON (--json): the ensemble result (kind "ensemble"): method, definition, budget,
members, ensemble_accuracy, member_accuracies, diversity, barriers, barrier_definition,
barrier_metric, metrics (ensemble_nll, member_nll, pairwise_disagreement,
barrier_details, ...), settings, member_names, member_files and spec (the settings).

Examples:

  basinscope ensemble --model mlp --weights runs/mlp/model.safetensors --method fge \\
      --cycles 4 --cycle-steps 50 --pretrain-steps 500

  basinscope ensemble --model mlp --weights runs/mlp/model.safetensors --method swa \\
      --steps 200 --lr 0.02

  basinscope ensemble --model mlp --method independent --members 4 --budget 700 --json
"""


@dataclass(frozen=True)
class EnsembleStart(ModelOptions):
    weights: Path | None = option(None, "fge/swa: the trained model to start from.")


@dataclass(frozen=True)
class EnsembleCommand(Spec):
    model: EnsembleStart = group(EnsembleStart)
    data: DataOptions = group(DataOptions)
    split: str = option("test", "Split the ensemble is evaluated on (training uses train).")
    ensemble: EnsembleSpec = group(EnsembleSpec)

    def check(self) -> None:
        method, weights = self.ensemble.method, self.model.weights
        flag, method_flag = self.model.name_of("weights"), self.ensemble.name_of("method")
        if method in ("fge", "swa") and weights is None:
            raise BasinscopeError(
                f"{method_flag} {method} starts from a trained model: pass its weights with "
                f"{flag} (e.g. RUN/model.safetensors from `basinscope train`); "
                f"{method_flag} independent trains from scratch"
            )
        if method == "independent" and weights is not None:
            raise BasinscopeError(
                f"{method_flag} independent trains every member from a fresh initialization: "
                f"drop {flag} (use {method_flag} fge or swa to start from a trained model)"
            )


def run_ensemble(cmd: EnsembleCommand, ctx: Context):
    from basinscope.analyses.ensembles import ensemble
    from basinscope.models import build_model, save_weights

    spec, m = cmd.ensemble, cmd.model
    net = m.load() if m.weights is not None else None
    train_data = cmd.data.load("train")
    eval_data = train_data if cmd.split == "train" else cmd.data.load(cmd.split)
    ctx.open(
        fingerprints([net] if net is not None else [], {"train": train_data, cmd.split: eval_data})
    )
    if spec.method == "fge":
        ctx.say(f"fge: {spec.cycles} cycles of {spec.cycle_steps} updates from {m.weights} ...")
    elif spec.method == "swa":
        ctx.say(
            f"swa: {spec.run_steps()} updates at lr {spec.lr:g} from {m.weights}, averaging "
            f"after {spec.swa_start()} ..."
        )
    else:
        ctx.say(f"independent ensemble: {spec.n} models, {spec.run_steps()} updates each ...")
    kwargs = json.loads(m.model_kwargs)

    def factory(seed: int):
        return build_model(m.model, kwargs, init_seed=seed)

    res = ensemble(
        net if net is not None else factory,
        train_data,
        spec=spec,
        eval_data=eval_data,
        bn_data=train_data if spec.bn_policy == "recompute" else None,
        split=cmd.split,
    )
    files = [
        str(save_weights(model, ctx.out / paths.MODELS / f"{name}.safetensors"))
        for name, model in zip(res.member_names, res.models)
    ]
    return dataclasses.replace(res, member_files=tuple(files))


def _ensemble_lines(r) -> list[str]:
    what = "SWA model" if r.method == "swa" else f"ensemble of {r.members}"
    split = r.metrics.get("split", "the evaluation data")
    lines = [
        f"{r.method}: {what} accuracy {fmt(r.ensemble_accuracy)} on {split} "
        f"(budget {r.budget} updates)",
        "  members: "
        + ", ".join(f"{n} {fmt(a)}" for n, a in zip(r.member_names, r.member_accuracies)),
        f"  diversity (mean disagreement) {fmt(r.diversity)}",
    ]
    if r.barriers:
        lines.append(
            f"  {r.barrier_definition} barriers of the {r.barrier_metric} between consecutive "
            "members: " + ", ".join(fmt(b) for b in r.barriers)
        )
    return lines


ENSEMBLE = Command(
    "ensemble", EnsembleCommand, run_ensemble, text=ENSEMBLE_HELP, summary=_ensemble_lines
)
ensemble_cmd = typer_command(ENSEMBLE)
