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

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from basinscope.engine import as_batches
from basinscope.engine.fit import check_model_data
from basinscope.errors import BasinscopeError
from basinscope.geometry.params import check_same_keys, dot
from basinscope.result import Result, fmt
from basinscope.spec import Spec, option, takes_spec

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
    one wrong, and their agreement (:func:`mistake_analysis`); the result is then kind
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


@dataclass(frozen=True)
class MistakeSpec(Spec):
    """The settings of :func:`mistake_analysis` (and of ``basinscope distance --mistakes``)."""

    kind: ClassVar[str] = "mistakes"

    batch_size: int = option(1024, "Examples per forward pass.", low=1)
    split: str | None = option(None, "The name of the data's split, recorded in the result.")


@dataclass(frozen=True)
class MistakeResult(Result, kind="mistakes"):
    """Where two classifiers err together or apart on the same examples (``extra`` holds
    each model's accuracy)."""

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


@torch.no_grad()
def _predictions(model: nn.Module, batches) -> Tensor:
    m = copy.deepcopy(model).eval()
    dtype = next((p.dtype for p in m.parameters()), torch.float32)
    preds = []
    for x, _ in batches:
        x = x.to(dtype) if x.is_floating_point() else x
        preds.append(m(x).argmax(dim=-1).cpu())
    return torch.cat(preds)


@takes_spec(MistakeSpec)
def mistake_analysis(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    batch_size: int = 1024,
    split: str | None = None,
    labels: tuple[str, str] = ("model_a", "model_b"),
) -> MistakeResult:
    """Count examples both models get right, both wrong (same or different label), or one wrong.

    Predictions are the arg-max outputs in eval mode (the models are not touched: copies are
    evaluated). ``agreement`` is the fraction of examples on which the predictions agree.
    ``split`` names the data and ``labels`` the two models in the result.
    """
    batches = as_batches(data, batch_size=batch_size, device="cpu")
    check_model_data(model_a, batches, what="the data (model A)")
    check_model_data(model_b, batches, what="the data (model B)")
    y = torch.cat([t.cpu() for _, t in batches])
    pa, pb = _predictions(model_a, batches), _predictions(model_b, batches)
    ra, rb = pa == y, pb == y
    same = pa == pb
    n = int(y.numel())
    if n == 0:
        raise BasinscopeError("no examples in data: mistake analysis needs at least one")
    return MistakeResult(
        n=n,
        both_right=int((ra & rb).sum()),
        both_wrong_same=int((~ra & ~rb & same).sum()),
        both_wrong_different=int((~ra & ~rb & ~same).sum()),
        only_a_wrong=int((~ra & rb).sum()),
        only_b_wrong=int((ra & ~rb).sum()),
        agreement=float(np.mean(same.numpy())),
        extra={"accuracy_a": float(ra.double().mean()), "accuracy_b": float(rb.double().mean())},
        models=(str(labels[0]), str(labels[1])),
        split=split,
        spec=MistakeSpec(batch_size=batch_size, split=split),
    )
