"""Private helpers of the trainer: where it runs, in which precision, and what it minimises."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from basinscope.engine.precision import storage_dtype, to_dtype
from basinscope.errors import BasinscopeError

__all__ = ["Objective", "dtype_name", "evaluate_task", "resolve_device", "resolve_precision"]


def resolve_device(device: str | torch.device, what: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists here, or a clear error naming ``what``."""
    try:
        dev = torch.device(device)
        if dev.type != "cpu":
            torch.empty(0, device=dev)
    except Exception as e:  # absent CUDA devices, no MPS, a misspelled device
        text = " ".join(str(e).split())[:160]
        raise BasinscopeError(
            f"{what} {str(device)!r} is not available here ({type(e).__name__}: {text}); "
            f"use {what} cpu (or one of this machine's devices: cuda, cuda:N, mps)"
        ) from None
    return dev


def resolve_precision(dtype: Any) -> tuple[torch.dtype | None, torch.dtype | None]:
    """``(dtype the model is stored and trained in, autocast dtype)`` for ``dtype=``: None
    keeps the model's own dtype; float32/float64 train in that dtype; bfloat16/float16
    keep float32 weights and run the forward pass under autocast."""
    if dtype is None:
        return None, None
    return storage_dtype(dtype)


def dtype_name(dtype: Any) -> str:
    return str(to_dtype(dtype)).replace("torch.", "")


class Objective:
    """The training loss of a task: the mean over a minibatch's examples.

    ``cross_entropy`` is ``F.cross_entropy`` (for outputs with positions, the mean over
    positions per example, then over examples), ``mse`` the mean over examples of the mean
    squared error over the output's entries, ``model`` the model's own ``.loss`` and a
    callable ``fn(prediction, targets)`` its scalar, or the mean of its per-example values.
    """

    def __init__(self, task: Any) -> None:
        from basinscope.engine.task import load_callable

        self.task = task
        self.user = None
        if not task.model_loss and task.loss not in ("cross_entropy", "mse"):
            loss = task.loss
            self.user = load_callable(loss, "--loss") if isinstance(loss, str) else loss
        self.mse = task.loss_metric().fn if task.loss == "mse" else None

    def __call__(self, out: Any, y: Tensor) -> Tensor:
        task = self.task
        if task.model_loss:
            return task.own_loss(out)
        pred = task.prediction(out)
        if self.mse is not None:
            return self.mse(pred, y).mean()
        if self.user is not None:
            return self._user(pred, y)
        if pred.ndim <= 2:
            return F.cross_entropy(pred, y)
        b = pred.shape[0]
        per = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1), reduction="none")
        return per.reshape(b, -1).mean(dim=1).mean()

    def _user(self, pred: Tensor, y: Tensor) -> Tensor:
        name = getattr(self.user, "__name__", "loss")
        v = self.user(pred, y)  # type: ignore[misc]
        if not isinstance(v, Tensor):
            raise BasinscopeError(f"the loss {name} returned a {type(v).__name__}, not a tensor")
        if v.ndim == 0:
            return v
        if v.ndim != 1 or v.shape[0] != pred.shape[0]:
            raise BasinscopeError(
                f"the loss {name} returned shape {tuple(v.shape)}: return one value per "
                f"example (shape ({pred.shape[0]},)) or the batch mean (a scalar)"
            )
        return v.mean()

    def correct(self, out: Any, y: Tensor) -> float | None:
        """Examples whose arg-max prediction is the label (a mean over positions for
        outputs with positions), or None when the prediction has no class axis for ``y``."""
        pred = self.task.prediction(out)
        if pred.ndim < 2 or tuple(pred.shape[:-1]) != tuple(y.shape):
            return None
        eq = pred.argmax(dim=-1) == y
        if eq.ndim == 1:
            return float(int(eq.sum()))
        return float(eq.reshape(eq.shape[0], -1).double().mean(dim=1).sum())


def evaluate_task(
    model: nn.Module,
    data: Any,
    *,
    task: Any = None,
    device: Any = None,
    dtype: Any = None,
) -> dict[str, float]:
    """:func:`~basinscope.engine.evaluate.evaluate_model` under ``task``: the loss, and the
    accuracy where it is defined (class labels), on ``device`` (default: the model's) in
    ``dtype`` (default float32)."""
    from basinscope.engine.evaluate import evaluate_model
    from basinscope.engine.task import as_task

    task = as_task(task)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    metrics = ("loss",) if task.loss == "mse" else ("loss", "accuracy")
    kw: dict[str, Any] = {"dtype": to_dtype(dtype)} if dtype is not None else {}
    with warnings.catch_warnings():  # a user's loss with targets that are not labels
        warnings.filterwarnings("ignore", message="accuracy not measured", category=UserWarning)
        return evaluate_model(model, data, metrics=metrics, task=task, device=str(device), **kw)
