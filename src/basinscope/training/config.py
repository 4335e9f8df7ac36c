"""The training configuration: one frozen, JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from basinscope._checks import MAX_STEPS, at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.training.schedules import check_schedule

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
BN_MODES: tuple[str, ...] = ("train", "eval")
SHARPNESS_AWARE: tuple[str, ...] = ("none", "sam", "asam", "cflat")
PENALTIES: tuple[str, ...] = ("none", "l2sp", "ewc")
# fields added after the first studies: left out of to_dict() at their defaults, so the
# digests of stored stages (a hash of the config's dict) stay what they were
_LATER_FIELDS = {
    "sharpness_aware": "none",
    "sam_rho": 0.05,
    "asam_eta": 0.01,
    "cflat_lambda": 0.2,
    "penalty": "none",
    "penalty_strength": 0.0,
}

__all__ = ["BN_MODES", "OPTIMIZERS", "PENALTIES", "SHARPNESS_AWARE", "TrainConfig"]

_TUPLE_FIELDS = ("betas", "milestones", "checkpoint_steps", "frozen", "trainable")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, schedule, data order, what to record and what to freeze.

    Attributes:
        steps: number of optimizer updates.
        batch_size: minibatch size; a value ``>= len(data)`` means full-batch training. It
            applies to data in memory; a streamed DataLoader gives its own batches.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"`` (decoupled weight decay).
        lr: peak learning rate (see :mod:`basinscope.training.schedules`).
        momentum: SGD momentum (ignored by Adam).
        nesterov: Nesterov momentum (SGD only, needs ``momentum > 0``).
        weight_decay: L2 penalty coefficient (decoupled for ``"adamw"``).
        betas: Adam's ``(beta1, beta2)``.
        schedule: ``"constant"``, ``"step"``, ``"cosine"``, ``"linear"`` or ``"cyclic"``.
        warmup_steps, milestones, gamma, min_lr, cycle_steps: schedule arguments, see
            :func:`basinscope.training.schedules.lr_at`.
        data_seed: the only source of randomness of a run: it fixes the minibatch order of
            data in memory and seeds the global RNG inside :func:`~basinscope.training.train`
            (dropout, and the order of a shuffling DataLoader without its own generator).
        checkpoint_steps: steps at which the parameters and buffers are recorded: 0 is the
            initial model, ``k`` the model after the ``k``-th update, ``steps`` the final one.
        frozen: ``fnmatch`` patterns on parameter names (``"conv*"``, ``"features.*"``);
            matching parameters are not trained and stay bit-identical.
        trainable: the opposite: only parameters matching these patterns are trained.
            At most one of ``frozen`` and ``trainable`` may be set.
        eval_every: evaluate on ``eval_data`` every this many steps, at step 0 and at the
            last step (0: never).
        grad_clip: clip the global gradient norm of the trained parameters to this value.
        bn_mode: ``"train"`` (BatchNorm uses and updates batch statistics, as usual) or
            ``"eval"`` (BatchNorm keeps its running statistics frozen; useful for linear
            probing). Other layers (dropout) are in training mode either way.
        sharpness_aware: ``"none"``, ``"sam"`` (Foret et al. 2021: the gradient at
            :math:`w + \rho g/\\lVert g\rVert`), ``"asam"`` (Kwon et al. 2021: the
            perturbation :math:`\rho T_w^2 g / \\lVert T_w g\rVert`,
            :math:`T_w = |w| + \\eta`) or ``"cflat"`` (Bian et al. 2024: SAM's gradient plus
            ``cflat_lambda`` times the gradient of the first-order flatness
            :math:`\rho \\max_{\\lVert\\epsilon\rVert \\le \rho}
            \\lVert\nabla L(w + \\epsilon)\rVert`, as GAM: Zhang et al. 2023). The
            optimizer then steps with that gradient from :math:`w`. BatchNorm statistics are
            updated by the first (unperturbed) forward pass only, as the SAM authors do.
        sam_rho, asam_eta, cflat_lambda: :math:`\rho`, :math:`\\eta` and :math:`\\lambda`.
        penalty: ``"none"``, ``"l2sp"`` (Li et al. 2018: :math:`\frac{\alpha}{2}\\lVert w -
            w^0\rVert^2` toward the anchor, by default the starting weights) or ``"ewc"``
            (Kirkpatrick et al. 2017: :math:`\frac{\alpha}{2}\\sum_j F_j (w_j - w^0_j)^2`
            with the ``importance`` passed to :func:`~basinscope.training.train`, e.g. the
            source loss's diagonal Fisher), added to every minibatch's loss, over the
            trained parameters.
        penalty_strength: :math:`\alpha`.
    """

    steps: int = 500
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    cycle_steps: int | None = None
    data_seed: int = 0
    checkpoint_steps: tuple[int, ...] = ()
    frozen: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()
    eval_every: int = 0
    grad_clip: float | None = None
    bn_mode: str = "train"
    sharpness_aware: str = "none"
    sam_rho: float = 0.05
    asam_eta: float = 0.01
    cflat_lambda: float = 0.2
    penalty: str = "none"
    penalty_strength: float = 0.0

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                raise BasinscopeError(
                    f"TrainConfig.{name} must be a sequence, got the string {value!r}; "
                    f"write ({value!r},) for a single entry."
                )
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        if self.steps < 1:
            raise BasinscopeError(f"TrainConfig.steps must be >= 1, got {self.steps}.")
        at_least("TrainConfig.steps", self.steps, 1, high=MAX_STEPS)
        if self.batch_size < 1:
            raise BasinscopeError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}.")
        at_least("TrainConfig.batch_size", self.batch_size, 1)
        if not self.lr > 0:
            raise BasinscopeError(f"TrainConfig.lr must be > 0, got {self.lr}.")
        finite_float(
            "TrainConfig.lr", self.lr, fix="a learning rate is a finite number > 0, e.g. 0.05"
        )
        check_seed("TrainConfig.data_seed", self.data_seed)
        at_least("TrainConfig.warmup_steps", self.warmup_steps, 0, high=MAX_STEPS)
        if self.optimizer not in OPTIMIZERS:
            raise BasinscopeError(
                f"unknown optimizer {self.optimizer!r}; valid optimizers are "
                f"{', '.join(repr(o) for o in OPTIMIZERS)}."
            )
        if not 0 <= self.momentum < 1:
            raise BasinscopeError(f"TrainConfig.momentum must lie in [0, 1), got {self.momentum}.")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise BasinscopeError(
                "nesterov=True needs optimizer='sgd' and momentum > 0, got "
                f"optimizer={self.optimizer!r}, momentum={self.momentum}."
            )
        if self.weight_decay < 0:
            raise BasinscopeError(
                f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}."
            )
        finite_float("TrainConfig.weight_decay", self.weight_decay, low=0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise BasinscopeError(
                f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}."
            )
        check_schedule(
            self.schedule,
            total_steps=self.steps,
            base_lr=self.lr,
            warmup_steps=self.warmup_steps,
            milestones=self.milestones,
            gamma=self.gamma,
            min_lr=self.min_lr,
            cycle_steps=self.cycle_steps,
        )
        bad = [s for s in self.checkpoint_steps if not 0 <= s <= self.steps]
        if bad:
            raise BasinscopeError(
                f"checkpoint_steps must lie in [0, steps] = [0, {self.steps}], got {bad} "
                "(0 is the initial model, steps the final one)."
            )
        if self.frozen and self.trainable:
            raise BasinscopeError(
                f"set at most one of TrainConfig.frozen and TrainConfig.trainable, got "
                f"frozen={self.frozen} and trainable={self.trainable}."
            )
        if self.eval_every < 0:
            raise BasinscopeError(f"TrainConfig.eval_every must be >= 0, got {self.eval_every}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise BasinscopeError(
                f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}."
            )
        if self.grad_clip is not None:
            positive_float("TrainConfig.grad_clip", self.grad_clip)
        if self.bn_mode not in BN_MODES:
            raise BasinscopeError(
                f"unknown bn_mode {self.bn_mode!r}; valid modes are "
                f"{', '.join(repr(m) for m in BN_MODES)}."
            )
        if self.sharpness_aware not in SHARPNESS_AWARE:
            raise BasinscopeError(
                f"unknown sharpness_aware {self.sharpness_aware!r}; valid values are "
                f"{', '.join(repr(m) for m in SHARPNESS_AWARE)}."
            )
        if self.penalty not in PENALTIES:
            raise BasinscopeError(
                f"unknown penalty {self.penalty!r}; valid penalties are "
                f"{', '.join(repr(m) for m in PENALTIES)}."
            )
        positive_float("TrainConfig.sam_rho", self.sam_rho)
        finite_float("TrainConfig.asam_eta", self.asam_eta, low=0)
        finite_float("TrainConfig.cflat_lambda", self.cflat_lambda, low=0)
        finite_float("TrainConfig.penalty_strength", self.penalty_strength, low=0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _LATER_FIELDS and value == _LATER_FIELDS[f.name]:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a :class:`BasinscopeError`."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise BasinscopeError(
                f"unknown TrainConfig keys {unknown}; valid keys are {', '.join(names)}."
            )
        return cls(**d)
