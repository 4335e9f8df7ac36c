"""Deflated power iteration, as PyHessian runs it: a BASELINE, not the recommended tool.

.. warning::

   Power iteration finds the eigenvalues of largest **magnitude** :math:`|\\lambda|`, which
   may be **negative**. PyHessian (Yao et al. 2020, ``hessian.eigenvalues``) runs it and
   reports the result as the "top eigenvalue"; away from a minimum, where the most negative
   Hessian eigenvalue can exceed the largest one in magnitude, that number is not the top
   of the spectrum at all. Its stopping rule (relative change of the Rayleigh quotient
   below ``tol=1e-3``) also stops long before the eigenvector has converged and leaves
   eigenvalue errors of ~0.1-1% on small networks. Use
   :func:`basinscope.curvature.lanczos.lanczos_eigenpairs` for the algebraic top or bottom
   with a residual-based stopping rule; this module is kept to compare against.

Algorithm (von Mises & Pollaczek-Geiringer 1929; PyHessian's variant): for the
:math:`i`-th pair, start from a seeded random unit vector and repeat

.. math::  v \\leftarrow \\frac{P_i v}{\\lVert P_i v\\rVert},\\quad
           \\lambda = v^\\top H v,\\quad v \\leftarrow \\frac{Hv}{\\lVert Hv\\rVert},

with :math:`P_i` the projection orthogonal to the eigenvectors found before (deflation by
orthogonalization, as PyHessian's ``orthnormal``); an inexact earlier vector leaves its
error in every later pair, whose residual cannot drop far below it. Stopping rules:

``rule="pyhessian"``  :math:`|\\lambda_t - \\lambda_{t-1}| / (|\\lambda_{t-1}| + 10^{-6}) <
                      \\mathrm{tol}` (PyHessian's ``eigenvalues(maxIter=100, tol=1e-3)``),
``rule="residual"``   :math:`\\lVert Hv - \\lambda v\\rVert \\le \\mathrm{tol}\\,|\\lambda|`
                      (the rule of the Lanczos solver, for a like-for-like comparison).

Each returned pair is the last vector :math:`v` that was multiplied and its Rayleigh
quotient; its residual :math:`\\lVert Hv - \\lambda v\\rVert` comes from that true product,
so no extra products are needed. (PyHessian itself returns the previous step's quotient
and the normalized :math:`Hv`.) ``converged`` applies the *residual* rule with ``tol`` to
every pair, whatever rule stopped the iteration: with ``rule="pyhessian"`` it is usually
False, which is the point. ``info["rule_met"]`` says whether the stopping rule fired
before ``max_iter``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from basinscope.curvature.lanczos import (
    FLOOR,
    Eigenpairs,
    _check_tol,
    _Products,
    _random_unit,
)
from basinscope.errors import BasinscopeError

__all__ = ["POWER_RULES", "power_iteration"]

POWER_RULES = ("pyhessian", "residual")


def power_iteration(
    op: Any,
    k: int = 1,
    *,
    rule: str = "pyhessian",
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    v0: Tensor | None = None,
) -> Eigenpairs:
    """Top-``k`` eigenpairs by MAGNITUDE by deflated power iteration (a baseline).

    This finds the eigenvalues of largest :math:`|\\lambda|` — possibly negative ones —
    exactly as PyHessian does; it is *not* the algebraic top of the spectrum. Kept as a
    baseline to compare :func:`~basinscope.curvature.lanczos.lanczos_eigenpairs` against
    (see the module docstring).

    Args:
        op: a symmetric operator with ``matvec(v)`` and ``n``.
        k: how many eigenpairs, found one after the other.
        rule: ``"pyhessian"`` (relative change of the eigenvalue below ``tol``) or
            ``"residual"`` (:math:`\\lVert Hv-\\lambda v\\rVert \\le \\mathrm{tol}|\\lambda|`).
        tol: tolerance of the rule (PyHessian's default 1e-3).
        max_iter: most products per eigenpair (PyHessian's default 100).
        seed: seed of the random start vectors (private generator).
        v0: optional start vectors, ``(n,)`` or ``(n, m)``: column ``i`` starts pair ``i``
            (random starts for the rest).

    Returns:
        :class:`Eigenpairs` with ``method="power"``, ``which="largest_magnitude"``,
        sorted by descending magnitude.
    """
    if rule not in POWER_RULES:
        raise BasinscopeError(
            f"unknown rule={rule!r}: expected 'pyhessian' (relative eigenvalue change, as "
            f"PyHessian) or 'residual' (||Hv - lambda v|| <= tol |lambda|)"
        )
    tol = _check_tol(tol)
    A = _Products(op)
    n = A.n
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise BasinscopeError(f"k must be an integer between 1 and n={n}, got {k!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise BasinscopeError(f"max_iter must be a positive integer, got {max_iter!r}")
    starts: list[Tensor] = []
    if v0 is not None:
        v0 = torch.as_tensor(v0).detach().to(dtype=torch.float64, device=A.device)
        block = v0[:, None] if v0.dim() == 1 else v0
        if block.dim() != 2 or block.shape[0] != n:
            raise BasinscopeError(
                f"v0 must be a vector of length {n} or an (n, m) block, got {tuple(v0.shape)}"
            )
        starts = list(block.T)
    gen = torch.Generator().manual_seed(seed)

    vecs: list[Tensor] = []
    vals, res, steps, met = [], [], [], []
    for i in range(k):
        v = starts[i] if i < len(starts) else _random_unit(n, gen, A.device)
        basis = torch.stack(vecs, 1) if vecs else None
        lam_old, fired = None, False
        for t in range(max_iter):
            if basis is not None:
                v = v - basis @ (basis.T @ v)
            vn = torch.linalg.vector_norm(v)
            if float(vn) == 0.0:  # e.g. v0 inside the span of the pairs found before
                v = _random_unit(n, gen, A.device)
                v = v - basis @ (basis.T @ v) if basis is not None else v
                vn = torch.linalg.vector_norm(v)
            v = v / vn
            hv = A.matvec(v)
            lam = float(v @ hv)
            r = float(torch.linalg.vector_norm(hv - lam * v))
            if rule == "pyhessian":
                fired = lam_old is not None and abs(lam - lam_old) / (abs(lam_old) + 1e-6) < tol
            else:
                fired = r <= tol * abs(lam)
            hn = float(torch.linalg.vector_norm(hv))
            if fired or t == max_iter - 1 or hn == 0.0:
                fired = fired or hn == 0.0
                break
            lam_old = lam
            v = hv / hn
        vecs.append(v)
        vals.append(lam)
        res.append(r)
        steps.append(t + 1)
        met.append(bool(fired))

    vals_a, res_a = np.array(vals), np.array(res)
    order = np.argsort(-np.abs(vals_a), kind="stable")
    vals_a, res_a = vals_a[order], res_a[order]
    floor = FLOOR * float(np.abs(vals_a).max())
    return Eigenpairs(
        eigenvalues=vals_a,
        eigenvectors=torch.stack([vecs[i] for i in order], 1),
        residuals=res_a,
        converged=res_a <= tol * np.maximum(np.abs(vals_a), floor),
        num_matvecs=A.count,
        iterations=sum(steps),
        which="largest_magnitude",
        tol=tol,
        method="power",
        semantics=A.semantics(),
        info={
            "rule": rule,
            "rule_formula": (
                "|lambda_t - lambda_(t-1)| / (|lambda_(t-1)| + 1e-6) < tol"
                if rule == "pyhessian"
                else "||Hv - lambda v|| <= tol |lambda|"
            ),
            "rule_met": [met[i] for i in order],
            "steps_per_pair": [steps[i] for i in order],
            "finds": "largest |lambda| (may be negative), deflated by orthogonalization",
            "residuals": "from the last product of each pair (no extra matvecs)",
            "seed": seed,
            "max_iter": max_iter,
            "start": "random" if v0 is None else f"v0 ({len(starts)} vectors)",
        },
    )
