"""Module rewinding (Zhang, Bengio & Singer 2019, *Are all layers created equal?*).

Reset the parameters of one module to their initial (or pre-trained) values, keep every
other module at its final values, and measure how the metrics change. The result records
``change = rewound - baseline`` for every metric (a loss that rises has a positive change,
an accuracy that drops a negative one). :mod:`basinscope.analyses.criticality` goes further:
how far towards its initial value a module can move, under noise, within a loss threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from basinscope.analyses.distance import MODULES_HELP, group_by_module
from basinscope.analyses.landscape import as_splits, basis_on, dtype_name, eval_batches
from basinscope.engine import EvalJob, PointBasis, Task, as_task, evaluate_points
from basinscope.engine.metrics import Metric
from basinscope.engine.precision import PRECISIONS, to_dtype
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import check_same_keys, get_buffers, get_params
from basinscope.result import Result, fmt
from basinscope.spec import (
    BATCH_SIZE_HELP,
    EVAL_DTYPES,
    STRATEGIES,
    STRATEGY_HELP,
    EvalOptions,
    Spec,
    group,
    option,
    takes_spec,
)

__all__ = ["REWIND_DEFINITION", "EngineOptions", "RewindResult", "RewindSpec", "rewind"]

REWIND_DEFINITION = "change = metric(module rewound to init, rest final) - metric(final)"
DTYPE_NAMES = PRECISIONS


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A precision by name or as a torch dtype (bfloat16/float16: autocast)."""
    return to_dtype(dtype)


def _init_params(model_init, final: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(model_init, nn.Module):
        p = get_params(model_init)
    elif isinstance(model_init, Mapping):
        p = {k: v.detach().clone() for k, v in model_init.items()}
    else:
        raise BasinscopeError(
            f"model_init must be an nn.Module or a parameter dict, got {type(model_init).__name__}"
        )
    check_same_keys(
        final, p, "final and initial parameters", "Pass the same architecture's weights."
    )
    return {k: v.to(dtype=final[k].dtype, device=final[k].device) for k, v in p.items()}


def _one_split(data: Any, split: str | None) -> tuple[str, Any]:
    """A ``{split: data}`` mapping picks that split; a single dataset is labelled ``split``."""
    splits = as_splits(data)
    if split is not None and splits.get("train") is data:
        return split, splits["train"]  # one dataset given: ``split`` only names it
    if split is None:
        split = next(iter(splits))
    if split not in splits:
        raise BasinscopeError(f"unknown split {split!r}: data has splits {list(splits)}")
    return split, splits[split]


def _restricted(delta: Mapping[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
    ks = set(keys)
    return {k: (v if k in ks else torch.zeros_like(v)) for k, v in delta.items()}


# -- rewinding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineOptions(Spec):
    """How the engine evaluates the points of rewinding and module criticality (the final
    model's buffers are kept: there is no BatchNorm re-estimation to set)."""

    batch_size: int = option(1024, BATCH_SIZE_HELP, low=1)
    dtype: str = option(
        "float32",
        "float32, float64, or mixed precision bfloat16/float16 (autocast over float32 weights).",
        choices=EVAL_DTYPES,
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N or mps.")
    strategy: str = option("auto", f"Evaluation engine: {STRATEGY_HELP}", choices=STRATEGIES)
    chunk_size: int = option(64, "Points per engine call.", low=1, cli=False)

    def check(self) -> None:
        EvalOptions(device=self.device)  # the device exists here (named --device)

    @classmethod
    def of(
        cls,
        batch_size: int,
        dtype: torch.dtype | str,
        device: Any,
        strategy: str,
        chunk_size: int,
    ) -> EngineOptions:
        """The options of a call (``dtype`` a torch dtype or its name)."""
        name = dtype_name(dtype)
        return cls(
            batch_size=batch_size,
            dtype=name,
            device=str(device),
            strategy=strategy,
            chunk_size=chunk_size,
        )


@dataclass(frozen=True)
class RewindSpec(Spec):
    """Rewind one module at a time to its initial value and measure the damage.

    For every module M (--modules; default every module that owns parameters), the model
    with M's parameters set back to --init and the rest left at --weights is evaluated on
    --split; change = metric(M rewound) - metric(final), for the loss and the accuracy
    (Zhang, Bengio & Singer 2019, "Are all layers created equal?"). Buffers stay final.
    figures/rewind shows the accuracy drop (final minus rewound) per module.

    Library: ``rewind(model_final, model_init, data, spec=RewindSpec(...))``; the fields are
    its keyword arguments. ``split=None`` takes the data's first split (a single dataset is
    called ``train``).
    """

    kind: ClassVar[str] = "rewind"

    modules: tuple[str, ...] = option((), MODULES_HELP)
    metrics: tuple[str, ...] = option(("loss", "accuracy"), "Metrics evaluated.", cli=False)
    split: str | None = option(None, "Split the models are evaluated on.")
    engine: EngineOptions = group(EngineOptions)


@dataclass(frozen=True)
class RewindResult(Result, kind="rewind"):
    """Metrics with one module rewound at a time, against the final model's. ``task``
    records how the model was run and what the loss is (:meth:`basinscope.engine.Task.describe`;
    ``None`` in results of older versions)."""

    baseline: dict[str, float]
    rewound: dict[str, dict[str, float]]
    change: dict[str, dict[str, float]]
    split: str
    definition: str = REWIND_DEFINITION
    spec: RewindSpec | None = None
    task: dict[str, Any] | None = None

    def summary(self) -> list[str]:
        """The final model's metrics, then each rewound module's and its accuracy drop
        (the metrics measured: a regression loss has no accuracy)."""
        base = self.baseline
        names = list(base)
        drop = "accuracy" in base
        lines = [
            f"final model on {self.split}: " + ", ".join(f"{n} {fmt(base[n])}" for n in names),
            f"{'module rewound':<20} "
            + " ".join(f"{n:>10}" for n in names)
            + (f" {'acc. drop':>10}" if drop else ""),
        ]
        return lines + [
            f"{m:<20} "
            + " ".join(f"{fmt(v[n]):>10}" for n in names)
            + (f" {fmt(-self.change[m]['accuracy']):>10}" if drop else "")
            for m, v in self.rewound.items()
        ]


@takes_spec(RewindSpec)
def rewind(
    model_final: nn.Module,
    model_init: nn.Module | Mapping[str, Tensor],
    data: Any,
    *,
    modules: Sequence[str] | None = None,
    metrics: Sequence[str | Metric | Callable] = ("loss", "accuracy"),
    split: str | None = None,
    batch_size: int = 1024,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    strategy: str = "auto",
    chunk_size: int = 64,
    task: Task | None = None,
) -> RewindResult:
    """Rewind each module to ``model_init``'s values (rest final) and evaluate; see module doc.

    One engine call evaluates the final model and every rewound model; inputs are never
    mutated. Buffers stay at the final model's values. ``modules`` as in
    :func:`~basinscope.analyses.distance.group_by_module`; ``dtype`` a torch dtype or its
    name (``"float64"``; ``"bfloat16"``/``"float16"``: autocast). ``task``
    (:class:`~basinscope.engine.Task`) says how the model is run on a batch and what the
    loss is; it is recorded in the result. The data in memory is put on ``device`` once; a
    DataLoader is streamed.
    """
    dtype = _torch_dtype(dtype)
    task = as_task(task)
    final = get_params(model_final)
    init = _init_params(model_init, final)
    groups = group_by_module(list(final), modules)
    delta = {k: init[k] - final[k] for k in final}
    basis = PointBasis(
        final,
        tuple(_restricted(delta, ks) for ks in groups.values()),
        get_buffers(model_final),
    )
    split, d = _one_split(data, split)
    batches = eval_batches(d, batch_size=batch_size, device=device, dtype=dtype, task=task)
    _, targets = next(iter(batches))
    resolved = task.resolve_metrics(metrics, targets)
    job = EvalJob(
        model_final,
        basis_on(basis, device),
        {split: batches},
        metrics=tuple(resolved),
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        strategy=strategy,
        task=task,
    )
    coeffs = np.vstack([np.zeros((1, len(groups))), np.eye(len(groups))])
    res = evaluate_points(job, coeffs, chunk_size=chunk_size)
    names = [m.name for m in resolved]
    baseline = {n: float(res.values[f"{split}_{n}"][0]) for n in names}
    rewound = {
        m: {n: float(res.values[f"{split}_{n}"][1 + j]) for n in names}
        for j, m in enumerate(groups)
    }
    change = {m: {n: v[n] - baseline[n] for n in names} for m, v in rewound.items()}
    spec = RewindSpec(
        modules=tuple(modules or ()),
        metrics=tuple(names),
        split=split,
        engine=EngineOptions.of(batch_size, dtype, device, strategy, chunk_size),
    )
    return RewindResult(
        baseline=baseline,
        rewound=rewound,
        change=change,
        split=split,
        spec=spec,
        task=task.describe(),
    )
