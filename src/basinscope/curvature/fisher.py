"""The diagonal of the Fisher information, from per-example gradients.

Two variants, named in every result that uses them (Matena & Raffel 2022, *Merging models
with Fisher-weighted averaging*, use the first; Kunstner et al. 2019 discuss both):

``empirical``  :math:`\\operatorname{diag} \\hat F = \\frac1N \\sum_n g_n \\odot g_n` with
               :math:`g_n = \\nabla_\\theta \\ell(f_\\theta(x_n), y_n)` at the data's labels
               (the diagonal of :class:`~basinscope.curvature.operators.EFOperator`),
``true``       :math:`\\operatorname{diag} F = \\frac1N \\sum_n \\sum_c p_\\theta(c \\mid x_n)\\,
               g_{n,c} \\odot g_{n,c}` with :math:`g_{n,c} = \\nabla_\\theta
               \\ell(f_\\theta(x_n), c)`: the expectation over the model's own predictive
               distribution, taken exactly over the classes (cross-entropy only).

The per-example gradients are those of the empirical-Fisher operator (``vmap``, else one
example at a time), over the task's loss of the prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from basinscope.curvature.operators import EFOperator
from basinscope.engine.task import Task
from basinscope.errors import BasinscopeError

__all__ = ["FISHERS", "FISHER_DEFINITIONS", "diagonal_fisher"]

FISHERS = ("empirical", "true")
FISHER_DEFINITIONS = {
    "empirical": "diag F = 1/N sum_n g_n^2, g_n the gradient of the loss at the label y_n",
    "true": "diag F = 1/N sum_n sum_c p(c|x_n) g_{n,c}^2, g_{n,c} the gradient of the loss "
    "at label c (exact expectation over the model's classes)",
}


def diagonal_fisher(
    model: nn.Module,
    data: Any,
    *,
    fisher: str = "empirical",
    task: Task | str | None = None,
    examples: int | None = None,
    batch_size: int = 256,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """The diagonal Fisher of ``model`` on ``data`` as a parameter dict (see the module
    docstring for ``fisher="empirical"`` and ``"true"``), over the first ``examples``
    examples (all by default), with BatchNorm in eval mode and dropout off."""
    if fisher not in FISHERS:
        raise BasinscopeError(
            f"unknown Fisher {fisher!r}: expected one of {', '.join(FISHERS)} "
            "(empirical: at the labels; true: expected over the model's predictions)"
        )
    op = EFOperator(
        model, data, task=task, batch_size=batch_size, subset=examples, dtype=dtype, device=device
    )
    L = op.empirical_loss
    if fisher == "true" and (L.loss_fn is not None or L.task.loss != "cross_entropy"):
        raise BasinscopeError(
            f"the true Fisher is an expectation over the model's predicted classes, so it "
            f"needs a cross-entropy loss; this task's loss is {L.task.loss!r}: use "
            "fisher='empirical' (--fisher empirical)"
        )
    out = torch.zeros(op.n, dtype=op.dtype, device=op.device)
    n = 0
    for x, y in L.batches:
        if fisher == "empirical":
            g = op.per_example_gradients(x, y)
            out += (g * g).sum(0)
        else:
            with torch.no_grad():
                probs = torch.softmax(L.prediction(L.params, x), dim=-1)
            for c in range(probs.shape[-1]):
                g = op.per_example_gradients(x, torch.full_like(y, c))
                out += (probs[:, c : c + 1] * g * g).sum(0)
        n += y.shape[0]
    return {k: v.clone() for k, v in L.unflatten(out / n).items()}
