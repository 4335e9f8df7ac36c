"""Permutation specs: which parameter axes share one permutation, found from the model's graph.

Hidden units can be permuted without changing a network's function (Hecht-Nielsen 1990):
permute the output axis of the layer that produces a channel, every per-channel tensor that
follows it (BatchNorm weight, bias and running statistics) and the input axis of the layers
that read it. A *group* is a set of ``(name, axis, block)`` triples that must share one
permutation; ``block`` is the number of consecutive entries per channel (``H * W`` where a
``conv -> flatten -> linear`` reads a channel as a block of features, 1 elsewhere).

:func:`permutation_spec` finds the groups with :func:`torch.fx.symbolic_trace` and
:class:`~torch.fx.passes.shape_prop.ShapeProp`: every Linear/Conv output starts a group; the
group flows through elementwise ops, normalizations, pools, dropout and flattening to the
input axis of the layers that consume it; an elementwise ``add``/``mul`` of two permuted
tensors merges their groups (so a residual stream shares one permutation); the model's
outputs and anything combined with an unpermuted tensor are never permuted. Git Re-Basin
(Ainsworth et al. 2023) needs this spec written by hand for each architecture.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node, symbolic_trace
from torch.fx.node import map_arg
from torch.fx.passes.shape_prop import ShapeProp

from basinscope.errors import BasinscopeError

__all__ = [
    "PermutationSpec",
    "apply_permutation",
    "permutation_spec",
    "random_permutation",
    "traced_graph",
]

Axis = tuple[str, int, int]
"""``(parameter or buffer name, axis, block size)``."""

_HAND_WRITTEN_HINT = (
    "Pass a hand-written spec instead: PermutationSpec.from_groups({'P_fc1': [('fc1.weight', 0), "
    "('fc1.bias', 0), ('fc2.weight', 1)], ...}, model)."
)


@dataclass(frozen=True)
class PermutationSpec:
    """Permutation groups of a model: ``groups[g]`` lists the ``(name, axis, block)`` triples
    permuted by group ``g`` of size ``sizes[g]``.

    ``producers[g]`` are the modules whose outputs carry group ``g`` (used by REPAIR);
    ``activation_sites[g]`` are ``(site, dim, block)`` tensors where activation matching reads
    group ``g``: nodes of ``torch.fx.symbolic_trace(model)`` when ``site_kind == "fx"``,
    outputs of named modules (forward hooks) when ``site_kind == "module"``. ``origin`` is
    ``"torch.fx"`` for a discovered spec and ``"hand-written"`` otherwise.
    """

    groups: Mapping[str, tuple[Axis, ...]]
    sizes: Mapping[str, int]
    producers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    activation_sites: Mapping[str, tuple[Axis, ...]] = field(default_factory=dict)
    site_kind: str = "module"
    origin: str = "hand-written"

    @cached_property
    def axes(self) -> dict[str, dict[int, tuple[str, int]]]:
        """The reverse map: ``name -> {axis: (group, block)}``."""
        out: dict[str, dict[int, tuple[str, int]]] = {}
        for g, entries in self.groups.items():
            for name, axis, block in entries:
                out.setdefault(name, {})[axis] = (g, block)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {g: [list(e) for e in v] for g, v in self.groups.items()},
            "sizes": dict(self.sizes),
            "producers": {g: list(v) for g, v in self.producers.items()},
            "activation_sites": {g: [list(e) for e in v] for g, v in self.activation_sites.items()},
            "site_kind": self.site_kind,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermutationSpec:
        """Inverse of :meth:`to_dict` (a stored alignment's spec)."""
        return cls(
            groups={g: tuple(tuple(e) for e in v) for g, v in d["groups"].items()},
            sizes=dict(d["sizes"]),
            producers={g: tuple(v) for g, v in d.get("producers", {}).items()},
            activation_sites={
                g: tuple(tuple(e) for e in v) for g, v in d.get("activation_sites", {}).items()
            },
            site_kind=d.get("site_kind", "module"),
            origin=d.get("origin", "hand-written"),
        )

    @classmethod
    def from_groups(
        cls,
        groups: Mapping[str, Sequence[Sequence[Any]]],
        model: nn.Module,
        *,
        producers: Mapping[str, Sequence[str]] | None = None,
        activation_sites: Mapping[str, Sequence[str | Sequence[Any]]] | None = None,
    ) -> PermutationSpec:
        """A hand-written spec, checked against ``model``.

        ``groups`` maps a group name to ``(name, axis)`` or ``(name, axis, block)`` entries.
        ``activation_sites`` (default: the producers) are module names, whose outputs carry
        the channel on dim 1 (``(N, C)`` or ``(N, C, H, W)``), or ``(module, dim, block)``.
        """
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        norm: dict[str, tuple[Axis, ...]] = {}
        sizes: dict[str, int] = {}
        seen: dict[tuple[str, int], str] = {}
        for g, entries in groups.items():
            triples = []
            for e in entries:
                name, axis, block = (*e, 1) if len(e) == 2 else tuple(e)
                if name not in state:
                    raise BasinscopeError(
                        f"group {g!r} names {name!r}, which is not a parameter or buffer of "
                        f"{type(model).__name__}; names look like {list(state)[:4]}."
                    )
                shape = state[name].shape
                if not 0 <= axis < len(shape) or shape[axis] % block:
                    raise BasinscopeError(
                        f"group {g!r}: {name!r} has shape {tuple(shape)}, which has no axis "
                        f"{axis} made of blocks of {block}."
                    )
                if (name, axis) in seen:
                    raise BasinscopeError(
                        f"{name!r} axis {axis} is in groups {seen[(name, axis)]!r} and {g!r}: "
                        "an axis can follow one permutation only; merge the two groups."
                    )
                seen[(name, axis)] = g
                n = shape[axis] // block
                if sizes.setdefault(g, n) != n:
                    raise BasinscopeError(
                        f"group {g!r} mixes sizes: {name!r} axis {axis} has {n} channels, "
                        f"earlier entries {sizes[g]}."
                    )
                triples.append((name, int(axis), int(block)))
            norm[g] = tuple(triples)
        prod = {g: tuple(v) for g, v in (producers or {}).items()}
        raw_sites = activation_sites if activation_sites is not None else prod
        sites = {
            g: tuple((s, 1, 1) if isinstance(s, str) else tuple(s) for s in v)
            for g, v in raw_sites.items()
        }
        modules = dict(model.named_modules())
        for g, v in {**prod, **sites}.items():
            if g not in norm:
                raise BasinscopeError(f"producers/activation_sites name unknown group {g!r}.")
            for s in v:
                if (s if isinstance(s, str) else s[0]) not in modules:
                    raise BasinscopeError(f"group {g!r}: {s!r} is not a module of the model.")
        return cls(norm, sizes, prod, sites, "module", "hand-written")


# -- discovery --------------------------------------------------------------------------------

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.Softmax, nn.LogSoftmax,
)  # fmt: skip
_NORM_MODULES = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
    nn.LayerNorm,
)  # fmt: skip
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.gelu, F.silu, F.mish,
    F.leaky_relu, F.elu, F.selu, F.softplus, F.hardtanh, F.relu6, F.hardswish, F.dropout,
    F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.abs, torch.neg,
    torch.exp, torch.clamp, operator.neg,
}  # fmt: skip
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous", "clone", "detach",
    "abs", "neg", "exp", "softmax", "log_softmax", "to", "float", "double", "half",
}  # fmt: skip
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}  # fmt: skip
_BINARY_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, torch.add, torch.sub, torch.mul, torch.div,
}  # fmt: skip
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_RESHAPE = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
_FIXED = 0  # the union-find id of "never permuted" (model inputs and outputs)


@dataclass(frozen=True)
class _Ch:
    """Where a tensor carries a permuted channel: group id, tensor dim, entries per channel."""

    group: int
    dim: int
    block: int = 1


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _describe(node: Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[node.target]).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op.replace('_', ' ')} {target!r} (graph node {node.name!r})"


class _Walker:
    """One pass over the traced graph, tracking the channel of each tensor (union-find groups)."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
        self.model_name = type(model).__name__
        self.modules = modules
        self.parent: list[int] = [_FIXED]
        self.axis_group: dict[tuple[str, int], tuple[int, int]] = {}
        self.producers: dict[int, list[str]] = {}
        self.sites: dict[int, list[Axis]] = {}
        self.state: dict[Node, _Ch | None] = {}

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the older group stays the root: it names the merged group
            self.parent[max(ra, rb)] = min(ra, rb)

    def new_group(self, producer: str) -> int:
        self.parent.append(len(self.parent))
        g = len(self.parent) - 1
        self.producers[g] = [producer]
        return g

    def add(self, name: str, axis: int, g: int, block: int = 1) -> None:
        key = (name, axis)
        if key in self.axis_group:  # a module called twice (shared weights): one group
            g0, b0 = self.axis_group[key]
            if b0 != block:
                raise BasinscopeError(
                    f"{name!r} axis {axis} is read with channel blocks of {b0} and {block}: "
                    f"basinscope cannot permute it consistently. {_HAND_WRITTEN_HINT}"
                )
            self.union(g0, g)
        else:
            self.axis_group[key] = (g, block)

    def unsupported(self, node: Node, why: str) -> BasinscopeError:
        return BasinscopeError(
            f"cannot find the permutation groups of {self.model_name}: {why} at "
            f"{_describe(node, self.modules)}, whose input carries permuted channels. "
            f"{_HAND_WRITTEN_HINT}"
        )

    # -- rules --------------------------------------------------------------------------------
    def visit(self, node: Node) -> _Ch | None:
        if node.op in ("placeholder", "get_attr"):
            return None
        if node.op == "output":
            map_arg(node.args, lambda n: self._fix(n))
            return None
        inputs = [n for n in node.all_input_nodes if _shape(n) is not None]
        permuted = [n for n in inputs if self.state.get(n) is not None]
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target], permuted)
        if not permuted or _shape(node) is None:
            if permuted and node.target is not getattr:  # x.shape, x.size(): no tensor out
                if not (node.op == "call_method" and node.target in ("size", "dim")):
                    raise self.unsupported(node, "an op that returns no tensor")
            return None
        return self.visit_function(node, inputs, permuted)

    def _fix(self, n: Node) -> None:
        s = self.state.get(n)
        if s is not None:
            self.union(s.group, _FIXED)

    def visit_module(self, node: Node, mod: nn.Module, permuted: list[Node]) -> _Ch | None:
        name = node.target
        s = self.state[permuted[0]] if permuted else None
        out_shape = _shape(node)
        if out_shape is None:
            if s is not None:
                raise self.unsupported(node, "a module that returns no single tensor")
            return None
        conv = isinstance(mod, nn.modules.conv._ConvNd)
        if isinstance(mod, nn.Linear) or conv:
            out_axis, in_axis = (1, 0) if getattr(mod, "transposed", False) else (0, 1)
            if conv and mod.groups != 1:
                if s is None:
                    return None  # channels tied to unpermuted input channels stay put
                if mod.groups == mod.in_channels == mod.out_channels:
                    self.add(f"{name}.weight", out_axis, s.group)  # depthwise: channel kept
                    if mod.bias is not None:
                        self.add(f"{name}.bias", 0, s.group)
                    return s
                raise self.unsupported(node, f"a grouped convolution (groups={mod.groups})")
            elif s is not None:
                need_dim = 1 if conv else len(_shape(permuted[0])) - 1
                if s.dim != need_dim or (conv and s.block != 1):
                    raise self.unsupported(node, f"channels on dim {s.dim} (expected {need_dim})")
                self.add(f"{name}.weight", in_axis, s.group, s.block)
            g = self.new_group(name)
            self.add(f"{name}.weight", out_axis, g)
            if mod.bias is not None:
                self.add(f"{name}.bias", 0, g)
            return _Ch(g, 1 if conv else len(out_shape) - 1)
        if s is None:
            return None  # anything applied to unpermuted tensors gives unpermuted tensors
        if isinstance(mod, _NORM_MODULES):
            ok = s.block == 1 and s.dim == 1
            if isinstance(mod, nn.GroupNorm):
                ok = ok and mod.num_groups in (1, mod.num_channels)
            if isinstance(mod, nn.LayerNorm):
                ok = s.block == 1 and len(mod.normalized_shape) == 1 and s.dim == len(out_shape) - 1
            if not ok:
                raise self.unsupported(node, "a normalization across permuted channel blocks")
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(mod, key, None) is not None:
                    self.add(f"{name}.{key}", 0, s.group)
            return s
        if isinstance(mod, _ELEMENTWISE_MODULES):
            if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
                self.add(f"{name}.weight", 0, s.group)
            return s
        if isinstance(mod, _POOL_MODULES):
            if s.dim != 1 or s.block != 1:
                raise self.unsupported(node, "pooling over flattened channels")
            return s
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self.reshape(node, permuted[0], s)
        raise self.unsupported(node, "a module type basinscope does not know")

    def visit_function(self, node: Node, inputs: list[Node], permuted: list[Node]) -> _Ch | None:
        target, s = node.target, self.state[permuted[0]]
        method = node.op == "call_method"
        out_shape = _shape(node)
        if target in _BINARY_FUNCTIONS or (method and target in _BINARY_METHODS):
            return self.binary(node, inputs, out_shape)
        if len(permuted) > 1 or any(n is not permuted[0] for n in inputs):
            raise self.unsupported(node, "an op on several tensors that is not elementwise")
        if target in _ELEMENTWISE_FUNCTIONS or (method and target in _ELEMENTWISE_METHODS):
            if out_shape != _shape(permuted[0]):
                raise self.unsupported(node, "an op that changes the shape")
            return s
        if target in _POOL_FUNCTIONS:
            if s.dim != 1 or s.block != 1:
                raise self.unsupported(node, "pooling over flattened channels")
            return s
        if target in _RESHAPE:
            return self.reshape(node, permuted[0], s)
        if target in _REDUCE:
            return self.reduce(node, s)
        raise self.unsupported(node, "an op basinscope does not know how to permute through")

    def binary(self, node: Node, inputs: list[Node], out_shape: tuple[int, ...]) -> _Ch | None:
        """Elementwise op: permuted operands share a group; broadcast operands fix it."""
        out: _Ch | None = None
        for n in inputs:
            s = self.state.get(n)
            if s is None:
                continue
            dim = s.dim + len(out_shape) - len(_shape(n))
            if out is None:
                out = _Ch(s.group, dim, s.block)
            elif (out.dim, out.block) != (dim, s.block):
                raise self.unsupported(node, "an elementwise op on differently laid out channels")
            else:
                self.union(out.group, s.group)
        for n in inputs:
            shape = _shape(n)
            d = out.dim - (len(out_shape) - len(shape))
            if self.state.get(n) is None and d >= 0 and shape[d] > 1:
                self.union(out.group, _FIXED)  # e.g. x + input: the channels cannot move
        return out

    def reshape(self, node: Node, src: Node, s: _Ch) -> _Ch:
        """Merging the channel dim with the dims after it makes blocks of their product."""
        a, b = _shape(src), _shape(node)
        if a == b:
            return s
        d = s.dim
        for k in range(d + 1, len(a) + 1):
            if a[:d] == b[:d] and b[d] == math.prod(a[d:k]) and b[d + 1 :] == a[k:]:
                return _Ch(s.group, d, s.block * math.prod(a[d + 1 : k]))
        raise self.unsupported(node, f"a reshape from {a} to {b} that splits or moves channels")

    def reduce(self, node: Node, s: _Ch) -> _Ch | None:
        args = list(node.args[1:])
        dim = node.kwargs.get("dim", args[0] if args else None)
        keepdim = node.kwargs.get("keepdim", args[1] if len(args) > 1 else False)
        ndim = len(_shape(node.args[0]))
        if dim is None:
            return None  # a full reduction is invariant to permutations
        dims = {d % ndim for d in ((dim,) if isinstance(dim, int) else dim)}
        if s.dim in dims:
            return None  # summing over the channels is invariant too
        return _Ch(s.group, s.dim if keepdim else s.dim - sum(d < s.dim for d in dims), s.block)

    def record_sites(self, node: Node) -> None:
        """The inputs of Linear/Conv layers are where activation matching reads a group."""
        if node.op != "call_module":
            return
        mod = self.modules[node.target]
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and node.args:
            s = self.state.get(node.args[0]) if isinstance(node.args[0], Node) else None
            if s is not None:
                site = (node.args[0].name, s.dim, s.block)
                if site not in self.sites.setdefault(s.group, []):
                    self.sites[s.group].append(site)


def _failing_module(model: nn.Module, tb: Any) -> str:
    names = {id(m): n for n, m in model.named_modules()}
    found = ""
    for frame, _ in traceback.walk_tb(tb):
        obj = frame.f_locals.get("self")
        if frame.f_code.co_name == "forward" and id(obj) in names:
            found = names[id(obj)]
    kind = type(dict(model.named_modules())[found]).__name__
    return f"module {found!r} ({kind})" if found else f"the model's forward ({kind})"


def _keyword_arguments(model: nn.Module, inputs: Mapping[str, Any]) -> tuple[dict, tuple]:
    """For a model called as ``model(**inputs)``: the arguments of ``forward`` that are not
    given, at their defaults (made concrete for tracing), and every argument's value in the
    order of the traced graph's placeholders."""
    params = [
        p
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    names = {p.name for p in params}
    unknown = [k for k in inputs if k not in names]
    missing = [p.name for p in params if p.name not in inputs and p.default is p.empty]
    if unknown or missing:
        raise BasinscopeError(
            f"{type(model).__name__}.forward takes {sorted(names)}; the inputs have keys "
            f"{sorted(inputs)}"
            + (f" (not arguments: {unknown})" if unknown else "")
            + (f" (missing: {missing})" if missing else "")
            + ": name the model's inputs with Task(inputs=...) or --inputs"
        )
    concrete = {p.name: p.default for p in params if p.name not in inputs}
    return concrete, tuple(inputs[p.name] if p.name in inputs else p.default for p in params)


def traced_graph(model: nn.Module, example_input: Any) -> tuple[Any, tuple]:
    """``(torch.fx.symbolic_trace(model), the graph's positional arguments)`` for inputs
    given as the model takes them: a tensor (``model(x)``), a tuple (``model(*x)``) or a
    dict of keyword inputs (``model(**x)``; the arguments of ``forward`` not given are
    traced at their defaults, so ``if labels is not None`` takes its branch)."""
    if isinstance(example_input, Mapping):
        concrete, args = _keyword_arguments(model, example_input)
        return symbolic_trace(model, concrete_args=concrete or None), args
    args = tuple(example_input) if isinstance(example_input, tuple) else (example_input,)
    return symbolic_trace(model), args


def _describe_input(x: Any) -> str:
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {tuple(getattr(v, 'shape', ()))}" for k, v in x.items()) + "}"
    if isinstance(x, tuple):
        return "(" + ", ".join(str(tuple(getattr(v, "shape", ()))) for v in x) + ")"
    return f"shape {tuple(getattr(x, 'shape', ()))}"


def permutation_spec(model: nn.Module, example_input: Any) -> PermutationSpec:
    """Find the permutation groups of ``model`` from its :mod:`torch.fx` graph.

    ``example_input`` (a batch, e.g. 2 examples) fixes the tensor shapes, which decide the
    block size where a convolution is flattened into a linear layer; it is a tensor, a
    tuple of inputs or a dict of keyword inputs (:func:`traced_graph`). Raises a
    :class:`~basinscope.errors.BasinscopeError` naming the module or op it cannot handle
    (data-dependent control flow, concatenation along channels, parameters used outside a
    module); pass a hand-written :meth:`PermutationSpec.from_groups` spec there.
    """
    try:
        gm, args = traced_graph(model, example_input)
    except BasinscopeError:
        raise
    except Exception as e:
        where = _failing_module(model, e.__traceback__)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BasinscopeError(
            f"torch.fx could not trace {where} of {type(model).__name__} "
            f"({type(e).__name__}: {msg}); data-dependent control flow such as "
            f"`if x.sum() > 0` cannot be traced. {_HAND_WRITTEN_HINT}"
        ) from e
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()  # the traced graph shares the model's modules: no BN statistics update
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as e:
        raise BasinscopeError(
            f"example_input of {_describe_input(example_input)} does not fit "
            f"{type(model).__name__} ({type(e).__name__}: {e}); pass a batch of real inputs."
        ) from e
    finally:
        for m, t in flags.items():
            m.training = t
    walker = _Walker(model, dict(gm.named_modules()))
    for node in gm.graph.nodes:
        walker.record_sites(node)
        walker.state[node] = walker.visit(node)
    return _assemble(walker, model, "fx", "torch.fx")


def _assemble(w: _Walker, model: nn.Module, site_kind: str, origin: str) -> PermutationSpec:
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    entries: dict[int, list[Axis]] = {}
    for (name, axis), (g, block) in w.axis_group.items():
        entries.setdefault(w.find(g), []).append((name, axis, block))
    roots = sorted(r for r in entries if r != _FIXED)
    names = {r: f"P_{w.producers[r][0]}" for r in roots}
    groups, sizes, producers, sites = {}, {}, {}, {}
    for r in roots:
        g = names[r]
        groups[g] = tuple(entries[r])
        counts = {state[n].shape[a] // b for n, a, b in entries[r]}
        if len(counts) != 1:
            raise RuntimeError(f"basinscope bug: group {g} has inconsistent sizes {counts}")
        sizes[g] = counts.pop()
        members = [k for k in w.producers if w.find(k) == r]
        producers[g] = tuple(p for k in members for p in w.producers[k])
        sites[g] = tuple(s for k in members for s in w.sites.get(k, []))
    return PermutationSpec(groups, sizes, producers, sites, site_kind, origin)


# -- applying permutations ---------------------------------------------------------------------


def _expand(perm: Tensor, block: int) -> Tensor:
    if block == 1:
        return perm
    return (perm[:, None] * block + torch.arange(block, device=perm.device)).reshape(-1)


def permute_tensor(
    t: Tensor, axes: Mapping[int, tuple[str, int]], perms: Mapping[str, Tensor], skip: int = -1
) -> Tensor:
    """``t`` with each ``axis`` (except ``skip``) re-indexed by the permutation of its group."""
    for axis, (g, block) in axes.items():
        if axis != skip and g in perms:
            t = t.index_select(axis, _expand(perms[g].to(t.device), block))
    return t


def check_permutations(spec: PermutationSpec, perms: Mapping[str, Any]) -> dict[str, Tensor]:
    """Permutations as LongTensors, checked: known groups, right sizes, each a permutation."""
    unknown = [g for g in perms if g not in spec.groups]
    if unknown:
        raise BasinscopeError(
            f"permutations for unknown groups {unknown}; the spec's groups are {list(spec.groups)}."
        )
    out = {}
    for g, p in perms.items():
        p = torch.as_tensor(p, dtype=torch.long).cpu()
        n = spec.sizes[g]
        if p.shape != (n,) or not torch.equal(p.sort().values, torch.arange(n)):
            raise BasinscopeError(
                f"the permutation of group {g!r} must hold each of 0..{n - 1} once, found "
                f"{p.tolist()[:10]}{'...' if p.numel() > 10 else ''} (length {p.numel()})."
            )
        out[g] = p
    return out


def apply_permutation(
    model: nn.Module, spec: PermutationSpec, perms: Mapping[str, Any]
) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are permuted group by group.

    For a group with permutation ``p``, channel ``i`` of the new model is channel ``p[i]`` of
    the old one (``W_new = W.index_select(axis, p)``); groups missing from ``perms`` keep the
    identity. The function of the model is unchanged; ``model`` itself is not touched.
    """
    perms = check_permutations(spec, perms)
    new = copy.deepcopy(model)
    state = {**dict(new.named_parameters()), **dict(new.named_buffers())}
    missing = [n for n in spec.axes if n not in state]
    if missing:
        raise BasinscopeError(
            f"the spec names {missing[:5]}, which {type(model).__name__} does not have: was "
            "the spec built for another model?"
        )
    with torch.no_grad():
        for name, axes in spec.axes.items():
            state[name].copy_(permute_tensor(state[name].detach(), axes, perms))
    return new


def random_permutation(spec: PermutationSpec, seed: int = 0) -> dict[str, Tensor]:
    """A uniformly random permutation for every group (``torch.randperm``, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}
