"""A training run as a result: the settings of ``basinscope train`` (:class:`TrainSpec`) and
what a train run folder holds (:class:`TrainRun`).

A train run folder is a run folder like any other (``manifest.json``, ``result.json``,
``figures/``) with two more files, the ones users pass on to other commands:
``model.safetensors`` (the final weights: ``--weights``) and ``trajectory.safetensors``
(the checkpoints: ``basinscope surface --pca`` or ``--trajectory``); their names are
:data:`basinscope.store.paths.WEIGHTS` and :data:`~basinscope.store.paths.TRAJECTORY`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from basinscope._checks import check_seed
from basinscope.errors import BasinscopeError
from basinscope.result import Result
from basinscope.spec import EVAL_DTYPES, EvalOptions, Spec, option
from basinscope.training.config import TrainConfig

__all__ = ["MAX_CHECKPOINTS", "TrainRun", "TrainSpec", "history_dataset"]

#: Most checkpoints a run may record (each is a full copy of the parameters).
MAX_CHECKPOINTS = 10_000


def _steps_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise BasinscopeError(
            f"--checkpoint-steps must be comma-separated integers, e.g. 0,10,100; got {text!r}"
        ) from None


@dataclass(frozen=True)
class TrainSpec(Spec):
    """Train a model deterministically and save its weights and trajectory.

    The run folder gets model.safetensors (final weights, for --weights), trajectory.safetensors
    (the checkpoints, for `basinscope surface --pca` and --trajectory), result.json (the loss
    history and the final metrics), manifest.json and figures/train (the training loss). The
    --weights given are the start instead of a fresh initialization. The same command with the
    same --out reuses a finished run.

    These settings are the model's initialization seed (--init-seed) and the TrainConfig of
    training.train() (config()), whose checks they pass on construction. The checkpoints are
    steps 0 and --steps, every --checkpoint-every steps, and the --checkpoint-steps given.
    """

    steps: int = option(500, "Number of gradient steps.")
    batch_size: int = option(64, "Minibatch size.")
    optimizer: str = option("sgd", "sgd, adam or adamw.")
    lr: float = option(0.05, "Base learning rate.")
    momentum: float = option(0.9, "SGD momentum (ignored by Adam).")
    weight_decay: float = option(0.0, "L2 penalty coefficient (decoupled for adamw).")
    schedule: str = option("constant", "constant, step, cosine, linear or cyclic.")
    warmup_steps: int = option(0, "Steps of linear learning-rate warmup.")
    init_seed: int = option(0, "Seed of the model's initialization.")
    data_seed: int = option(0, "Seed of the data order (the SGD noise).")
    checkpoint_every: int = option(
        0, "Save a checkpoint every N steps (0: only first and last).", low=0
    )
    checkpoint_steps: tuple[int, ...] = option(
        (), "Extra checkpoint steps, comma-separated.", parse=_steps_list, metavar="STEPS"
    )
    frozen: tuple[str, ...] = option(
        (), "Freeze parameters matching this pattern (fnmatch, repeatable), e.g. 'conv*'."
    )
    trainable: tuple[str, ...] = option(
        (), "Train only parameters matching this pattern (repeatable)."
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N or mps.")
    dtype: str = option(
        "float32",
        "float32, float64, or mixed precision bfloat16/float16 (autocast over float32 weights).",
        choices=EVAL_DTYPES,
    )

    def check(self) -> None:
        check_seed(self.name_of("init_seed"), self.init_seed)
        EvalOptions(device=self.device)  # the device exists here (named --device)
        every, total = self.checkpoint_every, self.steps
        if every and total // every + 1 > MAX_CHECKPOINTS:
            name = self.name_of("checkpoint_every")
            raise BasinscopeError(
                f"{name} {every} over {total} steps gives {total // every + 1:,} checkpoints, "
                f"more than the {MAX_CHECKPOINTS:,} allowed (each is a full copy of the "
                f"parameters); pass {name} {-(-total // (MAX_CHECKPOINTS - 1))} or more"
            )
        self.config()  # TrainConfig's checks

    def config(self) -> TrainConfig:
        """The :class:`~basinscope.training.TrainConfig` of these settings."""
        steps = {0, self.steps, *self.checkpoint_steps}
        if self.checkpoint_every:
            steps |= set(range(0, self.steps + 1, self.checkpoint_every))
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            data_seed=self.data_seed,
            checkpoint_steps=tuple(sorted(steps)),
            frozen=self.frozen,
            trainable=self.trainable,
        )


def history_dataset(history: Mapping[str, Sequence[float]]) -> xr.Dataset:
    """A trainer's history (:attr:`TrainResult.history`) as a Dataset: ``loss`` and ``lr``
    by ``step``, the ``eval_*`` values by ``eval_step``."""
    coords = {
        k: np.asarray(history[k], dtype=np.float64) for k in ("step", "eval_step") if k in history
    }
    data = {
        k: ("eval_step" if k.startswith("eval_") else "step", np.asarray(v, dtype=np.float64))
        for k, v in history.items()
        if k not in coords
    }
    return xr.Dataset(data, coords=coords)


@dataclass(frozen=True)
class TrainRun(Result, kind="train"):
    """A finished training run.

    ``history`` is the loss and learning rate of every update (:func:`history_dataset`),
    ``checkpoint_steps`` the steps recorded in ``trajectory``, ``config`` the training
    configuration; ``weights`` and ``trajectory`` are the run's files of the final weights
    and of the checkpoints, in ``run_dir``. ``initial`` and ``final`` are the metrics of
    the first and last model on each split (``basinscope train`` evaluates them; ``None``
    otherwise). ``definition`` names the optimizer and the learning-rate schedule.
    ``data_order`` (``"seeded permutation"`` or ``"loader"``), ``device``, ``dtype`` and
    ``task`` (the loss and how batches were read) are the trainer's
    (:class:`~basinscope.training.TrainResult`; ``None`` in records of older versions).
    """

    history: xr.Dataset
    checkpoint_steps: tuple[int, ...]
    config: TrainConfig
    weights: Path | None = None
    trajectory: Path | None = None
    run_dir: Path | None = None
    initial: dict[str, float] | None = None
    final: dict[str, float] | None = None
    spec: TrainSpec | None = None
    definition: str = ""
    data_order: str | None = None
    device: str | None = None
    dtype: str | None = None
    task: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.definition:
            c = self.config
            object.__setattr__(
                self,
                "definition",
                f"{c.optimizer} with a {c.schedule} learning-rate schedule, {c.steps} steps of "
                f"minibatches of {c.batch_size}",
            )

    def summary(self) -> list[str]:
        """The final metrics and the run's two files (what ``basinscope train`` prints)."""
        return [
            "trained: " + ", ".join(f"{k} {v:.4f}" for k, v in (self.final or {}).items()),
            f"weights: {self.weights}",
            f"trajectory: {self.trajectory}",
        ]

    def evaluated(
        self,
        initial: Any,
        final: Any,
        data: Mapping[str, Any],
        spec: TrainSpec | None = None,
        *,
        task: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> TrainRun:
        """This record with ``initial`` and ``final``: the metrics of the first and the last
        model on each split of ``data`` (``{split: data}``), and ``spec``. The metrics are
        the task's loss (default: cross-entropy) and the accuracy where the targets are
        class labels, evaluated on ``device`` (default: each model's) in ``dtype``
        (default float32)."""
        from basinscope.training._task import evaluate_task

        kw = {"task": task, "device": device, "dtype": dtype}
        return dataclasses.replace(
            self,
            initial=evaluate_task(initial, data, **kw),
            final=evaluate_task(final, data, **kw),
            spec=self.spec if spec is None else spec,
        )

    @classmethod
    def of(cls, result: Any, run_dir: str | Path | None = None, **fields: Any) -> TrainRun:
        """The record of :func:`~basinscope.training.train`'s ``result`` whose files are in
        ``run_dir`` (:data:`~basinscope.store.paths.WEIGHTS`, ``TRAJECTORY``)."""
        from basinscope.store import paths

        folder = Path(run_dir) if run_dir is not None else None
        for name in ("data_order", "device", "dtype", "task"):
            fields.setdefault(name, getattr(result, name, None))
        return cls(
            history=history_dataset(result.history),
            checkpoint_steps=tuple(sorted(int(s) for s in result.checkpoints)),
            config=result.config,
            weights=folder / paths.WEIGHTS if folder is not None else None,
            trajectory=folder / paths.TRAJECTORY if folder is not None else None,
            run_dir=folder,
            **fields,
        )
