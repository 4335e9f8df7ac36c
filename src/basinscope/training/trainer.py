"""Deterministic minibatch training that records a trajectory.

:func:`train` deep-copies the model, trains the copy with the optimizer and schedule of a
:class:`TrainConfig` and returns a :class:`TrainResult` with the trained copy, parameter
checkpoints, the loss/learning-rate history and the final optimizer state (so a later
run can be spawned from a checkpoint with its momentum). Given the same initial model,
data and config the final parameters are bit-identical; the data order (and dropout)
depend only on ``config.data_seed``.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from basinscope.engine.fit import check_model_data
from basinscope.errors import BasinscopeError
from basinscope.training._data import BatchStream, as_tensors, iter_chunks
from basinscope.training.config import TrainConfig
from basinscope.training.schedules import lr_at
from basinscope.training.trajectory import load_trajectory, trajectory_to_safetensors

Callback = Callable[[int, nn.Module, dict[str, Any]], None]
LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Callback",
    "TrainConfig",
    "TrainResult",
    "load_trajectory",
    "select_trainable",
    "spawn",
    "train",
    "trajectory_to_safetensors",
]

_EVAL_CHUNK = 1024


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained copy (same ``requires_grad`` flags and train/eval modes as the
            model passed in).
        checkpoints: ``{step: parameter dict}`` for ``config.checkpoint_steps`` (detached
            CPU clones keyed as ``named_parameters()``; step 0 is the initial model).
        buffers: ``{step: buffer dict}`` at the same steps (BatchNorm statistics).
        history: ``"step"``, ``"loss"`` (minibatch loss of that update) and ``"lr"`` per
            update; with evaluation also ``"eval_step"``, ``"eval_loss"`` and
            ``"eval_accuracy"`` (NaN when the targets are not class labels).
        config: the configuration used.
        optimizer_state: the optimizer's final ``state_dict()`` (a deep copy).
        optimizer_states: ``{step: state_dict()}`` at the checkpoint steps, so a run can be
            spawned from any checkpoint with its momentum (:func:`spawn`).
    """

    model: nn.Module
    checkpoints: dict[int, dict[str, Tensor]]
    buffers: dict[int, dict[str, Tensor]]
    history: dict[str, list[float]]
    config: TrainConfig
    optimizer_state: dict[str, Any]
    optimizer_states: dict[int, dict[str, Any]] = field(default_factory=dict)


def select_trainable(model: nn.Module, config: TrainConfig) -> list[str]:
    """Names of the parameters :func:`train` updates under ``config.frozen``/``trainable``.

    Parameters whose ``requires_grad`` is already False are never trained. Every pattern
    must match at least one parameter name.
    """
    names = [n for n, _ in model.named_parameters()]
    patterns = config.frozen or config.trainable
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            which = "frozen" if config.frozen else "trainable"
            raise BasinscopeError(
                f"the {which} pattern {pat!r} matches no parameter; the parameters are "
                f"{', '.join(names)} (patterns use fnmatch syntax, e.g. 'conv1.*' or 'fc*')."
            )

    def hit(n: str) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for p in patterns)

    chosen = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (hit(n) if config.trainable else not hit(n))
    ]
    if not chosen:
        raise BasinscopeError(
            "no parameter is left to train: every parameter is frozen by the config or has "
            f"requires_grad=False (parameters: {', '.join(names)})."
        )
    return chosen


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _load_optimizer_state(
    opt: torch.optim.Optimizer, state: Mapping[str, Any], config: TrainConfig
) -> None:
    """Load the per-parameter state (momentum, Adam moments); the config's hyperparameters win."""
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    try:
        opt.load_state_dict(copy.deepcopy(dict(state)))
    except (ValueError, KeyError, RuntimeError) as e:
        raise BasinscopeError(
            f"optimizer_state does not fit this optimizer ({config.optimizer!r} over the "
            f"parameters selected by frozen/trainable): {e}. Pass the optimizer_state of a run "
            "with the same model, optimizer and frozen/trainable patterns."
        ) from e
    for group in opt.param_groups:
        group.update(hyper)


def _set_mode(model: nn.Module, bn_mode: str) -> None:
    model.train()
    if bn_mode == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _cpu_clone(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in d.items()}


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[float, float]:
    """Mean loss (assuming a mean-reduced ``loss_fn``) and accuracy over the whole set."""
    model.eval()
    total, correct, n = 0.0, 0, x.shape[0]
    classify = not (y.is_floating_point() or y.is_complex())
    for xb, yb in iter_chunks(x, y, _EVAL_CHUNK):
        out = model(xb)
        total += float(loss_fn(out, yb)) * xb.shape[0]
        if classify and out.ndim == 2 and yb.ndim == 1:
            correct += int((out.argmax(dim=1) == yb).sum())
        else:
            classify = False
    return total / n, (correct / n if classify else math.nan)


def optimizer_step(opt: torch.optim.Optimizer, step: int, lr: float, weight_decay: float) -> None:
    """``opt.step()``; an update too large for the parameters' dtype is the user's setting."""
    try:
        opt.step()
    except RuntimeError as e:
        if "overflow" not in str(e):
            raise
        raise BasinscopeError(
            f"the optimizer update overflowed the parameters at step {step} (lr={lr:g}, "
            f"weight_decay={weight_decay:g}; {e}); lower the learning rate or the weight decay."
        ) from e


def train(
    model: nn.Module,
    data: Any,
    config: TrainConfig | None = None,
    *,
    eval_data: Any = None,
    loss_fn: LossFn | None = None,
    device: str | torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    optimizer_state: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a deep copy of ``model`` on ``data``; the caller's model is never touched.

    Args:
        model: the initial model (left unchanged, buffers and modes included).
        data: a pair of tensors ``(x, y)``, an object with a ``batches(batch_size,
            shuffle=, seed=)`` method or tensor attributes ``x``/``y``, or a
            ``torch.utils.data.Dataset`` of ``(x, y)`` items. It is read into memory
            once; floating inputs are cast to the model's dtype. Minibatches all have
            ``min(batch_size, len(data))`` samples, cut from consecutive seeded epoch
            permutations (a minibatch may span two epochs).
        config: the :class:`TrainConfig` (default ``TrainConfig()``).
        eval_data: data in the same forms, evaluated every ``config.eval_every`` steps
            (and at step 0 and the final step) in eval mode.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, mean-reduced; default
            cross-entropy.
        device: where to train (default: the model's device).
        callbacks: ``cb(step, model, info)`` called after each update (``step`` from 1);
            ``info`` holds ``"loss"``, ``"lr"``, ``"epoch"`` (fractional passes over the
            data) and ``"optimizer"``. The train/eval modes are re-applied after the
            callbacks, so a callback may evaluate the model.
        optimizer_state: an optimizer ``state_dict()`` (e.g. ``TrainResult.optimizer_state``)
            whose per-parameter state (momentum buffers, Adam moments) is loaded into the
            fresh optimizer; the hyperparameters still come from ``config``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`TrainResult`.

    Raises:
        BasinscopeError: bad data, patterns that match nothing, an incompatible
            ``optimizer_state`` or a loss that becomes NaN/inf.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise BasinscopeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    classification = loss_fn is None
    loss_fn = nn.functional.cross_entropy if loss_fn is None else loss_fn
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    dev = torch.device(device)

    net = copy.deepcopy(model).to(dev)
    modes = [m.training for m in net.modules()]
    grad_flags = {n: p.requires_grad for n, p in net.named_parameters()}
    chosen = set(select_trainable(net, config))
    params = []
    for n, p in net.named_parameters():
        p.requires_grad_(n in chosen)
        if n in chosen:
            params.append(p)

    dtype = _float_dtype(net)

    def prepare(d: Any, what: str) -> tuple[Tensor, Tensor]:
        x, y = as_tensors(d, what)
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        return x.to(dev), y.to(dev)

    x, y = prepare(data, "data")
    do_eval = config.eval_every > 0 and eval_data is not None
    ex, ey = prepare(eval_data, "eval_data") if do_eval else (x[:0], y[:0])
    # one forward pass before the first step: inputs, logits and labels fit the model
    check_model_data(net, (x, y), what="the training data", classification=classification)
    if do_eval:
        check_model_data(net, (ex, ey), what="eval_data", classification=classification)

    opt = _make_optimizer(params, config)
    if optimizer_state is not None:
        _load_optimizer_state(opt, optimizer_state, config)

    stream = BatchStream(x, y, config.batch_size, config.data_seed)
    ckpt_steps = set(config.checkpoint_steps)
    checkpoints: dict[int, dict[str, Tensor]] = {}
    buffers: dict[int, dict[str, Tensor]] = {}
    optimizer_states: dict[int, dict[str, Any]] = {}
    history: dict[str, list[float]] = {"step": [], "loss": [], "lr": []}
    if do_eval:
        history.update({"eval_step": [], "eval_loss": [], "eval_accuracy": []})

    def record(step: int) -> None:
        if step in ckpt_steps:
            checkpoints[step] = _cpu_clone(dict(net.named_parameters()))
            buffers[step] = _cpu_clone(dict(net.named_buffers()))
            optimizer_states[step] = copy.deepcopy(opt.state_dict())
        if do_eval and (step % config.eval_every == 0 or step == config.steps):
            loss, acc = _evaluate(net, ex, ey, loss_fn)
            history["eval_step"].append(float(step))
            history["eval_loss"].append(loss)
            history["eval_accuracy"].append(acc)
            _set_mode(net, config.bn_mode)

    fork_devices = [] if dev.type == "cpu" else [dev.index if dev.index is not None else 0]
    fork_type = "cuda" if dev.type == "cpu" else dev.type
    with torch.random.fork_rng(devices=fork_devices, device_type=fork_type):
        torch.manual_seed((config.data_seed * 1_000_003 + 99_991) % (2**63 - 1))
        _set_mode(net, config.bn_mode)
        record(0)
        for step in tqdm(range(1, config.steps + 1), disable=not progress, desc="train"):
            lr = lr_at(
                step - 1,
                config.steps,
                config.lr,
                config.schedule,
                warmup_steps=config.warmup_steps,
                milestones=config.milestones,
                gamma=config.gamma,
                min_lr=config.min_lr,
                cycle_steps=config.cycle_steps,
            )
            for group in opt.param_groups:
                group["lr"] = lr
            xb, yb = next(stream)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise BasinscopeError(
                    f"the training loss became {loss_value} at step {step} (lr={lr:g}); "
                    "lower the learning rate, add warmup or set grad_clip."
                )
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer_step(opt, step, lr, config.weight_decay)
            history["step"].append(float(step))
            history["loss"].append(loss_value)
            history["lr"].append(lr)
            if callbacks:
                info = {"loss": loss_value, "lr": lr, "epoch": stream.epochs_done, "optimizer": opt}
                for cb in callbacks:
                    cb(step, net, info)
                _set_mode(net, config.bn_mode)  # in case a callback evaluated the model
            record(step)

    opt.zero_grad(set_to_none=True)
    for n, p in net.named_parameters():
        p.requires_grad_(grad_flags[n])
    for m, was_training in zip(net.modules(), modes):
        m.train(was_training)
    return TrainResult(
        model=net,
        checkpoints=checkpoints,
        buffers=buffers,
        history=history,
        config=config,
        optimizer_state=copy.deepcopy(opt.state_dict()),
        optimizer_states=optimizer_states,
    )


def spawn(
    parent: TrainResult,
    step: int,
    data: Any,
    config: TrainConfig,
    *,
    optimizer: str = "copy",
    **train_kwargs: Any,
) -> TrainResult:
    """Continue training from checkpoint ``step`` of ``parent`` with a new ``config``.

    The child starts from the checkpoint's parameters and buffers; ``optimizer="copy"``
    loads the optimizer state recorded at that step (momentum, Adam moments), ``"reset"``
    starts a fresh optimizer. The child's learning-rate schedule and data order start at
    its own step 0 with ``config.data_seed`` (use a different seed per child for different
    SGD noise; :func:`basinscope.analyses.instability` reproduces a parent's schedule).
    """
    if optimizer not in ("copy", "reset"):
        raise BasinscopeError(f"optimizer must be 'copy' or 'reset', got {optimizer!r}")
    if step not in parent.checkpoints:
        raise BasinscopeError(
            f"the parent run has no checkpoint at step {step}; its checkpoints are "
            f"{sorted(parent.checkpoints)} (set checkpoint_steps when training the parent)"
        )
    start = copy.deepcopy(parent.model)
    state = {**parent.checkpoints[step], **parent.buffers.get(step, {})}
    start.load_state_dict(state, strict=False)
    opt_state = None
    if optimizer == "copy":
        if step not in parent.optimizer_states:
            raise BasinscopeError(
                f"the parent run recorded no optimizer state at step {step}; use optimizer='reset'"
            )
        opt_state = parent.optimizer_states[step]
    return train(start, data, config, optimizer_state=opt_state, **train_kwargs)
