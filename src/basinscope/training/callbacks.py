"""Training callbacks that collect weights along a run: SWA and FGE.

Both are plain callables ``cb(step, model, info)`` for ``train(..., callbacks=[...])``
(see :func:`basinscope.training.train`): the trainer calls them after every update with
the model it is training, and they only *read* that model.

``SWA``  stochastic weight averaging (Izmailov et al. 2018, "Averaging weights leads to
         wider optima and better generalization"): the running average

         .. math:: \\bar\\theta_n = \\frac{1}{n} \\sum_{i=1}^{n} \\theta_{t_i},
                   \\qquad t_i = s, s + e, s + 2e, \\dots

         of the weights after update ``s = start_step`` and every ``e = every`` updates
         after it, followed by a re-estimation of the BatchNorm statistics of the averaged
         weights (their running statistics are not the average of the collected ones).
``FGE``  fast geometric ensembling (Garipov et al. 2018, "Loss surfaces, mode
         connectivity, and fast ensembling of DNNs"): with the trainer's ``"cyclic"``
         schedule, one snapshot (parameters and buffers) per cycle, taken after the update
         whose learning rate is the cycle's minimum.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from basinscope._checks import at_least
from basinscope.errors import BasinscopeError
from basinscope.training.config import TrainConfig

__all__ = ["FGE", "SWA", "update_bn"]


def _cpu_clone(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in d.items()}


def _load(template: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor]):
    """A deep copy of ``template`` holding ``params`` and ``buffers`` (template untouched)."""
    model = copy.deepcopy(template)
    state = model.state_dict()
    missing = [k for k in params if k not in state]
    if missing:
        raise BasinscopeError(
            f"the template has no parameters {missing[:5]}: pass a model of the architecture "
            "that was trained (e.g. the model given to train or TrainResult.model)."
        )
    with torch.no_grad():
        named = dict(model.named_parameters())
        for k, v in params.items():
            named[k].copy_(v.to(named[k].device, named[k].dtype))
        for k, b in model.named_buffers():
            if k in buffers:
                b.copy_(buffers[k].to(b.device, b.dtype))
    return model


@torch.no_grad()
def update_bn(
    model: nn.Module, bn_data: Any, *, batch_size: int = 128, task: Any = None
) -> nn.Module:
    """Re-estimate the BatchNorm running statistics of ``model`` in place.

    As :func:`torch.optim.swa_utils.update_bn`: reset the running mean and variance, set
    ``momentum=None`` (cumulative average over the batches), run ``bn_data`` through the
    model in training mode, then restore the momenta and the modes. ``bn_data`` is
    anything :func:`basinscope.engine.as_batches` reads (an ``(x, y)`` pair, a
    ``TensorData``, a dict of tensors, a loader, streamed batch by batch); ``task`` (a
    :class:`~basinscope.engine.task.Task`) says how a batch is split and the model called
    (default: ``model(x)``). Returns ``model``.
    """
    from basinscope.engine import as_batches
    from basinscope.engine.task import as_task, call_model

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else None
    task = as_task(task)
    batches = as_batches(bn_data, batch_size=batch_size, device=device, dtype=dtype, task=task)
    momenta = [m.momentum for m in bns]
    modes = [m.training for m in model.modules()]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, _ in batches:
            call_model(model, x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, was in zip(model.modules(), modes):
            m.train(was)
    return model


class SWA:
    """Running average of the weights from update ``start_step`` on, every ``every`` updates.

    Collects the model after the updates ``k >= start_step`` with
    ``(k - start_step) % every == 0`` (the trainer calls callbacks from ``k = 1``, so with
    ``start_step=0`` the first collected model is the one after update ``every``). The
    sum is kept in float64 on the CPU, so :meth:`average_params` is the arithmetic mean of
    the collected weights up to one final rounding. The training model is only read.

    Attributes:
        steps: the updates whose weights were averaged.
        n_averaged: ``len(steps)``.
        buffers: the buffers of the last collected model (CPU clones).
    """

    def __init__(self, start_step: int, every: int = 1) -> None:
        self.start_step = at_least("SWA start_step", start_step, 0)
        self.every = at_least("SWA every", every, 1, why=" (collect every this many updates)")
        self.steps: list[int] = []
        self.buffers: dict[str, Tensor] = {}
        self._sum: dict[str, Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}

    def __call__(self, step: int, model: nn.Module, info: Mapping[str, Any] | None = None) -> None:
        if step < self.start_step or (step - self.start_step) % self.every:
            return
        with torch.no_grad():
            for name, p in model.named_parameters():
                v = p.detach().to("cpu", torch.float64)
                if name in self._sum:
                    self._sum[name] += v
                else:
                    self._sum[name] = v.clone()
                    self._dtypes[name] = p.dtype
        self.buffers = _cpu_clone(dict(model.named_buffers()))
        self.steps.append(int(step))

    @property
    def n_averaged(self) -> int:
        return len(self.steps)

    def average_params(self) -> dict[str, Tensor]:
        """:math:`\\bar\\theta` keyed as ``named_parameters()`` (CPU, original dtypes)."""
        if not self.steps:
            raise BasinscopeError(
                f"SWA has averaged no weights: no update k >= start_step={self.start_step} with "
                f"(k - start_step) % every == 0 (every={self.every}) has been seen; train for "
                "more steps than start_step or lower start_step."
            )
        n = float(len(self.steps))
        return {k: (v / n).to(self._dtypes[k]) for k, v in self._sum.items()}

    def averaged_model(
        self, template: nn.Module, bn_data: Any = None, *, batch_size: int = 128, task: Any = None
    ) -> nn.Module:
        """A copy of ``template`` with the averaged weights and re-estimated BatchNorm statistics.

        ``template`` (any model of the trained architecture, e.g. ``TrainResult.model``) is
        deep-copied, never modified. Buffers start from the last collected model's; if the
        model has BatchNorm its running statistics are re-estimated from ``bn_data`` with a
        cumulative average (:func:`update_bn`, with ``task`` for batches that are not
        ``(x, y)``), which is then required.
        """
        model = _load(template, self.average_params(), self.buffers)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if bn_data is None:
                raise BasinscopeError(
                    "the model has BatchNorm, whose running statistics do not average with the "
                    "weights: pass bn_data=(x, y) (the training data) to re-estimate them, as "
                    "torch.optim.swa_utils.update_bn does."
                )
            update_bn(model, bn_data, batch_size=batch_size, task=task)
        return model


class FGE:
    """One snapshot per cycle of the ``"cyclic"`` schedule, where the learning rate is lowest.

    With cycle length ``c`` and a schedule whose cycles start after update ``start_step``
    (the trainer's ``warmup_steps``), :func:`~basinscope.training.schedules.lr_at` gives
    ``min_lr`` to the update ``k`` with ``(k - start_step) % c == c // 2`` (for even ``c``;
    for odd ``c`` the rate never reaches ``min_lr`` and two updates tie for the lowest rate:
    the first is taken). Those updates are collected:
    ``start_step + c // 2, start_step + c + c // 2, ...`` (:meth:`expected_steps`).
    Setting ``start_step`` to ``warmup_steps + j * c`` skips the first ``j`` cycles.

    Attributes:
        snapshots: a list of ``{"step", "lr", "params", "buffers"}`` (CPU clones).
    """

    def __init__(self, cycle_steps: int, start_step: int = 0) -> None:
        self.cycle_steps = at_least(
            "FGE cycle_steps", cycle_steps, 2, why=" (updates per cycle of the cyclic schedule)"
        )
        self.start_step = at_least("FGE start_step", start_step, 0)
        self.snapshots: list[dict[str, Any]] = []

    @classmethod
    def for_config(cls, config: TrainConfig, skip_cycles: int = 0) -> FGE:
        """The FGE callback matching a ``TrainConfig`` with ``schedule="cyclic"``."""
        if config.schedule != "cyclic" or config.cycle_steps is None:
            raise BasinscopeError(
                f"FGE collects at the minima of the 'cyclic' schedule, but the config's schedule "
                f"is {config.schedule!r}; use TrainConfig(schedule='cyclic', cycle_steps=..., "
                "min_lr=...)."
            )
        skip = at_least("skip_cycles", skip_cycles, 0)
        return cls(config.cycle_steps, config.warmup_steps + skip * config.cycle_steps)

    def expected_steps(self, total_steps: int) -> list[int]:
        """The updates in ``1..total_steps`` at which snapshots are taken."""
        c = self.cycle_steps
        return list(range(self.start_step + c // 2, total_steps + 1, c))

    def __call__(self, step: int, model: nn.Module, info: Mapping[str, Any] | None = None) -> None:
        if step <= self.start_step or (step - self.start_step) % self.cycle_steps != (
            self.cycle_steps // 2
        ):
            return
        lr = float(info["lr"]) if info is not None and "lr" in info else float("nan")
        self.snapshots.append(
            {
                "step": int(step),
                "lr": lr,
                "params": _cpu_clone(dict(model.named_parameters())),
                "buffers": _cpu_clone(dict(model.named_buffers())),
            }
        )

    @property
    def steps(self) -> list[int]:
        return [s["step"] for s in self.snapshots]

    def models(self, template: nn.Module) -> list[nn.Module]:
        """One copy of ``template`` per snapshot, holding its parameters and buffers."""
        if not self.snapshots:
            raise BasinscopeError(
                "FGE has no snapshots: train for at least cycle_steps // 2 updates after "
                f"start_step={self.start_step} (cycle_steps={self.cycle_steps})."
            )
        return [_load(template, s["params"], s["buffers"]) for s in self.snapshots]
