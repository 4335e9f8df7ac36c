"""Hessian spectra of the full-dataset loss: both ends, trace, density, per layer.

One call gathers what users check a minimum by: the top-k and bottom-k eigenpairs by
Lanczos with a certified stopping rule (each eigenvalue with its true residual and a
converged flag), the trace by Hutch++ or Hutchinson with a confidence interval, the
spectral density by stochastic Lanczos quadrature, and per-module top eigenvalues and
traces. The loss semantics (operator, BatchNorm mode, weight decay, data size, HVP method)
are recorded in the result, so a number can be trusted without reading the code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from basinscope.errors import BasinscopeError

__all__ = ["HessianReport", "hessian_analysis"]

TRACE_METHODS = ("hutch++", "hutchinson", "exact", "none")


@dataclass(frozen=True)
class HessianReport:
    """The results of :func:`hessian_analysis` (fields are ``None`` when not asked for)."""

    top: Any = None
    bottom: Any = None
    trace: Any = None
    density: Any = None
    per_module: list = field(default_factory=list)
    semantics: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"semantics": self.semantics, "seconds": self.seconds}
        for name in ("top", "bottom", "trace", "density"):
            v = getattr(self, name)
            out[name] = v.to_dict() if v is not None else None
        out["per_module"] = [m.to_dict() for m in self.per_module]
        if self.top is not None and self.bottom is not None:
            lmax, lmin = float(self.top.eigenvalues[0]), float(self.bottom.eigenvalues[0])
            out["ratio_min_max"] = abs(lmin / lmax) if lmax else None
        return out


def hessian_analysis(
    model: nn.Module,
    data: Any,
    *,
    operator: str = "hessian",
    k_top: int = 3,
    k_bottom: int = 1,
    tol: float = 1e-6,
    max_iter: int | None = None,
    trace: str = "hutch++",
    trace_rtol: float = 1e-2,
    trace_kwargs: dict[str, Any] | None = None,
    density: bool = False,
    density_runs: int = 4,
    density_steps: int = 80,
    per_module: bool = False,
    seed: int = 0,
    progress: bool = False,
    **operator_kwargs: Any,
) -> HessianReport:
    """Spectrum of the curvature of the mean loss of ``model`` on ``data``.

    Args:
        operator: ``"hessian"``, ``"ggn"`` (generalized Gauss-Newton) or ``"ef"`` (empirical Fisher).
        k_top, k_bottom: how many eigenpairs at each end (algebraic order: ``k_bottom``
            gives the most negative eigenvalues of an indefinite Hessian); 0 to skip an end.
        tol: Ritz-residual tolerance, :math:`\\lVert Hv - \\theta v\\rVert \\le tol\\,|\\theta|`.
        trace: ``"hutch++"``, ``"hutchinson"`` (stopping when the 95% CI half-width is at
            most ``trace_rtol`` of the estimate), ``"exact"`` (dense, tiny models) or ``"none"``.
        trace_kwargs: more options of the trace estimator, e.g. ``{"max_samples": 64}`` for
            Hutchinson (:func:`~basinscope.curvature.trace.hutchinson_trace`) or
            ``{"max_matvecs": 300}`` for Hutch++ (a budget when the tolerance is not met).
        density: also estimate the spectral density by stochastic Lanczos quadrature.
        per_module: also the top eigenvalue and trace of each module's diagonal block.
        progress: show the Lanczos iterations on stderr.
        operator_kwargs: passed to the operator (``params``, ``subset``, ``batch_size``,
            ``weight_decay``, ``bn_mode``, ``method``, ``dtype``, ``device``, ``loss_fn``).
    """
    from basinscope.curvature.lanczos import lanczos_both_ends, lanczos_eigenpairs
    from basinscope.curvature.per_module import OPERATORS, per_module_curvature
    from basinscope.curvature.slq import spectral_density
    from basinscope.curvature.trace import TraceEstimate, hutch_plus_plus_trace, hutchinson_trace

    if operator not in OPERATORS:
        raise BasinscopeError(
            f"unknown curvature operator {operator!r}: expected one of {', '.join(OPERATORS)}"
        )
    if trace not in TRACE_METHODS:
        raise BasinscopeError(
            f"unknown trace method {trace!r}: expected one of {', '.join(TRACE_METHODS)}"
        )
    if k_top < 0 or k_bottom < 0:
        raise BasinscopeError(f"k_top and k_bottom must be >= 0, got {k_top} and {k_bottom}")
    t0 = time.perf_counter()
    if operator != "hessian":
        operator_kwargs.pop("method", None)
    op = OPERATORS[operator](model, data, **operator_kwargs)
    top = bottom = tr = sd = None
    if k_top and k_bottom:
        top, bottom = lanczos_both_ends(
            op, k_top, k_bottom, tol=tol, max_iter=max_iter, seed=seed, progress=progress
        )
    elif k_top:
        top = lanczos_eigenpairs(
            op, k_top, "largest", tol=tol, max_iter=max_iter, seed=seed, progress=progress
        )
    elif k_bottom:
        bottom = lanczos_eigenpairs(
            op, k_bottom, "smallest", tol=tol, max_iter=max_iter, seed=seed, progress=progress
        )
    if trace == "hutch++":
        tr = hutch_plus_plus_trace(op, rtol=trace_rtol, seed=seed, **(trace_kwargs or {}))
    elif trace == "hutchinson":
        tr = hutchinson_trace(op, rtol=trace_rtol, seed=seed, **(trace_kwargs or {}))
    elif trace == "exact":
        if op.n > 5000:
            raise BasinscopeError(
                f"an exact trace needs the dense {op.n}x{op.n} matrix; use trace='hutch++' for models this size"
            )
        before = op.num_matvecs
        value = float(torch.diagonal(op.dense()).sum())
        tr = TraceEstimate(
            value,
            0.0,
            0.0,
            1.0,
            op.num_matvecs - before,
            op.n,
            True,
            "exact",
            "basis vectors",
            op.semantics,
        )
    if density:
        sd = spectral_density(
            op, num_runs=density_runs, lanczos_steps=min(density_steps, op.n), seed=seed
        )
    modules = []
    if per_module:
        kwargs = {k: v for k, v in operator_kwargs.items() if k != "params"}
        modules = per_module_curvature(
            model,
            data,
            operator=operator,
            tol=max(tol, 1e-6),
            seed=seed,
            trace_rtol=trace_rtol,
            **kwargs,
        )
    semantics = {**op.semantics, "num_matvecs": op.num_matvecs, "tol": tol, "seed": seed}
    return HessianReport(
        top, bottom, tr, sd, modules, semantics, round(time.perf_counter() - t0, 3)
    )
