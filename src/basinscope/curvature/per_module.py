"""Curvature per module: top eigenvalue and trace of each module's diagonal block.

For a module :math:`M` with parameters :math:`\\theta_M`, the block is the principal
sub-matrix of the curvature matrix :math:`C` (Hessian, GGN or empirical Fisher of the
full-dataset mean loss; see :mod:`basinscope.curvature.operators`):

.. math::  C_{MM} = \\frac{\\partial^2 L}{\\partial \\theta_M \\, \\partial \\theta_M^\\top}
           \\quad (\\text{Hessian; likewise } J_M^\\top H^\\ell J_M \\text{ for the GGN}),

with every other parameter held fixed. This is the **block-diagonal restriction**, not
the full matrix's eigenvectors projected onto the module: :math:`\\lambda_{\\max}(C_{MM})`
is in general smaller than :math:`\\lambda_{\\max}(C)` (Cauchy interlacing gives
:math:`\\lambda_{\\max}(C_{MM}) \\le \\lambda_{\\max}(C)`), while the block traces add
up exactly: :math:`\\sum_M \\operatorname{tr}(C_{MM}) = \\operatorname{tr}(C)` when the
modules partition the parameters. Per-layer Hessian spectra of this kind are studied e.g.
by Sankar et al. (2021), "A deeper look at the Hessian eigenspectrum of deep neural
networks and its applications to regularization" (AAAI), and by PyHessian's layer-wise
analysis (Yao et al. 2020).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from basinscope._progress import progress_bar
from basinscope.curvature.operators import EFOperator, GGNOperator, HessianOperator
from basinscope.curvature.trace import TraceEstimate, _semantics, hutchinson_trace
from basinscope.errors import BasinscopeError
from basinscope.result import Result

__all__ = ["OPERATORS", "ModuleCurvature", "module_blocks", "per_module_curvature"]

#: Curvature operators by name.
OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "ef": EFOperator}


@dataclass(frozen=True)
class ModuleCurvature(Result, kind="module_curvature"):
    """Curvature of one module's diagonal block (see the module docstring).

    ``parameters`` are the block's parameter names (as in ``named_parameters()``),
    ``num_params`` its dimension. ``top_*`` come from Lanczos (``None`` when not asked
    for); ``trace.method`` is ``"exact"`` for blocks small enough to form densely.
    """

    module: str
    num_params: int
    top_eigenvalue: float | None
    top_residual: float | None
    top_converged: bool | None
    trace: TraceEstimate | None
    parameters: tuple[str, ...] = ()

    @property
    def definition(self) -> str:
        """Which matrix the numbers are of (see the module docstring)."""
        return (
            "top eigenvalue and trace of the diagonal block C_MM of the module's parameters "
            "(the block-diagonal restriction, every other parameter fixed)"
        )


def module_blocks(model: nn.Module, modules: Sequence[str] | None = None) -> dict[str, list[str]]:
    """``{module name: its parameter names}``, the blocks :func:`per_module_curvature` uses.

    By default every module that directly owns parameters, with the parameters it owns
    (for leaf modules: all of them), so the blocks partition the model's parameters. A
    named module's block holds all parameters under it, its submodules' included. Shared
    (tied) parameters count once, under the name ``named_parameters()`` gives them.
    """
    names = [n for n, _ in model.named_parameters()]
    owner = {n: n.rpartition(".")[0] for n in names}
    if modules is None:
        blocks: dict[str, list[str]] = {}
        for n in names:
            blocks.setdefault(owner[n], []).append(n)
        if not blocks:
            raise BasinscopeError("the model has no parameters; there is no curvature to compute")
        return blocks
    available = dict(model.named_modules())
    blocks = {}
    for m in modules:
        if m not in available:
            listed = [k for k in available if k][:12]
            raise BasinscopeError(
                f"the model has no module {m!r}; modules are named as in named_modules(), "
                f"e.g. {listed}" + (" ..." if len(available) > 13 else "")
            )
        block = [n for n in names if m == "" or n.startswith(m + ".")]
        if not block:
            raise BasinscopeError(
                f"module {m!r} ({type(available[m]).__name__}) has no parameters; "
                "leave it out of modules="
            )
        blocks[m] = block
    return blocks


def _exact_trace(op: Any) -> TraceEstimate:
    dense = op.dense()
    return TraceEstimate(
        estimate=float(torch.diagonal(dense).sum()),
        std_error=0.0,
        ci_halfwidth=0.0,
        confidence=1.0,
        num_matvecs=int(op.n),
        num_samples=0,
        converged=True,
        method="exact",
        distribution="none",
        semantics=_semantics(op),
    )


def per_module_curvature(
    model: nn.Module,
    data: Any,
    *,
    modules: Sequence[str] | None = None,
    operator: str = "hessian",
    top: bool = True,
    trace: bool = True,
    tol: float = 1e-6,
    seed: int = 0,
    exact_trace_max_params: int = 2000,
    trace_rtol: float = 1e-2,
    trace_max_samples: int = 1000,
    progress: bool = False,
    **operator_kwargs: Any,
) -> list[ModuleCurvature]:
    """Top eigenvalue and trace of each module's diagonal curvature block.

    The block of module :math:`M` is :math:`C_{MM}`, the operator restricted to
    :math:`M`'s parameters (``params=`` of :mod:`basinscope.curvature.operators`): the
    **block-diagonal restriction**, not the full matrix's eigenvectors projected (see the
    module docstring). ``modules`` are names from ``named_modules()``; by default each
    module that owns parameters (the leaves, for ordinary models); see
    :func:`module_blocks`.

    * ``top``: the algebraically largest eigenvalue of :math:`C_{MM}` by Lanczos
      (:func:`basinscope.curvature.lanczos.lanczos_eigenpairs` with ``which="largest"``,
      ``tol`` and ``seed``), with its residual norm and convergence flag.
    * ``trace``: blocks with at most ``exact_trace_max_params`` parameters get the exact
      trace of the dense block (``method="exact"``, ``n`` products); larger ones
      Hutchinson's estimate (:func:`basinscope.curvature.trace.hutchinson_trace` with
      ``rtol=trace_rtol``, ``max_samples=trace_max_samples``, ``seed``).

    ``operator`` is ``"hessian"``, ``"ggn"`` or ``"ef"``; ``operator_kwargs`` go to its
    constructor (``task``, ``loss_fn``, ``batch_size``, ``subset``, ``weight_decay``,
    ``bn_mode``, ``dtype``, ``device``, ``method``, ...); a DataLoader is read again for
    every block. Results follow the order of ``modules``. ``progress``: a bar of the
    modules on stderr (named by the module being measured).
    """
    if operator not in OPERATORS:
        raise BasinscopeError(
            f"unknown curvature operator {operator!r}: expected one of {', '.join(OPERATORS)}"
        )
    if "params" in operator_kwargs:
        raise BasinscopeError(
            "per_module_curvature chooses the parameters of each block itself; "
            "pass modules=[...] instead of params="
        )
    if not (top or trace):
        raise BasinscopeError("nothing to compute: pass top=True, trace=True or both")
    lanczos_eigenpairs = None
    if top:
        from basinscope.curvature.lanczos import lanczos_eigenpairs
    cls = OPERATORS[operator]
    results = []
    blocks = module_blocks(model, modules)
    bar = progress_bar(total=len(blocks), disable=not progress, desc="per-layer", unit="module")
    for module, names in blocks.items():
        bar.set_postfix_str(module, refresh=False)
        op = cls(model, data, params=[glob.escape(n) for n in names], **operator_kwargs)
        top_value = top_residual = top_converged = None
        if lanczos_eigenpairs is not None:
            pairs = lanczos_eigenpairs(op, 1, which="largest", tol=tol, seed=seed)
            top_value = float(np.asarray(pairs.eigenvalues).ravel()[0])
            top_residual = float(np.asarray(pairs.residuals).ravel()[0])
            top_converged = bool(np.all(pairs.converged))
        estimate = None
        if trace:
            if op.n <= exact_trace_max_params:
                estimate = _exact_trace(op)
            else:
                estimate = hutchinson_trace(
                    op, rtol=trace_rtol, max_samples=trace_max_samples, seed=seed
                )
        results.append(
            ModuleCurvature(
                module=module,
                num_params=int(op.n),
                top_eigenvalue=top_value,
                top_residual=top_residual,
                top_converged=top_converged,
                trace=estimate,
                parameters=tuple(names),
            )
        )
        bar.update(1)
    bar.close()
    return results
