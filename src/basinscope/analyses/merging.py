"""Model merging on the loss landscape.

A base model :math:`\\theta_0` and :math:`K` models fine-tuned from it,
:math:`\\theta_1, \\dots, \\theta_K`, with task vectors :math:`\\tau_i = \\theta_i - \\theta_0`.
Every method returns one parameter point (formulas in :data:`MERGE_DEFINITIONS`):

``uniform``          the uniform soup :math:`\\frac1K \\sum_i \\theta_i` (Wortsman et al. 2022),
``task_arithmetic``  :math:`\\theta_0 + \\lambda \\sum_i \\tau_i` (Ilharco et al. 2023),
``ties``             trim each :math:`\\tau_i` to its top ``density`` fraction by magnitude,
                     elect a sign per parameter (the sign of the trimmed sum), take the mean
                     of the entries that agree with it: :math:`\\theta_0 + \\lambda\\tau_m`
                     (Yadav et al. 2023),
``dare``             drop each entry of :math:`\\tau_i` with probability ``drop_rate`` and
                     rescale the rest by :math:`1/(1-p)`, then task arithmetic (Yu et al. 2024),
``fisher``           :math:`\\sum_i F_i \\odot \\theta_i / \\sum_i F_i` with each model's
                     diagonal Fisher on its task's data (Matena & Raffel 2022),
``subspace``         the Fréchet mean in the task-vector subspace (EpiMer-style; Lu et al.,
                     *Model Merging on Loss Landscape: A Geometry Perspective*): ``U`` the
                     top-``rank`` right singular vectors of the task matrix
                     :math:`T = [\\tau_1; \\dots; \\tau_K]`, :math:`c_i = U^\\top \\tau_i`,
                     :math:`G_i = U^\\top H_i U` (``rank`` curvature-vector products per task
                     at :math:`\\theta_i`, never a full Hessian) and
                     :math:`c^* = (\\sum_i G_i)^{-1} \\sum_i G_i c_i`, merged
                     :math:`\\theta_0 + \\lambda U c^*`. ``geometry="flat"`` is
                     :math:`G_i = I` (the mean task vector projected on the subspace);
                     ``geometry="spectral"`` is the flat mean in a per-layer subspace: for
                     each weight matrix, the mean task matrix projected on the top-``rank``
                     left and right singular vectors of the stacked task matrices.

Buffers (BatchNorm statistics) of the merge are the mean of the fine-tuned models' floating
buffers; integer buffers are the base's. Hyper-parameters named in ``select`` are chosen
on validation data (one dataset per task) by ``select_metric``; the grid, each candidate's
scores and the choice are in the result.

:func:`merge_decomposition` splits the loss increase of a subspace merge per task into the
terms of the quadratic model at :math:`\\theta_i`: with
:math:`\\theta^* - \\theta_i = U(c^* - c_i) - r_i` (:math:`r_i` the part of :math:`\\tau_i`
outside the subspace),

.. math::

    \\tfrac12(\\theta^*-\\theta_i)^\\top H_i(\\theta^*-\\theta_i) =
    \\underbrace{\\tfrac12(c^*-c_i)^\\top G_i (c^*-c_i)}_{\\text{Fréchet variance}}
    \\; \\underbrace{-\\,(c^*-c_i)^\\top U^\\top H_i r_i}_{\\text{cross}}
    \\; + \\underbrace{\\tfrac12 r_i^\\top H_i r_i}_{\\text{residual energy}},

reported per rank for the curvature-aware and the flat merge next to the measured increase
:math:`L_i(\\theta^*) - L_i(\\theta_i)`. The curvature-aware :math:`c^*` minimises the sum of
the variance terms over the subspace, so its summed variance is never above the flat one's.

:func:`merge_plane` draws the merges on the plane through :math:`\\theta_0` and two task
models.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from basinscope.errors import BasinscopeError
from basinscope.geometry.params import check_same_keys, flatten, unflatten
from basinscope.result import Result, fmt, tensors
from basinscope.spec import EvalOptions, Spec, option, takes_spec

__all__ = [
    "CURVATURES",
    "GEOMETRIES",
    "MEANS",
    "MERGE_DEFINITIONS",
    "MERGE_METHODS",
    "SELECT_METRICS",
    "MergeDecomposition",
    "MergeDecompositionSpec",
    "MergeResult",
    "MergeSpec",
    "TaskSubspace",
    "dare_merge",
    "fisher_merge",
    "frechet_mean",
    "merge",
    "merge_all",
    "merge_decomposition",
    "merge_plane",
    "spectral_merge",
    "subspace_merge",
    "subspace_metrics",
    "task_arithmetic",
    "task_subspace",
    "task_vectors",
    "ties_merge",
    "uniform_soup",
]

ParamDict = dict[str, Tensor]

MERGE_METHODS = ("uniform", "task_arithmetic", "ties", "dare", "fisher", "subspace")
GEOMETRIES = ("curvature", "flat", "spectral")
CURVATURES = ("ggn", "hessian", "empirical_fisher")
PRECISIONS = ("float64", "float32")
FISHERS = ("empirical", "true")
MEANS = ("projected", "quadratic")
SELECT_METRICS = ("mean_accuracy", "worst_accuracy", "mean_loss")
HYPER = ("lam", "density", "drop_rate", "rank")
# which hyper-parameters each method has (the others are not recorded for it)
METHOD_HYPER = {
    "uniform": (),
    "task_arithmetic": ("lam",),
    "ties": ("lam", "density"),
    "dare": ("lam", "drop_rate"),
    "fisher": (),
    "subspace": ("lam", "rank"),
}
MERGE_DEFINITIONS = {
    "uniform": "theta = 1/K sum_i theta_i (uniform soup)",
    "task_arithmetic": "theta = theta_0 + lam * sum_i tau_i, tau_i = theta_i - theta_0",
    "ties": "theta = theta_0 + lam * tau_m; tau_m = disjoint mean of the top-density "
    "entries of each tau_i that agree with the elected sign sgn(sum_i trim(tau_i))",
    "dare": "theta = theta_0 + lam * sum_i m_i * tau_i / (1 - p), m_i ~ Bernoulli(1 - p)",
    "fisher": "theta = sum_i F_i * theta_i / sum_i F_i (elementwise; diagonal Fisher F_i of "
    "model i on task i; the uniform mean where every F_i is 0)",
    "subspace/curvature": "theta = theta_0 + lam * U c*, c* = (sum_i G_i)^-1 sum_i G_i c_i, "
    "c_i = U^T tau_i, G_i = U^T H_i U at theta_i, U = top-rank right singular vectors of "
    "[tau_1; ...; tau_K]",
    "subspace/curvature/quadratic": "theta = theta_0 + lam * U_r c*, c* = (sum_i G_i[:r,:r])^-1 "
    "sum_i G_i[:r,:] c_i: the minimiser of sum_i (theta - theta_i)^T H_i (theta - theta_i) "
    "over theta_0 + U_r c (c_i, G_i in the full task subspace U)",
    "subspace/flat": "theta = theta_0 + lam * U c*, c* = 1/K sum_i c_i (G_i = I)",
    "subspace/spectral": "theta = theta_0 + lam * tau*, per weight matrix tau* = P P^T "
    "(1/K sum_i tau_i) Q Q^T, P, Q the top-rank left/right singular vectors of the stacked "
    "task matrices; other parameters: the mean tau",
}
SELECT_HELP = (
    "Hyper-parameters chosen on the validation data (repeat): lam, density, drop_rate, rank; "
    "each over its grid (--lams, --densities, --drop-rates, --ranks)."
)


def _number_list(flag: str, kind: type, example: str) -> Any:
    """The command-line parser of a comma-separated list of numbers."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(t) for t in text.replace(",", " ").split())
        except ValueError:
            what = "integers" if kind is int else "numbers"
            raise BasinscopeError(
                f"{flag} must be comma-separated {what}, e.g. {flag} {example}; got {text!r}"
            ) from None
        if not values:
            raise BasinscopeError(f"{flag} needs at least one value, e.g. {flag} {example}")
        return values

    return parse


# -- parameter dicts ---------------------------------------------------------------------------
def _params(x: nn.Module | Mapping[str, Tensor], what: str) -> ParamDict:
    if isinstance(x, nn.Module):
        return {k: v.detach() for k, v in x.named_parameters()}
    if isinstance(x, Mapping):
        return {k: torch.as_tensor(v).detach() for k, v in x.items()}
    raise BasinscopeError(
        f"{what} must be an nn.Module or a parameter dict, got {type(x).__name__}"
    )


def _check_models(base: Mapping[str, Tensor], models: Sequence[Mapping[str, Tensor]]) -> None:
    if len(models) < 1:
        raise BasinscopeError(
            "merging needs at least one fine-tuned model (K >= 1), got none: pass the models "
            "fine-tuned from the base (--weights, repeated)"
        )
    for i, m in enumerate(models):
        check_same_keys(base, m, f"base model and fine-tuned model {i + 1}")


def _out(d: Mapping[str, Tensor], like: Mapping[str, Tensor]) -> ParamDict:
    return {k: d[k].to(like[k].dtype) for k in like}


def _d(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def task_vectors(
    base: nn.Module | Mapping[str, Tensor], models: Sequence[nn.Module | Mapping[str, Tensor]]
) -> list[ParamDict]:
    """:math:`\\tau_i = \\theta_i - \\theta_0` for every model (float64)."""
    b = _params(base, "base")
    ms = [_params(m, f"model {i + 1}") for i, m in enumerate(models)]
    _check_models(b, ms)
    return [{k: _d(m[k]) - _d(b[k]) for k in b} for m in ms]


def uniform_soup(models: Sequence[nn.Module | Mapping[str, Tensor]]) -> ParamDict:
    """The uniform soup :math:`\\frac1K \\sum_i \\theta_i`."""
    ms = [_params(m, f"model {i + 1}") for i, m in enumerate(models)]
    _check_models(ms[0] if ms else {}, ms)
    return _out({k: sum(_d(m[k]) for m in ms) / len(ms) for k in ms[0]}, ms[0])


def task_arithmetic(
    base: nn.Module | Mapping[str, Tensor],
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    lam: float = 1.0,
) -> ParamDict:
    """Task arithmetic :math:`\\theta_0 + \\lambda \\sum_i \\tau_i`."""
    b = _params(base, "base")
    taus = task_vectors(b, models)
    return _out({k: _d(b[k]) + lam * sum(t[k] for t in taus) for k in b}, b)


def _check_fraction(name: str, value: float, low_open: bool) -> None:
    ok = (0 < value <= 1) if low_open else (0 <= value < 1)
    if not ok:
        rng = "(0, 1]" if low_open else "[0, 1)"
        raise BasinscopeError(f"{name} must be in {rng}, got {value}")


def _trim(tau: Tensor, density: float) -> Tensor:
    """The top ``density`` fraction of ``tau``'s entries by magnitude (ties broken by
    position), the others zero."""
    k = max(1, math.ceil(density * tau.numel()))
    if k >= tau.numel():
        return tau.clone()
    keep = torch.topk(tau.abs(), k, sorted=False).indices
    out = torch.zeros_like(tau)
    out[keep] = tau[keep]
    return out


def ties_merge(
    base: nn.Module | Mapping[str, Tensor],
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    density: float = 0.2,
    lam: float = 1.0,
) -> ParamDict:
    """TIES-merging (Yadav et al. 2023): trim each task vector to its top ``density``
    fraction by magnitude (over all its parameters), elect the sign of each parameter as the
    sign of the sum of the trimmed vectors, and average the trimmed entries that agree with
    it (zero where none does): :math:`\\theta_0 + \\lambda \\tau_m`."""
    _check_fraction("density", density, low_open=True)
    b = _params(base, "base")
    keys = list(b)
    taus = [flatten(t, keys) for t in task_vectors(b, models)]
    trimmed = torch.stack([_trim(t, density) for t in taus])  # (K, n)
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    total = (trimmed * agree).sum(0)
    merged = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    tau_m = unflatten(merged, {k: b[k] for k in keys})
    return _out({k: _d(b[k]) + lam * tau_m[k] for k in keys}, b)


def dare_merge(
    base: nn.Module | Mapping[str, Tensor],
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    drop_rate: float = 0.9,
    lam: float = 1.0,
    seed: int = 0,
) -> ParamDict:
    """DARE (Yu et al. 2024): drop each entry of :math:`\\tau_i` with probability
    ``drop_rate``, rescale the kept ones by :math:`1/(1 - p)` (so the expectation is
    :math:`\\tau_i`), and add :math:`\\lambda` times their sum to the base. Task ``i``'s mask
    comes from a CPU generator seeded with ``seed + i`` over the parameters in order."""
    _check_fraction("drop_rate", drop_rate, low_open=False)
    b = _params(base, "base")
    keys = list(b)
    total = torch.zeros(sum(b[k].numel() for k in keys), dtype=torch.float64)
    for i, tau in enumerate(task_vectors(b, models)):
        flat = flatten(tau, keys).cpu()
        gen = torch.Generator().manual_seed(int(seed) + i)
        keep = torch.rand(flat.shape, generator=gen, dtype=torch.float64) >= drop_rate
        total += flat * keep / (1.0 - drop_rate)
    merged = unflatten(total, {k: b[k] for k in keys})
    return _out({k: _d(b[k]) + lam * merged[k].to(b[k].device) for k in keys}, b)


def fisher_merge(
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    fishers: Sequence[Mapping[str, Tensor]],
) -> ParamDict:
    """Fisher-weighted averaging (Matena & Raffel 2022):
    :math:`\\sum_i F_i \\odot \\theta_i / \\sum_i F_i`, elementwise with each model's diagonal
    Fisher (:func:`~basinscope.curvature.diagonal_fisher`); where every :math:`F_i` is zero
    the uniform mean."""
    ms = [_params(m, f"model {i + 1}") for i, m in enumerate(models)]
    _check_models(ms[0] if ms else {}, ms)
    if len(fishers) != len(ms):
        raise BasinscopeError(
            f"Fisher merging needs one Fisher per model: got {len(fishers)} for {len(ms)} models"
        )
    out = {}
    for k in ms[0]:
        fs = [_d(f[k]) for f in fishers]
        num = sum(f * _d(m[k]) for f, m in zip(fs, ms))
        den = sum(fs)
        mean = sum(_d(m[k]) for m in ms) / len(ms)
        out[k] = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), mean)
    return _out(out, ms[0])


# -- the task-vector subspace ---------------------------------------------------------------
@dataclass(frozen=True)
class TaskSubspace:
    """The task-vector subspace: ``basis`` (n, r) orthonormal columns over the flattened
    parameters (in ``keys`` order), ``coords`` (K, r) the :math:`c_i = U^\\top \\tau_i`,
    ``singular_values`` of the task matrix (all of them), ``residual_sq`` (K,)
    :math:`\\lVert \\tau_i - U c_i \\rVert^2` and ``tau_sq`` (K,) :math:`\\lVert\\tau_i\\rVert^2`."""

    keys: tuple[str, ...]
    basis: Tensor
    coords: Tensor
    singular_values: Tensor
    residual_sq: Tensor
    tau_sq: Tensor

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def truncate(self, rank: int) -> TaskSubspace:
        """The same subspace cut to its first ``rank`` directions."""
        residual = self.residual_sq + (self.coords[:, rank:] ** 2).sum(1)
        return TaskSubspace(
            self.keys,
            self.basis[:, :rank],
            self.coords[:, :rank],
            self.singular_values,
            residual,
            self.tau_sq,
        )


def numerical_rank(singular_values: Tensor) -> int:
    """How many singular values are above ``max(shape) * eps * s_max`` (at least 1)."""
    s = singular_values
    if s.numel() == 0 or float(s[0]) == 0:
        return 0
    tol = float(s[0]) * 1e-12
    return max(1, int((s > tol).sum()))


def task_subspace(
    base: nn.Module | Mapping[str, Tensor],
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    rank: int = 0,
) -> TaskSubspace:
    """The top-``rank`` right singular vectors of the task matrix
    :math:`T = [\\tau_1; \\dots; \\tau_K]` (``rank=0``: its numerical rank, at most K)."""
    b = _params(base, "base")
    keys = tuple(b)
    taus = torch.stack([flatten(t, keys) for t in task_vectors(b, models)])  # (K, n)
    _, s, vh = torch.linalg.svd(taus, full_matrices=False)
    full = numerical_rank(s)
    if full == 0:
        raise BasinscopeError(
            "every task vector is zero (the fine-tuned models equal the base): there is no "
            "subspace to merge in; check that --weights are the fine-tuned models"
        )
    if rank < 0 or rank > full:
        raise BasinscopeError(
            f"rank must be between 1 and the rank of the task vectors ({full}), got {rank}; "
            "use rank 0 for the full rank"
        )
    r = rank or full
    basis = vh[:r].T.contiguous()  # (n, r)
    coords = taus @ basis  # (K, r)
    tau_sq = (taus**2).sum(1)
    residual = (taus - coords @ basis.T).pow(2).sum(1)
    return TaskSubspace(keys, basis, coords, s, residual, tau_sq)


def frechet_mean(
    coords: Tensor, metrics: Tensor | None = None, *, rank: int = 0, mean: str = "projected"
) -> Tensor:
    """The metric-weighted Fréchet mean in the first ``rank`` directions of a nested basis.

    ``coords`` (K, R) are the :math:`c_i` in the full basis, ``metrics`` (K, R, R) the
    :math:`G_i` (``None``: :math:`G_i = I`, the mean of the cut coordinates); with
    :math:`A_i = G_i[:r, :r]`:

    ``projected``  :math:`c^* = (\\sum_i A_i)^{-1} \\sum_i A_i c_i[:r]`, the Fréchet mean of
                   the task vectors' projections (EpiMer's estimator),
    ``quadratic``  :math:`c^* = (\\sum_i A_i)^{-1} \\sum_i G_i[:r, :] c_i`, the exact
                   minimiser of :math:`\\sum_i (\\theta - \\theta_i)^\\top H_i (\\theta -
                   \\theta_i)` over :math:`\\theta = \\theta_0 + U_r c` (it also weighs the
                   parts of the :math:`\\tau_i` outside the cut subspace).

    Both are equal at full rank. A singular :math:`\\sum_i A_i` is solved by least squares
    (the minimum-norm solution)."""
    if mean not in MEANS:
        raise BasinscopeError(f"unknown mean {mean!r}: expected one of {', '.join(MEANS)}")
    c = coords.to(torch.float64)
    r = rank or c.shape[1]
    if metrics is None:
        return c[:, :r].mean(0)
    g = torch.as_tensor(metrics, dtype=torch.float64)
    if g.shape != (c.shape[0], c.shape[1], c.shape[1]):
        raise BasinscopeError(
            f"metrics must have shape (K, R, R) = {(c.shape[0], c.shape[1], c.shape[1])}, "
            f"got {tuple(g.shape)}"
        )
    g = 0.5 * (g + g.transpose(1, 2))
    lhs = g[:, :r, :r].sum(0)
    if mean == "projected":
        rhs = torch.einsum("kij,kj->i", g[:, :r, :r], c[:, :r])
    else:
        rhs = torch.einsum("kij,kj->i", g[:, :r, :], c)
    return torch.linalg.lstsq(lhs, rhs[:, None], driver="gelsd").solution[:, 0]


def subspace_merge(
    base: nn.Module | Mapping[str, Tensor],
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    *,
    rank: int = 0,
    metrics: Tensor | None = None,
    mean: str = "projected",
    lam: float = 1.0,
    subspace: TaskSubspace | None = None,
) -> tuple[ParamDict, Tensor, TaskSubspace]:
    """The Fréchet mean in the task-vector subspace cut to ``rank``:
    :math:`\\theta_0 + \\lambda U_r c^*` (:func:`frechet_mean`, with ``metrics`` of the
    full subspace, (K, R, R); ``None`` is the flat geometry). Returns the merged parameters,
    :math:`c^*` and the cut subspace."""
    b = _params(base, "base")
    sub = subspace if subspace is not None else task_subspace(b, models, 0)
    r = rank or sub.rank
    if r > sub.rank:
        raise BasinscopeError(
            f"rank must be at most the rank of the task vectors ({sub.rank}), got {r}"
        )
    c_star = frechet_mean(sub.coords, metrics, rank=r, mean=mean)
    cut = sub.truncate(r)
    delta = unflatten(cut.basis @ c_star, {k: b[k] for k in sub.keys})
    return _out({k: _d(b[k]) + lam * delta[k] for k in b}, b), c_star, cut


def spectral_merge(
    base: nn.Module | Mapping[str, Tensor],
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    *,
    rank: int = 0,
    lam: float = 1.0,
) -> ParamDict:
    """The flat Fréchet mean in a per-layer spectral subspace: for each parameter with two
    or more dimensions (read as a matrix ``(shape[0], -1)``), the mean task matrix
    projected as :math:`P P^\\top \\bar\\tau Q Q^\\top` on the top-``rank`` left singular
    vectors :math:`P` of :math:`[\\tau_1 \\mid \\dots \\mid \\tau_K]` and right singular
    vectors :math:`Q` of :math:`[\\tau_1; \\dots; \\tau_K]`; the mean task vector elsewhere
    (``rank=0``: no truncation)."""
    b = _params(base, "base")
    taus = task_vectors(b, models)
    out = {}
    for k, t0 in b.items():
        mats = [t[k] for t in taus]
        mean = sum(mats) / len(mats)
        if t0.dim() >= 2 and rank:
            ms = [m.reshape(t0.shape[0], -1) for m in mats]
            r = min(rank, ms[0].shape[0], ms[0].shape[1])
            p = torch.linalg.svd(torch.cat(ms, 1), full_matrices=False)[0][:, :r]
            q = torch.linalg.svd(torch.cat(ms, 0), full_matrices=False)[2][:r].T
            mean = (p @ (p.T @ mean.reshape(ms[0].shape) @ q) @ q.T).reshape(t0.shape)
        out[k] = _d(t0) + lam * mean
    return _out(out, b)


def _operator(curvature: str, model: nn.Module, data: Any, **kw: Any) -> Any:
    from basinscope.curvature import EFOperator, GGNOperator, HessianOperator

    cls = {"ggn": GGNOperator, "hessian": HessianOperator, "empirical_fisher": EFOperator}
    if curvature not in cls:
        raise BasinscopeError(
            f"unknown curvature {curvature!r}: expected one of {', '.join(CURVATURES)}"
        )
    if curvature == "hessian":
        kw.setdefault("method", "double-backward")
    return cls[curvature](model, data, **kw)


def _with_params(
    model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None
) -> nn.Module:
    """A copy of ``model`` holding ``params`` (and those of ``buffers`` it has)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in out.named_parameters():
            p.copy_(params[k].to(p.dtype))
        for k, b in out.named_buffers():
            if buffers is not None and k in buffers:
                b.copy_(buffers[k].to(b.dtype))
    return out


def subspace_metrics(
    model: nn.Module,
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    task_data: Sequence[Any],
    subspace: TaskSubspace,
    *,
    curvature: str = "ggn",
    examples: int | None = 256,
    task: Any = None,
    batch_size: int = 256,
    dtype: str | torch.dtype = "float64",
    device: str = "cpu",
    with_products: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor], list[Any]]:
    """:math:`G_i = U^\\top H_i U` (K, r, r) for every task: the curvature (``ggn``,
    ``hessian`` or ``empirical_fisher``) of task ``i``'s mean loss on ``task_data[i]``
    (its first ``examples`` examples, float64, BatchNorm in eval mode) at
    :math:`\\theta_i`, by ``r`` matrix-vector products per task, in ``dtype``. ``model`` gives the
    architecture (and the buffers). With ``with_products`` also the products
    :math:`H_i U` (n, r) and each task's operator."""
    if len(task_data) != len(models):
        raise BasinscopeError(
            f"the curvature metric needs one dataset per model: got {len(task_data)} "
            f"datasets for {len(models)} models"
        )
    gs, hus, ops = [], [], []
    for m, data in zip(models, task_data):
        mi = m if isinstance(m, nn.Module) else _with_params(model, m)
        op = _operator(
            curvature,
            mi,
            data,
            task=task,
            subset=examples,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
        )
        if tuple(op.names) != subspace.keys:
            raise BasinscopeError(
                "the model's parameters do not match the task vectors' "
                f"({len(op.names)} vs {len(subspace.keys)} tensors)"
            )
        basis = subspace.basis.to(device=op.device, dtype=op.dtype)
        hu = op.matmat(basis)  # (n, r)
        g = (basis.T @ hu).double()
        gs.append(0.5 * (g + g.T))
        hus.append(hu)
        ops.append(op)
    out = torch.stack(gs).cpu()
    return (out, hus, ops) if with_products else out


# -- the analysis ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MergeSpec(Spec):
    """Merge models fine-tuned from one base, with a named method (the formula is recorded).

    Methods: uniform (the mean of the fine-tuned models), task_arithmetic (θ0 + λ Σ τi,
    τi = θi − θ0), ties (trim each τi to its top --density fraction by magnitude, elect a
    sign per parameter, disjoint mean, θ0 + λ τm), dare (drop entries of τi with
    probability --drop-rate, rescale by 1/(1−p), then task arithmetic), fisher (Σ Fi θi / Σ
    Fi with each model's diagonal --fisher Fisher on its --task-data) and subspace (the
    Fréchet mean in the span of the task vectors cut to --rank by SVD: --geometry curvature
    weights each task by its --curvature Gi = Uᵀ Hi U at θi, c* = (Σ Gi)⁻¹ Σ Gi ci; flat is
    Gi = I; spectral is the flat mean in per-layer top-rank singular subspaces). --select
    chooses hyper-parameters on --val-data (one dataset per model) by --select-metric over
    their grids; the scores of every candidate are in the result. Buffers (BatchNorm
    statistics) of the merge are the mean of the fine-tuned models'.

    Library: ``merge(base, models, task_data=..., val_data=..., spec=MergeSpec(...))``; the
    fields are its keyword arguments.
    """

    kind: ClassVar[str] = "merge"

    method: str = option("task_arithmetic", "The merging method.", choices=MERGE_METHODS)
    lam: float = option(
        1.0, "λ: the scale of the merged task vector (task_arithmetic, ties, dare, subspace)."
    )
    density: float = option(
        0.2, "ties: the fraction of each task vector's entries kept.", low=0.0, high=1.0
    )
    drop_rate: float = option(
        0.9, "dare: the probability p of dropping a task-vector entry.", low=0.0, high=1.0
    )
    rank: int = option(0, "subspace: its rank (0: the rank of the task vectors, ≤ K).", low=0)
    geometry: str = option(
        "curvature", "subspace: the metric of the Fréchet mean.", choices=GEOMETRIES
    )
    curvature: str = option(
        "ggn", "subspace/curvature: the curvature Hi of each task.", choices=CURVATURES
    )
    mean: str = option(
        "projected",
        "subspace/curvature: projected (the Fréchet mean of the projected task vectors) or "
        "quadratic (the minimiser of the quadratic model in the cut subspace).",
        choices=MEANS,
    )
    fisher: str = option(
        "empirical", "fisher: empirical (at the labels) or true (expected).", choices=FISHERS
    )
    examples: int = option(
        256, "Examples of each task's data for the Fisher or the curvature.", low=1
    )
    select: tuple[str, ...] = option((), SELECT_HELP, choices=HYPER)
    lams: tuple[float, ...] = option(
        (0.2, 0.4, 0.6, 0.8, 1.0, 1.2),
        "The grid of λ for --select lam (default 0.2,0.4,0.6,0.8,1.0,1.2).",
        parse=_number_list("--lams", float, "0.3,0.6,1"),
        metavar="L1,L2,...",
    )
    densities: tuple[float, ...] = option(
        (0.1, 0.2, 0.5, 1.0),
        "The grid of densities for --select density (default 0.1,0.2,0.5,1.0).",
        parse=_number_list("--densities", float, "0.1,0.2,0.5"),
        metavar="D1,D2,...",
    )
    drop_rates: tuple[float, ...] = option(
        (0.0, 0.5, 0.9),
        "The grid of drop rates for --select drop_rate (default 0,0.5,0.9).",
        parse=_number_list("--drop-rates", float, "0,0.5,0.9"),
        metavar="P1,P2,...",
    )
    ranks: tuple[int, ...] = option(
        (),
        "The grid of ranks for --select rank (default 1..K).",
        parse=_number_list("--ranks", int, "1,2,4"),
        metavar="R1,...",
    )
    select_metric: str = option(
        "mean_accuracy",
        "What the selection maximises on --val-data (mean_loss: minimises).",
        choices=SELECT_METRICS,
    )
    seed: int = option(0, "dare: the seed of the drop masks.", low=0)
    dtype: str = option(
        "float64",
        "Precision of the Fisher, the curvature products and the validation (float32 or float64).",
        choices=PRECISIONS,
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N or mps.")
    batch_size: int = option(256, "Examples per forward pass.", low=1)

    def check(self) -> None:
        EvalOptions(device=self.device)  # an unavailable device, refused with the fix
        if self.density <= 0:
            raise BasinscopeError(f"{self.name_of('density')} must be in (0, 1], got 0")
        if self.drop_rate >= 1:
            raise BasinscopeError(f"{self.name_of('drop_rate')} must be in [0, 1), got 1")
        for name, grid, lo_open in (
            ("densities", self.densities, True),
            ("drop_rates", self.drop_rates, False),
        ):
            for v in grid:
                if (lo_open and not 0 < v <= 1) or (not lo_open and not 0 <= v < 1):
                    raise BasinscopeError(
                        f"{self.name_of(name)}: {v} is outside "
                        + ("(0, 1]" if lo_open else "[0, 1)")
                    )
        if any(r < 1 for r in self.ranks):
            raise BasinscopeError(
                f"{self.name_of('ranks')} must be at least 1, got {list(self.ranks)}"
            )
        useless = [s for s in self.select if s not in METHOD_HYPER[self.method]]
        if useless:
            raise BasinscopeError(
                f"{self.name_of('select')} {', '.join(useless)}: method {self.method} has "
                + (
                    f"hyper-parameters {', '.join(METHOD_HYPER[self.method])}"
                    if METHOD_HYPER[self.method]
                    else "no hyper-parameters"
                )
                + "; select only those"
            )
        for s, grid in (
            ("lam", self.lams),
            ("density", self.densities),
            ("drop_rate", self.drop_rates),
        ):
            if s in self.select and not grid:
                raise BasinscopeError(f"{self.name_of('select')} {s} needs a non-empty grid")


@dataclass(frozen=True)
class MergeResult(Result, kind="merge"):
    """A merge: the method, its formula, the hyper-parameters used (and how they were
    chosen), the per-task metrics of the merge on the validation data, and the merged
    parameters and buffers (``merged``, ``buffers``; stored as safetensors).

    ``subspace`` (method subspace): ``geometry``, ``rank``, ``singular_values`` of the task
    matrix, ``coords`` (K x rank, the ci), ``coefficients`` (c*), ``residual_fraction``
    (||ri||² / ||τi||² per task), and ``curvature`` for the curvature geometry."""

    method: str
    definition: str
    hyper: dict[str, float]
    labels: tuple[str, ...]
    selected: tuple[str, ...] = ()
    select_metric: str = ""
    selection: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    mean_accuracy: float | None = None
    worst_accuracy: float | None = None
    mean_loss: float | None = None
    subspace: dict[str, Any] = field(default_factory=dict)
    fisher: str = ""
    merged: ParamDict = tensors(default_factory=dict)
    buffers: ParamDict = tensors(default_factory=dict)
    spec: MergeSpec | None = None

    def to_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (the architecture) holding the merged parameters and buffers."""
        missing = sorted(set(dict(model.named_parameters())) - set(self.merged))
        if missing:
            raise BasinscopeError(
                f"the merged parameters do not fit this model: it has {missing[:5]} that the "
                "merge lacks; pass the architecture the merged models share"
            )
        return _with_params(model, self.merged, self.buffers)

    def summary(self) -> list[str]:
        """The method and its hyper-parameters, then each task's validation metrics."""
        hyper = ", ".join(f"{k}={fmt(v)}" for k, v in self.hyper.items()) or "none"
        chosen = (
            f" (chosen on validation by {self.select_metric} over {len(self.selection)} candidates)"
            if self.selected
            else ""
        )
        lines = [f"{self.method}: {hyper}{chosen}", f"  {self.definition}"]
        if self.metrics:
            lines.append(f"{'task':<20} {'loss':>10} {'accuracy':>10}")
            for t, m in self.metrics.items():
                lines.append(f"{t:<20} {fmt(m['loss']):>10} {fmt(m['accuracy']):>10}")
            lines.append(
                f"mean accuracy {fmt(self.mean_accuracy)}, worst {fmt(self.worst_accuracy)}"
            )
        return lines


def _labels(labels: Sequence[str] | None, k: int) -> tuple[str, ...]:
    if labels is None:
        return tuple(f"task{i + 1}" for i in range(k))
    labels = tuple(str(x) for x in labels)
    if len(labels) != k:
        raise BasinscopeError(f"labels: got {len(labels)} names for {k} models; give one per model")
    if len(set(labels)) != k:
        raise BasinscopeError(f"labels must be distinct, got {list(labels)}")
    return labels


def _merged_buffers(base: nn.Module, models: Sequence[Any]) -> ParamDict:
    bufs = {k: b.detach().clone() for k, b in base.named_buffers()}
    mods = [m for m in models if isinstance(m, nn.Module)]
    if not mods:
        return bufs
    for k, b in bufs.items():
        if b.is_floating_point():
            bufs[k] = sum(dict(m.named_buffers())[k].detach().double() for m in mods).to(
                b.dtype
            ) / len(mods)
    return bufs


def _score(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    accs = [v["accuracy"] for v in values.values()]
    losses = [v["loss"] for v in values.values()]
    return {
        "mean_accuracy": float(np.mean(accs)),
        "worst_accuracy": float(np.min(accs)),
        "mean_loss": float(np.mean(losses)),
    }


def _evaluate(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    val: Mapping[str, Any],
    task: Any,
    spec: Any,
) -> dict[str, dict[str, float]]:
    from basinscope.engine import evaluate_model

    vals = evaluate_model(
        _with_params(model, params, buffers),
        dict(val),
        metrics=("loss", "accuracy"),
        batch_size=spec.batch_size,
        dtype=spec.dtype,
        device=spec.device,
        task=task,
    )
    return {t: {"loss": vals[f"{t}_loss"], "accuracy": vals[f"{t}_accuracy"]} for t in val}


class _Merger:
    """What the methods share for one base and one set of models: task data, validation
    data, the Fisher diagonals and the subspace metrics (each computed once, on demand)."""

    def __init__(self, base, models, task_data, val_data, labels, task, spec: MergeSpec):
        if not isinstance(base, nn.Module):
            raise BasinscopeError(
                f"base must be an nn.Module (the architecture and θ0), got {type(base).__name__}"
            )
        self.base = base
        self.models = list(models)
        self.params0 = _params(base, "base")
        self.params = [_params(m, f"model {i + 1}") for i, m in enumerate(self.models)]
        _check_models(self.params0, self.params)
        self.labels = _labels(labels, len(self.models))
        for name, d in (("task_data", task_data), ("val_data", val_data)):
            if d is not None and len(d) != len(self.models):
                raise BasinscopeError(
                    f"{name}: got {len(d)} datasets for {len(self.models)} models; give one "
                    "per fine-tuned model, in the same order"
                )
        self.task_data = task_data
        self.val = dict(zip(self.labels, val_data)) if val_data is not None else None
        self.task = task
        self.spec = spec
        self.buffers = _merged_buffers(base, self.models)
        self._fishers: dict[str, list[ParamDict]] = {}
        self._subspace: TaskSubspace | None = None
        self._metrics: dict[str, Tensor] = {}

    def _need(self, what: str) -> Sequence[Any]:
        if self.task_data is None:
            raise BasinscopeError(
                f"{what} needs each task's data (task_data=, --task-data: one dataset per "
                "fine-tuned model)"
            )
        return self.task_data

    def fishers(self, kind: str) -> list[ParamDict]:
        if kind not in self._fishers:
            from basinscope.curvature.fisher import diagonal_fisher

            data = self._need("Fisher merging")
            self._fishers[kind] = [
                diagonal_fisher(
                    m if isinstance(m, nn.Module) else _with_params(self.base, m),
                    d,
                    fisher=kind,
                    task=self.task,
                    examples=self.spec.examples,
                    batch_size=self.spec.batch_size,
                    dtype=self.spec.dtype,
                    device=self.spec.device,
                )
                for m, d in zip(self.models, data)
            ]
        return self._fishers[kind]

    def subspace(self) -> TaskSubspace:
        if self._subspace is None:
            self._subspace = task_subspace(self.params0, self.params, 0)
        return self._subspace

    def metrics(self, curvature: str) -> Tensor:
        if curvature not in self._metrics:
            data = self._need("Curvature-aware merging (geometry curvature)")
            self._metrics[curvature] = subspace_metrics(  # type: ignore[assignment]
                self.base,
                self.models,
                data,
                self.subspace(),
                curvature=curvature,
                examples=self.spec.examples,
                task=self.task,
                batch_size=self.spec.batch_size,
                dtype=self.spec.dtype,
                device=self.spec.device,
            )
        return self._metrics[curvature]

    # one candidate --------------------------------------------------------------------
    def point(self, method: str, h: Mapping[str, float]) -> tuple[ParamDict, dict[str, Any]]:
        s = self.spec
        b, ms = self.params0, self.params
        if method == "uniform":
            return uniform_soup(ms), {}
        if method == "task_arithmetic":
            return task_arithmetic(b, ms, h["lam"]), {}
        if method == "ties":
            return ties_merge(b, ms, h["density"], h["lam"]), {}
        if method == "dare":
            return dare_merge(b, ms, h["drop_rate"], h["lam"], s.seed), {}
        if method == "fisher":
            return fisher_merge(ms, self.fishers(s.fisher)), {}
        rank = int(h["rank"])
        if s.geometry == "spectral":
            return spectral_merge(b, ms, rank=rank, lam=h["lam"]), {
                "geometry": "spectral",
                "rank": rank,
            }
        sub = self.subspace()
        g = self.metrics(s.curvature) if s.geometry == "curvature" else None
        merged, c_star, cut = subspace_merge(
            b, ms, rank=rank, metrics=g, mean=s.mean, lam=h["lam"], subspace=sub
        )
        info = {
            "geometry": s.geometry,
            "rank": cut.rank,
            "singular_values": sub.singular_values.tolist(),
            "coords": cut.coords.tolist(),
            "coefficients": c_star.tolist(),
            "residual_fraction": (cut.residual_sq / cut.tau_sq.clamp(min=1e-300)).tolist(),
        }
        if s.geometry == "curvature":
            info["curvature"] = s.curvature
            info["mean"] = s.mean
        return merged, info

    def default_hyper(self, method: str) -> dict[str, float]:
        s = self.spec
        full = {"lam": s.lam, "density": s.density, "drop_rate": s.drop_rate}
        if method == "subspace":
            full["rank"] = s.rank or (self.subspace().rank if s.geometry != "spectral" else 0)
        return {k: float(full[k]) for k in METHOD_HYPER[method]}

    def grid(self, method: str) -> list[dict[str, float]]:
        s = self.spec
        start = self.default_hyper(method)
        select = [x for x in s.select if x in METHOD_HYPER[method]]
        if not select:
            return [start]
        k = len(self.models)
        ranks = s.ranks or tuple(range(1, (k if s.geometry != "spectral" else max(k, 1)) + 1))
        grids = {"lam": s.lams, "density": s.densities, "drop_rate": s.drop_rates, "rank": ranks}
        values = [grids[x] for x in select]
        return [
            {**start, **dict(zip(select, map(float, combo)))}
            for combo in itertools.product(*values)
        ]

    def run(self, method: str) -> MergeResult:
        s = self.spec
        candidates = self.grid(method)
        selected = tuple(x for x in s.select if x in METHOD_HYPER[method])
        if selected and self.val is None:
            raise BasinscopeError(
                f"select {', '.join(selected)} chooses on validation data: pass val_data= "
                "(--val-data, one dataset per fine-tuned model)"
            )
        rows, best = [], None
        for h in candidates:
            merged, info = self.point(method, h)
            metrics = (
                _evaluate(self.base, merged, self.buffers, self.val, self.task, s)
                if self.val is not None
                else {}
            )
            score = _score(metrics) if metrics else {}
            rows.append({**h, **score})
            key = None
            if score:
                v = score[s.select_metric]
                key = -v if s.select_metric == "mean_loss" else v
            if best is None or (key is not None and key > best[0]):
                best = (key, h, merged, info, metrics, score)
        assert best is not None
        _, h, merged, info, metrics, score = best
        name = method if method != "subspace" else f"subspace/{s.geometry}"
        if name == "subspace/curvature" and s.mean == "quadratic":
            name += "/quadratic"
        return MergeResult(
            method=method,
            definition=MERGE_DEFINITIONS[name],
            hyper=dict(h),
            labels=self.labels,
            selected=selected,
            select_metric=s.select_metric if selected else "",
            selection=rows if selected else [],
            metrics=metrics,
            mean_accuracy=score.get("mean_accuracy"),
            worst_accuracy=score.get("worst_accuracy"),
            mean_loss=score.get("mean_loss"),
            subspace=info,
            fisher=s.fisher if method == "fisher" else "",
            merged=merged,
            buffers=self.buffers,
            spec=s.replace(method=method),
        )


@takes_spec(MergeSpec, forward=True)
def merge(
    base: nn.Module,
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    *,
    method: str = "task_arithmetic",
    task_data: Sequence[Any] | None = None,
    val_data: Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
    task: Any = None,
    **settings: Any,
) -> MergeResult:
    """Merge ``models`` (fine-tuned from ``base``) with ``method``; see the module docstring
    and :class:`MergeSpec` (every field is a keyword here: ``lam``, ``density``,
    ``drop_rate``, ``rank``, ``geometry``, ``curvature``, ``fisher``, ``examples``,
    ``select``, the grids, ``select_metric``, ``seed``, ``eval``).

    ``task_data`` (one dataset per model) is each task's data for the Fisher and the
    curvature metric; ``val_data`` (one per model) is where hyper-parameters are chosen and
    the merge's per-task metrics measured; ``labels`` names the tasks; ``task`` says how the
    model meets a batch (:class:`~basinscope.engine.Task`)."""
    spec = MergeSpec(method=method, **settings)
    return _Merger(base, models, task_data, val_data, labels, task, spec).run(method)


def merge_all(
    base: nn.Module,
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    *,
    methods: Sequence[str | tuple[str, dict[str, Any]]] = MERGE_METHODS,
    task_data: Sequence[Any] | None = None,
    val_data: Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
    task: Any = None,
    spec: MergeSpec | None = None,
    **settings: Any,
) -> dict[str, MergeResult]:
    """Every method in ``methods`` on the same models, sharing the Fisher diagonals, the
    subspace and its metrics. An entry may be ``(name, changes)``: a method with other
    settings (``("subspace", {"geometry": "flat"})``), stored under
    ``name`` + its geometry for the subspace (``"subspace/flat"``)."""
    base_spec = spec if spec is not None else MergeSpec(**settings)
    merger = _Merger(base, models, task_data, val_data, labels, task, base_spec)
    out = {}
    for entry in methods:
        name, changes = (entry, {}) if isinstance(entry, str) else entry
        # the grid-selection names a method lacks are dropped for it (matched budgets)
        select = changes.get("select", base_spec.select)
        s = base_spec.replace(
            **{
                **changes,
                "method": name,
                "select": tuple(x for x in select if x in METHOD_HYPER[name]),
            }
        )
        merger.spec = s
        key = name if name != "subspace" else f"subspace/{s.geometry}"
        out[key] = merger.run(name)
    return out


# -- the error decomposition ----------------------------------------------------------------
@dataclass(frozen=True)
class MergeDecompositionSpec(Spec):
    """The error decomposition of subspace merges per task and rank.

    The loss increase of the curvature-aware and the flat merge is split into the Fréchet
    variance inside the subspace, the residual energy outside it and their cross term (the
    quadratic model at each θi with the --curvature Hi), next to the measured increase
    Li(θ*) − Li(θi) on each task's data (--task-data).

    For the merge θ* = θ0 + U c* at rank r: variance = ½ (c* − ci)ᵀ Gi (c* − ci), residual =
    ½ riᵀ Hi ri (ri = τi − U ci), cross = −(c* − ci)ᵀ Uᵀ Hi ri, predicted = their sum
    (= ½ (θ* − θi)ᵀ Hi (θ* − θi)), measured = Li(θ*) − Li(θi) (first --examples examples of
    each task's data, float64, BatchNorm in eval mode). Costs K curvature-vector products
    per task in all (the bases of all ranks are nested).

    Library: ``merge_decomposition(base, models, task_data, spec=MergeDecompositionSpec())``.
    """

    kind: ClassVar[str] = "merge_decomposition"

    ranks: tuple[int, ...] = option(
        (),
        "Ranks of the subspace (default 1..rank of the task vectors).",
        parse=_number_list("--ranks", int, "1,2,4"),
        metavar="R1,...",
    )
    curvature: str = option("ggn", "The curvature Hi of each task.", choices=CURVATURES)
    mean: str = option(
        "projected",
        "The curvature-aware c*: projected (Fréchet mean of the projections) or quadratic.",
        choices=MEANS,
    )
    geometries: tuple[str, ...] = option(
        ("curvature", "flat"), "Merges compared (curvature, flat).", choices=("curvature", "flat")
    )
    examples: int = option(256, "Examples of each task's data.", low=1)
    dtype: str = option(
        "float64", "Precision of the curvature products and losses.", choices=PRECISIONS
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N or mps.")

    def check(self) -> None:
        EvalOptions(device=self.device)  # an unavailable device, refused with the fix


@dataclass(frozen=True)
class MergeDecomposition(Result, kind="merge_decomposition"):
    """The error decomposition of subspace merges: ``table`` has dims (geometry, rank,
    task) and variables variance, residual, cross, predicted, measured and
    residual_fraction (||ri||²/||τi||²), plus coefficients (geometry, rank, component)."""

    table: xr.Dataset
    curvature: str
    labels: tuple[str, ...]
    definition: str = (
        "predicted = variance + cross + residual = 1/2 (theta*-theta_i)^T H_i (theta*-theta_i); "
        "variance = 1/2 (c*-c_i)^T G_i (c*-c_i); residual = 1/2 r_i^T H_i r_i; "
        "cross = -(c*-c_i)^T U^T H_i r_i; measured = L_i(theta*) - L_i(theta_i)"
    )
    spec: MergeDecompositionSpec | None = None

    def summary(self) -> list[str]:
        """Per geometry and rank: the summed terms over tasks and the summed measured
        increase."""
        t = self.table
        lines = [
            f"{'geometry':<10} {'rank':>4} {'variance':>10} {'residual':>10} {'cross':>10} "
            f"{'predicted':>10} {'measured':>10}"
        ]
        for g in t.geometry.values:
            for r in t["rank"].values:
                row = t.sel(geometry=g, rank=r).sum("task")
                lines.append(
                    f"{g!s:<10} {int(r):>4} "
                    + " ".join(
                        f"{fmt(float(row[v])):>10}"
                        for v in ("variance", "residual", "cross", "predicted", "measured")
                    )
                )
        return lines


@takes_spec(MergeDecompositionSpec)
def merge_decomposition(
    base: nn.Module,
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    task_data: Sequence[Any],
    *,
    ranks: Sequence[int] = (),
    curvature: str = "ggn",
    mean: str = "projected",
    geometries: Sequence[str] = ("curvature", "flat"),
    examples: int = 256,
    dtype: str = "float64",
    device: str = "cpu",
    labels: Sequence[str] | None = None,
    task: Any = None,
) -> MergeDecomposition:
    """The error decomposition of the curvature-aware and flat subspace merges at each rank
    (see :class:`MergeDecompositionSpec`)."""
    b = _params(base, "base")
    ps = [_params(m, f"model {i + 1}") for i, m in enumerate(models)]
    _check_models(b, ps)
    names = _labels(labels, len(ps))
    sub = task_subspace(b, ps, 0)
    ranks = tuple(ranks) or tuple(range(1, sub.rank + 1))
    if bad := [r for r in ranks if not 1 <= r <= sub.rank]:
        raise BasinscopeError(
            f"ranks {bad} are outside 1..{sub.rank} (the rank of the task vectors)"
        )
    for g in geometries:
        if g not in ("curvature", "flat"):
            raise BasinscopeError(f"unknown geometry {g!r}: expected curvature or flat")
    gs, hus, ops = subspace_metrics(
        base,
        models,
        task_data,
        sub,
        curvature=curvature,
        examples=examples,
        task=task,
        dtype=dtype,
        device=device,
        with_products=True,
    )
    gs = gs.double()
    k, full = len(ps), sub.rank
    coords = sub.coords  # (K, full); tau_i = U c_i + r_full_i with r_full_i = 0 up to rounding
    shape = (len(geometries), len(ranks), k)
    out = {v: np.zeros(shape) for v in ("variance", "residual", "cross", "predicted", "measured")}
    frac = np.zeros(shape)
    coef = np.full((len(geometries), len(ranks), full), np.nan)
    base_loss = [float(op.empirical_loss.value()) for op in ops]
    for gi, geom in enumerate(geometries):
        for ri, r in enumerate(ranks):
            c_star = frechet_mean(coords, gs if geom == "curvature" else None, rank=r, mean=mean)
            coef[gi, ri, :r] = c_star.numpy()
            theta_star = flatten(b, sub.keys).double() + sub.basis[:, :r] @ c_star
            for i in range(k):
                d = c_star - coords[i, :r]
                hu = hus[i].cpu().double()
                var = 0.5 * float(d @ gs[i, :r, :r] @ d)
                # H_i r_i = H_i U[:, r:] c_i[r:]: the residual lies in the span of the
                # remaining directions (the task vectors' full subspace)
                tail = coords[i, r:]
                h_r = hu[:, r:] @ tail
                resid = 0.5 * float(tail @ (sub.basis[:, r:].T @ h_r))
                cross = float(d @ (sub.basis[:, :r].T @ h_r))
                # theta* - theta_i = U_r d - r_i, so the cross term is -2 * 1/2 * d^T U^T H r
                out["variance"][gi, ri, i] = var
                out["residual"][gi, ri, i] = resid
                out["cross"][gi, ri, i] = -cross
                out["predicted"][gi, ri, i] = var + resid - cross
                op = ops[i]
                out["measured"][gi, ri, i] = (
                    float(op.empirical_loss.value(theta_star.to(device=op.device, dtype=op.dtype)))
                    - base_loss[i]
                )
                frac[gi, ri, i] = float((tail**2).sum() / sub.tau_sq[i].clamp(min=1e-300))
    dims = ("geometry", "rank", "task")
    table = xr.Dataset(
        {
            **{v: (dims, a) for v, a in out.items()},
            "residual_fraction": (dims, frac),
            "coefficients": (("geometry", "rank", "component"), coef),
            "singular_values": (("component",), sub.singular_values[:full].numpy()),
        },
        coords={
            "geometry": list(geometries),
            "rank": list(ranks),
            "task": list(names),
            "component": np.arange(full),
        },
    )
    spec = MergeDecompositionSpec(
        ranks=tuple(ranks),
        curvature=curvature,
        mean=mean,
        geometries=tuple(geometries),
        examples=examples,
        dtype=dtype,
        device=device,
    )
    return MergeDecomposition(table=table, curvature=curvature, labels=names, spec=spec)


# -- the landscape plane ----------------------------------------------------------------------
def merge_plane(
    base: nn.Module,
    models: Sequence[nn.Module | Mapping[str, Tensor]],
    merged: Mapping[str, Mapping[str, Tensor] | MergeResult],
    data: Mapping[str, Any],
    *,
    i: int = 0,
    j: int = 1,
    n: int = 21,
    margin: float = 0.25,
    labels: Sequence[str] | None = None,
    task: Any = None,
    **kwargs: Any,
) -> Any:
    """The loss landscape on the plane through :math:`\\theta_0`, :math:`\\theta_i` and
    :math:`\\theta_j` (orthonormal axes, :func:`~basinscope.analyses.surface.plane_surface`),
    evaluated on every split of ``data`` (e.g. ``{task_i: val_i, task_j: val_j}``), with
    the merges projected onto it: ``dataset.attrs["merged_points"]`` is ``{name: [x, y,
    distance from the plane]}``, ``attrs["model_points"]`` the base's and the two models'
    coordinates with ``attrs["model_labels"]``. The axes cover every point plus
    ``margin`` of their span. ``kwargs`` go to the engine (``dtype``, ``batch_size``,
    ``bn_policy``, ``run_dir``, ...)."""
    from basinscope.analyses.surface import plane_surface
    from basinscope.geometry.directions import plane_through, project_onto_plane

    b = _params(base, "base")
    ps = [_params(m, f"model {q + 1}") for q, m in enumerate(models)]
    _check_models(b, ps)
    names = _labels(labels, len(ps))
    if not (0 <= i < len(ps) and 0 <= j < len(ps) and i != j):
        raise BasinscopeError(
            f"the plane needs two different models among 0..{len(ps) - 1}, got i={i}, j={j}"
        )
    dirs, pos = plane_through(b, ps[i], ps[j], True)
    points = {
        name: (m.merged if isinstance(m, MergeResult) else dict(m)) for name, m in merged.items()
    }
    proj = project_onto_plane(list(points.values()), b, dirs[0], dirs[1])
    xs = np.concatenate([pos[:, 0], proj.alpha])
    ys = np.concatenate([pos[:, 1], proj.beta])

    def axis(v: np.ndarray) -> np.ndarray:
        lo, hi = float(v.min()), float(v.max())
        span = (hi - lo) or 1.0
        return np.linspace(lo - margin * span, hi + margin * span, n)

    attrs = {
        "merged_points": {
            name: [float(x), float(y), float(dd)]
            for name, x, y, dd in zip(points, proj.alpha, proj.beta, proj.distance)
        },
        "model_points": pos.tolist(),
        "model_labels": ["base", names[i], names[j]],
    }
    land, _ = plane_surface(
        base,
        ps[i],
        ps[j],
        data,
        alphas=axis(xs),
        betas=axis(ys),
        task=task,
        attrs=attrs,
        **kwargs,
    )
    return land
