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
(:func:`ensemble_metrics`).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from basinscope.analyses.instability import pair_barrier
from basinscope.engine import as_batches, has_batchnorm
from basinscope.errors import BasinscopeError
from basinscope.jsonable import jsonable
from basinscope.training import TrainConfig, train
from basinscope.training.callbacks import FGE, SWA

__all__ = ["EnsembleResult", "ensemble_metrics", "fge", "independent_ensemble", "swa"]


@dataclass(frozen=True)
class EnsembleResult:
    """An ensemble (or SWA solution) and what it cost.

    Attributes:
        method: ``"fge"``, ``"swa"`` or ``"independent"``.
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
        models: the models (fge: snapshots; swa: the last SGD iterate, then the SWA
            model; independent: the members); not part of ``to_dict``.
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
    models: tuple[nn.Module, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field but the models."""
        return jsonable({f: getattr(self, f) for f in self.__dataclass_fields__ if f != "models"})


@torch.no_grad()
def _logits(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        outs = [
            model(x.to(device, dtype) if x.is_floating_point() else x.to(device)).float().cpu()
            for x, _ in batches
        ]
    finally:
        for m, was in zip(model.modules(), modes):
            m.train(was)
    out = torch.cat(outs)
    if out.ndim != 2:
        raise BasinscopeError(
            f"ensemble metrics need classifier outputs of shape (N, classes), got "
            f"{tuple(out.shape)}."
        )
    return out


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
    ``i`` and ``i + 1``, in order; skipped with ``barriers=False``), ``barrier_details``
    and the settings. Models are evaluated in eval mode and left as they were.
    """
    models = list(models)
    if not models:
        raise BasinscopeError("ensemble_metrics needs at least one model, got none.")
    batches = as_batches(data, batch_size=batch_size, device="cpu")
    y = torch.cat([torch.as_tensor(t) for _, t in batches])
    if y.is_floating_point() or y.ndim != 1:
        raise BasinscopeError(
            "ensemble metrics need integer class labels of shape (N,), got "
            f"{y.dtype} labels of shape {tuple(y.shape)}."
        )
    logits = [_logits(m, batches) for m in models]
    probs = torch.stack([F.softmax(z.double(), dim=1) for z in logits])
    mean_probs = probs.mean(dim=0)
    preds = [z.argmax(dim=1) for z in logits]
    ens_pred = mean_probs.argmax(dim=1)
    member_acc = [float((p == y).double().mean()) for p in preds]
    member_nll = [float(F.cross_entropy(z.double(), y)) for z in logits]
    ens_nll = float(F.nll_loss(mean_probs.clamp_min(1e-300).log(), y))
    m = len(models)
    matrix = np.zeros((m, m))
    for i, j in itertools.combinations(range(m), 2):
        matrix[i, j] = matrix[j, i] = float((preds[i] != preds[j]).double().mean())
    pair_vals = [matrix[i, j] for i, j in itertools.combinations(range(m), 2)]
    out: dict[str, Any] = {
        "members": m,
        "ensemble_accuracy": float((ens_pred == y).double().mean()),
        "ensemble_nll": ens_nll,
        "member_accuracies": member_acc,
        "member_nll": member_nll,
        "mean_member_accuracy": float(np.mean(member_acc)),
        "disagreement": float(np.mean(pair_vals)) if pair_vals else math.nan,
        "pairwise_disagreement": matrix.tolist(),
        "n_examples": len(y),
        "barrier_definition": barrier_definition,
        "barrier_metric": barrier_metric,
        "barriers": [],
        "barrier_details": [],
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
        models=tuple(models),
    )


def _metric_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = set(inspect.signature(ensemble_metrics).parameters) - {"models", "data"}
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise BasinscopeError(
            f"unknown keyword arguments {bad}; the ensemble functions accept the arguments of "
            f"ensemble_metrics: {', '.join(sorted(allowed))}."
        )
    return kwargs


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
    **metric_kwargs: Any,
) -> EnsembleResult:
    """Fast geometric ensembling (Garipov et al. 2018) from a trained ``model``.

    Trains ``cycles * cycle_steps`` updates with the ``"cyclic"`` schedule between
    ``lr_max`` and ``lr_min`` (other settings from ``config``, default ``TrainConfig()``;
    no warmup) and collects one snapshot per cycle where the rate is ``lr_min``
    (:class:`~basinscope.training.callbacks.FGE`). The ensemble is evaluated on
    ``eval_data`` (default ``data``); ``budget = cycles * cycle_steps + pretrain_steps``.
    Other keyword arguments go to :func:`ensemble_metrics`.
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
    collector = FGE(cycle_steps)
    result = train(
        model, data, run, callbacks=[collector], optimizer_state=optimizer_state, loss_fn=loss_fn
    )
    snapshots = collector.models(model)
    metrics = ensemble_metrics(
        snapshots, data if eval_data is None else eval_data, **_metric_kwargs(metric_kwargs)
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
    weights and ``budget = steps + pretrain_steps``.
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
    collector = SWA(int(start), every)
    result = train(
        model, data, run, callbacks=[collector], optimizer_state=optimizer_state, loss_fn=loss_fn
    )
    if has_batchnorm(model) and bn_data is None:
        bn_data = data
    averaged = collector.averaged_model(result.model, bn_data)
    pair = [result.model, averaged]
    mk = _metric_kwargs(metric_kwargs)
    mk.setdefault("bn_data", bn_data)  # the barriers' BatchNorm re-estimation uses the same data
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
    **metric_kwargs: Any,
) -> EnsembleResult:
    """``n`` models trained independently for ``steps`` updates each (``budget = n * steps``).

    Member ``i`` is ``factory(seed)`` (or ``factory()``) built under
    ``torch.manual_seed(seed)`` and trained with ``config`` and ``data_seed=seed``, with
    ``seed = seeds[i]`` (default ``i``): a different initialization and data order.
    """
    n = _check_steps("n", n)
    steps = _check_steps("steps", steps)
    seeds = tuple(range(n)) if seeds is None else tuple(int(s) for s in seeds)
    if len(seeds) != n:
        raise BasinscopeError(
            f"seeds has {len(seeds)} entries for n={n}; pass one seed per member."
        )
    base = TrainConfig() if config is None else config
    members = []
    for seed in seeds:
        run = replace(base, steps=steps, data_seed=seed, checkpoint_steps=())
        members.append(train(_build(factory, seed), data, run, loss_fn=loss_fn).model)
    metrics = ensemble_metrics(
        members, data if eval_data is None else eval_data, **_metric_kwargs(metric_kwargs)
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
