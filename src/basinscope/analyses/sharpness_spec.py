"""The settings of a sharpness run: which named measures, and each one's options.

A run of :func:`~basinscope.analyses.sharpness_measures.sharpness_measures` (and of
basinscope sharpness) computes one or several of the measures of
:mod:`basinscope.analyses.sharpness`, each a named definition. Their options overlap
(``rho`` is the radius of every worst-case ball, ``seed`` seeds every measure), so one
:class:`SharpnessSpec` holds them all and :meth:`SharpnessSpec.measure_kwargs` hands each
measure the ones it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from basinscope._checks import MAX_STEPS, at_least, check_seed, positive_float
from basinscope.curvature.loss import curvature_dtype
from basinscope.errors import BasinscopeError
from basinscope.spec import (
    BATCH_SIZE_HELP,
    DTYPES,
    STRATEGIES,
    STRATEGY_HELP,
    EvalOptions,
    Spec,
    option,
)

__all__ = ["MEASURE_NAMES", "NORMS", "SharpnessSpec"]

#: The named measures, in the order ``all`` runs them.
MEASURE_NAMES = ("worst_case", "average", "adaptive", "filter_normalized", "m_sharpness")
#: The balls of perturbations: ``||delta||_2 <= rho`` or ``max_i |delta_i| <= rho``.
NORMS = ("l2", "linf")

# the options each measure takes from the spec (beyond dtype, device, batch_size)
_OPTIONS = {
    "worst_case": ("rho", "norm", "steps", "restarts", "relative", "seed"),
    "average": ("sigma", "samples", "seed", "strategy"),
    "adaptive": ("rho", "norm", "steps", "restarts", "seed", "strategy"),
    "filter_normalized": ("alpha", "num_directions", "seed", "strategy"),
    "m_sharpness": ("m", "rho", "norm", "seed"),
}


@dataclass(frozen=True)
class SharpnessSpec(Spec):
    """Sharpness of a minimum, by named measures, each with its definition recorded.

    Measures: worst_case (max loss increase in an L2 or Linf ball of radius rho, by
    projected gradient ascent with restarts; --relative for Keskar et al.'s form),
    average (mean increase under Gaussian noise of std sigma), adaptive (perturbations
    scaled by |w|: ASAM / Andriushchenko et al. 2023; invariant to rescaling symmetries),
    filter_normalized (Li et al.'s random filter-normalized directions at step alpha),
    m_sharpness (worst case per batch of m examples, averaged), or all.

    One --measure: figures/sharpness shows the increase of each restart, noise sample,
    direction or batch and the value, and the result is that measure's sharpness result
    (as each entry of measures below). Several (or all): figures/sharpness_measures, one
    bar per measure.

    The loss is computed in float32 or float64 (mixed precision is for evaluating points).

    These are the settings of sharpness_measures() (its spec) and of basinscope sharpness.
    """

    kind: ClassVar[str] = "sharpness"

    split: str = option("train", "Which split's loss.")
    subset: int | None = option(None, "Use only the first N examples.", low=1)
    measure: tuple[str, ...] = option(
        ("all",),
        "worst_case, average, adaptive, filter_normalized, m_sharpness or all (repeatable).",
        choices=(*MEASURE_NAMES, "all"),
    )
    rho: float = option(
        0.05, "Radius of the perturbation ball (worst_case, adaptive, m_sharpness)."
    )
    norm: str = option("l2", "l2 or linf.", choices=NORMS)
    sigma: float = option(0.01, "Noise std (average).")
    samples: int = option(20, "Noise samples (average).")
    alpha: float = option(0.1, "Step along filter-normalized directions.")
    num_directions: int = option(
        10, "Number of filter-normalized directions.", flag="--directions", low=1
    )
    m: int = option(32, "Batch size of m-sharpness.", low=1)
    steps: int = option(10, "Ascent steps (worst_case, adaptive).", low=1, high=MAX_STEPS)
    restarts: int = option(3, "Random restarts of the ascent.", low=1)
    relative: bool = option(
        False, "worst_case: Keskar et al. 2017's relative box and percentage.", flag="--relative"
    )
    seed: int = option(0, "Seed of every random draw (restarts, noise, directions, batches).")
    dtype: str = option("float32", "float32 or float64.", choices=DTYPES)
    device: str = option("cpu", "torch device, e.g. cpu or cuda.")
    batch_size: int = option(1024, BATCH_SIZE_HELP, low=1)
    strategy: str = option(
        "auto",
        "How the engine evaluates the points of average, adaptive and filter_normalized: "
        + STRATEGY_HELP,
        choices=STRATEGIES,
    )

    def __post_init__(self) -> None:
        curvature_dtype(self.dtype, self.name_of("dtype"))  # bfloat16 refused with why
        super().__post_init__()

    def check(self) -> None:
        if not self.measure:
            raise BasinscopeError(
                f"{self.name_of('measure')} names no measure: pass one of "
                f"{', '.join(MEASURE_NAMES)} or all"
            )
        for name, example in (("rho", "0.05"), ("sigma", "0.01")):
            flag = self.name_of(name)
            positive_float(flag, getattr(self, name), fix=f"e.g. {flag} {example}")
        at_least(
            self.name_of("samples"),
            self.samples,
            2,
            why=" (a standard error needs at least two samples)",
        )
        check_seed(self.name_of("seed"), self.seed)
        EvalOptions(device=self.device)  # the device exists here (named --device)

    def measures(self) -> tuple[str, ...]:
        """The measures to run, in order (``all``: every one, in :data:`MEASURE_NAMES` order)."""
        return MEASURE_NAMES if "all" in self.measure else self.measure

    def measure_kwargs(self, measure: str) -> dict[str, Any]:
        """The keyword arguments of ``measure``'s function: its options and the evaluation
        settings (the other measures' options are left to their defaults; the task or
        ``loss_fn`` is the caller's to add)."""
        names = (*_OPTIONS[measure], "dtype", "device", "batch_size")
        return {name: getattr(self, name) for name in names}
