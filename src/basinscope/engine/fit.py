"""Does the model fit the data? One forward pass on a first batch, before any long work.

Every analysis evaluates a classifier on a dataset thousands of times; a model built for
other inputs, a model that does not return class logits, or labels beyond the model's
classes would otherwise fail deep inside (``mat1 and mat2 shapes cannot be multiplied``,
``Target 12 is out of bounds``) or, for accuracy and error, not fail at all and measure
nonsense. :func:`check_model_data` runs the model on the first few examples and raises a
:class:`~basinscope.errors.BasinscopeError` that names the data's shape, the model and
the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from basinscope.errors import BasinscopeError

__all__ = ["PROBE_EXAMPLES", "check_model_data"]

#: Examples of the first batch that the model is run on.
PROBE_EXAMPLES = 4


def _first_batch(data: Any, task: Any) -> tuple[Any, Tensor, Tensor] | None:
    """``(x, y, labels)``: a few inputs and targets, and every label that is cheap to see."""
    from basinscope.engine.task import first_examples

    if isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
        x, y = task.split(data)
        return first_examples(x, PROBE_EXAMPLES), y[:PROBE_EXAMPLES], torch.as_tensor(y)
    if hasattr(data, "x") and hasattr(data, "y") and isinstance(data.x, Tensor):
        x, y = data.x, data.y
        return x[:PROBE_EXAMPLES], y[:PROBE_EXAMPLES], torch.as_tensor(y)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0][:PROBE_EXAMPLES], data[1][:PROBE_EXAMPLES], data[1]
    if isinstance(data, list) and data and all(isinstance(b, tuple) for b in data):
        # materialized batches (engine.as_batches): every label is at hand
        x, y = data[0][0], data[0][1]
        labels = torch.cat([torch.as_tensor(b[1]).reshape(-1).cpu() for b in data])
        return first_examples(x, PROBE_EXAMPLES), y[:PROBE_EXAMPLES], labels
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        for batch in data:
            x, y = task.split(batch)
            y = torch.as_tensor(y)
            return first_examples(x, PROBE_EXAMPLES), y[:PROBE_EXAMPLES], y
    return None


def _check_loss(task: Any, pred: Tensor, y: Tensor, what: str) -> None:
    """The task's loss of the probe batch: a loss that cannot compare this prediction with
    these targets (MSE on class labels, say) is named before any work."""
    y = torch.as_tensor(y).to(pred.device)
    try:
        with torch.no_grad():
            task.loss_metric().fn(pred, y)
    except BasinscopeError:
        raise
    except Exception as e:
        text = " ".join(str(e).split())[:200]
        hint = (
            "class labels take --loss cross_entropy"
            if not y.is_floating_point()
            else "regression targets take --loss mse"
        )
        raise BasinscopeError(
            f"the loss {task.loss_name} cannot compare the model's prediction (shape "
            f"{tuple(pred.shape)}) with the targets of {what} (shape {tuple(y.shape)}, "
            f"{y.dtype}): {type(e).__name__}: {text}. Pick the loss of these targets "
            f"({hint}), or a module:attr loss of (prediction, targets)"
        ) from None


def _describe(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} ({n:,} parameters)"


def check_model_data(
    model: nn.Module,
    data: Any,
    *,
    what: str = "the data",
    classification: bool = True,
    task: Any = None,
) -> int | None:
    """Run ``model`` on the first examples of ``data`` and check what comes out.

    Args:
        model: The network; it is run in eval mode under ``torch.no_grad`` (its train/eval
            modes are restored, its parameters and buffers are not changed).
        data: Anything the engine or the trainer accepts (a ``TensorData``, an ``(x, y)``
            pair, a list of batches, a DataLoader).
        what: How the messages name the data, e.g. ``"split 'train'"``.
        classification: Whether the targets are class indices for the model's logits
            (the built-in loss, accuracy and error): then the output must be 2-D logits
            ``(batch, classes)`` and every label must lie in ``[0, classes)``.
        task: how the model is called and where its prediction is
            (:class:`~basinscope.engine.task.Task`; default: ``model(x)``, a tensor).

    Returns:
        The number of classes (``None`` when ``classification`` is false or the data
        cannot be read here).

    Raises:
        BasinscopeError: the model cannot take the inputs, returns no logits, or the
            labels exceed its classes.
    """
    from basinscope.engine.task import (
        as_task,
        batch_size_of,
        call_model,
        describe_inputs,
        inputs_to,
    )

    task = as_task(task)
    first = _first_batch(data, task)
    if first is None:
        return None
    x, _, labels = first
    param = next(iter(model.parameters()), None)
    if param is not None:
        x = inputs_to(x, param.device, param.dtype)
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            raw = call_model(model, x)
    except Exception as e:  # shape errors come as RuntimeError, IndexError, ValueError...
        text = " ".join(str(e).split())[:300]
        raise BasinscopeError(
            f"the model {_describe(model)} cannot take the inputs of {what}: each example "
            f"has shape {describe_inputs(x)}, and a batch of {batch_size_of(x)} fails with "
            f"{type(e).__name__}: {text}. Pass data of the shape the model was built for, or "
            "build the model for these inputs (--model/--model-kwargs, e.g. in_channels, "
            "image_size or in_features)."
        ) from e
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    out = task.prediction(raw)
    if task.model_loss:
        task.own_loss(raw)
    if task.loss not in ("cross_entropy", "model"):  # (cross-entropy: the checks below)
        _check_loss(task, out, first[1], what)  # the loss that will be measured
    if classification and task.loss == "cross_entropy" and labels.is_floating_point():
        raise BasinscopeError(
            f"{what} has floating-point targets of shape {tuple(labels.shape)} (regression "
            "targets), but the loss is cross-entropy on class labels: pass --loss mse (or "
            "Task(loss='mse')), or your own loss with --loss module:attr"
        )
    if not classification or task.loss not in ("cross_entropy", "model"):
        return None
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != batch_size_of(x):
        found = (
            f"a tensor of shape {tuple(out.shape)}"
            if isinstance(out, Tensor)
            else f"a {type(out).__name__}"
        )
        raise BasinscopeError(
            f"the model {_describe(model)} must return class logits of shape (batch, classes) "
            f"for the loss, accuracy and error; on a batch of {batch_size_of(x)} examples of {what} it "
            f"returned {found}. Make forward() return one logit per class, e.g. end with "
            "nn.Linear(features, num_classes)."
        )
    classes = int(out.shape[1])
    labels = labels.reshape(-1)
    if labels.numel() and not labels.is_floating_point():
        top, low = int(labels.max()), int(labels.min())
        if top >= classes or low < 0:
            bad = top if top >= classes else low
            raise BasinscopeError(
                f"{what} has label {bad}, but the model {_describe(model)} outputs {classes} "
                f"classes (labels 0..{classes - 1}). Build the model with num_classes="
                f"{top + 1} (e.g. --model-kwargs '{{\"num_classes\": {top + 1}}}') or remap the "
                f"labels to 0..{classes - 1}."
            )
    return classes
