"""Direction normalizations (Li et al. 2018) and the policy for biases and norm layers.

A random direction in parameter space means little on its own: ReLU and BatchNorm
networks are invariant to rescaling the weights of a layer, so a perturbation of fixed
size is large for a layer with small weights and negligible for one with large weights.
Li et al. (2018, "Visualizing the Loss Landscape of Neural Nets") rescale each *filter*
of the direction to the norm of the matching filter of the model:

.. math::  d_{i,j} \\leftarrow \\frac{d_{i,j}}{\\lVert d_{i,j} \\rVert} \\lVert \\theta_{i,j} \\rVert

where :math:`d_{i,j}` is the :math:`j`-th filter (output channel of a conv, row of a
linear layer) of the :math:`i`-th layer. Named options:

``filter``  per output channel / row (Li et al.),
``layer``   per parameter tensor: :math:`d_i \\leftarrow d_i / \\lVert d_i\\rVert \\cdot \\lVert\\theta_i\\rVert`,
``model``   the whole direction: :math:`d \\leftarrow d / \\lVert d\\rVert \\cdot \\lVert\\theta\\rVert`,
``none``    unchanged.

One-dimensional parameters (biases, BatchNorm/LayerNorm weights and biases) follow the
``bias_policy``:

``zero``        set to zero (Li et al.'s ``--xignore biasbn``; the default),
``include``     kept and rescaled with their own norm (:math:`d_i / \\lVert d_i\\rVert \\cdot \\lVert\\theta_i\\rVert`),
``as_weights``  replaced by the parameters themselves (what Li et al.'s released code
                does when biases are not ignored: ``d.copy_(w)``).

Under ``model`` normalization 1-D parameters are zeroed or kept (``as_weights`` copies)
before the global rescaling. A filter or tensor of the direction whose norm is zero stays zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from basinscope.errors import BasinscopeError
from basinscope.geometry.params import ParamDict, check_same_keys, norm

NORMALIZATIONS = ("filter", "layer", "model", "none")
BIAS_POLICIES = ("zero", "include", "as_weights")

__all__ = [
    "BIAS_POLICIES",
    "NORMALIZATIONS",
    "check_normalization",
    "filter_norms",
    "normalize_direction",
]


def check_normalization(normalization: str, bias_policy: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise BasinscopeError(
            f"unknown normalization {normalization!r}: expected one of {', '.join(NORMALIZATIONS)}"
        )
    if bias_policy not in BIAS_POLICIES:
        raise BasinscopeError(
            f"unknown bias policy {bias_policy!r}: expected one of {', '.join(BIAS_POLICIES)}"
        )


def filter_norms(t: Tensor) -> Tensor:
    """Frobenius norm of each filter (slice along dim 0) of a tensor with ``dim >= 2``."""
    return t.reshape(t.shape[0], -1).norm(dim=1)


def _rescale(d: Tensor, d_norm: Tensor, target: Tensor) -> Tensor:
    # d / ||d|| * ||theta||, leaving zero-norm pieces at zero instead of NaN.
    factor = torch.where(d_norm > 0, target / torch.where(d_norm > 0, d_norm, 1), 0)
    return d * factor


def normalize_direction(
    direction: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    normalization: str = "filter",
    bias_policy: str = "zero",
) -> ParamDict:
    """Normalize ``direction`` relative to ``params`` (see the module docstring).

    Returns a new dict; neither argument is modified.
    """
    check_normalization(normalization, bias_policy)
    check_same_keys(params, direction, "direction and model parameters")
    out: ParamDict = {}
    for k, d in direction.items():
        w = params[k].to(d.dtype)
        if d.dim() <= 1:
            if bias_policy == "zero":
                out[k] = torch.zeros_like(d)
            elif bias_policy == "as_weights":
                out[k] = w.clone()
            elif normalization in ("filter", "layer"):
                out[k] = _rescale(d, d.norm(), w.norm())
            else:
                out[k] = d.clone()
        elif normalization == "filter":
            shape = (-1,) + (1,) * (d.dim() - 1)
            out[k] = _rescale(d, filter_norms(d).reshape(shape), filter_norms(w).reshape(shape))
        elif normalization == "layer":
            out[k] = _rescale(d, d.norm(), w.norm())
        else:
            out[k] = d.clone()
    if normalization == "model":
        scalable = {
            k: v for k, v in out.items() if not (v.dim() <= 1 and bias_policy == "as_weights")
        }
        dn = norm(scalable)
        wn = norm({k: params[k] for k in scalable})
        factor = float(wn / dn) if float(dn) > 0 else 0.0
        for k in scalable:
            out[k] = out[k] * factor
    return out
