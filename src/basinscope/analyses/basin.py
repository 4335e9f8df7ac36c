r"""Is the convex hull of a set of solutions an :math:`(\varepsilon, \delta)`-basin?

**The definition.** Neyshabur, Sedghi & Zhang (2020), "What is being transferred in
transfer learning?" (NeurIPS 2020), Definition 3.1: given a loss function
:math:`\ell : \mathbb{R}^n \to \mathbb{R}^+` and a closed convex set
:math:`S \subset \mathbb{R}^n`, :math:`S` is an :math:`(\varepsilon, \delta)`-basin for
:math:`\ell` if and only if it has all the following properties.

1. Let :math:`U_S` be the uniform distribution over :math:`S` and :math:`\mu_{S,\ell}` the
   expected value of :math:`\ell` on samples from :math:`U_S`. Then

   .. math:: \mathbb{E}_{w \sim U_S}\big[\,|\ell(w) - \mu_{S,\ell}|\,\big] \le \varepsilon.

2. For any two points :math:`w_1, w_2 \in S` let :math:`f(w_1, w_2) = w_1 +
   \tilde\alpha (w_2 - w_1)`, where :math:`\tilde\alpha = \max\{\alpha \ge 0 : w_1 +
   \alpha (w_2 - w_1) \in S\}`. Then

   .. math:: \mathbb{E}_{w_1, w_2 \sim U_S,\ \nu \sim \mathcal{N}(0, \frac{\delta^2}{n} I_n)}
             \big[\ell(f(w_1, w_2) + \nu) - \mu_{S,\ell}\big] \ge 2\varepsilon.

3. Let :math:`\kappa(w_1, w_2, \nu) = f(w_1, w_2) + \frac{\nu}{\|f(w_1, w_2) - w_1\|_2}
   (f(w_1, w_2) - w_1)`. Then

   .. math:: \mathbb{E}_{w_1, w_2 \sim U_S,\ \nu \sim \mathcal{N}(0, \delta^2)}
             \big[\ell(\kappa(w_1, w_2, |\nu|)) - \mu_{S,\ell}\big] \ge 2\varepsilon.

:math:`n` is the number of parameters. In words: (1) the loss is flat inside; (2)
isotropic noise of total scale :math:`\delta` (:math:`\mathbb{E}\|\nu\|^2 = \delta^2`) at
the point :math:`f` where the ray from :math:`w_1` through :math:`w_2` leaves :math:`S`
raises the loss by :math:`2\varepsilon` on average; (3) a step of length :math:`|\nu|`,
:math:`\nu \sim \mathcal{N}(0, \delta^2)`, outward along that ray past :math:`f` raises it
by :math:`2\varepsilon` on average. :func:`basin_test` estimates exactly these three
expectations and nothing else.

**The set.** :math:`S = \mathrm{conv}\{\theta_1, \dots, \theta_m\}` for the ``m`` given
solutions, with points :math:`\theta(b) = \sum_i b_i \theta_i` for barycentric weights
:math:`b` in the probability simplex. When the solutions are affinely independent
(:math:`m - 1 \le n` and the Gram matrix of :math:`\theta_i - \theta_1` has full rank
:math:`m - 1`), :math:`b \mapsto \theta(b)` is an affine bijection of the simplex onto
:math:`S`, so :math:`w \sim U_S` is :math:`\theta(b)` with
:math:`b \sim \mathrm{Dirichlet}(1, \dots, 1)`, and the ray from :math:`\theta(b^1)`
through :math:`\theta(b^2)` leaves :math:`S` where its barycentric coordinates leave the
simplex (:func:`exit_weights`):

.. math:: \tilde\alpha = \min_{i:\ (b^2 - b^1)_i < 0} \frac{-b^1_i}{(b^2 - b^1)_i},
          \qquad f = \theta\big(b^1 + \tilde\alpha (b^2 - b^1)\big).

For ``m = 2``, :math:`S` is the segment :math:`[\theta_1, \theta_2]` and :math:`f` is the
end the ray points to. For affinely dependent solutions Dirichlet weights are not uniform
on :math:`S` and the simplex's exits need not be :math:`S`'s: :func:`basin_test` warns;
pass the hull's vertices, an affinely independent subset.

**Degenerate rays.** For ``m >= 2`` (a hull of positive dimension) :math:`w_1 = w_2` has
probability 0; a pair whose ray is degenerate in floating point
(:math:`\|f - w_1\| = 0`) is redrawn, which does not change the expectations. For
``m = 1`` (or ``m`` identical solutions) :math:`S = \{w\}` is a point and every ray is
degenerate: :math:`\tilde\alpha = \infty` but :math:`w_2 - w_1 = 0`, and we take
:math:`f = w`. Condition 2 is then :math:`\mathbb{E}[\ell(w + \nu)] - \ell(w)`. In
condition 3 the direction :math:`(f - w_1)/\|f - w_1\|` is :math:`0/0`; we take it
uniform on the unit sphere, the exact limit of the definition for the ball of radius
:math:`r \to 0` around :math:`w` (on a ball the law of :math:`(f - w_1)/\|f - w_1\|` is
rotation invariant), so condition 3 is :math:`\mathbb{E}[\ell(w + |\nu| u)] - \ell(w)`.
Condition 1 is exactly 0.

**The estimator.** ``samples`` (:math:`N`) points :math:`b_j \sim \mathrm{Dirichlet}(1,
\dots, 1)` give losses :math:`L_j`, :math:`\hat\mu = \bar L` and

.. math:: \hat D = \frac1N \sum_j |L_j - \hat\mu|, \qquad
          \widehat{\mathrm{se}}(\hat D) = \mathrm{sd}(z_j)/\sqrt N, \quad
          z_j = |L_j - \hat\mu| + s\,(L_j - \hat\mu), \quad
          s = \tfrac1N \textstyle\sum_j \mathrm{sign}(\hat\mu - L_j)

(delta method: :math:`s` estimates :math:`\partial_\mu \mathbb{E}|L - \mu|`; the plug-in
:math:`\hat\mu` biases :math:`\hat D` by :math:`O(1/N)`, below its standard error).
``pairs`` (:math:`P`) independent pairs :math:`b^1_k, b^2_k \sim \mathrm{Dirichlet}(1,
\dots, 1)` give exit points :math:`f_k`, losses :math:`A_k = \ell(f_k + \nu_k)`,
:math:`\nu_k \sim \mathcal{N}(0, \frac{\delta^2}{n} I_n)`, and
:math:`B_k = \ell(\kappa(w^1_k, w^2_k, |\nu'_k|))`, :math:`\nu'_k \sim
\mathcal{N}(0, \delta^2)` independent of :math:`\nu_k`. Conditions 2 and 3 are estimated by
:math:`\bar A - \hat\mu` and :math:`\bar B - \hat\mu`, with standard errors
:math:`\sqrt{\mathrm{var}(A)/P + \mathrm{var}(L)/N}` (the pairs are independent of the
inside samples). Every interval is normal, estimate :math:`\pm z_{(1 + c)/2}` se at
``confidence`` :math:`c`.

**Verdicts.** Each condition gets a *margin*, :math:`\varepsilon - \hat D`,
:math:`(\bar A - \hat\mu) - 2\varepsilon` and :math:`(\bar B - \hat\mu) - 2\varepsilon`,
with its interval. The point verdict is ``margin >= 0``; the interval *supports* it when it
lies on the same side (for condition 1: the upper end of :math:`\hat D`'s interval is at
most :math:`\varepsilon`). With ``epsilon=None``, :math:`\hat\varepsilon = \hat D`, the
smallest :math:`\varepsilon` for which (1) holds; (2) and (3) only get easier as
:math:`\varepsilon` decreases, so :math:`S` is an :math:`(\varepsilon, \delta)`-basin for
some :math:`\varepsilon` iff it is one at :math:`\hat\varepsilon`. Their margins
:math:`\bar A - \hat\mu - 2\hat D` (and with :math:`B`) then carry the uncertainty of
:math:`\hat D` too: :math:`\mathrm{var}(A)/P + \mathrm{var}(L + 2z)/N`. ``epsilon_range``
is the interval of :math:`\varepsilon` for which the point estimates make :math:`S` a basin,
:math:`[\hat D, \min(\bar A - \hat\mu, \bar B - \hat\mu)/2]` (empty when reversed).

**Evaluation.** Every loss comes from the engine (:func:`~basinscope.engine.evaluate_points`)
with a :class:`~basinscope.engine.PointBasis` whose origin is :math:`\theta_1` and whose
basis is :math:`\theta_i - \theta_1`, :math:`i \ge 2` (barycentric weights :math:`b` become
coefficients :math:`b_2, \dots, b_m`). The points of condition 3 are affine combinations
too, :math:`\kappa = \theta(f + t(f - b^1))` with
:math:`t = |\nu'| / \|\theta(f) - \theta(b^1)\|` from the Gram matrix of the basis, so they
share one engine call with the inside samples. The noise :math:`\nu_k` of condition 2 is a
fresh vector per point: each becomes an extra basis direction with coefficient 1, in groups
of 16 per engine call, so the data are read once per group and at most 16 noise vectors are
in memory (a loop of :func:`~basinscope.engine.evaluate_model` on parameter copies would
rebuild the evaluator and re-read the data for every point).

**BatchNorm.** ``bn_policy="stored"``: at a point :math:`\theta(b)` of :math:`S` the
running statistics are the same barycentric combination of the stored ones; at the points
outside :math:`S` (conditions 2 and 3) they are those of the exit point :math:`f`
(extrapolating them along the ray could make variances negative). ``"recompute"``
re-estimates them at every point from ``bn_data``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from basinscope._checks import MAX_COUNT, MAX_SEED
from basinscope.analyses.landscape import dtype_name, eval_batches
from basinscope.engine import EvalJob, PointBasis, Task, as_task, evaluate_points, warn_stored_bn
from basinscope.engine.metrics import Metric
from basinscope.engine.precision import storage_dtype, to_dtype
from basinscope.errors import BasinscopeError
from basinscope.geometry import check_same_keys, get_buffers, get_params
from basinscope.result import Result, fmt
from basinscope.spec import STRATEGIES, EvalOptions, Spec, group, option, takes_spec

__all__ = [
    "DEFINITION",
    "BasinResult",
    "BasinSpec",
    "ConditionEstimate",
    "basin_test",
    "exit_weights",
]

_GROUP = 16  # noise vectors per engine call (memory: this many parameter-sized vectors)
_RANK_TOL = 1e-10  # relative eigenvalue tolerance of the Gram matrix (1e-5 in distances)
_MAX_REDRAWS = 100

DEFINITION = (
    "(eps, delta)-basin, Neyshabur, Sedghi & Zhang 2020, Definition 3.1, for S = conv of the "
    "solutions: (1) E_{w~U_S}|l(w) - mu| <= eps, mu = E_{w~U_S} l(w); "
    "(2) E_{w1,w2~U_S, nu~N(0, delta^2/n I_n)}[l(f(w1,w2) + nu) - mu] >= 2 eps, f = where the "
    "ray from w1 through w2 leaves S; "
    "(3) E_{w1,w2~U_S, nu~N(0, delta^2)}[l(f + |nu| (f - w1)/||f - w1||) - mu] >= 2 eps. "
    "Monte Carlo: U_S = Dirichlet(1,...,1) barycentric weights (affinely independent "
    "solutions), normal confidence intervals."
)

_STATEMENTS = (
    "E_{w~U_S}|l(w) - mu_S| <= eps",
    "E_{w1,w2~U_S, nu~N(0, delta^2/n I_n)}[l(f(w1,w2) + nu) - mu_S] >= 2 eps",
    "E_{w1,w2~U_S, nu~N(0, delta^2)}[l(kappa(w1,w2,|nu|)) - mu_S] >= 2 eps",
)
_NAMES = ("flat inside", "isotropic noise at the boundary", "outward step along the ray")
METRICS = ("loss", "error", "accuracy")


@dataclass(frozen=True)
class PinnedEvalOptions(EvalOptions):
    """:class:`~basinscope.spec.EvalOptions` with the ``loop`` strategy by default: equal
    points give bit-identical values (the basin test evaluates points more than once)."""

    strategy: str = option(
        "loop",
        "loop (the default: bit-identical values), vmap, auto or compiled (the loop through "
        "torch.compile).",
        choices=STRATEGIES,
    )


@dataclass(frozen=True)
class BasinSpec(Spec):
    """Is the convex hull of the solutions an (epsilon, delta)-basin? (Monte Carlo test)

    Neyshabur, Sedghi & Zhang 2020, Definition 3.1, for S = conv(--weights): (1) the loss is
    flat inside, E_{w~U_S}|l(w) - mu| <= epsilon; (2) isotropic noise of total scale delta at
    the point where a random ray leaves S raises the loss by 2 epsilon on average; (3) a step
    of length |nu|, nu ~ N(0, delta^2), outward along the ray does too. Points of S are drawn
    with Dirichlet(1,...,1) barycentric weights (--samples for mu and condition 1, --pairs
    for conditions 2 and 3); each condition's estimate gets a normal --confidence interval
    and a verdict, with whether the interval supports it. Without --epsilon the smallest
    epsilon for which (1) holds is used (is S a basin for some epsilon?). The solutions should
    be affinely independent (a warning says when they are not). figures/basin shows the losses
    inside, at the noisy boundary points and after the outward steps, and each condition's
    margin with its interval.

    These are the settings of basin_test() (its spec=) and of basinscope basin.
    """

    kind: ClassVar[str] = "basin"

    delta: float | None = option(
        None, "delta > 0: Euclidean scale of the noise and of the outward step."
    )
    epsilon: float | None = option(
        None, "epsilon to test (default: the smallest for condition 1).", low=0.0
    )
    samples: int = option(64, "Uniform points of the hull (>= 2).", low=2, high=MAX_COUNT)
    pairs: int = option(64, "Uniform pairs for conditions 2 and 3 (>= 2).", low=2, high=MAX_COUNT)
    seed: int = option(0, "Seed of every random draw.", low=0, high=MAX_SEED)
    confidence: float = option(0.95, "Level of every interval.")
    metric: str = option("loss", "The loss l: loss, error or accuracy.", choices=METRICS)
    eval: PinnedEvalOptions = group(PinnedEvalOptions)

    def check(self) -> None:
        delta = self.name_of("delta")
        if self.delta is None:
            raise BasinscopeError(
                f"{delta} is required: the Euclidean scale of the noise (condition 2) and of "
                f"the outward step (condition 3), e.g. {delta} 1"
            )
        if not self.delta > 0:
            raise BasinscopeError(f"{delta} must be a finite number > 0, got {self.delta}")
        if not 0 < self.confidence < 1:
            raise BasinscopeError(
                f"{self.name_of('confidence')} must lie strictly between 0 and 1, got "
                f"{self.confidence}"
            )


@dataclass(frozen=True)
class ConditionEstimate(Result, kind="basin_condition"):
    """One condition of Definition 3.1: the expectation's estimate and the verdict.

    ``estimate``, ``std_error`` and ``ci``: the Monte Carlo estimate of the condition's
    expectation (:math:`\\mathbb{E}|\\ell - \\mu|` for condition 1, the expected rise
    :math:`\\mathbb{E}[\\ell(\\cdot) - \\mu]` for conditions 2 and 3). ``threshold``:
    :math:`\\varepsilon` (condition 1) or :math:`2\\varepsilon`. ``margin``: how far the
    estimate is on the good side of the threshold (``threshold - estimate`` for condition
    1, ``estimate - threshold`` otherwise), with ``margin_std_error`` and ``margin_ci``.
    ``holds``: ``margin >= 0`` (the point verdict). ``ci_supports``: the margin's interval
    lies on the verdict's side (``lower >= 0`` when it holds, ``upper < 0`` when it fails);
    ``None`` for condition 1 at the estimated :math:`\\hat\\varepsilon`, where it holds by
    construction.
    """

    condition: int
    name: str
    statement: str
    estimate: float
    std_error: float
    ci: tuple[float, float]
    threshold: float
    margin: float
    margin_std_error: float
    margin_ci: tuple[float, float]
    holds: bool
    ci_supports: bool | None

    def summary(self) -> list[str]:
        """One line: the estimate with its interval against the threshold, and the verdict."""
        support = {None: "", True: ", supported by the interval"}.get(
            self.ci_supports, ", not supported by the interval"
        )
        return [
            f"  ({self.condition}) {self.name}: estimate {fmt(self.estimate)} "
            f"[{fmt(self.ci[0])}, {fmt(self.ci[1])}] vs threshold {fmt(self.threshold)}: "
            f"{'holds' if self.holds else 'fails'}{support}"
        ]


@dataclass(frozen=True)
class BasinResult(Result, kind="basin"):
    """Monte Carlo estimate of Definition 3.1 for the convex hull of the solutions.

    ``epsilon``: the :math:`\\varepsilon` tested (given, or :math:`\\hat\\varepsilon = \\hat
    D` when ``epsilon_estimated``). ``holds``: all three point verdicts; ``ci_supports``:
    the intervals support that verdict (when it holds: every condition holds with support;
    when it fails: some condition fails with support). ``mean_loss``: :math:`\\hat\\mu`,
    with ``mean_loss_std_error`` and ``mean_loss_ci``. ``condition1..3``: the three
    :class:`ConditionEstimate`. ``epsilon_range``: the :math:`\\varepsilon` for which the
    point estimates make the hull a basin, ``(D, min(E2, E3) / 2)``; empty when
    ``lower > upper``.

    Samples: ``inside_weights`` and ``inside_losses`` (condition 1), ``pair_start``,
    ``pair_end`` (barycentric :math:`b^1, b^2`), ``exit_points`` (barycentric :math:`f`),
    ``exit_distances`` (:math:`\\|f - w_1\\|`), ``noise_norms`` (:math:`\\|\\nu_k\\|`) and
    ``noise_losses`` (condition 2), ``step_lengths`` (:math:`|\\nu'_k|`) and
    ``step_losses`` (condition 3). ``num_params``: :math:`n`. ``affine_dimension``: of the
    hull (``m - 1`` for affinely independent solutions). ``vertex_losses``: the loss at
    each solution, a diagnostic that is not part of Definition 3.1. ``labels`` name the
    solutions; ``spec`` holds the settings.
    """

    epsilon: float
    epsilon_estimated: bool
    delta: float
    holds: bool
    ci_supports: bool
    mean_loss: float
    mean_loss_std_error: float
    mean_loss_ci: tuple[float, float]
    condition1: ConditionEstimate
    condition2: ConditionEstimate
    condition3: ConditionEstimate
    epsilon_range: tuple[float, float]
    num_params: int
    affine_dimension: int
    vertex_losses: tuple[float, ...]
    inside_weights: tuple[tuple[float, ...], ...]
    inside_losses: tuple[float, ...]
    pair_start: tuple[tuple[float, ...], ...]
    pair_end: tuple[tuple[float, ...], ...]
    exit_points: tuple[tuple[float, ...], ...]
    exit_distances: tuple[float, ...]
    noise_norms: tuple[float, ...]
    noise_losses: tuple[float, ...]
    step_lengths: tuple[float, ...]
    step_losses: tuple[float, ...]
    definition: str
    settings: dict[str, Any]
    labels: tuple[str, ...] = ()
    spec: BasinSpec | None = None

    @property
    def conditions(self) -> tuple[ConditionEstimate, ConditionEstimate, ConditionEstimate]:
        return (self.condition1, self.condition2, self.condition3)

    def summary(self) -> list[str]:
        """Epsilon and delta, the mean loss in the hull, each condition's line
        (:meth:`ConditionEstimate.summary`) and the verdict."""
        eps = f"{self.epsilon:.4g}" + (
            " (estimated: the smallest for condition 1)" if self.epsilon_estimated else ""
        )
        metric = self.settings.get("metric", "loss")
        supported = "supported" if self.ci_supports else "not supported"
        return [
            f"epsilon {eps}, delta {self.delta:g}; mean {metric} in the hull {fmt(self.mean_loss)}",
            *(line for c in self.conditions for line in c.summary()),
            f"(epsilon, delta)-basin: {'yes' if self.holds else 'no'} ({supported} by the intervals)",
        ]


# -- geometry of the simplex --------------------------------------------------------------
def exit_weights(w1: Any, w2: Any) -> np.ndarray:
    """Barycentric coordinates of :math:`f(w_1, w_2)`: where the ray from ``w1`` through
    ``w2`` leaves the probability simplex.

    ``w1`` and ``w2`` are barycentric weights (one point of shape ``(m,)`` or rows of shape
    ``(P, m)``). :math:`\\tilde\\alpha = \\min_{i: d_i < 0} -w_{1,i}/d_i` with
    :math:`d = w_2 - w_1`; the returned point has a zero at the minimizing coordinate.
    A row with ``w1 == w2`` has no exit (:math:`\\tilde\\alpha = \\infty` times a zero
    step): it returns ``w1``, the convention for a hull that is a single point.
    """
    b1 = np.asarray(w1, dtype=np.float64)
    b2 = np.asarray(w2, dtype=np.float64)
    if b1.shape != b2.shape or b1.ndim not in (1, 2) or b1.shape[-1] < 1:
        raise BasinscopeError(
            f"exit_weights needs two arrays of barycentric weights of one shape (m,) or (P, m), "
            f"got {b1.shape} and {b2.shape}."
        )
    for name, b in (("w1", b1), ("w2", b2)):
        if not np.all(np.isfinite(b)) or np.any(b < -1e-9) or np.any(abs(b.sum(-1) - 1) > 1e-9):
            raise BasinscopeError(
                f"{name} must hold barycentric weights (non-negative, summing to 1 per row)."
            )
    single = b1.ndim == 1
    b1, b2 = _normalized(np.atleast_2d(b1)), _normalized(np.atleast_2d(b2))
    d = b2 - b1
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(d < 0, np.clip(b1, 0.0, None) / -d, np.inf)
    j = ratios.argmin(axis=1)
    rows = np.arange(len(b1))
    alpha = ratios[rows, j]
    moves = np.isfinite(alpha)
    f = b1 + np.where(moves, alpha, 0.0)[:, None] * d
    f = np.clip(f, 0.0, None)
    f[rows[moves], j[moves]] = 0.0
    f /= f.sum(axis=1, keepdims=True)
    return f[0] if single else f


def _normalized(b: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1 (exactly ``[1.0]`` for ``m = 1``, where Dirichlet draws and
    float sums can be one ulp off, which would make the point ray look non-degenerate)."""
    return b / b.sum(axis=-1, keepdims=True)


def _uniform(rng: np.random.Generator, m: int, size: int) -> np.ndarray:
    """``size`` barycentric weights ~ Dirichlet(1, ..., 1): uniform on the simplex."""
    return _normalized(rng.dirichlet(np.ones(m), size=size))


# -- evaluation ---------------------------------------------------------------------------
class _Hull:
    """The solutions as an engine basis: origin θ_1, directions θ_i - θ_1."""

    def __init__(
        self, models: list[nn.Module], data: Any, metric: Metric, opts: dict, task: Task
    ) -> None:
        self.opts = opts
        self.task = task
        self.template = models[0]
        # the dtype the points are stored in (float32 under bfloat16/float16 autocast)
        self.dtype, _ = storage_dtype(opts["dtype"])
        params = [get_params(m) for m in models]
        buffers = [get_buffers(m) for m in models]
        for i in range(1, len(models)):
            check_same_keys(params[0], params[i], f"parameters of model 1 and model {i + 1}")
            check_same_keys(buffers[0], buffers[i], f"buffers of model 1 and model {i + 1}")
        self.num_params = int(sum(v.numel() for v in params[0].values()))
        # the points' tensors live on the evaluation device: nothing moves per chunk
        self.device = torch.device(opts["device"])
        self.origin = {k: v.to(self.device, self.dtype) for k, v in params[0].items()}
        self.shapes = {k: v.shape for k, v in params[0].items()}
        edges64 = [
            {k: p[k].double() - params[0][k].double() for k in params[0]} for p in params[1:]
        ]
        k = len(edges64)
        self.gram = np.zeros((k, k))
        for a in range(k):
            for b in range(a, k):
                g = sum(float((edges64[a][key] * edges64[b][key]).sum()) for key in params[0])
                self.gram[a, b] = self.gram[b, a] = g
        self.edges = [{key: v.to(self.device, self.dtype) for key, v in e.items()} for e in edges64]
        del edges64
        self.buffers = {key: v.to(self.device) for key, v in buffers[0].items()}
        self.buffer_edges = [
            {
                key: (b[key].double() - buffers[0][key].double()).to(self.device, b[key].dtype)
                if b[key].is_floating_point()
                else torch.zeros_like(b[key], device=self.device)
                for key in b
            }
            for b in buffers[1:]
        ]
        self.zero_buffers = {key: torch.zeros_like(v) for key, v in self.buffers.items()}
        self.data = data
        self.metric = metric

    def affine_dimension(self) -> int:
        if not len(self.gram):
            return 0
        eig = np.linalg.eigvalsh(self.gram)
        top = float(eig.max())
        return 0 if top <= 0 else int((eig > _RANK_TOL * top).sum())

    def distances(self, d: np.ndarray) -> np.ndarray:
        """``||θ(d)||`` for rows ``d`` of barycentric differences (summing to 0)."""
        e = d[:, 1:]
        sq = np.einsum("pi,ij,pj->p", e, self.gram, e)
        return np.sqrt(np.clip(sq, 0.0, None))

    def evaluate(
        self,
        weights: np.ndarray,
        buffer_weights: np.ndarray | None = None,
        vectors: Sequence[dict[str, Tensor]] = (),
    ) -> np.ndarray:
        """Loss at ``θ(weights[p]) + vectors[p]``, statistics at ``buffer_weights[p]``.

        ``weights`` are affine (rows sum to 1, entries may be negative); the buffers follow
        ``buffer_weights`` (default ``weights``). With stored buffers the basis holds each
        direction twice, once moving the buffers and once not, so that the two sets of
        coefficients are independent: row ``[q_2..q_m, p_2 - q_2, ..., p_m - q_m]``.
        """
        p = np.asarray(weights, dtype=np.float64)
        q = p if buffer_weights is None else np.asarray(buffer_weights, dtype=np.float64)
        basis: list[dict[str, Tensor]] = []
        buffer_basis: list[dict[str, Tensor]] = []
        blocks = [np.zeros((len(p), 0))]
        if self.edges:
            basis += self.edges
            if self.buffers:
                basis += self.edges
                buffer_basis += self.buffer_edges + [self.zero_buffers] * len(self.edges)
                blocks += [q[:, 1:], p[:, 1:] - q[:, 1:]]
            else:
                blocks.append(p[:, 1:])
        if vectors:
            basis += list(vectors)
            buffer_basis += [self.zero_buffers] * len(vectors)
            blocks.append(np.eye(len(vectors)))
        o = self.opts
        job = EvalJob(
            model=self.template,
            basis=PointBasis(
                self.origin,
                tuple(basis),
                self.buffers,
                tuple(buffer_basis) if self.buffers else None,
            ),
            datasets={"data": self.data},
            metrics=(self.metric,),
            batch_size=o["batch_size"],
            dtype=to_dtype(o["dtype"]),
            device=o["device"],
            bn_policy=o["bn_policy"],
            bn_data=o["bn_data"],
            bn_batches=o["bn_batches"],
            strategy=o["strategy"],
            task=self.task,
        )
        res = evaluate_points(job, np.concatenate(blocks, axis=1), chunk_size=o["chunk_size"])
        return np.asarray(res.values[f"data_{self.metric.name}"], dtype=np.float64)

    def random_vector(self, gen: torch.Generator, length: float | None, scale: float) -> dict:
        """``scale * z`` (``length is None``) or ``length * z / ||z||``, ``z ~ N(0, I_n)``."""
        z = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in self.shapes.items()}
        if length is not None:
            scale = length / math.sqrt(sum(float((v**2).sum()) for v in z.values()))
        return {k: (v * scale).to(self.device, self.dtype) for k, v in z.items()}


# -- statistics ---------------------------------------------------------------------------
def _interval(est: float, se: float, z: float) -> tuple[float, float]:
    return (float(est - z * se), float(est + z * se))


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def _condition(
    number: int,
    estimate: float,
    se: float,
    threshold: float,
    margin: float,
    margin_se: float,
    z: float,
    trivial: bool = False,
) -> ConditionEstimate:
    lo, hi = _interval(margin, margin_se, z)
    holds = margin >= 0
    supports = None if trivial else bool(lo >= 0 if holds else hi < 0)
    return ConditionEstimate(
        condition=number,
        name=_NAMES[number - 1],
        statement=_STATEMENTS[number - 1],
        estimate=float(estimate),
        std_error=float(se),
        ci=_interval(estimate, se, z),
        threshold=float(threshold),
        margin=float(margin),
        margin_std_error=float(margin_se),
        margin_ci=(lo, hi),
        holds=bool(holds),
        ci_supports=supports,
    )


# -- argument checks ----------------------------------------------------------------------
def _check_number(name: str, v: Any, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
        raise BasinscopeError(f"{name} must be a finite number, got {v!r}.")
    if (positive and v <= 0) or v < 0:
        raise BasinscopeError(f"{name} must be {'> 0' if positive else '>= 0'}, got {v!r}.")
    return float(v)


def _check_count(name: str, v: Any, lo: int, why: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise BasinscopeError(f"{name} must be an integer >= {lo}{why}, got {v!r}.")
    return int(v)


@takes_spec(BasinSpec)
def basin_test(
    models: Sequence[nn.Module],
    data: Any,
    *,
    epsilon: float | None = None,
    delta: float,
    samples: int = 64,
    pairs: int = 64,
    seed: int = 0,
    confidence: float = 0.95,
    metric: str | Metric | Callable = "loss",
    bn_policy: str = "stored",
    bn_data: Any = None,
    bn_batches: int = 10,
    batch_size: int = 1024,
    dtype: str = "float32",
    device: str = "cpu",
    strategy: str = "loop",
    chunk_size: int = 64,
    labels: Sequence[str] | None = None,
    task: Task | None = None,
) -> BasinResult:
    """Monte Carlo test of Definition 3.1 for ``S = conv(models)`` (see the module docstring).

    Args:
        models: ``m >= 1`` models of one architecture (the solutions :math:`\\theta_i`,
            affinely independent for :math:`\\mathrm{Dirichlet}(1, \\dots, 1)` weights to be
            uniform on their hull).
        data: the data the loss :math:`\\ell` is the mean of (any form the engine reads).
        epsilon: the :math:`\\varepsilon` to test; ``None``: the smallest for which
            condition 1 holds, :math:`\\hat D` (is the hull a basin for some
            :math:`\\varepsilon`?).
        delta: :math:`\\delta > 0`, the scale of the noise (condition 2) and of the outward
            step (condition 3), in the Euclidean norm over all ``n`` parameters.
        samples: uniform points of the hull for :math:`\\mu` and condition 1 (``>= 2``).
        pairs: uniform pairs :math:`(w_1, w_2)` for conditions 2 and 3 (``>= 2``).
        seed: fixes every random draw; equal arguments give equal results.
        confidence: the level of every (normal) interval.
        metric: the loss: a built-in metric name, a :class:`~basinscope.engine.Metric` or a
            callable ``fn(outputs, targets)``.
        bn_policy, bn_data, bn_batches, batch_size, dtype, device, strategy, chunk_size:
            engine settings (:class:`~basinscope.engine.EvalJob`); the strategy is pinned
            (``"loop"``) so that equal points give bit-identical values.
        labels: names of the solutions, recorded in the result (default ``"0"``, ``"1"``...).
        task: how the models are run on a batch and what ``"loss"`` is
            (:class:`~basinscope.engine.Task`; default ``model(x)`` and cross-entropy),
            recorded in ``settings["task"]``. The data in memory is put on ``device`` once;
            a DataLoader is streamed batch by batch on every evaluation.
    """
    models = list(models)
    if not models or not all(isinstance(mod, nn.Module) for mod in models):
        raise BasinscopeError(
            "basin_test needs a non-empty sequence of models (the solutions whose convex hull "
            f"is tested), got {[type(mod).__name__ for mod in models] or 'none'}."
        )
    m = len(models)
    names = tuple(str(i) for i in range(m)) if labels is None else tuple(map(str, labels))
    if len(names) != m:
        raise BasinscopeError(f"got {len(names)} labels for {m} models: pass one each.")
    eps_given = epsilon is not None
    if eps_given:
        epsilon = _check_number("epsilon", epsilon)
    delta = _check_number("delta", delta, positive=True)
    samples = _check_count("samples", samples, 2, " (a standard error needs two samples)")
    pairs = _check_count("pairs", pairs, 2, " (a standard error needs two pairs)")
    seed = _check_count("seed", seed, 0)
    confidence = _check_number("confidence", confidence)
    if not 0 < confidence < 1:
        raise BasinscopeError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    dtype, device = dtype_name(dtype), str(device)
    task = as_task(task)
    if bn_policy == "stored" and m > 1:
        warn_stored_bn(models[0], "basin test on the convex hull of solutions")
    # read once, on the evaluation device (a DataLoader: streamed on every evaluation)
    kw = dict(device=device, dtype=dtype, task=task)
    batches = eval_batches(data, batch_size=batch_size, **kw)
    _, targets = next(iter(batches))
    (metric_obj,) = task.resolve_metrics([metric], targets)
    opts = {
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "bn_policy": bn_policy,
        "bn_data": eval_batches(bn_data, batch_size=128, limit=bn_batches, **kw)
        if bn_data is not None
        else None,
        "bn_batches": bn_batches,
        "strategy": strategy,
        "chunk_size": chunk_size,
    }
    hull = _Hull(models, batches, metric_obj, opts, task)
    dim = hull.affine_dimension()
    point = dim == 0
    if not point and dim < m - 1:
        warnings.warn(
            f"the {m} solutions are affinely dependent (their hull has dimension {dim} < "
            f"{m - 1}): Dirichlet(1,...,1) weights are not uniform on the hull and exits of "
            "the simplex need not be exits of the hull; pass an affinely independent subset "
            "(the hull's vertices).",
            UserWarning,
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n = hull.num_params

    # uniform points of S, and pairs with their exit points
    inside_w = _uniform(rng, m, samples)
    b1 = _uniform(rng, m, pairs)
    b2 = _uniform(rng, m, pairs)
    f = exit_weights(b1, b2)
    dist = hull.distances(f - b1)
    redrawn = 0
    if not point:
        for _ in range(_MAX_REDRAWS):  # degenerate rays: probability 0, redrawn
            bad = ~(dist > 0)
            if not bad.any():
                break
            redrawn += int(bad.sum())
            b1[bad] = _uniform(rng, m, int(bad.sum()))
            b2[bad] = _uniform(rng, m, int(bad.sum()))
            f[bad] = exit_weights(b1[bad], b2[bad])
            dist[bad] = hull.distances(f[bad] - b1[bad])
        else:
            raise BasinscopeError("could not draw non-degenerate rays in the hull.")
    steps = np.abs(rng.normal(0.0, delta, size=pairs))

    # one engine call: the solutions (diagnostic), the uniform points and, for a hull of
    # positive dimension, the points kappa = theta(f + t (f - b1)) of condition 3
    rows = [np.eye(m), inside_w]
    buffer_rows = [np.eye(m), inside_w]
    if not point:
        rows.append(f + (steps / dist)[:, None] * (f - b1))
        buffer_rows.append(f)
    losses = hull.evaluate(np.concatenate(rows), np.concatenate(buffer_rows))
    vertex_losses = losses[:m]
    inside = losses[m : m + samples]

    # per-point random vectors: nu (condition 2) and, for a point hull, |nu'| u (condition 3)
    tasks = [(k, None, delta / math.sqrt(n)) for k in range(pairs)]
    if point:
        tasks += [(k, float(steps[k]), 1.0) for k in range(pairs)]
    group = max(1, min(_GROUP, chunk_size))
    noisy, noise_norms = [], []
    for start in range(0, len(tasks), group):
        chunk = tasks[start : start + group]
        vectors = [hull.random_vector(gen, length, scale) for _, length, scale in chunk]
        noise_norms += [
            math.sqrt(sum(float((v.double() ** 2).sum()) for v in vec.values())) for vec in vectors
        ]
        fw = f[[k for k, _, _ in chunk]]
        noisy.append(hull.evaluate(fw, fw, vectors))
        del vectors
    noisy_losses = np.concatenate(noisy)
    noise_losses = noisy_losses[:pairs]
    step_losses = noisy_losses[pairs:] if point else losses[m + samples :]
    noise_norms = noise_norms[:pairs]

    # estimates, standard errors, verdicts
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    mu = float(inside.mean())
    dev = inside - mu
    big_d = float(np.abs(dev).mean())
    infl = np.abs(dev) + float(np.sign(-dev).mean()) * dev
    se_mu = _sd(inside) / math.sqrt(samples)
    se_d = _sd(infl) / math.sqrt(samples)
    e2 = float(noise_losses.mean()) - mu
    e3 = float(step_losses.mean()) - mu
    se2 = math.sqrt(_sd(noise_losses) ** 2 / pairs + se_mu**2)
    se3 = math.sqrt(_sd(step_losses) ** 2 / pairs + se_mu**2)
    if eps_given:
        eps = float(epsilon)
        c1 = _condition(1, big_d, se_d, eps, eps - big_d, se_d, z)
        c2 = _condition(2, e2, se2, 2 * eps, e2 - 2 * eps, se2, z)
        c3 = _condition(3, e3, se3, 2 * eps, e3 - 2 * eps, se3, z)
    else:
        eps = big_d
        joint = _sd(inside + 2 * infl) ** 2 / samples
        c1 = _condition(1, big_d, se_d, eps, 0.0, 0.0, z, trivial=True)
        c2 = _condition(
            2, e2, se2, 2 * eps, e2 - 2 * eps, math.sqrt(_sd(noise_losses) ** 2 / pairs + joint), z
        )
        c3 = _condition(
            3, e3, se3, 2 * eps, e3 - 2 * eps, math.sqrt(_sd(step_losses) ** 2 / pairs + joint), z
        )
    conds = (c1, c2, c3)
    holds = all(c.holds for c in conds)
    if holds:
        supported = all(c.ci_supports is not False for c in conds)
    else:
        supported = any(not c.holds and c.ci_supports for c in conds)

    settings = {
        "m": m,
        "samples": samples,
        "pairs": pairs,
        "seed": seed,
        "confidence": confidence,
        "metric": metric_obj.name,
        "metric_definition": metric_obj.definition,
        "uniform_sampling": "Dirichlet(1,...,1) barycentric weights",
        "interval_method": "normal; delta-method standard error for E|l - mu|",
        "noise_evaluation": f"extra engine basis directions, {group} per call",
        "degenerate_rays": (
            "point hull: f = w, condition 3 direction uniform on the unit sphere"
            if point
            else f"redrawn ({redrawn} redrawn)"
        ),
        "redrawn_pairs": redrawn,
        **{k: v for k, v in opts.items() if k != "bn_data"},
        "task": task.describe(),
    }
    # the settings (a custom metric, a callable or a Metric, has no spec)
    custom = not (isinstance(metric, str) and metric in METRICS)
    spec = None if custom else BasinSpec.from_kwargs(locals())
    return BasinResult(
        epsilon=eps,
        epsilon_estimated=not eps_given,
        delta=delta,
        holds=bool(holds),
        ci_supports=bool(supported),
        mean_loss=mu,
        mean_loss_std_error=se_mu,
        mean_loss_ci=_interval(mu, se_mu, z),
        condition1=c1,
        condition2=c2,
        condition3=c3,
        epsilon_range=(big_d, min(e2, e3) / 2),
        num_params=n,
        affine_dimension=dim,
        vertex_losses=tuple(float(v) for v in vertex_losses),
        inside_weights=_rows(inside_w),
        inside_losses=tuple(float(v) for v in inside),
        pair_start=_rows(b1),
        pair_end=_rows(b2),
        exit_points=_rows(f),
        exit_distances=tuple(float(v) for v in dist),
        noise_norms=tuple(float(v) for v in noise_norms),
        noise_losses=tuple(float(v) for v in noise_losses),
        step_lengths=tuple(float(v) for v in steps),
        step_losses=tuple(float(v) for v in step_losses),
        definition=DEFINITION,
        settings=settings,
        labels=names,
        spec=spec,
    )


def _rows(a: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in a)
