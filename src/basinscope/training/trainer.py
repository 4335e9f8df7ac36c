"""Deterministic minibatch training that records a trajectory.

:func:`train` deep-copies the model, trains the copy with the optimizer and schedule of a
:class:`TrainConfig` and returns a :class:`TrainResult` with the trained copy, parameter
checkpoints, the loss/learning-rate history and the final optimizer state (so a later
run can be spawned from a checkpoint with its momentum). Given the same initial model,
data and config the final parameters are bit-identical; the data order (and dropout)
depend only on ``config.data_seed``.

The model is run on each batch through a :class:`~basinscope.engine.task.Task` (how the
batch is split, how the model is called, where its prediction is, which loss): any model,
``model(x)`` or ``model(**batch)``. Data in memory is drawn in seeded permutations; a
DataLoader is streamed in its own order (:mod:`basinscope.training._data`). ``device=``
and ``dtype=`` say where and in which precision (mixed precision for bfloat16/float16).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from basinscope._progress import progress_bar
from basinscope.engine.batches import StreamingBatches, streams
from basinscope.engine.fit import check_model_data
from basinscope.engine.precision import autocast
from basinscope.engine.task import Task, as_task, call_model, inputs_to
from basinscope.errors import BasinscopeError
from basinscope.training._data import (
    BatchStream,
    LoaderStream,
    as_examples,
    iter_chunks,
    targets_to,
)
from basinscope.training._task import Objective, dtype_name, resolve_device, resolve_precision
from basinscope.training.config import TrainConfig
from basinscope.training.schedules import lr_at
from basinscope.training.sharpness_aware import penalty_term, sharpness_aware_gradient
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
        history: ``"step"``, ``"loss"`` (the task's loss on the minibatch of that update,
            a mean over its examples) and ``"lr"`` per update; with evaluation also
            ``"eval_step"``, ``"eval_loss"`` (the task's loss, the mean over all examples of
            ``eval_data``) and ``"eval_accuracy"``, the last only when the task says the
            targets are class labels (:meth:`~basinscope.engine.task.Task.classification`:
            cross-entropy, the model's own loss, a user loss with integer targets) and
            the prediction has a class axis for them; otherwise the key is absent.
        config: the configuration used.
        optimizer_state: the optimizer's final ``state_dict()`` (a deep copy).
        optimizer_states: ``{step: state_dict()}`` at the checkpoint steps, so a run can be
            spawned from any checkpoint with its momentum (:func:`spawn`).
        data_order: ``"seeded permutation"`` (data in memory, ordered by
            ``config.data_seed``) or ``"loader"`` (a streamed DataLoader, in its own order).
        device: where the model was trained (``"cpu"``, ``"cuda:0"``, ...).
        dtype: the precision: ``"float32"``/``"float64"`` (the model trained in that
            dtype) or ``"bfloat16"``/``"float16"`` (mixed precision: float32 weights,
            forward passes under autocast).
        task: the task's :meth:`~basinscope.engine.task.Task.describe` (the loss and how
            batches were read).
    """

    model: nn.Module
    checkpoints: dict[int, dict[str, Tensor]]
    buffers: dict[int, dict[str, Tensor]]
    history: dict[str, list[float]]
    config: TrainConfig
    optimizer_state: dict[str, Any]
    optimizer_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    data_order: str = "seeded permutation"
    device: str = "cpu"
    dtype: str = "float32"
    task: dict[str, Any] | None = None


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


class _EvalSet:
    """The evaluation data: in memory on the device (read in chunks), or a loader streamed
    on every evaluation; the model is checked on its first batch before the first one."""

    def __init__(self, data: Any, task: Task, dev: torch.device, dtype: Any) -> None:
        self.streamed = streams(data)
        self.checked = False
        if self.streamed:
            self.batches: Any = StreamingBatches(data, device=dev, dtype=dtype, task=task)
        else:
            x, y = as_examples(data, "eval_data", task)
            self.x, self.y = inputs_to(x, dev, dtype), targets_to(y, dev, dtype)

    def __iter__(self) -> Any:
        if self.streamed:
            for x, y in self.batches:
                yield x, targets_to(y, None, self.batches.dtype)
        else:
            yield from iter_chunks(self.x, self.y, _EVAL_CHUNK)


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    data: _EvalSet,
    objective: Objective,
    check: Callable[[list], Any],
    dev: torch.device,
    amp: torch.dtype | None,
) -> tuple[float, float | None]:
    """The mean loss over the whole set (batch means weighted by batch size) and the
    accuracy (None when the targets are not class labels of the prediction)."""
    model.eval()
    total, correct, n = 0.0, 0.0, 0
    classify: bool | None = None
    for xb, yb in data:
        if not data.checked:
            check([(xb, yb)])
            data.checked = True
            model.eval()
        with autocast(dev, amp):
            out = call_model(model, xb)
            loss = objective(out, yb)
        k = int(yb.shape[0])
        total += float(loss) * k
        if classify is None:
            classify = objective.task.classification(yb)
        if classify:
            c = objective.correct(out, yb)
            if c is None:
                classify = False
            else:
                correct += c
        n += k
    if n == 0:
        raise BasinscopeError("eval_data gave no examples: the DataLoader (or iterable) is empty.")
    return total / n, (correct / n if classify else None)


def _penalty_inputs(
    config: TrainConfig,
    named: Mapping[str, nn.Parameter],
    anchor: Mapping[str, Tensor] | None,
    importance: Mapping[str, Tensor] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """The anchor (default: the starting weights) and importance of ``config.penalty``."""
    if config.penalty == "none":
        return {}, None
    for what, d in (("anchor", anchor), ("importance", importance)):
        if d is None:
            continue
        missing = [k for k in named if k not in d]
        bad = [k for k in named if k in d and tuple(d[k].shape) != tuple(named[k].shape)]
        if missing or bad:
            raise BasinscopeError(
                f"the {config.penalty} penalty's {what} does not fit the trained parameters: "
                f"missing {missing[:5]}, wrong shapes {bad[:5]}; pass a parameter dict of "
                "this model (e.g. get_params(source_model))"
            )
    if config.penalty == "ewc" and importance is None:
        raise BasinscopeError(
            "penalty='ewc' weights (w - w0)^2 by a per-parameter importance: pass "
            "importance= (e.g. basinscope.curvature.diagonal_fisher(source_model, source_data))"
        )
    a = {k: (anchor[k] if anchor is not None else p).detach().clone() for k, p in named.items()}
    imp = {k: importance[k].detach().clone() for k in named} if importance is not None else None
    return a, imp


def _masked_entries(
    named: Mapping[str, nn.Parameter], masks: Mapping[str, Tensor] | None
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per masked trained parameter: its mask on the device and its starting values."""
    if not masks:
        return {}
    unknown = sorted(set(masks) - set(named))
    if unknown:
        raise BasinscopeError(
            f"masks name parameters that are not trained: {unknown[:5]}; mask only parameters "
            "the config trains (see frozen/trainable)"
        )
    out = {}
    for k, m in masks.items():
        p = named[k]
        if tuple(m.shape) != tuple(p.shape) or m.dtype != torch.bool:
            raise BasinscopeError(
                f"the mask of {k} must be a bool tensor of shape {tuple(p.shape)}, got "
                f"{str(m.dtype).replace('torch.', '')} {tuple(m.shape)}"
            )
        out[k] = (m.to(p.device), p.detach().clone())
    return out


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
    task: Task | str | None = None,
    dtype: str | torch.dtype | None = None,
    anchor: Mapping[str, Tensor] | None = None,
    importance: Mapping[str, Tensor] | None = None,
    masks: Mapping[str, Tensor] | None = None,
) -> TrainResult:
    """Train a deep copy of ``model`` on ``data``; the caller's model is never touched.

    Args:
        model: the initial model (left unchanged, buffers and modes included).
        data: data in memory, or a loader to stream.

            **In memory**: a pair of tensors ``(x, y)``, an object with a
            ``batches(batch_size, shuffle=, seed=)`` method or tensor attributes ``x``/``y``
            (``TensorData``), a ``torch.utils.data.Dataset`` of ``(x, y)`` or dict items, or
            a dict of equally long tensors (``input_ids``, ``attention_mask``, ``labels``;
            split by the task into the model's inputs and the targets). It is read into
            memory once, on the device; floating inputs are cast to the model's dtype
            (integer token ids stay). Minibatches all have ``min(config.batch_size,
            len(data))`` examples, cut from consecutive seeded epoch permutations of
            ``config.data_seed`` (a minibatch may span two epochs; every tensor of a dict
            is indexed by the same permutation): ``data_order="seeded permutation"``.

            **Streamed**: a ``torch.utils.data.DataLoader`` (or any re-iterable of
            batches that is not a list: ``(x, y)`` tuples or dicts) is read batch by batch,
            epoch after epoch, and never gathered in memory; only the current batch is on
            the device. The batches and their order are the loader's own
            (``data_order="loader"``; a shuffling loader without its own generator draws
            from the global RNG, which ``train`` seeds from ``config.data_seed``, so runs
            repeat). ``config.batch_size`` does not apply (a warning says so when it
            differs from the loader's ``batch_size``); a ragged last batch is a step of
            its own. ``config.steps`` counts optimizer steps across epochs as for data in
            memory.
        config: the :class:`TrainConfig` (default ``TrainConfig()``).
        eval_data: data in the same forms (a loader is streamed at every evaluation),
            evaluated every ``config.eval_every`` steps (and at step 0 and the final step)
            in eval mode: the task's loss, and the accuracy when the targets are class
            labels (see :class:`TrainResult`).
        loss_fn: ``loss_fn(prediction, targets)``, a batch mean (a scalar) or one value
            per example; the same as ``task=Task(loss=loss_fn)`` (give one of the two).
        device: where to train: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (default:
            the model's device); a device this machine lacks is refused.
        callbacks: ``cb(step, model, info)`` called after each update (``step`` from 1);
            ``info`` holds ``"loss"``, ``"lr"``, ``"epoch"`` (fractional passes over the
            data) and ``"optimizer"``. The train/eval modes are re-applied after the
            callbacks, so a callback may evaluate the model.
        optimizer_state: an optimizer ``state_dict()`` (e.g. ``TrainResult.optimizer_state``)
            whose per-parameter state (momentum buffers, Adam moments) is loaded into the
            fresh optimizer; the hyperparameters still come from ``config``.
        progress: show a tqdm progress bar.
        task: how the model is run on a batch and which loss is minimised
            (:class:`~basinscope.engine.task.Task`, or a ``module:attr`` name of one;
            default ``Task()``: ``(x, y)`` batches, ``model(x)``, cross-entropy). The
            training loss is the task's loss, the mean over the minibatch's examples
            (the model's own ``.loss`` for ``loss="model"``).
        dtype: the precision: ``None`` keeps the model's dtype; ``"float32"`` or
            ``"float64"`` trains the model in that dtype; ``"bfloat16"`` or ``"float16"`` is
            mixed precision: float32 weights, the forward pass and the loss under
            ``torch.autocast``, and for float16 on CUDA a ``torch.amp.GradScaler`` (an
            update whose gradients overflow is skipped and the scale lowered).
        anchor: the weights :math:`w^0` of ``config.penalty`` (a parameter dict with at
            least the trained parameters; default: the starting weights).
        importance: the per-parameter weights :math:`F` of the ``"ewc"`` penalty (a
            parameter dict, e.g. :func:`~basinscope.curvature.diagonal_fisher` of the source
            task); required by it.
        masks: boolean tensors by parameter name: only the True entries of a trained
            parameter change (the others are restored after every update, so they keep their
            values exactly, momentum and weight decay notwithstanding); a parameter without
            a mask is trained whole.
        callbacks with a ``start(model)`` method have it called before the first update.

    Returns:
        A :class:`TrainResult`.

    Raises:
        BasinscopeError: bad data, patterns that match nothing, an incompatible
            ``optimizer_state``, both ``task`` and ``loss_fn``, an absent device or a loss
            that becomes NaN/inf.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise BasinscopeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    if task is not None and loss_fn is not None:
        raise BasinscopeError(
            "train() got both task= and loss_fn=: give one. loss_fn=f is the same as "
            "task=Task(loss=f); to combine a loss with a batch layout, use "
            "Task(loss=f, targets=..., output=...)."
        )
    task = Task(loss=loss_fn) if loss_fn is not None else as_task(task)
    objective = Objective(task)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    dev = resolve_device(device)
    storage, amp = resolve_precision(dtype)

    net = copy.deepcopy(model).to(dev)
    if storage is not None:
        net.to(dtype=storage)
    modes = [m.training for m in net.modules()]
    grad_flags = {n: p.requires_grad for n, p in net.named_parameters()}
    chosen = set(select_trainable(net, config))
    params = []
    for n, p in net.named_parameters():
        p.requires_grad_(n in chosen)
        if n in chosen:
            params.append(p)

    named_trained = {n: p for n, p in net.named_parameters() if n in chosen}
    anchor_d, importance_d = _penalty_inputs(config, named_trained, anchor, importance)
    kept = _masked_entries(named_trained, masks)
    if config.sharpness_aware != "none" and amp == torch.float16 and dev.type == "cuda":
        raise BasinscopeError(
            f"sharpness_aware={config.sharpness_aware!r} does not combine with float16 loss "
            "scaling; train in bfloat16, float32 or float64"
        )

    float_dtype = _float_dtype(net)
    precision = dtype_name(dtype) if dtype is not None else dtype_name(float_dtype or "float32")

    def check(batches: list, what: str) -> None:
        # one forward pass before the first step: inputs, logits and labels fit the model
        check_model_data(net, batches, what=what, task=task)

    streamed = streams(data)
    if streamed:
        stream: BatchStream | LoaderStream = LoaderStream(
            StreamingBatches(data, device=dev, dtype=float_dtype, task=task), "data"
        )
        loader_batch = getattr(data, "batch_size", None)
        if isinstance(loader_batch, int) and loader_batch != config.batch_size:
            warnings.warn(
                f"config.batch_size={config.batch_size} does not apply to a DataLoader: its "
                f"batches of {loader_batch} are used as they come (set the loader's batch_size "
                "to choose it, or pass the data in memory for seeded minibatches of "
                "config.batch_size)",
                UserWarning,
                stacklevel=2,
            )
    else:
        x, y = as_examples(data, "data", task)
        x, y = inputs_to(x, dev, float_dtype), targets_to(y, dev, float_dtype)
        check([(x, y)], "the training data")
        stream = BatchStream(x, y, config.batch_size, config.data_seed)
    do_eval = config.eval_every > 0 and eval_data is not None
    evals = _EvalSet(eval_data, task, dev, float_dtype) if do_eval else None
    if evals is not None and not evals.streamed:
        check([(evals.x, evals.y)], "eval_data")
        evals.checked = True

    opt = _make_optimizer(params, config)
    if optimizer_state is not None:
        _load_optimizer_state(opt, optimizer_state, config)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 and dev.type == "cuda" else None

    ckpt_steps = set(config.checkpoint_steps)
    checkpoints: dict[int, dict[str, Tensor]] = {}
    buffers: dict[int, dict[str, Tensor]] = {}
    optimizer_states: dict[int, dict[str, Any]] = {}
    history: dict[str, list[float]] = {"step": [], "loss": [], "lr": []}
    if do_eval:
        history.update({"eval_step": [], "eval_loss": []})

    def record(step: int) -> None:
        if step in ckpt_steps:
            checkpoints[step] = _cpu_clone(dict(net.named_parameters()))
            buffers[step] = _cpu_clone(dict(net.named_buffers()))
            optimizer_states[step] = copy.deepcopy(opt.state_dict())
        if evals is not None and (step % config.eval_every == 0 or step == config.steps):
            loss, acc = _evaluate(net, evals, objective, lambda b: check(b, "eval_data"), dev, amp)
            history["eval_step"].append(float(step))
            history["eval_loss"].append(loss)
            if acc is not None:
                history.setdefault("eval_accuracy", []).append(acc)
            _set_mode(net, config.bn_mode)

    fork_devices = [] if dev.type == "cpu" else [dev.index if dev.index is not None else 0]
    fork_type = "cuda" if dev.type == "cpu" else dev.type
    with torch.random.fork_rng(devices=fork_devices, device_type=fork_type):
        torch.manual_seed((config.data_seed * 1_000_003 + 99_991) % (2**63 - 1))
        if isinstance(stream, LoaderStream):  # read (and check) the loader's first batch
            check([stream.first()], "the training data")
        _set_mode(net, config.bn_mode)
        for cb in callbacks:
            if hasattr(cb, "start"):
                cb.start(net)
        record(0)
        steps = range(1, config.steps + 1)
        for step in progress_bar(
            steps, disable=not progress, desc="train", unit="step", leave=True
        ):
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
            if streamed:
                yb = targets_to(yb, None, float_dtype)
            opt.zero_grad(set_to_none=True)

            def minibatch_loss(xb=xb, yb=yb) -> Tensor:
                with autocast(dev, amp):
                    value = objective(call_model(net, xb), yb)
                pen = penalty_term(
                    config.penalty, named_trained, anchor_d, importance_d, config.penalty_strength
                )
                return value if pen is None else value + pen

            with autocast(dev, amp):
                loss = objective(call_model(net, xb), yb)
            pen = penalty_term(
                config.penalty, named_trained, anchor_d, importance_d, config.penalty_strength
            )
            total = loss if pen is None else loss + pen
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            if config.sharpness_aware != "none":
                sharpness_aware_gradient(
                    config.sharpness_aware,
                    net,
                    params,
                    minibatch_loss,
                    rho=config.sam_rho,
                    eta=config.asam_eta,
                    lam=config.cflat_lambda,
                )
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise BasinscopeError(
                    f"the training loss became {loss_value} at step {step} (lr={lr:g}); "
                    "lower the learning rate, add warmup or set grad_clip."
                )
            if config.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                optimizer_step(opt, step, lr, config.weight_decay)
            if kept:
                with torch.no_grad():
                    for name, (mask, values) in kept.items():
                        named_trained[name].copy_(torch.where(mask, named_trained[name], values))
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
        data_order=stream.data_order,
        device=str(dev),
        dtype=precision,
        task=task.describe(),
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
