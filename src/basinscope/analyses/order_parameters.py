"""Order parameters of a two-layer network against a teacher: the overlaps that describe
teacher-student landscapes exactly (Saad & Solla 1995; Huang, Loureiro & Sarao Mannelli,
"Sharp description of local minima in the loss landscape of high-dimensional two-layer ReLU
neural networks").

For a student with first-layer weights :math:`W` (``K x d``, rows :math:`w_k`) and a teacher
with :math:`V` (``M x d``, rows :math:`v_m`), with Gaussian inputs the population loss of
:math:`\\sum_k g(w_k\\cdot x)` depends on the weights only through

.. math::  R = W V^\\top / d, \\quad Q = W W^\\top / d, \\quad T = V V^\\top / d

(``normalize="dim"``; ``"none"`` leaves out the :math:`1/d`). Relabelling the student's
hidden units permutes the rows of :math:`R` and the rows and columns of :math:`Q` without
changing the function, so :func:`order_parameters` also returns a permutation-invariant
form: the student's units in an *aligned* order, the first :math:`\\min(K, M)` matched one to
one with the teacher's units by the assignment of largest total overlap (Hungarian
algorithm on :math:`R`), listed in the teacher's order, then the unmatched units sorted by
the teacher unit they overlap most (then by that overlap, largest first). ``aligned_R`` and
``aligned_Q`` are :math:`R` and :math:`Q` in that order, and :meth:`OrderParameters.vector`
flattens them into a summary that is the same for any permutation of the student's units
(exact ties aside).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from basinscope.errors import BasinscopeError
from basinscope.result import Result, fmt
from basinscope.spec import Spec, option, takes_spec

__all__ = [
    "ORDER_PARAMETER_DEFINITION",
    "OrderParameterSpec",
    "OrderParameters",
    "align_units",
    "first_layer",
    "order_parameters",
]

ORDER_PARAMETER_DEFINITION = (
    "R = W V^T / d (student-teacher), Q = W W^T / d (student-student), T = V V^T / d "
    "(teacher-teacher), W and V the first-layer weights (rows: hidden units), d the input "
    "dimension; aligned: student units matched to teacher units by the assignment of largest "
    "total overlap R, then the unmatched ones by their best teacher unit and overlap"
)
NORMALIZATIONS = ("dim", "none")


@dataclass(frozen=True)
class OrderParameterSpec(Spec):
    """Order parameters of a two-layer network against a teacher.

    R = W V^T / d, Q = W W^T / d and T = V V^T / d, W and V the first-layer weights of the
    student and the teacher (rows: hidden units, --layer names the first Linear layer of
    both) and d the input dimension (--normalize none drops the 1/d). The result also holds
    R and Q with the student's units in an aligned order (matched to the teacher's units by
    the assignment of largest total overlap, then the unmatched ones by their best teacher
    unit): a summary that does not depend on how the student's units are numbered.
    """

    kind: ClassVar[str] = "order_parameters"

    normalize: str = option(
        "dim",
        "Divide the overlaps by the input dimension (dim) or not (none).",
        choices=NORMALIZATIONS,
    )
    layer: str = option("fc1", "Name of the first Linear layer of both networks.")


@dataclass(frozen=True)
class OrderParameters(Result, kind="order_parameters"):
    """The overlaps (``R``: ``K x M``, ``Q``: ``K x K``, ``T``: ``M x M``, float64, the
    student's units in their own order) and their aligned form: ``permutation[i]`` is the
    student unit in aligned position ``i``, ``matched[i]`` the teacher unit it is assigned to
    (-1 for unmatched units), ``aligned_R = R[permutation]``, ``aligned_Q =
    Q[permutation][:, permutation]``. ``student_out``/``teacher_out`` are the second-layer
    weights per unit (aligned order for the student; None without a second Linear layer)."""

    R: np.ndarray
    Q: np.ndarray
    T: np.ndarray
    aligned_R: np.ndarray
    aligned_Q: np.ndarray
    permutation: tuple[int, ...]
    matched: tuple[int, ...]
    student_out: np.ndarray | None
    teacher_out: np.ndarray | None
    input_dim: int
    normalize: str
    definition: str = ORDER_PARAMETER_DEFINITION
    spec: OrderParameterSpec | None = None

    def vector(self) -> np.ndarray:
        """A permutation-invariant summary: ``aligned_R`` flattened, then the upper triangle
        (with the diagonal) of ``aligned_Q``."""
        iu = np.triu_indices(len(self.aligned_Q))
        return np.concatenate([np.asarray(self.aligned_R).ravel(), self.aligned_Q[iu]])

    def summary(self) -> list[str]:
        """The aligned R (one row per student unit) and the student norms Q_kk."""
        lines = [f"student units {len(self.R)}, teacher units {len(self.T)}, d {self.input_dim}"]
        for i, k in enumerate(self.permutation):
            row = " ".join(fmt(v) for v in self.aligned_R[i])
            who = f"teacher {self.matched[i]}" if self.matched[i] >= 0 else "unmatched"
            lines.append(f"unit {k} ({who}): R [{row}]  Q {fmt(self.aligned_Q[i, i])}")
        return lines


def first_layer(x: nn.Module | Mapping[str, Tensor] | Tensor | Any, layer: str = "fc1") -> Tensor:
    """The first-layer weight matrix (units x inputs) of a model, a parameter dict
    (``<layer>.weight``) or the matrix itself, as float64 on the CPU."""
    if isinstance(x, nn.Module):
        mod = dict(x.named_modules()).get(layer)
        if not isinstance(mod, nn.Linear):
            raise BasinscopeError(
                f"the model has no Linear layer named {layer!r}: give the first layer's name "
                f"(layer=...), one of {[n for n, m in x.named_modules() if isinstance(m, nn.Linear)]}"
            )
        w = mod.weight
    elif isinstance(x, Mapping):
        key = f"{layer}.weight"
        if key not in x:
            raise BasinscopeError(f"the parameter dict has no {key!r}; keys: {sorted(x)[:8]}")
        w = x[key]
    else:
        w = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    w = w.detach().to("cpu", torch.float64)
    if w.ndim != 2 or 0 in w.shape:
        raise BasinscopeError(
            f"first-layer weights must be a matrix (units x inputs), found {tuple(w.shape)}"
        )
    return w


def _second_layer(x: Any, layer: str) -> np.ndarray | None:
    if not isinstance(x, nn.Module):
        return None
    linears = [m for _, m in x.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n, m in x.named_modules() if isinstance(m, nn.Linear)]
    if layer not in names or names.index(layer) + 1 >= len(linears):
        return None
    w = linears[names.index(layer) + 1].weight.detach().to("cpu", torch.float64)
    return w[0].numpy().copy() if w.shape[0] == 1 else None


def align_units(R: np.ndarray) -> tuple[list[int], list[int]]:
    """The aligned order of the student's units (rows of ``R``) and the teacher unit each is
    matched to (-1: unmatched); see the module docstring."""
    from scipy.optimize import linear_sum_assignment

    R = np.asarray(R, dtype=np.float64)
    rows, cols = linear_sum_assignment(-R)
    pairs = sorted(zip(cols.tolist(), rows.tolist(), strict=True))
    order = [r for _, r in pairs]
    matched = [c for c, _ in pairs]
    rest = [k for k in range(len(R)) if k not in set(order)]
    rest.sort(key=lambda k: (int(np.argmax(R[k])), -float(np.max(R[k])), k))
    return order + rest, matched + [-1] * len(rest)


@takes_spec(OrderParameterSpec)
def order_parameters(
    student: nn.Module | Mapping[str, Tensor] | Tensor,
    teacher: nn.Module | Mapping[str, Tensor] | Tensor,
    *,
    normalize: str = "dim",
    layer: str = "fc1",
) -> OrderParameters:
    """Student-teacher, student-student and teacher-teacher overlaps of two two-layer
    networks (models, parameter dicts or first-layer matrices), in float64, with the
    permutation-invariant aligned form (module docstring)."""
    if normalize not in NORMALIZATIONS:
        raise BasinscopeError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    w, v = first_layer(student, layer), first_layer(teacher, layer)
    if w.shape[1] != v.shape[1]:
        raise BasinscopeError(
            f"student and teacher see different input dimensions: {w.shape[1]} and {v.shape[1]}"
        )
    d = int(w.shape[1])
    scale = 1.0 / d if normalize == "dim" else 1.0
    R = (w @ v.T).numpy() * scale
    Q = (w @ w.T).numpy() * scale
    T = (v @ v.T).numpy() * scale
    perm, matched = align_units(R)
    a = _second_layer(student, layer)
    return OrderParameters(
        R=R,
        Q=Q,
        T=T,
        aligned_R=R[perm],
        aligned_Q=Q[np.ix_(perm, perm)],
        permutation=tuple(perm),
        matched=tuple(matched),
        student_out=None if a is None else a[perm],
        teacher_out=_second_layer(teacher, layer),
        input_dim=d,
        normalize=normalize,
        spec=OrderParameterSpec(normalize=normalize, layer=layer),
    )
