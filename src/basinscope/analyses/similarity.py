"""Representation similarity of two models: CKA between every pair of their layers.

:func:`cka_matrix` captures the layers' outputs with forward hooks and feeds them, batch by
batch, to one of the named CKA estimators of :mod:`basinscope.analyses.cka` (``method``:
``"minibatch"``, ``"linear"``, ``"debiased"`` or ``"rbf"``); the :class:`CKAResult`
records the estimator's name and formula. All computations are in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from basinscope.analyses.cka import (
    CKA_ESTIMATORS,
    METHODS,
    MIN_EXAMPLES_UNBIASED,
    MinibatchCKA,
    StreamingLinearCKA,
    _check_unbiased,
    debiased_cka,
    linear_cka,
    rbf_cka,
    unbiased_hsic,
)
from basinscope.engine.batches import as_batches
from basinscope.engine.fit import check_model_data
from basinscope.errors import BasinscopeError
from basinscope.result import Result, fmt
from basinscope.spec import Spec, option, takes_spec

__all__ = [
    "CKA_ESTIMATORS",
    "METHODS",
    "CKAResult",
    "CKASpec",
    "MinibatchCKA",
    "StreamingLinearCKA",
    "cka_matrix",
    "debiased_cka",
    "linear_cka",
    "rbf_cka",
    "unbiased_hsic",
]


@dataclass(frozen=True)
class CKASpec(Spec):
    """CKA similarity between the layers of two models.

    matrix[i, j] is the centered kernel alignment between the outputs of layer i of model A
    (the first --weights) and layer j of model B (the second), on --split, by the estimator
    --method: minibatch (unbiased HSIC averaged over batches, Nguyen et al. 2021; batches of
    at least 4), linear (exact full-data linear CKA, streamed), debiased (Kornblith et al.
    2019 with the unbiased HSIC estimator) or rbf (Gaussian kernel of width --sigma-factor x
    the median distance). Layers are named as in named_modules() (--layers-a, --layers-b,
    repeatable); default: every leaf module with parameters. Model B can be a different
    architecture (--model-b, --model-kwargs-b). figures/cka is the heatmap.

    Library: ``cka_matrix(model_a, model_b, data, spec=CKASpec(...))``; the fields are its
    keyword arguments.
    """

    kind: ClassVar[str] = "cka"

    layers_a: tuple[str, ...] = option(
        (), "Layer of model A; repeat (default: every leaf module with parameters)."
    )
    layers_b: tuple[str, ...] = option(
        (), "Layer of model B; repeat (default: every leaf module with parameters)."
    )
    method: str = option(
        "minibatch",
        "The CKA estimator (CKA_ESTIMATORS): minibatch, linear, debiased or rbf.",
        choices=METHODS,
    )
    batch_size: int = option(256, "Examples per forward pass.", low=1)
    max_examples: int | None = option(None, "Use at most this many examples (default: all).", low=1)
    sigma_factor: float = option(
        0.8, "rbf: the kernel width as a multiple of the median pairwise distance (> 0)."
    )
    split: str | None = option(None, "The name of the data's split, recorded in the result.")

    def check(self) -> None:
        if self.method == "minibatch" and self.batch_size < MIN_EXAMPLES_UNBIASED:
            raise BasinscopeError(
                f"{self.name_of('batch_size')} must be an integer >= {MIN_EXAMPLES_UNBIASED} "
                f"for {self.name_of('method')} minibatch, got {self.batch_size}: the unbiased "
                f"HSIC estimator needs {MIN_EXAMPLES_UNBIASED} examples per batch"
            )
        if not self.sigma_factor > 0:
            raise BasinscopeError(
                f"{self.name_of('sigma_factor')} must be a number > 0, got {self.sigma_factor}"
            )


@dataclass(frozen=True)
class CKAResult(Result, kind="cka"):
    """CKA between the layers of two models: ``matrix[i, j]`` = CKA(layers_a[i], layers_b[j]).

    ``method`` names the estimator that produced every entry and ``definition`` is its
    formula (:data:`CKA_ESTIMATORS`); ``num_examples`` is how many examples it saw,
    ``sigma_factor`` the RBF width factor (``None`` for the linear estimators).
    """

    matrix: np.ndarray
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    method: str
    num_examples: int
    batch_size: int
    sigma_factor: float | None = None
    definition: str | None = None
    models: tuple[str, str] = ("model_a", "model_b")
    split: str | None = None
    spec: CKASpec | None = None

    def __post_init__(self) -> None:
        if self.definition is None:
            object.__setattr__(self, "definition", CKA_ESTIMATORS.get(self.method))

    def summary(self) -> list[str]:
        """The estimator, the sizes and the CKA of same-named layers (the diagonal)."""
        head = (
            f"{self.method} CKA on {self.num_examples} examples: {len(self.layers_a)} x "
            f"{len(self.layers_b)} layers"
        )
        try:
            diagonal = self.diagonal()
        except BasinscopeError:
            return [head, "the models share no layer names: see the matrix in result.json"]
        return [head, f"{'layer':<24} CKA"] + [f"{n:<24} {fmt(v)}" for n, v in diagonal.items()]

    def diagonal(self) -> dict[str, float]:
        """CKA between same-named layers, for layers named in both models (in ``layers_a`` order)."""
        shared = [name for name in self.layers_a if name in self.layers_b]
        if not shared:
            raise BasinscopeError(
                f"the two models share no layer names (a: {list(self.layers_a)[:5]}, b: "
                f"{list(self.layers_b)[:5]}); read off-diagonal values from .matrix instead"
            )
        return {
            name: float(self.matrix[self.layers_a.index(name), self.layers_b.index(name)])
            for name in shared
        }


def _default_layers(model: nn.Module) -> list[str]:
    return [
        name
        for name, mod in model.named_modules()
        if name and not list(mod.children()) and any(True for _ in mod.parameters(recurse=False))
    ]


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None, which: str) -> list[str]:
    modules = dict(model.named_modules())
    names = list(layers) if layers else _default_layers(model)
    if not names:
        raise BasinscopeError(
            f"model {which} has no leaf modules with parameters; pass layers_{which}= "
            f"with names from named_modules(), e.g. {list(modules)[1:6]}"
        )
    missing = [n for n in names if n not in modules]
    if missing:
        raise BasinscopeError(
            f"model {which} has no modules named {missing}; valid names include "
            f"{[n for n in modules if n][:10]}"
        )
    return names


class _Capture:
    """Forward hooks that store the flattened outputs of named modules."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[name] = (
                output.detach().reshape(output.shape[0], -1).to("cpu", torch.float64)
            )

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _device_of(model: nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return p.device if p is not None else None


@takes_spec(CKASpec)
def cka_matrix(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    batch_size: int = 256,
    method: str = "minibatch",
    max_examples: int | None = None,
    sigma_factor: float = 0.8,
    split: str | None = None,
    labels: tuple[str, str] = ("model_a", "model_b"),
) -> CKAResult:
    """CKA between every layer of ``model_a`` and every layer of ``model_b`` on ``data``.

    ``method`` names the estimator (:data:`CKA_ESTIMATORS`: ``"minibatch"``, ``"linear"``,
    ``"debiased"`` or ``"rbf"``); the result records it with its formula. Layers are names
    from ``named_modules()``; by default (``None`` or empty) every leaf module with
    parameters. ``split`` names the data and ``labels`` the two models in the result.
    Outputs are captured with forward hooks, flattened, in float64; both models run in eval
    mode under ``no_grad`` and are returned to their previous modes with hooks removed.

    ``method="minibatch"`` streams (memory independent of N); a final batch with fewer than
    4 examples is dropped (``num_examples`` records how many were used). ``"linear"`` streams
    too (:class:`StreamingLinearCKA`, exact full-data CKA in float64). ``"debiased"`` and
    ``"rbf"`` need N x N Gram matrices and keep all activations in memory.
    """
    if method not in CKA_ESTIMATORS:
        raise BasinscopeError(
            f"unknown CKA method {method!r}; choose one of {list(CKA_ESTIMATORS)} ("
            + "; ".join(f"{k}: {v}" for k, v in CKA_ESTIMATORS.items())
            + ")"
        )
    if batch_size < 1:
        raise BasinscopeError(f"batch_size must be positive, got {batch_size}")
    if method == "minibatch" and batch_size < MIN_EXAMPLES_UNBIASED:
        _check_unbiased(batch_size, "minibatch CKA")
    if max_examples is not None and max_examples < 1:
        raise BasinscopeError(f"max_examples must be positive or None, got {max_examples}")
    names_a = _resolve_layers(model_a, layers_a, "a")
    names_b = _resolve_layers(model_b, layers_b, "b")
    batches = as_batches(data, batch_size=batch_size)
    check_model_data(model_a, batches, what="the data (model A)", classification=False)
    check_model_data(model_b, batches, what="the data (model B)", classification=False)
    modes = [(m, m.training) for model in (model_a, model_b) for m in model.modules()]
    cap_a, cap_b = _Capture(model_a, names_a), _Capture(model_b, names_b)
    dev_a, dev_b = _device_of(model_a), _device_of(model_b)
    acc: MinibatchCKA | StreamingLinearCKA | None = None
    if method == "minibatch":
        acc = MinibatchCKA(len(names_a), len(names_b))
    elif method == "linear":
        acc = StreamingLinearCKA(len(names_a), len(names_b))
    store_a: list[list[Tensor]] = [[] for _ in names_a]
    store_b: list[list[Tensor]] = [[] for _ in names_b]
    seen = 0
    try:
        model_a.eval()
        model_b.eval()
        with torch.no_grad():
            for x, _ in batches:
                if max_examples is not None:
                    x = x[: max_examples - seen]
                n = len(x)
                if n == 0:
                    break
                if method == "minibatch" and n < MIN_EXAMPLES_UNBIASED:
                    continue  # final short batch: dropped, see docstring
                model_a(x.to(dev_a) if dev_a is not None else x)
                model_b(x.to(dev_b) if dev_b is not None else x)
                xs = [cap_a.outputs[n_] for n_ in names_a]
                ys = [cap_b.outputs[n_] for n_ in names_b]
                if acc is not None:
                    acc.update(xs, ys)
                else:
                    for i, t in enumerate(xs):
                        store_a[i].append(t)
                    for j, t in enumerate(ys):
                        store_b[j].append(t)
                seen += n
    finally:
        cap_a.remove()
        cap_b.remove()
        for m, training in modes:
            m.train(training)
    if seen == 0:
        raise BasinscopeError(
            "no batch could be used: minibatch CKA needs batches of at least "
            f"{MIN_EXAMPLES_UNBIASED} examples; pass more data or a larger batch_size"
        )
    if acc is not None:
        matrix = acc.result()
    else:
        acts_a = [torch.cat(ts) for ts in store_a]
        acts_b = [torch.cat(ts) for ts in store_b]
        if method == "linear":
            fn = linear_cka
        elif method == "debiased":
            fn = debiased_cka
        else:

            def fn(u: Tensor, v: Tensor) -> float:
                return rbf_cka(u, v, sigma_factor=sigma_factor)

        matrix = np.array([[fn(u, v) for v in acts_b] for u in acts_a])
    return CKAResult(
        matrix=matrix,
        layers_a=tuple(names_a),
        layers_b=tuple(names_b),
        method=method,
        num_examples=seen,
        batch_size=batch_size,
        sigma_factor=sigma_factor if method == "rbf" else None,
        definition=CKA_ESTIMATORS[method],
        models=(str(labels[0]), str(labels[1])),
        split=split,
        spec=CKASpec(
            layers_a=tuple(layers_a or ()),
            layers_b=tuple(layers_b or ()),
            method=method,
            batch_size=batch_size,
            max_examples=max_examples,
            sigma_factor=sigma_factor,
            split=split,
        ),
    )
