"""Several sharpness measures of one solution in one run, each with its definition.

"Sharpness" is not one number: the measures of :mod:`basinscope.analyses.sharpness`
(worst case in a ball, average under noise, adaptive, filter-normalized, m-sharpness)
answer different questions and change differently under the rescaling symmetries of the
network. :func:`sharpness_measures` computes the ones a
:class:`~basinscope.analyses.sharpness_spec.SharpnessSpec` names, on the same data, and
:class:`SharpnessMeasures` keeps each result with the definition that produced it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from basinscope.analyses.sharpness import SHARPNESS_MEASURES, LossFn, SharpnessResult
from basinscope.analyses.sharpness_spec import SharpnessSpec
from basinscope.curvature.loss import first_examples
from basinscope.result import Result

__all__ = ["SharpnessMeasures", "sharpness_measures"]


@dataclass(frozen=True)
class SharpnessMeasures(Result, kind="sharpness_measures"):
    """The sharpness of one solution by several named measures.

    ``measures`` holds one :class:`~basinscope.analyses.sharpness.SharpnessResult` per
    measure, in the order they were asked for; ``definition`` maps each measure's name to
    its formula with its settings.
    """

    measures: tuple[SharpnessResult, ...]
    definition: dict[str, str] = field(default_factory=dict)
    spec: SharpnessSpec | None = None

    def summary(self) -> list[str]:
        """One line per measure (:meth:`SharpnessResult.summary`)."""
        return [line for r in self.measures for line in r.summary()]

    def __getitem__(self, measure: str) -> SharpnessResult:
        """The result of ``measure`` (the first one, if it was asked for twice)."""
        for r in self.measures:
            if r.measure == measure:
                return r
        raise KeyError(
            f"{measure!r} was not measured; measured: {[r.measure for r in self.measures]}"
        )


def sharpness_measures(
    model: nn.Module,
    data: Any,
    spec: SharpnessSpec | None = None,
    *,
    loss_fn: LossFn | None = None,
    task: Any = None,
    say: Callable[[str], None] | None = None,
    **settings: Any,
) -> SharpnessMeasures:
    """Every measure that ``spec`` (or the defaults with ``settings``) names, on ``data``.

    ``sharpness_measures(model, data, measure=("worst_case", "average"), rho=0.1)`` or
    ``sharpness_measures(model, data, SharpnessSpec(...))``. The spec's ``subset`` keeps the
    first examples of ``data``; each measure gets the options of
    :meth:`~basinscope.analyses.sharpness_spec.SharpnessSpec.measure_kwargs` and ``task``
    (how the model is run and which loss, :class:`~basinscope.engine.Task`) or ``loss_fn``. ``say`` is told the name of each measure before it runs. All options are
    checked (by the spec) before the first measure runs.
    """
    spec = SharpnessSpec.build(spec, **settings)  # type: ignore[assignment]
    data = first_examples(data, spec.subset)
    results = []
    for name in spec.measures():
        if say is not None:
            say(f"{name} ...")
        r = SHARPNESS_MEASURES[name](
            model, data, loss_fn=loss_fn, task=task, **spec.measure_kwargs(name)
        )
        results.append(dataclasses.replace(r, spec=spec))
    return SharpnessMeasures(
        measures=tuple(results),
        definition={r.measure: r.definition for r in results},
        spec=spec,
    )
