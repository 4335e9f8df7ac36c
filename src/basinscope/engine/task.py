"""The task adapter: how a model is run on a batch, and what is measured.

Every computation of basinscope (the engine's points, the curvature operators, the trainer
and fine-tuning, barriers, representation hooks) runs a model on batches of data and turns
what comes out into numbers. A :class:`Task` is the one object that says how:

1. **split a batch** into the model's inputs and the targets. A tuple/list batch is
   ``(inputs, targets)``; a dict batch gives its target key (``targets``, or the first of
   ``y``, ``target``, ``targets``, ``label``, ``labels``) as targets and as inputs the
   keys ``inputs``, else its one usual input key (``x``, ``input``, ``inputs``, ``image``,
   ``images``, ``pixel_values``), else all its other keys;
2. **call the model**: ``positional`` is ``model(x)`` (a tuple of inputs is ``model(*x)``),
   ``keywords`` is ``model(**inputs)``; ``auto`` calls one usual input key positionally
   and several keys (``input_ids``, ``attention_mask``, ...) with keywords;
3. **take the prediction** from the output: ``output=None`` takes a tensor as it is, an
   object's ``.logits``, a dict's ``"logits"``, a tuple's first item; an ``int`` or a
   ``str`` picks that item, key or attribute;
4. **measure**: the ``loss`` is ``cross_entropy`` (mean over examples of
   :math:`-\\log p_\\theta(y_n \\mid x_n)`), ``mse`` (mean over examples of the mean squared
   error over the output's entries, as ``F.mse_loss``), ``model`` (the model's own
   ``.loss``, given the targets as ``labels``, one mean per batch) or a callable
   ``fn(prediction, targets)`` returning per-example values or a batch mean. ``accuracy``
   and ``error`` compare ``argmax(prediction)`` with integer labels; they are defined for
   classification losses only.

The default ``Task()`` is what basinscope did before tasks existed: ``(x, y)`` batches,
``model(x)``, a logits tensor and cross-entropy. A task is recorded in every result by
:meth:`Task.describe`, so each number says which loss produced it.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from basinscope.engine.metrics import BUILTIN_METRICS, Metric
from basinscope.errors import BasinscopeError

__all__ = [
    "CALLS",
    "CLASSIFICATION_METRICS",
    "LOSSES",
    "Task",
    "as_task",
    "batch_size_of",
    "call_model",
    "first_examples",
    "inputs_to",
]

LOSSES = ("cross_entropy", "mse", "model")
CALLS = ("auto", "positional", "keywords")
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")
CLASSIFICATION_METRICS = ("accuracy", "error")

#: What a model is given: one tensor (``model(x)``), a tuple (``model(*x)``) or a dict of
#: keyword inputs (``model(**x)``).
Inputs = Tensor | tuple | dict


def _mse(pred: Tensor, y: Tensor) -> Tensor:
    y = y.to(pred.dtype).reshape(pred.shape)
    d = (pred - y) ** 2
    return d.reshape(d.shape[0], -1).mean(dim=1) if d.ndim > 1 else d


def _cross_entropy(pred: Tensor, y: Tensor) -> Tensor:
    if pred.ndim > 2:  # (batch, positions, classes): the mean over positions per example
        b = pred.shape[0]
        per = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1), reduction="none")
        return per.reshape(b, -1).mean(dim=1)
    return F.cross_entropy(pred, y, reduction="none")


def _model_loss_marker(pred: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - never called
    raise AssertionError("the model's own loss is read from its output, not computed")


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """``module:attr`` (the module imported from the working folder too) as a callable."""
    import sys
    from pathlib import Path

    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise BasinscopeError(
            f"{what} {spec!r} is not module:attr: name a Python module and a function in it, "
            "e.g. mylosses:huber"
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise BasinscopeError(
            f"{what} {spec!r}: module {module!r} not found ({e}); put {module}.py in the "
            "working folder or install it"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BasinscopeError(f"{what} {spec!r}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BasinscopeError(f"{what} {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


@dataclass(frozen=True)
class Task:
    """How to run a model on a batch and what to measure (see the module docstring).

    Args:
        loss: ``"cross_entropy"`` (default), ``"mse"``, ``"model"`` (the output's own
            ``.loss``), a ``"module:attr"`` name of a callable, or a callable
            ``fn(prediction, targets)`` giving per-example values (shape ``(batch,)``) or
            the batch mean (a scalar).
        output: where the prediction is in the model's output: ``None`` (auto), an index
            into a tuple, or a key/attribute name such as ``"logits"``.
        targets: the dict key of the targets (``None``: the usual names).
        inputs: the dict keys given to the model (``None``: every key but the targets').
        call: ``"auto"``, ``"positional"`` or ``"keywords"``.
        metrics: extra :class:`~basinscope.engine.Metric` objects, available by name.
    """

    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy"
    output: str | int | None = None
    targets: str | None = None
    inputs: tuple[str, ...] | None = None
    call: str = "auto"
    metrics: tuple[Metric, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.loss, str) and self.loss not in LOSSES and ":" not in self.loss:
            raise BasinscopeError(
                f"unknown loss {self.loss!r}: expected one of {', '.join(LOSSES)} or "
                "module:attr (a callable fn(prediction, targets))"
            )
        if not isinstance(self.loss, str) and not callable(self.loss):
            raise BasinscopeError(
                f"loss must be a name or a callable, got {type(self.loss).__name__}"
            )
        if self.call not in CALLS:
            raise BasinscopeError(f"unknown call {self.call!r}: expected one of {', '.join(CALLS)}")
        if self.inputs is not None:
            object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "metrics", tuple(self.metrics))

    # -- what the task is ------------------------------------------------------------------
    @property
    def loss_name(self) -> str:
        if isinstance(self.loss, str):
            return self.loss
        mod = getattr(self.loss, "__module__", None)
        name = getattr(self.loss, "__qualname__", None) or type(self.loss).__name__
        return f"{mod}:{name}" if mod else name

    @property
    def model_loss(self) -> bool:
        """Whether the loss is the model's own (read from its output)."""
        return self.loss == "model"

    def classification(self, targets: Tensor | None = None) -> bool:
        """Whether the targets are class labels of the prediction (accuracy is defined): for
        cross-entropy and the model's own loss; for a user's loss, when ``targets`` are
        integers."""
        if self.loss in ("cross_entropy", "model"):
            return True
        if self.loss == "mse":
            return False
        return targets is not None and not torch.as_tensor(targets).is_floating_point()

    @property
    def default(self) -> bool:
        return self == Task()

    def describe(self) -> dict[str, Any]:
        """How a result records the task: the loss's name and definition, and the batch."""
        return {
            "loss": self.loss_name,
            "definition": self.loss_metric().definition,
            "output": self.output,
            "targets": self.targets,
            "inputs": list(self.inputs) if self.inputs is not None else None,
            "call": self.call,
        }

    # -- metrics ---------------------------------------------------------------------------
    def loss_metric(self) -> Metric:
        if self.loss == "cross_entropy":
            return BUILTIN_METRICS["loss"]
        if self.loss == "mse":
            return Metric(
                "loss", _mse, True, "mean squared error: mean over examples and output entries"
            )
        if self.loss == "model":
            return Metric(
                "loss",
                _model_loss_marker,
                False,
                "the model's own loss (output.loss), a mean per batch weighted by its size",
            )
        fn = load_callable(self.loss, "--loss") if isinstance(self.loss, str) else self.loss
        return Metric("loss", _UserLoss(fn), True, f"user loss {self.loss_name}")

    def resolve_metrics(
        self, requested: Sequence[str | Metric | Callable], targets: Tensor | None = None
    ) -> list[Metric]:
        """The metrics asked for, under this task: ``loss`` is the task's loss; accuracy and
        error are dropped, with a warning, when they are not defined (:meth:`classification`
        of a batch's ``targets``)."""
        classes = self.classification(targets)
        from basinscope.engine.metrics import resolve_metrics

        extra = {m.name: m for m in self.metrics}
        out: list[str | Metric | Callable] = []
        dropped = []
        for m in requested:
            if isinstance(m, str) and m in extra:
                out.append(extra[m])
            elif m == "loss":
                out.append(self.loss_metric())
            elif isinstance(m, str) and m in CLASSIFICATION_METRICS and not classes:
                dropped.append(m)
            else:
                out.append(m)
        if dropped:
            warnings.warn(
                f"{' and '.join(dropped)} not measured: defined for class labels only, and "
                f"the loss is {self.loss_name}"
                + ("" if self.loss == "mse" else " with targets that are not integers"),
                UserWarning,
                stacklevel=3,
            )
        if not out:
            raise BasinscopeError(
                f"none of the metrics {list(requested)} is defined for loss {self.loss_name}: "
                "ask for loss"
            )
        return resolve_metrics(out)

    # -- batches ---------------------------------------------------------------------------
    def split(self, batch: Any) -> tuple[Inputs, Tensor]:
        """``(inputs, targets)`` of one batch as the data gives it."""
        if isinstance(batch, Mapping):
            tk = self.targets or next((k for k in TARGET_KEYS if k in batch), None)
            if tk is None or tk not in batch:
                raise BasinscopeError(
                    f"a dict batch needs a target key ({self.targets!r} from --targets-key, "
                    f"or one of {', '.join(TARGET_KEYS)}); this one has keys {sorted(batch)}. "
                    "Name it with Task(targets=...) or --targets-key"
                )
            if self.inputs is not None:
                keys = list(self.inputs)
            elif self.call != "keywords" and any(k in batch for k in INPUT_KEYS):
                keys = [next(k for k in INPUT_KEYS if k in batch)]  # {"image": x, "label": y}
            else:
                keys = [k for k in batch if k != tk]
            missing = [k for k in keys if k not in batch]
            if missing:
                raise BasinscopeError(
                    f"the batch has no input keys {missing}: it has {sorted(batch)}"
                )
            if self.model_loss and tk not in keys:
                keys = [*keys, tk]  # the model computes its own loss from the labels
            inputs = {k: batch[k] for k in keys}
            positional = self.call == "positional" or (
                self.call == "auto" and len(inputs) == 1 and next(iter(inputs)) in INPUT_KEYS
            )
            if positional and len(inputs) == 1:
                return next(iter(inputs.values())), batch[tk]
            if positional:
                return tuple(inputs.values()), batch[tk]
            return inputs, batch[tk]
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            x, y = batch[0], batch[1]
            if isinstance(x, Mapping):
                x = dict(x)
            return x, y
        raise BasinscopeError(
            f"expected each batch to be (inputs, targets) or a dict, got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )

    # -- the model -------------------------------------------------------------------------
    def prediction(self, out: Any) -> Tensor:
        """The prediction (logits) in a model's output."""
        if self.output is not None:
            key = self.output
            try:
                if isinstance(key, int):
                    v = out[key]
                elif isinstance(out, Mapping) and key in out:
                    v = out[key]
                else:
                    v = getattr(out, key)
            except (KeyError, IndexError, AttributeError, TypeError):
                raise BasinscopeError(
                    f"the model's output ({_describe(out)}) has no {key!r}: name where its "
                    "prediction is with --output-key (an index, key or attribute)"
                ) from None
            return _tensor(v, f"output[{key!r}]")
        if isinstance(out, Tensor):
            return out
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, Mapping):
            logits = out.get("logits")
        if isinstance(logits, Tensor):
            return logits
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            return out[0]
        raise BasinscopeError(
            f"cannot find the prediction in the model's output ({_describe(out)}): return a "
            "tensor, an object with .logits, or name it with --output-key"
        )

    def own_loss(self, out: Any) -> Tensor:
        """The model's own loss in its output (``.loss`` or ``["loss"]``)."""
        v = getattr(out, "loss", None)
        if v is None and isinstance(out, Mapping):
            v = out.get("loss")
        if not isinstance(v, Tensor):
            raise BasinscopeError(
                f"loss 'model' reads the model's own .loss, but its output ({_describe(out)}) "
                "has none: give the model its labels (a dict batch with 'labels') or use "
                "--loss cross_entropy"
            )
        return v

    def head(self, out: Any) -> Tensor | tuple[Tensor, Tensor]:
        """What the engine keeps of an output: the prediction, and the model's own loss
        when that is the loss (tensors only, so this works under ``vmap``)."""
        if self.model_loss:
            return self.prediction(out), self.own_loss(out)
        return self.prediction(out)


class _UserLoss:
    """A user's loss as a per-example metric: a scalar result is the batch mean."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "loss")

    def __call__(self, pred: Tensor, y: Tensor) -> Tensor:
        v = self.fn(pred, y)
        if not isinstance(v, Tensor):
            raise BasinscopeError(
                f"the loss {self.__name__} returned a {type(v).__name__}, not a tensor"
            )
        if v.ndim == 0:
            return v.expand(pred.shape[0])
        if v.shape[0] != pred.shape[0] or v.ndim != 1:
            raise BasinscopeError(
                f"the loss {self.__name__} returned shape {tuple(v.shape)}: return one value per "
                f"example (shape ({pred.shape[0]},)) or the batch mean (a scalar)"
            )
        return v


def _tensor(v: Any, what: str) -> Tensor:
    if not isinstance(v, Tensor):
        raise BasinscopeError(f"the model's {what} is a {type(v).__name__}, not a tensor")
    return v


def _describe(out: Any) -> str:
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {list(out)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"


def as_task(task: Task | str | None = None, *, loss: str | None = None) -> Task:
    """``task`` as a :class:`Task`: ``None`` is the default (or ``Task(loss=loss)``), a
    ``module:attr`` string names a Task or a zero-argument factory of one."""
    if task is None:
        return Task() if loss is None else Task(loss=loss)
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        obj = load_callable(task, "--task") if ":" in task else None
        if obj is None:
            raise BasinscopeError(f"--task {task!r} is not module:attr, e.g. mytask:task")
        made = obj if isinstance(obj, Task) else obj()
        if not isinstance(made, Task):
            raise BasinscopeError(
                f"--task {task!r} made a {type(made).__name__}: it must name a "
                "basinscope.Task or a function returning one"
            )
        return made
    raise BasinscopeError(f"task must be a basinscope.Task, got {type(task).__name__}")


# -- inputs of any shape ---------------------------------------------------------------------
def call_model(fn: Callable[..., Any], x: Inputs) -> Any:
    """``fn(x)``, ``fn(*x)`` or ``fn(**x)`` for a tensor, tuple or dict of inputs."""
    if isinstance(x, dict):
        return fn(**x)
    if isinstance(x, tuple):
        return fn(*x)
    return fn(x)


def functional_args(x: Inputs) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for :func:`torch.func.functional_call`."""
    if isinstance(x, dict):
        return (), x
    if isinstance(x, tuple):
        return x, {}
    return (x,), {}


def inputs_to(x: Inputs, device: Any = None, dtype: torch.dtype | None = None) -> Inputs:
    """The inputs on ``device``, floating tensors cast to ``dtype`` (integer ids stay)."""
    from basinscope.engine.batches import plain_layout

    def move(t: Any) -> Any:
        t = torch.as_tensor(t)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return plain_layout(t.to(device)) if device is not None else plain_layout(t)

    if isinstance(x, dict):
        return {k: move(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(move(v) for v in x)
    return move(x)


def first_examples(x: Inputs, n: int) -> Inputs:
    """The first ``n`` examples of a batch's inputs."""
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(v[:n] for v in x)
    return x[:n]


def batch_size_of(x: Inputs) -> int:
    if isinstance(x, dict):
        return int(next(iter(x.values())).shape[0])
    if isinstance(x, tuple):
        return int(x[0].shape[0])
    return int(x.shape[0])


def describe_inputs(x: Inputs) -> str:
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {tuple(v.shape[1:])} {v.dtype}" for k, v in x.items()) + "}"
    if isinstance(x, tuple):
        return "(" + ", ".join(f"{tuple(v.shape[1:])}" for v in x) + ")"
    return f"{tuple(x.shape[1:])} ({x.dtype})"
