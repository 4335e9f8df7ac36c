"""Mode-connecting curves: Bezier curves and polychains trained to stay in low loss.

Two independently trained networks :math:`\\theta_A, \\theta_B` are usually separated by a
loss barrier on the straight line between them, yet they are joined by simple curves of
low loss (Garipov et al. 2018, "Loss surfaces, mode connectivity, and fast ensembling of
DNNs"; Draxler et al. 2018, "Essentially no barriers in neural network energy
landscape"). A curve here is a combination of points :math:`P_0 = \\theta_A, P_1, \\dots,
P_{n-1}, P_n = \\theta_B` whose interior points are trained:

``bezier``     order :math:`n` (``n - 1`` interior control points), Bernstein weights

               .. math::  \\phi(t) = \\sum_{i=0}^{n} \\binom{n}{i} t^i (1 - t)^{n-i} P_i,

``polychain``  :math:`k` bends joined by segments, knots :math:`\\tau_j = j / (k + 1)`;
               on :math:`t \\in [\\tau_j, \\tau_{j+1}]`

               .. math::  \\phi(t) = (k + 1)\\left[(\\tau_{j+1} - t) P_j + (t - \\tau_j) P_{j+1}\\right].

:func:`train_curve` minimizes Garipov et al.'s objective (their eq. 2, uniform in
:math:`t`, not in arc length) over the interior points only, with the endpoints fixed:

.. math::  \\ell(P_1, \\dots, P_{n-1}) = \\mathbb{E}_{t \\sim U(0, 1)}\\, L(\\phi(t)),

drawing one :math:`t` per minibatch and calling any ``nn.Module`` through
:func:`torch.func.functional_call` at :math:`\\phi(t)` (nothing in the model is rewritten).
:func:`evaluate_curve` then hands the engine the curve as a :class:`PointBasis` (origin
:math:`\\theta_A`, basis :math:`P_i - \\theta_A`, coefficients the weights of
:math:`P_1, \\dots, P_n`, which is exact because the weights sum to one) and evaluates it
next to the straight line, BatchNorm statistics re-estimated at every :math:`t` by default.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from basinscope.analyses.interpolation import interpolate
from basinscope.analyses.landscape import DTYPES, as_splits
from basinscope.engine import (
    EvalJob,
    PointBasis,
    as_batches,
    evaluate_points,
    has_batchnorm,
    warn_stored_bn,
)
from basinscope.engine.fit import check_model_data
from basinscope.engine.metrics import Metric, resolve_metrics
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import ParamDict, check_same_keys, get_buffers, get_params, norm
from basinscope.jsonable import jsonable
from basinscope.training._data import BatchStream, as_tensors
from basinscope.training.schedules import check_schedule, lr_at
from basinscope.training.trainer import optimizer_step

__all__ = [
    "CURVE_INITS",
    "CURVE_KINDS",
    "T_SAMPLINGS",
    "Curve",
    "CurveEvaluation",
    "CurveResult",
    "evaluate_curve",
    "init_curve",
    "load_curve",
    "save_curve",
    "train_curve",
]

CURVE_KINDS = ("bezier", "polychain")
CURVE_INITS = ("linear", "noise")
T_SAMPLINGS = ("uniform",)
OPTIMIZERS = ("sgd", "adam")
BN_MODES = ("train", "eval")
LossFn = Callable[[Tensor, Tensor], Tensor]
CurveCallback = Callable[[int, dict[str, Any]], None]
_ARCH_HINT = (
    "The two endpoints must come from the same architecture (same keys as "
    "model.named_parameters(), same shapes): build both models with the same constructor."
)


# -- the curve ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Curve:
    """A parametric curve :math:`\\phi(t), t \\in [0, 1]` in parameter space (see the module docstring).

    ``endpoints`` are :math:`(\\theta_A, \\theta_B)`, ``control_points`` the interior points
    in order (the trainable ones): ``order - 1`` of them for a Bezier curve of order
    ``order``, one per bend for a polychain. All are parameter dicts with the same keys.
    Curves compare by identity (tensors have no single truth value).
    """

    kind: str
    endpoints: tuple[ParamDict, ParamDict]
    control_points: tuple[ParamDict, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CURVE_KINDS:
            raise BasinscopeError(
                f"unknown curve kind {self.kind!r}: expected one of {', '.join(CURVE_KINDS)}"
            )
        if len(self.endpoints) != 2:
            raise BasinscopeError(
                f"a curve needs two endpoints (theta_A, theta_B), got {len(self.endpoints)}"
            )
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        object.__setattr__(self, "control_points", tuple(self.control_points))
        a, b = self.endpoints
        check_same_keys(a, b, "the endpoints' parameters", _ARCH_HINT)
        for i, p in enumerate(self.control_points):
            check_same_keys(a, p, f"control point {i + 1} and theta_A")
        if self.kind == "polychain" and not self.control_points:
            raise BasinscopeError("a polychain needs at least one bend (control point)")

    @property
    def points(self) -> list[ParamDict]:
        """All points :math:`[\\theta_A, P_1, \\dots, P_{n-1}, \\theta_B]`."""
        return [self.endpoints[0], *self.control_points, self.endpoints[1]]

    @property
    def order(self) -> int:
        """Number of points minus one (the Bezier order; ``bends + 1`` for a polychain)."""
        return len(self.control_points) + 1

    def weights(self, t) -> np.ndarray:
        """Coefficients over :attr:`points` at ``t``: shape ``(n + 1,)`` for a scalar, ``(T, n + 1)`` for an array."""
        ts = _check_ts(t)
        n = self.order
        if self.kind == "bezier":
            i = np.arange(n + 1)
            binom = np.array([math.comb(n, k) for k in i], dtype=np.float64)
            w = binom * ts[:, None] ** i * (1.0 - ts[:, None]) ** (n - i)
        else:
            s = ts * n  # n = bends + 1 segments
            j = np.minimum(np.floor(s).astype(int), n - 1)
            frac = s - j
            w = np.zeros((len(ts), n + 1))
            rows = np.arange(len(ts))
            w[rows, j] = 1.0 - frac
            w[rows, j + 1] += frac
        return w[0] if np.ndim(t) == 0 else w

    def point(self, t: float) -> ParamDict:
        """:math:`\\phi(t) = \\sum_i w_i(t) P_i` (points with weight zero are skipped, so :math:`\\phi(0)` is :math:`\\theta_A` bit for bit)."""
        w = self.weights(float(t))
        pts = [(c, p) for c, p in zip(w, self.points) if c != 0]
        return {k: sum(float(c) * p[k] for c, p in pts) for k in self.endpoints[0]}

    def coeffs(self, ts) -> np.ndarray:
        """Engine coefficients at ``ts``: the weights of all points but :math:`\\theta_A`, shape ``(T, n)``."""
        return np.atleast_2d(self.weights(np.atleast_1d(np.asarray(ts, dtype=np.float64))))[:, 1:]

    def as_point_basis(self, buffers: Mapping[str, Tensor] | None = None) -> PointBasis:
        """Origin :math:`\\theta_A`, basis :math:`[P_1 - \\theta_A, \\dots, \\theta_B - \\theta_A]`.

        Since the weights sum to one, :math:`\\theta_A + \\sum_{i \\ge 1} w_i(t)(P_i - \\theta_A)
        = \\phi(t)`; use with :meth:`coeffs`. ``buffers`` stay fixed along the curve (the
        interior points have no statistics of their own: re-estimate them with
        ``bn_policy="recompute"``).
        """
        a = {k: v.detach() for k, v in self.endpoints[0].items()}
        basis = tuple({k: p[k].detach() - a[k] for k in a} for p in self.points[1:])
        bufs = {k: v.detach() for k, v in (buffers or {}).items()}
        return PointBasis(origin=a, basis=basis, buffers=bufs)

    def length(self, num: int = 1001) -> float:
        """Arc length by a fine piecewise-linear approximation (float64).

        .. math::  \\mathrm{len}(\\phi) \\approx \\sum_{m} \\lVert \\phi(t_{m+1}) - \\phi(t_m) \\rVert_2

        over ``num`` equally spaced :math:`t_m` (plus the knots of a polychain, whose length
        is then exact); the norm is that of all parameters flattened to one vector.
        """
        if num < 2:
            raise BasinscopeError(f"length needs num >= 2 points, got {num}")
        ts = np.linspace(0.0, 1.0, num)
        if self.kind == "polychain":
            ts = np.union1d(ts, np.arange(self.order + 1) / self.order)
        dw = torch.from_numpy(np.diff(self.weights(ts), axis=0))  # (T - 1, n + 1)
        sq = torch.zeros(dw.shape[0], dtype=torch.float64)
        for k in self.endpoints[0]:
            pk = torch.stack([p[k].detach().reshape(-1).double().cpu() for p in self.points])
            rows = max(1, (1 << 22) // max(1, pk.shape[1]))
            for s in range(0, dw.shape[0], rows):
                sq[s : s + rows] += ((dw[s : s + rows] @ pk) ** 2).sum(dim=1)
        return float(sq.sqrt().sum())

    def to_tensors(self) -> dict[str, Tensor]:
        """``{"p<i>/<param name>": tensor}`` for all points (``p0`` is :math:`\\theta_A`, the last :math:`\\theta_B`)."""
        return {
            f"p{i}/{k}": v.detach().cpu().contiguous().clone()
            for i, p in enumerate(self.points)
            for k, v in p.items()
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], kind: str) -> Curve:
        """Inverse of :meth:`to_tensors` (the kind is not stored in the tensors)."""
        pts: dict[int, ParamDict] = {}
        for key, v in tensors.items():
            head, _, name = key.partition("/")
            if not (head[:1] == "p" and head[1:].isdigit() and name):
                raise BasinscopeError(
                    f"tensor key {key!r} is not of the form 'p<index>/<parameter name>': "
                    "pass the dict written by Curve.to_tensors()"
                )
            pts.setdefault(int(head[1:]), {})[name] = v
        if sorted(pts) != list(range(len(pts))) or len(pts) < 2:
            raise BasinscopeError(
                f"a curve needs points p0..pN (N >= 1) without gaps, got indices {sorted(pts)}"
            )
        points = [pts[i] for i in range(len(pts))]
        return cls(kind, (points[0], points[-1]), tuple(points[1:-1]))


def save_curve(path: str | Path, curve: Curve, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``curve.to_tensors()`` to a safetensors file, with the kind in the metadata."""
    from safetensors.torch import save

    from basinscope.store.atomic import atomic_write_bytes

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"format": "basinscope.curve", "kind": curve.kind})
    return atomic_write_bytes(path, save(curve.to_tensors(), metadata=meta), "curve")


def load_curve(path: str | Path) -> Curve:
    """Read a curve written by :func:`save_curve`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise BasinscopeError(f"cannot read curve file {str(path)!r}: {e}") from None
    if meta.get("format") != "basinscope.curve":
        raise BasinscopeError(
            f"{str(path)!r} is not a basinscope curve file (metadata format "
            f"{meta.get('format')!r}); write it with basinscope.analyses.save_curve()"
        )
    return Curve.from_tensors(tensors, meta["kind"])


def _check_ts(t) -> np.ndarray:
    ts = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if ts.ndim != 1 or len(ts) == 0:
        raise BasinscopeError(f"t must be a number or a non-empty 1-D array, got shape {ts.shape}")
    bad = ts[~((ts >= 0) & (ts <= 1))]
    if len(bad):
        raise BasinscopeError(
            f"t must lie in [0, 1] (0 is theta_A, 1 is theta_B), got {bad[:5].tolist()}: "
            "a curve is not defined outside its endpoints; use interpolate() to extrapolate the line"
        )
    return ts


def _check_degree(kind: str, order: int, bends: int) -> int:
    """The number of interior points of the requested curve."""
    if kind not in CURVE_KINDS:
        raise BasinscopeError(
            f"unknown curve kind {kind!r}: expected one of {', '.join(CURVE_KINDS)}"
        )
    if kind == "bezier":
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise BasinscopeError(
                f"order must be an integer >= 1, got {order!r} (1 is the straight line, 2 the "
                "quadratic Bezier curve of Garipov et al. 2018)"
            )
        return order - 1
    if isinstance(bends, bool) or not isinstance(bends, int) or bends < 1:
        raise BasinscopeError(
            f"bends must be an integer >= 1, got {bends!r} (a polychain with one bend is "
            "two segments theta_A -> P_1 -> theta_B)"
        )
    return bends


def _params(m: nn.Module | Mapping[str, Tensor]) -> ParamDict:
    if isinstance(m, nn.Module):
        return get_params(m)
    return {k: v.detach().clone() for k, v in m.items()}


def init_curve(
    model_a: nn.Module | Mapping[str, Tensor],
    model_b: nn.Module | Mapping[str, Tensor],
    kind: str = "bezier",
    *,
    order: int = 2,
    bends: int = 1,
    init: str = "linear",
    noise_scale: float = 0.1,
    seed: int = 0,
) -> Curve:
    """A curve between two models (or parameter dicts) whose interior points lie on the segment.

    ``init="linear"`` puts the :math:`i`-th of :math:`n - 1` interior points at
    :math:`\\theta_A + \\frac{i}{n}(\\theta_B - \\theta_A)`, so the initial curve *is* the
    straight line (Bernstein polynomials reproduce linear functions; a polychain's bends sit
    at their knots). ``init="noise"`` adds Gaussian noise with, per parameter tensor
    :math:`k`, standard deviation ``noise_scale`` times the RMS of
    :math:`\\theta_{B,k} - \\theta_{A,k}` (seeded by ``seed``).
    """
    n_inner = _check_degree(kind, order, bends)
    if init not in CURVE_INITS:
        raise BasinscopeError(f"unknown init {init!r}: expected one of {', '.join(CURVE_INITS)}")
    a, b = _params(model_a), _params(model_b)
    check_same_keys(a, b, "the endpoints' parameters", _ARCH_HINT)
    n = n_inner + 1
    gen = torch.Generator().manual_seed(int(seed))
    control = []
    for i in range(1, n):
        p = {k: a[k] + (i / n) * (b[k] - a[k]) for k in a}
        if init == "noise":
            for k, v in p.items():
                d = (b[k] - a[k]).double()
                rms = float(d.pow(2).mean().sqrt()) if d.numel() else 0.0
                eps = torch.randn(v.shape, generator=gen, dtype=torch.float64)
                p[k] = v + (noise_scale * rms * eps).to(dtype=v.dtype, device=v.device)
        control.append(p)
    return Curve(kind, (a, b), tuple(control))


# -- training ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveResult:
    """What :func:`train_curve` returns: the trained curve, per-step ``history``
    (``"step"``, ``"t"``, ``"loss"`` of that minibatch at :math:`\\phi(t)`, ``"lr"``) and
    the ``config`` that produced it."""

    curve: Curve
    history: dict[str, list[float]]
    config: dict[str, Any]


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
) -> CurveResult:
    """Train the interior points of a curve from ``model_a`` to ``model_b`` (Garipov et al. 2018).

    Minimizes :math:`\\mathbb{E}_{t \\sim U(0,1)} L(\\phi(t))` by stochastic gradient: each
    step draws one :math:`t` (from a generator seeded by ``seed``) and one minibatch (order
    fixed by ``data_seed``, as :func:`~basinscope.training.train`), and differentiates the
    loss of ``functional_call(model, φ(t) + buffers, x)`` with respect to the interior
    points. The endpoints are never updated: they stay bit-identical to the models'
    parameters. Weight decay (an L2 penalty) acts on the interior points only.

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
    do not modify). Given the same inputs and seeds the result is bit-identical.
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
    classification = loss_fn is None
    loss_fn = nn.functional.cross_entropy if loss_fn is None else loss_fn
    start = init_curve(model_a, model_b, kind, order=order, bends=bends, init=init, seed=seed)
    a, b = start.endpoints
    home = next(iter(a.values())).device if a else torch.device("cpu")
    dev = torch.device(device) if device is not None else home

    net = copy.deepcopy(model_a).to(dev)
    for p in net.parameters():
        p.requires_grad_(False)
    net.train()
    if bn_mode == "eval":
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    fixed = [{k: v.to(dev) for k, v in a.items()}, {k: v.to(dev) for k, v in b.items()}]
    control = [
        {k: v.detach().to(dev).clone().requires_grad_(True) for k, v in p.items()}
        for p in start.control_points
    ]
    flat = [v for p in control for v in p.values()]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            flat, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.Adam(flat, lr=lr, weight_decay=weight_decay)

    dtype = next((v.dtype for v in a.values() if v.is_floating_point()), None)
    x, y = as_tensors(data, "data")
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    check_model_data(net, (x, y), what="the training data", classification=classification)
    stream = BatchStream(x.to(dev), y.to(dev), batch_size, data_seed)
    t_gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 4_242) % (2**63 - 1))
    history: dict[str, list[float]] = {"step": [], "t": [], "loss": [], "lr": []}

    def live_curve() -> Curve:
        detached = [{k: v.detach() for k, v in p.items()} for p in control]
        return Curve(kind, (fixed[0], fixed[1]), tuple(detached))

    fork_devices = [] if dev.type == "cpu" else [dev.index if dev.index is not None else 0]
    fork_type = "cuda" if dev.type == "cpu" else dev.type
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=fork_devices, device_type=fork_type):
        torch.manual_seed((int(data_seed) * 1_000_003 + 99_991) % (2**63 - 1))
        for step in tqdm(range(1, steps + 1), disable=not progress, desc="curve"):
            step_lr = lr_at(step - 1, steps, lr, schedule)
            for group in opt.param_groups:
                group["lr"] = step_lr
            t = float(torch.rand((), generator=t_gen, dtype=torch.float64))
            w = start.weights(t)
            pts = [fixed[0], *control, fixed[1]]
            used = [(float(c), p) for c, p in zip(w, pts) if c != 0]
            phi = {k: sum(c * p[k] for c, p in used) for k in fixed[0]}
            xb, yb = next(stream)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(functional_call(net, (phi, buffers), (xb,)), yb)
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise BasinscopeError(
                    f"the curve's training loss became {value} at step {step} (t={t:.3f}, "
                    f"lr={step_lr:g}); lower the learning rate"
                )
            optimizer_step(opt, step, step_lr, weight_decay)
            history["step"].append(float(step))
            history["t"].append(t)
            history["loss"].append(value)
            history["lr"].append(step_lr)
            if callbacks:
                info = {
                    "loss": value,
                    "t": t,
                    "lr": step_lr,
                    "epoch": stream.epochs_done,
                    "curve": live_curve(),
                }
                for cb in callbacks:
                    cb(step, info)
    opt.zero_grad(set_to_none=True)
    trained = tuple({k: v.detach().to(home).clone() for k, v in p.items()} for p in control)
    curve = Curve(kind, (a, b), trained)
    config = {
        "kind": kind,
        **({"order": order} if kind == "bezier" else {"bends": bends}),
        "init": init,
        "steps": steps,
        "batch_size": stream.batch_size,
        "lr": lr,
        "momentum": momentum if optimizer == "sgd" else None,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "schedule": schedule,
        "seed": seed,
        "data_seed": data_seed,
        "t_sampling": t_sampling,
        "bn_mode": bn_mode,
        "objective": "E_{t~U(0,1)} L(phi(t)), one t per minibatch (Garipov et al. 2018)",
        "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return CurveResult(curve=curve, history=history, config=config)


# -- evaluation -------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveEvaluation:
    """Metrics along a curve and along the straight line between the same endpoints.

    ``curve`` has coordinate ``t`` and one variable ``<split>_<metric>`` per split and
    metric; ``line`` (``None`` without ``include_line``) is the
    :func:`~basinscope.analyses.interpolate` dataset at ``alpha = t``. ``length`` is the
    curve's arc length and ``distance`` :math:`\\lVert\\theta_B - \\theta_A\\rVert_2` (the
    line's length). ``max_curve``/``max_line`` hold the maximum over ``t`` of every
    variable (the quantity Garipov et al. report for loss and error).
    """

    curve: xr.Dataset
    line: xr.Dataset | None
    length: float
    distance: float
    max_curve: dict[str, float]
    max_line: dict[str, float]
    settings: dict[str, Any]
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def length_ratio(self) -> float:
        return self.length / self.distance if self.distance > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: numbers, both curves as lists, settings (non-finite as strings)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("curve", "line")}
        out["length_ratio"] = self.length_ratio
        out["curve"] = {"t": self.curve["t"].values, **_vars(self.curve)}
        out["line"] = (
            {"alpha": self.line["alpha"].values, **_vars(self.line)}
            if self.line is not None
            else None
        )
        return jsonable(out)


def _vars(ds: xr.Dataset) -> dict[str, np.ndarray]:
    return {str(v): ds[v].values for v in ds.data_vars}


def evaluate_curve(
    model: nn.Module,
    curve: Curve,
    data: Any,
    *,
    ts=None,
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
) -> CurveEvaluation:
    """Metrics at :math:`\\phi(t)` for ``ts`` (default 21 points in [0, 1]) and on the line.

    ``model`` gives the architecture (its parameters are not used) and, unless ``buffers``
    is given, the buffers. ``bn_policy`` defaults to ``"recompute"`` for a model with
    BatchNorm (statistics re-estimated at every :math:`t` from ``bn_batches`` batches of
    ``bn_data``, by default the ``"train"`` split of ``data``) and ``"stored"`` otherwise;
    the line uses the same policy and data, at ``alpha = t``. The other keyword arguments
    are the engine's (see :func:`~basinscope.analyses.compute_landscape`).
    """
    ts = _check_ts(np.linspace(0.0, 1.0, 21) if ts is None else ts)
    if dtype not in DTYPES:
        raise BasinscopeError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
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
    splits = {
        name: as_batches(d, batch_size=batch_size, device="cpu") for name, d in raw_splits.items()
    }
    bn_list = as_batches(bn_data, batch_size=128, device="cpu") if bn_data is not None else None
    metric_objs = resolve_metrics(metrics)
    job = EvalJob(
        model=model,
        basis=curve.as_point_basis(bufs),
        datasets=splits,
        metrics=tuple(metric_objs),
        batch_size=batch_size,
        dtype=DTYPES[dtype],
        device=device,
        bn_policy=bn_policy,
        bn_data=bn_list,
        bn_batches=bn_batches,
        strategy=strategy,
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
            data,
            alphas=ts,
            bn_policy=bn_policy,
            bn_data=bn_data if bn_policy == "recompute" else None,
            bn_batches=bn_batches,
            metrics=metrics,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            chunk_size=chunk_size,
            strategy=strategy,
            progress=progress,
        ).dataset
        evaluation["line_strategy"] = line.attrs.get("strategy")
    return CurveEvaluation(
        curve=ds,
        line=line,
        length=length,
        distance=distance,
        max_curve={str(v): float(ds[v].max()) for v in ds.data_vars},
        max_line={str(v): float(line[v].max()) for v in line.data_vars} if line is not None else {},
        settings=settings,
        evaluation=evaluation,
    )
