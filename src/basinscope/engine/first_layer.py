"""The first layer's output is linear in the point's coefficients: evaluate it on the basis.

At a point :math:`\\theta(c) = \\theta_0 + \\sum_d c_d v_d` the first layer (a ``Linear`` or
``Conv2d`` applied to the input, possibly after a flatten) computes

.. math::

    f(x; W_0 + \\textstyle\\sum_d c_d V_d,\\; b_0 + \\sum_d c_d u_d)
    = f(x; W_0, b_0) + \\textstyle\\sum_d c_d\\, f(x; V_d, u_d),

because a linear map (a matrix product, a convolution with zero padding) is linear in its
weight and bias. For a line or a plane, ``K`` points therefore cost ``dim + 1``
evaluations of the first layer per batch (``basis_outputs``), combined per point
(``combine``), instead of ``K``; for the 64-128-10 MLP that layer holds 86% of the
forward FLOPs. The rest of the network (``tail``) is the model's own graph, cut after the
first layer with :func:`torch.fx.symbolic_trace`.

The tail is a traced copy of ``forward``: Python side effects in ``forward`` itself
(counters, prints) run once, at tracing, not per point, and forward hooks on the model or
the first layer do not run (``first_layer="auto"`` keeps the plain path for a model with
hooks; pass ``first_layer="plain"`` for one whose ``forward`` has side effects). Hooks on
the other submodules run as usual.

The combination is exact in real arithmetic; in floating point it rounds differently from
the plain forward pass (float32: relative differences of about 1e-7, the same size as the
differences between the ``vmap`` and ``loop`` strategies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from basinscope.engine.points import PointBasis

__all__ = ["FIRST_LAYER_MODES", "FirstLayer", "split_first_layer"]

#: ``auto``: the basis path wherever it applies (recorded in the trial info), ``basis``:
#: required (refused where it does not apply), ``plain``: every point runs the whole model.
FIRST_LAYER_MODES = ("auto", "basis", "plain")


@dataclass(frozen=True)
class FirstLayer:
    """A model cut after its first layer: the shape-only steps before it, the layer, the rest."""

    name: str  # the first layer's module name, e.g. "fc1" or "conv1"
    layer: nn.Linear | nn.Conv2d
    pre: tuple[Any, ...]  # flatten steps applied to the input before the layer
    tail: fx.GraphModule  # the rest of the model, called on the first layer's output

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}.{k}" for k, _ in self.layer.named_parameters())

    def _apply(self, u: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(u, weight, bias)
        c = self.layer
        return F.conv2d(u, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def basis_outputs(self, basis: PointBasis, x: Tensor, dtype: torch.dtype) -> Tensor:
        """``(dim + 1, N, *out)``: the layer at the origin, then at each direction (its
        weight and bias taken from the direction) on the batch ``x``."""
        u = x
        for step in self.pre:
            u = step(u)
        w, b = f"{self.name}.weight", f"{self.name}.bias"
        has_bias = b in basis.origin

        def at(d: Mapping[str, Tensor]) -> Tensor:
            bias = d[b].to(dtype) if has_bias else None
            return self._apply(u, d[w].to(dtype), bias)

        return torch.stack([at(basis.origin), *(at(d) for d in basis.basis)])

    @staticmethod
    def combine(outputs: Tensor, c: Tensor) -> Tensor:
        """``(K, N, *out)``: ``outputs[0] + sum_d c[k, d] outputs[1 + d]`` for each point
        ``k`` (one matrix product with the coefficients)."""
        base, dirs = outputs[0], outputs[1:]
        if dirs.shape[0] == 0:
            return base.unsqueeze(0).expand(c.shape[0], *base.shape).clone()
        flat = torch.addmm(
            base.reshape(1, -1), c.to(outputs.dtype), dirs.reshape(dirs.shape[0], -1)
        )
        return flat.reshape(c.shape[0], *base.shape)

    @staticmethod
    def combine_one(outputs: Tensor, c: list[float]) -> Tensor:
        """The first layer's output at one point with coefficients ``c``."""
        out = outputs[0].clone()
        for d, v in enumerate(c):
            out.add_(outputs[1 + d], alpha=v)
        return out


def split_first_layer(model: nn.Module) -> tuple[FirstLayer | None, str]:
    """``(FirstLayer, "")`` when ``model``'s input goes (through flattens only) into one
    ``Linear`` or zero-padded ``Conv2d`` and nowhere else; otherwise ``(None, why not)``."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow, unsupported modules, ...
        return None, f"the model cannot be traced by torch.fx ({type(e).__name__})"
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None, f"the model takes {len(inputs)} inputs, not one tensor"
    node, chain, pre = inputs[0], [], []
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, f"the input is used by {len(users)} operations, not one first layer"
        user = users[0]
        mod = gm.get_submodule(user.target) if user.op == "call_module" else None
        flatten_call = (user.op == "call_function" and user.target is torch.flatten) or (
            user.op == "call_method" and user.target == "flatten"
        )
        if isinstance(mod, nn.Flatten) or (flatten_call and not user.kwargs):
            if flatten_call:
                extra = tuple(user.args[1:])
                if any(isinstance(a, fx.Node) for a in extra):
                    return None, "the input is flattened with computed arguments"
                pre.append(lambda t, extra=extra: torch.flatten(t, *extra))
            else:
                pre.append(mod)
            chain.append(user)
            node = user
            continue
        if type(mod) is nn.Linear or (type(mod) is nn.Conv2d and mod.padding_mode == "zeros"):
            if len(user.args) != 1 or user.kwargs:
                return None, "the first layer is called with more than its input"
            if mod._forward_hooks or mod._forward_pre_hooks:
                return None, "the first layer has forward hooks"
            break
        what = f"module {type(mod).__name__}" if mod is not None else f"{user.op} {user.target}"
        return None, f"the input first goes into {what}, not a Linear or Conv2d layer"
    name, graph = str(user.target), gm.graph
    with graph.inserting_before(inputs[0]):
        h = graph.placeholder("first_layer_output")
    user.replace_all_uses_with(h)
    graph.erase_node(user)
    for n in reversed(chain):
        graph.erase_node(n)
    graph.erase_node(inputs[0])
    graph.lint()
    tail = fx.GraphModule(gm, graph)
    return FirstLayer(name, mod, tuple(pre), tail), ""
