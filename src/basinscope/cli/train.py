"""``basinscope train``: the deterministic trainer, with a trajectory for PCA planes.

Generated from its spec (:mod:`basinscope.cli.generate`): the model and data option groups
and :class:`~basinscope.training.TrainSpec`. The run folder holds a
:class:`~basinscope.training.TrainRun` and the files other commands take.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from basinscope.cli.common import info
from basinscope.cli.generate import Command, Context, typer_command
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelOptions, load_model, model_spec
from basinscope.spec import Spec, group
from basinscope.training.run import TrainSpec

HELP = """Train a model deterministically and save its weights and trajectory.

The run folder gets model.safetensors (final weights, for --weights), trajectory.safetensors
(the checkpoints, for `basinscope surface --pca` and --trajectory), result.json (the loss
history and the final metrics), manifest.json and figures/train (the training loss). The
--weights given are the start instead of a fresh initialization. The same command with the
same --out reuses a finished run.

JSON (--json): history (loss and lr by step), checkpoint_steps, config, weights,
trajectory, run_dir, initial and final (loss and accuracy of the first and last model on
train and test), spec, definition.

Examples:

  basinscope train --model basinscope.models:lenet --data digits --steps 500 --out runs/lenet

  basinscope train --model basinscope.models:lenet --weights runs/lenet/model.safetensors \\
      --data digits --rotation 35 --steps 100 --checkpoint-every 10 --out runs/ft35
"""


@dataclass(frozen=True)
class TrainCommand(Spec):
    model: ModelOptions = group(ModelOptions)
    data: DataOptions = group(DataOptions)
    train: TrainSpec = group(TrainSpec)


def run_train(cmd: TrainCommand, ctx: Context):
    from basinscope.engine import evaluate_model
    from basinscope.experiments.stages import train_stage

    m, spec = cmd.model, cmd.train
    train_data = cmd.data.load("train")
    try:
        test_data = cmd.data.load("test")
    except BasinscopeError:
        test_data = None  # e.g. an .npz with only x/y: report training metrics only
    net = load_model(m.model, m.model_kwargs, m.weights, spec.init_seed)
    identity = {
        **model_spec(m.model, m.model_kwargs, m.weights),
        **cmd.data.to_dict(),
        "init_seed": spec.init_seed,
    }
    stage = train_stage(ctx.out, net, train_data, spec.config(), identity, progress=ctx.progress)
    if stage.reused:
        info(f"reusing the finished run in {stage.run_dir}")
    evals = {"train": train_data} if test_data is None else {"train": train_data, "test": test_data}
    return dataclasses.replace(
        stage.record,
        initial=evaluate_model(net, evals),
        final=evaluate_model(stage.model, evals),
        spec=spec,
    )


def _summary(run) -> list[str]:
    return [
        "trained: " + ", ".join(f"{k} {v:.4f}" for k, v in (run.final or {}).items()),
        f"weights: {run.weights}",
        f"trajectory: {run.trajectory}",
    ]


TRAIN = Command("train", TrainCommand, run_train, text=HELP, summary=_summary)
train_cmd = typer_command(TRAIN)
