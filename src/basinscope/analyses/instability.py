"""Linear mode connectivity under SGD noise: the instability analysis of Frankle et al. 2020.

Frankle, Dziugaite, Roy & Carbin (2020), "Linear mode connectivity and the lottery ticket
hypothesis": train a *parent* from :math:`\\theta_0` for :math:`k` updates, spawn children
that finish training to :math:`T` updates with different data orders (different SGD
noise), and measure the error barrier on the line between the children,

.. math::  \\mathrm{instability}(k) = \\max_{\\alpha \\in [0, 1]}
           \\mathcal{E}((1 - \\alpha)\\theta_1 + \\alpha\\theta_2)
           - \\tfrac12(\\mathcal{E}(\\theta_1) + \\mathcal{E}(\\theta_2))

(Frankle's *mean* barrier; ``definition="linear"`` gives Entezari et al. 2022's barrier
:math:`\\max_\\alpha f(\\alpha) - ((1-\\alpha)f(0) + \\alpha f(1))`, ``"midpoint"`` the
value at :math:`\\alpha = 1/2`). A network is *stable* at :math:`k` when the barrier is
about 0: from step :math:`k` on, SGD noise no longer changes the linearly connected
region training ends in. With more than two children the barrier of every pair is
measured and the mean and maximum are reported.

The transfer variant (Neyshabur, Sedghi & Zhang 2020, "What is being transferred in
transfer learning?", Sec. 3.2) compares two children fine-tuned from pre-trained weights
with two children trained from one random initialization (:func:`transfer_instability`).

Every barrier is :func:`basinscope.analyses.barrier.barrier` (its definitions are
:data:`~basinscope.analyses.barrier.BARRIER_DEFINITIONS`); each result records its
``definition`` and the settings in an :class:`InstabilitySpec`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from basinscope._checks import MAX_COUNT, MAX_POINTS, MAX_SEED, MAX_STEPS, at_least
from basinscope.analyses.barrier import (
    BARRIER_METRICS,
    _check_definition,
    barrier,
    barrier_definition_option,
)
from basinscope.analyses.similarity import check_device, model_device, model_dtype
from basinscope.engine.precision import storage_dtype, to_dtype
from basinscope.engine.task import as_task
from basinscope.errors import BasinscopeError
from basinscope.inputs import ModelOptions, load_model
from basinscope.jsonable import jsonable
from basinscope.result import Result, fmt, transient
from basinscope.spec import (
    BN_POLICIES,
    EVAL_DTYPES,
    STRATEGIES,
    EvalOptions,
    Spec,
    option,
    takes_spec,
)
from basinscope.training import TrainConfig, TrainResult, train
from basinscope.training.config import OPTIMIZERS
from basinscope.training.schedules import SCHEDULES

__all__ = [
    "CHILD_SCHEDULES",
    "InitialModel",
    "InstabilityResult",
    "InstabilitySpec",
    "InstabilitySweep",
    "InstabilityTraining",
    "TransferInstabilityResult",
    "TransferVariant",
    "instability",
    "instability_analysis",
    "instability_sweep",
    "transfer_instability",
]

CHILD_SCHEDULES: tuple[str, ...] = ("continue", "restart")
DEFAULT_KS: tuple[int, ...] = (0, 10, 50)


def _help_of(spec: type[Spec], name: str) -> str:
    return next(f for f in dataclasses.fields(spec) if f.name == name).metadata["help"]


def bn_policy_option(default: str = "stored") -> Any:
    """``--bn`` as in :class:`~basinscope.spec.EvalOptions`, for specs without its other
    settings."""
    return option(default, _help_of(EvalOptions, "bn_policy"), flag="--bn", choices=BN_POLICIES)


def device_option() -> Any:
    """``--device`` as in :class:`~basinscope.spec.EvalOptions` (checked by
    :func:`check_device_field`)."""
    return option("cpu", _help_of(EvalOptions, "device"))


def dtype_option() -> Any:
    """``--dtype`` as in :class:`~basinscope.spec.EvalOptions`: float32, float64, or
    bfloat16/float16 autocast over float32 weights."""
    return option("float32", _help_of(EvalOptions, "dtype"), choices=EVAL_DTYPES)


def check_device_field(spec: Spec) -> None:
    """Refuse a spec's ``device`` that does not exist here, with EvalOptions' message
    (``--device 'cuda:7' is not available here (...); use --device cpu``)."""
    EvalOptions(device=spec.device)  # type: ignore[attr-defined]


def resolved(model: Any, device: Any, dtype: Any) -> tuple[str, str]:
    """``(device, dtype)`` names of a run: those given, else the model's (a factory's
    members: ``cpu``, ``float32``)."""
    module = model if isinstance(model, nn.Module) else None
    dev = (
        device
        if device is not None
        else (model_device(module) if module is not None else None) or "cpu"
    )
    if dtype is not None:
        d = to_dtype(dtype)
    else:
        d = (model_dtype(module) if module is not None else None) or torch.float32
    return str(dev), str(d).replace("torch.", "")


def train_options(model: nn.Module, task: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """The keywords that make :func:`~basinscope.training.train` run on an analysis's
    ``task``, ``device`` and ``dtype``.

    ``device`` is always passed (``None``: the model's); ``task`` only when it is not the
    default task, and ``dtype`` only when it changes the model's precision (another storage
    dtype, or bfloat16/float16 autocast), so a default run calls ``train`` as it always did.
    """
    if device is not None:
        check_device(device)  # before any training: "device 'cuda:7' is not available here"
    out: dict[str, Any] = {"device": device}
    if task is not None and not as_task(task).default:
        out["task"] = task
    if dtype is not None:
        store, cast = storage_dtype(dtype)
        if cast is not None or store != (model_dtype(model) or torch.float32):
            out["dtype"] = dtype
    return out


def barrier_options(task: Any, device: Any, dtype: Any, model: nn.Module) -> dict[str, Any]:
    """The keywords that make :func:`~basinscope.analyses.barrier.barrier` evaluate on an
    analysis's ``task`` (passed when not the default), ``device`` and ``dtype`` (``None``:
    the model's)."""
    dev, precision = resolved(model, device, dtype)
    out: dict[str, Any] = {"device": dev, "dtype": precision}
    if task is not None and not as_task(task).default:
        out["task"] = task
    return out


def _int_list(flag: str, example: str) -> Callable[[str], tuple[int, ...]]:
    """The command-line parser of a comma-separated list of integers."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(s) for s in text.split(",") if s.strip())
        except ValueError:
            raise BasinscopeError(
                f"{flag} must be comma-separated integers, e.g. {flag} {example}; got {text!r}"
            ) from None
        if not values:
            raise BasinscopeError(f"{flag} needs at least one integer, e.g. {flag} {example}")
        return values

    return parse


@dataclass(frozen=True)
class InstabilitySpec(Spec):
    """Instability analysis (Frankle et al. 2020): are children of one parent linearly connected?

    A parent is trained for k updates from the initial weights (--weights, or a fresh
    initialization with --init-seed); --children copies then finish training to --total-steps
    updates with different data orders (--child-seeds), starting from the parent's optimizer
    state unless --reset-optimizer. The instability at k is the barrier (--definition, default
    Frankle's mean; --metric, default error) between the children on --split, averaged over
    pairs (the largest pair is reported too). Every k in --k is a separate parent: the sweep is
    plotted as barrier vs k next to the children's curves (figures/instability_sweep). Training
    and barriers run on --device in --dtype.
    --child-schedule continue makes parent + child follow one run's learning rate (constant,
    step, cyclic at a cycle boundary); restart runs the schedule anew in each child.

    With --transfer --pretrained W (Neyshabur et al. 2020): two children fine-tuned for
    --total-steps from the pre-trained weights against two trained from a random
    initialization (--weights, or W re-initialized with --init-seed)
    (figures/transfer_instability).

    A sweep's results hold one instability result per k (value, max_value, barriers, pairs,
    child_values, child_seeds, details with every barrier's curve, settings); --transfer
    gives a transfer_instability result instead (pretrained_barrier, scratch_barrier, and
    pretrained and scratch: each such a result at k = 0).

    In Python, this spec holds the settings of instability_sweep(), instability() (one k)
    and transfer_instability() (k = 0, steps = total_steps); the training is a TrainConfig
    (InstabilityTraining on the command line), and instability_analysis() runs the sweep or
    the transfer comparison as the command does.
    """

    kind: ClassVar[str] = "instability"

    ks: tuple[int, ...] | None = option(
        None,
        "Comma-separated spawning steps (default: those of 0,10,50 within --total-steps); "
        "not with --transfer.",
        flag="--k",
        parse=_int_list("--k", "0,10,50"),
        metavar="K,K,...",
        low=0,
    )
    total_steps: int = option(100, "Updates of parent + child.", low=1, high=MAX_STEPS)
    children: int = option(2, "Children per parent (at least 2).", low=2, high=1000)
    child_seeds: tuple[int, ...] | None = option(
        None,
        "Data-order seed of each child (default 1,2,...).",
        parse=_int_list("--child-seeds", "1,2"),
        metavar="SEED,SEED,...",
        low=0,
        high=MAX_SEED,
    )
    child_schedule: str = option(
        "continue", "continue or restart (see above).", choices=CHILD_SCHEDULES
    )
    copy_optimizer_state: bool = option(
        True,
        "Children start with the parent's optimizer state (momentum), or with a fresh "
        "optimizer (--reset-optimizer).",
        flag="--copy-optimizer-state/--reset-optimizer",
    )
    definition: str = barrier_definition_option("mean")
    metric: str = option("error", "error or loss.", choices=BARRIER_METRICS)
    num_points: int = option(25, "alpha grid of each barrier.", low=3, high=MAX_POINTS)
    bn_policy: str = bn_policy_option("stored")
    strategy: str = option(
        "loop",
        "Engine strategy of the barriers (pinned: equal runs give bit-identical numbers).",
        choices=STRATEGIES,
        cli=False,
    )
    device: str = device_option()
    dtype: str = dtype_option()

    def check(self) -> None:
        check_device_field(self)
        if self.ks is not None:
            bad = [k for k in self.ks if not 0 <= k <= self.total_steps]
            if bad:
                raise BasinscopeError(
                    f"every {self.name_of('ks')} must lie in [0, {self.name_of('total_steps')}]"
                    f" = [0, {self.total_steps}], got {bad}"
                )
        if self.child_seeds is not None and len(self.child_seeds) != self.children:
            seeds, kids = self.name_of("child_seeds"), self.name_of("children")
            example = ",".join(map(str, range(1, self.children + 1)))
            raise BasinscopeError(
                f"{seeds} has {len(self.child_seeds)} seeds for {kids} {self.children}: pass "
                f"one data-order seed per child, e.g. {seeds} {example}"
            )

    def default_ks(self) -> tuple[int, ...]:
        """``ks``, or those of 0, 10, 50 within ``total_steps``."""
        if self.ks is not None:
            return self.ks
        return tuple(k for k in DEFAULT_KS if k <= self.total_steps)

    def check_transfer(self, given_as: str = "pretrained") -> None:
        """Refuse ``ks`` in the transfer variant (asked for as ``given_as``): it spawns the
        children at k = 0 and trains them for ``total_steps``."""
        if self.ks is not None:
            raise BasinscopeError(
                f"{given_as} spawns the children at k=0 and trains them for "
                f"{self.name_of('total_steps')}: drop {self.name_of('ks')}"
            )

    def plan(self, pretrained: str | None = None) -> str:
        """What a run of these settings does, in one line (a command's progress line);
        ``pretrained`` names the pre-trained weights of the transfer variant."""
        n, steps = self.children, self.total_steps
        if pretrained is not None:
            return (
                f"transfer instability: {n} children fine-tuned from {pretrained} and {n} from "
                f"a random initialization, {steps} updates each ..."
            )
        ks = ", ".join(map(str, sorted(self.default_ks())))
        return f"instability at k = {ks}: a parent per k, {n} children each, {steps} updates in all ..."


@dataclass(frozen=True)
class InitialModel(ModelOptions):
    """The initial weights theta_0 given by name: a model factory and its weights, or a
    fresh initialization from ``init_seed``."""

    weights: Path | None = option(
        None, "Initial weights theta_0 (with --transfer: the random initialization)."
    )
    init_seed: int = option(
        0, "Seed of the initialization when --weights is not given.", low=0, high=MAX_SEED
    )

    def load(self) -> nn.Module:
        """The model, with ``weights`` or initialized from ``init_seed``."""
        return load_model(self.model, self.model_kwargs, self.weights, self.init_seed)


@dataclass(frozen=True)
class TransferVariant(Spec):
    """The transfer variant (Neyshabur et al. 2020): with ``transfer``, children fine-tuned
    from the ``pretrained`` weights against children trained from a random initialization
    (:func:`transfer_instability`)."""

    transfer: bool = option(
        False, "Pre-trained start vs random init (needs --pretrained).", flag="--transfer"
    )
    pretrained: Path | None = option(None, "With --transfer: the pre-trained weights.")

    def check(self) -> None:
        transfer, pre = self.name_of("transfer"), self.name_of("pretrained")
        if self.transfer and self.pretrained is None:
            raise BasinscopeError(
                f"{transfer} needs {pre} W: the pre-trained weights whose fine-tuned copies are "
                "compared with copies trained from a random initialization"
            )
        if self.pretrained is not None and not self.transfer:
            weights = InitialModel().name_of("weights")
            raise BasinscopeError(
                f"{pre} is only used with {transfer}; add {transfer} (or pass the initial "
                f"weights with {weights} for a sweep over k)"
            )

    def load(self, model: ModelOptions) -> nn.Module | None:
        """The pre-trained model, of ``model``'s architecture (``None`` without ``transfer``)."""
        if not self.transfer or self.pretrained is None:
            return None
        return load_model(model.model, model.model_kwargs, self.pretrained)


def _milestones(text: str) -> tuple[int, ...]:
    return _int_list("--milestones", "50,80")(text) if text.strip() else ()


@dataclass(frozen=True)
class InstabilityTraining(Spec):
    """The training of the parent and its children: a
    :class:`~basinscope.training.TrainConfig` without its length, which the instability
    analysis sets (:meth:`config`)."""

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
        """The :class:`~basinscope.training.TrainConfig` of a run of ``steps`` updates
        (checked by TrainConfig)."""
        return TrainConfig(steps=steps, **self.kwargs())


# -- barriers -----------------------------------------------------------------------------
def _check_barrier(definition: str, metric: str) -> None:
    _check_definition(definition)
    if not isinstance(metric, str) or not metric:
        raise BasinscopeError(f"metric must be a metric name such as 'error', got {metric!r}.")


def pair_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    definition: str = "mean",
    metric: str = "error",
    num_points: int = 25,
    bn_policy: str = "stored",
    bn_data: Any = None,
    strategy: str = "loop",
    split: str = "train",
    task: Any = None,
    device: Any = None,
    dtype: Any = None,
) -> Any:
    """The barrier between two models (:func:`basinscope.analyses.barrier.barrier`).

    The engine strategy is pinned (default ``"loop"``) so equal models and seeds give
    bit-identical numbers. ``task`` runs the models on the batches (default ``model(x)``,
    cross-entropy); ``device`` and ``dtype`` default to ``model_a``'s.
    """
    _check_barrier(definition, metric)
    return barrier(
        model_a,
        model_b,
        data,
        definition=definition,
        metric=metric,
        num_points=num_points,
        bn_policy=bn_policy,
        bn_data=bn_data,
        strategy=strategy,
        split=split,
        **barrier_options(task, device, dtype, model_a),
    )


# -- results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstabilityResult(Result, kind="instability"):
    """The barrier between children spawned at step ``k`` (Frankle et al. 2020).

    Attributes:
        k: the spawning step (updates the parent was trained for).
        total_steps: updates of parent plus child.
        value: mean barrier over the pairs of children (the instability).
        max_value: largest pairwise barrier.
        barriers: the barrier of every pair, in the order of ``pairs``.
        pairs: indices of the children of each pair.
        definition, metric: which barrier on which metric (see the module docstring).
        child_seeds: the children's data-order seeds; the parent's is ``parent_seed``.
        child_values: each child's metric value (the barrier's endpoint values).
        copy_optimizer_state: whether the children started with the parent's optimizer
            state (momentum); False or ``k == 0`` means a fresh optimizer.
        child_schedule: ``"continue"`` or ``"restart"`` (see :func:`instability`).
        details: every pairwise barrier as a dict.
        settings: everything else that defines the number (configs, data sizes, ...).
        spec: the settings (``ks == (k,)``).
        children: the trained children (in memory only: not part of ``to_dict``).
    """

    k: int
    total_steps: int
    value: float
    max_value: float
    barriers: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...]
    definition: str
    metric: str
    child_seeds: tuple[int, ...]
    parent_seed: int
    child_values: tuple[float, ...]
    copy_optimizer_state: bool
    child_schedule: str
    details: tuple[dict[str, Any], ...]
    settings: dict[str, Any]
    spec: InstabilitySpec | None = None
    children: tuple[nn.Module, ...] = transient(default=())

    def summary(self) -> list[str]:
        """The barrier at ``k``, its maximum over pairs and the children's values."""
        children = ", ".join(fmt(v) for v in self.child_values)
        return [
            f"k={self.k:<6} {self.definition} barrier of the {self.metric}: {fmt(self.value)} "
            f"(max over pairs {fmt(self.max_value)}; children {children})"
        ]


@dataclass(frozen=True)
class InstabilitySweep(Result, kind="instability_sweep"):
    """Instability as a function of the spawning step (Frankle et al. 2020, Fig. 2);
    ``config`` is the training configuration of one run of ``total_steps``."""

    ks: tuple[int, ...]
    values: tuple[float, ...]
    max_values: tuple[float, ...]
    definition: str
    metric: str
    results: tuple[InstabilityResult, ...]
    spec: InstabilitySpec | None = None
    config: TrainConfig | None = None

    def summary(self) -> list[str]:
        """One line per spawning step (:meth:`InstabilityResult.summary`)."""
        return [line for r in self.results for line in r.summary()]


@dataclass(frozen=True)
class TransferInstabilityResult(Result, kind="transfer_instability"):
    """Children fine-tuned from pre-trained weights vs children trained from scratch.

    Neyshabur et al. 2020: two fine-tuned copies of a pre-trained model stay in one basin
    (small ``pretrained_barrier``), two copies trained from one random initialization
    need not (``scratch_barrier``).
    """

    pretrained_barrier: float
    scratch_barrier: float
    definition: str
    metric: str
    pretrained: InstabilityResult
    scratch: InstabilityResult
    spec: InstabilitySpec | None = None
    config: TrainConfig | None = None

    def summary(self) -> list[str]:
        """The two barriers."""
        return [
            f"{self.definition} barrier of the {self.metric}: pre-trained start "
            f"{fmt(self.pretrained_barrier)}, random init {fmt(self.scratch_barrier)}"
        ]


# -- schedules of a spawned run -----------------------------------------------------------
def _child_config(config: TrainConfig, k: int, total_steps: int, policy: str) -> TrainConfig:
    """The children's config (without their seed) for spawning at ``k``.

    ``"continue"``: the lr of child update ``j`` is the lr of update ``k + j`` of one run of
    ``config`` over ``total_steps``; ``"restart"``: the children run ``config``'s schedule
    from its start over the remaining ``total_steps - k`` updates.
    """
    remaining = total_steps - k
    if policy == "restart" or k == 0:
        return replace(config, steps=remaining, checkpoint_steps=())
    s, w = config.schedule, config.warmup_steps
    fix = (
        "pass child_schedule='restart' (the children run the schedule from its start over "
        "the remaining updates) or use schedule='constant'"
    )
    if k < w:
        raise BasinscopeError(
            f"cannot continue the warmup ({w} updates) in children spawned at k={k}: the trainer "
            f"restarts a spawned run's schedule at update 0; spawn at k >= {w}, or {fix}."
        )
    base = replace(config, steps=remaining, warmup_steps=0, checkpoint_steps=())
    if s == "constant":
        return base
    if s == "step":
        passed = sum(1 for m in config.milestones if m <= k)
        lr = config.lr * config.gamma**passed
        return replace(
            base,
            lr=lr,
            min_lr=min(config.min_lr, lr),
            milestones=tuple(m - k for m in config.milestones if m > k),
        )
    if s == "cyclic" and config.cycle_steps is not None and (k - w) % config.cycle_steps == 0:
        return base
    if s == "cyclic":
        raise BasinscopeError(
            f"children spawned at k={k} would start in the middle of a cycle of "
            f"{config.cycle_steps} updates; spawn at warmup_steps + a multiple of cycle_steps, or "
            f"{fix}."
        )
    raise BasinscopeError(
        f"the {s!r} schedule depends on the run length, so a parent of k={k} updates and "
        f"children of {remaining} cannot reproduce one run of {total_steps}: {fix} "
        "(k=0 and k=total_steps always work)."
    )


# -- the analysis -------------------------------------------------------------------------
@takes_spec(InstabilitySpec)
def instability(
    model: nn.Module,
    data: Any,
    *,
    k: int,
    total_steps: int,
    config: TrainConfig,
    children: int = 2,
    child_seeds: Sequence[int] | None = (1, 2),
    copy_optimizer_state: bool = True,
    definition: str = "mean",
    metric: str = "error",
    eval_data: Any = None,
    num_points: int = 25,
    child_schedule: str = "continue",
    bn_policy: str = "stored",
    bn_data: Any = None,
    loss_fn: Callable | None = None,
    strategy: str = "loop",
    task: Any = None,
    device: Any = None,
    dtype: Any = None,
) -> InstabilityResult:
    """Instability of training at step ``k`` (Frankle et al. 2020): the barrier between children.

    1. The parent is ``model`` trained for ``k`` updates with ``config`` (its data order
       from ``config.data_seed``); ``k=0`` uses ``model`` itself.
    2. ``children`` copies of the parent train for ``total_steps - k`` more updates, child
       ``i`` with data order ``child_seeds[i]`` (``None``: ``1, 2, ..., children``),
       starting from the parent's optimizer state (momentum, Adam moments) if
       ``copy_optimizer_state`` else from a fresh optimizer.
    3. The barrier (``definition`` on ``metric``, over ``eval_data``, default ``data``)
       between every pair of children; ``value`` is the mean over pairs, ``max_value`` the
       largest.

    The trainer restarts the lr schedule and the data order of every run at update 0.
    ``child_schedule="continue"`` (default) makes parent + child follow exactly the lr of
    one run of ``config`` over ``total_steps`` — possible for ``"constant"``, ``"step"``
    (milestones shifted by ``k``), ``"cyclic"`` spawned at a cycle boundary, and any
    schedule at ``k=0`` or ``k=total_steps``; otherwise a :class:`BasinscopeError` says so.
    ``"restart"`` runs ``config``'s schedule from its start in the parent (over ``k``
    updates) and again in each child (over ``total_steps - k``). Each child's data order
    starts at the first epoch of its own seed either way.

    ``task`` says how batches are split, the models called and the loss computed (default:
    ``(x, y)``, ``model(x)``, cross-entropy); it goes to the trainer and to the barriers.
    Training and barriers run on ``device`` (default: ``model``'s) in ``dtype`` (default:
    ``model``'s; ``"bfloat16"``/``"float16"`` autocast over float32 weights); both are
    recorded in the spec and ``settings``.

    Everything is a function of the seeds: the same arguments give bit-identical barriers.
    """
    if not isinstance(config, TrainConfig):
        raise BasinscopeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    total_steps = at_least("total_steps", total_steps, 1)
    k = at_least("k", k, 0, high=total_steps)
    children = at_least("children", children, 2)
    if child_seeds is None:
        child_seeds = range(1, children + 1)
    seeds = tuple(int(s) for s in child_seeds)
    if len(seeds) != children:
        raise BasinscopeError(
            f"child_seeds has {len(seeds)} seeds for children={children}; pass one data-order "
            f"seed per child, e.g. child_seeds={tuple(range(1, children + 1))}."
        )
    if child_schedule not in CHILD_SCHEDULES:
        raise BasinscopeError(
            f"unknown child_schedule {child_schedule!r}; valid values are "
            f"{', '.join(repr(c) for c in CHILD_SCHEDULES)}."
        )
    _check_barrier(definition, metric)
    eval_data = data if eval_data is None else eval_data
    on = train_options(model, task, device, dtype)
    device_name, precision = resolved(model, device, dtype)

    parent_result: TrainResult | None = None
    parent_config = replace(config, steps=k, checkpoint_steps=()) if k > 0 else None
    child_base = _child_config(config, k, total_steps, child_schedule) if k < total_steps else None
    if parent_config is not None:
        parent_result = train(model, data, parent_config, loss_fn=loss_fn, **on)
        parent = parent_result.model
    else:
        parent = model
    state = (
        parent_result.optimizer_state
        if copy_optimizer_state and parent_result is not None
        else None
    )
    kids: list[nn.Module] = []
    child_configs = []
    for seed in seeds:
        if child_base is None:  # k == total_steps: nothing left to train
            kids.append(copy.deepcopy(parent))
            continue
        cfg = replace(child_base, data_seed=seed)
        child_configs.append(cfg.to_dict())
        kids.append(train(parent, data, cfg, loss_fn=loss_fn, optimizer_state=state, **on).model)
    pairs = tuple(itertools.combinations(range(children), 2))
    results = [
        pair_barrier(
            kids[i],
            kids[j],
            eval_data,
            definition=definition,
            metric=metric,
            num_points=num_points,
            bn_policy=bn_policy,
            bn_data=bn_data,
            strategy=strategy,
            split="train" if eval_data is data else "eval",
            task=task,
            device=device_name,
            dtype=precision,
        )
        for i, j in pairs
    ]
    values = tuple(float(r.value) for r in results)
    child_values = [math.nan] * children
    for (i, j), r in zip(pairs, results):
        child_values[i], child_values[j] = float(r.f0), float(r.f1)
    settings = {
        "parent_config": parent_config.to_dict() if parent_config is not None else None,
        "child_configs": child_configs,
        "num_points": num_points,
        "bn_policy": bn_policy,
        "strategy": strategy,
        "barrier_implementation": "basinscope.analyses.barrier",
        "optimizer_state_copied": state is not None and child_base is not None,
        "eval_data_is_train_data": eval_data is data,
        "task": as_task(task).describe(),
        "device": device_name,
        "dtype": precision,
    }
    return InstabilityResult(
        k=k,
        total_steps=total_steps,
        value=float(np.mean(values)),
        max_value=float(np.max(values)),
        barriers=values,
        pairs=pairs,
        definition=definition,
        metric=metric,
        child_seeds=seeds,
        parent_seed=config.data_seed,
        child_values=tuple(child_values),
        copy_optimizer_state=copy_optimizer_state,
        child_schedule=child_schedule,
        details=tuple(jsonable(r.to_dict()) for r in results),
        settings=settings,
        spec=InstabilitySpec.from_kwargs(
            {
                **locals(),
                "ks": (k,),
                "child_seeds": seeds,
                "device": device_name,
                "dtype": precision,
            }
        ),
        children=tuple(kids),
    )


@takes_spec(InstabilitySpec)
def instability_sweep(
    model: nn.Module,
    data: Any,
    ks: Sequence[int] | None = None,
    *,
    total_steps: int,
    config: TrainConfig,
    children: int = 2,
    child_seeds: Sequence[int] | None = (1, 2),
    copy_optimizer_state: bool = True,
    definition: str = "mean",
    metric: str = "error",
    eval_data: Any = None,
    num_points: int = 25,
    child_schedule: str = "continue",
    bn_policy: str = "stored",
    bn_data: Any = None,
    loss_fn: Callable | None = None,
    strategy: str = "loop",
    task: Any = None,
    device: Any = None,
    dtype: Any = None,
) -> InstabilitySweep:
    """:func:`instability` at every spawning step in ``ks`` (same other arguments).

    ``ks=None`` takes those of 0, 10 and 50 that are at most ``total_steps``. Each ``k``
    trains its own parent from ``model`` (a prefix of the same deterministic run for the
    ``"continue"`` schedules, so the parents are the run's checkpoints).
    """
    if ks is None:
        ks = tuple(k for k in DEFAULT_KS if k <= total_steps)
    ks = tuple(at_least("every k in ks", k, 0) for k in ks)
    if not ks:
        raise BasinscopeError("ks is empty: pass the spawning steps, e.g. ks=(0, 10, 100).")
    if len(set(ks)) != len(ks):
        raise BasinscopeError(f"ks has repeated steps: {list(ks)}; pass each step once.")
    ks = tuple(sorted(ks))
    common = dict(
        total_steps=total_steps,
        config=config,
        children=children,
        child_seeds=child_seeds,
        copy_optimizer_state=copy_optimizer_state,
        definition=definition,
        metric=metric,
        eval_data=eval_data,
        num_points=num_points,
        child_schedule=child_schedule,
        bn_policy=bn_policy,
        bn_data=bn_data,
        loss_fn=loss_fn,
        strategy=strategy,
        task=task,
        device=device,
        dtype=dtype,
    )
    results = tuple(instability(model, data, k=k, **common) for k in ks)
    first = results[0].spec
    return InstabilitySweep(
        ks=ks,
        values=tuple(r.value for r in results),
        max_values=tuple(r.max_value for r in results),
        definition=results[0].definition,
        metric=results[0].metric,
        results=results,
        spec=first.replace(ks=ks) if first is not None else None,
        config=config,
    )


def _reinitialized(model: nn.Module, seed: int) -> nn.Module:
    fresh = copy.deepcopy(model)
    reset = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
                reset += 1
    if reset == 0:
        raise BasinscopeError(
            f"cannot re-initialize a {type(model).__name__}: none of its modules has "
            "reset_parameters(); pass random_init=<a freshly initialized model>."
        )
    return fresh


@takes_spec(InstabilitySpec)
def transfer_instability(
    pretrained: nn.Module,
    data: Any,
    *,
    steps: int,
    config: TrainConfig,
    random_init: nn.Module | None = None,
    init_seed: int = 0,
    child_seeds: Sequence[int] = (1, 2),
    definition: str = "mean",
    metric: str = "error",
    copy_optimizer_state: bool = True,
    eval_data: Any = None,
    num_points: int = 25,
    child_schedule: str = "continue",
    bn_policy: str = "stored",
    bn_data: Any = None,
    loss_fn: Callable | None = None,
    strategy: str = "loop",
    task: Any = None,
    device: Any = None,
    dtype: Any = None,
    **kwargs: Any,
) -> TransferInstabilityResult:
    """Barrier between two fine-tuned copies of ``pretrained`` vs two copies trained from scratch.

    Both pairs are :func:`instability` at ``k=0`` over ``steps`` updates with the same
    ``config`` and ``child_seeds``: once from the pre-trained weights, once from
    ``random_init`` (default: ``pretrained`` with every module's ``reset_parameters()``
    called under ``torch.manual_seed(init_seed)``). The other keyword arguments are
    :func:`instability`'s.
    """
    if "k" in kwargs or "total_steps" in kwargs:
        raise BasinscopeError(
            "transfer_instability spawns at k=0 and trains for `steps`; drop k/total_steps."
        )
    if kwargs:
        raise BasinscopeError(
            f"transfer_instability got unknown keyword arguments {sorted(kwargs)}; it takes "
            "those of instability() but k and total_steps."
        )
    init = _reinitialized(pretrained, init_seed) if random_init is None else random_init
    seeds = tuple(child_seeds) if child_seeds is not None else (1, 2)
    common = dict(
        k=0,
        total_steps=steps,
        config=config,
        children=len(seeds),
        child_seeds=seeds,
        definition=definition,
        metric=metric,
        copy_optimizer_state=copy_optimizer_state,
        eval_data=eval_data,
        num_points=num_points,
        child_schedule=child_schedule,
        bn_policy=bn_policy,
        bn_data=bn_data,
        loss_fn=loss_fn,
        strategy=strategy,
        task=task,
        device=device,
        dtype=dtype,
    )
    pre = instability(pretrained, data, **common)
    scratch = instability(init, data, **common)
    return TransferInstabilityResult(
        pretrained_barrier=pre.value,
        scratch_barrier=scratch.value,
        definition=definition,
        metric=metric,
        pretrained=pre,
        scratch=scratch,
        spec=pre.spec.replace(ks=None) if pre.spec is not None else None,
        config=config,
    )


def instability_analysis(
    model: nn.Module | None,
    data: Any,
    *,
    spec: InstabilitySpec,
    config: TrainConfig | InstabilityTraining,
    eval_data: Any = None,
    pretrained: nn.Module | None = None,
    init_seed: int = 0,
    loss_fn: Callable | None = None,
    task: Any = None,
) -> InstabilitySweep | TransferInstabilityResult:
    """The instability analysis of ``spec`` (what ``basinscope instability`` runs).

    Without ``pretrained``: :func:`instability_sweep` from the initial weights ``model`` at
    every ``k`` of ``spec.ks``. With ``pretrained``: :func:`transfer_instability` over
    ``spec.total_steps`` updates, children fine-tuned from ``pretrained`` against children
    trained from ``model`` (``None``: ``pretrained`` re-initialized with ``init_seed``), one
    per seed of ``spec.child_seeds`` (default ``1, ..., spec.children``).

    Every run trains on ``data`` with ``config`` (an :class:`InstabilityTraining` is made a
    run of ``spec.total_steps``; the steps are set per run); the barriers are measured on
    ``eval_data`` (default ``data``), BatchNorm statistics re-estimated from ``data`` when
    ``spec.bn_policy`` is ``"recompute"``; ``task`` runs the models on the batches (default:
    ``model(x)``, cross-entropy), on ``spec.device`` in ``spec.dtype``.
    """
    if isinstance(config, InstabilityTraining):
        config = config.config(spec.total_steps)
    bn_data = data if spec.bn_policy == "recompute" else None
    common = dict(
        config=config, eval_data=eval_data, bn_data=bn_data, loss_fn=loss_fn, task=task, spec=spec
    )
    if pretrained is None:
        if model is None:
            raise BasinscopeError("instability_analysis needs the initial weights: pass a model")
        return instability_sweep(model, data, **common)
    spec.check_transfer()
    seeds = spec.child_seeds or tuple(range(1, spec.children + 1))
    return transfer_instability(
        pretrained,
        data,
        steps=spec.total_steps,
        random_init=model,
        init_seed=init_seed,
        child_seeds=seeds,
        **common,
    )
