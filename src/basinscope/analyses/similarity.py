"""Representation similarity of two models: CKA between every pair of their layers.

:func:`cka_matrix` captures the layers' outputs with forward hooks and feeds them, batch by
batch, to one of the named CKA estimators of :mod:`basinscope.analyses.cka` (``method``:
``"minibatch"``, ``"linear"``, ``"debiased"`` or ``"rbf"``); the :class:`CKAResult`
records the estimator's name and formula. All computations are in float64.

The models are run through a :class:`~basinscope.engine.task.Task` (``model(x)``,
``model(*x)`` or ``model(**batch)``: token ids with an attention mask work as images do), on
one device, in one precision; the data may be in memory or a DataLoader read batch by batch
(the ``minibatch`` and ``linear`` estimators never hold more than one batch of activations).
A hooked module's output is its tensor, or the first tensor of a tuple or a Hugging Face
``ModelOutput`` (a ``BertLayer`` returns ``(hidden_states,)``). Each output becomes one row
per example: outputs of shape ``(batch, tokens, dim)`` are pooled by the named rule
``sequence`` (:data:`SEQUENCE_RULES`), every other shape is flattened.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
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
from basinscope.engine.precision import autocast, storage_dtype, to_dtype
from basinscope.engine.task import (
    Task,
    as_task,
    batch_size_of,
    call_model,
    first_examples,
    inputs_to,
)
from basinscope.errors import BasinscopeError
from basinscope.result import Result, fmt
from basinscope.spec import EVAL_DTYPES, EvalOptions, Spec, option, takes_spec

__all__ = [
    "CKA_ESTIMATORS",
    "METHODS",
    "SEQUENCE_RULES",
    "CKAResult",
    "CKASpec",
    "MinibatchCKA",
    "StreamingLinearCKA",
    "cka_matrix",
    "debiased_cka",
    "evaluated",
    "linear_cka",
    "rbf_cka",
    "unbiased_hsic",
]


#: How an output of shape (batch, tokens, dim) becomes one row per example: name -> rule.
#: ``auto`` is ``mean`` for keyword inputs (a dict batch such as input_ids + attention_mask)
#: and ``flatten`` for tensor inputs (a Conv1d's (batch, channels, length) stays flattened).
SEQUENCE_RULES: dict[str, str] = {
    "masked_mean": "the mean over the tokens whose attention_mask is 1 (an example without "
    "such tokens gives zeros)",
    "mean": "the mean over all tokens",
    "flatten": "the (tokens x dim) values flattened",
}
SEQUENCE_CHOICES = ("auto", "mean", "flatten")


def _eval_help(name: str) -> str:
    return EvalOptions.__dataclass_fields__[name].metadata["help"]


@dataclass(frozen=True)
class CKASpec(Spec):
    """CKA similarity between the layers of two models.

    matrix[i, j] is the centered kernel alignment between the outputs of layer i of model A
    (the first --weights) and layer j of model B (the second), on --split, by the estimator
    --method: minibatch (unbiased HSIC averaged over batches, Nguyen et al. 2021; batches of
    at least 4), linear (exact full-data linear CKA, streamed), debiased (Kornblith et al.
    2019 with the unbiased HSIC estimator) or rbf (Gaussian kernel of width --sigma-factor x
    the median distance). Layers are named as in named_modules() (--layers-a, --layers-b,
    repeatable); default: every leaf module with parameters. A layer's output is its tensor
    or the first tensor of a tuple (a transformer block's hidden states), one row per
    example: outputs of shape (batch, tokens, dim) are pooled by --sequence (mean: over the
    tokens whose attention_mask is 1 when the batch has one, else over all tokens; flatten;
    auto: mean for keyword inputs such as input_ids + attention_mask, flatten otherwise), the
    rule used is recorded as sequence; other shapes are flattened. Model B can be a different
    architecture (--model-b, --model-kwargs-b). The models run on --device in --dtype.
    figures/cka is the heatmap.

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
    sequence: str = option(
        "auto",
        "Outputs (batch, tokens, dim): mean (over the attention_mask's tokens), flatten, or "
        "auto (mean for keyword inputs, flatten for a tensor).",
        choices=SEQUENCE_CHOICES,
    )
    device: str = option("cpu", _eval_help("device"))
    dtype: str = option("float32", _eval_help("dtype"), choices=EVAL_DTYPES)

    def check(self) -> None:
        EvalOptions(device=self.device)  # the device exists here (named --device)
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
    ``sequence`` names the rule (:data:`SEQUENCE_RULES`) that turned outputs of shape
    (batch, tokens, dim) into rows (``None``: no layer returned such an output), and
    ``task`` how the models were called (:meth:`~basinscope.engine.task.Task.describe`).
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
    sequence: str | None = None
    task: dict[str, Any] | None = None
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


# -- models on a device, in a precision -----------------------------------------------------
@dataclass(frozen=True)
class Evaluated:
    """Models ready to evaluate (:func:`evaluated`): on ``device``, their floating
    parameters in ``precision`` (bfloat16/float16 are float32 weights run under
    ``torch.autocast`` in ``autocast``); ``dtype`` is what floating inputs are cast to."""

    models: tuple[nn.Module, ...]
    device: torch.device
    dtype: torch.dtype | None
    autocast: torch.dtype | None
    precision: str

    def inputs(self, x: Any) -> Any:
        """A batch's inputs on the device, floating inputs in the storage dtype."""
        return inputs_to(x, self.device, self.dtype)

    def run(self, model: nn.Module, x: Any) -> Any:
        """``model``'s raw output on inputs ``x`` (already on the device) under autocast."""
        with autocast(self.device, self.autocast):
            return call_model(model, x)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s first floating parameter or buffer (``None``: it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def model_device(model: nn.Module) -> torch.device | None:
    """The device of ``model``'s first parameter or buffer (``None``: it has none)."""
    t = next(iter((*model.parameters(), *model.buffers())), None)
    return t.device if t is not None else None


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that exists here (:class:`EvalOptions`' check and
    message: ``device 'cuda:7' is not available here (...); use device cpu``)."""
    name = str(device)
    EvalOptions(device=name)
    return torch.empty(0, device=name).device  # "cuda" as the tensors report it: "cuda:0"


@contextlib.contextmanager
def evaluated(
    models: Sequence[nn.Module], device: Any = None, dtype: Any = None
) -> Iterator[Evaluated]:
    """The models in eval mode on ``device`` in ``dtype`` (:mod:`basinscope.engine.precision`),
    for the block; the caller's models are never changed.

    ``device=None`` is the first model's device, ``dtype=None`` every model's own dtype
    (no cast). A model already on the device in the storage dtype is used as it is (its
    train/eval modes are restored afterwards); any other is deep-copied and moved, so a
    model on the CPU evaluated on a GPU is copied to it once, not per batch.
    """
    first = model_device(models[0]) if models else None
    dev = check_device(device if device is not None else (first if first is not None else "cpu"))
    store, cast = (None, None) if dtype is None else storage_dtype(dtype)
    precision = (
        str(to_dtype(dtype)).replace("torch.", "")
        if dtype is not None
        else str(model_dtype(models[0]) or torch.float32).replace("torch.", "")
    )
    ready, restore = [], []
    for m in models:
        tensors = [*m.parameters(), *m.buffers()]
        moved = any(t.device != dev for t in tensors) or any(
            store is not None and t.is_floating_point() and t.dtype != store for t in tensors
        )
        if moved:
            m = copy.deepcopy(m).to(device=dev, dtype=store) if store else copy.deepcopy(m).to(dev)
        else:
            restore.append([(sub, sub.training) for sub in m.modules()])
        ready.append(m.eval())
    try:
        inputs = store or (model_dtype(models[0]) if models else None)
        yield Evaluated(tuple(ready), dev, inputs, cast, precision)
    finally:
        for modes in restore:
            for sub, training in modes:
                sub.train(training)


# -- activations --------------------------------------------------------------------------
def _first_tensor(output: Any, name: str) -> Tensor:
    """A module's output tensor: the tensor, or the first tensor of a tuple, list, dict or
    ``ModelOutput`` (a Hugging Face ``BertLayer`` returns ``(hidden_states,)``)."""
    if isinstance(output, Tensor):
        return output
    items = output.values() if isinstance(output, Mapping) else output
    if isinstance(items, (tuple, list)) or isinstance(output, Mapping):
        for v in items:
            if isinstance(v, Tensor):
                return v
    raise BasinscopeError(
        f"layer {name!r} returned a {type(output).__name__} with no tensor: hook a module that "
        "returns a tensor (or a tuple whose first tensor is the representation)"
    )


class _Capture:
    """Forward hooks that store each named module's output as one float64 row per example,
    on the model's device (the CPU for MPS)."""

    def __init__(self, model: nn.Module, names: list[str], rule: dict[str, Any]) -> None:
        self.outputs: dict[str, Tensor] = {}
        self.rule = rule  # shared: {"sequence": "mean"|"flatten", "mask": Tensor|None, "used"}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.outputs[name] = self._rows(_first_tensor(output, name).detach(), name)

        return hook

    def _rows(self, t: Tensor, name: str) -> Tensor:
        if t.device.type == "mps":  # no float64 there
            t = t.cpu()
        t = t.to(torch.float64)
        if t.ndim == 3 and self.rule["sequence"] == "mean":
            mask = self.rule["mask"]
            if mask is None:
                self.rule["used"] = "mean"
                return t.mean(dim=1)
            if tuple(mask.shape) != tuple(t.shape[:2]):
                raise BasinscopeError(
                    f"layer {name!r} returned shape {tuple(t.shape)}, but the attention_mask "
                    f"has shape {tuple(mask.shape)}: its mean over unmasked tokens needs "
                    "(batch, tokens, dim) with the mask's tokens; use sequence='flatten' "
                    "(--sequence flatten) or hook another layer"
                )
            w = mask.to(device=t.device, dtype=torch.float64)
            self.rule["used"] = "masked_mean"
            return (t * w.unsqueeze(-1)).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp_min(1.0)
        if t.ndim == 3:
            self.rule["used"] = "flatten"
        return t.reshape(t.shape[0], -1)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


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
    sequence: str = "auto",
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    labels: tuple[str, str] = ("model_a", "model_b"),
) -> CKAResult:
    """CKA between every layer of ``model_a`` and every layer of ``model_b`` on ``data``.

    ``method`` names the estimator (:data:`CKA_ESTIMATORS`: ``"minibatch"``, ``"linear"``,
    ``"debiased"`` or ``"rbf"``); the result records it with its formula. Layers are names
    from ``named_modules()``; by default (``None`` or empty) every leaf module with
    parameters. ``split`` names the data and ``labels`` the two models in the result.
    Outputs are captured with forward hooks (a tuple's or ``ModelOutput``'s first tensor),
    one float64 row per example: ``(batch, tokens, dim)`` outputs by the rule ``sequence``
    (``"mean"``: over the tokens of the inputs' ``attention_mask`` when there is one, else
    over all tokens; ``"flatten"``; ``"auto"``: ``"mean"`` for dict inputs, ``"flatten"``
    for a tensor; the rule used is ``result.sequence``), every other shape flattened. Both
    models run in eval mode under ``no_grad`` and are returned to their previous modes with
    hooks removed.

    ``task`` says how a batch is split and the models called (default: ``(x, y)`` batches,
    ``model(x)``; a dict batch of ``input_ids``, ``attention_mask`` and ``labels`` calls
    ``model(input_ids=..., attention_mask=...)``). ``data`` is anything
    :func:`~basinscope.engine.as_batches` reads (a DataLoader is streamed batch by batch;
    its batches are the loader's, not ``batch_size``). The models run on ``device``
    (default: model A's) in ``dtype`` (default: their own; ``"bfloat16"``/``"float16"``
    autocast over float32 weights); a model elsewhere is copied there once, each batch is
    moved there, and the estimator's sums stay there until the matrix is read.

    ``method="minibatch"`` streams (memory independent of N); a final batch with fewer than
    4 examples is dropped (``num_examples`` records how many were used). ``"linear"`` streams
    too (:class:`StreamingLinearCKA`, exact full-data CKA in float64). ``"debiased"`` and
    ``"rbf"`` need N x N Gram matrices and keep all activations in memory (on the CPU).
    """
    if method not in CKA_ESTIMATORS:
        raise BasinscopeError(
            f"unknown CKA method {method!r}; choose one of {list(CKA_ESTIMATORS)} ("
            + "; ".join(f"{k}: {v}" for k, v in CKA_ESTIMATORS.items())
            + ")"
        )
    if sequence not in SEQUENCE_CHOICES:
        raise BasinscopeError(
            f"unknown sequence rule {sequence!r}: expected one of {', '.join(SEQUENCE_CHOICES)}"
        )
    if batch_size < 1:
        raise BasinscopeError(f"batch_size must be positive, got {batch_size}")
    if method == "minibatch" and batch_size < MIN_EXAMPLES_UNBIASED:
        _check_unbiased(batch_size, "minibatch CKA")
    if max_examples is not None and max_examples < 1:
        raise BasinscopeError(f"max_examples must be positive or None, got {max_examples}")
    task = as_task(task)
    names_a = _resolve_layers(model_a, layers_a, "a")
    names_b = _resolve_layers(model_b, layers_b, "b")
    batches = as_batches(data, batch_size=batch_size, task=task)  # moved per batch below
    acc: MinibatchCKA | StreamingLinearCKA | None = None
    if method == "minibatch":
        acc = MinibatchCKA(len(names_a), len(names_b))
    elif method == "linear":
        acc = StreamingLinearCKA(len(names_a), len(names_b))
    store_a: list[list[Tensor]] = [[] for _ in names_a]
    store_b: list[list[Tensor]] = [[] for _ in names_b]
    rule: dict[str, Any] = {"sequence": sequence, "mask": None, "used": None}
    seen = 0
    with evaluated((model_a, model_b), device, dtype) as ev:
        net_a, net_b = ev.models
        check_model_data(net_a, batches, what="the data (model A)", classification=False, task=task)
        check_model_data(net_b, batches, what="the data (model B)", classification=False, task=task)
        cap_a, cap_b = _Capture(net_a, names_a, rule), _Capture(net_b, names_b, rule)
        try:
            with torch.no_grad():
                for x, _ in batches:
                    if max_examples is not None:
                        x = first_examples(x, max_examples - seen)
                    n = batch_size_of(x)
                    if n == 0:
                        break
                    if method == "minibatch" and n < MIN_EXAMPLES_UNBIASED:
                        continue  # final short batch: dropped, see docstring
                    x = ev.inputs(x)
                    if sequence == "auto":
                        rule["sequence"] = "mean" if isinstance(x, dict) else "flatten"
                    rule["mask"] = x.get("attention_mask") if isinstance(x, dict) else None
                    ev.run(net_a, x)
                    ev.run(net_b, x)
                    xs = [cap_a.outputs[n_] for n_ in names_a]
                    ys = [cap_b.outputs[n_] for n_ in names_b]
                    if acc is not None:
                        acc.update(xs, ys)
                    else:
                        for i, t in enumerate(xs):
                            store_a[i].append(t.cpu())
                        for j, t in enumerate(ys):
                            store_b[j].append(t.cpu())
                    seen += n
        finally:
            cap_a.remove()
            cap_b.remove()
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
        sequence=rule["used"],
        task=task.describe(),
        spec=CKASpec(
            layers_a=tuple(layers_a or ()),
            layers_b=tuple(layers_b or ()),
            method=method,
            batch_size=batch_size,
            max_examples=max_examples,
            sigma_factor=sigma_factor,
            split=split,
            sequence=sequence,
            device=str(device if device is not None else ev.device),
            dtype=ev.precision,
        ),
    )
