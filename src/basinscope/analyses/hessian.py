"""Hessian spectra of the full-dataset loss: both ends, trace, density, per layer.

One call gathers what users check a minimum by: the top-k and bottom-k eigenpairs by
Lanczos with a certified stopping rule (each eigenvalue with its true residual and a
converged flag), the trace by Hutch++ or Hutchinson with a confidence interval, the
spectral density by stochastic Lanczos quadrature, and per-module top eigenvalues and
traces. The loss semantics (operator, the task and its loss, BatchNorm mode, weight decay,
data size, HVP method, precision and device) are recorded in the result, so a number can
be trusted without reading the code. Any model and data the task adapter reads work:
dict or tuple inputs, keyword calls, logits in ``.logits`` or a dict, cross-entropy, MSE,
a user's loss or the model's own (Hessian only), data in memory or a streamed DataLoader
(:class:`~basinscope.curvature.loss.EmpiricalLoss`).

The curvature matrix is a named definition (``operator``), recorded with every result:

``hessian``  :math:`H = \\nabla^2 L(\\theta)`,
``ggn``      the generalized Gauss-Newton :math:`G = \\frac1N \\sum_n J_n^\\top H^\\ell_n J_n`
             (Schraudolph 2002; positive semi-definite for convex losses),
``ef``       the empirical Fisher :math:`F = \\frac1N \\sum_n g_n g_n^\\top`, :math:`g_n` the
             gradient of example :math:`n`'s loss (Kunstner et al. 2019 on its pitfalls).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from basinscope._checks import at_least, check_seed, positive_float
from basinscope.curvature.lanczos import Eigenpairs
from basinscope.curvature.loss import BN_MODES, HVP_METHODS, curvature_dtype
from basinscope.curvature.per_module import ModuleCurvature
from basinscope.curvature.slq import SpectralDensity
from basinscope.curvature.trace import TraceEstimate
from basinscope.engine.task import Task
from basinscope.errors import BasinscopeError
from basinscope.result import Result
from basinscope.spec import DTYPES, EvalOptions, Spec, option, takes_spec

__all__ = [
    "OPERATOR_DEFINITIONS",
    "TRACE_METHODS",
    "HessianReport",
    "HessianSpec",
    "hessian_analysis",
]

TRACE_METHODS = ("hutch++", "hutchinson", "exact", "none")
#: The curvature matrices, by the name of ``operator`` (see the module docstring).
OPERATOR_DEFINITIONS: dict[str, str] = {
    "hessian": "H = nabla^2 L(theta), L the mean loss over the examples",
    "ggn": "G = 1/N sum_n J_n^T H^l_n J_n, J_n the Jacobian of the outputs and H^l_n the "
    "loss Hessian in the outputs (generalized Gauss-Newton)",
    "ef": "F = 1/N sum_n g_n g_n^T, g_n the gradient of example n's loss (empirical Fisher)",
}
#: Most eigenpairs at one end: Lanczos keeps a full basis of n-vectors.
MAX_EIGENPAIRS = 1000


@dataclass(frozen=True)
class HessianSpec(Spec):
    """Hessian spectrum of the mean training loss: both ends, trace, density, per layer.

    Eigenpairs by Lanczos with full reorthogonalization, stopping when every wanted
    Ritz pair has ||Hv - theta v|| <= tol |theta|; each eigenvalue is reported with its
    true residual and a converged flag. "Top" means algebraically largest (not largest
    |lambda|); --bottom gives the most negative eigenvalues. The trace comes with a 95%
    confidence interval. Loss semantics (BatchNorm mode, weight decay, data size, HVP
    method) are printed and stored. With --map, the |lambda_min/lambda_max| map over a
    filter-normalized random plane instead (Li et al. 2018, Fig. 7), resumable like a
    surface; its result is that landscape, as for a surface.

    figures/hessian shows the eigenvalues (hollow: not converged) with the trace, and beside
    them the spectral density (--density) and the per-layer blocks (--per-layer). The
    eigenvectors are kept in RUN/tensors; with both ends the result also has ratio_min_max.
    Curvature is computed in float32 or float64 (mixed precision is for evaluating points).

    These are the settings of hessian_analysis() and hessian_map() (their spec=) and of
    basinscope hessian.
    """

    kind: ClassVar[str] = "hessian"

    split: str = option("train", "Which split's loss (train or test).")
    subset: int | None = option(None, "Use only the first N examples.", low=1)
    operator: str = option(
        "hessian",
        "hessian, ggn (Gauss-Newton) or ef (empirical Fisher).",
        choices=tuple(OPERATOR_DEFINITIONS),
    )
    k_top: int = option(3, "Number of largest eigenvalues.", flag="--top", low=0)
    k_bottom: int = option(
        1, "Number of smallest (most negative) eigenvalues.", flag="--bottom", low=0
    )
    tol: float = option(1e-6, "Ritz residual tolerance relative to |eigenvalue|.")
    max_iter: int | None = option(None, "Maximum Lanczos steps (default min(n, 300)).", low=1)
    trace: str = option("hutch++", "hutch++, hutchinson, exact or none.", choices=TRACE_METHODS)
    trace_rtol: float = option(1e-2, "Stop when the 95% CI half-width is below this fraction.")
    density: bool = option(
        False, "Also the spectral density (stochastic Lanczos quadrature).", flag="--density"
    )
    density_runs: int = option(4, "--density: independent Lanczos runs (start vectors).", low=1)
    density_steps: int = option(80, "--density: Lanczos steps per run (at most n).", low=1)
    per_module: bool = option(
        False, "Also the top eigenvalue and trace of each module's block.", flag="--per-layer"
    )
    weight_decay: float = option(0.0, "Include weight_decay/2 ||theta||^2 in the loss.", low=0.0)
    bn_mode: str = option(
        "eval",
        "BatchNorm: eval (stored statistics) or train (batch statistics).",
        choices=BN_MODES,
    )
    method: str = option(
        "auto",
        "auto, forward-over-reverse, reverse-over-forward or double-backward.",
        flag="--hvp",
        choices=HVP_METHODS,
    )
    dtype: str = option("float64", "float64 (default) or float32.", choices=DTYPES)
    device: str = option("cpu", "torch device, e.g. cpu or cuda.")
    batch_size: int = option(1024, "Examples per forward pass.", low=1)
    seed: int = option(0, "Seed of the Lanczos start vector and of the trace probes.")

    def __post_init__(self) -> None:
        curvature_dtype(self.dtype, self.name_of("dtype"))  # bfloat16 refused with why
        super().__post_init__()

    def check(self) -> None:
        why = " (Lanczos keeps a full basis; use --density for the whole spectrum)"
        for name in ("k_top", "k_bottom"):
            at_least(self.name_of(name), getattr(self, name), 0, high=MAX_EIGENPAIRS, high_why=why)
        tol = self.name_of("tol")
        positive_float(tol, self.tol, fix=f"e.g. {tol} 1e-6 (relative Ritz residual)")
        rtol = self.name_of("trace_rtol")
        positive_float(rtol, self.trace_rtol, fix=f"e.g. {rtol} 0.01")
        check_seed(self.name_of("seed"), self.seed)
        EvalOptions(device=self.device)  # the device exists here (named --device)


@dataclass(frozen=True)
class HessianReport(Result, kind="hessian"):
    """The results of :func:`hessian_analysis` (fields are ``None`` when not asked for).

    ``definition`` names what each number is (the curvature matrix, which eigenvalues, the
    trace estimator, ...); ``semantics`` which loss it is of (operator, the task with its
    loss in ``semantics["task"]``, BatchNorm mode, weight decay, data size, HVP method,
    precision, device, products made). The eigenvectors of ``top`` and
    ``bottom`` are kept with the run folder as tensors.
    """

    top: Eigenpairs | None = None
    bottom: Eigenpairs | None = None
    trace: TraceEstimate | None = None
    density: SpectralDensity | None = None
    per_module: list[ModuleCurvature] = field(default_factory=list)
    semantics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    definition: dict[str, str] = field(default_factory=dict)
    spec: HessianSpec | None = None

    def summary(self) -> list[str]:
        """The loss's semantics, each eigenvalue with its residual, the trace with its
        interval and each module's top eigenvalue and trace."""
        s = self.semantics
        loss = (s.get("task") or {}).get("loss", "cross_entropy")
        lines = [
            f"{s['operator']} of the {s['loss']} of {loss} over {s['num_examples']} examples; BatchNorm "
            f"{s['bn_mode']}; {s['dimension']} parameters; HVP {s['method']}; "
            f"{s['num_matvecs']} products, {self.seconds} s"
        ]
        for name, pairs in (("top", self.top), ("bottom", self.bottom)):
            if pairs is not None:
                for v, r, c in zip(pairs.eigenvalues, pairs.residuals, pairs.converged):
                    state = "converged" if c else "NOT converged"
                    lines.append(f"  {name:6} {v: .6e}  residual {r:.1e}  {state}")
        if self.trace is not None:
            t = self.trace
            lines.append(
                f"  trace  {t.estimate: .6e} ± {t.ci_halfwidth:.1e} ({t.method}, "
                f"{int(100 * t.confidence)}% CI)"
            )
        for m in self.per_module:
            trace = m.trace.estimate if m.trace else float("nan")
            lines.append(f"  {m.module:20} top {m.top_eigenvalue:.4e}  trace {trace:.4e}")
        return lines

    @property
    def ratio_min_max(self) -> float | None:
        """:math:`|\\lambda_{\\min} / \\lambda_{\\max}|` when both ends were computed."""
        if self.top is None or self.bottom is None:
            return None
        lmax, lmin = float(self.top.eigenvalues[0]), float(self.bottom.eigenvalues[0])
        return abs(lmin / lmax) if lmax else None

    def to_dict(self) -> dict[str, Any]:
        """The fields (eigenvectors left out), and ``ratio_min_max`` with both ends."""
        out = super().to_dict()
        if self.top is not None and self.bottom is not None:
            out["ratio_min_max"] = self.ratio_min_max
        return out

    def tensor_fields(self) -> dict[str, Any]:
        """The eigenvectors of ``top`` and ``bottom`` (``{"top": (n, k), ...}``)."""
        vecs = {
            end: pairs.eigenvectors
            for end in ("top", "bottom")
            if (pairs := getattr(self, end)) is not None and pairs.eigenvectors is not None
        }
        return {"eigenvectors": vecs} if vecs else {}

    @classmethod
    def from_dict(cls, data: Any, **tensor_fields: Any) -> HessianReport:
        """The report of :meth:`to_dict`, with the eigenvectors when they are given."""
        import dataclasses

        report = super().from_dict(data)
        vecs: dict[str, Tensor] = tensor_fields.get("eigenvectors") or {}
        ends = {
            end: dataclasses.replace(pairs, eigenvectors=vecs[end])
            for end in ("top", "bottom")
            if end in vecs and (pairs := getattr(report, end)) is not None
        }
        return dataclasses.replace(report, **ends) if ends else report  # type: ignore[return-value]


@takes_spec(HessianSpec)
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
    subset: int | None = None,
    batch_size: int = 1024,
    weight_decay: float = 0.0,
    bn_mode: str = "eval",
    method: str = "auto",
    dtype: torch.dtype | str = torch.float64,
    device: str = "cpu",
    task: Task | None = None,
    **operator_kwargs: Any,
) -> HessianReport:
    """Spectrum of the curvature of the mean loss of ``model`` on ``data``.

    Args:
        operator: ``"hessian"``, ``"ggn"`` (generalized Gauss-Newton) or ``"ef"`` (empirical
            Fisher); see :data:`OPERATOR_DEFINITIONS`.
        k_top, k_bottom: how many eigenpairs at each end (algebraic order: ``k_bottom``
            gives the most negative eigenvalues of an indefinite Hessian); 0 to skip an end.
        tol: Ritz-residual tolerance, :math:`\\lVert Hv - \\theta v\\rVert \\le tol\\,|\\theta|`.
        trace: ``"hutch++"``, ``"hutchinson"`` (stopping when the 95% CI half-width is at
            most ``trace_rtol`` of the estimate), ``"exact"`` (dense, tiny models) or ``"none"``.
        trace_kwargs: more options of the trace estimator, e.g. ``{"max_samples": 64}`` for
            Hutchinson (:func:`~basinscope.curvature.trace.hutchinson_trace`) or
            ``{"max_matvecs": 300}`` for Hutch++ (a budget when the tolerance is not met).
        density: also estimate the spectral density by stochastic Lanczos quadrature
            (``density_runs`` runs of ``density_steps`` steps).
        per_module: also the top eigenvalue and trace of each module's diagonal block.
        progress: show the Lanczos iterations, the trace's probes, the spectral density's
            steps and the per-layer blocks on stderr (bars on a terminal, plain lines in a
            log).
        subset, batch_size, weight_decay, bn_mode, dtype, device: the loss
            (:class:`~basinscope.curvature.loss.EmpiricalLoss`); ``dtype`` a torch dtype or
            ``"float32"``/``"float64"`` (mixed precision is refused); the operator, its
            products and Lanczos's basis live on ``device``.
        task: how the model is called on a batch and which loss
            (:class:`~basinscope.engine.task.Task`; default cross-entropy of ``model(x)``),
            recorded in ``semantics["task"]``; ``ggn`` and ``ef`` need a loss of the
            prediction (not ``Task(loss="model")``).
        method: how Hessian-vector products are formed (``operator="hessian"`` only).
        operator_kwargs: more options of the operator (``params``, or ``loss_fn`` instead
            of a task).

    Also takes ``spec=HessianSpec(...)`` for the settings (:func:`~basinscope.spec.takes_spec`).
    """
    from basinscope.curvature.lanczos import lanczos_both_ends, lanczos_eigenpairs
    from basinscope.curvature.per_module import OPERATORS, per_module_curvature
    from basinscope.curvature.slq import spectral_density
    from basinscope.curvature.trace import hutch_plus_plus_trace, hutchinson_trace

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
    torch_dtype = curvature_dtype(dtype)
    spec = HessianSpec(  # the settings as recorded (and checked, once, by the spec)
        subset=subset,
        operator=operator,
        k_top=k_top,
        k_bottom=k_bottom,
        tol=tol,
        max_iter=max_iter,
        trace=trace,
        trace_rtol=trace_rtol,
        density=density,
        density_runs=density_runs,
        density_steps=density_steps,
        per_module=per_module,
        weight_decay=weight_decay,
        bn_mode=bn_mode,
        method=method,
        dtype=str(torch_dtype).replace("torch.", ""),
        device=str(device),
        batch_size=batch_size,
        seed=seed,
    )
    t0 = time.perf_counter()
    loss_kwargs = dict(
        subset=subset,
        batch_size=batch_size,
        weight_decay=weight_decay,
        bn_mode=bn_mode,
        dtype=torch_dtype,
        device=device,
        task=task,
        **operator_kwargs,
    )
    if operator == "hessian":
        loss_kwargs["method"] = method
    op = OPERATORS[operator](model, data, **loss_kwargs)
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
        tr = hutch_plus_plus_trace(
            op, rtol=trace_rtol, seed=seed, progress=progress, **(trace_kwargs or {})
        )
    elif trace == "hutchinson":
        tr = hutchinson_trace(
            op, rtol=trace_rtol, seed=seed, progress=progress, **(trace_kwargs or {})
        )
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
            op,
            num_runs=density_runs,
            lanczos_steps=min(density_steps, op.n),
            seed=seed,
            progress=progress,
        )
    modules = []
    if per_module:
        kwargs = {k: v for k, v in loss_kwargs.items() if k != "params"}
        modules = per_module_curvature(
            model,
            data,
            operator=operator,
            tol=max(tol, 1e-6),
            seed=seed,
            trace_rtol=trace_rtol,
            progress=progress,
            **kwargs,
        )
    semantics = {**op.semantics, "num_matvecs": op.num_matvecs, "tol": tol, "seed": seed}
    parts: dict[str, Any] = {"top": top, "bottom": bottom, "trace": tr, "density": sd}
    definition = {"operator": f"{operator}: {OPERATOR_DEFINITIONS[operator]}"}
    definition.update({k: v.definition for k, v in parts.items() if v is not None})
    if modules:
        definition["per_module"] = modules[0].definition
    return HessianReport(
        top,
        bottom,
        tr,
        sd,
        modules,
        semantics,
        round(time.perf_counter() - t0, 3),
        definition=definition,
        spec=spec,
    )
