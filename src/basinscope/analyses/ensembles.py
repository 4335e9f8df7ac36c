"""Ensembles from one run (FGE, SWA) against independently trained ensembles.

Three ways to spend a budget of gradient steps on more than one set of weights:

``fge``                  fast geometric ensembling (Garipov et al. 2018): from a trained
                         model, a cyclic learning rate; one snapshot per cycle at the
                         lowest rate; the ensemble averages the snapshots' softmax outputs.
``swa``                  stochastic weight averaging (Izmailov et al. 2018): from a trained
                         model, a constant rate; the running average of the weights, one
                         model whose BatchNorm statistics are re-estimated.
``independent_ensemble`` ``n`` models from different initialization and data-order seeds
                         (Lakshminarayanan et al. 2017's deep ensembles without the
                         adversarial training), the baseline at the same budget.

Each returns an :class:`EnsembleResult` with the ``budget`` in gradient steps (the
run's updates plus ``pretrain_steps`` for runs that start from a trained model), the
members, the ensemble's accuracy, the diversity (mean pairwise disagreement of the
members' predictions) and the barriers between consecutive collected points
(:func:`ensemble_metrics`). :func:`ensemble` runs any of the three from an
:class:`EnsembleSpec` (what ``basinscope ensemble`` runs).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from basinscope._checks import MAX_COUNT, MAX_POINTS, MAX_SEED, MAX_STEPS
from basinscope.analyses.barrier import BARRIER_METRICS, barrier_definition_option
from basinscope.analyses.instability import (
    bn_policy_option,
    check_device_field,
    device_option,
    dtype_option,
    pair_barrier,
    resolved,
    train_options,
)
from basinscope.analyses.similarity import evaluated
from basinscope.engine import as_batches, has_batchnorm
from basinscope.engine.task import Task, as_task
from basinscope.errors import BasinscopeError
from basinscope.inputs import ModelOptions, parse_json_kwargs
from basinscope.jsonable import jsonable
from basinscope.result import Result, fmt, transient
from basinscope.spec import Spec, option, takes_spec
from basinscope.training import TrainConfig, train
from basinscope.training.callbacks import FGE, SWA
from basinscope.training.config import OPTIMIZERS

__all__ = [
    "ENSEMBLE_METHODS",
    "EnsembleResult",
    "EnsembleSpec",
    "EnsembleStart",
    "ensemble",
    "ensemble_metrics",
    "fge",
    "independent_ensemble",
    "swa",
]

ENSEMBLE_METHODS = ("fge", "swa", "independent")
METHOD_DEFINITIONS = {
    "fge": "fast geometric ensembling (Garipov et al. 2018): one snapshot per cycle of a "
    "cyclic learning rate, at its lowest rate; the snapshots' softmax averaged",
    "swa": "stochastic weight averaging (Izmailov et al. 2018): the running average of the "
    "weights at a constant rate, BatchNorm statistics re-estimated",
    "independent": "independent ensemble: models from different initialization and data-order "
    "seeds, their softmax averaged",
}


@dataclass(frozen=True)
class EnsembleSpec(Spec):
    """Ensembles from one run (FGE, SWA) or independent ensembles, with their budget.

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
    members are measured on --split; figures/ensemble plots them. Training and evaluation run
    on --device in --dtype. The ensemble's measures are those of a classifier (the averaged
    softmax): the task's targets must be class labels. The members are saved in models/ in
    the run folder; the result's metrics add ensemble_nll, member_nll, pairwise_disagreement
    and barrier_details.

    In Python, this spec holds the settings of ensemble(): the method's own (fge: cycles...,
    swa: steps, start..., independent: n, steps or budget), the training's and the barriers'.
    """

    kind: ClassVar[str] = "ensemble"

    method: str = option("fge", "fge, swa or independent.", choices=ENSEMBLE_METHODS)
    cycles: int = option(4, "fge: number of cycles (= snapshots).", low=1, high=1000)
    cycle_steps: int = option(20, "fge: updates per cycle (>= 2).", low=2, high=MAX_STEPS)
    lr_max: float = option(0.05, "fge: highest learning rate.")
    lr_min: float = option(0.0005, "fge: lowest learning rate.")
    steps: int | None = option(
        None,
        "swa: updates; independent: updates per member (default 100).",
        low=1,
        high=MAX_STEPS,
    )
    lr: float = option(0.05, "swa, independent: the learning rate.")
    start: int | None = option(
        None,
        "swa: average after this update (default --steps / 2).",
        flag="--swa-start",
        low=0,
        high=MAX_COUNT,
    )
    every: int = option(
        1, "swa: average every this many updates.", flag="--swa-every", low=1, high=MAX_COUNT
    )
    n: int = option(3, "independent: number of models.", flag="--members", low=1, high=1000)
    budget: int | None = option(
        None, "independent: total updates, split evenly among the members.", low=1, high=MAX_COUNT
    )
    pretrain_steps: int = option(
        0,
        "fge/swa: updates that trained --weights (for the budget).",
        low=0,
        high=MAX_STEPS,
    )
    batch_size: int = option(64, "Training minibatch size.", low=1, high=MAX_COUNT)
    optimizer: str = option("sgd", "sgd, adam or adamw.", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.0, "L2 penalty (decoupled for adamw).")
    data_seed: int = option(0, "fge/swa: data-order seed.", low=0, high=MAX_SEED)
    barriers: bool = option(
        True, "Barriers between consecutive members.", flag="--barriers/--no-barriers"
    )
    barrier_definition: str = barrier_definition_option("linear", flag="--definition")
    barrier_metric: str = option(
        "error", "Barrier metric: error or loss.", flag="--metric", choices=BARRIER_METRICS
    )
    num_points: int = option(11, "alpha grid of each barrier.", low=3, high=MAX_POINTS)
    bn_policy: str = bn_policy_option("stored")
    device: str = device_option()
    dtype: str = dtype_option()

    def check(self) -> None:
        check_device_field(self)
        name = self.name_of
        if self.budget is not None and self.method != "independent":
            raise BasinscopeError(
                f"{name('budget')} is for {name('method')} independent (the budget of fge/swa "
                f"is set by {name('cycles')}/{name('cycle_steps')} or {name('steps')}), got "
                f"{name('method')} {self.method}"
            )
        if self.budget is not None and self.steps is not None:
            raise BasinscopeError(
                f"give {name('steps')} (per member) or {name('budget')} (in all), not both"
            )
        if self.budget is not None and self.budget < self.n:
            raise BasinscopeError(
                f"{name('budget')} {self.budget} is less than one update per member "
                f"({name('n')} {self.n})"
            )
        if self.method == "fge" and self.cycles * self.cycle_steps > MAX_STEPS:
            raise BasinscopeError(
                f"{name('cycle_steps')} must be <= {MAX_STEPS // self.cycles:,} "
                f"({name('cycles')} x {name('cycle_steps')} is at most 10**8 updates), got "
                f"{self.cycle_steps:,}"
            )
        if self.method == "swa" and not 0 <= self.swa_start() <= self.run_steps():
            raise BasinscopeError(
                f"{name('start')} must be an update in [0, {name('steps')}] = "
                f"[0, {self.run_steps()}], got {self.start}"
            )
        self.config()  # the training settings, checked by TrainConfig

    def run_steps(self) -> int:
        """The updates of swa, and of each member of an independent ensemble."""
        if self.budget is not None:
            return self.budget // self.n
        return 100 if self.steps is None else self.steps

    def swa_start(self) -> int:
        return self.run_steps() // 2 if self.start is None else self.start

    def check_start(self, trained: bool, given_as: str = "the model argument") -> None:
        """Refuse a start that does not suit the method: fge and swa continue a trained model
        (``trained``, given as ``given_as``), independent trains every member from a fresh
        initialization."""
        method, name = self.method, self.name_of("method")
        if method != "independent" and not trained:
            raise BasinscopeError(
                f"{name} {method} starts from a trained model: pass its weights with {given_as} "
                f"(e.g. RUN/model.safetensors from `basinscope train`); {name} independent "
                "trains from scratch"
            )
        if method == "independent" and trained:
            raise BasinscopeError(
                f"{name} independent trains every member from a fresh initialization: drop "
                f"{given_as} (use {name} fge or swa to start from a trained model)"
            )

    def plan(self, start: str | None = None) -> str:
        """What a run of these settings does, in one line (a command's progress line);
        ``start`` names the trained model fge and swa start from."""
        if self.method == "fge":
            return f"fge: {self.cycles} cycles of {self.cycle_steps} updates from {start} ..."
        if self.method == "swa":
            return (
                f"swa: {self.run_steps()} updates at lr {self.lr:g} from {start}, averaging "
                f"after {self.swa_start()} ..."
            )
        return f"independent ensemble: {self.n} models, {self.run_steps()} updates each ..."

    def config(self) -> TrainConfig:
        """The training configuration of the run (fge/swa replace its schedule)."""
        fge_run = self.method == "fge"
        return TrainConfig(
            steps=self.cycles * self.cycle_steps if fge_run else self.run_steps(),
            lr=self.lr_max if fge_run else self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            data_seed=self.data_seed,
        )


@dataclass(frozen=True)
class EnsembleStart(ModelOptions):
    """What an ensemble starts from, given by name: the trained model fge and swa continue
    (``weights``), or without weights the factory of independent members."""

    weights: Path | None = option(None, "fge/swa: the trained model to start from.")

    def load(self) -> nn.Module | Callable[[int], nn.Module]:  # type: ignore[override]
        """The trained model (with ``weights``), else the members' factory: ``seed ->`` a
        fresh model initialized with that seed."""
        if self.weights is not None:
            return super().load()
        from basinscope.models import build_model

        kwargs = parse_json_kwargs(self.model_kwargs)
        return lambda seed: build_model(self.model, kwargs, init_seed=seed)


@dataclass(frozen=True)
class EnsembleResult(Result, kind="ensemble"):
    """An ensemble (or SWA solution) and what it cost.

    Attributes:
        method: ``"fge"``, ``"swa"`` or ``"independent"``; ``definition`` says what it is.
        budget: gradient steps spent, including ``settings["pretrain_steps"]``.
        members: number of weight sets combined (snapshots, averaged weights, models).
        ensemble_accuracy: accuracy of the method's prediction: the averaged softmax of
            the members (fge, independent) or the weight-averaged model (swa).
        member_accuracies: accuracy of each model in ``models``.
        diversity: mean pairwise disagreement of ``models`` (fraction of examples whose
            arg-max prediction differs).
        barriers: barrier between consecutive ``models``.
        barrier_definition, barrier_metric: which barrier.
        metrics: the full output of :func:`ensemble_metrics` on the evaluation data.
        settings: the configuration of the run.
        member_names: a name for each of ``models`` (``snapshot_0``..., ``sgd_final`` and
            ``swa``, ``member_0``...); ``member_files`` the files they were written to (by
            the command).
        spec: the settings, when run through :func:`ensemble`.
        models: the models (fge: snapshots; swa: the last SGD iterate, then the SWA
            model; independent: the members); in memory only, not part of ``to_dict``.
    """

    method: str
    budget: int
    members: int
    ensemble_accuracy: float
    member_accuracies: tuple[float, ...]
    diversity: float
    barriers: tuple[float, ...]
    barrier_definition: str
    barrier_metric: str
    metrics: dict[str, Any]
    settings: dict[str, Any]
    definition: str = ""
    member_names: tuple[str, ...] = ()
    member_files: tuple[str, ...] = ()
    spec: EnsembleSpec | None = None
    models: tuple[nn.Module, ...] = transient(default=())

    def summary(self) -> list[str]:
        """Accuracy and budget, the members' accuracies, the diversity and the barriers."""
        what = "SWA model" if self.method == "swa" else f"ensemble of {self.members}"
        split = self.metrics.get("split", "the evaluation data")
        names = zip(self.member_names, self.member_accuracies)
        lines = [
            f"{self.method}: {what} accuracy {fmt(self.ensemble_accuracy)} on {split} "
            f"(budget {self.budget} updates)",
            "  members: " + ", ".join(f"{n} {fmt(a)}" for n, a in names),
            f"  diversity (mean disagreement) {fmt(self.diversity)}",
        ]
        if self.barriers:
            lines.append(
                f"  {self.barrier_definition} barriers of the {self.barrier_metric} between "
                "consecutive members: " + ", ".join(fmt(b) for b in self.barriers)
            )
        return lines

    def save_members(self, folder: str | Path) -> EnsembleResult:
        """Write each of :attr:`models` as ``folder/<member name>.safetensors``; returns the
        result with :attr:`member_files` naming the files."""
        from basinscope.models import save_weights

        files = [
            str(save_weights(m, Path(folder) / f"{name}.safetensors"))
            for name, m in zip(self.member_names, self.models)
        ]
        return replace(self, member_files=tuple(files))


NOT_CLASSIFICATION = (
    "ensemble metrics are those of a classifier: the accuracy and NLL of the members' averaged "
    "softmax, each member's accuracy and NLL, and the members' disagreement (arg-max "
    "predictions). They need integer class labels of shape (N,) and a classification loss "
    "(cross_entropy, model, or a callable given integer labels); the task's loss is "
    "{loss}{found}. Regression ensembles are not supported: compare regression members by "
    "their loss (basinscope.evaluate_model, or barriers of the loss)"
)


def _check_classification(task: Task, y: Tensor | None = None) -> None:
    """Refuse a task whose targets are not class labels (before training when its loss says
    so, else on the first batch of targets)."""
    if y is None and task.loss != "mse":
        return
    if y is not None and task.classification(y) and not y.is_floating_point() and y.ndim == 1:
        return
    found = (
        ""
        if y is None
        else f" with {str(y.dtype).replace('torch.', '')} targets of shape {tuple(y.shape)}"
    )
    raise BasinscopeError(NOT_CLASSIFICATION.format(loss=task.loss_name, found=found))


def ensemble_metrics(
    models: Sequence[nn.Module],
    data: Any,
    *,
    barriers: bool = True,
    barrier_definition: str = "linear",
    barrier_metric: str = "error",
    num_points: int = 11,
    bn_policy: str = "stored",
    bn_data: Any = None,
    batch_size: int = 1024,
    split: str = "eval",
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> dict[str, Any]:
    """Accuracy of the averaged softmax, the members' accuracies, disagreement, barriers.

    .. math::  \\hat y_n = \\arg\\max_c \\frac{1}{M} \\sum_{i=1}^{M} \\mathrm{softmax}(f_{\\theta_i}(x_n))_c,
               \\qquad d_{ij} = \\frac{1}{N} \\sum_n [\\arg\\max f_{\\theta_i}(x_n) \\ne
               \\arg\\max f_{\\theta_j}(x_n)]

    Returns a dict of plain Python numbers and lists: ``members``, ``ensemble_accuracy``, ``ensemble_nll``
    (cross-entropy of the averaged probabilities), ``member_accuracies``,
    ``member_nll``, ``mean_member_accuracy``, ``disagreement`` (mean of :math:`d_{ij}`
    over pairs; NaN for one model), ``pairwise_disagreement`` (the matrix), ``barriers``
    (value of the ``barrier_definition`` barrier on ``barrier_metric`` between models
    ``i`` and ``i + 1``, in order; skipped with ``barriers=False``), ``barrier_details``,
    the settings, and ``task``, ``device`` and ``dtype``. Models are evaluated in eval mode
    and left as they were.

    ``task`` splits the batches, calls the models and finds their logits
    (``task.prediction``: a tensor, ``.logits``, ...; default ``(x, y)`` and ``model(x)``);
    the targets must be class labels (a regression task is refused with what is
    supported). ``data`` may be a DataLoader: it is read once, batch by batch, and only the
    sums come back from ``device`` (default: the first model's), where the models run in
    ``dtype`` (default: their own; ``"bfloat16"``/``"float16"`` autocast). The softmax
    averages and sums are float64 (float32 on MPS).
    """
    models = list(models)
    if not models:
        raise BasinscopeError("ensemble_metrics needs at least one model, got none.")
    task = as_task(task)
    _check_classification(task)
    batches = as_batches(data, batch_size=batch_size, task=task)
    m = len(models)
    sums: dict[str, Tensor] = {}
    n = 0
    with evaluated(models, device, dtype) as ev, torch.no_grad():
        acc = torch.float32 if ev.device.type == "mps" else torch.float64
        for x, y in batches:
            y = torch.as_tensor(y)
            _check_classification(task, y)
            x, y = ev.inputs(x), y.to(ev.device)
            logits = []
            for net in ev.models:
                z = task.prediction(ev.run(net, x))
                if z.ndim != 2:
                    raise BasinscopeError(
                        "ensemble metrics need classifier outputs of shape (N, classes), got "
                        f"{tuple(z.shape)}."
                    )
                logits.append(z.to(acc))
            logp = torch.stack([F.log_softmax(z, dim=1) for z in logits])  # (M, B, C)
            mean_probs = logp.exp().mean(dim=0)
            preds = logp.argmax(dim=2)  # (M, B)
            target = y.reshape(1, -1, 1).expand(m, -1, 1)
            batch = {
                "member_correct": (preds == y).sum(dim=1),
                "member_nll": -logp.gather(2, target).sum(dim=(1, 2)),
                "ensemble_correct": (mean_probs.argmax(dim=1) == y).sum(),
                "ensemble_nll": -mean_probs.clamp_min(1e-300).log().gather(1, y[:, None]).sum(),
                "disagree": (preds[:, None, :] != preds[None, :, :]).sum(dim=2),
            }
            for k, v in batch.items():  # accumulated on the device
                sums[k] = v if k not in sums else sums[k] + v
            n += int(y.shape[0])
        device_name = str(device if device is not None else ev.device)
        precision = ev.precision
    if n == 0:
        raise BasinscopeError("the dataset is empty: ensemble metrics need at least one example.")
    got = {k: v.cpu().double() for k, v in sums.items()}  # the one transfer
    member_acc = (got["member_correct"] / n).tolist()
    matrix = (got["disagree"] / n).numpy()
    pair_vals = [matrix[i, j] for i, j in itertools.combinations(range(m), 2)]
    out: dict[str, Any] = {
        "members": m,
        "ensemble_accuracy": float(got["ensemble_correct"]) / n,
        "ensemble_nll": float(got["ensemble_nll"]) / n,
        "member_accuracies": member_acc,
        "member_nll": (got["member_nll"] / n).tolist(),
        "mean_member_accuracy": float(np.mean(member_acc)),
        "disagreement": float(np.mean(pair_vals)) if pair_vals else math.nan,
        "pairwise_disagreement": matrix.tolist(),
        "n_examples": n,
        "split": split,
        "barrier_definition": barrier_definition,
        "barrier_metric": barrier_metric,
        "barriers": [],
        "barrier_details": [],
        "task": task.describe(),
        "device": device_name,
        "dtype": precision,
    }
    if barriers and m > 1:
        res = [
            pair_barrier(
                models[i],
                models[i + 1],
                data,
                definition=barrier_definition,
                metric=barrier_metric,
                num_points=num_points,
                bn_policy=bn_policy,
                bn_data=bn_data,
                split=split,
                task=task,
                device=device_name,
                dtype=precision,
            )
            for i in range(m - 1)
        ]
        out["barriers"] = [float(r.value) for r in res]
        out["barrier_details"] = [r.to_dict() if hasattr(r, "to_dict") else {} for r in res]
        out["barrier_implementation"] = "basinscope.analyses.barrier"
    return out


def _result(
    method: str,
    models: Sequence[nn.Module],
    metrics: dict[str, Any],
    *,
    budget: int,
    members: int,
    ensemble_accuracy: float | None,
    settings: dict[str, Any],
) -> EnsembleResult:
    if method == "swa":
        names: tuple[str, ...] = ("sgd_final", "swa")
    else:
        prefix = "snapshot" if method == "fge" else "member"
        names = tuple(f"{prefix}_{i}" for i in range(len(models)))
    return EnsembleResult(
        method=method,
        budget=int(budget),
        members=int(members),
        ensemble_accuracy=float(
            metrics["ensemble_accuracy"] if ensemble_accuracy is None else ensemble_accuracy
        ),
        member_accuracies=tuple(metrics["member_accuracies"]),
        diversity=float(metrics["disagreement"]),
        barriers=tuple(metrics["barriers"]),
        barrier_definition=metrics["barrier_definition"],
        barrier_metric=metrics["barrier_metric"],
        metrics=metrics,
        settings=jsonable(settings),
        definition=METHOD_DEFINITIONS[method],
        member_names=names,
        models=tuple(models),
    )


def _metric_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = set(inspect.signature(ensemble_metrics).parameters) - {
        "models",
        "data",
        "task",
        "device",
        "dtype",
    }
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise BasinscopeError(
            f"unknown keyword arguments {bad}; the ensemble functions accept the arguments of "
            f"ensemble_metrics: {', '.join(sorted(allowed))}."
        )
    return kwargs


def _evaluation(model: nn.Module, task: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """The task, device and precision of the evaluation of a run that started from ``model``
    (``None``: ``model``'s device and dtype, as the trainer keeps them)."""
    dev, precision = resolved(model, device, dtype)
    return {"task": task, "device": dev, "dtype": precision}


def _check_steps(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise BasinscopeError(f"{name} must be an integer >= {lo}, got {v!r}.")
    return int(v)


def fge(
    model: nn.Module,
    data: Any,
    *,
    cycles: int,
    cycle_steps: int,
    lr_max: float,
    lr_min: float,
    config: TrainConfig | None = None,
    eval_data: Any = None,
    pretrain_steps: int = 0,
    optimizer_state: Any = None,
    loss_fn: Callable | None = None,
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **metric_kwargs: Any,
) -> EnsembleResult:
    """Fast geometric ensembling (Garipov et al. 2018) from a trained ``model``.

    Trains ``cycles * cycle_steps`` updates with the ``"cyclic"`` schedule between
    ``lr_max`` and ``lr_min`` (other settings from ``config``, default ``TrainConfig()``;
    no warmup) and collects one snapshot per cycle where the rate is ``lr_min``
    (:class:`~basinscope.training.callbacks.FGE`). The ensemble is evaluated on
    ``eval_data`` (default ``data``); ``budget = cycles * cycle_steps + pretrain_steps``.
    ``task`` (how batches are split, the model called and the loss computed), ``device``
    and ``dtype`` (default: ``model``'s) hold for the training and the evaluation. Other
    keyword arguments go to :func:`ensemble_metrics`.
    """
    cycles = _check_steps("cycles", cycles)
    cycle_steps = _check_steps("cycle_steps", cycle_steps, 2)
    base = TrainConfig() if config is None else config
    run = replace(
        base,
        steps=cycles * cycle_steps,
        schedule="cyclic",
        lr=lr_max,
        min_lr=lr_min,
        cycle_steps=cycle_steps,
        warmup_steps=0,
        checkpoint_steps=(),
    )
    _check_classification(as_task(task))
    collector = FGE(cycle_steps)
    result = train(
        model,
        data,
        run,
        callbacks=[collector],
        optimizer_state=optimizer_state,
        loss_fn=loss_fn,
        **train_options(model, task, device, dtype),
    )
    snapshots = collector.models(model)
    metrics = ensemble_metrics(
        snapshots,
        data if eval_data is None else eval_data,
        **_metric_kwargs(metric_kwargs),
        **_evaluation(model, task, device, dtype),
    )
    settings = {
        "config": run,
        "cycles": cycles,
        "cycle_steps": cycle_steps,
        "lr_max": lr_max,
        "lr_min": lr_min,
        "snapshot_steps": collector.steps,
        "snapshot_lrs": [s["lr"] for s in collector.snapshots],
        "pretrain_steps": int(pretrain_steps),
        "steps": run.steps,
        "final_train_loss": result.history["loss"][-1],
    }
    return _result(
        "fge",
        snapshots,
        metrics,
        budget=run.steps + pretrain_steps,
        members=len(snapshots),
        ensemble_accuracy=None,
        settings=settings,
    )


def swa(
    model: nn.Module,
    data: Any,
    *,
    steps: int,
    start: int,
    lr: float,
    every: int = 1,
    config: TrainConfig | None = None,
    eval_data: Any = None,
    bn_data: Any = None,
    pretrain_steps: int = 0,
    optimizer_state: Any = None,
    loss_fn: Callable | None = None,
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **metric_kwargs: Any,
) -> EnsembleResult:
    """Stochastic weight averaging (Izmailov et al. 2018) from a trained ``model``.

    Trains ``steps`` updates at the constant rate ``lr`` (other settings from ``config``)
    and averages the weights after update ``start`` and every ``every`` updates after it
    (:class:`~basinscope.training.callbacks.SWA`); BatchNorm statistics of the average are
    re-estimated from ``bn_data`` (default ``data``), which the barriers also use when
    ``bn_policy="recompute"``. ``models`` holds the last SGD
    iterate and the SWA model, so ``diversity`` and ``barriers`` compare the two;
    ``ensemble_accuracy`` is the SWA model's accuracy, ``members`` the number of averaged
    weights and ``budget = steps + pretrain_steps``. ``task``, ``device`` and ``dtype`` as in
    :func:`fge`.
    """
    steps = _check_steps("steps", steps)
    if (
        isinstance(start, bool)
        or not isinstance(start, (int, np.integer))
        or not 0 <= start <= steps
    ):
        raise BasinscopeError(
            f"start must be an update in [0, steps] = [0, {steps}], got {start!r}: SWA averages "
            "the weights after update `start`."
        )
    base = TrainConfig() if config is None else config
    run = replace(
        base,
        steps=steps,
        schedule="constant",
        lr=lr,
        warmup_steps=0,
        milestones=(),
        min_lr=0.0,
        checkpoint_steps=(),
    )
    _check_classification(as_task(task))
    collector = SWA(int(start), every)
    result = train(
        model,
        data,
        run,
        callbacks=[collector],
        optimizer_state=optimizer_state,
        loss_fn=loss_fn,
        **train_options(model, task, device, dtype),
    )
    if has_batchnorm(model) and bn_data is None:
        bn_data = data
    averaged = collector.averaged_model(result.model, bn_data)
    pair = [result.model, averaged]
    mk = _metric_kwargs(metric_kwargs)
    mk.setdefault("bn_data", bn_data)  # the barriers' BatchNorm re-estimation uses the same data
    mk.update(_evaluation(model, task, device, dtype))
    metrics = ensemble_metrics(pair, data if eval_data is None else eval_data, **mk)
    metrics["sgd_accuracy"], metrics["swa_accuracy"] = metrics["member_accuracies"]
    settings = {
        "config": run,
        "start": int(start),
        "every": every,
        "lr": lr,
        "averaged_steps": collector.steps,
        "pretrain_steps": int(pretrain_steps),
        "steps": steps,
        "bn_recomputed": has_batchnorm(model),
    }
    return _result(
        "swa",
        pair,
        metrics,
        budget=steps + pretrain_steps,
        members=collector.n_averaged,
        ensemble_accuracy=metrics["swa_accuracy"],
        settings=settings,
    )


def _build(factory: Callable[..., nn.Module], seed: int) -> nn.Module:
    try:
        takes_seed = len(inspect.signature(factory).parameters) > 0
    except (TypeError, ValueError):
        takes_seed = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(seed) if takes_seed else factory()
    if not isinstance(model, nn.Module):
        raise BasinscopeError(
            f"factory must return an nn.Module, got {type(model).__name__}; e.g. "
            "factory=lambda seed: basinscope.models.mlp(hidden=(16,))."
        )
    return model


def independent_ensemble(
    factory: Callable[..., nn.Module],
    data: Any,
    *,
    n: int,
    steps: int,
    config: TrainConfig | None = None,
    seeds: Sequence[int] | None = None,
    eval_data: Any = None,
    loss_fn: Callable | None = None,
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **metric_kwargs: Any,
) -> EnsembleResult:
    """``n`` models trained independently for ``steps`` updates each (``budget = n * steps``).

    Member ``i`` is ``factory(seed)`` (or ``factory()``) built under
    ``torch.manual_seed(seed)`` and trained with ``config`` and ``data_seed=seed``, with
    ``seed = seeds[i]`` (default ``i``): a different initialization and data order.
    ``task``, ``device`` and ``dtype`` (default: the members') as in :func:`fge`.
    """
    n = _check_steps("n", n)
    steps = _check_steps("steps", steps)
    seeds = tuple(range(n)) if seeds is None else tuple(int(s) for s in seeds)
    if len(seeds) != n:
        raise BasinscopeError(
            f"seeds has {len(seeds)} entries for n={n}; pass one seed per member."
        )
    _check_classification(as_task(task))
    base = TrainConfig() if config is None else config
    members = []
    for seed in seeds:
        run = replace(base, steps=steps, data_seed=seed, checkpoint_steps=())
        net = _build(factory, seed)
        on = train_options(net, task, device, dtype)
        members.append(train(net, data, run, loss_fn=loss_fn, **on).model)
    metrics = ensemble_metrics(
        members,
        data if eval_data is None else eval_data,
        **_metric_kwargs(metric_kwargs),
        **_evaluation(members[0], task, device, dtype),
    )
    settings = {
        "config": replace(base, steps=steps, checkpoint_steps=()),
        "seeds": list(seeds),
        "steps": steps,
        "pretrain_steps": 0,
    }
    return _result(
        "independent",
        members,
        metrics,
        budget=n * steps,
        members=n,
        ensemble_accuracy=None,
        settings=settings,
    )


@takes_spec(EnsembleSpec)
def ensemble(
    model: nn.Module | Callable[..., nn.Module],
    data: Any,
    *,
    method: str = "fge",
    cycles: int = 4,
    cycle_steps: int = 20,
    lr_max: float = 0.05,
    lr_min: float = 0.0005,
    steps: int | None = None,
    lr: float = 0.05,
    start: int | None = None,
    every: int = 1,
    n: int = 3,
    budget: int | None = None,
    pretrain_steps: int = 0,
    batch_size: int = 64,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    data_seed: int = 0,
    barriers: bool = True,
    barrier_definition: str = "linear",
    barrier_metric: str = "error",
    num_points: int = 11,
    bn_policy: str = "stored",
    eval_data: Any = None,
    bn_data: Any = None,
    loss_fn: Callable | None = None,
    split: str = "eval",
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> EnsembleResult:
    """:func:`fge`, :func:`swa` or :func:`independent_ensemble` (``method``) with the
    settings of an :class:`EnsembleSpec`.

    ``model`` is the trained model fge and swa start from, or for ``"independent"`` the
    factory of the members. ``steps`` defaults to 100 (swa; independent: per member, or
    ``budget // n`` with a ``budget``), ``start`` to ``steps // 2``. The training runs with
    ``batch_size``, ``optimizer``, ``momentum``, ``weight_decay`` and ``data_seed`` (fge,
    swa); ``bn_data`` re-estimates BatchNorm statistics (the SWA model's, and the
    barriers' with ``bn_policy="recompute"``, by default from ``data``); ``split`` names
    ``eval_data`` in the metrics. ``task`` says how batches are split, the models called and
    the loss computed (default ``(x, y)``, ``model(x)``, cross-entropy; the targets must be
    class labels); training and evaluation run on ``device`` in ``dtype`` (default: the
    model's; ``"bfloat16"``/``"float16"`` autocast), recorded in the spec.
    """
    _check_classification(as_task(task))
    dev, precision = resolved(model, device, dtype)
    spec = EnsembleSpec.from_kwargs({**locals(), "device": dev, "dtype": precision})
    spec.check_start(isinstance(model, nn.Module))
    if bn_data is None and bn_policy == "recompute":
        bn_data = data
    config = spec.config()
    metric_kwargs = dict(
        barriers=barriers,
        barrier_definition=barrier_definition,
        barrier_metric=barrier_metric,
        num_points=num_points,
        bn_policy=bn_policy,
        split=split,
    )
    common = dict(
        config=config,
        eval_data=eval_data,
        loss_fn=loss_fn,
        task=task,
        device=device,
        dtype=dtype,
        **metric_kwargs,
    )
    if method == "fge":
        res = fge(
            model,
            data,
            cycles=cycles,
            cycle_steps=cycle_steps,
            lr_max=lr_max,
            lr_min=lr_min,
            pretrain_steps=pretrain_steps,
            bn_data=bn_data,
            **common,
        )
    elif method == "swa":
        res = swa(
            model,
            data,
            steps=spec.run_steps(),
            start=spec.swa_start(),
            lr=lr,
            every=every,
            bn_data=bn_data,
            pretrain_steps=pretrain_steps,
            **common,
        )
    else:
        res = independent_ensemble(
            model, data, n=n, steps=spec.run_steps(), bn_data=bn_data, **common
        )
    # the device and precision the members were evaluated on (a factory's, once built)
    return replace(res, spec=spec.replace(device=res.metrics["device"], dtype=res.metrics["dtype"]))
