"""Sharpness of the loss at a solution: five measures, each a named definition.

"Sharpness" means different numbers in different papers. Every measure here is the
increase of the loss :math:`L(\\theta + \\delta) - L(\\theta)` under a perturbation
:math:`\\delta`, and they differ in which perturbations count and how they are combined:

``worst_case``         the largest increase in an :math:`\\ell_2` or :math:`\\ell_\\infty`
                       ball (Keskar et al. 2017; ``relative=True`` is their exact form),
``average``            the mean increase under Gaussian noise (Neyshabur et al. 2017;
                       Jiang et al. 2020),
``adaptive``           worst or average case with perturbations scaled by :math:`|w| + \\eta`
                       (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023),
``filter_normalized``  the mean increase along random filter-normalized directions (Li et
                       al. 2018's 1D curves read at a fixed step),
``m_sharpness``        worst-case sharpness of the loss of disjoint batches of :math:`m`
                       examples, averaged (Foret et al. 2021, SAM; Andriushchenko &
                       Flammarion 2022).

Loss semantics (recorded in every result): :math:`L` is the mean over all examples of
``data`` (or its first ``subset``) of the loss of the ``task``
(:class:`~basinscope.engine.task.Task`: how a batch is split, the model called and its
prediction found; cross-entropy by default, MSE, a user's callable or the model's own
loss; recorded as ``semantics["task"]``) or of a mean-reduced ``loss_fn(prediction,
targets)``, with the model in eval mode (BatchNorm uses its stored statistics, dropout is
off), on ``device`` in ``dtype`` (float32 or float64). A DataLoader is streamed: every
evaluation reads it again batch by batch (m-sharpness keeps only the examples of its
batches). All named parameters are
perturbed. The caller's model is never touched: the worst-case measures take the loss and
its gradient from :class:`~basinscope.curvature.loss.EmpiricalLoss` (the loss object the
curvature operators use, on a private copy of the model), the Monte Carlo measures
evaluate their points with the engine. Worst-case measures use the full-data gradient (no
stochastic ascent), so a seed fixes the number.

Rescaling symmetries leave the function unchanged: ReLU (a hidden unit's incoming weights
and bias times :math:`c > 0`, its outgoing weights divided by :math:`c`; one :math:`c` per
layer or per unit) and, in eval mode, a layer before BatchNorm (times :math:`c`, with the
stored mean, variance and epsilon rescaled to match). ``worst_case``, ``average`` and
``m_sharpness`` change under them; ``adaptive`` with :math:`\\eta = 0` is invariant to all
of them (its perturbations scale with :math:`|w|` elementwise); ``filter_normalized`` is
invariant to layer-wise (and per-filter) scaling but not to per-unit scaling of the ReLU
symmetry, which rescales the *columns* of the next layer while the normalization works on
its rows (tests/analyses/test_sharpness.py measures the table).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from basinscope._checks import at_least, positive_float
from basinscope.analyses.sharpness_spec import NORMS, SharpnessSpec
from basinscope.curvature.loss import (
    CURVATURE_DTYPES,
    EmpiricalLoss,
    _take,
    check_task_and_loss_fn,
    curvature_dtype,
    describe_loss,
)
from basinscope.engine import EvalJob, PointBasis, as_batches, check_model_data, evaluate_points
from basinscope.engine.batches import num_examples
from basinscope.engine.metrics import Metric
from basinscope.engine.task import Task, as_task, batch_size_of
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_buffers, get_params, random_directions
from basinscope.geometry.normalization import check_normalization
from basinscope.result import Result

__all__ = [
    "SHARPNESS_MEASURES",
    "SharpnessResult",
    "adaptive_sharpness",
    "average_sharpness",
    "filter_normalized_sharpness",
    "m_sharpness",
    "sharpness",
    "worst_case_sharpness",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
KINDS = ("worst", "average")
DTYPES = CURVATURE_DTYPES
ASCENT = (
    "projected gradient ascent on the exact loss of the data (no minibatch noise): normalized-gradient steps and projection "
    "onto the ball (l2) or sign steps and clipping (linf); restart 0 from delta=0, the others "
    "uniform in the ball; a step that does not increase the loss is undone and the step size "
    "halved; the best point of each restart is kept"
)


@dataclass(frozen=True)
class SharpnessResult(Result, kind="sharpness"):
    """One sharpness number and everything that defines it.

    ``value`` aggregates ``values``: the best increase of each restart (worst case, the
    maximum is reported), of each noise sample or direction (Monte Carlo, the mean is
    reported, with ``std_error``) or of each batch (m-sharpness, the mean).
    ``num_evaluations`` counts loss evaluations on the measure's data (a loss with its
    gradient counts once). ``definition`` is the measure's formula with its settings,
    ``params`` the settings the measure ran with, ``spec`` the settings of the run that
    asked for it (:class:`~basinscope.analyses.sharpness_spec.SharpnessSpec`; ``None``
    when the measure's function was called directly).
    """

    measure: str
    value: float
    base_loss: float
    perturbed_loss: float
    definition: str
    params: dict[str, Any]
    std_error: float | None
    num_evaluations: int
    semantics: dict[str, Any]
    values: tuple[float, ...] = ()
    spec: SharpnessSpec | None = None

    def summary(self) -> list[str]:
        """One line: the measure, its value (± its standard error), the base loss and the
        definition."""
        se = f" ± {self.std_error:.2e}" if self.std_error is not None else ""
        return [
            f"{self.measure:18} {self.value: .5e}{se}   (base loss {self.base_loss:.4f}; "
            f"{self.definition})"
        ]


# -- argument checks ---------------------------------------------------------------------
def _positive(name: str, v: Any, example: str) -> float:
    return positive_float(name, v, fix=f"e.g. {example}")


def _at_least(name: str, v: Any, lo: int, hint: str = "") -> int:
    return at_least(name, v, lo, why=hint)


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise BasinscopeError(
            f"unknown norm {norm!r}: expected one of {', '.join(NORMS)} "
            "(the ball of perturbations, ||delta||_2 <= rho or max_i |delta_i| <= rho)"
        )
    return norm


@dataclass(frozen=True)
class _Eval:
    """How the loss is evaluated: task or loss function, precision, device, batching, subset."""

    loss_fn: LossFn | None
    dtype: torch.dtype
    device: str
    batch_size: int
    subset: int | None
    task: Task = field(default_factory=Task)

    @classmethod
    def make(cls, loss_fn, dtype, device, batch_size, subset=None, task=None) -> _Eval:
        check_task_and_loss_fn(task, loss_fn)
        _at_least("batch_size", batch_size, 1)
        if subset is not None:
            _at_least("subset", subset, 1)
        return cls(loss_fn, curvature_dtype(dtype), device, int(batch_size), subset, as_task(task))

    def batches(self, data: Any, model: nn.Module) -> tuple[Any, int]:
        """The data as batches in ``dtype`` on ``device`` (its first ``subset`` examples; a
        DataLoader streamed), checked against ``model``
        (:func:`~basinscope.engine.check_model_data`)."""
        bs = as_batches(
            data,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            task=self.task,
        )
        # the model as it is evaluated: a copy in this dtype on this device
        net = copy.deepcopy(model).to(device=self.device, dtype=self.dtype)
        classification = self.loss_fn is None and self.task.loss == "cross_entropy"
        check_model_data(net, bs, classification=classification, task=self.task)
        n = num_examples(bs)
        if self.subset is None:
            return bs, n
        if self.subset > n:
            raise BasinscopeError(
                f"subset={self.subset} but the dataset has only {n} examples; "
                f"pass subset <= {n} or None"
            )
        return _take(bs, self.subset), self.subset

    def loss(self, model: nn.Module, batches: Any) -> EmpiricalLoss:
        """:math:`L` at any flat point, with its gradient, on a private eval-mode copy of
        the model."""
        return EmpiricalLoss(
            model,
            batches,
            task=None if self.loss_fn is not None else self.task,
            loss_fn=self.loss_fn,
            dtype=self.dtype,
            device=self.device,
            batch_size=self.batch_size,
        )

    def semantics(self, num_examples: int, dimension: int) -> dict[str, Any]:
        return {
            "loss": self.task.loss_metric().definition
            if self.loss_fn is None
            else "mean over examples of loss_fn (batch means weighted by batch size)",
            "task": describe_loss(self.task, self.loss_fn),
            "bn_mode": "eval (stored running statistics)",
            "dropout": "off",
            "perturbed": "all named_parameters()",
            "num_examples": int(num_examples),
            "dimension": int(dimension),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


def _ascent_options(rho, norm, steps, restarts, step_size) -> dict[str, Any]:
    rho = _positive("rho", rho, "rho=0.05")
    return dict(
        rho=rho,
        norm=_check_norm(norm),
        steps=_at_least("steps", steps, 1),
        restarts=_at_least("restarts", restarts, 1),
        step_size=2 * rho if step_size is None else _positive("step_size", step_size, "2 * rho"),
    )


def _check_eta(eta: Any) -> float:
    if (
        isinstance(eta, bool)
        or not isinstance(eta, (int, float))
        or not math.isfinite(eta)
        or eta < 0
    ):
        raise BasinscopeError(
            f"eta must be a number >= 0, got {eta!r}; ASAM uses 0.01, Andriushchenko et al. 2023 use 0"
        )
    return float(eta)


def _random_in_ball(n: int, rho: float, norm: str, gen: torch.Generator) -> Tensor:
    if norm == "linf":
        return (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * rho
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    r = float(torch.rand((), generator=gen, dtype=torch.float64)) ** (1.0 / n)
    return z / z.norm() * rho * r


def _project(u: Tensor, rho: float, norm: str) -> Tensor:
    if norm == "linf":
        return u.clamp(-rho, rho)
    n = float(u.norm())
    return u * (rho / n) if n > rho else u


def _step_direction(g: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return g.sign()
    n = float(g.norm())
    return g / n if n > 0 else torch.zeros_like(g)


def _ascent(
    obj: EmpiricalLoss,
    batches,
    *,
    scale: Tensor | None,
    rho: float,
    norm: str,
    steps: int,
    restarts: int,
    step_size: float,
    gen: torch.Generator,
) -> tuple[float, list[float]]:
    """Base loss and the best loss of each restart of PGA over :math:`\\{\\delta = T u : \\lVert u\\rVert \\le \\rho\\}`."""

    def at(u: Tensor) -> tuple[float, Tensor]:
        loss, g = obj.value_and_grad(obj.theta + (u if scale is None else scale * u), batches)
        return loss, (g if scale is None else scale * g)  # chain rule into u-space

    base, best = math.nan, []
    for r in range(restarts):
        u0 = torch.zeros(obj.theta.numel(), dtype=torch.float64)
        if r > 0:
            u0 = _random_in_ball(obj.theta.numel(), rho, norm, gen)
        u = u0.to(obj.theta)
        loss, g = at(u)
        if r == 0:
            base = loss
        step = step_size
        for _ in range(steps):
            cand = _project(u + step * _step_direction(g, norm), rho, norm)
            c_loss, c_g = at(cand)
            if c_loss > loss:
                u, loss, g = cand, c_loss, c_g
            else:
                step /= 2
        best.append(loss)
    return base, best


def _ball(norm: str, scaled_by: str | None = None) -> str:
    p = norm[1:]
    return f"||delta / ({scaled_by})||_{p}" if scaled_by else f"||delta||_{p}"


def _pga_result(
    measure, model, data, ev: _Eval, opts, *, scale_of, seed, relative, definition, extra
):
    """Worst-case sharpness of the full-data (or subset) loss by :func:`_ascent`."""
    batches, n = ev.batches(data, model)
    obj = ev.loss(model, batches)
    gen = torch.Generator().manual_seed(int(seed))
    base, best = _ascent(obj, batches, scale=scale_of(obj.theta), gen=gen, **opts)
    diffs = [b - base for b in best]
    if relative:
        diffs = [100 * d / (1 + base) for d in diffs]
    return SharpnessResult(
        measure=measure,
        value=float(max(diffs)),
        base_loss=float(base),
        perturbed_loss=float(max(best)),
        definition=definition,
        params={**opts, "seed": seed, "relative": relative, **extra, "ascent": ASCENT},
        std_error=None,
        num_evaluations=obj.num_evaluations,
        semantics=ev.semantics(n, obj.theta.numel()),
        values=tuple(float(d) for d in diffs),
    )


def worst_case_sharpness(
    model: nn.Module,
    data: Any,
    *,
    rho: float = 0.05,
    norm: str = "l2",
    steps: int = 10,
    restarts: int = 3,
    step_size: float | None = None,
    relative: bool = False,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    batch_size: int = 1024,
    subset: int | None = None,
    task: Task | None = None,
) -> SharpnessResult:
    """Worst-case :math:`\\epsilon`-sharpness in an :math:`\\ell_2` or :math:`\\ell_\\infty` ball.

    .. math::  S = \\max_{\\lVert\\delta\\rVert_p \\le \\rho} L(\\theta + \\delta) - L(\\theta)

    found by projected gradient ascent (``steps`` steps from each of ``restarts`` starting
    points: :math:`\\delta = 0`, whose first step is the gradient direction, then uniform
    points in the ball; the first step is ``step_size``, default :math:`2\\rho` as in
    Croce & Hein 2020's APGD, halved whenever a step fails to increase the loss). The
    number is a lower bound on the maximum (the best point found); ``values`` holds the
    best of each restart.

    ``relative=True`` is Keskar et al. 2017 ("On large-batch training for deep learning:
    generalization gap and sharp minima", eq. 3): the ball scaled per coordinate,
    :math:`|\\delta_i| \\le \\rho(|\\theta_i| + 1)` for ``norm="linf"``, and the value in
    percent of :math:`1 + L`:

    .. math::  S_{\\text{Keskar}} = 100\\,\\frac{\\max_{\\lVert\\delta/(|\\theta| + 1)\\rVert_p
               \\le \\rho} L(\\theta + \\delta) - L(\\theta)}{1 + L(\\theta)}

    (Keskar et al. use ``norm="linf"``, :math:`\\rho = 10^{-3}` or :math:`5\\cdot10^{-4}`
    and L-BFGS-B in the full space; here the maximizer is PGA).
    """
    ev = _Eval.make(loss_fn, dtype, device, batch_size, subset, task)
    opts = _ascent_options(rho, norm, steps, restarts, step_size)
    if relative:
        definition = (
            f"100 * (max_{{{_ball(norm, '|theta| + 1')} <= rho}} L(theta + delta) - L(theta))"
            " / (1 + L(theta))  [Keskar et al. 2017, eq. 3]"
        )
    else:
        definition = f"max_{{{_ball(norm)} <= rho}} L(theta + delta) - L(theta)"
    return _pga_result(
        "worst_case",
        model,
        data,
        ev,
        opts,
        scale_of=(lambda t: t.abs() + 1) if relative else (lambda t: None),
        seed=seed,
        relative=bool(relative),
        definition=definition,
        extra={},
    )


# -- Monte Carlo measures through the engine --------------------------------------------
def _engine_losses(model, batches, directions, coeffs, ev: _Eval, strategy: str):
    """Losses at :math:`\\theta + \\sum_i c_i d_i` for each coefficient row (the engine)."""
    metric = (
        "loss"  # the task's loss
        if ev.loss_fn is None
        else Metric("loss", ev.loss_fn, per_example=False, definition="loss_fn (batch mean)")
    )
    origin = {k: v.to(ev.dtype) for k, v in get_params(model).items()}
    job = EvalJob(
        model,
        PointBasis(origin, tuple(directions), get_buffers(model)),
        {"train": batches},
        metrics=[metric],
        batch_size=ev.batch_size,
        dtype=ev.dtype,
        device=ev.device,
        strategy=strategy,
        task=ev.task,
    )
    res = evaluate_points(job, coeffs)
    return res.values["train_loss"], res.strategy


def _gaussian_result(
    measure, model, data, ev: _Eval, *, sigma, samples, seed, scale_of, definition, extra, strategy
):
    """Mean loss increase under noise :math:`\\sigma\\, T(w) z`, :math:`z \\sim \\mathcal{N}(0, I)`."""
    sigma = _positive("sigma", sigma, "sigma=0.01")
    samples = _at_least("samples", samples, 2, " (a standard error needs at least two samples)")
    batches, n = ev.batches(data, model)
    params = {k: v.to("cpu", torch.float64) for k, v in get_params(model).items()}
    gen = torch.Generator().manual_seed(int(seed))
    noise = []
    for _ in range(samples):
        z = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
        noise.append({k: (sigma * scale_of(params[k]) * z[k]).to(ev.dtype) for k in params})
    coeffs = np.vstack([np.zeros((1, samples)), np.eye(samples)])  # the center, then each sample
    losses, used = _engine_losses(model, batches, noise, coeffs, ev, strategy)
    diffs = losses[1:] - losses[0]
    return SharpnessResult(
        measure=measure,
        value=float(diffs.mean()),
        base_loss=float(losses[0]),
        perturbed_loss=float(losses[1:].mean()),
        definition=definition,
        params={"sigma": sigma, "samples": samples, "seed": seed, **extra, "engine_strategy": used},
        std_error=float(diffs.std(ddof=1) / math.sqrt(samples)),
        num_evaluations=samples + 1,
        semantics=ev.semantics(n, sum(v.numel() for v in params.values())),
        values=tuple(float(v) for v in diffs),
    )


def average_sharpness(
    model: nn.Module,
    data: Any,
    *,
    sigma: float = 0.01,
    samples: int = 20,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    batch_size: int = 1024,
    subset: int | None = None,
    task: Task | None = None,
    strategy: str = "auto",
) -> SharpnessResult:
    """Average-case sharpness under isotropic Gaussian perturbations.

    .. math::  S = \\mathbb{E}_{\\delta \\sim \\mathcal{N}(0, \\sigma^2 I)}
               L(\\theta + \\delta) - L(\\theta)
               \\approx \\frac1K \\sum_{k=1}^{K} L(\\theta + \\delta_k) - L(\\theta)

    with its Monte Carlo standard error (``std_error``; ``values`` holds each sample's
    increase). For a quadratic it is :math:`\\tfrac12\\sigma^2 \\operatorname{tr}\\nabla^2 L`.
    Neyshabur et al. 2017 ("Exploring generalization in deep learning"); Jiang et al. 2020
    ("Fantastic generalization measures and where to find them"). The ``samples`` points
    are evaluated together by the engine (noise drawn in float64 from ``seed``, in
    parameter order).
    """
    ev = _Eval.make(loss_fn, dtype, device, batch_size, subset, task)
    return _gaussian_result(
        "average",
        model,
        data,
        ev,
        sigma=sigma,
        samples=samples,
        seed=seed,
        scale_of=torch.ones_like,
        definition="E_{delta ~ N(0, sigma^2 I)} L(theta + delta) - L(theta)  (Monte Carlo mean)",
        extra={},
        strategy=strategy,
    )


def adaptive_sharpness(
    model: nn.Module,
    data: Any,
    *,
    rho: float = 0.05,
    norm: str = "l2",
    eta: float = 0.0,
    kind: str = "worst",
    steps: int = 10,
    restarts: int = 3,
    step_size: float | None = None,
    sigma: float = 0.01,
    samples: int = 20,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    batch_size: int = 1024,
    subset: int | None = None,
    task: Task | None = None,
    strategy: str = "auto",
) -> SharpnessResult:
    """Adaptive sharpness: perturbations scaled by :math:`T_w = \\operatorname{diag}(|w| + \\eta)`.

    .. math::  S_{\\text{worst}} = \\max_{\\lVert T_w^{-1}\\delta\\rVert_p \\le \\rho}
               L(w + \\delta) - L(w), \\qquad
               S_{\\text{average}} = \\mathbb{E}_{u \\sim \\mathcal{N}(0, \\sigma^2 I)}
               L(w + T_w u) - L(w)

    ``kind="worst"`` runs the ascent of :func:`worst_case_sharpness` in :math:`u`-space
    (:math:`\\delta = T_w u`, :math:`\\lVert u\\rVert_p \\le \\rho`; uses ``rho``, ``norm``,
    ``steps``, ``restarts``, ``step_size``), ``kind="average"`` the Monte Carlo mean of
    :func:`average_sharpness` (uses ``sigma``, ``samples``, ``strategy``). Kwon et al. 2021
    ("ASAM: Adaptive sharpness-aware minimization", :math:`\\eta = 0.01`); Andriushchenko et
    al. 2023 ("A modern look at the relationship between sharpness and generalization",
    :math:`\\eta = 0`). With :math:`\\eta = 0` the measure is invariant to the rescaling
    symmetries of ReLU and BatchNorm layers (and coordinates with :math:`w_i = 0` are not
    perturbed); :math:`\\eta > 0` breaks the invariance.
    """
    if kind not in KINDS:
        raise BasinscopeError(
            f"unknown kind {kind!r}: expected 'worst' (max over the ball) or 'average' (Gaussian noise)"
        )
    eta = _check_eta(eta)
    ev = _Eval.make(loss_fn, dtype, device, batch_size, subset, task)
    if kind == "average":
        return _gaussian_result(
            "adaptive",
            model,
            data,
            ev,
            sigma=sigma,
            samples=samples,
            seed=seed,
            scale_of=lambda w: w.abs() + eta,
            definition="E_{u ~ N(0, sigma^2 I)} L(w + (|w| + eta) * u) - L(w)  (Monte Carlo mean)",
            extra={"kind": kind, "eta": eta},
            strategy=strategy,
        )
    opts = _ascent_options(rho, norm, steps, restarts, step_size)
    return _pga_result(
        "adaptive",
        model,
        data,
        ev,
        opts,
        scale_of=lambda t: t.abs() + eta,
        seed=seed,
        relative=False,
        definition=f"max_{{{_ball(norm, '|w| + eta')} <= rho}} L(w + delta) - L(w)",
        extra={"kind": kind, "eta": eta},
    )


def filter_normalized_sharpness(
    model: nn.Module,
    data: Any,
    *,
    alpha: float | Sequence[float] = 0.1,
    num_directions: int = 10,
    seed: int = 0,
    normalization: str = "filter",
    bias_policy: str = "zero",
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    batch_size: int = 1024,
    subset: int | None = None,
    task: Task | None = None,
    strategy: str = "auto",
) -> SharpnessResult:
    """Sharpness along random filter-normalized directions (Li et al. 2018).

    .. math::  S = \\frac1D \\sum_{i=1}^{D} \\max_{\\alpha \\in A}
               L(\\theta + \\alpha d_i) - L(\\theta),
               \\qquad d_{i,jk} \\leftarrow \\frac{d_{i,jk}}{\\lVert d_{i,jk}\\rVert}
               \\lVert\\theta_{jk}\\rVert

    where :math:`d_i` are Gaussian directions (seeds ``seed + i``, as
    :func:`~basinscope.geometry.random_directions`) normalized per filter :math:`k` of each
    layer :math:`j` (``normalization``, ``bias_policy``: see
    :mod:`basinscope.geometry.normalization`) and :math:`A` is ``alpha``: one step (Li et
    al.'s 1D curve, "Visualizing the loss landscape of neural nets", read at
    :math:`\\alpha`) or a grid (the highest point of each curve on it). ``values`` holds
    the per-direction values, ``params["curves"]`` the curves, ``std_error`` the standard
    error over directions. All points are evaluated together by the engine.
    """
    check_normalization(normalization, bias_policy)
    num_directions = _at_least("num_directions", num_directions, 1)
    grid = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise BasinscopeError(
            f"alpha must be a number or a non-empty 1D grid of numbers, got {alpha!r}"
        )
    ev = _Eval.make(loss_fn, dtype, device, batch_size, subset, task)
    batches, n = ev.batches(data, model)
    params = {k: v.to(ev.dtype) for k, v in get_params(model).items()}
    dirs = random_directions(params, seed, num_directions, normalization, bias_policy)
    coeffs = np.zeros((1 + num_directions * grid.size, num_directions))  # row 0: the center
    for i in range(num_directions):
        coeffs[1 + i * grid.size : 1 + (i + 1) * grid.size, i] = grid
    losses, used = _engine_losses(model, batches, dirs, coeffs, ev, strategy)
    curves = (losses[1:] - losses[0]).reshape(num_directions, grid.size)
    per_direction = curves.max(axis=1)
    where = "" if grid.size == 1 else "max_{alpha in grid} "
    return SharpnessResult(
        measure="filter_normalized",
        value=float(per_direction.mean()),
        base_loss=float(losses[0]),
        perturbed_loss=float(per_direction.mean() + losses[0]),
        definition=(
            f"mean_i {where}L(theta + alpha d_i) - L(theta), d_i Gaussian directions with "
            f"{normalization!r} normalization d_ij <- d_ij / ||d_ij|| * ||theta_ij|| "
            f"(1-D parameters: bias_policy={bias_policy!r})"
        ),
        params={
            "alpha": grid.tolist() if grid.size > 1 else float(grid[0]),
            "num_directions": num_directions,
            "seed": seed,
            "direction_seeds": [seed + i for i in range(num_directions)],
            "normalization": normalization,
            "bias_policy": bias_policy,
            "curves": curves.tolist(),
            "engine_strategy": used,
        },
        std_error=float(per_direction.std(ddof=1) / math.sqrt(num_directions))
        if num_directions > 1
        else None,
        num_evaluations=len(coeffs),
        semantics=ev.semantics(n, sum(v.numel() for v in params.values())),
        values=tuple(float(v) for v in per_direction),
    )


def m_sharpness(
    model: nn.Module,
    data: Any,
    *,
    m: int = 32,
    rho: float = 0.05,
    norm: str = "l2",
    steps: int = 1,
    restarts: int = 1,
    step_size: float | None = None,
    adaptive: bool = False,
    eta: float = 0.0,
    seed: int = 0,
    max_batches: int | None = None,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    batch_size: int = 1024,
    task: Task | None = None,
) -> SharpnessResult:
    """m-sharpness: worst-case sharpness of the loss of each batch of :math:`m` examples, averaged.

    .. math::  S_m = \\frac1B \\sum_{b=1}^{B} \\max_{\\lVert\\delta\\rVert_p \\le \\rho}
               L_b(\\theta + \\delta) - L_b(\\theta),
               \\qquad L_b = \\frac1m \\sum_{n \\in \\text{batch } b} \\ell_n

    over :math:`B = \\lfloor N/m \\rfloor` disjoint batches of a random order of the data
    (``seed``; the last :math:`N \\bmod m` examples are left out), at most ``max_batches``.
    Each batch has its own ascent (as :func:`worst_case_sharpness`, restart generator
    seeded ``seed + b``); the default, one step from :math:`\\delta = 0`, is SAM's
    :math:`\\delta = \\rho\\nabla L_b / \\lVert\\nabla L_b\\rVert` (counted only if it
    increases the loss, since :math:`\\delta = 0` is in the ball). ``adaptive=True`` scales
    the ball by :math:`|w| + \\eta` as :func:`adaptive_sharpness`. Foret et al. 2021
    ("Sharpness-aware minimization for efficiently improving generalization");
    Andriushchenko & Flammarion 2022 ("Towards understanding sharpness-aware
    minimization"). With :math:`m = N` it equals :func:`worst_case_sharpness` with the
    same settings. ``values`` holds each batch's sharpness.
    """
    opts = _ascent_options(rho, norm, steps, restarts, step_size)
    eta = _check_eta(eta)
    ev = _Eval.make(loss_fn, dtype, device, batch_size, task=task)
    batches, n = ev.batches(data, model)
    m = _at_least("m", m, 1, " (the number of examples per batch)")
    if m > n:
        raise BasinscopeError(
            f"m={m} exceeds the number of examples ({n}); pass m <= {n} "
            "(m = N gives the full-batch worst-case sharpness)"
        )
    if max_batches is not None:
        _at_least("max_batches", max_batches, 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    num = n // m if max_batches is None else min(n // m, max_batches)
    x_all, y_all = _gather(batches, order[: num * m])  # only the examples of the B batches
    obj = ev.loss(model, batches)
    scale = obj.theta.abs() + eta if adaptive else None
    bases, worsts = [], []
    for b in range(num):
        xb, yb = _rows(x_all, slice(b * m, (b + 1) * m)), y_all[b * m : (b + 1) * m]
        sub = [
            (_rows(xb, slice(i, i + ev.batch_size)), yb[i : i + ev.batch_size])
            for i in range(0, m, ev.batch_size)
        ]
        gen = torch.Generator().manual_seed(int(seed) + b)
        base, best = _ascent(obj, sub, scale=scale, gen=gen, **opts)
        bases.append(base)
        worsts.append(max(best))
    diffs = np.asarray(worsts) - np.asarray(bases)
    ball = _ball(opts["norm"], "|w| + eta" if adaptive else None)
    semantics = ev.semantics(num * m, obj.theta.numel())
    semantics.update(num_batches=num, examples_per_batch=m, examples_left_out=n - num * m)
    return SharpnessResult(
        measure="m_sharpness",
        value=float(diffs.mean()),
        base_loss=float(np.mean(bases)),
        perturbed_loss=float(np.mean(worsts)),
        definition=(
            f"mean_b max_{{{ball} <= rho}} L_b(theta + delta) - L_b(theta), "
            "L_b the mean loss over the b-th disjoint batch of m examples"
        ),
        params={
            "m": m,
            **opts,
            "adaptive": bool(adaptive),
            "eta": eta if adaptive else None,
            "seed": seed,
            "max_batches": max_batches,
            "ascent": ASCENT,
        },
        std_error=float(diffs.std(ddof=1) / math.sqrt(num)) if num > 1 else None,
        num_evaluations=obj.num_evaluations,
        semantics=semantics,
        values=tuple(float(v) for v in diffs),
    )


def _rows(x: Any, index: Any) -> Any:
    """Rows ``index`` (a slice or an index tensor) of a batch's inputs (tensor, tuple, dict)."""
    if isinstance(x, dict):
        return {k: v[index] for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(v[index] for v in x)
    return x[index]


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))
    return torch.cat(parts)


def _gather(batches: Any, index: Tensor) -> tuple[Any, Tensor]:
    """The inputs and targets of the examples ``index`` (positions in the data), in that
    order: one pass over the batches (streamed ones too), keeping only those examples."""
    wanted, order = torch.sort(index)
    xs, ys, start, lo = [], [], 0, 0
    for x, y in batches:
        size = batch_size_of(x)
        hi = int(torch.searchsorted(wanted, start + size))
        if hi > lo:
            local = (wanted[lo:hi] - start).to(y.device)
            xs.append(_rows(x, local))
            ys.append(y[local])
        start, lo = start + size, hi
        if lo == len(wanted):
            break
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    inverse = inverse.to(ys[0].device)
    return _rows(_cat(xs), inverse), torch.cat(ys)[inverse]


SHARPNESS_MEASURES: dict[str, Callable[..., SharpnessResult]] = {
    "worst_case": worst_case_sharpness,
    "average": average_sharpness,
    "adaptive": adaptive_sharpness,
    "filter_normalized": filter_normalized_sharpness,
    "m_sharpness": m_sharpness,
}


def sharpness(model: nn.Module, data: Any, measure: str, **kwargs: Any) -> SharpnessResult:
    """The sharpness measure named ``measure`` (a key of :data:`SHARPNESS_MEASURES`).

    Every measure takes ``task=`` (:class:`~basinscope.engine.task.Task`: how the model is
    run and which loss; recorded as ``semantics["task"]``) or ``loss_fn=``, and ``dtype``
    (float32 or float64), ``device``, ``batch_size``.
    """
    if measure not in SHARPNESS_MEASURES:
        raise BasinscopeError(
            f"unknown sharpness measure {measure!r}: expected one of {', '.join(SHARPNESS_MEASURES)}"
        )
    fn = SHARPNESS_MEASURES[measure]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("model", "data")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise BasinscopeError(
            f"sharpness measure {measure!r} takes no option {', '.join(unknown)}; "
            f"its options are {', '.join(accepted)}"
        )
    return fn(model, data, **kwargs)
