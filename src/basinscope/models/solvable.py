"""Solvable models: deep linear networks and two-layer ReLU networks with a scalar output.

These are the models where theory gives exact answers about the landscape (issue 18):

* :func:`deep_linear` -- ``x -> W_L ... W_2 W_1 x``, linear layers ``fc1``..``fcL`` without
  biases, every entry drawn from :math:`\\mathcal N(0, \\sigma^2)` with ``init_scale`` =
  :math:`\\sigma` (an absolute scale, not divided by the fan-in, so "small initialisation"
  means what it says). :func:`end_to_end` is the product :math:`W = W_L \\cdots W_1`.
* :func:`two_layer_relu` -- ``x -> sum_j a_j relu(w_j . x [+ b_j])`` with ``fc1`` (rows
  :math:`w_j`), ``relu`` and ``fc2`` (one output, no bias, entries :math:`a_j`): each
  neuron is positively homogeneous, so gradient flow conserves
  :math:`\\lVert w_j\\rVert^2 (+ b_j^2) - a_j^2` (:func:`conserved_quantities`).
* :func:`soft_committee` -- a teacher ``x -> sum_k a_k relu(v_k . x)`` with given unit
  directions and output signs (a :func:`two_layer_relu` with those weights).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from basinscope._checks import positive_int
from basinscope.errors import BasinscopeError

__all__ = [
    "conserved_quantities",
    "deep_linear",
    "end_to_end",
    "soft_committee",
    "two_layer_relu",
]

MAX_WIDTH = 100_000


def _check_scale(init_scale: float) -> float:
    try:
        s = float(init_scale)
    except (TypeError, ValueError):
        s = float("nan")
    if not s >= 0 or s == float("inf"):
        raise BasinscopeError(
            f"init_scale must be a finite number >= 0 (the standard deviation of every weight), "
            f"found {init_scale!r}"
        )
    return s


def deep_linear(
    in_features: int = 8,
    out_features: int = 8,
    width: int = 8,
    depth: int = 2,
    init_scale: float = 1e-3,
) -> nn.Sequential:
    """A deep linear network ``fc<depth>(...fc1(x))`` without biases (``depth`` >= 1 layers;
    ``depth - 1`` hidden layers of ``width`` units), every weight drawn from
    :math:`\\mathcal N(0, \\mathrm{init\\_scale}^2)` with PyTorch's RNG (``build_model``'s
    ``init_seed`` fixes it)."""
    positive_int("depth", depth, high=1000)
    for key, v in (("in_features", in_features), ("out_features", out_features), ("width", width)):
        positive_int(key, v, high=MAX_WIDTH)
    scale = _check_scale(init_scale)
    sizes = [in_features, *([width] * (depth - 1)), out_features]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(depth):
        lin = nn.Linear(sizes[i], sizes[i + 1], bias=False)
        with torch.no_grad():
            lin.weight.normal_(0.0, scale)
        layers[f"fc{i + 1}"] = lin
    return nn.Sequential(layers)


def end_to_end(model: nn.Module) -> Tensor:
    """The end-to-end matrix :math:`W_L \\cdots W_1` (``out x in``) of a :func:`deep_linear`
    network (its ``fc<i>`` layers in order)."""
    mats = [m.weight for name, m in model.named_children() if name.startswith("fc")]
    if not mats:
        raise BasinscopeError("end_to_end needs a deep_linear network (layers fc1, fc2, ...)")
    w = mats[0]
    for m in mats[1:]:
        w = m @ w
    return w


def two_layer_relu(
    in_features: int = 2,
    width: int = 2,
    bias: bool = False,
    init_scale: float = 1.0,
    out_scale: float | None = None,
) -> nn.Sequential:
    """``x -> fc2(relu(fc1(x)))`` with a scalar output: ``fc1`` (``width`` x ``in_features``,
    a bias if ``bias``) drawn from :math:`\\mathcal N(0, \\mathrm{init\\_scale}^2 /
    \\mathrm{in\\_features})`, ``fc2`` (1 x ``width``, no bias) from
    :math:`\\mathcal N(0, \\mathrm{out\\_scale}^2)` (default ``init_scale``)."""
    positive_int("in_features", in_features, high=MAX_WIDTH)
    positive_int("width", width, high=MAX_WIDTH)
    s_in = _check_scale(init_scale)
    s_out = s_in if out_scale is None else _check_scale(out_scale)
    fc1, fc2 = nn.Linear(in_features, width, bias=bias), nn.Linear(width, 1, bias=False)
    with torch.no_grad():
        fc1.weight.normal_(0.0, s_in / in_features**0.5)
        if bias:
            fc1.bias.normal_(0.0, s_in / in_features**0.5)
        fc2.weight.normal_(0.0, s_out)
    return nn.Sequential(OrderedDict(fc1=fc1, relu=nn.ReLU(), fc2=fc2))


def conserved_quantities(model: nn.Module, dtype: torch.dtype | None = None) -> Tensor:
    """Per neuron :math:`c_j = \\lVert w_j\\rVert^2 + b_j^2 - a_j^2` of a
    :func:`two_layer_relu` network (``b_j`` only with a bias), shape ``(width,)``: constant
    under gradient flow on any loss of the output, since each neuron is positively
    homogeneous (Euler: :math:`w_j\\cdot\\nabla_{w_j} L + b_j \\partial_{b_j} L = a_j
    \\partial_{a_j} L`), computed in ``dtype`` (default: the weights')."""
    fc1, fc2 = model.fc1, model.fc2
    w, a = fc1.weight.detach(), fc2.weight.detach()[0]
    if dtype is not None:
        w, a = w.to(dtype), a.to(dtype)
    c = (w**2).sum(1) - a**2
    if fc1.bias is not None:
        b = fc1.bias.detach()
        c = c + (b if dtype is None else b.to(dtype)) ** 2
    return c.cpu()


def soft_committee(
    directions: Sequence[Sequence[float]] | Tensor,
    signs: Sequence[float] | None = None,
) -> nn.Sequential:
    """A soft-committee ReLU teacher ``x -> sum_k a_k relu(v_k . x)``: ``directions`` are the
    rows :math:`v_k` (used as given), ``signs`` the output weights :math:`a_k` (default all
    +1, the classic soft committee machine)."""
    v = torch.as_tensor(directions, dtype=torch.float32)
    if v.ndim != 2 or v.shape[0] < 1:
        raise BasinscopeError(
            f"directions must be a matrix of teacher units (k x in_features), found shape "
            f"{tuple(v.shape)}"
        )
    a = torch.ones(v.shape[0]) if signs is None else torch.as_tensor(signs, dtype=torch.float32)
    if a.shape != (v.shape[0],):
        raise BasinscopeError(
            f"signs: one output weight per teacher unit ({v.shape[0]}), found {a.tolist()}"
        )
    model = two_layer_relu(v.shape[1], v.shape[0])
    with torch.no_grad():
        model.fc1.weight.copy_(v)
        model.fc2.weight.copy_(a[None])
    return model
