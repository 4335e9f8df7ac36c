"""Stochastic trace estimators for matrix-free curvature operators.

Two estimators, each named after its paper, both with an adaptive stopping rule on the
half-width of a normal-approximation confidence interval:

``hutchinson_trace``        Hutchinson (1989), "A stochastic estimator of the trace of the
                            influence matrix for Laplacian smoothing splines",
``hutch_plus_plus_trace``   Meyer, Musco, Musco & Woodruff (2021), "Hutch++: Optimal
                            stochastic trace estimation" (SOSA).

Both accept any symmetric operator with ``n``, ``matvec`` (and optionally ``matmat``,
``semantics``, ``dtype``, ``device``), such as the operators of
:mod:`basinscope.curvature.operators`; ``num_matvecs`` in the result counts the products
the estimator itself asked for.

Stopping rule (both): with :math:`m` samples :math:`x_1, \\dots, x_m` of mean
:math:`\\bar x` and sample standard deviation :math:`s`, the estimate is reported as
converged as soon as

.. math::  z_{(1+c)/2} \\, \\frac{s}{\\sqrt{m}} \\;\\le\\; \\max(\\mathrm{atol},\\,
           \\mathrm{rtol}\\cdot|\\hat t|),

where :math:`c` is ``confidence``, :math:`z` the standard normal quantile and
:math:`\\hat t` the trace estimate; the interval is asymptotic (central limit), which is
why at least ``min_samples`` samples are drawn before it is trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import Tensor

from basinscope._progress import progress_bar
from basinscope.errors import BasinscopeError
from basinscope.result import Result

__all__ = ["TRACE_ESTIMATORS", "TraceEstimate", "hutch_plus_plus_trace", "hutchinson_trace"]

DISTRIBUTIONS = ("rademacher", "gaussian")

#: How each ``method`` of a :class:`TraceEstimate` computes :math:`\operatorname{tr}(A)`.
TRACE_ESTIMATORS: dict[str, str] = {
    "hutchinson": "mean over probes z of z^T A z, E[z z^T] = I  (Hutchinson 1989)",
    "hutch++": "tr(Q^T A Q) of a sketch Q of A plus Hutchinson on (I - QQ^T) A (I - QQ^T)  "
    "(Meyer, Musco, Musco & Woodruff 2021)",
    "exact": "sum of the diagonal of the dense matrix",
}


@dataclass(frozen=True)
class TraceEstimate(Result, kind="trace_estimate"):
    """A trace estimate with its uncertainty and the settings that produced it.

    ``std_error`` is the standard error of the stochastic part, ``ci_halfwidth`` the
    half-width of the two-sided interval at ``confidence`` (``z * std_error``);
    ``converged`` says whether the stopping rule of the module docstring was met.
    ``method`` is ``"hutchinson"``, ``"hutch++"`` or ``"exact"`` (a dense trace, used by
    :func:`basinscope.curvature.per_module.per_module_curvature` for small blocks).
    """

    estimate: float
    std_error: float
    ci_halfwidth: float
    confidence: float
    num_matvecs: int
    num_samples: int
    converged: bool
    method: str
    distribution: str
    semantics: dict[str, Any] = field(default_factory=dict)

    @property
    def definition(self) -> str:
        """How the estimate was computed (:data:`TRACE_ESTIMATORS`)."""
        return TRACE_ESTIMATORS.get(self.method, self.method)


# -- shared helpers -----------------------------------------------------------------------
def _check_common(
    rtol: float, atol: float, confidence: float, min_samples: int, distribution: str
) -> None:
    if distribution not in DISTRIBUTIONS:
        raise BasinscopeError(
            f"unknown probe distribution {distribution!r}: expected one of {', '.join(DISTRIBUTIONS)}"
        )
    if not 0.0 < confidence < 1.0:
        raise BasinscopeError(
            f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}"
        )
    if rtol < 0 or atol < 0:
        raise BasinscopeError(
            f"rtol and atol must be non-negative, got rtol={rtol}, atol={atol}; pass 0 to disable one"
        )
    if min_samples < 2:
        raise BasinscopeError(
            f"min_samples must be at least 2 (a standard error needs two samples), got {min_samples}"
        )


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _semantics(op: Any) -> dict[str, Any]:
    return dict(getattr(op, "semantics", {}) or {})


def _dtype_device(op: Any) -> tuple[torch.dtype, torch.device]:
    return getattr(op, "dtype", torch.float64), torch.device(getattr(op, "device", "cpu"))


def apply_columns(op: Any, vs: Tensor, batch: int) -> Tensor:
    """``A @ vs`` in column blocks of at most ``batch`` (``op.matmat`` when it exists)."""
    matmat: Callable[[Tensor], Tensor] | None = getattr(op, "matmat", None)
    outs = []
    for i in range(0, vs.shape[1], batch):
        block = vs[:, i : i + batch]
        if matmat is not None:
            outs.append(matmat(block))
        else:
            outs.append(torch.stack([op.matvec(block[:, j]) for j in range(block.shape[1])], 1))
    return torch.cat(outs, 1) if outs else vs.new_zeros(vs.shape)


def draw_probes(
    n: int,
    k: int,
    distribution: str,
    gen: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``k`` probe columns with :math:`\\mathbb E[z z^\\top] = I` (Rademacher or Gaussian).

    Drawn on the CPU from ``gen`` (so results do not depend on the device), then moved.
    """
    if distribution == "rademacher":
        z = torch.randint(0, 2, (n, k), generator=gen, dtype=torch.int64).to(torch.float64)
        z = 2.0 * z - 1.0
    else:
        z = torch.randn(n, k, generator=gen, dtype=torch.float64)
    return z.to(dtype=dtype, device=device)


def _mean_se(samples: Tensor) -> tuple[float, float]:
    m = samples.numel()
    mean = float(samples.mean())
    if m < 2:
        return mean, math.inf
    return mean, float(samples.std(correction=1)) / math.sqrt(m)


# -- Hutchinson ---------------------------------------------------------------------------
def hutchinson_trace(
    op: Any,
    *,
    rtol: float = 1e-2,
    atol: float = 0.0,
    confidence: float = 0.95,
    min_samples: int = 10,
    max_samples: int = 1000,
    batch: int = 8,
    distribution: str = "rademacher",
    seed: int = 0,
    progress: bool = False,
) -> TraceEstimate:
    """Hutchinson's estimator :math:`\\operatorname{tr}(A) \\approx \\frac1m \\sum_{i=1}^m
    z_i^\\top A z_i` with i.i.d. probes, :math:`\\mathbb E[z z^\\top] = I`.

    Hutchinson (1989), Commun. Stat. Simul. Comput. 18(3). Probes are Rademacher
    (:math:`\\pm 1`, the minimum-variance choice, variance
    :math:`2\\sum_{i\\ne j} A_{ij}^2`) or standard Gaussian (variance
    :math:`2\\lVert A\\rVert_F^2`). They are drawn in blocks of ``batch`` and applied with
    ``op.matmat``; after each block (and at least ``min_samples`` samples) the stopping rule
    of the module docstring is checked, and after ``max_samples`` the estimate is returned
    with ``converged=False``. ``num_matvecs == num_samples``. ``progress``: a bar of the
    probes on stderr (up to ``max_samples``; it stops early when the rule holds).
    """
    _check_common(rtol, atol, confidence, min_samples, distribution)
    if max_samples < min_samples:
        raise BasinscopeError(
            f"max_samples ({max_samples}) is smaller than min_samples ({min_samples}); raise max_samples"
        )
    if batch < 1:
        raise BasinscopeError(f"batch must be a positive number of probes, got {batch}")
    dtype, device = _dtype_device(op)
    gen = torch.Generator().manual_seed(seed)
    z = _z(confidence)
    samples = torch.empty(0, dtype=torch.float64)
    converged = False
    mean, se = 0.0, math.inf
    bar = progress_bar(total=max_samples, disable=not progress, desc="trace", unit="probe")
    with bar:
        while samples.numel() < max_samples:
            k = min(batch, max_samples - samples.numel())
            vs = draw_probes(op.n, k, distribution, gen, dtype, device)
            new = (vs * apply_columns(op, vs, batch)).sum(0).to("cpu", torch.float64)
            samples = torch.cat([samples, new])
            bar.update(k)
            if samples.numel() >= min_samples:
                mean, se = _mean_se(samples)
                bar.set_postfix(rel_ci=f"{z * se / max(abs(mean), 1e-300):.1e}", refresh=False)
                if z * se <= max(atol, rtol * abs(mean)):
                    converged = True
                    break
    mean, se = _mean_se(samples)
    return TraceEstimate(
        estimate=mean,
        std_error=se,
        ci_halfwidth=z * se,
        confidence=confidence,
        num_matvecs=int(samples.numel()),
        num_samples=int(samples.numel()),
        converged=converged,
        method="hutchinson",
        distribution=distribution,
        semantics=_semantics(op),
    )


# -- Hutch++ ------------------------------------------------------------------------------
#: Directions of the sketch whose singular value is below this fraction of the largest are
#: dropped (numerically dependent; leaving them to the stochastic part keeps the estimator
#: unbiased).
RANK_RTOL = 1e-7


def orthonormal_complement(w: Tensor, q: Tensor, rtol: float = RANK_RTOL) -> Tensor:
    """An orthonormal basis of the part of ``range(w)`` orthogonal to the orthonormal ``q``.

    Projects ``w`` off ``q`` and orthonormalizes through the small Gram matrix
    :math:`W^\\top W = V \\Lambda V^\\top`, :math:`U = W V \\Lambda^{-1/2}`, keeping only
    directions with singular value above ``rtol`` times the largest singular value of
    ``w`` (so rank deficiency is detected); both steps run twice (as in CholeskyQR2) for
    orthogonality to working precision. Only products with ``w`` and a ``k x k``
    eigendecomposition on the CPU are needed, which stays fast for tall ``w`` on any
    device (a tall SVD or QR through LAPACK can be very slow on busy multi-threaded CPUs).
    """
    gram0 = (w.T @ w).to("cpu", torch.float64).numpy()
    scale2 = float(np.linalg.eigvalsh(gram0)[-1]) if w.shape[1] else 0.0
    if scale2 <= 0.0:
        return w[:, :0]
    threshold = (rtol**2) * scale2
    for _ in range(2):
        w = w - q @ (q.T @ w)
        w = w - q @ (q.T @ w)
        lam, v = np.linalg.eigh((w.T @ w).to("cpu", torch.float64).numpy())
        keep = lam > threshold
        if not keep.any():
            return w[:, :0]
        mix = torch.as_tensor(v[:, keep] / np.sqrt(lam[keep]), dtype=w.dtype, device=w.device)
        w = w @ mix
        threshold = 0.25  # second pass: columns are ~unit; a collapse means a lost direction
    return w


class _HutchPlusPlus:
    """Incremental Hutch++ state: the sketch basis ``Q`` with ``A Q`` and the probes ``G``
    with ``A G``, both only ever extended, so no product is computed twice."""

    def __init__(self, op: Any, distribution: str, seed: int, batch: int):
        self.op, self.distribution, self.batch = op, distribution, batch
        self.dtype, self.device = _dtype_device(op)
        self.n = op.n
        # separate streams: the sketch S and the probes G are independent
        self.gen_s = torch.Generator().manual_seed(seed)
        self.gen_g = torch.Generator().manual_seed(seed + 1_000_003)
        empty = torch.zeros(self.n, 0, dtype=self.dtype, device=self.device)
        self.q, self.aq, self.g, self.ag = empty, empty, empty, empty
        self.sketch_size = 0
        self.num_matvecs = 0

    def _apply(self, vs: Tensor) -> Tensor:
        self.num_matvecs += vs.shape[1]
        return apply_columns(self.op, vs, self.batch)

    def grow_sketch(self, k: int) -> None:
        """Add ``k`` sketch columns: the numerically independent directions of
        ``A S_new`` orthogonal to ``Q`` (:func:`orthonormal_complement`), with their products."""
        k = min(k, self.n - self.sketch_size)
        if k <= 0 or self.q.shape[1] >= self.n:
            return
        s = draw_probes(self.n, k, self.distribution, self.gen_s, self.dtype, self.device)
        u = orthonormal_complement(self._apply(s), self.q)
        self.sketch_size += k
        if u.shape[1]:
            self.q = torch.cat([self.q, u], 1)
            self.aq = torch.cat([self.aq, self._apply(u)], 1)

    def grow_probes(self, k: int) -> None:
        g = draw_probes(self.n, k, self.distribution, self.gen_g, self.dtype, self.device)
        self.g = torch.cat([self.g, g], 1)
        self.ag = torch.cat([self.ag, self._apply(g)], 1)

    def estimate(self) -> tuple[float, Tensor]:
        """``(tr(Q^T A Q), samples of g^T (I-P) A (I-P) g)`` for the current ``Q`` and ``G``."""
        exact = float((self.q * self.aq).sum())
        qg = self.q.T @ self.g
        gp = self.g - self.q @ qg  # (I - P) g
        agp = self.ag - self.aq @ qg  # A (I - P) g, no new products
        return exact, (gp * agp).sum(0).to("cpu", torch.float64)


def hutch_plus_plus_trace(
    op: Any,
    *,
    num_matvecs: int | None = None,
    rtol: float = 1e-2,
    atol: float = 0.0,
    confidence: float = 0.95,
    min_samples: int = 10,
    max_matvecs: int = 3000,
    batch: int = 8,
    distribution: str = "rademacher",
    seed: int = 0,
    progress: bool = False,
) -> TraceEstimate:
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

    Meyer, Musco, Musco & Woodruff (2021), "Hutch++: Optimal stochastic trace estimation",
    Algorithm 1. With a sketch :math:`S \\in \\mathbb R^{n\\times k}` and an orthonormal
    basis :math:`Q` of :math:`\\operatorname{range}(AS)`, :math:`P = QQ^\\top`, and
    independent probes :math:`g_1, \\dots, g_l`,

    .. math::  \\widehat{\\operatorname{tr}}(A) = \\operatorname{tr}(Q^\\top A Q)
               + \\frac1l \\sum_{i=1}^l g_i^\\top (I-P) A (I-P) g_i,

    unbiased because :math:`\\operatorname{tr}(A) = \\operatorname{tr}(PAP) +
    \\operatorname{tr}((I-P)A(I-P))` for any orthogonal projector. The standard error is
    that of the deflated remainder's :math:`l` samples (conditional on :math:`Q`); for
    matrices whose trace is dominated by a few eigenvalues it is far smaller than
    Hutchinson's at the same number of products (error :math:`O(1/m)` instead of
    :math:`O(1/\\sqrt m)` for PSD matrices).

    Two modes:

    * ``num_matvecs=m`` (the paper's fixed budget): sketch size :math:`k=\\lfloor m/3\\rfloor`,
      :math:`l = m - 2k` probes; ``converged`` reports whether the stopping rule held at
      the end (``min_samples`` is not enforced). Fewer than ``m`` products are used when
      :math:`AS` is rank-deficient (only the numerically independent directions of
      :math:`Q` are multiplied by :math:`A`).
    * ``num_matvecs=None`` (adaptive, this library's variant): start with
      ``k = l = min_samples`` and double both until the stopping rule of the module
      docstring holds or the next round would exceed ``max_matvecs``. Nothing is
      recomputed between rounds: the basis is extended by orthogonalizing the new
      :math:`AS` columns against the old :math:`Q` (so :math:`AQ` is reused), and the
      remainder samples are refreshed from stored :math:`Ag` via
      :math:`A(I-P)g = Ag - (AQ)(Q^\\top g)`.

    ``num_samples`` is :math:`l`; ``num_matvecs`` counts every product (:math:`AS`,
    :math:`AQ`, :math:`AG`). Once :math:`Q` spans the whole space the estimate is exact.
    ``progress``: a bar of the products on stderr (up to the budget).
    """
    _check_common(rtol, atol, confidence, min_samples, distribution)
    if batch < 1:
        raise BasinscopeError(f"batch must be a positive number of probes, got {batch}")
    if num_matvecs is not None and num_matvecs < 6:
        raise BasinscopeError(
            f"num_matvecs must be at least 6 (sketch, its basis and remainder probes of "
            f"at least 2 columns each), got {num_matvecs}"
        )
    if num_matvecs is None and max_matvecs < 3 * min_samples:
        raise BasinscopeError(
            f"max_matvecs ({max_matvecs}) is below the first round's 3*min_samples = "
            f"{3 * min_samples} products; raise max_matvecs or lower min_samples"
        )
    z = _z(confidence)
    state = _HutchPlusPlus(op, distribution, seed, batch)

    def criterion(exact: float, samples: Tensor) -> tuple[float, float, bool]:
        mean, se = _mean_se(samples)
        est = exact + mean
        return est, se, z * se <= max(atol, rtol * abs(est))

    budget = num_matvecs if num_matvecs is not None else max_matvecs
    bar = progress_bar(total=budget, disable=not progress, desc="trace (hutch++)", unit="matvec")

    def advance() -> None:
        bar.update(state.num_matvecs - bar.n)

    with bar:
        if num_matvecs is not None:
            k = num_matvecs // 3
            state.grow_sketch(k)
            state.grow_probes(num_matvecs - 2 * k)
            exact, samples = state.estimate()
            est, se, converged = criterion(exact, samples)
            advance()
        else:
            k = num_probes = min_samples
            state.grow_sketch(k)
            state.grow_probes(num_probes)
            while True:
                exact, samples = state.estimate()
                est, se, converged = criterion(exact, samples)
                advance()
                if converged:
                    break
                # next round doubles both; its cost is at most 2 * (new sketch) + new probes
                add_k = min(k, op.n - state.sketch_size)
                if state.num_matvecs + 2 * add_k + num_probes > max_matvecs:
                    break
                state.grow_sketch(add_k)
                state.grow_probes(num_probes)
                k, num_probes = k + add_k, 2 * num_probes
    return TraceEstimate(
        estimate=est,
        std_error=se,
        ci_halfwidth=z * se,
        confidence=confidence,
        num_matvecs=state.num_matvecs,
        num_samples=int(samples.numel()),
        converged=converged,
        method="hutch++",
        distribution=distribution,
        semantics=_semantics(op),
    )
