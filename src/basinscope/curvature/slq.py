"""Stochastic Lanczos quadrature (SLQ): the eigenvalue density of a curvature operator.

Ubaru, Chen & Saad (2017), "Fast estimation of tr(f(A)) via stochastic Lanczos
quadrature", SIAM J. Matrix Anal. Appl. 38(4); applied to neural-network Hessians by
Ghorbani, Krishnan & Xiao (2019), "An investigation into neural net optimization via
Hessian eigenvalue density" (ICML), and implemented as ``density`` in PyHessian
(Yao et al. 2020).

For a symmetric :math:`A \\in \\mathbb R^{n\\times n}` with eigenpairs
:math:`(\\lambda_j, u_j)` and a random unit vector :math:`v`, the spectral measure
:math:`\\mu_v = \\sum_j (u_j^\\top v)^2 \\delta_{\\lambda_j}` has expectation the
eigenvalue density :math:`\\phi = \\frac1n \\sum_j \\delta_{\\lambda_j}`. Running
:math:`m` Lanczos steps from :math:`v` gives a tridiagonal :math:`T_m = Y \\Theta Y^\\top`
whose Ritz values :math:`\\theta_i` and weights :math:`w_i = Y_{1i}^2` are the
:math:`m`-point Gauss quadrature of :math:`\\mu_v`, exact for polynomials of degree
:math:`\\le 2m-1`:

.. math::  \\sum_{i=1}^m w_i\\, \\theta_i^k = v^\\top A^k v \\quad (k \\le 2m-1),
           \\qquad \\mathbb E_v\\big[v^\\top A^k v\\big] = \\tfrac1n \\operatorname{tr}(A^k).

The smoothed density averages Gaussian kernels over ``num_runs`` independent runs:

.. math::  \\hat\\phi_\\sigma(x) = \\frac{1}{R} \\sum_{r=1}^R \\sum_{i=1}^m w^{(r)}_i\\,
           \\mathcal N\\big(x;\\, \\theta^{(r)}_i, \\sigma^2\\big).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from basinscope._progress import progress_bar
from basinscope.curvature.trace import _dtype_device, _semantics, apply_columns, draw_probes
from basinscope.errors import BasinscopeError
from basinscope.result import Result

__all__ = ["SpectralDensity", "lanczos_tridiagonal", "spectral_density"]

#: The density of :class:`SpectralDensity` (see the module docstring).
DEFINITION = (
    "phi(x) = 1/n sum_j delta(x - lambda_j), estimated as 1/R sum_r sum_i w_ri "
    "N(x; theta_ri, sigma^2) from R stochastic Lanczos quadratures (Ubaru, Chen & Saad 2017; "
    "Ghorbani, Krishnan & Xiao 2019)"
)

#: A Lanczos run stops early (an invariant Krylov subspace) when the new residual norm
#: falls below this fraction of the largest ``||A v_j||`` seen so far.
BREAKDOWN_RTOL = 1e-10


@dataclass(frozen=True)
class SpectralDensity(Result, kind="spectral_density"):
    """Gauss-quadrature nodes and weights of ``num_runs`` SLQ runs (see the module docstring).

    ``nodes`` and ``weights`` have shape ``(num_runs, lanczos_steps)``; each row of
    ``weights`` sums to one. A run that met an invariant subspace after ``j`` steps has its
    remaining entries padded with weight 0 (at a copy of its largest node), which leaves
    every quantity below unchanged. ``dimension`` is the operator's :math:`n`.
    """

    nodes: np.ndarray
    weights: np.ndarray
    num_runs: int
    lanczos_steps: int
    num_matvecs: int
    dimension: int
    distribution: str = "rademacher"
    semantics: dict[str, Any] = field(default_factory=dict)

    def moment(self, k: int) -> float:
        """:math:`\\frac1R\\sum_r \\sum_i w^{(r)}_i (\\theta^{(r)}_i)^k \\approx
        \\frac1n\\operatorname{tr}(A^k)`."""
        return float(np.mean(np.sum(self.weights * self.nodes**k, axis=1)))

    def trace(self) -> float:
        """The trace estimate :math:`n \\cdot` ``moment(1)``."""
        return self.dimension * self.moment(1)

    @property
    def spread(self) -> float:
        """Width of the occupied node range (largest minus smallest weighted node)."""
        lo, hi = self.extremes()
        return hi - lo

    def extremes(self) -> tuple[float, float]:
        """Smallest and largest Ritz value over all runs (the outermost ones converge first)."""
        used = self.nodes[self.weights > 0] if np.any(self.weights > 0) else self.nodes
        return float(used.min()), float(used.max())

    def default_sigma(self) -> float:
        """Kernel width: 1% of the node spread (or of the largest magnitude if all coincide)."""
        lo, hi = self.extremes()
        scale = hi - lo if hi > lo else max(abs(lo), abs(hi), 1.0)
        return 0.01 * scale

    def default_grid(self, n_points: int = 1000, pad: float | None = None) -> np.ndarray:
        """Evenly spaced points over the node range widened by ``pad`` on each side
        (default ``6 * default_sigma()``, so the smoothed density integrates to ~1)."""
        lo, hi = self.extremes()
        pad = 6.0 * self.default_sigma() if pad is None else float(pad)
        return np.linspace(lo - pad, hi + pad, int(n_points))

    def density(self, grid: Any, sigma: float | None = None) -> np.ndarray:
        """The Gaussian-smoothed density :math:`\\hat\\phi_\\sigma` on ``grid`` (any shape)."""
        sigma = self.default_sigma() if sigma is None else float(sigma)
        if not sigma > 0:
            raise BasinscopeError(f"sigma must be a positive kernel width, got {sigma}")
        x = np.asarray(grid, dtype=float)
        flat = x.reshape(-1, 1)
        theta = self.nodes.reshape(1, -1)
        w = self.weights.reshape(1, -1) / self.num_runs
        kern = np.exp(-0.5 * ((flat - theta) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kern * w).sum(1).reshape(x.shape)

    @property
    def definition(self) -> str:
        """What the density is and how it is estimated."""
        return DEFINITION


def lanczos_tridiagonal(
    op: Any, v0: Tensor, steps: int, *, batch: int | None = None, progress: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Lanczos tridiagonalization from each column of ``v0`` (shape ``(n, R)``), in parallel.

    Full reorthogonalization (classical Gram-Schmidt, twice) against all earlier Lanczos
    vectors of the same run keeps the basis orthonormal in floating point, so no spurious
    "ghost" Ritz values appear. A run stops early when the residual norm drops below
    :data:`BREAKDOWN_RTOL` times the largest :math:`\\lVert Av_j\\rVert` so far (an
    invariant subspace: its quadrature is then exact for every polynomial). The columns of
    ``v0`` are normalized. Returns ``(alphas, betas, num_matvecs)`` with per-run diagonals
    of length :math:`j` and off-diagonals of length :math:`j-1`. ``progress``: a bar of the
    steps on stderr.
    """
    n, runs = v0.shape
    steps = min(int(steps), n)
    basis = torch.zeros(runs, steps, n, dtype=v0.dtype, device=v0.device)
    basis[:, 0] = (v0 / torch.linalg.vector_norm(v0, dim=0, keepdim=True)).T
    alphas: list[list[float]] = [[] for _ in range(runs)]
    betas: list[list[float]] = [[] for _ in range(runs)]
    scale = [0.0] * runs
    active = list(range(runs))
    matvecs = 0
    bar = progress_bar(total=steps, disable=not progress, desc="spectral density", unit="step")
    for j in range(steps):
        if not active:
            break
        bar.update(1)
        cur = basis[active, j].T  # (n, len(active))
        w_all = apply_columns(op, cur, batch or len(active))
        matvecs += len(active)
        still = []
        for c, r in enumerate(active):
            w = w_all[:, c]
            scale[r] = max(scale[r], float(torch.linalg.vector_norm(w)))
            a = float(w @ basis[r, j])
            alphas[r].append(a)
            prev = basis[r, : j + 1].T  # (n, j+1)
            for _ in range(2):
                w = w - prev @ (prev.T @ w)
            b = float(torch.linalg.vector_norm(w))
            if j + 1 < steps and b > BREAKDOWN_RTOL * scale[r]:
                betas[r].append(b)
                basis[r, j + 1] = w / b
                still.append(r)
        active = still
    bar.close()
    return [np.array(a) for a in alphas], [np.array(b) for b in betas], matvecs


def _quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    theta, y = np.linalg.eigh(t)
    w = y[0] ** 2
    return theta, w / w.sum()


def spectral_density(
    op: Any,
    *,
    num_runs: int = 4,
    lanczos_steps: int = 80,
    seed: int = 0,
    distribution: str = "rademacher",
    start_vectors: Tensor | np.ndarray | None = None,
    batch: int | None = None,
    progress: bool = False,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of ``op`` (see the module docstring).

    Each of the ``num_runs`` runs starts from an independent unit vector: Rademacher
    :math:`\\pm 1/\\sqrt n` or a normalized Gaussian (both satisfy
    :math:`\\mathbb E[vv^\\top] = I/n`), or the columns of ``start_vectors`` (shape
    ``(n, num_runs)``, normalized here). ``lanczos_steps`` is capped at :math:`n`. All
    runs advance together, one ``op.matmat`` block per step (in chunks of ``batch``
    columns, default all runs). Float64 with full reorthogonalization, as in
    Ghorbani et al. (2019, App. A), which the authors found necessary for accurate
    densities. ``progress``: a bar of the Lanczos steps on stderr.
    """
    if num_runs < 1:
        raise BasinscopeError(f"num_runs must be at least 1, got {num_runs}")
    if lanczos_steps < 1:
        raise BasinscopeError(f"lanczos_steps must be at least 1, got {lanczos_steps}")
    if distribution not in ("rademacher", "gaussian"):
        raise BasinscopeError(
            f"unknown start-vector distribution {distribution!r}: expected 'rademacher' or 'gaussian'"
        )
    dtype, device = _dtype_device(op)
    n = int(op.n)
    if start_vectors is None:
        gen = torch.Generator().manual_seed(seed)
        v0 = draw_probes(n, num_runs, distribution, gen, dtype, device)
    else:
        v0 = torch.as_tensor(start_vectors).to(dtype=dtype, device=device)
        if v0.ndim == 1:
            v0 = v0[:, None]
        if v0.shape != (n, num_runs):
            raise BasinscopeError(
                f"start_vectors must have shape (n, num_runs) = {(n, num_runs)}, got "
                f"{tuple(v0.shape)}; pass num_runs={v0.shape[-1]} or one column per run"
            )
        if bool((torch.linalg.vector_norm(v0, dim=0) == 0).any()):
            raise BasinscopeError(
                "start_vectors has a zero column; every start vector must be non-zero"
            )
        distribution = "given"
    steps = min(int(lanczos_steps), n)
    alphas, betas, matvecs = lanczos_tridiagonal(op, v0, steps, batch=batch, progress=progress)
    nodes = np.zeros((num_runs, steps))
    weights = np.zeros((num_runs, steps))
    for r, (a, b) in enumerate(zip(alphas, betas)):
        theta, w = _quadrature(a, b)
        j = len(theta)
        nodes[r, :j], weights[r, :j] = theta, w
        nodes[r, j:] = theta[-1]
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        num_runs=num_runs,
        lanczos_steps=steps,
        num_matvecs=matvecs,
        dimension=n,
        distribution=distribution,
        semantics=_semantics(op),
    )
