"""Loss and error barriers on the straight line between two solutions.

Along :math:`\\theta(\\alpha) = (1 - \\alpha)\\theta_A + \\alpha\\theta_B`,
:math:`\\alpha \\in [0, 1]`, let :math:`f(\\alpha)` be the mean loss or error of
:math:`\\theta(\\alpha)` on a dataset. "The barrier" means different numbers in different
papers; each is a named ``definition`` here, and every result records which one:

``mean``      Frankle et al. 2020 (*Linear mode connectivity and the lottery ticket
              hypothesis*), the height of the curve above the endpoints' mean:

              .. math:: B = \\max_{\\alpha} f(\\alpha) - \\tfrac12 (f(0) + f(1))

``linear``    Entezari et al. 2022 (*The role of permutation invariance in linear mode
              connectivity of neural networks*), the height above the chord:

              .. math:: B = \\max_{\\alpha} \\big[f(\\alpha) - ((1 - \\alpha) f(0) + \\alpha f(1))\\big]

``midpoint``  the curve at the midpoint above the endpoints' mean, as some released code
              computes it:

              .. math:: B = f(\\tfrac12) - \\tfrac12 (f(0) + f(1))

With equal endpoints ``mean == linear``; otherwise ``mean >= linear`` (``mean`` also counts
the climb from the lower endpoint to the higher one: a monotone curve has ``linear == 0``
but ``mean > 0``). ``linear`` and ``mean`` are :math:`\\ge 0` (the maximum includes the
endpoints); ``midpoint`` can be negative. Neyshabur et al. 2020 (*What is being transferred
in transfer learning?*) read the same curves between fine-tuned solutions.

The maximum is taken over the evaluated :math:`\\alpha`; :func:`barrier` first evaluates an
even grid, then refines around the worst :math:`\\alpha` (:func:`refine_worst`), so the
worst point is located beyond the grid's resolution. The data is resampled for bootstrap
confidence intervals from per-example values at every :math:`\\alpha` (evaluated once).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from basinscope._checks import MAX_POINTS, MAX_SEED, at_least
from basinscope.analyses.interpolation import interpolate
from basinscope.analyses.landscape import as_splits, dtype_name, eval_batches
from basinscope.engine import (
    BatchNormWarning,
    EvalJob,
    Task,
    as_task,
    num_examples,
    warn_stored_bn,
)
from basinscope.engine.bn import has_batchnorm
from basinscope.engine.precision import to_dtype
from basinscope.errors import BasinscopeError
from basinscope.result import Result, fmt
from basinscope.spec import EvalOptions, Spec, group, option, takes_spec

__all__ = [
    "BARRIER_DEFINITIONS",
    "BARRIER_METRICS",
    "BarrierMatrix",
    "BarrierResult",
    "BarrierSpec",
    "barrier",
    "barrier_definition_option",
    "barrier_from_curve",
    "barrier_matrix",
    "barriers",
    "eval_data",
    "refine_worst",
]

BARRIER_DEFINITIONS: dict[str, str] = {
    "mean": "max_alpha f(alpha) - (f(0) + f(1)) / 2  (Frankle et al. 2020)",
    "linear": "max_alpha [f(alpha) - ((1 - alpha) f(0) + alpha f(1))]  (Entezari et al. 2022)",
    "midpoint": "f(1/2) - (f(0) + f(1)) / 2; f(1/2) linearly interpolated if 1/2 is "
    "not evaluated  (some released code)",
}
BARRIER_METRICS = ("loss", "error")
DEFINITION_HELP = (
    "Barrier definition: linear (Entezari et al. 2022: max over alpha of the curve above the "
    "chord), mean (Frankle et al. 2020: max above the endpoints' mean) or midpoint "
    "(f(1/2) above the endpoints' mean)."
)


def barrier_definition_option(default: str = "linear", flag: str | None = None) -> Any:
    """The spec field of a barrier definition, for every spec that measures a barrier: one
    of :data:`BARRIER_DEFINITIONS` (listed linear, mean, midpoint)."""
    choices = sorted(BARRIER_DEFINITIONS, key=("linear", "mean", "midpoint").index)
    return option(default, DEFINITION_HELP, choices=choices, flag=flag)


@dataclass(frozen=True)
class BarrierSpec(Spec):
    """The loss or error barrier on the straight line between trained models.

    Along theta(alpha) = (1 - alpha) theta_A + alpha theta_B, alpha in [0, 1], f(alpha) is the
    mean --metric on --split. The barrier is defined by --definition: linear (Entezari et al.
    2022), max_alpha (f(alpha) - ((1 - alpha) f(0) + alpha f(1))); mean (Frankle et al. 2020),
    max_alpha f(alpha) - (f(0) + f(1))/2; or midpoint, f(1/2) - (f(0) + f(1))/2. An even
    grid of --num-points is refined around the worst alpha (unless --no-refine); --bootstrap N
    resamples the examples N times for a percentile confidence interval.

    Two --weights: one barrier, its curve plotted with the chord (linear) or the endpoints'
    mean, and the worst alpha marked (figures/barrier). Three or more: the barrier of every
    pair, as a matrix (figures/barrier_matrix); the result is then a barrier_matrix: labels,
    matrix, pairs (one barrier result per pair), definition, definition_formula, metric,
    split, mean_value and max_value.

    These are the settings of barrier(), barriers() and barrier_matrix() (their spec=) and of
    basinscope barrier.
    """

    kind: ClassVar[str] = "barrier"

    definition: str = barrier_definition_option("linear")
    metric: str = option("error", "error (1 - accuracy) or loss.", choices=BARRIER_METRICS)
    split: str = option("train", "Split the barrier is measured on.")
    num_points: int = option(
        25, "Even grid of alpha in [0, 1] (at least 3).", low=3, high=MAX_POINTS
    )
    refine: bool = option(True, "Add points around the worst alpha.", flag="--refine/--no-refine")
    refine_points: int = option(9, "Points per refinement round.", low=1)
    refine_rounds: int = option(2, "Refinement rounds.", low=1)
    bootstrap: int = option(0, "Bootstrap resamples of the examples for a CI (0: none).", low=0)
    ci_level: float = option(0.95, "Level of the bootstrap interval.")
    seed: int = option(0, "Seed of the bootstrap.", low=0, high=MAX_SEED)
    eval: EvalOptions = group(EvalOptions)

    def check(self) -> None:
        if not 0.0 < self.ci_level < 1.0:
            raise BasinscopeError(
                f"{self.name_of('ci_level')} must lie strictly between 0 and 1, got "
                f"{self.ci_level}; e.g. 0.95"
            )


@dataclass(frozen=True)
class BarrierResult(Result, kind="barrier"):
    """One barrier and everything that defines it.

    ``alphas``/``values`` are the whole evaluated curve on :math:`[0, 1]` (grid and refined
    points, sorted); ``worst_alpha`` is where the definition's maximum is reached (``0.5``
    for ``midpoint``) and ``f_worst`` the curve there. ``ci`` is the bootstrap percentile
    interval at ``ci_level`` over ``bootstrap_samples`` resamples of the examples (``None``
    without bootstrap), ``bootstrap_se`` the resamples' standard deviation. ``num_points``
    is the initial grid's size, ``len(alphas)`` the number of points evaluated.
    ``evaluation`` says how the points were evaluated: the engine's strategy and timings,
    the device, and the task (``evaluation["task"]``: how the models were run and what the
    loss is, :meth:`~basinscope.engine.Task.describe`).
    """

    value: float
    definition: str
    metric: str
    split: str
    num_points: int
    worst_alpha: float
    f0: float
    f1: float
    f_worst: float
    alphas: np.ndarray
    values: np.ndarray
    bn_policy: str
    refined: bool
    ci: tuple[float, float] | None
    ci_level: float
    bootstrap_samples: int
    seconds: float
    definition_formula: str
    bootstrap_se: float | None
    bn_batches: int
    num_examples: int
    refine_points: int
    refine_rounds: int
    seed: int
    dtype: str
    models: tuple[str, str]
    evaluation: dict[str, Any]
    spec: BarrierSpec | None = None

    def summary(self) -> list[str]:
        """The barrier with its interval, where it is worst, the curve there and at the
        ends; and the definition's formula."""
        return [_pair_line(self), f"definition: {self.definition_formula}"]


def _pair_line(r: BarrierResult) -> str:
    ci = "" if r.ci is None else f" [{fmt(r.ci[0])}, {fmt(r.ci[1])}]"
    return (
        f"{r.models[0]} -- {r.models[1]}: {r.definition} {r.metric} barrier {fmt(r.value)}"
        f"{ci} at alpha {fmt(r.worst_alpha)} "
        f"(f(0) {fmt(r.f0)}, f(1) {fmt(r.f1)}, f(worst) {fmt(r.f_worst)})"
    )


@dataclass(frozen=True)
class BarrierMatrix(Result, kind="barrier_matrix"):
    """The pairwise barriers of three or more models: ``matrix[i, j]`` is the barrier
    between ``labels[i]`` and ``labels[j]`` (``pairs`` in the order (0, 1), (0, 2), ...)."""

    labels: tuple[str, ...]
    matrix: np.ndarray
    pairs: tuple[BarrierResult, ...]
    definition: str
    definition_formula: str
    metric: str
    split: str
    mean_value: float
    max_value: float
    spec: BarrierSpec | None = None

    @classmethod
    def of(cls, labels: Sequence[str], matrix: np.ndarray, pairs: Sequence[BarrierResult]):
        first = pairs[0]
        values = [p.value for p in pairs]
        return cls(
            labels=tuple(labels),
            matrix=np.asarray(matrix, dtype=np.float64),
            pairs=tuple(pairs),
            definition=first.definition,
            definition_formula=first.definition_formula,
            metric=first.metric,
            split=first.split,
            mean_value=float(np.mean(values)),
            max_value=float(np.max(values)),
            spec=first.spec,
        )

    def summary(self) -> list[str]:
        """One line per pair (as :meth:`BarrierResult.summary`) and the definition's formula."""
        return [*map(_pair_line, self.pairs), f"definition: {self.definition_formula}"]


# -- barriers of curves ------------------------------------------------------------------
def _check_definition(definition: str) -> str:
    if definition not in BARRIER_DEFINITIONS:
        raise BasinscopeError(
            f"unknown barrier definition {definition!r}: expected one of "
            f"{', '.join(BARRIER_DEFINITIONS)} ("
            + "; ".join(f"{k}: {v}" for k, v in BARRIER_DEFINITIONS.items())
            + ")"
        )
    return definition


def _check_curve(alphas: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(alphas, values)`` restricted to [0, 1], with 0 and 1 present."""
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or v.shape[-1:] != a.shape:
        raise BasinscopeError(
            f"alphas must be 1-D and values must end with the same length: got alphas of "
            f"shape {a.shape} and values of shape {v.shape}"
        )
    keep = (a >= 0.0) & (a <= 1.0)
    a, v = a[keep], v[..., keep]
    order = np.argsort(a, kind="stable")
    a, v = a[order], v[..., order]
    if len(a) == 0 or a[0] != 0.0 or a[-1] != 1.0:
        missing = [x for x in (0.0, 1.0) if x not in a]
        raise BasinscopeError(
            f"a barrier needs the endpoints alpha=0 and alpha=1 on the grid; missing "
            f"{missing} (got {len(a)} alphas in [0, 1]"
            + (f" from {a[0]:g} to {a[-1]:g}" if len(a) else "")
            + "): use e.g. np.linspace(0, 1, 25)"
        )
    return a, v


def _barriers(a: np.ndarray, f: np.ndarray, definition: str) -> tuple[np.ndarray, np.ndarray]:
    """Barrier and worst alpha of each row of ``f`` (shape ``(..., P)``) on sorted ``a``."""
    f0, f1 = f[..., :1], f[..., -1:]
    if definition == "midpoint":
        mid = np.stack([np.interp(0.5, a, row) for row in f.reshape(-1, len(a))])
        value = mid.reshape(f.shape[:-1]) - 0.5 * (f0[..., 0] + f1[..., 0])
        return value, np.full(value.shape, 0.5)
    # the chord as f(0) + alpha (f(1) - f(0)): exactly f(0) when the endpoints are equal
    excess = f - (f0 + a * (f1 - f0)) if definition == "linear" else f - 0.5 * (f0 + f1)
    i = np.argmax(excess, axis=-1)
    return np.take_along_axis(excess, i[..., None], -1)[..., 0], a[i]


def barrier_from_curve(alphas: Any, values: Any, definition: str = "linear") -> tuple[float, float]:
    """The barrier of a curve :math:`f(\\alpha)` and the worst :math:`\\alpha`.

    ``definition`` is ``"mean"`` (Frankle et al. 2020),
    :math:`\\max_\\alpha f(\\alpha) - (f(0) + f(1))/2`; ``"linear"`` (Entezari et al. 2022),
    :math:`\\max_\\alpha [f(\\alpha) - ((1 - \\alpha) f(0) + \\alpha f(1))]`; or ``"midpoint"``,
    :math:`f(1/2) - (f(0) + f(1))/2`, where :math:`f(1/2)` is linearly interpolated between
    its neighbours when :math:`1/2` is not on the grid (worst alpha reported as ``0.5``).
    The maximum is over the given points in :math:`[0, 1]` (points outside are ignored),
    which must include 0 and 1. Non-finite values propagate.
    """
    _check_definition(definition)
    a, f = _check_curve(alphas, values)
    if f.ndim != 1:
        raise BasinscopeError(f"values must be 1-D here, got shape {f.shape}")
    value, worst = _barriers(a, f, definition)
    return float(value), float(worst)


def refine_worst(
    f: Callable[[np.ndarray], Any],
    alphas: Any,
    values: Any = None,
    *,
    definition: str = "linear",
    refine_points: int = 9,
    rounds: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Add points around the worst :math:`\\alpha` of a curve; return the sorted union.

    ``f(alphas) -> values`` evaluates the curve at an array of new points (one call per
    round); ``values`` are the curve at ``alphas`` (evaluated with ``f`` when ``None``).
    Each round evaluates ``refine_points`` evenly spaced points strictly between the worst
    point's neighbours (the worst point under ``definition``'s maximand; an endpoint's only
    neighbour otherwise), so each round shrinks the spacing around the worst point by
    ``(refine_points + 1) / 2``. ``midpoint`` has nothing to refine: the curve comes back
    unchanged.
    """
    _check_definition(definition)
    for name, v in (("refine_points", refine_points), ("rounds", rounds)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise BasinscopeError(f"{name} must be an integer >= 1, got {v!r}")
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(f(a) if values is None else values, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    a, v = a[order], v[order]
    if definition == "midpoint":
        return a, v
    for _ in range(rounds):
        inside = np.flatnonzero((a >= 0.0) & (a <= 1.0))
        ca, cv = _check_curve(a, v)
        _, worst = _barriers(ca, cv, definition)
        j = int(np.searchsorted(ca, worst))
        lo, hi = ca[max(j - 1, 0)], ca[min(j + 1, len(ca) - 1)]
        new = np.linspace(lo, hi, refine_points + 2)[1:-1]
        new = new[np.min(np.abs(new[:, None] - a[inside][None, :]), axis=1) > 1e-12]
        if len(new) == 0:
            break
        nv = np.asarray(f(new), dtype=np.float64)
        a, v = np.concatenate([a, new]), np.concatenate([v, nv])
        order = np.argsort(a, kind="stable")
        a, v = a[order], v[order]
    return a, v


# -- barriers of models ----------------------------------------------------------------------
def _prediction_only(task: Task) -> Task:
    """``task`` without the model's own loss (the labels stay out of the model's inputs):
    what a metric of the prediction alone (the error) needs."""
    return dataclasses.replace(task, loss="cross_entropy") if task.model_loss else task


def _select_split(data: Any, split: str) -> Any:
    splits = as_splits(data)
    if splits.get("train") is data:  # one dataset: it is the split called `split`
        return data
    if split not in splits:
        raise BasinscopeError(
            f"the data has no split {split!r}; it has {', '.join(map(repr, splits))}: "
            f"pass split=... or a single dataset"
        )
    return splits[split]


@takes_spec(BarrierSpec)
def barrier(
    model_a: nn.Module,
    model_b: nn.Module | Mapping[str, Tensor],
    data: Any,
    *,
    definition: str = "linear",
    metric: str = "error",
    split: str = "train",
    num_points: int = 25,
    alphas: Any = None,
    refine: bool = True,
    refine_points: int = 9,
    refine_rounds: int = 2,
    bn_policy: str = "stored",
    bn_data: Any = None,
    bn_batches: int = 10,
    bootstrap: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
    labels: tuple[str, str] = ("model_a", "model_b"),
    batch_size: int = 1024,
    dtype: str = "float32",
    strategy: str = "auto",
    device: str = "cpu",
    chunk_size: int = 64,
    task: Task | None = None,
) -> BarrierResult:
    """The barrier between ``model_a`` and ``model_b`` on one split, with its definition.

    ``f(alpha)`` is ``metric`` (``"error"``: the engine's ``1 - accuracy``; ``"loss"``: the
    ``task``'s loss, by default mean cross-entropy) on ``data`` (one dataset, or a
    ``{split: data}`` mapping from which
    ``split`` is taken) at :math:`(1 - \\alpha)\\theta_A + \\alpha\\theta_B`, evaluated by
    the engine (:func:`~basinscope.analyses.interpolation.interpolate`) on ``num_points``
    even points of :math:`[0, 1]` (or the given ``alphas``, in :math:`[0, 1]` and including
    0 and 1; ``midpoint`` adds :math:`1/2` when missing, so it is never interpolated here). With
    ``refine``, ``refine_rounds`` rounds of ``refine_points`` points around the worst
    :math:`\\alpha` follow (:func:`refine_worst`), and the barrier is taken on the union.

    ``definition`` is one of ``mean`` (Frankle et al. 2020), ``linear`` (Entezari et al.
    2022) or ``midpoint``; see :data:`BARRIER_DEFINITIONS` and the module docstring.

    BatchNorm: ``bn_policy="stored"`` interpolates the running statistics with the same
    :math:`\\alpha` (with a :class:`~basinscope.engine.BatchNormWarning`: the barrier can
    be an artifact); ``"recompute"`` re-estimates them at every :math:`\\alpha` from the
    first ``bn_batches`` batches of 128 of ``bn_data``.

    ``bootstrap=B > 0`` resamples the examples with replacement ``B`` times (generator
    seeded with ``seed``), recomputes the barrier on the same :math:`\\alpha` from the
    per-example values, and reports the percentile interval at ``ci_level``. Only the
    evaluation data is resampled: the models, the :math:`\alpha` set (no refinement per
    resample) and re-estimated BatchNorm statistics stay fixed.

    ``batch_size``, ``dtype`` (``"float32"``/``"float64"``, or ``"bfloat16"``/``"float16"``
    autocast), ``strategy`` (``"auto"``/``"vmap"``/``"loop"``), ``device`` and
    ``chunk_size`` go to the engine; the strategy chosen for the grid is reused for the
    refinement, so every point is computed the same way. The data in memory is put on
    ``device`` once; a DataLoader is streamed batch by batch. ``task``
    (:class:`~basinscope.engine.Task`) says how the model is run on a batch and what the
    loss is; it is recorded in ``evaluation["task"]``. A bootstrap needs per-example
    values: the model's own loss (``Task(loss="model")``, one mean per batch) has none for
    ``metric="loss"``. ``labels`` name the two models in the result.
    """
    t0 = time.perf_counter()
    _check_definition(definition)
    if metric not in BARRIER_METRICS:
        raise BasinscopeError(
            f"unknown barrier metric {metric!r}: expected one of {', '.join(BARRIER_METRICS)}"
        )
    dtype, device = dtype_name(dtype), str(device)
    task = as_task(task)
    if alphas is None:
        num_points = at_least("num_points", num_points, 3)
        grid = np.linspace(0.0, 1.0, num_points)
    else:
        grid = np.unique(np.asarray(alphas, dtype=np.float64).reshape(-1))
        if len(grid) < 3:
            raise BasinscopeError(f"alphas must hold at least 3 distinct points, got {len(grid)}")
        if grid[0] < 0.0 or grid[-1] > 1.0:
            raise BasinscopeError(
                f"a barrier is taken on alpha in [0, 1], but alphas run from {grid[0]:g} to "
                f"{grid[-1]:g}: drop the points outside (interpolate() extrapolates)"
            )
        _check_curve(grid, grid)
        num_points = len(grid)
    if definition == "midpoint" and 0.5 not in grid:
        grid = np.sort(np.append(grid, 0.5))
    at_least("refine_points", refine_points, 1)
    at_least("refine_rounds", refine_rounds, 1)
    bootstrap = at_least("bootstrap", bootstrap, 0)
    if not 0.0 < ci_level < 1.0:
        raise BasinscopeError(f"ci_level must be in (0, 1), got {ci_level!r}; e.g. 0.95")
    dataset = _select_split(data, split)
    if bn_policy == "stored":
        warn_stored_bn(model_a, "barrier between two solutions")

    # read once, on the evaluation device (a DataLoader: streamed on every pass)
    batches = eval_batches(dataset, batch_size=batch_size, device=device, dtype=dtype, task=task)
    bn_list = (
        eval_batches(
            bn_data, batch_size=128, device=device, dtype=dtype, task=task, limit=bn_batches
        )
        if bn_data is not None
        else None
    )
    if metric == "error":
        _, targets = next(iter(batches))
        if not task.classification(targets):
            raise BasinscopeError(
                f"the barrier's metric 'error' compares argmax(prediction) with class labels, "
                f"and the loss is {task.loss_name} with targets of dtype "
                f"{str(targets.dtype).removeprefix('torch.')}: use metric='loss' (--metric loss)"
            )
    # the error needs the prediction only: the model is not asked for its own loss
    run_task = _prediction_only(task) if metric == "error" else task
    sink: list | None = [] if bootstrap > 0 else None
    evaluation: dict[str, Any] = {
        "strategy": strategy,
        "calls": 0,
        "points": 0,
        "seconds": 0.0,  # in the engine, strategy trial included
        "chunk_seconds": 0.0,  # evaluating the points only
    }

    def keep(coeffs: np.ndarray, per: dict[str, np.ndarray]) -> None:
        sink.append((coeffs[:, 0].copy(), per))

    def make_job(basis):
        return EvalJob(
            model=model_a,
            basis=basis,
            datasets={split: batches},
            metrics=(metric,),
            batch_size=batch_size,
            dtype=to_dtype(dtype),
            device=device,
            bn_policy=bn_policy,
            bn_data=bn_list,
            bn_batches=bn_batches,
            strategy=evaluation["strategy"],
            per_example=keep if sink is not None else None,
            task=run_task,
        )

    def f(new_alphas: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BatchNormWarning)  # warned once above
            land = interpolate(
                model_a,
                model_b,
                {split: batches},
                alphas=new_alphas,
                bn_policy=bn_policy,
                bn_data=bn_list,
                bn_batches=bn_batches,
                batch_size=batch_size,
                dtype=dtype,
                device=device,
                chunk_size=chunk_size,
                strategy=evaluation["strategy"],
                make_job=make_job,
                task=run_task,
            )
        # later calls reuse the first call's strategy: every point computed the same way
        evaluation["strategy"] = land.evaluation["strategy"]
        evaluation["calls"] += 1
        evaluation["points"] += land.evaluation["points"]
        evaluation["seconds"] += land.evaluation["seconds"]
        evaluation["chunk_seconds"] += (
            land.evaluation["points"] / land.evaluation["points_per_second"]
        )
        evaluation.setdefault("trial", land.evaluation["trial"])
        return land.dataset[f"{split}_{metric}"].values

    values = f(grid)
    a, v = grid, values
    if refine and definition != "midpoint":
        a, v = refine_worst(
            f,
            grid,
            values,
            definition=definition,
            refine_points=refine_points,
            rounds=refine_rounds,
        )
    refined = len(a) > len(grid)
    value, worst = barrier_from_curve(a, v, definition)

    ci = se = None
    if bootstrap > 0:
        assert sink is not None
        pa = np.concatenate([s[0] for s in sink])
        per = np.concatenate([s[1][f"{split}_{metric}"] for s in sink], axis=0).T  # (N, P)
        order = np.argsort(pa, kind="stable")
        pa, per = pa[order], per[:, order]
        n = per.shape[0]
        rng = np.random.default_rng(seed)
        curves = np.empty((bootstrap, per.shape[1]))
        for b in range(bootstrap):
            counts = np.bincount(rng.integers(0, n, n), minlength=n)
            curves[b] = counts @ per / n
        ca, cc = _check_curve(pa, curves)
        boot, _ = _barriers(ca, cc, definition)
        lo, hi = np.quantile(boot, [(1 - ci_level) / 2, (1 + ci_level) / 2])
        ci, se = (float(lo), float(hi)), float(np.std(boot, ddof=1)) if bootstrap > 1 else 0.0

    curve_a, curve_v = _check_curve(a, v)
    f_worst = float(curve_v[np.argmin(np.abs(curve_a - worst))])  # worst is on the grid
    evaluation["seconds"] = round(evaluation["seconds"], 4)
    evaluation["chunk_seconds"] = round(evaluation["chunk_seconds"], 4)
    evaluation["has_batchnorm"] = has_batchnorm(model_a)
    evaluation["device"] = str(device)
    evaluation["task"] = task.describe()
    return BarrierResult(
        value=value,
        definition=definition,
        metric=metric,
        split=split,
        num_points=num_points,
        worst_alpha=worst,
        f0=float(curve_v[0]),
        f1=float(curve_v[-1]),
        f_worst=f_worst,
        alphas=curve_a,
        values=curve_v,
        bn_policy=bn_policy,
        refined=refined,
        ci=ci,
        ci_level=ci_level,
        bootstrap_samples=bootstrap,
        seconds=round(time.perf_counter() - t0, 4),
        definition_formula=BARRIER_DEFINITIONS[definition],
        bootstrap_se=se,
        bn_batches=bn_batches if bn_policy == "recompute" else 0,
        num_examples=num_examples(batches),
        refine_points=refine_points if refine else 0,
        refine_rounds=refine_rounds if refine else 0,
        seed=seed,
        dtype=dtype,
        models=(str(labels[0]), str(labels[1])),
        evaluation=evaluation,
        spec=BarrierSpec(
            definition=definition,
            metric=metric,
            split=split,
            num_points=num_points,
            refine=refine,
            refine_points=refine_points,
            refine_rounds=refine_rounds,
            bootstrap=bootstrap,
            ci_level=ci_level,
            seed=seed,
            eval=EvalOptions(
                dtype=dtype,
                device=device,
                batch_size=batch_size,
                bn_policy=bn_policy,
                bn_batches=bn_batches,
                strategy=strategy,
                chunk_size=chunk_size,
            ),
        ),
    )


def barrier_matrix(
    models: Sequence[nn.Module],
    data: Any,
    *,
    labels: Sequence[str] | None = None,
    task: Task | None = None,
    **barrier_kwargs: Any,
) -> tuple[np.ndarray, list[BarrierResult]]:
    """Pairwise barriers of ``models``: an ``(M, M)`` symmetric matrix with a zero diagonal.

    Entry ``(i, j)`` for ``i < j`` is ``barrier(models[i], models[j], data, **barrier_kwargs)``
    (mirrored to ``(j, i)``; the three definitions are symmetric in the endpoints up to
    evaluation rounding, so each pair is evaluated once). The results come in the order
    ``(0, 1), (0, 2), ..., (M - 2, M - 1)``, each with ``models=(labels[i], labels[j])``
    (default labels ``"0"``, ``"1"``, ...). ``task`` says how the models are run and what
    the loss is (:func:`barrier`).
    """
    models = list(models)
    if len(models) < 2:
        raise BasinscopeError(f"barrier_matrix needs at least 2 models, got {len(models)}")
    names = [str(i) for i in range(len(models))] if labels is None else [str(x) for x in labels]
    if len(names) != len(models):
        raise BasinscopeError(f"got {len(names)} labels for {len(models)} models: pass one each")
    if "labels" in barrier_kwargs:
        raise BasinscopeError("pass labels=[...] for the models, one each, not pairs")
    m = len(models)
    out = np.zeros((m, m))
    results: list[BarrierResult] = []
    for i in range(m):
        for j in range(i + 1, m):
            r = barrier(
                models[i],
                models[j],
                data,
                labels=(names[i], names[j]),
                task=task,
                **barrier_kwargs,
            )
            out[i, j] = out[j, i] = r.value
            results.append(r)
    return out, results


def barriers(
    models: Sequence[nn.Module],
    data: Any,
    *,
    labels: Sequence[str] | None = None,
    task: Task | None = None,
    **barrier_kwargs: Any,
) -> BarrierResult | BarrierMatrix:
    """The barrier between two models (:func:`barrier`), or the :class:`BarrierMatrix` of
    every pair of three or more (:func:`barrier_matrix`), as basinscope barrier measures
    them. ``labels`` name the models (one each); ``task`` says how they are run and what
    the loss is; ``barrier_kwargs`` (``spec=``, ``bn_data=``, ...) go to :func:`barrier`.
    """
    models = list(models)
    if len(models) == 2:
        named = {} if labels is None else {"labels": tuple(str(x) for x in labels)}
        return barrier(models[0], models[1], data, **named, task=task, **barrier_kwargs)
    names = [str(i) for i in range(len(models))] if labels is None else [str(x) for x in labels]
    matrix, pairs = barrier_matrix(models, data, labels=names, task=task, **barrier_kwargs)
    return BarrierMatrix.of(names, matrix, pairs)


def eval_data(data: Any, split: str, bn_policy: str) -> tuple[Any, Any, dict[str, Any]]:
    """What a barrier (or any evaluation along a path) reads from the data options ``data``
    (:class:`~basinscope.inputs.DataOptions`, or anything with ``load(split)``): the split
    evaluated, the BatchNorm data (the train split, with ``bn_policy="recompute"``; else
    ``None``) and every dataset read, by split (for the run's fingerprints)."""
    ds = data.load(split)
    datasets = {split: ds}
    bn_data = None
    if bn_policy == "recompute":
        bn_data = ds if split == "train" else data.load("train")
        datasets.setdefault("train", bn_data)
    return ds, bn_data, datasets
