"""Mode-connecting curves: Bezier curves and polychains trained to stay in low loss.

Two independently trained networks :math:`\\theta_A, \\theta_B` are usually separated by a
loss barrier on the straight line between them, yet they are joined by simple curves of
low loss (Garipov et al. 2018, "Loss surfaces, mode connectivity, and fast ensembling of
DNNs"; Draxler et al. 2018, "Essentially no barriers in neural network energy
landscape"). A curve (:class:`Curve`, see :mod:`basinscope.analyses._curve` for the
Bezier and polychain formulas) is a combination of points :math:`P_0 = \\theta_A, P_1,
\\dots, P_{n-1}, P_n = \\theta_B` whose interior points are trained.

:func:`train_curve` minimizes Garipov et al.'s objective (their eq. 2, uniform in
:math:`t`, not in arc length) over the interior points only, with the endpoints fixed:

.. math::  \\ell(P_1, \\dots, P_{n-1}) = \\mathbb{E}_{t \\sim U(0, 1)}\\, L(\\phi(t)),

drawing one :math:`t` per minibatch. The curve is trained by the trainer
(:func:`~basinscope.training.train`) as a module whose parameters are the interior points
and whose forward pass calls the network through :func:`torch.func.functional_call` at
:math:`\\phi(t)` (nothing in the model is rewritten); :math:`t` is redrawn after every
update. :func:`evaluate_curve` then hands the engine the curve as a :class:`PointBasis`
(origin :math:`\\theta_A`, basis :math:`P_i - \\theta_A`, coefficients the weights of
:math:`P_1, \\dots, P_n`, which is exact because the weights sum to one) and evaluates it
next to the straight line, BatchNorm statistics re-estimated at every :math:`t` by default.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call

from basinscope._checks import MAX_COUNT, MAX_POINTS, MAX_SEED, MAX_STEPS, at_least, finite_float
from basinscope.analyses._curve import (
    CURVE_INITS,
    CURVE_KINDS,
    Curve,
    _check_degree,
    _check_ts,
    curve_weights,
    init_curve,
    load_curve,
    save_curve,
)
from basinscope.analyses.interpolation import interpolate
from basinscope.analyses.landscape import as_splits, dtype_name, eval_batches
from basinscope.engine import (
    EvalJob,
    Task,
    as_task,
    evaluate_points,
    has_batchnorm,
    warn_stored_bn,
)
from basinscope.engine.fit import check_model_data
from basinscope.engine.metrics import Metric
from basinscope.engine.precision import to_dtype
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import ParamDict, check_same_keys, get_buffers, get_params, norm
from basinscope.inputs import ModelPair
from basinscope.result import Result, fmt, tensors
from basinscope.spec import (
    BATCH_SIZE_HELP,
    BN_POLICIES,
    EVAL_DTYPES,
    STRATEGIES,
    STRATEGY_HELP,
    EvalOptions,
    Spec,
    option,
    takes_spec,
)
from basinscope.training import TrainConfig, train
from basinscope.training._data import as_tensors
from basinscope.training.schedules import check_schedule

__all__ = [
    "CURVE_INITS",
    "CURVE_KINDS",
    "T_SAMPLINGS",
    "Curve",
    "CurveEndpoints",
    "CurveEvalSpec",
    "CurveEvaluation",
    "CurveResult",
    "CurveSpec",
    "curve",
    "evaluate_curve",
    "init_curve",
    "load_curve",
    "save_curve",
    "train_curve",
]

T_SAMPLINGS = ("uniform",)
OPTIMIZERS = ("sgd", "adam")
BN_MODES = ("train", "eval")
MAX_BENDS = 64  # Bezier order / polychain bends: each is a full copy of the parameters
OBJECTIVE = "E_{t~U(0,1)} L(phi(t)), one t per minibatch (Garipov et al. 2018)"
LossFn = Callable[[Tensor, Tensor], Tensor]
CurveCallback = Callable[[int, dict[str, Any]], None]
_COPIES = " (each control point is a full copy of the model's parameters)"


def _eval_help(name: str) -> str:
    return EvalOptions.__dataclass_fields__[name].metadata["help"]


# -- settings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveSpec(Spec):
    """Train a low-loss curve between two models (Garipov et al. 2018) and compare it with the line.

    A Bezier curve of --order (quadratic by default: one control point) or a polychain with
    --bends bends joins the two --weights; its interior points are trained for --steps
    minibatch updates on E_{t~U(0,1)} L(phi(t)) (one t per minibatch) with the endpoints fixed.
    The curve is saved as curve.safetensors in the run folder (basinscope.analyses.load_curve
    reads it), then loss and error are evaluated at --points values of t on the curve and on
    the straight line (BatchNorm statistics re-estimated at every t by default for models with
    BatchNorm) and plotted (figures/curve) with the curve's length relative to the line's.
    The result's metrics are the evaluation: curve and line (the metrics over t, as xarray
    datasets), their maxima max_curve and max_line, length, distance and length_ratio. The
    curve's points are in the run folder's tensors/ too (basinscope.load(RUN).curve).

    In Python, this spec holds the settings of train_curve(), a CurveEvalSpec those of
    evaluate_curve(), and curve() runs both as the command does.
    """

    # the curve's kind (a field here; the spec's ClassVar `kind` is not used by curves)
    kind: str = option("bezier", "bezier or polychain.", choices=CURVE_KINDS)  # type: ignore[assignment]
    order: int = option(2, "Bezier order (2: one control point).", low=1, high=MAX_COUNT)
    bends: int = option(1, "Polychain bends.", low=1, high=MAX_COUNT)
    init: str = option(
        "linear",
        "Control points start on the line (linear) or near it (noise).",
        choices=CURVE_INITS,
    )
    steps: int = option(1000, "Training updates of the control points.", low=1, high=MAX_STEPS)
    batch_size: int = option(128, "Minibatch size.", low=1, high=MAX_COUNT)
    lr: float = option(0.05, "Learning rate.")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.0, "L2 penalty on the control points.", low=0.0)
    optimizer: str = option("sgd", "sgd or adam.", choices=OPTIMIZERS)
    schedule: str = option("constant", "constant, cosine or linear learning rate.")
    seed: int = option(0, "Seed of the sampled t (and of --init noise).", low=0, high=MAX_SEED)
    data_seed: int = option(0, "Seed of the minibatch order.", low=0, high=MAX_SEED)
    t_sampling: str = option("uniform", "How t is drawn.", choices=T_SAMPLINGS, cli=False)
    bn_mode: str = option(
        "train",
        "Training: BatchNorm on batch statistics (train) or stored (eval).",
        choices=BN_MODES,
    )

    def check(self) -> None:
        name = self.name_of
        if self.kind == "bezier" and self.order < 2:
            raise BasinscopeError(
                f"{name('order')} must be at least 2 for a Bezier curve, got {self.order} "
                "(order 1 is the straight line, with no control point to train)"
            )
        at_least(name("order"), self.order, 1, high=MAX_BENDS, high_why=_COPIES)
        at_least(name("bends"), self.bends, 1, high=MAX_BENDS, high_why=_COPIES)
        finite_float(name("momentum"), self.momentum, low=0, high=1, high_open=True)
        check_schedule(self.schedule, total_steps=self.steps, base_lr=self.lr)


@dataclass(frozen=True)
class CurveEvalSpec(Spec):
    """The settings of :func:`evaluate_curve` (and the evaluation of ``basinscope curve``)."""

    kind: ClassVar[str] = "curve_evaluation"

    points: int = option(21, "Values of t evaluated (at least 2).", low=2, high=MAX_POINTS)
    bn_policy: str = option(
        "auto",
        "Evaluation: auto (recompute for BatchNorm models), stored or recompute.",
        flag="--bn",
        choices=("auto", *BN_POLICIES),
    )
    bn_batches: int = option(10, _eval_help("bn_batches"), low=1, high=MAX_COUNT)
    metrics: tuple[str, ...] = option(
        ("loss", "accuracy", "error"), "Metrics evaluated.", cli=False
    )
    include_line: bool = option(True, "Evaluate the straight line too.", cli=False)
    length_num: int = option(
        1001, "Points of the arc-length approximation.", low=2, high=MAX_COUNT, cli=False
    )
    batch_size: int = option(
        1024,
        BATCH_SIZE_HELP,
        flag="--eval-batch-size",
        low=1,
        high=MAX_COUNT,
    )
    dtype: str = option(
        "float32",
        "float32, float64, or mixed precision bfloat16/float16 (evaluation).",
        choices=EVAL_DTYPES,
    )
    device: str = option("cpu", _eval_help("device"))
    chunk_size: int = option(64, _eval_help("chunk_size"), low=1, high=MAX_COUNT)
    strategy: str = option("auto", STRATEGY_HELP, choices=STRATEGIES)

    def check(self) -> None:
        EvalOptions(device=self.device)  # the device is available (EvalOptions' check)


@dataclass(frozen=True)
class CurveEndpoints(ModelPair):
    """The two models a curve joins, given by name."""

    needs: ClassVar[str] = "a curve joins exactly two models"
    roles: ClassVar[str] = ""

    weights: tuple[Path, ...] = option(
        (), "Weights of an endpoint; give it twice (theta_A, theta_B)."
    )


# -- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveEvaluation(Result, kind="curve_evaluation"):
    """Metrics along a curve and along the straight line between the same endpoints.

    ``curve`` has coordinate ``t`` and one variable ``<split>_<metric>`` per split and
    metric; ``line`` (``None`` without ``include_line``) is the
    :func:`~basinscope.analyses.interpolate` dataset at ``alpha = t``. ``length`` is the
    curve's arc length and ``distance`` :math:`\\lVert\\theta_B - \\theta_A\\rVert_2` (the
    line's length), ``length_ratio`` their ratio. ``max_curve``/``max_line`` hold the
    maximum over ``t`` of every variable (the quantity Garipov et al. report for loss and
    error).
    """

    curve: xr.Dataset
    line: xr.Dataset | None
    length: float
    distance: float
    length_ratio: float
    max_curve: dict[str, float]
    max_line: dict[str, float]
    settings: dict[str, Any]
    evaluation: dict[str, Any] = field(default_factory=dict)
    definition: str = ""
    spec: CurveEvalSpec | None = None


@dataclass(frozen=True)
class CurveResult(Result, kind="curve"):
    """A trained curve: its points, the per-step ``history`` (``"step"``, ``"t"``, ``"loss"``
    of that minibatch at :math:`\\phi(t)`, ``"lr"``) and the ``config`` that produced it.

    ``points`` are :math:`[\\theta_A, P_1, \\dots, \\theta_B]` (stored as tensors in a run
    folder), :attr:`curve` the :class:`Curve` of kind ``curve_kind``; ``definition`` is
    the objective. ``metrics`` (with ``basinscope curve``) evaluates the curve next to the
    line; ``curve_file`` is the safetensors file it was saved to.
    """

    points: list[ParamDict] = tensors(compare=False)
    curve_kind: str = "bezier"
    history: dict[str, list[float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    definition: str = OBJECTIVE
    labels: tuple[str, str] = ("model_a", "model_b")
    metrics: CurveEvaluation | None = None
    curve_file: str | None = None
    spec: CurveSpec | None = None

    @cached_property
    def curve(self) -> Curve:
        """The trained :class:`Curve`."""
        pts = list(self.points)
        return Curve(self.curve_kind, (pts[0], pts[-1]), tuple(pts[1:-1]))

    def summary(self) -> list[str]:
        """The curve's length against the line's and the maxima over t of both (with
        :attr:`metrics`)."""
        ev = self.metrics
        if ev is None:
            return super().summary()
        lines = [
            f"{self.curve_kind} curve: length {fmt(ev.length)} = {fmt(ev.length_ratio)} x the "
            f"line's {fmt(ev.distance)}; saved to {self.curve_file}"
        ]
        for var in ev.max_curve:
            lines.append(
                f"  max {var}: curve {fmt(ev.max_curve[var])}, line {fmt(ev.max_line.get(var))}"
            )
        return lines


# -- training ---------------------------------------------------------------------------
class _CurvePath(nn.Module):
    """A curve as a module for the trainer: its parameters (``control.<i>``) are the
    curve's interior points, its forward pass is ``net`` at :math:`\\phi(t)` for the
    current ``t`` (set between updates); the endpoints are buffers that never change.
    ``net`` gives the architecture and the buffers (BatchNorm statistics) only."""

    def __init__(self, net: nn.Module, start: Curve) -> None:
        super().__init__()
        self.net = net
        self.names = list(start.endpoints[0])
        self.curve_kind, self.order = start.kind, start.order
        self.control = nn.ParameterList(
            [nn.Parameter(p[k].detach().clone()) for p in start.control_points for k in self.names]
        )
        for i, end in enumerate(start.endpoints):
            for j, k in enumerate(self.names):
                self.register_buffer(f"end{i}_{j}", end[k].detach().clone(), persistent=False)
        self.t = 0.0

    def points(self) -> list[dict[str, Tensor]]:
        n = len(self.names)
        ends = [{k: getattr(self, f"end{i}_{j}") for j, k in enumerate(self.names)} for i in (0, 1)]
        inner = [
            {k: self.control[i * n + j] for j, k in enumerate(self.names)}
            for i in range(len(self.control) // n)
        ]
        return [ends[0], *inner, ends[1]]

    def curve(self) -> Curve:
        """The current curve (detached views of the trained tensors: read, do not modify)."""
        pts = [{k: v.detach() for k, v in p.items()} for p in self.points()]
        return Curve(self.curve_kind, (pts[0], pts[-1]), tuple(pts[1:-1]))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``net`` at :math:`\\phi(t)` on the inputs as the net takes them (``net(x)``,
        ``net(*x)`` or ``net(**inputs)``); its output as it is (the task reads it)."""
        w = curve_weights(self.curve_kind, self.order, self.t)
        used = [(float(c), p) for c, p in zip(w, self.points()) if c != 0]
        phi = {k: sum(c * p[k] for c, p in used) for k in self.names}
        return functional_call(self.net, phi, args, kwargs)


@takes_spec(CurveSpec)
def train_curve(
    model_a: nn.Module,
    model_b: nn.Module | Mapping[str, Tensor],
    data: Any,
    *,
    kind: str = "bezier",
    order: int = 2,
    bends: int = 1,
    init: str = "linear",
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    optimizer: str = "sgd",
    schedule: str = "constant",
    seed: int = 0,
    data_seed: int = 0,
    t_sampling: str = "uniform",
    bn_mode: str = "train",
    loss_fn: LossFn | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    callbacks: Sequence[CurveCallback] = (),
    labels: tuple[str, str] = ("model_a", "model_b"),
    task: Task | None = None,
) -> CurveResult:
    """Train the interior points of a curve from ``model_a`` to ``model_b`` (Garipov et al. 2018).

    Minimizes :math:`\\mathbb{E}_{t \\sim U(0,1)} L(\\phi(t))` by stochastic gradient with
    :func:`~basinscope.training.train`: each step draws one :math:`t` (from a generator
    seeded by ``seed``) and one minibatch (order fixed by ``data_seed``, as any training
    run), and differentiates the loss of ``functional_call(model, φ(t), x)`` with respect
    to the interior points. The endpoints are never updated: they stay bit-identical to
    the models' parameters. Weight decay (an L2 penalty) acts on the interior points only.

    BatchNorm (``bn_mode``): ``"train"`` (default, as Garipov et al.) normalizes with the
    minibatch's statistics at :math:`\\phi(t)`; the running statistics are updated on
    private copies of ``model_a``'s buffers and then discarded (statistics accumulated
    across different :math:`t` describe no single point: :func:`evaluate_curve`
    re-estimates them per :math:`t`). ``"eval"`` normalizes with ``model_a``'s stored
    statistics at every :math:`t`. Dropout and other layers are in training mode.

    ``model_b`` may be a model or a parameter dict; ``data`` takes the forms accepted by
    :func:`~basinscope.training.train`. ``optimizer`` is ``"sgd"`` (with ``momentum``) or
    ``"adam"``; ``schedule`` a learning-rate schedule name of
    :mod:`basinscope.training.schedules`. ``callbacks`` are called as ``cb(step, info)``
    after every update with ``info`` holding ``"loss"``, ``"t"``, ``"lr"``, ``"epoch"`` and
    ``"curve"`` (the current :class:`Curve`, sharing memory with the trained tensors: read,
    do not modify). ``labels`` name the two models. Given the same inputs and seeds the
    result is bit-identical.

    ``task`` (:class:`~basinscope.engine.Task`) says how the network is called on a batch
    (``net(x)`` or ``net(**inputs)``) and what the loss is; it goes to the trainer, which
    reads the batches and calls the curve with the network's inputs, and is recorded in
    ``config["task"]``. ``loss_fn`` is the older way to give a loss ``fn(outputs, targets)``.
    """
    n_inner = _check_degree(kind, order, bends)
    if n_inner == 0:
        raise BasinscopeError(
            "a Bezier curve of order 1 is the straight line: it has no control point to "
            "train; use order=2 (quadratic) or more"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BasinscopeError(f"steps must be an integer >= 1, got {steps!r}")
    if batch_size < 1:
        raise BasinscopeError(f"batch_size must be >= 1, got {batch_size}")
    if optimizer not in OPTIMIZERS:
        raise BasinscopeError(
            f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"
        )
    if not 0 <= momentum < 1 or weight_decay < 0:
        raise BasinscopeError(
            f"momentum must lie in [0, 1) and weight_decay be >= 0, got {momentum} and {weight_decay}"
        )
    if t_sampling not in T_SAMPLINGS:
        raise BasinscopeError(
            f"unknown t_sampling {t_sampling!r}: expected one of {', '.join(T_SAMPLINGS)}"
        )
    if bn_mode not in BN_MODES:
        raise BasinscopeError(f"unknown bn_mode {bn_mode!r}: expected one of {', '.join(BN_MODES)}")
    check_schedule(schedule, total_steps=steps, base_lr=lr)
    if not isinstance(model_a, nn.Module):
        raise BasinscopeError(
            f"model_a must be an nn.Module (it gives the architecture), got {type(model_a).__name__}"
        )
    start = init_curve(model_a, model_b, kind, order=order, bends=bends, init=init, seed=seed)
    a, b = start.endpoints
    home = next(iter(a.values())).device if a else torch.device("cpu")
    # one forward pass on the first examples: inputs, outputs and labels fit the model
    check_model_data(
        model_a,
        data,
        what="the training data",
        classification=loss_fn is None,
        task=as_task(task),
    )
    examples = _num_examples(data, as_task(task))

    # t_1, t_2, ... from one generator: t_1 before training, t_{s+1} after update s
    t_gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 4_242) % (2**63 - 1))

    def draw() -> float:
        return float(torch.rand((), generator=t_gen, dtype=torch.float64))

    path = _CurvePath(model_a, start)
    path.t = draw()
    history: dict[str, list[float]] = {"step": [], "t": [], "loss": [], "lr": []}

    def after_update(step: int, trained: nn.Module, info: dict[str, Any]) -> None:
        history["step"].append(float(step))
        history["t"].append(trained.t)
        history["loss"].append(info["loss"])
        history["lr"].append(info["lr"])
        if callbacks:
            now = {
                "loss": info["loss"],
                "t": trained.t,
                "lr": info["lr"],
                "epoch": info["epoch"],
                "curve": trained.curve(),
            }
            for cb in callbacks:
                cb(step, now)
        trained.t = draw()

    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        data_seed=data_seed,
        bn_mode=bn_mode,
        trainable=("control.*",),
    )
    t0 = time.perf_counter()
    run = train(
        path,
        data,
        config,
        loss_fn=loss_fn,
        device=device if device is not None else home,
        callbacks=[after_update],
        progress=progress,
        # the trainer calls the curve as the task calls the network, and takes its loss
        **({"task": task} if task is not None else {}),
    )
    trained = run.model.points()[1:-1]
    points = [a, *({k: v.detach().to(home).clone() for k, v in p.items()} for p in trained), b]
    settings = {
        "kind": kind,
        **({"order": order} if kind == "bezier" else {"bends": bends}),
        "init": init,
        "steps": steps,
        "batch_size": min(batch_size, examples) if examples is not None else batch_size,
        "lr": lr,
        "momentum": momentum if optimizer == "sgd" else None,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "schedule": schedule,
        "seed": seed,
        "data_seed": data_seed,
        "t_sampling": t_sampling,
        "bn_mode": bn_mode,
        "objective": OBJECTIVE,
        "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__)
        if loss_fn is not None
        else "cross_entropy",
        "task": as_task(task).describe(),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    spec = CurveSpec.from_kwargs(locals())
    return CurveResult(
        points=points,
        curve_kind=kind,
        history=history,
        config=settings,
        labels=(str(labels[0]), str(labels[1])),
        spec=spec,
    )


def _num_examples(data: Any, task: Task) -> int | None:
    """How many training examples ``data`` holds, where that is known without reading it
    (``None`` for a stream of unknown length)."""
    if isinstance(getattr(data, "y", None), Tensor):
        return int(data.y.shape[0])
    if isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
        _, y = task.split(data)
        return int(y.shape[0])
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor):
        if not isinstance(data[0], (tuple, list)):
            return int(data[1].shape[0])
    if isinstance(data, list) and data and all(isinstance(b, (tuple, list, Mapping)) for b in data):
        return sum(int(torch.as_tensor(task.split(b)[1]).shape[0]) for b in data)  # batches
    dataset = getattr(data, "dataset", data)  # a DataLoader: its dataset
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return len(dataset)
    if callable(getattr(data, "batches", None)):
        return int(as_tensors(data, "data")[1].shape[0])
    return None


# -- evaluation -------------------------------------------------------------------------
@takes_spec(CurveEvalSpec)
def evaluate_curve(
    model: nn.Module,
    curve: Curve,
    data: Any,
    *,
    ts=None,
    points: int = 21,
    bn_policy: str | None = None,
    bn_data: Any = None,
    bn_batches: int = 10,
    metrics: Sequence[str | Metric | Callable] = ("loss", "accuracy", "error"),
    include_line: bool = True,
    buffers: Mapping[str, Tensor] | None = None,
    length_num: int = 1001,
    batch_size: int = 1024,
    dtype: str = "float32",
    device: str = "cpu",
    chunk_size: int = 64,
    strategy: str = "auto",
    progress: bool = False,
    task: Task | None = None,
) -> CurveEvaluation:
    """Metrics at :math:`\\phi(t)` for ``ts`` (default ``points`` = 21 values in [0, 1]) and
    on the line.

    ``model`` gives the architecture (its parameters are not used) and, unless ``buffers``
    is given, the buffers. ``bn_policy`` (``None`` or ``"auto"``) defaults to
    ``"recompute"`` for a model with BatchNorm (statistics re-estimated at every :math:`t`
    from ``bn_batches`` batches of ``bn_data``, by default the ``"train"`` split of
    ``data``) and ``"stored"`` otherwise; the line uses the same policy and data, at
    ``alpha = t``. ``task`` (:class:`~basinscope.engine.Task`) says how the model is run on
    a batch and what the loss is (recorded in ``settings["task"]``). The other keyword
    arguments are the engine's (see :func:`~basinscope.analyses.compute_landscape`): the
    data in memory is put on ``device`` once, a DataLoader is streamed batch by batch.
    """
    even = ts is None  # the spec's grid (given ts: no spec)
    if even:
        at_least("points", points, 2, high=MAX_POINTS)
        ts = np.linspace(0.0, 1.0, points)
    ts = _check_ts(ts)
    if bn_policy == "auto":
        bn_policy = None
    asked_policy = bn_policy or "auto"
    dtype, device = dtype_name(dtype), str(device)
    task = as_task(task)
    params = get_params(model)
    check_same_keys(
        params,
        curve.endpoints[0],
        "the model's parameters and the curve's points",
        "Pass the architecture the curve was trained for.",
    )
    bufs = dict(buffers) if buffers is not None else get_buffers(model)
    if bn_policy is None:
        bn_policy = "recompute" if has_batchnorm(model) else "stored"
    raw_splits = as_splits(data)
    bn_source = "given"
    if bn_policy == "recompute" and has_batchnorm(model) and bn_data is None:
        if "train" in raw_splits or len(raw_splits) == 1:
            name = "train" if "train" in raw_splits else next(iter(raw_splits))
            bn_data, bn_source = raw_splits[name], f"split {name!r}"
        else:
            raise BasinscopeError(
                f"bn_policy='recompute' needs bn_data and data has no 'train' split (splits: "
                f"{', '.join(raw_splits)}): pass bn_data=<training data>"
            )
    if bn_policy == "stored":
        warn_stored_bn(model, "evaluation along a mode-connecting curve")
    # read once, on the evaluation device (a DataLoader: streamed on every pass)
    kw = dict(device=device, dtype=dtype, task=task)
    splits = {name: eval_batches(d, batch_size=batch_size, **kw) for name, d in raw_splits.items()}
    bn_list = (
        eval_batches(bn_data, batch_size=128, limit=bn_batches, **kw)
        if bn_data is not None
        else None
    )
    _, targets = next(iter(next(iter(splits.values()))))
    metric_objs = task.resolve_metrics(metrics, targets)
    job = EvalJob(
        model=model,
        basis=curve.as_point_basis(bufs),
        datasets=splits,
        metrics=tuple(metric_objs),
        batch_size=batch_size,
        dtype=to_dtype(dtype),
        device=device,
        bn_policy=bn_policy,
        bn_data=bn_list,
        bn_batches=bn_batches,
        strategy=strategy,
        task=task,
    )
    t0 = time.perf_counter()
    result = evaluate_points(job, curve.coeffs(ts), chunk_size=chunk_size, progress=progress)
    length = curve.length(length_num)
    a, b = curve.endpoints
    distance = float(norm({k: b[k].detach().double() - v.detach().double() for k, v in a.items()}))
    settings = {
        "kind": curve.kind,
        **(
            {"order": curve.order}
            if curve.kind == "bezier"
            else {"bends": len(curve.control_points)}
        ),
        "ts": ts.tolist(),
        "bn_policy": bn_policy,
        "bn_batches": bn_batches if bn_policy == "recompute" else 0,
        "bn_data": bn_source if bn_policy == "recompute" else None,
        "metrics": [m.name for m in metric_objs],
        "dtype": dtype,
        "include_line": include_line,
        "length": f"piecewise-linear over {length_num} points, Euclidean norm of all parameters",
        "buffers": "given" if buffers is not None else "the model's",
        "device": str(device),
        "task": task.describe(),
    }
    ds = xr.Dataset(
        {name: (("t",), v) for name, v in result.values.items()},
        coords={"t": ts},
        attrs={
            "kind": "curve",
            "curve_kind": curve.kind,
            "bn_policy": bn_policy,
            "dtype": dtype,
            "strategy": result.strategy,
            **{f"metric_{m.name}": m.definition for m in metric_objs},
        },
    )
    evaluation = {
        "strategy": result.strategy,
        "points": len(ts),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    line = None
    if include_line:
        base = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in base.named_parameters():
                p.copy_(curve.endpoints[0][k])
            for k, v in base.named_buffers():
                v.copy_(bufs[k])
        line = interpolate(
            base,
            curve.endpoints[1],
            splits,
            alphas=ts,
            bn_policy=bn_policy,
            bn_data=bn_list if bn_policy == "recompute" else None,
            bn_batches=bn_batches,
            metrics=tuple(metric_objs),
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            chunk_size=chunk_size,
            strategy=strategy,
            progress=progress,
            task=task,
        ).dataset
        evaluation["line_strategy"] = line.attrs.get("strategy")
    names = [m if isinstance(m, str) else None for m in metrics]
    spec = None  # a custom metric (a Metric or a callable) or grid of t has no spec
    if even and all(names):
        spec = CurveEvalSpec.from_kwargs(
            {**locals(), "points": len(ts), "bn_policy": asked_policy, "metrics": tuple(names)}
        )
    degree = (
        f"order {curve.order}" if curve.kind == "bezier" else f"{len(curve.control_points)} bends"
    )
    return CurveEvaluation(
        curve=ds,
        line=line,
        length=length,
        distance=distance,
        length_ratio=length / distance if distance > 0 else float("nan"),
        max_curve={str(v): float(ds[v].max()) for v in ds.data_vars},
        max_line={str(v): float(line[v].max()) for v in line.data_vars} if line is not None else {},
        settings=settings,
        evaluation=evaluation,
        definition=f"{curve.kind} curve ({degree}) at {len(ts)} values of t in [0, 1]"
        + (", next to the straight line at alpha = t" if include_line else ""),
        spec=spec,
    )


def curve(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    eval_data: Any,
    *,
    spec: CurveSpec | None = None,
    evaluation: CurveEvalSpec | None = None,
    labels: Sequence[str] = ("model_a", "model_b"),
    curve_file: str | Path | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
    task: Task | None = None,
) -> CurveResult:
    """Train a curve between two models and evaluate it next to the line (what
    ``basinscope curve`` runs).

    :func:`train_curve` on ``data`` with ``spec`` (default :class:`CurveSpec`), then
    :func:`evaluate_curve` of the trained curve on ``eval_data`` (one dataset or a
    ``{split: data}`` mapping) with ``evaluation`` (default :class:`CurveEvalSpec`),
    BatchNorm statistics re-estimated from ``data``; the evaluation is the result's
    ``metrics``. With ``curve_file`` the trained curve is first written there
    (:func:`save_curve`, with ``metadata``). ``labels`` name the two models; ``say`` is
    told each step before it runs. ``task`` (:class:`~basinscope.engine.Task`) says how the
    model is run and what the loss is, in the training and in the evaluation.
    """
    labels = (str(labels[0]), str(labels[1]))
    spec = CurveSpec() if spec is None else spec
    evaluation = CurveEvalSpec() if evaluation is None else evaluation
    tell = say if say is not None else (lambda msg: None)
    degree = f"order {spec.order}" if spec.kind == "bezier" else f"{spec.bends} bends"
    tell(
        f"training a {spec.kind} curve ({degree}) between {labels[0]} and {labels[1]}: "
        f"{spec.steps} updates"
    )
    trained = train_curve(
        model_a, model_b, data, spec=spec, labels=labels, progress=progress, task=task
    )
    if curve_file is not None:
        curve_file = str(save_curve(curve_file, trained.curve, metadata=metadata))
    tell(f"evaluating {evaluation.points} points on the curve and on the line ...")
    ev = evaluate_curve(
        model_a,
        trained.curve,
        eval_data,
        spec=evaluation,
        bn_data=data,
        progress=progress,
        task=task,
    )
    return replace(trained, metrics=ev, curve_file=curve_file)
