"""Extreme eigenpairs of a symmetric curvature operator by the Lanczos method.

:func:`lanczos_eigenpairs` returns the ``k`` *algebraically* largest (``which="largest"``)
or smallest (``which="smallest"``) eigenpairs; :func:`lanczos_both_ends` returns both ends
from one shared Krylov space. Unlike the power iteration that PyHessian runs (kept as
a baseline in :mod:`basinscope.curvature.power`), the top of the spectrum is never
confused with a negative eigenvalue of larger magnitude, and every eigenvalue comes with
the residual of its eigenvector and an honest converged flag.

Algorithm (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, 4th ed., §10.1-10.3).
From a unit start vector :math:`q_1`, the three-term recurrence

.. math::  \\beta_j q_{j+1} = H q_j - \\alpha_j q_j - \\beta_{j-1} q_{j-1},
           \\qquad \\alpha_j = q_j^\\top H q_j,

builds an orthonormal basis :math:`Q_m` of the Krylov space
:math:`\\mathcal K_m(H, q_1)` in which :math:`Q_m^\\top H Q_m = T_m` is tridiagonal. Every
new vector is reorthogonalized against *all* previous ones (two passes of classical
Gram-Schmidt in float64, "twice is enough"), so no spurious copies of converged Ritz
values appear. The Ritz values :math:`\\theta_i` and vectors
:math:`y_i = Q_m s_i` come from the eigendecomposition :math:`T_m s_i = \\theta_i s_i`
(``scipy.linalg.eigh_tridiagonal``), and since
:math:`H Q_m = Q_m T_m + \\beta_m q_{m+1} e_m^\\top`, each Ritz pair's residual is known
without another product:

.. math::  \\lVert H y_i - \\theta_i y_i \\rVert = |\\beta_m\\, s_{m,i}|.

The iteration stops, checked after every step once ``m >= k``, as soon as every wanted
Ritz pair satisfies

.. math::  |\\beta_m\\, s_{m,i}| \\le \\mathrm{tol} \\cdot
           \\max\\bigl(|\\theta_i|,\\; \\sqrt{\\varepsilon}\\, \\lVert T_m \\rVert\\bigr),

where the floor :math:`\\sqrt{\\varepsilon}\\lVert T_m\\rVert \\approx 1.5\\times 10^{-8}
\\lVert H\\rVert` only matters for (numerically) zero eigenvalues, which a purely relative
rule could never accept. The Ritz vectors are then formed and the residuals
*verified with k true products* (counted in ``num_matvecs``): the returned eigenvalues are
the Rayleigh quotients :math:`y_i^\\top H y_i`, the returned residuals are
:math:`\\lVert H y_i - \\theta_i y_i\\rVert` from those products (not the recurrence's
estimate), and ``converged`` applies the rule above to them.

Invariant subspaces (:math:`\\beta_m \\approx 0`, e.g. an exactly low-rank operator, or a
warm start spanned by exact eigenvectors) restart the recurrence from a seeded random
vector orthogonal to the basis (:math:`T` becomes block diagonal). A single start vector
sees only one copy of a repeated eigenvalue; the restarts find the missing copies: after
an invariant subspace, the run stops only when a further restarted block leaves the
wanted Ritz values unchanged (or, if that block does not break down, when its own
extreme Ritz pair has converged), or when the whole space is exhausted. On an operator
that never breaks down, copies of an eigenvalue of exact multiplicity may be missed, a
limit of every single-vector Krylov method.

Warm starts: ``v0`` may be a vector or an ``(n, m)`` block (e.g. the eigenvectors found at
the previous point of a training trajectory); the block is orthonormalized and its
columns are summed into the start vector, so the Krylov space contains all of them from
the first steps on. The steps saved grow with the start's accuracy: components of size
:math:`\\delta` outside the wanted eigenvectors need to be damped by
:math:`\\mathrm{tol}/\\delta` instead of :math:`\\mathrm{tol}`, so roughly a fraction
:math:`\\log\\delta / \\log\\mathrm{tol}` of a cold run's steps is saved for one vector (the
sharpness). With several vectors, one start vector must also separate them, which costs
extra steps when their eigenvalues are close: expect smaller savings for top-k than top-1.

Reproducibility: start and restart vectors come from a private
``torch.Generator().manual_seed(seed)`` (the global RNG is never touched) and the whole
computation runs in float64: the same seed gives bit-identical results on one machine.

Context: the same recurrence underlies stochastic Lanczos quadrature for spectral
densities (Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization
via Hessian Eigenvalue Density"; Yao et al. 2020, PyHessian).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from basinscope._progress import progress_bar
from basinscope.errors import BasinscopeError
from basinscope.result import Result, encode, tensors

__all__ = ["Eigenpairs", "lanczos_both_ends", "lanczos_eigenpairs"]

WHICH = ("largest", "smallest")
#: What each ``which`` of :class:`Eigenpairs` means.
WHICH_DEFINITIONS: dict[str, str] = {
    "largest": "the k algebraically largest eigenvalues of the operator, descending "
    "(a negative eigenvalue of larger magnitude is not among them)",
    "smallest": "the k algebraically smallest eigenvalues of the operator, ascending "
    "(the most negative first)",
    "largest_magnitude": "the k eigenvalues of largest |lambda|, by magnitude (what power "
    "iteration finds, e.g. PyHessian)",
}
BREAKDOWN = 1e-12  # beta_m <= BREAKDOWN * ||T_m|| is an invariant subspace
FLOOR = math.sqrt(np.finfo(np.float64).eps)  # |theta| floor of the stopping rule, x ||T||


@dataclass(frozen=True)
class Eigenpairs(Result, kind="eigenpairs"):
    """Eigenpairs of a symmetric operator, each with its residual and converged flag.

    Attributes:
        eigenvalues: float64, sorted: descending for ``which="largest"`` and
            ``"largest_magnitude"`` (by magnitude), ascending for ``"smallest"``.
        eigenvectors: ``(n, k)`` float64 tensor of unit columns, matching ``eigenvalues``
            (not part of :meth:`to_dict`; ``None`` in a result read back from its dict).
        residuals: :math:`\\lVert Hv - \\theta v\\rVert` of each pair, from a true product.
        converged: ``residual <= tol * max(|theta|, sqrt(eps) * ||H||)`` per pair.
        num_matvecs: operator products this call made (verification included).
        iterations: Lanczos steps (or power-iteration steps over all pairs).
        which: ``"largest"``, ``"smallest"`` or ``"largest_magnitude"`` (power iteration).
        tol: the tolerance of the converged flags.
        method: ``"lanczos"`` or ``"power"``.
        semantics: the operator's :attr:`semantics` (which loss, BN mode, dtype...).
        info: method details (stopping rule, restarts, how residuals were computed).
    """

    eigenvalues: np.ndarray
    eigenvectors: Tensor | None = tensors()
    residuals: np.ndarray
    converged: np.ndarray
    num_matvecs: int
    iterations: int
    which: str
    tol: float
    method: str = "lanczos"
    semantics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.eigenvalues)

    @property
    def relative_residuals(self) -> np.ndarray:
        return self.residuals / np.maximum(np.abs(self.eigenvalues), np.finfo(np.float64).tiny)

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    @property
    def definition(self) -> str:
        """Which eigenvalues these are (:data:`WHICH_DEFINITIONS`)."""
        return WHICH_DEFINITIONS.get(self.which, self.which)

    def to_dict(self) -> dict[str, Any]:
        """The fields (the eigenvectors left out) and the relative residuals."""
        return {**super().to_dict(), "relative_residuals": encode(self.relative_residuals)}

    @classmethod
    def from_dict(cls, data: Any, **tensor_fields: Any) -> Eigenpairs:
        """The eigenpairs of :meth:`to_dict` (``eigenvectors`` ``None`` unless given)."""
        return super().from_dict(data, **{"eigenvectors": None, **tensor_fields})  # type: ignore[return-value]


# -- operator access shared with power.py ---------------------------------------------------
class _Products:
    """Float64 products with ``op``, counted here (``op`` needs ``matvec`` and ``n``)."""

    def __init__(self, op: Any):
        if not callable(getattr(op, "matvec", None)) or not isinstance(getattr(op, "n", None), int):
            raise BasinscopeError(
                f"expected a symmetric operator with .matvec(v) and an integer .n (e.g. a "
                f"basinscope.curvature HessianOperator), got {type(op).__name__}"
            )
        self.op, self.n, self.count = op, op.n, 0
        self.device = torch.device(getattr(op, "device", "cpu"))

    def matvec(self, v: Tensor) -> Tensor:
        self.count += 1
        return self.op.matvec(v).to(dtype=torch.float64, device=self.device)

    def matmat(self, vs: Tensor) -> Tensor:
        self.count += vs.shape[1]
        if callable(getattr(self.op, "matmat", None)):
            out = self.op.matmat(vs)
        else:
            out = torch.stack([self.op.matvec(vs[:, i]) for i in range(vs.shape[1])], 1)
        return out.to(dtype=torch.float64, device=self.device)

    def semantics(self) -> dict[str, Any]:
        return dict(getattr(self.op, "semantics", None) or {})


def _random_unit(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    v = torch.randn(n, dtype=torch.float64, generator=gen).to(device)
    return v / torch.linalg.vector_norm(v)


def _warm_block(v0: Tensor, n: int, device: torch.device) -> Tensor:
    """``v0`` as an ``(n, m)`` float64 block with orthonormal columns."""
    v0 = torch.as_tensor(v0).detach().to(dtype=torch.float64, device=device)
    block = v0[:, None] if v0.dim() == 1 else v0
    if block.dim() != 2 or block.shape[0] != n or block.shape[1] < 1:
        raise BasinscopeError(
            f"v0 must be a vector of length {n} or an (n, m) block with n={n}, got shape "
            f"{tuple(v0.shape)}; pass e.g. a previous result's .eigenvectors"
        )
    if not bool(torch.isfinite(block).all()) or float(torch.linalg.matrix_norm(block)) == 0.0:
        raise BasinscopeError("v0 must be finite and nonzero")
    q, r = torch.linalg.qr(block)
    keep = torch.abs(torch.diagonal(r)) > 1e-10 * torch.abs(torch.diagonal(r)).max()
    return q[:, keep]


def _check_tol(tol: float) -> float:
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise BasinscopeError(f"tol must be a positive number, got {tol!r}")
    return float(tol)


def _orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    """``w`` minus its projection on the orthonormal columns of ``basis``, two CGS passes."""
    for _ in range(2):
        w = w - basis @ (basis.T @ w)
    return w


# -- the Lanczos iteration --------------------------------------------------------------------
def _wanted(theta: np.ndarray, k_top: int, k_bottom: int) -> np.ndarray:
    """Indices (into ascending ``theta``) of the top-k (descending), then the bottom-k."""
    m = len(theta)
    return np.concatenate([np.arange(m - 1, m - 1 - k_top, -1), np.arange(k_bottom)])


def _ritz(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (ascending) of the tridiagonal ``T`` with diagonal ``alphas``."""
    return eigh_tridiagonal(np.array(alphas), np.array(betas[: len(alphas) - 1]))


def _lanczos(
    op: Any,
    k_top: int,
    k_bottom: int,
    tol: float,
    max_iter: int | None,
    seed: int,
    v0: Tensor | None,
    progress: bool,
) -> tuple[Eigenpairs | None, Eigenpairs | None]:
    A = _Products(op)
    n, k = A.n, k_top + k_bottom
    tol = _check_tol(tol)
    if k < 1 or k > n:
        raise BasinscopeError(
            f"asked for {k} eigenpairs of an operator of dimension {n}: k must be between 1 and n"
        )
    max_iter = min(n, 300) if max_iter is None else int(max_iter)
    if max_iter < k:
        raise BasinscopeError(
            f"max_iter={max_iter} is smaller than the {k} eigenpairs asked for: Lanczos needs "
            f"at least k steps; pass max_iter >= {k} (default min(n, 300))"
        )
    max_iter = min(max_iter, n)
    gen = torch.Generator().manual_seed(seed)
    if v0 is None:
        q = _random_unit(n, gen, A.device)
        start = "random"
    else:
        block = _warm_block(v0, n, A.device)
        q = block.sum(1) / math.sqrt(block.shape[1])
        start = f"warm ({block.shape[1]} vector{'s' if block.shape[1] > 1 else ''})"

    basis = torch.empty(n, min(max_iter, 64), dtype=torch.float64, device=A.device)
    basis[:, 0] = q
    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples steps j and j+1; 0 after a restart
    anorm, seg0, restarts = 0.0, 0, 0
    snapshot: np.ndarray | None = None
    theta = s_mat = None
    stopped_by = "max_iter"
    bar = progress_bar(total=max_iter, disable=not progress, desc="lanczos")
    try:
        for j in range(max_iter):
            qj, qs = basis[:, j], basis[:, : j + 1]
            w = A.matvec(qj)
            hq_norm = float(torch.linalg.vector_norm(w))
            anorm = max(anorm, hq_norm)  # a lower bound on ||H||
            a = float(qj @ w)
            w = w - a * qj
            if j > 0 and betas[j - 1] != 0.0:
                w = w - betas[j - 1] * basis[:, j - 1]
            w = _orthogonalize(w, qs)
            b = float(torch.linalg.vector_norm(w))
            if BREAKDOWN * anorm < b < 1e-3 * hq_norm:  # digits cancelled: a third pass
                w = _orthogonalize(w, qs)
                b = float(torch.linalg.vector_norm(w))
            alphas.append(a)
            m = j + 1
            breakdown = b <= BREAKDOWN * anorm
            b_eff = 0.0 if breakdown else b
            bar.update(1)

            stop = False
            if m >= k:
                theta, s_mat = _ritz(alphas, betas)
                floor = FLOOR * float(np.abs(theta).max())
                scale = np.maximum(np.abs(theta), floor)
                est = np.abs(b_eff * s_mat[-1, :])
                idx = _wanted(theta, k_top, k_bottom)
                conv = bool(np.all(est[idx] <= tol * scale[idx]))
                wanted = theta[idx]
                same = snapshot is not None and bool(
                    np.all(np.abs(wanted - snapshot) <= tol * scale[idx])
                )
                if progress:
                    worst = float(np.max(est[idx] / np.maximum(scale[idx], np.finfo(float).tiny)))
                    bar.set_postfix(max_rel_res=f"{worst:.1e}", refresh=False)
                if m == n:
                    stop, stopped_by = True, "space exhausted"
                elif breakdown:
                    if conv and same:
                        stop, stopped_by = True, "converged (invariant subspace)"
                    snapshot = wanted
                elif conv and restarts == 0:
                    stop, stopped_by = True, "converged"
                elif conv and _segment_extremes_converged(
                    alphas[seg0:], betas[seg0 : m - 1], b, tol, floor, k_top, k_bottom
                ):
                    stop, stopped_by = True, "converged (after restart)"
            if stop or m == max_iter:
                break
            if breakdown:  # invariant subspace: restart orthogonally to the basis
                r = _orthogonalize(_random_unit(n, gen, A.device), qs)
                rn = float(torch.linalg.vector_norm(r))
                if rn < 1e-8:
                    stopped_by = "space exhausted"
                    break
                q = _orthogonalize(r / rn, qs)
                q = q / torch.linalg.vector_norm(q)
                betas.append(0.0)
                restarts, seg0 = restarts + 1, m
            else:
                betas.append(b)
                q = w / b
            if m == basis.shape[1]:  # grow the basis
                grown = basis.new_empty(n, min(2 * m, max_iter))
                grown[:, :m] = basis
                basis = grown
            basis[:, m] = q
    finally:
        bar.close()

    m = len(alphas)
    info = {
        "start": start,
        "stopped_by": stopped_by,
        "restarts": restarts,
        "reorthogonalization": "full, two passes of classical Gram-Schmidt (float64)",
        "stopping_rule": "Ritz residual |beta_m s_mi| <= tol * max(|theta_i|, sqrt(eps)*||T||)",
        "residuals": "true products H y_i (k extra matvecs); eigenvalues are y_i^T H y_i",
        "seed": seed,
        "max_iter": max_iter,
        "lanczos_matvecs": m,
    }
    # Ritz vectors of the wanted pairs, verified with true products
    idx = _wanted(theta, k_top, k_bottom)
    y = basis[:, :m] @ torch.as_tensor(s_mat[:, idx], dtype=torch.float64, device=A.device)
    y = y / torch.linalg.vector_norm(y, dim=0)
    hy = A.matmat(y)
    rq = (y * hy).sum(0)
    res = torch.linalg.vector_norm(hy - y * rq, dim=0).cpu().numpy()
    rq = rq.cpu().numpy()
    floor = FLOOR * float(np.abs(theta).max())
    semantics = A.semantics()

    def pack(sel: slice, which: str) -> Eigenpairs | None:
        vals, vecs, r = rq[sel], y[:, sel], res[sel]
        if len(vals) == 0:
            return None
        order = np.argsort(-vals if which == "largest" else vals, kind="stable")
        vals, r = vals[order], r[order]
        vecs = vecs[:, torch.as_tensor(order.copy(), device=A.device)]
        return Eigenpairs(
            eigenvalues=vals.copy(),
            eigenvectors=vecs.contiguous(),
            residuals=r.copy(),
            converged=r <= tol * np.maximum(np.abs(vals), floor),
            num_matvecs=A.count,
            iterations=m,
            which=which,
            tol=tol,
            method="lanczos",
            semantics=semantics,
            info={**info, "shared_with_other_end": k_top > 0 and k_bottom > 0},
        )

    return pack(slice(0, k_top), "largest"), pack(slice(k_top, k), "smallest")


def _segment_extremes_converged(
    alphas: list[float],
    betas: list[float],
    b: float,
    tol: float,
    floor: float,
    k_top: int,
    k_bottom: int,
) -> bool:
    """Has the segment since the last restart converged its own extreme Ritz pairs?"""
    theta, s = _ritz(alphas, betas)
    est = np.abs(b * s[-1, :])
    ok = est <= tol * np.maximum(np.abs(theta), floor)
    return bool((k_top == 0 or ok[-1]) and (k_bottom == 0 or ok[0]))


def lanczos_eigenpairs(
    op: Any,
    k: int = 1,
    which: str = "largest",
    *,
    tol: float = 1e-6,
    max_iter: int | None = None,
    seed: int = 0,
    v0: Tensor | None = None,
    progress: bool = False,
) -> Eigenpairs:
    """The ``k`` algebraically largest or smallest eigenpairs of a symmetric operator.

    Lanczos with full reorthogonalization (see the module docstring for the algorithm, the
    stopping rule and the references).

    Args:
        op: a symmetric operator with ``matvec(v)`` on float64 vectors of length ``op.n``
            (e.g. :class:`~basinscope.curvature.operators.HessianOperator`).
        k: how many eigenpairs.
        which: ``"largest"``: the k algebraically largest, descending (a negative eigenvalue
            of larger magnitude is *not* the top); ``"smallest"``: the k algebraically
            smallest, ascending (the most negative first). For both ends of the spectrum
            from one Krylov space use :func:`lanczos_both_ends`.
        tol: relative Ritz-residual tolerance: stop when every wanted pair has
            :math:`\\lVert Hy - \\theta y\\rVert \\le \\mathrm{tol}\\,|\\theta|`.
        max_iter: most Lanczos steps (default ``min(n, 300)``); when reached, the result is
            returned with ``converged`` False where the rule is not met (no exception).
        seed: seed of the start vector (and of restart vectors), from a private generator.
        v0: warm start: a vector ``(n,)`` or a block ``(n, m)``, e.g. the eigenvectors of
            the previous point of a trajectory.
        progress: show a tqdm bar on stderr.

    Returns:
        :class:`Eigenpairs` with residuals verified by ``k`` true products (counted).
    """
    if which not in WHICH:
        hint = " (use lanczos_both_ends for both ends)" if which == "both_ends" else ""
        raise BasinscopeError(
            f"unknown which={which!r}: expected 'largest' (algebraic top) or 'smallest' "
            f"(most negative first){hint}"
        )
    if isinstance(k, bool) or not isinstance(k, int):
        raise BasinscopeError(f"k must be a positive integer, got {k!r}")
    kt, kb = (k, 0) if which == "largest" else (0, k)
    top, bottom = _lanczos(op, kt, kb, tol, max_iter, seed, v0, progress)
    return top if which == "largest" else bottom  # type: ignore[return-value]


def lanczos_both_ends(
    op: Any,
    k_top: int = 1,
    k_bottom: int = 1,
    *,
    tol: float = 1e-6,
    max_iter: int | None = None,
    seed: int = 0,
    v0: Tensor | None = None,
    progress: bool = False,
) -> tuple[Eigenpairs, Eigenpairs]:
    """The ``k_top`` largest and ``k_bottom`` smallest eigenpairs from one Krylov space.

    One Lanczos run serves both ends: it stops when the wanted pairs at both ends satisfy
    the rule of :func:`lanczos_eigenpairs`. Both results report the *shared* run's
    ``num_matvecs`` and ``iterations`` (do not add them up).

    Returns:
        ``(top, bottom)``: ``top`` descending (``which="largest"``), ``bottom`` ascending
        (``which="smallest"``).
    """
    for name, v in (("k_top", k_top), ("k_bottom", k_bottom)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BasinscopeError(f"{name} must be a positive integer, got {v!r}")
    top, bottom = _lanczos(op, k_top, k_bottom, tol, max_iter, seed, v0, progress)
    assert top is not None and bottom is not None
    return top, bottom
