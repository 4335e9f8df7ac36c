"""Power laws of scale and the memory split between width and ensemble size.

Lobacheva, Chirkova, Kodryan & Vetrov (2020), *On power laws in deep ensembles* (the Vetrov
talk): after temperature calibration, the test NLL of an ensemble of :math:`n` networks
follows :math:`\\mathrm{NLL}(n) = c + b\\,n^{-a}`, and so does the NLL of one network in its
width :math:`w`. :func:`fit_power_law` fits

.. math::  y = c + b\\,x^{-a}

by robust non-linear least squares (:func:`scipy.optimize.least_squares` with the
``soft_l1`` loss by default, whose inlier scale ``f_scale`` is the median absolute
deviation of a plain least-squares fit's residuals unless given), with bootstrap
percentile intervals for :math:`(a, b, c)`: over resamples of the points (``pairs``), or,
when the caller has repeated measurements of every point (``y_samples``: e.g. the NLL of
ensembles built from different subsets of the members), over one draw per point.

For a memory budget :math:`B` (parameters), every ensemble of :math:`n` networks of width
:math:`w` with :math:`n \\cdot \\mathrm{params}(w) \\le B` is a candidate split.
:func:`memory_split` finds, per budget, the measured best split, the split the per-width
laws :math:`\\mathrm{NLL}_w(n)` predict (over the same measured candidates, and over every
:math:`n` the budget allows), and fits a power law to the lower envelope of the measured
NLL in the budget.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from basinscope.errors import BasinscopeError
from basinscope.result import Result, fmt

__all__ = [
    "LOSSES",
    "POWER_LAW_DEFINITION",
    "MemorySplit",
    "PowerLawFit",
    "fit_power_law",
    "memory_split",
]

POWER_LAW_DEFINITION = "y = c + b * x^(-a)"
LOSSES = ("soft_l1", "huber", "cauchy", "arctan", "linear")
BOOTSTRAPS = ("pairs", "samples")
A_MAX = 20.0  # exponents beyond this are flat to double precision on any useful x range


@dataclass(frozen=True)
class PowerLawFit(Result, kind="power_law"):
    """A fitted :math:`y = c + b x^{-a}`: the estimates, their bootstrap percentile
    intervals ``ci[name] = [low, high]`` at ``level`` (empty without a bootstrap), the
    points, the robust ``loss`` and its ``f_scale``, how the bootstrap resampled, and its
    ``draws`` (one row (a, b, c) per successful resample; :meth:`band`)."""

    a: float
    b: float
    c: float
    x: np.ndarray
    y: np.ndarray
    ci: dict[str, list[float]] = field(default_factory=dict)
    level: float = 0.95
    bootstrap: int = 0
    resample: str = ""
    failed_bootstraps: int = 0
    loss: str = "soft_l1"
    f_scale: float = 1.0
    rmse: float = math.nan
    draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    seed: int = 0
    definition: str = POWER_LAW_DEFINITION

    def band(self, x: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The pointwise bootstrap band of :meth:`predict` at ``x`` (percentiles of the
        draws' curves at ``level``, default the fit's); NaN without draws."""
        x = np.asarray(x, dtype=np.float64)
        if len(self.draws) == 0:
            nan = np.full(x.shape, np.nan)
            return nan, nan
        a, b, c = self.draws[:, :1], self.draws[:, 1:2], self.draws[:, 2:]
        curves = c + b * x.reshape(1, -1) ** (-a)
        lv = self.level if level is None else level
        lo, hi = np.percentile(curves, [(1 - lv) / 2 * 100, (1 + lv) / 2 * 100], axis=0)
        return lo.reshape(x.shape), hi.reshape(x.shape)

    def predict(self, x: Any) -> np.ndarray:
        """:math:`c + b x^{-a}` at ``x``."""
        return self.c + self.b * np.asarray(x, dtype=np.float64) ** (-self.a)

    def summary(self) -> list[str]:
        """The law with each parameter's interval."""

        def one(name: str) -> str:
            v = getattr(self, name)
            if name in self.ci:
                lo, hi = self.ci[name]
                return f"{name} = {fmt(v)} [{fmt(lo)}, {fmt(hi)}]"
            return f"{name} = {fmt(v)}"

        level = (
            f" ({self.level:.0%} bootstrap intervals, {self.bootstrap} resamples)"
            if self.ci
            else ""
        )
        return [
            f"{self.definition}: " + ", ".join(one(n) for n in ("a", "b", "c")) + level,
            f"  {len(self.x)} points, rmse {fmt(self.rmse)}, loss {self.loss}",
        ]


def _residual(p: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a, b, c = p
    return c + b * x ** (-a) - y


def _initial(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A start from the log-log line through the points shifted by a guess of ``c``."""
    decreasing = np.polyfit(np.log(x), y, 1)[0] <= 0
    span = float(y.max() - y.min()) or 1.0
    c0 = float(y.min() - 0.1 * span) if decreasing else float(y.max() + 0.1 * span)
    sign = 1.0 if decreasing else -1.0
    slope, icpt = np.polyfit(np.log(x), np.log(np.abs(y - c0)), 1)
    a0 = float(np.clip(-slope, 1e-3, A_MAX - 1))
    return np.array([a0, sign * math.exp(icpt), c0])


def _solve(
    x: np.ndarray, y: np.ndarray, start: np.ndarray, loss: str, f_scale: float
) -> np.ndarray:
    from scipy.optimize import least_squares

    lo = np.array([0.0, -np.inf, -np.inf])
    hi = np.array([A_MAX, np.inf, np.inf])
    start = np.clip(start, lo + 1e-9, hi - 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = least_squares(
            _residual,
            start,
            args=(x, y),
            loss=loss,
            f_scale=f_scale,
            bounds=(lo, hi),
            x_scale="jac",
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
            max_nfev=2000,
        )
    return res.x


def _check_points(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise BasinscopeError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(np.unique(x)) < 3:
        raise BasinscopeError(
            f"a power law c + b x^-a has 3 parameters: it needs at least 3 distinct x, got "
            f"{len(np.unique(x))}; measure more widths or ensemble sizes"
        )
    if (x <= 0).any() or not np.isfinite(x).all():
        raise BasinscopeError(f"x must be positive and finite, got {x.tolist()}")
    if not np.isfinite(y).all():
        raise BasinscopeError(f"y must be finite, got {y.tolist()}")
    return x, y


def fit_power_law(
    x: Any,
    y: Any,
    *,
    y_samples: Any = None,
    loss: str = "soft_l1",
    f_scale: float | None = None,
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    joint: bool = False,
) -> PowerLawFit:
    """Fit :math:`y = c + b x^{-a}` (see the module docstring).

    ``y_samples`` (shape ``(len(x), R)``): repeated measurements of every point; the
    bootstrap then draws one of them per point (``resample="samples"``) instead of
    resampling the points (``"pairs"``, which needs at least 4 points). With ``joint``,
    a draw takes one whole column (``resample="columns"``): column ``r`` is one joint
    replicate of every point (e.g. the ensembles of every size built from the ``r``-th
    resample of the members), so correlations between the points are kept. ``f_scale``
    (the robust loss's inlier scale) defaults to the residuals' MAD, floored at 10⁻³ of
    the spread of ``y`` so that an exact fit does not make every residual an outlier. ``bootstrap=0``
    skips the intervals. Bootstrap fits that fail are counted in ``failed_bootstraps``.
    """
    if loss not in LOSSES:
        raise BasinscopeError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")
    if not 0 < level < 1:
        raise BasinscopeError(f"level must be in (0, 1), got {level}")
    if bootstrap < 0:
        raise BasinscopeError(f"bootstrap must be at least 0, got {bootstrap}")
    x, y = _check_points(x, y)
    samples = None
    if y_samples is not None:
        samples = np.asarray(y_samples, dtype=np.float64)
        if samples.ndim != 2 or samples.shape[0] != len(x) or samples.shape[1] < 1:
            raise BasinscopeError(
                f"y_samples must have shape (len(x), R) = ({len(x)}, R), got {samples.shape}"
            )
    start = _initial(x, y)
    plain = _solve(x, y, start, "linear", 1.0)
    if f_scale is None:
        r = _residual(plain, x, y)
        mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        spread = float(y.max() - y.min()) or max(1.0, float(np.abs(y).max()))
        f_scale = max(mad, 1e-3 * spread)
    p = plain if loss == "linear" else _solve(x, y, plain, loss, f_scale)
    rmse = float(np.sqrt(np.mean(_residual(p, x, y) ** 2)))
    ci: dict[str, list[float]] = {}
    failed, resample = 0, ""
    d = np.zeros((0, 3))
    if bootstrap:
        resample = "pairs" if samples is None else ("columns" if joint else "samples")
        if resample == "pairs" and len(x) < 4:
            raise BasinscopeError(
                f"bootstrapping the points of a 3-parameter law needs at least 4 points, got "
                f"{len(x)}: pass y_samples (repeated measurements) or bootstrap=0"
            )
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            if resample == "columns":
                assert samples is not None
                yb, xb = samples[:, rng.integers(0, samples.shape[1])], x
            elif resample == "samples":
                assert samples is not None
                yb, xb = samples[np.arange(len(x)), rng.integers(0, samples.shape[1], len(x))], x
            else:
                idx = rng.integers(0, len(x), len(x))
                xb, yb = x[idx], y[idx]
                if len(np.unique(xb)) < 3:
                    failed += 1
                    continue
            try:
                q = _solve(xb, yb, p, loss, f_scale)
            except (ValueError, np.linalg.LinAlgError):
                failed += 1
                continue
            if np.isfinite(q).all():
                draws.append(q)
            else:
                failed += 1
        if draws:
            d = np.array(draws)
            lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
            ci = {
                n: [float(np.percentile(d[:, i], lo)), float(np.percentile(d[:, i], hi))]
                for i, n in enumerate(("a", "b", "c"))
            }
    return PowerLawFit(
        a=float(p[0]),
        b=float(p[1]),
        c=float(p[2]),
        x=x,
        y=y,
        ci=ci,
        level=level,
        bootstrap=bootstrap,
        resample=resample,
        failed_bootstraps=failed,
        loss=loss,
        f_scale=float(f_scale),
        rmse=rmse,
        draws=d,
        seed=seed,
    )


@dataclass(frozen=True)
class MemorySplit(Result, kind="memory_split"):
    """The split of each memory budget between width and ensemble size.

    ``table`` (dim ``budget``): ``measured_width``/``measured_n``/``measured`` (the measured
    best feasible split and its NLL), ``predicted_width``/``predicted_n``/``predicted`` (the
    per-width laws' best among the same measured candidates, and its predicted NLL),
    ``measured_at_predicted`` (the measured NLL of that split), ``agree``, and
    ``extrapolated_width``/``extrapolated_n``/``extrapolated`` (the laws' best over every n
    the budget allows, measured or not). ``laws`` are the per-width fits NLL_w(n) (keys:
    the widths as text), ``envelope`` the power law of the measured lower envelope in the
    budget and ``nll`` the measured grid (width, n) it was computed from."""

    table: xr.Dataset
    params: dict[str, int]
    laws: dict[str, PowerLawFit]
    envelope: PowerLawFit | None = None
    nll: xr.DataArray | None = None
    definition: str = (
        "feasible: n * params(width) <= budget; best = argmin NLL; predicted by NLL_w(n) = "
        "c_w + b_w n^-a_w fitted per width"
    )

    def summary(self) -> list[str]:
        """Per budget: the measured and the predicted best split."""
        t = self.table
        lines = [
            f"{'budget':>10} {'measured (w, n)':>16} {'NLL':>8} {'predicted (w, n)':>17} {'NLL':>8}"
        ]
        for i, b in enumerate(t.budget.values):
            row = t.isel(budget=i)
            lines.append(
                f"{int(b):>10} {f'({row.measured_width.item()}, {int(row.measured_n)})':>16} "
                f"{fmt(float(row.measured)):>8} "
                f"{f'({row.predicted_width.item()}, {int(row.predicted_n)})':>17} "
                f"{fmt(float(row.measured_at_predicted)):>8}"
            )
        if self.envelope is not None:
            lines.append("envelope: " + self.envelope.summary()[0])
        return lines


def memory_split(
    nll: xr.DataArray,
    params: Mapping[Any, int],
    budgets: Sequence[float],
    *,
    laws: Mapping[Any, PowerLawFit] | None = None,
    loss: str = "soft_l1",
    bootstrap: int = 0,
    seed: int = 0,
) -> MemorySplit:
    """The best (width, n) per budget (see the module docstring and :class:`MemorySplit`).

    ``nll`` has dims ``("width", "n")`` (NaN where not measured); ``params`` the parameter
    count of one network of each width; ``laws`` the per-width fits of NLL(n) (fitted here
    with ``loss`` when not given; a width with fewer than 3 measured n gets no law and is
    predicted from its measurements only)."""
    if set(nll.dims) != {"width", "n"}:
        raise BasinscopeError(f"nll must have dims ('width', 'n'), got {nll.dims}")
    nll = nll.transpose("width", "n")
    widths = [w.item() for w in nll.width]
    missing = [w for w in widths if w not in params]
    if missing:
        raise BasinscopeError(
            f"params lacks the widths {missing}: give the parameter count of each"
        )
    ns = np.asarray(nll.n.values, dtype=np.int64)
    values = np.asarray(nll.values, dtype=np.float64)
    fitted: dict[Any, PowerLawFit] = dict(laws or {})
    for i, w in enumerate(widths):
        ok = np.isfinite(values[i])
        if w not in fitted and ok.sum() >= 3:
            fitted[w] = fit_power_law(ns[ok], values[i, ok], loss=loss, bootstrap=0, seed=seed)
    budgets = sorted(float(b) for b in budgets)
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "measured_width",
            "measured_n",
            "measured",
            "predicted_width",
            "predicted_n",
            "predicted",
            "measured_at_predicted",
            "agree",
            "extrapolated_width",
            "extrapolated_n",
            "extrapolated",
        )
    }
    envelope_x, envelope_y = [], []
    for budget in budgets:
        best_m = best_p = best_e = None
        for i, w in enumerate(widths):
            law = fitted.get(w)
            for j, n in enumerate(ns):
                if n * params[w] > budget or not np.isfinite(values[i, j]):
                    continue
                v = values[i, j]
                if best_m is None or v < best_m[0]:
                    best_m = (v, w, n)
                pv = float(law.predict(n)) if law is not None else v
                if best_p is None or pv < best_p[0]:
                    best_p = (pv, w, n, v)
            if law is not None:
                n_max = int(budget // params[w])
                if n_max >= 1:
                    grid = np.arange(1, n_max + 1)
                    pred = law.predict(grid)
                    k = int(np.argmin(pred))
                    if best_e is None or pred[k] < best_e[0]:
                        best_e = (float(pred[k]), w, int(grid[k]))
        if best_m is None:
            smallest = min(params[w] for w in widths)
            raise BasinscopeError(
                f"budget {budget:g} fits no measured ensemble: the smallest network has "
                f"{smallest} parameters; use budgets of at least {smallest}"
            )
        assert best_p is not None
        cols["measured"].append(float(best_m[0]))
        cols["measured_width"].append(best_m[1])
        cols["measured_n"].append(int(best_m[2]))
        cols["predicted"].append(float(best_p[0]))
        cols["predicted_width"].append(best_p[1])
        cols["predicted_n"].append(int(best_p[2]))
        cols["measured_at_predicted"].append(float(best_p[3]))
        cols["agree"].append(bool(best_p[1] == best_m[1] and best_p[2] == best_m[2]))
        e = best_e or (math.nan, best_m[1], 0)
        cols["extrapolated"].append(float(e[0]))
        cols["extrapolated_width"].append(e[1])
        cols["extrapolated_n"].append(int(e[2]))
        envelope_x.append(budget)
        envelope_y.append(float(best_m[0]))
    table = xr.Dataset(
        {k: ("budget", np.asarray(v)) for k, v in cols.items()}, coords={"budget": budgets}
    )
    envelope = None
    if len(set(envelope_x)) >= 3 and len(set(envelope_y)) >= 2:
        envelope = fit_power_law(
            envelope_x,
            envelope_y,
            loss=loss,
            bootstrap=bootstrap if len(envelope_x) >= 4 else 0,
            seed=seed,
        )
    return MemorySplit(
        table=table,
        params={str(w): int(params[w]) for w in widths},
        laws={str(w): f for w, f in fitted.items()},
        envelope=envelope,
        nll=nll.assign_coords(width=[str(w) for w in widths]),
    )
