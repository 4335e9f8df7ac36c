"""Permutation alignment: weight matching, activation matching, REPAIR and the barrier they remove.

Two networks trained from different seeds sit in basins that a straight line between them
leaves (the loss barrier); permuting the hidden units of one to match the other often
removes most of it (Entezari et al. 2022; Ainsworth et al. 2023). Every permutation here
is a symmetry of the network (see :mod:`basinscope.analyses._permutation_spec` for how the
groups of axes that share one permutation are found), and every alignment is *verified*:
the permuted model's outputs must equal the original's (to ``1e-5`` relative to the
output scale), and the difference is recorded as ``max_output_diff``.

``weight_matching``      Git Re-Basin, Algorithm 1 (Ainsworth et al. 2023): coordinate
                         ascent on :math:`\\sum_\\ell \\langle W^A_\\ell, P_\\ell W^B_\\ell
                         P_{\\ell-1}^\\top\\rangle`, one group at a time in random order,
                         each a linear assignment problem, until no group improves.
``activation_matching``  per group, the assignment that maximizes the summed correlation
                         of matched units' activations on data (Li et al. 2016; Ainsworth
                         et al. 2023, Sec. 3.1).
``repair``               REPAIR (Jordan et al. 2023): rescale the interpolated network's
                         channels to the interpolated statistics of the endpoints.
``barrier_before_after`` the barrier (by default the linear one of Entezari et al. 2022)
                         on the line to the original and to the aligned model.
``align``                matching and the barriers before and after, as one analysis with
                         an :class:`AlignSpec` (what ``basinscope align`` runs).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.fx import Interpreter

from basinscope._checks import MAX_COUNT, MAX_POINTS, MAX_SEED
from basinscope.analyses._permutation_spec import (
    PermutationSpec,
    apply_permutation,
    permutation_spec,
    permute_tensor,
    random_permutation,
    traced_graph,
)
from basinscope.analyses.barrier import (
    BARRIER_DEFINITIONS,
    _check_definition,
    _select_split,
    barrier_definition_option,
    barrier_from_curve,
)
from basinscope.analyses.interpolation import interpolate
from basinscope.analyses.landscape import as_splits
from basinscope.engine import Task, as_batches, as_task
from basinscope.engine.bn import has_batchnorm
from basinscope.engine.fit import check_model_data
from basinscope.engine.task import batch_size_of, call_model, first_examples
from basinscope.errors import BasinscopeError
from basinscope.geometry import check_same_keys, get_params
from basinscope.inputs import ModelPair
from basinscope.result import Result, fmt, transient
from basinscope.spec import EvalOptions, Spec, group, option, takes_spec

__all__ = [
    "ALIGN_METHODS",
    "AlignModels",
    "AlignSpec",
    "AlignmentResult",
    "BarrierComparison",
    "PermutationSpec",
    "activation_matching",
    "align",
    "apply_permutation",
    "barrier_before_after",
    "linear_barrier",
    "permutation_spec",
    "random_permutation",
    "repair",
    "weight_matching",
]

TIE_BREAK = 1e-6
"""Weight of the pre-activation correlation that matches dead units in activation matching."""
OUTPUT_RTOL = 1e-5
"""Verification: max |f_B'(x) - f_B(x)| must be at most ``OUTPUT_RTOL * max(1, max |f_B(x)|)``."""


ALIGN_METHODS = ("weight", "activation")
METHOD_DEFINITIONS: dict[str, str] = {
    "weight_matching": "weight matching, Git Re-Basin Algorithm 1 (Ainsworth et al. 2023): "
    "coordinate ascent on sum_l <W_A_l, P_l W_B_l P_{l-1}^T>, one linear assignment per group",
    "activation_matching": "activation matching (Li et al. 2016; Ainsworth et al. 2023, Sec. "
    "3.1): per group, the assignment maximizing the summed correlation of matched units' "
    "activations",
}
EVAL_METRICS = ("loss", "error", "accuracy")


@dataclass(frozen=True)
class AlignSpec(Spec):
    """Permute the hidden units of model B to align it with model A, and the barrier it removes.

    --method weight: weight matching (Git Re-Basin, Ainsworth et al. 2023, Algorithm 1),
    coordinate ascent on the inner product of the weights, groups visited in a --seed order,
    at most --max-iter sweeps. --method activation: activation matching, the assignment that
    maximizes the correlation of matched units' activations over --num-examples inputs of
    --split. The permutations are symmetries of the network: the aligned model's outputs are
    checked against B's (max_output_diff). The barrier (--definition, default the linear one
    of Entezari et al. 2022) of --metric on --split is measured on the line A -> B and on the
    line A -> aligned B at --num-points alphas (figures/alignment). The aligned weights are
    saved as model.safetensors in the run folder and, with --save, at that path too.

    In the result, permutations[g][i] is the unit of B that becomes unit i in group g, and
    barrier holds the barriers before and after with both curves. In Python, this spec holds
    the settings of align().
    """

    kind: ClassVar[str] = "alignment"

    method: str = option("weight", "weight or activation matching.", choices=ALIGN_METHODS)
    max_iter: int = option(100, "weight: at most this many sweeps.", low=1, high=MAX_COUNT)
    seed: int = option(0, "weight: seed of the order of the groups.", low=0, high=MAX_SEED)
    num_examples: int = option(
        1024, "activation: inputs whose activations are matched.", low=1, high=MAX_COUNT
    )
    split: str = option("train", "Split for the barriers (and the activations).")
    num_points: int = option(11, "alphas on each line (at least 3).", low=3, high=MAX_POINTS)
    metric: str = option("loss", "loss, error or accuracy.", choices=EVAL_METRICS)
    definition: str = barrier_definition_option("linear")
    eval: EvalOptions = group(EvalOptions)

    def plan(self, labels: Sequence[str] = ("model_a", "model_b")) -> str:
        """What :func:`align` does with these settings, in one line (a command's progress
        line); ``labels`` name A and B."""
        return (
            f"{self.method} matching of {labels[1]} to {labels[0]}, then the barriers on the "
            f"lines to B and to aligned B ({self.num_points} points each) ..."
        )


@dataclass(frozen=True)
class AlignModels(ModelPair):
    """Model A and model B, whose units are permuted to match A's, given by name."""

    needs: ClassVar[str] = "align needs exactly two models"
    roles: ClassVar[str] = " (B is permuted to match A)"

    weights: tuple[Path, ...] = option((), "Weights of model A, then of model B (give it twice).")


@dataclass(frozen=True)
class BarrierComparison(Result, kind="barrier_comparison"):
    """The barrier between A and B before and after aligning B (:func:`barrier_before_after`).

    ``definition`` names the barrier (:data:`~basinscope.analyses.barrier.BARRIER_DEFINITIONS`,
    the formula in ``definition_formula``); ``curve_before``/``curve_after`` are ``metric`` on
    ``split`` at ``alphas`` along the lines A -> B and A -> aligned B.
    """

    before: float
    after: float
    metric: str
    split: str
    alphas: list[float]
    curve_before: list[float]
    curve_after: list[float]
    definition: str = "linear"
    definition_formula: str = BARRIER_DEFINITIONS["linear"]


@dataclass(frozen=True)
class AlignmentResult(Result, kind="alignment"):
    """Model B permuted to align with model A, and how it was found.

    ``permutations[g][i]`` is the unit of B that becomes unit ``i`` of the aligned model;
    ``objective`` is the matching objective after each sweep (weight matching) or the
    summed matched correlation per group (activation matching); ``permutation_spec`` the
    groups of units that share a permutation, ``definition`` the matching's. With
    :func:`align`, ``barrier`` compares the barriers before and after, ``spec`` holds the
    settings and ``labels`` name A and B. ``model`` (the aligned copy of B) is kept in
    memory only; ``aligned_weights`` lists the files it was written to (by the command).
    ``task`` records how the models were run (:meth:`basinscope.engine.Task.describe`;
    ``None`` in results of older versions).
    """

    method: str
    permutations: dict[str, list[int]]
    iterations: int
    objective: list[float]
    max_output_diff: float
    permutation_spec: PermutationSpec
    definition: str = ""
    barrier: BarrierComparison | None = None
    labels: tuple[str, str] = ("model_a", "model_b")
    aligned_weights: tuple[str, ...] = ()
    spec: AlignSpec | None = None
    task: dict[str, Any] | None = None
    model: nn.Module | None = transient(default=None)

    def summary(self) -> list[str]:
        """Units moved, the output check, the barriers before and after, the files written."""
        moved = sum(
            int(np.sum(np.asarray(p) != np.arange(len(p)))) for p in self.permutations.values()
        )
        lines = [
            f"{self.method}: {moved} units moved in {len(self.permutations)} groups, "
            f"{self.iterations} iteration(s); outputs unchanged up to {self.max_output_diff:.2e}"
        ]
        b = self.barrier
        if b is not None:
            lines.append(
                f"{b.definition} barrier of the {b.metric} on {b.split}: before {fmt(b.before)}, "
                f"after {fmt(b.after)}"
            )
        if self.aligned_weights:
            lines.append("aligned weights: " + ", ".join(self.aligned_weights))
        return lines


# -- helpers --------------------------------------------------------------------------------


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


def _plain(task: Task | None) -> Task:
    """The task that gives the model its inputs only: with the model's own loss, the
    labels stay out of the inputs (activations and outputs are compared, not losses)."""
    task = as_task(task)
    return dataclasses.replace(task, loss="cross_entropy") if task.model_loss else task


def _cat(xs: list[Any]) -> Any:
    first = xs[0]
    if isinstance(first, dict):
        return {k: torch.cat([x[k] for x in xs]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat([x[i] for x in xs]) for i in range(len(first)))
    return torch.cat(xs)


def _inputs(data: Any, num_examples: int, task: Task | None = None) -> Any:
    """The first ``num_examples`` inputs of ``data`` (a tensor, TensorData, (x, y), a dict
    of tensors, a loader: read only as far as needed), as the model takes them (a tensor,
    a tuple, or a dict of keyword inputs, split by ``task``)."""
    if isinstance(data, Tensor):
        return data[:num_examples]
    got, n = [], 0
    source = next(iter(as_splits(data).values()))
    for x, _ in as_batches(source, batch_size=num_examples, task=_plain(task)):
        got.append(x)
        n += batch_size_of(x)
        if n >= num_examples:
            break
    return first_examples(_cat(got), num_examples)


def _verify(
    original: nn.Module,
    aligned: nn.Module,
    x: Any,
    spec: PermutationSpec,
    task: Task | None = None,
) -> float:
    """Max |f_aligned(x) - f_original(x)| of the predictions; raises if it exceeds the
    tolerance."""
    task = _plain(task)
    with _eval_mode(original, aligned):
        ref = task.prediction(call_model(original, x))
        out = task.prediction(call_model(aligned, x))
    diff = float((out - ref).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if not diff <= OUTPUT_RTOL * scale:
        msg = (
            f"the permuted model's outputs differ from the original's by {diff:.3g} "
            f"(tolerance {OUTPUT_RTOL * scale:.3g}): the permutation is not a symmetry."
        )
        if spec.origin == "hand-written":
            raise BasinscopeError(
                msg + " The hand-written spec misses or mislabels an axis: every tensor "
                "that reads or carries a permuted channel must be in its group."
            )
        raise RuntimeError(
            msg + " This is a bug in basinscope's permutation-spec discovery; please report "
            "it with the model's definition."
        )
    return diff


def _rows(t: Tensor, axis: int, n: int) -> Tensor:
    """``t`` as an ``(n, -1)`` matrix whose row ``i`` holds everything of channel ``i``."""
    return t.movedim(axis, 0).reshape(n, -1)


def _spec_for(
    model: nn.Module, spec: PermutationSpec | None, x: Any, task: Task | None = None
) -> PermutationSpec:
    # the inputs must fit the model before torch.fx traces it with them
    labels = torch.zeros(batch_size_of(x), dtype=torch.long)
    check_model_data(model, [(x, labels)], classification=False, task=_plain(task))
    return spec if spec is not None else permutation_spec(model, x)


def _result(method, spec, perms, model_b, x, iterations, objective, task=None) -> AlignmentResult:
    aligned = apply_permutation(model_b, spec, perms)
    diff = _verify(model_b, aligned, x, spec, task)
    return AlignmentResult(
        method=method,
        permutations={g: p.tolist() for g, p in perms.items()},
        model=aligned,
        iterations=iterations,
        objective=[float(v) for v in objective],
        max_output_diff=diff,
        permutation_spec=spec,
        definition=METHOD_DEFINITIONS[method],
        task=as_task(task).describe(),
    )


# -- weight matching -------------------------------------------------------------------------


def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: PermutationSpec | None = None,
    *,
    example_input: Any,
    max_iter: int = 100,
    seed: int = 0,
    task: Task | None = None,
) -> AlignmentResult:
    """Permute ``model_b`` to maximize its parameters' inner product with ``model_a``'s.

    Git Re-Basin, Algorithm 1 (Ainsworth et al. 2023): starting from identities, visit the
    groups in a random order (``seed``); for group :math:`g` solve

    .. math::  \\max_{P_g} \\sum_{(W, a) \\in g} \\langle W^A_{(a)},\\,
               P_g W^B_{(a), \\text{others permuted}} \\rangle

    with :func:`scipy.optimize.linear_sum_assignment` (the cost is
    :math:`\\sum W^A_{(a)} (W^B_{(a)})^\\top` over the parameters touching :math:`g`, axis
    :math:`a` first, the other axes of :math:`W^B` permuted by the current permutations);
    stop after a sweep in which no group improves, or after ``max_iter`` sweeps. Only
    parameters enter the objective (BatchNorm running statistics are permuted along). The
    cost is accumulated in float64 on the CPU. ``example_input`` (a few real inputs: a
    tensor, a tuple, or a dict of keyword inputs) is used to find the spec and to verify
    the result; ``task`` says how the model is called and where its prediction is in its
    output (:class:`~basinscope.engine.Task`).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise BasinscopeError(f"max_iter must be a positive integer, got {max_iter!r}.")
    spec = _spec_for(model_a, spec, example_input, task)
    check_same_keys(get_params(model_a), get_params(model_b))
    pa = {k: v.detach().double().cpu() for k, v in model_a.named_parameters()}
    pb = {k: v.detach().double().cpu() for k, v in model_b.named_parameters()}
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    names = [k for k in spec.axes if k in pa]

    def objective() -> float:
        return sum(float((pa[k] * permute_tensor(pb[k], spec.axes[k], perms)).sum()) for k in names)

    rng = np.random.default_rng(seed)
    history = [objective()]
    order = list(spec.groups)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        improved = False
        for i in rng.permutation(len(order)):
            g, n = order[i], spec.sizes[order[i]]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis, _ in spec.groups[g]:
                if name not in pa:
                    continue
                wb = permute_tensor(pb[name], spec.axes[name], perms, skip=axis)
                cost += _rows(pa[name], axis, n) @ _rows(wb, axis, n).T
            c = cost.numpy()
            _, col = linear_sum_assignment(c, maximize=True)
            old = c[np.arange(n), perms[g].numpy()].sum()
            new = c[np.arange(n), col].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[g] = torch.as_tensor(col, dtype=torch.long)
                improved = True
        history.append(objective())
        if not improved:
            break
    return _result(
        "weight_matching", spec, perms, model_b, example_input, iterations, history, task
    )


# -- activation matching ----------------------------------------------------------------------


class _SiteRecorder(Interpreter):
    """Runs a traced graph and keeps the outputs of the named nodes."""

    def __init__(self, model: nn.Module, sites: set[str], x: Any) -> None:
        gm, self.args = traced_graph(model, x)  # keyword inputs: the graph's placeholders
        super().__init__(gm)
        self.sites, self.seen = sites, {}
        missing = sites - {n.name for n in self.graph.nodes}
        if missing:
            raise BasinscopeError(
                f"graph nodes {sorted(missing)} of the spec are not in the traced "
                f"{type(model).__name__}: were the two models built with the same architecture?"
            )

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.sites:
            self.seen[n.name] = out
        return out

    def record(self) -> dict[str, Tensor]:
        self.seen = {}
        self.run(*self.args)
        return self.seen


def _record(
    model: nn.Module, spec: PermutationSpec, x: Any
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Outputs at the spec's activation sites, and outputs of its producer modules."""
    sites = {s[0] for v in spec.activation_sites.values() for s in v}
    hooked = {p for v in spec.producers.values() for p in v}
    if spec.site_kind == "module":
        hooked |= sites
    seen: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[s].register_forward_hook(lambda m, i, o, s=s: seen.setdefault(s, o))
        for s in sorted(hooked)
    ]
    try:
        if spec.site_kind == "fx":
            return _SiteRecorder(model, sites, x).record(), seen
        call_model(model, x)  # model(x), model(*x) or model(**x): hooks see every call
        return seen, seen
    finally:
        for h in handles:
            h.remove()


def _units(t: Tensor, dim: int, block: int, n: int) -> Tensor:
    """Activations as ``(samples, n)``: batch, spatial positions and blocks become samples."""
    t = t.movedim(dim, -1)
    t = t.reshape(*t.shape[:-1], n, block).movedim(-2, -1)
    return t.reshape(-1, n).double()


def _correlation(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    a = a - a.mean(0)
    b = b - b.mean(0)
    cov = a.T @ b / a.shape[0]
    sa = a.pow(2).mean(0).sqrt()
    sb = b.pow(2).mean(0).sqrt()
    return cov / (sa[:, None] * sb[None, :] + eps)


def activation_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    spec: PermutationSpec | None = None,
    *,
    num_examples: int = 1024,
    task: Task | None = None,
) -> AlignmentResult:
    """Permute ``model_b`` so that matched units' activations correlate most with ``model_a``'s.

    For each group :math:`g` the cost is the Pearson correlation matrix
    :math:`C_{ij} = \\operatorname{corr}(z^A_i, z^B_j)` over ``num_examples`` inputs of
    ``data`` (spatial positions count as samples), summed over the group's *activation
    sites*; the permutation solves :math:`\\max_P \\sum_i C_{i P(i)}` exactly
    (:func:`scipy.optimize.linear_sum_assignment`). With a discovered spec the sites are the
    tensors the group's consumers read: post-nonlinearity and post-pooling activations and,
    for a residual stream, the post-addition activations of every block of the stage
    (their correlations summed). Units that are dead on the data (constant, so
    uncorrelated with everything) are matched by the correlation of the pre-activations
    (the outputs of the group's producers), added with weight ``TIE_BREAK = 1e-6``: a
    tie-break too small to change the assignment of live units in practice. One batch of
    ``num_examples`` is used, so the activations must fit in memory. The recorded
    ``objective`` is, per group, the matched cost (the post-activation correlations summed
    over the sites, plus the tie-break term). ``task`` (:class:`~basinscope.engine.Task`)
    splits the batches and says how the models are called: a model that takes keyword
    inputs (``model(**batch)``) is run that way, hooks and traced graphs alike.
    """
    x = _inputs(data, num_examples, task)
    spec = _spec_for(model_a, spec, first_examples(x, 8), task)
    check_same_keys(get_params(model_a), get_params(model_b))
    empty = [g for g in spec.groups if not spec.activation_sites.get(g)]
    if empty:
        raise BasinscopeError(
            f"groups {empty} have no activation sites: pass activation_sites= (module names "
            "whose outputs carry the group) to PermutationSpec.from_groups."
        )
    with _eval_mode(model_a, model_b):
        (acts_a, pre_a), (acts_b, pre_b) = _record(model_a, spec, x), _record(model_b, spec, x)
    modules = dict(model_a.named_modules())
    perms, scores = {}, []
    for g, n in spec.sizes.items():
        cost = sum(
            _correlation(_units(acts_a[s], d, b, n), _units(acts_b[s], d, b, n))
            for s, d, b in spec.activation_sites[g]
        )
        for p in spec.producers.get(g, ()):  # tie-break for units dead on the data
            d = pre_a[p].ndim - 1 if isinstance(modules[p], nn.Linear) else 1
            cost = cost + TIE_BREAK * _correlation(
                _units(pre_a[p], d, 1, n), _units(pre_b[p], d, 1, n)
            )
        _, col = linear_sum_assignment(cost.numpy(), maximize=True)
        perms[g] = torch.as_tensor(col, dtype=torch.long)
        scores.append(float(cost.numpy()[np.arange(n), col].sum()))
    return _result(
        "activation_matching", spec, perms, model_b, first_examples(x, 64), 1, scores, task
    )


# -- REPAIR ----------------------------------------------------------------------------------


def _interpolated(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A copy of ``model_a`` at :math:`(1 - \\alpha)\\theta_A + \\alpha\\theta_B` (float buffers too)."""
    out = copy.deepcopy(model_a)
    sb = model_b.state_dict()
    check_same_keys(model_a.state_dict(), sb, "state dicts")
    with torch.no_grad():
        for k, v in out.state_dict().items():
            if v.is_floating_point():
                v.copy_((1 - alpha) * v + alpha * sb[k].to(v))
    return out


def _channel_stats(model: nn.Module, names: Sequence[str], x: Any) -> dict[str, tuple]:
    """Per-channel mean and (biased) std of each named module's output over one batch."""
    stats: dict[str, tuple[Tensor, Tensor]] = {}
    modules = dict(model.named_modules())

    def hook(name: str):
        def fn(mod, inp, out):
            dim = out.ndim - 1 if isinstance(mod, nn.Linear) else 1
            z = out.movedim(dim, -1).reshape(-1, out.shape[dim]).double()
            stats[name] = (z.mean(0), z.std(0, unbiased=False))

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with _eval_mode(model):
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return stats


def repair(
    model_a: nn.Module,
    model_b_aligned: nn.Module,
    alpha: float,
    data: Any,
    *,
    spec: PermutationSpec | None = None,
    num_examples: int = 1024,
    eps: float = 1e-8,
    task: Task | None = None,
) -> nn.Module:
    """The interpolated model at ``alpha``, with its channel statistics REPAIRed.

    REPAIR (Jordan et al. 2023): in :math:`\\theta_\\alpha = (1-\\alpha)\\theta_A +
    \\alpha\\theta_{B'}` the pre-activations of each hidden channel :math:`c` are rescaled so
    that their mean and standard deviation over the data are the interpolated statistics
    of the endpoints,

    .. math::  \\mu_c = (1-\\alpha)\\mu^A_c + \\alpha\\mu^{B'}_c, \\qquad
               \\sigma_c = (1-\\alpha)\\sigma^A_c + \\alpha\\sigma^{B'}_c .

    *Without BatchNorm* the correction is folded into the layer that produces the channel
    (each Linear/Conv in ``spec.producers``, the logits excluded):
    :math:`W_c \\leftarrow s_c W_c`, :math:`b_c \\leftarrow s_c (b_c - \\hat\\mu_c) + \\mu_c`
    with :math:`s_c = \\sigma_c / \\hat\\sigma_c` and :math:`\\hat\\mu, \\hat\\sigma` measured in
    the interpolated network after the layers before it were corrected (layer by layer, in
    forward order, on one batch of ``num_examples`` inputs; channels whose
    :math:`\\hat\\sigma_c` is below ``eps`` are left alone). Producers must have a bias.
    *With BatchNorm* REPAIR reduces to resetting the running statistics on the data: BN
    then normalizes every channel and its interpolated affine sets the output statistics;
    that is what is done (no separate correction of producers; mixed BN/non-BN networks
    are therefore only corrected at their BatchNorm layers).
    ``model_b_aligned`` must already be aligned to ``model_a`` (e.g. ``result.model``).
    ``task`` splits the batches and says how the models are called (keyword inputs too).
    Returns a new model; the inputs are not touched.
    """
    x = _inputs(data, num_examples, task)
    model = _interpolated(model_a, model_b_aligned, alpha)
    if has_batchnorm(model):
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [b.momentum for b in bns]
        with _eval_mode(model):
            for b in bns:
                b.reset_running_stats()
                b.momentum = None
                b.train()
            call_model(model, x)  # one batch: the running statistics become its statistics
        for b, mom in zip(bns, momenta):
            b.momentum = mom
        return model
    spec = _spec_for(model_a, spec, first_examples(x, 8), task)
    producers = [p for g in spec.groups for p in spec.producers.get(g, ())]
    modules = dict(model.named_modules())
    producers.sort(key=list(modules).index)
    for p in producers:
        if getattr(modules[p], "bias", None) is None:
            raise BasinscopeError(
                f"REPAIR folds its correction into the bias of {p!r}, which has none; "
                "models without BatchNorm need biases on their Linear/Conv layers."
            )
    sa = _channel_stats(model_a, producers, x)
    sb = _channel_stats(model_b_aligned, producers, x)
    for p in producers:  # forward order: each correction sees the corrected layers before it
        mu_i, sd_i = _channel_stats(model, [p], x)[p]
        mu_t = (1 - alpha) * sa[p][0] + alpha * sb[p][0]
        sd_t = (1 - alpha) * sa[p][1] + alpha * sb[p][1]
        s = torch.where(sd_i > eps, sd_t / sd_i.clamp_min(eps), torch.ones_like(sd_i))
        mod = modules[p]
        with torch.no_grad():
            w = mod.weight
            shape = (1, -1) if getattr(mod, "transposed", False) else (-1,)
            w.mul_(s.to(w).reshape(*shape, *[1] * (w.ndim - len(shape))))
            mod.bias.copy_(((mod.bias.double() - mu_i) * s + mu_t).to(mod.bias))
    return model


# -- barriers ------------------------------------------------------------------------------


def linear_barrier(alphas: Sequence[float], values: Sequence[float]) -> float:
    """Entezari et al. (2022)'s barrier: :math:`\\max_\\alpha f(\\alpha) - [(1-\\alpha) f(0) + \\alpha f(1)]`.

    ``alphas`` must run from 0 to 1 (the endpoints are the first and last values). The
    number is :func:`~basinscope.analyses.barrier.barrier_from_curve`'s ``"linear"`` barrier.
    """
    a, v = np.asarray(alphas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.shape != v.shape or a[0] != 0 or a[-1] != 1:
        raise BasinscopeError(
            f"linear_barrier needs matching 1-D alphas from 0 to 1 and values, got alphas "
            f"{a.tolist()[:3]}... and {v.shape[0] if v.ndim else 0} values."
        )
    return barrier_from_curve(a, v, "linear")[0]


def barrier_before_after(
    model_a: nn.Module,
    model_b: nn.Module,
    aligned: nn.Module | AlignmentResult,
    data: Any,
    num_points: int = 11,
    metric: str = "loss",
    definition: str = "linear",
    task: Task | None = None,
    **kwargs: Any,
) -> BarrierComparison:
    """The barrier of ``metric`` on the line A→B and on the line A→aligned B.

    Both lines are evaluated with :func:`~basinscope.analyses.interpolation.interpolate` at
    ``num_points`` evenly spaced :math:`\\alpha \\in [0, 1]` on the first split of ``data``;
    the barrier is ``definition``'s (default ``"linear"``, Entezari et al. 2022; see
    :func:`~basinscope.analyses.barrier.barrier_from_curve`). ``task`` says how the models
    are run and what the loss is. Other keyword arguments (``bn_policy``, ``bn_data``,
    ``batch_size``...) go to :func:`interpolate`.
    """
    if num_points < 3:
        raise BasinscopeError(f"num_points must be at least 3, got {num_points}.")
    _check_definition(definition)
    if isinstance(aligned, AlignmentResult):
        aligned = aligned.model
    alphas = np.linspace(0.0, 1.0, num_points)
    split = next(iter(as_splits(data)))
    curves = []
    for other in (model_b, aligned):
        land = interpolate(
            model_a, other, data, alphas=alphas, metrics=(metric,), task=task, **kwargs
        )
        curves.append(land.dataset[f"{split}_{metric}"].values.astype(np.float64))
    return BarrierComparison(
        before=barrier_from_curve(alphas, curves[0], definition)[0],
        after=barrier_from_curve(alphas, curves[1], definition)[0],
        metric=metric,
        split=split,
        alphas=alphas.tolist(),
        curve_before=curves[0].tolist(),
        curve_after=curves[1].tolist(),
        definition=definition,
        definition_formula=BARRIER_DEFINITIONS[definition],
    )


@takes_spec(AlignSpec)
def align(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    method: str = "weight",
    max_iter: int = 100,
    seed: int = 0,
    num_examples: int = 1024,
    split: str = "train",
    num_points: int = 11,
    metric: str = "loss",
    definition: str = "linear",
    permutation_spec: PermutationSpec | None = None,
    labels: Sequence[str] = ("model_a", "model_b"),
    bn_policy: str = "stored",
    bn_data: Any = None,
    bn_batches: int = 10,
    batch_size: int = 1024,
    dtype: str = "float32",
    device: str = "cpu",
    strategy: str = "auto",
    chunk_size: int = 64,
    save_to: Sequence[str | Path] = (),
    task: Task | None = None,
) -> AlignmentResult:
    """Permute ``model_b`` to match ``model_a`` and measure the barrier it removes.

    ``method="weight"``: :func:`weight_matching` (at most ``max_iter`` sweeps, groups in a
    ``seed`` order, spec found and verified on the first 64 inputs of ``split``);
    ``"activation"``: :func:`activation_matching` on ``num_examples`` inputs of ``split``.
    Then :func:`barrier_before_after` on ``split`` at ``num_points`` alphas (``definition``
    on ``metric``; BatchNorm per ``bn_policy``, statistics re-estimated from ``bn_data``,
    by default the ``"train"`` split of ``data``; the other keywords go to the engine). ``data`` is one dataset or a ``{split: data}``
    mapping. The aligned weights are written to every file of ``save_to`` (``.safetensors``
    or ``.pt``), listed in ``aligned_weights``. ``task`` (:class:`~basinscope.engine.Task`)
    splits the batches, says how the models are called (keyword inputs too) and what the
    loss is; it is recorded in the result.
    """
    if method not in ALIGN_METHODS:
        raise BasinscopeError(
            f"unknown alignment method {method!r}: expected one of {', '.join(ALIGN_METHODS)}"
        )
    _check_definition(definition)
    ds = _select_split(data, split)
    if bn_data is None and bn_policy == "recompute":
        bn_data = as_splits(data).get("train")  # the training split re-estimates the statistics
    if method == "weight":
        res = weight_matching(
            model_a,
            model_b,
            permutation_spec,
            example_input=_inputs(ds, 64, task),
            max_iter=max_iter,
            seed=seed,
            task=task,
        )
    else:
        res = activation_matching(
            model_a, model_b, ds, permutation_spec, num_examples=num_examples, task=task
        )
    comparison = barrier_before_after(
        model_a,
        model_b,
        res,
        {split: ds},
        num_points=num_points,
        metric=metric,
        definition=definition,
        bn_policy=bn_policy,
        bn_data=bn_data,
        bn_batches=bn_batches,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        strategy=strategy,
        chunk_size=chunk_size,
        task=task,
    )
    spec = AlignSpec.from_kwargs(locals())
    if save_to:
        from basinscope.models import save_weights

        written = tuple(str(save_weights(res.model, p)) for p in save_to)
        res = dataclasses.replace(res, aligned_weights=written)
    return dataclasses.replace(
        res, barrier=comparison, labels=(str(labels[0]), str(labels[1])), spec=spec
    )
