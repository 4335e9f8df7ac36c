"""``basinscope train``: :class:`~basinscope.training.TrainSpec` in a run folder."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from basinscope.cli.common import info
from basinscope.cli.generate import Command, Context
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelOptions, TaskOptions, load_model, model_spec
from basinscope.spec import Spec, group
from basinscope.training.run import TrainRun, TrainSpec


@dataclass(frozen=True)
class TrainCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    train: TrainSpec = group(TrainSpec)


def run_train(cmd: TrainCommand, ctx: Context) -> TrainRun:
    from basinscope.experiments.stages import train_stage

    m, spec, data = cmd.model, cmd.train, {"train": cmd.data.load("train")}
    with contextlib.suppress(BasinscopeError):  # e.g. an .npz of x and y only: no test split
        data["test"] = cmd.data.load("test")
    net = load_model(m.model, m.model_kwargs, m.weights, spec.init_seed)
    ident = {**model_spec(m.model, m.model_kwargs, m.weights), **cmd.data.to_dict()}
    ident["init_seed"] = spec.init_seed
    task = cmd.task.build()
    place = {"device": spec.device, "dtype": spec.dtype}
    stage = train_stage(
        ctx.out, net, data["train"], spec.config(), ident, progress=ctx.progress, task=task, **place
    )
    if stage.reused:
        info(f"reusing the finished run in {stage.run_dir}")
    return stage.record.evaluated(net, stage.model, data, spec, task=task, **place)


EXAMPLES = """
basinscope train --model basinscope.models:lenet --data digits --steps 500 --out runs/lenet

basinscope train --model basinscope.models:lenet --weights runs/lenet/model.safetensors \\
    --data digits --rotation 35 --steps 100 --checkpoint-every 10 --out runs/ft35
"""
TRAIN = Command("train", TrainCommand, run_train, EXAMPLES, about=TrainSpec, result=TrainRun)
