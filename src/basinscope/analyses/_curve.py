"""A curve in parameter space: Bezier curves and polychains between two solutions.

The points :math:`P_0 = \\theta_A, P_1, \\dots, P_{n-1}, P_n = \\theta_B` define

``bezier``     order :math:`n` (``n - 1`` interior control points), Bernstein weights

               .. math::  \\phi(t) = \\sum_{i=0}^{n} \\binom{n}{i} t^i (1 - t)^{n-i} P_i,

``polychain``  :math:`k` bends joined by segments, knots :math:`\\tau_j = j / (k + 1)`;
               on :math:`t \\in [\\tau_j, \\tau_{j+1}]`

               .. math::  \\phi(t) = (k + 1)\\left[(\\tau_{j+1} - t) P_j + (t - \\tau_j) P_{j+1}\\right].

:class:`Curve` holds the points (parameter dicts) and computes the weights, points, arc
length and the engine's view of the curve; :func:`init_curve` starts one on the straight
line, :func:`save_curve`/:func:`load_curve` store it. Training and evaluation are in
:mod:`basinscope.analyses.curves`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from basinscope.engine import PointBasis
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import ParamDict, check_same_keys, get_params

__all__ = [
    "CURVE_INITS",
    "CURVE_KINDS",
    "Curve",
    "curve_weights",
    "init_curve",
    "load_curve",
    "save_curve",
]

CURVE_KINDS = ("bezier", "polychain")
CURVE_INITS = ("linear", "noise")
_ARCH_HINT = (
    "The two endpoints must come from the same architecture (same keys as "
    "model.named_parameters(), same shapes): build both models with the same constructor."
)


def curve_weights(kind: str, order: int, t: Any) -> np.ndarray:
    """The weights of the ``order + 1`` points of a ``kind`` curve at ``t``: shape
    ``(order + 1,)`` for a scalar, ``(T, order + 1)`` for an array (see the module docstring)."""
    ts = _check_ts(t)
    n = order
    if kind == "bezier":
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
        return curve_weights(self.kind, self.order, t)

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
