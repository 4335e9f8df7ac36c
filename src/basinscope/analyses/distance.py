"""Parameter-space distances between checkpoints and where two models make mistakes.

Neyshabur, Sedghi & Zhang (2020), *What is being transferred in transfer learning?*,
compare checkpoints in parameter space (overall and module by module) and compare the
examples two models get wrong. For parameter dicts :math:`a, b` (or the restriction of
both to one module):

.. math::

    d(a, b) = \\lVert a - b \\rVert_2, \\qquad
    d_\\text{rel}(a, b) = \\frac{\\lVert a - b \\rVert_2}{\\lVert a \\rVert_2}, \\qquad
    \\angle(a, b) = \\arccos \\frac{\\langle a, b \\rangle}{\\lVert a \\rVert_2 \\lVert b \\rVert_2}
    \\ \\text{(degrees)}.

A *module* is the owner of a parameter: the name before its last dot (``"0.weight"``
belongs to module ``"0"``; a parameter registered on the root module belongs to
``"(root)"``). The per-module squared distances add up to the overall squared distance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from basinscope.analyses.similarity import evaluated
from basinscope.engine import as_batches
from basinscope.engine.fit import check_model_data
from basinscope.engine.task import Task, as_task
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import check_same_keys, dot
from basinscope.result import Result, fmt
from basinscope.spec import EVAL_DTYPES, EvalOptions, Spec, option, takes_spec

__all__ = [
    "AGREEMENT_DEFINITION",
    "DISTANCE_DEFINITION",
    "ROOT",
    "DistanceAndMistakes",
    "DistanceResult",
    "DistanceSpec",
    "MistakeResult",
    "MistakeSpec",
    "group_by_module",
    "mistake_analysis",
    "parameter_distance",
]

ROOT = "(root)"
DISTANCE_DEFINITION = (
    "l2 = ||a-b||, relative = ||a-b||/||a||, angle = arccos(<a,b>/(||a|| ||b||)) in degrees"
)
AGREEMENT_DEFINITION = "agreement = fraction of examples with argmax(a) == argmax(b)"
MODULES_HELP = (
    "Module (named_modules() name, '(root)' for the root); repeat. Default: every module that "
    "owns parameters."
)


def _as_params(x: nn.Module | Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    if isinstance(x, nn.Module):
        return {k: v.detach() for k, v in x.named_parameters()}
    if isinstance(x, Mapping):
        return {
            k: (v.detach() if isinstance(v, Tensor) else torch.as_tensor(v)) for k, v in x.items()
        }
    raise BasinscopeError(
        f"{what} must be an nn.Module or a parameter dict, got {type(x).__name__}"
    )


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ROOT


def group_by_module(
    keys: Sequence[str], modules: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Parameter names grouped by module.

    By default (``modules`` None or empty) each parameter goes to its owner (the name before
    the last dot). With ``modules`` (names as in ``named_modules()``, ``"(root)"`` for the
    root), a parameter belongs to every listed module that is a prefix of its name, so a
    parent module (``"features"``) collects all of its children's parameters.
    """
    if not modules:
        groups: dict[str, list[str]] = {}
        for k in keys:
            groups.setdefault(_owner(k), []).append(k)
        return groups
    groups = {}
    for m in modules:
        if m == ROOT:
            members = [k for k in keys if "." not in k]
        else:
            members = [k for k in keys if k.startswith(m + ".")]
        if not members:
            owners = sorted({_owner(k) for k in keys})
            raise BasinscopeError(
                f"module {m!r} owns no parameters: modules with parameters are {owners}"
            )
        groups[m] = members
    return groups


def _stats(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: Sequence[str]) -> dict:
    aa = {k: a[k] for k in keys}
    bb = {k: b[k] for k in keys}
    diff = {k: aa[k].double() - bb[k].double() for k in keys}
    sq = float(dot(diff, diff))
    na = math.sqrt(float(dot(aa, aa)))
    nb = math.sqrt(float(dot(bb, bb)))
    ab = float(dot(aa, bb))
    if na > 0 and nb > 0:
        cos = max(-1.0, min(1.0, ab / (na * nb)))
        angle = math.degrees(math.acos(cos))
    else:
        angle = float("nan")
    return {
        "l2": math.sqrt(sq),
        "sq_l2": sq,
        "relative": math.sqrt(sq) / na if na > 0 else float("nan"),
        "angle_deg": angle,
        "norm_a": na,
        "norm_b": nb,
        "numel": int(sum(aa[k].numel() for k in keys)),
    }


@dataclass(frozen=True)
class DistanceSpec(Spec):
    """Parameter distance between two models, per module; optionally their shared mistakes.

    For the parameter vectors a (the first --weights) and b (the second), overall and per
    module: l2 = ||a - b||, relative = ||a - b|| / ||a||, angle_deg = arccos(<a, b> / (||a||
    ||b||)) in degrees (plus the norms). --modules picks modules (a parent collects its
    children's parameters); default: every module that owns parameters. figures/distance is
    the bar plot of the relative distance per module. --mistakes also counts, on --split, the
    examples both models get right, both wrong (with the same or a different label) or only
    one wrong, and their agreement (:func:`mistake_analysis`, the models on --device in
    --dtype); the result is then kind
    distance_and_mistakes: distance (the distance result) and mistakes (n, both_right,
    both_wrong_same, both_wrong_different, only_a_wrong, only_b_wrong, agreement, extra:
    accuracy_a and accuracy_b), and figures/distance_and_mistakes shows both.

    Library: ``parameter_distance(a, b, spec=DistanceSpec(...))``; the fields are its keyword
    arguments.
    """

    kind: ClassVar[str] = "distance"

    modules: tuple[str, ...] = option((), MODULES_HELP)


@dataclass(frozen=True)
class DistanceResult(Result, kind="distance"):
    """Overall and per-module distances between two parameter points (``models[0]`` is
    ``a``, the reference of the relative distance)."""

    overall: dict[str, float | int]
    per_module: dict[str, dict[str, float | int]]
    definition: str = DISTANCE_DEFINITION
    models: tuple[str, str] = ("model_a", "model_b")
    spec: DistanceSpec | None = None

    def table(self) -> list[dict[str, Any]]:
        """One row per module, then an ``"(all)"`` row."""
        rows = [{"module": m, **v} for m, v in self.per_module.items()]
        rows.append({"module": "(all)", **self.overall})
        return rows

    def summary(self) -> list[str]:
        """The :meth:`table`: l2, relative distance and angle per module, then overall."""
        lines = [f"{'module':<20} {'l2':>10} {'relative':>10} {'angle (deg)':>11}"]
        return lines + [
            f"{row['module']:<20} {fmt(row['l2']):>10} {fmt(row['relative']):>10}  "
            f"{fmt(row['angle_deg']):>10}"
            for row in self.table()
        ]


@takes_spec(DistanceSpec)
def parameter_distance(
    a: nn.Module | Mapping[str, Tensor],
    b: nn.Module | Mapping[str, Tensor],
    *,
    modules: Sequence[str] | None = None,
    labels: tuple[str, str] = ("model_a", "model_b"),
) -> DistanceResult:
    """L2 distance, relative distance and angle between ``a`` and ``b``, overall and per module.

    ``a`` and ``b`` are models or parameter dicts with the same keys and shapes; the
    relative distance is measured relative to ``a``. See the module docstring. ``modules``
    as in :func:`group_by_module`; ``labels`` name ``a`` and ``b`` in the result.
    """
    pa = _as_params(a, "a")
    pb = _as_params(b, "b")
    check_same_keys(pa, pb)
    keys = list(pa)
    per_module = {m: _stats(pa, pb, ks) for m, ks in group_by_module(keys, modules).items()}
    return DistanceResult(
        overall=_stats(pa, pb, keys),
        per_module=per_module,
        models=(str(labels[0]), str(labels[1])),
        spec=DistanceSpec(modules=tuple(modules or ())),
    )


# -- mistakes ----------------------------------------------------------------------------


def _eval_help(name: str) -> str:
    return EvalOptions.__dataclass_fields__[name].metadata["help"]


@dataclass(frozen=True)
class MistakeSpec(Spec):
    """The settings of :func:`mistake_analysis` (and of ``basinscope distance --mistakes``):
    the models run on ``device`` in ``dtype``."""

    kind: ClassVar[str] = "mistakes"

    batch_size: int = option(1024, "Examples per forward pass.", low=1)
    split: str | None = option(None, "The name of the data's split, recorded in the result.")
    device: str = option("cpu", _eval_help("device"))
    dtype: str = option("float32", _eval_help("dtype"), choices=EVAL_DTYPES)

    def check(self) -> None:
        EvalOptions(device=self.device)  # the device exists here (named --device)


@dataclass(frozen=True)
class MistakeResult(Result, kind="mistakes"):
    """Where two classifiers err together or apart on the same examples (``extra`` holds
    each model's accuracy; ``task`` how the models were called and their predictions read)."""

    n: int
    both_right: int
    both_wrong_same: int
    both_wrong_different: int
    only_a_wrong: int
    only_b_wrong: int
    agreement: float
    extra: dict[str, Any] = field(default_factory=dict)
    definition: str = AGREEMENT_DEFINITION
    models: tuple[str, str] = ("model_a", "model_b")
    split: str | None = None
    task: dict[str, Any] | None = None
    spec: MistakeSpec | None = None

    @property
    def both_wrong(self) -> int:
        return self.both_wrong_same + self.both_wrong_different

    def summary(self) -> list[str]:
        """One line: the counts and the agreement."""
        a, b = self.models
        return [
            f"mistakes on {self.split} ({self.n} examples): both right {self.both_right}, both "
            f"wrong {self.both_wrong} ({self.both_wrong_same} with the same label), only {a} "
            f"wrong {self.only_a_wrong}, only {b} wrong {self.only_b_wrong}; agreement "
            f"{fmt(self.agreement)}"
        ]


@dataclass(frozen=True)
class DistanceAndMistakes(Result, kind="distance_and_mistakes"):
    """Two models compared in parameter space (``distance``) and by their mistakes
    (``mistakes``): what ``basinscope distance --mistakes`` computes."""

    distance: DistanceResult
    mistakes: MistakeResult
    definition: dict[str, str] = field(
        default_factory=lambda: {"distance": DISTANCE_DEFINITION, "agreement": AGREEMENT_DEFINITION}
    )

    def summary(self) -> list[str]:
        """The distance table, then the mistakes line."""
        return self.distance.summary() + self.mistakes.summary()


@takes_spec(MistakeSpec)
def mistake_analysis(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    batch_size: int = 1024,
    split: str | None = None,
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    labels: tuple[str, str] = ("model_a", "model_b"),
) -> MistakeResult:
    """Count examples both models get right, both wrong (same or different label), or one wrong.

    Predictions are the arg-max of each model's prediction (``task.prediction``: a logits
    tensor, ``.logits``, ...) in eval mode; the caller's models are left as they were.
    ``agreement`` is the fraction of examples on which the predictions agree. ``split``
    names the data and ``labels`` the two models in the result.

    ``task`` splits the batches and calls the models (default ``(x, y)`` and ``model(x)``;
    dict batches such as ``input_ids``/``attention_mask``/``labels`` call
    ``model(**inputs)``); its targets must be class labels. ``data`` may be a DataLoader,
    read batch by batch. The models run on ``device`` (default: model A's) in ``dtype``
    (default: their own; ``"bfloat16"``/``"float16"`` autocast); each batch is moved there
    and only the counts come back, once.
    """
    task = as_task(task)
    batches = as_batches(data, batch_size=batch_size, task=task)
    counts = None
    with evaluated((model_a, model_b), device, dtype) as ev:
        net_a, net_b = ev.models
        check_model_data(net_a, batches, what="the data (model A)", task=task)
        check_model_data(net_b, batches, what="the data (model B)", task=task)
        with torch.no_grad():
            for x, y in batches:
                y = torch.as_tensor(y)
                if y.is_floating_point():
                    raise BasinscopeError(
                        f"mistake analysis compares predicted classes with class labels, but the "
                        f"targets are {y.dtype} values (loss {task.loss_name}): pass integer "
                        "labels and a classifier (a regression model has no mistakes to count)"
                    )
                x, y = ev.inputs(x), y.to(ev.device).reshape(-1)
                pa = task.prediction(ev.run(net_a, x)).argmax(dim=-1).reshape(-1)
                pb = task.prediction(ev.run(net_b, x)).argmax(dim=-1).reshape(-1)
                ra, rb, same = pa == y, pb == y, pa == pb
                batch = torch.stack(
                    [
                        (ra & rb).sum(),
                        (~ra & ~rb & same).sum(),
                        (~ra & ~rb & ~same).sum(),
                        (~ra & rb).sum(),
                        (ra & ~rb).sum(),
                        same.sum(),
                        ra.sum(),
                        rb.sum(),
                    ]
                )
                counts = batch if counts is None else counts + batch  # on the device
    if counts is None:
        raise BasinscopeError("no examples in data: mistake analysis needs at least one")
    right, same_wrong, diff_wrong, only_a, only_b, agree, acc_a, acc_b = counts.tolist()
    n = right + same_wrong + diff_wrong + only_a + only_b
    if n == 0:
        raise BasinscopeError("no examples in data: mistake analysis needs at least one")
    return MistakeResult(
        n=n,
        both_right=right,
        both_wrong_same=same_wrong,
        both_wrong_different=diff_wrong,
        only_a_wrong=only_a,
        only_b_wrong=only_b,
        agreement=agree / n,
        extra={"accuracy_a": acc_a / n, "accuracy_b": acc_b / n},
        models=(str(labels[0]), str(labels[1])),
        split=split,
        task=task.describe(),
        spec=MistakeSpec(
            batch_size=batch_size,
            split=split,
            device=str(device if device is not None else ev.device),
            dtype=ev.precision,
        ),
    )
