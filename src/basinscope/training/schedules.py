"""Learning-rate schedules as pure functions of the step.

The trainer never uses ``torch.optim.lr_scheduler``: it asks :func:`lr_at` for the
learning rate of every update and writes it into the optimizer's parameter groups. This
keeps a schedule a plain, testable formula and avoids the scheduler-ordering warnings.

Conventions (``step`` is the **0-based index of the update**, so the trainer's update
number ``k = 1, 2, ..., total_steps`` uses ``lr_at(k - 1, ...)``):

* **warmup** — for ``step < warmup_steps`` the rate rises linearly,
  ``lr = base_lr * (step + 1) / warmup_steps``, reaching ``base_lr`` on the last warmup
  update. The main schedule then starts at ``base_lr``; below, ``s = step - warmup_steps``
  and ``D = max(total_steps - warmup_steps, 1)`` are the step and length of the main part.
* ``"constant"`` — ``lr = base_lr``.
* ``"step"`` — ``lr = base_lr * gamma ** #{m in milestones : step >= m}``; milestones are
  absolute update indices (warmup included), so with ``milestones=(100,)`` the first 100
  updates use ``base_lr`` and the rest ``gamma * base_lr`` (as ``MultiStepLR`` stepped
  once per update). ``min_lr`` is not used.
* ``"cosine"`` — ``lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
  ``t = min(s / D, 1)``; half-way through the main part ``lr = (base_lr + min_lr) / 2``.
* ``"linear"`` — ``lr = base_lr + (min_lr - base_lr) * t``, same ``t``.
* ``"cyclic"`` — the fast-geometric-ensembling schedule of Garipov et al. (2018), eq. (2):
  with cycle length ``c = cycle_steps`` and ``t = ((s mod c) + 1) / c`` in ``(0, 1]``,

  ``lr = (1 - 2t) * base_lr + 2t * min_lr``          for ``t <= 1/2``,
  ``lr = (2 - 2t) * min_lr + (2t - 1) * base_lr``    for ``t > 1/2``.

  The rate falls linearly from ``base_lr`` to ``min_lr`` over the first half of a cycle
  and climbs back over the second half; it equals ``min_lr`` on the update with
  ``s mod c == c/2 - 1`` (the trainer's step ``k`` with ``(k - warmup_steps) mod c ==
  c/2`` for even ``c``: where FGE collects a model) and ``base_lr`` on the last update of
  each cycle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from basinscope._checks import finite_float
from basinscope.errors import BasinscopeError

SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine", "linear", "cyclic")

__all__ = ["SCHEDULES", "check_schedule", "lr_at"]


def check_schedule(
    schedule: str,
    *,
    total_steps: int,
    base_lr: float,
    warmup_steps: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    cycle_steps: int | None = None,
) -> None:
    """Raise a :class:`BasinscopeError` if the schedule arguments make no sense.

    Called by :func:`lr_at` and by ``TrainConfig`` so that a bad configuration fails when
    it is built, not in the middle of training.
    """
    if schedule not in SCHEDULES:
        raise BasinscopeError(
            f"unknown learning-rate schedule {schedule!r}; valid schedules are "
            f"{', '.join(repr(s) for s in SCHEDULES)}."
        )
    if total_steps < 1:
        raise BasinscopeError(f"total_steps must be >= 1, got {total_steps}.")
    if not base_lr > 0:
        raise BasinscopeError(f"the learning rate must be > 0, got {base_lr}.")
    if warmup_steps < 0:
        raise BasinscopeError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    if not 0 <= min_lr <= base_lr:
        raise BasinscopeError(
            f"min_lr must lie in [0, lr] = [0, {base_lr}], got {min_lr}; it is the rate the "
            "cosine, linear and cyclic schedules decay to."
        )
    if schedule == "step":
        if not gamma > 0:
            raise BasinscopeError(f"gamma must be > 0 for the 'step' schedule, got {gamma}.")
        finite_float("gamma", gamma, why=" (the factor of the 'step' schedule at each milestone)")
        bad = [m for m in milestones if m < 0]
        if bad:
            raise BasinscopeError(f"milestones must be update indices >= 0, got {bad}.")
    if schedule == "cyclic" and (cycle_steps is None or cycle_steps < 2):
        raise BasinscopeError(
            f"the 'cyclic' schedule needs cycle_steps >= 2 (updates per cycle), got "
            f"{cycle_steps}; e.g. cycle_steps=100 for a 50-update descent and ascent."
        )


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: str,
    *,
    warmup_steps: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    cycle_steps: int | None = None,
) -> float:
    """Learning rate of the update with 0-based index ``step`` (see the module docstring).

    Args:
        step: 0-based update index (``>= 0``); steps past ``total_steps`` keep the final
            value of the cosine and linear schedules.
        total_steps: number of updates of the whole run, warmup included.
        base_lr: peak learning rate.
        schedule: one of :data:`SCHEDULES`.
        warmup_steps: length of the linear warmup (0: none).
        milestones: ``"step"`` only: update indices at which the rate is multiplied by
            ``gamma``.
        gamma: ``"step"`` only: the decay factor.
        min_lr: the final rate of ``"cosine"``/``"linear"``, the low point of ``"cyclic"``.
        cycle_steps: ``"cyclic"`` only: updates per cycle.

    Returns:
        The learning rate, a Python float.
    """
    check_schedule(
        schedule,
        total_steps=total_steps,
        base_lr=base_lr,
        warmup_steps=warmup_steps,
        milestones=milestones,
        gamma=gamma,
        min_lr=min_lr,
        cycle_steps=cycle_steps,
    )
    if step < 0:
        raise BasinscopeError(f"step must be >= 0 (a 0-based update index), got {step}.")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    s = step - warmup_steps
    length = max(total_steps - warmup_steps, 1)
    if schedule == "constant":
        return float(base_lr)
    if schedule == "step":
        return base_lr * gamma ** sum(1 for m in milestones if step >= m)
    if schedule == "cosine":
        t = min(s / length, 1.0)
        return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t)) / 2.0
    if schedule == "linear":
        t = min(s / length, 1.0)
        return base_lr + (min_lr - base_lr) * t
    # cyclic (check_schedule guarantees cycle_steps >= 2)
    assert cycle_steps is not None
    t = ((s % cycle_steps) + 1) / cycle_steps
    if t <= 0.5:
        return (1.0 - 2.0 * t) * base_lr + 2.0 * t * min_lr
    return (2.0 - 2.0 * t) * min_lr + (2.0 * t - 1.0) * base_lr
