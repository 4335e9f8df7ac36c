"""Calibration of classifiers and ensembles: temperature scaling, NLL, ECE, Brier score.

For log-probabilities :math:`z_n = \\log p(\\cdot \\mid x_n)` (of one model, or of an
ensemble's averaged probabilities) the temperature-scaled prediction is

.. math::  p_\\text{cal}(\\cdot \\mid x_n; \\tau) = \\operatorname{softmax}(z_n / \\tau),
           \\qquad \\tau^* = \\arg\\max_\\tau \\log p(D_\\text{val} \\mid \\tau)

(Guo et al. 2017; the Vetrov talk's "calibrated NLL" after Ashukha et al. 2020). The
validation NLL is convex in :math:`\\beta = 1/\\tau` (a log-sum-exp of a linear function
minus a linear function), with derivative
:math:`\\frac1N\\sum_n (\\mathbb E_{p_\\beta}[z_n] - z_{n,y_n})`, so :func:`fit_temperature`
solves it exactly: the root of that derivative, bracketed and found by Brent's method to
machine precision. When the derivative has no root (a validation set classified perfectly
with growing margins: :math:`\\tau \\to 0`; a model no better than uniform:
:math:`\\tau \\to \\infty`) the temperature is the bound and ``at_bound`` says so.

Metrics (each result names the binning it used):

``nll``            :math:`-\\frac1N\\sum_n \\log p(y_n \\mid x_n)`,
``accuracy``       the fraction of top-1 predictions that are right,
``brier``          :math:`\\frac1N\\sum_n\\sum_c (p_{n,c} - [y_n = c])^2`,
``ece``            :math:`\\sum_b \\frac{|B_b|}{N}\\,|\\mathrm{acc}(B_b) - \\mathrm{conf}(B_b)|`
                   over bins of the top-1 confidence: ``equal_width`` (``bins`` intervals of
                   [0, 1], right-closed; the first also holds 0) or ``equal_mass`` (the
                   examples sorted by confidence, split into ``bins`` groups of sizes that
                   differ by at most one),
``classwise_ece``  :math:`\\frac1C\\sum_c\\sum_b \\frac{|B_{b,c}|}{N}\\,|\\mathrm{freq}_c(B_{b,c})
                   - \\mathrm{mean}\\,p_c(B_{b,c})|`, the same binning of every class's
                   probability (Kull et al. 2019).

An ensemble is calibrated two ways, both reported: ``average`` (the members' probabilities
averaged, then one temperature for the average: Ashukha et al.'s protocol) and
``members`` (each member calibrated on its own, then averaged).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.result import Result, fmt
from basinscope.spec import EVAL_DTYPES, EvalOptions, Spec, option, takes_spec

__all__ = [
    "BINNINGS",
    "CALIBRATION_DEFINITION",
    "CalibrationResult",
    "CalibrationSpec",
    "Temperature",
    "apply_temperature",
    "calibrate",
    "calibrate_log_probs",
    "calibration_metrics",
    "fit_temperature",
    "log_probabilities",
    "reliability",
]

BINNINGS = ("equal_width", "equal_mass")
CALIBRATION_DEFINITION = (
    "p_cal = softmax(log p / tau), tau = argmax_tau log p(D_val | tau) (exact: the root of the "
    "convex NLL's derivative in 1/tau)"
)
METRICS = ("nll", "accuracy", "ece", "brier", "classwise_ece")
# the temperature's search interval: beyond it the NLL is flat to double precision
BETA_LOW, BETA_HIGH = 1e-6, 1e6


def _as_arrays(log_probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(log_probs, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2:
        raise BasinscopeError(
            f"log-probabilities must have shape (examples, classes), got {z.shape}"
        )
    if y.shape != (z.shape[0],):
        raise BasinscopeError(
            f"labels must have shape ({z.shape[0]},) to match the predictions, got {y.shape}"
        )
    if z.shape[0] == 0:
        raise BasinscopeError("calibration needs at least one example, got none")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise BasinscopeError(
            f"labels must be class indices in 0..{z.shape[1] - 1}, got values in "
            f"{y.min()}..{y.max()} ({y.dtype})"
        )
    if not np.isfinite(z).all() and not (np.isneginf(z) | np.isfinite(z)).all():
        raise BasinscopeError("log-probabilities hold NaN or +inf: the model's outputs diverged")
    return z, y.astype(np.int64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def apply_temperature(log_probs: Any, tau: float) -> np.ndarray:
    """:math:`\\log\\operatorname{softmax}(z / \\tau)` of each row."""
    z = np.asarray(log_probs, dtype=np.float64)
    if not tau > 0:
        raise BasinscopeError(f"the temperature must be positive, got {tau}")
    with np.errstate(invalid="ignore"):
        scaled = np.where(np.isneginf(z), -np.inf, z / tau)
    return _log_softmax(scaled)


def _nll_and_grad(beta: float, z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The mean NLL of softmax(beta z) and its derivative in beta."""
    lp = _log_softmax(np.where(np.isneginf(z), -np.inf, beta * z))
    p = np.exp(lp)
    zf = np.where(np.isneginf(z), 0.0, z)
    zy = zf[np.arange(len(y)), y]
    nll = -float(lp[np.arange(len(y)), y].mean())
    grad = float(((p * zf).sum(1) - zy).mean())
    return nll, grad


@dataclass(frozen=True)
class Temperature:
    """A fitted temperature: ``tau``, the validation NLL before (``tau = 1``) and after,
    and ``at_bound`` when the optimum is at the search interval's end."""

    tau: float
    nll_before: float
    nll_after: float
    at_bound: str = ""


def fit_temperature(log_probs: Any, labels: Any) -> Temperature:
    """The temperature that maximises the log-likelihood of ``labels`` (see the module
    docstring): exact, by Brent's method on the derivative in :math:`\\beta = 1/\\tau`."""
    from scipy.optimize import brentq

    z, y = _as_arrays(log_probs, labels)
    if np.isneginf(z[np.arange(len(y)), y]).any():
        raise BasinscopeError(
            "a validation label has probability 0 (log-probability -inf): no temperature "
            "gives it a finite likelihood; check the labels, or the model's outputs"
        )
    nll1 = _nll_and_grad(1.0, z, y)[0]
    g_lo = _nll_and_grad(BETA_LOW, z, y)[1]
    g_hi = _nll_and_grad(BETA_HIGH, z, y)[1]
    bound = ""
    if g_lo >= 0:
        beta, bound = BETA_LOW, "upper (no better than uniform: tau -> infinity)"
    elif g_hi <= 0:
        beta, bound = BETA_HIGH, "lower (separable validation set: tau -> 0)"
    else:
        beta = brentq(lambda b: _nll_and_grad(b, z, y)[1], BETA_LOW, BETA_HIGH, xtol=1e-15)
    return Temperature(
        tau=1.0 / beta, nll_before=nll1, nll_after=_nll_and_grad(beta, z, y)[0], at_bound=bound
    )


def _bins(conf: np.ndarray, bins: int, binning: str) -> list[np.ndarray]:
    """Index arrays of the examples in each bin of ``conf`` (empty bins included)."""
    if binning not in BINNINGS:
        raise BasinscopeError(f"unknown binning {binning!r}: expected one of {', '.join(BINNINGS)}")
    if bins < 1:
        raise BasinscopeError(f"bins must be at least 1, got {bins}")
    if binning == "equal_mass":
        order = np.argsort(conf, kind="stable")
        return list(np.array_split(order, bins))
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    return [np.flatnonzero(which == b) for b in range(bins)]


def reliability(
    probs: Any, labels: Any, *, bins: int = 15, binning: str = "equal_width"
) -> dict[str, list[float]]:
    """The reliability diagram's bins of the top-1 confidence: ``lower``/``upper`` (the
    bin's edges; for equal-mass bins its smallest and largest confidence), ``count``,
    ``confidence`` (mean) and ``accuracy`` (NaN for an empty bin)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    conf, pred = p.max(1), p.argmax(1)
    out: dict[str, list[float]] = {
        k: [] for k in ("lower", "upper", "count", "confidence", "accuracy")
    }
    edges = np.linspace(0.0, 1.0, bins + 1)
    for b, idx in enumerate(_bins(conf, bins, binning)):
        if binning == "equal_width":
            lo, hi = float(edges[b]), float(edges[b + 1])
        else:
            lo, hi = (
                (float(conf[idx].min()), float(conf[idx].max()))
                if len(idx)
                else (math.nan, math.nan)
            )
        out["lower"].append(lo)
        out["upper"].append(hi)
        out["count"].append(float(len(idx)))
        out["confidence"].append(float(conf[idx].mean()) if len(idx) else math.nan)
        out["accuracy"].append(float((pred[idx] == y[idx]).mean()) if len(idx) else math.nan)
    return out


def calibration_metrics(
    log_probs: Any, labels: Any, *, bins: int = 15, binning: str = "equal_width"
) -> dict[str, float]:
    """NLL, accuracy, ECE, Brier score and classwise ECE of predictions given as
    log-probabilities (see the module docstring for each definition)."""
    z, y = _as_arrays(log_probs, labels)
    n, c = z.shape
    p = np.exp(z)
    rows = np.arange(n)
    conf, pred = p.max(1), p.argmax(1)
    ece = sum(
        len(idx) / n * abs(float((pred[idx] == y[idx]).mean()) - float(conf[idx].mean()))
        for idx in _bins(conf, bins, binning)
        if len(idx)
    )
    onehot = np.zeros_like(p)
    onehot[rows, y] = 1.0
    cw = 0.0
    for k in range(c):
        for idx in _bins(p[:, k], bins, binning):
            if len(idx):
                cw += len(idx) / n * abs(float(onehot[idx, k].mean()) - float(p[idx, k].mean()))
    return {
        "nll": float(-z[rows, y].mean()),
        "accuracy": float((pred == y).mean()),
        "ece": float(ece),
        "brier": float(((p - onehot) ** 2).sum(1).mean()),
        "classwise_ece": cw / c,
    }


# -- models -------------------------------------------------------------------------------------
def log_probabilities(
    models: Sequence[nn.Module],
    data: Any,
    *,
    task: Any = None,
    batch_size: int = 1024,
    device: Any = None,
    dtype: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every model's log-softmax over ``data``: ``(M, N, C)`` float64 and the labels
    ``(N,)``. Models run in eval mode (left as they were), through the ``task``."""
    from basinscope.analyses.similarity import evaluated
    from basinscope.engine import as_batches
    from basinscope.engine.task import as_task

    models = list(models)
    if not models:
        raise BasinscopeError("calibration needs at least one model, got none")
    task = as_task(task)
    _check_classifier(task)
    out: list[list[np.ndarray]] = [[] for _ in models]
    labels = []
    with evaluated(models, device, dtype) as ev, torch.no_grad():
        for x, y in as_batches(data, batch_size=batch_size, task=task):
            y = torch.as_tensor(y)
            _check_classifier(task, y)
            x = ev.inputs(x)
            for i, net in enumerate(ev.models):
                z = task.prediction(ev.run(net, x))
                if z.ndim != 2:
                    raise BasinscopeError(
                        f"calibration needs classifier outputs of shape (N, classes), got {tuple(z.shape)}"
                    )
                out[i].append(F.log_softmax(z.double(), dim=1).cpu().numpy())
            labels.append(y.cpu().numpy())
    return np.stack([np.concatenate(o) for o in out]), np.concatenate(labels)


def _check_classifier(task: Any, y: Any = None) -> None:
    """Refuse a regression task (by its loss, or by the first batch's targets)."""
    found = ""
    if task.loss == "mse":
        found = "the loss mse (a regression loss)"
    elif y is not None and (y.is_floating_point() or y.ndim != 1):
        found = f"{str(y.dtype).replace('torch.', '')} targets of shape {tuple(y.shape)}"
    if found:
        raise BasinscopeError(
            f"calibration scales a classifier's probabilities over classes, got {found}: "
            "calibrate a classifier whose targets are integer class labels (loss "
            "cross_entropy)"
        )


def _average(log_probs: np.ndarray) -> np.ndarray:
    """The log of the members' mean probability, ``(M, N, C) -> (N, C)``."""
    m = log_probs.max(0)
    m = np.where(np.isfinite(m), m, 0.0)
    return m + np.log(np.exp(log_probs - m).mean(0))


@dataclass(frozen=True)
class CalibrationSpec(Spec):
    """Temperature scaling of a model or an ensemble, with NLL, accuracy, ECE, Brier score
    and classwise ECE before and after.

    p_cal = softmax(log p / τ) with τ = argmax log p(D_val | τ), solved exactly (the
    validation NLL is convex in 1/τ). τ is fitted on --val-split and every metric reported
    on --split; without --val-split, by test-time cross-validation (Ashukha et al. 2020): the
    --split data is halved at random, τ fitted on each half and applied to the other, and
    the calibrated metrics averaged over --repeats halvings. More than one --weights is an ensemble: its averaged probabilities get one
    τ ("average", Ashukha et al. 2020's calibrated log-likelihood), and each member its
    own τ before averaging ("members"); each member's own metrics are reported too. ECE
    bins the top-1 confidence into --bins bins, equal_width (intervals of [0, 1]) or
    equal_mass (equal counts); classwise ECE bins every class's probability (Kull et al.
    2019). figures/calibration is the reliability diagram before and after.

    Library: ``calibrate(models, val_data, test_data, spec=CalibrationSpec(...))``.
    """

    kind: ClassVar[str] = "calibration"

    bins: int = option(15, "Bins of the ECE and the reliability diagram.", low=1, high=10_000)
    binning: str = option("equal_width", "How confidences are binned.", choices=BINNINGS)
    repeats: int = option(
        5,
        "Without a validation split: random halvings of the test data (test-time "
        "cross-validation).",
        low=1,
        high=1000,
    )
    seed: int = option(0, "Seed of the halvings.", low=0)
    dtype: str = option(
        "float32",
        "Precision the models run in (their log-softmax is float64).",
        choices=EVAL_DTYPES,
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N or mps.")
    batch_size: int = option(1024, "Examples per forward pass.", low=1)

    def check(self) -> None:
        EvalOptions(device=self.device)  # an unavailable device, refused with the fix


@dataclass(frozen=True)
class CalibrationResult(Result, kind="calibration"):
    """A calibrated model or ensemble. ``temperature`` is τ of the model (one member) or of
    the ensemble's average; ``before``/``after`` the metrics on the test data without and
    with it; ``val_before``/``val_after`` on the validation data; ``members`` one entry per
    member (``temperature``, ``before``, ``after``); ``members_calibrated`` the metrics of
    the average of the calibrated members (ensembles only); ``reliability_before``/``_after``
    the reliability diagram's bins (:func:`reliability`). ``protocol`` says where τ was
    fitted: ``"validation split"``, or ``"test-time cross-validation"`` (the test data
    halved at random ``repeats`` times, τ fitted on each half and applied to the other:
    ``after`` and ``members_calibrated`` are then the held-out predictions' metrics averaged
    over the halvings, ``temperature`` the median of ``temperatures``, ``val_*`` the fitting
    halves' metrics averaged). ``split``, ``val_split`` and ``labels`` (of the members)
    name the inputs."""

    temperature: float
    before: dict[str, float]
    after: dict[str, float]
    val_before: dict[str, float]
    val_after: dict[str, float]
    members: list[dict[str, Any]] = field(default_factory=list)
    members_calibrated: dict[str, float] = field(default_factory=dict)
    reliability_before: dict[str, list[float]] = field(default_factory=dict)
    reliability_after: dict[str, list[float]] = field(default_factory=dict)
    at_bound: str = ""
    bins: int = 15
    binning: str = "equal_width"
    n_val: int = 0
    n_test: int = 0
    protocol: str = "validation split"
    temperatures: list[float] = field(default_factory=list)
    split: str = ""
    val_split: str = ""
    labels: tuple[str, ...] = ()
    definition: str = CALIBRATION_DEFINITION
    spec: CalibrationSpec | None = None

    def summary(self) -> list[str]:
        """τ, then each metric before and after on the test data."""
        what = "ensemble average" if len(self.members) > 1 else "model"
        lines = [
            f"temperature of the {what}: {fmt(self.temperature)}"
            + (f" (at the {self.at_bound} bound)" if self.at_bound else "")
        ]
        lines.append(
            f"{'metric':<14} {'before':>10} {'after':>10}"
            + (f" {'members cal.':>13}" if self.members_calibrated else "")
        )
        for k in METRICS:
            extra = f" {fmt(self.members_calibrated[k]):>13}" if self.members_calibrated else ""
            lines.append(f"{k:<14} {fmt(self.before[k]):>10} {fmt(self.after[k]):>10}{extra}")
        return lines


def _fit_and_apply(
    zv: np.ndarray, yv: np.ndarray, zt: np.ndarray, members: bool = True
) -> tuple[list[Temperature], list[np.ndarray], Temperature, np.ndarray]:
    """Each member's (unless not ``members``) and the average's temperature fitted on
    ``zv``, applied to ``zt``."""
    temps = [fit_temperature(mv, yv) for mv in zv] if members else []
    members = [apply_temperature(mt, t.tau) for mt, t in zip(zt, temps)]
    t = fit_temperature(_average(zv), yv)
    return temps, members, t, apply_temperature(_average(zt), t.tau)


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def calibrate_log_probs(
    val_log_probs: Any,
    val_labels: Any,
    test_log_probs: Any,
    test_labels: Any,
    *,
    bins: int = 15,
    binning: str = "equal_width",
    repeats: int = 5,
    seed: int = 0,
    members: bool = True,
) -> CalibrationResult:
    """:func:`calibrate` on precomputed log-probabilities, ``(N, C)`` for one model or
    ``(M, N, C)`` for an ensemble of ``M`` members. ``val_log_probs=None`` (and
    ``val_labels=None``): test-time cross-validation over ``repeats`` random halvings of
    the test data (seeded by ``seed``). ``members=False`` calibrates the average only
    (``members`` and ``members_calibrated`` are then empty)."""
    zt = np.asarray(test_log_probs, dtype=np.float64)
    zt = zt[None] if zt.ndim == 2 else zt
    yt = np.asarray(test_labels)
    kw = {"bins": bins, "binning": binning}
    if val_log_probs is None:
        return _cross_validated(zt, yt, repeats, seed, kw, members)
    zv = np.asarray(val_log_probs, dtype=np.float64)
    zv = zv[None] if zv.ndim == 2 else zv
    if zv.ndim != 3 or zt.ndim != 3 or zv.shape[0] != zt.shape[0] or zv.shape[2] != zt.shape[2]:
        raise BasinscopeError(
            "validation and test log-probabilities must be (N, C) or (M, N, C) with the same "
            f"members and classes, got {zv.shape} and {zt.shape}"
        )
    temps, cal, t, after = _fit_and_apply(zv, np.asarray(val_labels), zt, members)
    av, at = _average(zv), _average(zt)
    members = [
        {
            "temperature": tm.tau,
            "at_bound": tm.at_bound,
            "before": calibration_metrics(mt, yt, **kw),
            "after": calibration_metrics(ct, yt, **kw),
        }
        for tm, mt, ct in zip(temps, zt, cal)
    ]
    return CalibrationResult(
        temperature=t.tau,
        before=calibration_metrics(at, yt, **kw),
        after=calibration_metrics(after, yt, **kw),
        val_before=calibration_metrics(av, val_labels, **kw),
        val_after=calibration_metrics(apply_temperature(av, t.tau), val_labels, **kw),
        members=members,
        members_calibrated=(
            calibration_metrics(_average(np.stack(cal)), yt, **kw) if len(cal) > 1 else {}
        ),
        reliability_before=reliability(np.exp(at), yt, **kw),
        reliability_after=reliability(np.exp(after), yt, **kw),
        at_bound=t.at_bound,
        bins=bins,
        binning=binning,
        n_val=int(zv.shape[1]),
        n_test=int(zt.shape[1]),
        protocol="validation split",
        temperatures=[t.tau],
    )


def _cross_validated(
    zt: np.ndarray,
    yt: np.ndarray,
    repeats: int,
    seed: int,
    kw: dict[str, Any],
    with_members: bool = True,
) -> CalibrationResult:
    """Test-time cross-validation (Ashukha et al. 2020): per random halving, each half's
    predictions calibrated with the temperatures fitted on the other half."""
    n = zt.shape[1]
    if n < 4:
        raise BasinscopeError(
            f"test-time cross-validation halves the test data: it needs at least 4 examples, "
            f"got {n}; pass a validation split"
        )
    if repeats < 1:
        raise BasinscopeError(f"repeats must be at least 1, got {repeats}")
    rng = np.random.default_rng(seed)
    taus: list[float] = []
    after_rows, members_rows, val_before, val_after = [], [], [], []
    member_taus: list[list[float]] = [[] for _ in range(zt.shape[0])]
    member_after: list[list[dict[str, float]]] = [[] for _ in range(zt.shape[0])]
    first_after = None
    for _ in range(repeats):
        perm = rng.permutation(n)
        halves = (perm[: n // 2], perm[n // 2 :])
        cal_avg = np.empty(zt.shape[1:])
        cal_members = np.empty(zt.shape)
        for fit, held in (halves, halves[::-1]):
            temps, cal, t, after = _fit_and_apply(zt[:, fit], yt[fit], zt[:, held], with_members)
            cal_avg[held] = after
            for i, (tm, c) in enumerate(zip(temps, cal)):
                cal_members[i][held] = c
                member_taus[i].append(tm.tau)
            taus.append(t.tau)
            av = _average(zt[:, fit])
            val_before.append(calibration_metrics(av, yt[fit], **kw))
            val_after.append(calibration_metrics(apply_temperature(av, t.tau), yt[fit], **kw))
        after_rows.append(calibration_metrics(cal_avg, yt, **kw))
        if with_members:
            members_rows.append(calibration_metrics(_average(cal_members), yt, **kw))
            for i in range(zt.shape[0]):
                member_after[i].append(calibration_metrics(cal_members[i], yt, **kw))
        if first_after is None:
            first_after = cal_avg
    at = _average(zt)
    members = [
        {
            "temperature": float(np.median(member_taus[i])),
            "at_bound": "",
            "before": calibration_metrics(zt[i], yt, **kw),
            "after": _mean_metrics(member_after[i]),
        }
        for i in range(zt.shape[0] if with_members else 0)
    ]
    assert first_after is not None
    return CalibrationResult(
        temperature=float(np.median(taus)),
        before=calibration_metrics(at, yt, **kw),
        after=_mean_metrics(after_rows),
        val_before=_mean_metrics(val_before),
        val_after=_mean_metrics(val_after),
        members=members,
        members_calibrated=_mean_metrics(members_rows) if len(members) > 1 else {},
        reliability_before=reliability(np.exp(at), yt, **kw),
        reliability_after=reliability(np.exp(first_after), yt, **kw),
        bins=kw["bins"],
        binning=kw["binning"],
        n_val=n - n // 2,
        n_test=n,
        protocol=f"test-time cross-validation ({repeats} random halvings)",
        temperatures=taus,
    )


@takes_spec(CalibrationSpec)
def calibrate(
    models: nn.Module | Sequence[nn.Module],
    val_data: Any,
    test_data: Any,
    *,
    bins: int = 15,
    binning: str = "equal_width",
    repeats: int = 5,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    batch_size: int = 1024,
    task: Any = None,
    labels: Sequence[str] = (),
    split: str = "",
    val_split: str = "",
) -> CalibrationResult:
    """Temperature-scale a model (or an ensemble: a sequence of models) on ``val_data`` and
    report on ``test_data``; ``val_data=None`` is test-time cross-validation on
    ``test_data`` (see :class:`CalibrationSpec` and the module docstring). ``labels``,
    ``split`` and ``val_split`` name the members and the data in the result."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    kw = {"task": task, "batch_size": batch_size, "device": device, "dtype": dtype}
    zt, yt = log_probabilities(models, test_data, **kw)
    zv, yv = log_probabilities(models, val_data, **kw) if val_data is not None else (None, None)
    res = calibrate_log_probs(
        zv, yv, zt, yt, bins=bins, binning=binning, repeats=repeats, seed=seed
    )
    spec = CalibrationSpec(
        bins=bins,
        binning=binning,
        repeats=repeats,
        seed=seed,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
    )
    return dataclasses.replace(
        res, spec=spec, labels=tuple(labels), split=split, val_split=val_split
    )
