"""``basinscope train``: the deterministic trainer, with a trajectory for PCA planes."""

from __future__ import annotations

from pathlib import Path

import typer

from basinscope._checks import check_seed
from basinscope.cli.common import (
    WAIT_OPT,
    DataOptions,
    default_out,
    emit_json,
    hold_out_folder,
    info,
    load_model,
    model_spec,
    out_callback,
    sanitize,
)
from basinscope.errors import BasinscopeError

HELP = """Train a model deterministically and save its weights and trajectory.

The run folder gets model.safetensors (final weights), trajectory.safetensors
(the checkpoints, for `basinscope surface --pca`), history.json and manifest.json.
The same command with the same --out reuses a finished run.

Examples:

  basinscope train --model basinscope.models:lenet --data digits --steps 500 --out runs/lenet

  basinscope train --model basinscope.models:lenet --weights runs/lenet/model.safetensors \\
      --data digits --rotation 35 --steps 100 --checkpoint-every 10 --out runs/ft35
"""


MAX_CHECKPOINTS = 10_000


def _steps(text: str, every: int, total: int) -> tuple[int, ...]:
    steps: set[int] = {0, total}
    if text:
        try:
            steps |= {int(s) for s in text.split(",") if s.strip()}
        except ValueError:
            raise BasinscopeError(
                f"--checkpoint-steps must be comma-separated integers, e.g. 0,10,100; got {text!r}"
            ) from None
    if every < 0:
        raise BasinscopeError(f"--checkpoint-every must be >= 0, got {every}")
    if every and total // every + 1 > MAX_CHECKPOINTS:
        raise BasinscopeError(
            f"--checkpoint-every {every} over {total} steps gives {total // every + 1:,} "
            f"checkpoints, more than the {MAX_CHECKPOINTS:,} allowed (each is a full copy of the "
            f"parameters); pass --checkpoint-every {-(-total // (MAX_CHECKPOINTS - 1))} or more"
        )
    if every:
        steps |= set(range(0, total + 1, every))
    return tuple(sorted(steps))


def train_cmd(
    model: str = typer.Option(
        "basinscope.models:lenet",
        "--model",
        help="A built-in name (mlp, lenet, resnet) or module:factory. module:factory imports "
        "that Python module, which runs its code: name only code you trust.",
    ),
    model_kwargs: str = typer.Option(
        None,
        "--model-kwargs",
        help="JSON keyword arguments for the factory, e.g. '{\"width\": 2}'.",
    ),
    weights: Path = typer.Option(
        None,
        "--weights",
        help="Start from these weights (.pt or .safetensors) instead of a fresh initialization.",
    ),
    data: str = typer.Option(
        "digits",
        "--data",
        help="digits, mnist, a .npz file (x, y or x_train, ...) or module:attr (imports that "
        "Python module, which runs its code: name only code you trust).",
    ),
    rotation: float = typer.Option(
        0.0, "--rotation", help="Rotate the images by this many degrees (counter-clockwise)."
    ),
    block_shuffle: int = typer.Option(
        None, "--block-shuffle", help="Shuffle k x k blocks of each image (one fixed permutation)."
    ),
    noise: float = typer.Option(
        0.0, "--noise", help="Std of additive Gaussian noise on the inputs."
    ),
    shift_seed: int = typer.Option(
        0, "--shift-seed", help="Seed of the block permutation and the noise."
    ),
    steps: int = typer.Option(500, "--steps", help="Number of gradient steps."),
    batch_size: int = typer.Option(64, "--batch-size"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd, adam or adamw."),
    lr: float = typer.Option(0.05, "--lr", help="Base learning rate."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    schedule: str = typer.Option(
        "constant", "--schedule", help="constant, step, cosine, linear or cyclic."
    ),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    init_seed: int = typer.Option(0, "--init-seed", help="Seed of the model's initialization."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the data order (the SGD noise)."),
    checkpoint_every: int = typer.Option(
        0, "--checkpoint-every", help="Save a checkpoint every N steps (0: only first and last)."
    ),
    checkpoint_steps: str = typer.Option(
        "", "--checkpoint-steps", help="Extra checkpoint steps, comma-separated."
    ),
    frozen: list[str] = typer.Option(
        [],
        "--frozen",
        help="Freeze parameters matching this pattern (fnmatch, repeatable), e.g. 'conv*'.",
    ),
    trainable: list[str] = typer.Option(
        [], "--trainable", help="Train only parameters matching this pattern (repeatable)."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Run folder (default: basinscope-runs/train-<time>).",
        callback=out_callback,
    ),
    wait: bool = WAIT_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar on stderr."
    ),
) -> None:
    from basinscope.engine import evaluate_model
    from basinscope.experiments.stages import train_stage
    from basinscope.store import atomic_write_json
    from basinscope.training import TrainConfig

    check_seed("--init-seed", init_seed)
    opts = DataOptions(data, rotation, block_shuffle, noise, shift_seed)
    train_data = opts.load("train")
    try:
        test_data = opts.load("test")
    except BasinscopeError:
        test_data = None  # e.g. an .npz with only x/y: report training metrics only
    net = load_model(model, model_kwargs, weights, init_seed)
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_steps=warmup_steps,
        data_seed=data_seed,
        checkpoint_steps=_steps(checkpoint_steps, checkpoint_every, steps),
        frozen=tuple(frozen),
        trainable=tuple(trainable),
    )
    spec = {**model_spec(model, model_kwargs, weights), **opts.to_dict(), "init_seed": init_seed}
    stage = train_stage(
        hold_out_folder(out or default_out("train"), wait),
        net,
        train_data,
        config,
        spec,
        progress=progress and not json_out,
    )
    if stage.reused:
        info(f"reusing the finished run in {stage.run_dir}", json_out)
    else:
        _plot_history(stage.run_dir, stage.history)
    evals = {"train": train_data} if test_data is None else {"train": train_data, "test": test_data}
    summary = {
        "run_dir": str(stage.run_dir),
        "weights": str(stage.run_dir / "model.safetensors"),
        "trajectory": str(stage.run_dir / "trajectory.safetensors"),
        "checkpoint_steps": sorted(stage.checkpoints),
        "reused": stage.reused,
        "initial": evaluate_model(net, evals),
        "final": evaluate_model(stage.model, evals),
    }
    atomic_write_json(stage.run_dir / "summary.json", sanitize(summary), "summary", indent=2)
    if json_out:
        emit_json(sanitize(summary))
    else:
        f = summary["final"]
        info(
            "trained: "
            + ", ".join(f"{k} {v:.4f}" for k, v in f.items())
            + f"\nweights: {summary['weights']}\ntrajectory: {summary['trajectory']}"
        )


def _plot_history(path: Path, history: dict) -> None:
    from matplotlib.figure import Figure

    from basinscope.store import atomic_path

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.plot(history["step"], history["loss"], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("minibatch loss")
    ax.set_yscale("log")
    ax.set_title("training loss")
    fig.tight_layout()
    with atomic_path(path / "figures" / "training_loss.png", "figure") as tmp:
        fig.savefig(tmp, format="png", dpi=150)


train_cmd.__doc__ = HELP
