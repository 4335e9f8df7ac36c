"""``basinscope instability`` and ``basinscope ensemble``: training dynamics, generated from
the specs of :mod:`basinscope.analyses.instability` and :mod:`basinscope.analyses.ensembles`."""

from __future__ import annotations

from dataclasses import dataclass

from basinscope.analyses.ensembles import EnsembleResult, EnsembleSpec, EnsembleStart, ensemble
from basinscope.analyses.instability import (
    InitialModel,
    InstabilitySpec,
    InstabilitySweep,
    InstabilityTraining,
    TransferVariant,
    instability_analysis,
)
from basinscope.cli.generate import Command, Context
from basinscope.inputs import DataOptions, TaskOptions, fingerprints
from basinscope.spec import Spec, group, option
from basinscope.store import paths


@dataclass(frozen=True)
class InstabilityCommand(Spec):
    model: InitialModel = group(InitialModel)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    split: str = option("test", "Split the barriers are measured on (training uses train).")
    instability: InstabilitySpec = group(InstabilitySpec)
    train: InstabilityTraining = group(InstabilityTraining)
    variant: TransferVariant = group(TransferVariant)

    def check(self) -> None:
        if self.variant.transfer:
            self.instability.check_transfer(self.variant.name_of("transfer"))
        self.train.config(self.instability.total_steps)  # checked by TrainConfig


def run_instability(cmd: InstabilityCommand, ctx: Context):
    m, spec, pre = cmd.model, cmd.instability, cmd.variant.load(cmd.model)
    net, data = m.load(), cmd.data.load("train")
    ev = data if cmd.split == "train" else cmd.data.load(cmd.split)
    ctx.open(fingerprints([net] if pre is None else [pre, net], {"train": data, cmd.split: ev}))
    ctx.say(spec.plan(cmd.variant.pretrained))
    init = None if pre is not None and m.weights is None else net  # None: W re-initialized
    return instability_analysis(
        init,
        data,
        spec=spec,
        config=cmd.train,
        eval_data=ev,
        pretrained=pre,
        init_seed=m.init_seed,
        task=cmd.task.build(),
    )


INSTABILITY = Command(
    "instability",
    InstabilityCommand,
    run_instability,
    about=InstabilitySpec,
    result=InstabilitySweep,
    examples="""
    basinscope instability --model mlp --k 0,10,50 --total-steps 200 --lr 0.05

    basinscope instability --model lenet --weights init.safetensors --k 0,100,500 \\
        --total-steps 2000 --children 3 --child-seeds 1,2,3 --json

    basinscope instability --model lenet --transfer --pretrained runs/lenet/model.safetensors \\
        --data digits --rotation 35 --total-steps 200
    """,
)


@dataclass(frozen=True)
class EnsembleCommand(Spec):
    model: EnsembleStart = group(EnsembleStart)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    split: str = option("test", "Split the ensemble is evaluated on (training uses train).")
    ensemble: EnsembleSpec = group(EnsembleSpec)

    def check(self) -> None:
        self.ensemble.check_start(self.model.weights is not None, self.model.name_of("weights"))


def run_ensemble(cmd: EnsembleCommand, ctx: Context):
    spec, start, train = cmd.ensemble, cmd.model.load(), cmd.data.load("train")
    ev = train if cmd.split == "train" else cmd.data.load(cmd.split)
    datasets = {"train": train, cmd.split: ev}
    ctx.open(fingerprints([] if cmd.model.weights is None else [start], datasets))
    ctx.say(spec.plan(cmd.model.weights))
    res = ensemble(start, train, spec=spec, eval_data=ev, split=cmd.split, task=cmd.task.build())
    return res.save_members(ctx.out / paths.MODELS)


ENSEMBLE = Command(
    "ensemble",
    EnsembleCommand,
    run_ensemble,
    about=EnsembleSpec,
    result=EnsembleResult,
    examples="""
    basinscope ensemble --model mlp --weights runs/mlp/model.safetensors --method fge \\
        --cycles 4 --cycle-steps 50 --pretrain-steps 500

    basinscope ensemble --model mlp --weights runs/mlp/model.safetensors --method swa \\
        --steps 200 --lr 0.02

    basinscope ensemble --model mlp --method independent --members 4 --budget 700 --json
    """,
)
