"""Interval bound propagation (IBP): certified bounds, the IBP loss and IBP training.

For an input :math:`x` and the :math:`\\ell_\\infty` ball :math:`B_\\epsilon(x) = \\{x' :
\\lVert x' - x\\rVert_\\infty \\le \\epsilon\\}` (intersected with the data range
:math:`[a, b]` when one is given), IBP (Gowal et al. 2018, "On the effectiveness of
interval bound propagation for training verifiably robust models") carries a box
:math:`[l, u]` through the network layer by layer:

- affine layers (``nn.Linear``, ``nn.Conv2d`` with zero padding): with centre
  :math:`m = (u + l)/2` and radius :math:`r = (u - l)/2`, the image box has centre
  :math:`Wm + b` and radius :math:`|W|r` (for a single affine layer this box is the exact
  range of each output: each coordinate attains its bound at a corner of the input box);
- monotone elementwise layers (``nn.ReLU``) and reshapes (``nn.Flatten``): applied to
  :math:`l` and :math:`u` separately;
- ``nn.Sequential`` of these (nested), and ``nn.Identity``.

Any other module is refused with its type named (a custom ``forward`` may do anything
between its children). The final box bounds every logit over the ball.

The **IBP loss** is the cross-entropy of the worst-case logits
:math:`\\hat z_j = u_j` for :math:`j \\ne y` and :math:`\\hat z_y = l_y` (Gowal et al.'s
bound on the worst-case cross-entropy, without their last-layer elision). An example is
**certified** at :math:`\\epsilon` when :math:`l_y > \\max_{j \\ne y} u_j`: no input in
the ball changes the prediction. **Certified accuracy** is the fraction of examples that
are certified (certified implies correctly classified at every point of the ball).

:func:`ibp_train` is the training of Gowal et al. on a small scale: Adam, minibatches in a
seeded order, and the loss :math:`\\kappa L_{\\text{nat}} + (1 - \\kappa) L_{\\text{IBP}}(\\epsilon)`
where, after ``warmup`` natural steps, :math:`\\epsilon` ramps linearly from 0 to
``eps`` and :math:`\\kappa` from 1 to ``kappa`` over ``ramp`` steps. With ``eps = 0`` it is
standard training (the same steps, batches and seeds). It is a loop of its own because the
library trainer's loss sees only ``(prediction, targets)`` and the IBP loss needs the model
and the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from basinscope.errors import BasinscopeError
from basinscope.result import Result
from basinscope.spec import Spec, option, takes_spec

__all__ = [
    "IBP_MODULES",
    "CertifiedAccuracy",
    "CertifiedSpec",
    "certified",
    "certified_accuracy",
    "ibp_loss",
    "ibp_schedule",
    "ibp_train",
    "interval_bounds",
    "worst_case_logits",
]

IBP_MODULES = ("Sequential", "Linear", "Conv2d", "ReLU", "Flatten", "Identity")


def _refuse(m: nn.Module, why: str = "") -> BasinscopeError:
    return BasinscopeError(
        f"interval bound propagation cannot pass through a {type(m).__name__} module{why}; it "
        f"handles nn.Sequential of {', '.join(IBP_MODULES[1:])} only. Rebuild the model as an "
        "nn.Sequential of these layers (e.g. no BatchNorm, pooling or custom forward)"
    )


def _propagate(m: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    if type(m) is nn.Sequential:
        for child in m:
            lo, hi = _propagate(child, lo, hi)
        return lo, hi
    if isinstance(m, nn.Linear):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        mid, rad = F.linear(mid, m.weight, m.bias), F.linear(rad, m.weight.abs())
        return mid - rad, mid + rad
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise _refuse(m, f" with padding_mode={m.padding_mode!r}")
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        conv = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
        mid = F.conv2d(mid, m.weight, m.bias, **conv)
        rad = F.conv2d(rad, m.weight.abs(), None, **conv)
        return mid - rad, mid + rad
    if type(m) in (nn.ReLU, nn.Flatten, nn.Identity):
        return m(lo), m(hi)
    raise _refuse(m)


def interval_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    *,
    data_range: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of every output of ``model`` over the :math:`\\ell_\\infty`
    ball of radius ``eps`` around each row of ``x``, clipped to ``data_range`` (lowest,
    highest input value) when given. See the module docstring for the rules and the
    modules allowed; the model's parameters are used as they are (train or eval mode make
    no difference for these layers), gradients flow through the bounds."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise BasinscopeError(f"eps must be a finite number >= 0, got {eps!r}")
    lo, hi = x - eps, x + eps
    if data_range is not None:
        a, b = data_range
        if not a < b:
            raise BasinscopeError(f"data_range must be (lowest, highest), got {data_range!r}")
        lo, hi = lo.clamp(a, b), hi.clamp(a, b)
    return _propagate(model, lo, hi)


def worst_case_logits(lo: Tensor, hi: Tensor, y: Tensor) -> Tensor:
    """The upper bounds of the logits, with the true class's lower bound in its place."""
    mask = F.one_hot(y, lo.shape[-1]).bool()
    return torch.where(mask, lo, hi)


def ibp_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    data_range: tuple[float, float] | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of the worst-case logits over the ball (an upper bound of the largest
    cross-entropy of any input in the ball)."""
    lo, hi = interval_bounds(model, x, eps, data_range=data_range)
    return F.cross_entropy(worst_case_logits(lo, hi, y), y, reduction=reduction)


def certified(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    data_range: tuple[float, float] | None = None,
) -> Tensor:
    """Per example: is the true class's lower bound above every other class's upper bound?"""
    lo, hi = interval_bounds(model, x, eps, data_range=data_range)
    return _certified_mask(lo, hi, y)


def _certified_mask(lo: Tensor, hi: Tensor, y: Tensor) -> Tensor:
    mask = F.one_hot(y, lo.shape[-1]).bool()
    others = hi.masked_fill(mask, -math.inf).amax(dim=-1)
    return lo.gather(-1, y[:, None])[:, 0] > others


@dataclass(frozen=True)
class CertifiedSpec(Spec):
    """Certified accuracy under interval bound propagation at several radii.

    At each ε in --epsilons: the fraction of examples whose true class's IBP lower bound is
    above every other class's IBP upper bound over the L∞ ball of radius ε around the input
    (clipped to [--data-low, --data-high] unless --no-clip), and the mean IBP loss
    (cross-entropy of the worst-case logits). The model must be an nn.Sequential of Linear,
    Conv2d, ReLU and Flatten layers.
    """

    kind: ClassVar[str] = "certified_accuracy"

    epsilons: tuple[float, ...] = option((0.0, 0.01, 0.02, 0.05, 0.1), "Radii of the L∞ balls.")
    data_low: float = option(0.0, "Lowest input value (the ball is clipped to the data range).")
    data_high: float = option(1.0, "Highest input value.")
    clip: bool = option(True, "Clip the ball to [data_low, data_high].")
    batch_size: int = option(1024, "Examples per forward pass.", low=1)

    def check(self) -> None:
        if not self.epsilons or any(not (math.isfinite(e) and e >= 0) for e in self.epsilons):
            raise BasinscopeError(
                f"{self.name_of('epsilons')} must be finite radii >= 0, got {list(self.epsilons)}"
            )
        if self.clip and not self.data_low < self.data_high:
            raise BasinscopeError(
                f"{self.name_of('data_low')} must be below {self.name_of('data_high')}"
            )


@dataclass(frozen=True)
class CertifiedAccuracy(Result, kind="certified_accuracy"):
    """Certified accuracy and mean IBP loss at each radius, with the natural accuracy."""

    epsilons: tuple[float, ...]
    certified_accuracy: tuple[float, ...]
    ibp_loss: tuple[float, ...]
    natural_accuracy: float
    examples: int
    data_range: tuple[float, float] | None
    definition: str = (
        "certified: lower_y > max_{j != y} upper_j for IBP bounds over the L-inf ball of radius "
        "eps (clipped to the data range); ibp_loss: cross-entropy of the worst-case logits"
    )
    spec: CertifiedSpec | None = None

    def summary(self) -> list[str]:
        lines = [f"natural accuracy {self.natural_accuracy:.4f} on {self.examples} examples"]
        return lines + [
            f"eps {e:<8g} certified {c:.4f}  IBP loss {v:.4g}"
            for e, c, v in zip(self.epsilons, self.certified_accuracy, self.ibp_loss)
        ]


def _xy(data: Any) -> tuple[Tensor, Tensor]:
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise BasinscopeError(
        f"certified accuracy needs data with x and y tensors (TensorData) or an (x, y) pair, "
        f"got {type(data).__name__}"
    )


@takes_spec(CertifiedSpec)
@torch.no_grad()
def certified_accuracy(
    model: nn.Module,
    data: Any,
    *,
    epsilons: Sequence[float] = (0.0, 0.01, 0.02, 0.05, 0.1),
    data_low: float = 0.0,
    data_high: float = 1.0,
    clip: bool = True,
    batch_size: int = 1024,
) -> CertifiedAccuracy:
    """:class:`CertifiedSpec`'s numbers for ``model`` on ``data`` (in the model's dtype and
    device)."""
    spec = CertifiedSpec(
        epsilons=tuple(float(e) for e in epsilons),
        data_low=float(data_low),
        data_high=float(data_high),
        clip=bool(clip),
        batch_size=int(batch_size),
    )
    x, y = _xy(data)
    p = next(model.parameters())
    rng = (spec.data_low, spec.data_high) if spec.clip else None
    cert = [0] * len(spec.epsilons)
    loss = [0.0] * len(spec.epsilons)
    correct = 0
    for i in range(0, len(x), spec.batch_size):
        xb = x[i : i + spec.batch_size].to(p.device, p.dtype)
        yb = y[i : i + spec.batch_size].to(p.device)
        correct += int((model(xb).argmax(-1) == yb).sum())
        for k, e in enumerate(spec.epsilons):
            lo, hi = interval_bounds(model, xb, e, data_range=rng)
            z = worst_case_logits(lo, hi, yb)
            loss[k] += float(F.cross_entropy(z, yb, reduction="sum"))
            cert[k] += int(_certified_mask(lo, hi, yb).sum())
    n = len(x)
    return CertifiedAccuracy(
        epsilons=spec.epsilons,
        certified_accuracy=tuple(c / n for c in cert),
        ibp_loss=tuple(v / n for v in loss),
        natural_accuracy=correct / n,
        examples=n,
        data_range=rng,
        spec=spec,
    )


# -- training ----------------------------------------------------------------------------
def ibp_schedule(
    step: int, *, eps: float, kappa: float, warmup: int, ramp: int
) -> tuple[float, float]:
    """``(eps_t, kappa_t)`` at ``step`` (0-based): 0 and 1 during ``warmup`` steps, then
    linear to ``eps`` and ``kappa`` over ``ramp`` steps, then constant (Gowal et al.)."""
    t = 0.0 if step < warmup else min(1.0, (step - warmup + 1) / max(ramp, 1))
    return eps * t, 1.0 + (kappa - 1.0) * t


def ibp_train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    eps: float,
    kappa: float = 0.5,
    warmup: int = 0,
    ramp: int = 0,
    data_seed: int = 0,
    data_range: tuple[float, float] | None = None,
    record_every: int = 1,
    record_eps: float | None = None,
    checkpoint_steps: Sequence[int] = (),
    checkpoints: dict[int, dict[str, Tensor]] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place with Adam on ``kappa_t * natural + (1 - kappa_t) * IBP(eps_t)``
    (:func:`ibp_schedule`; ``eps = 0``: standard training with the same batches). Batches:
    a seeded permutation of the examples per epoch (``data_seed``), the last partial batch
    dropped. Returns the history every ``record_every`` steps: step, eps, kappa, the
    minibatch's natural loss and IBP loss (the latter at the step's eps, or, with
    ``record_eps``, at the eps the schedule would have with ``eps = record_eps``: standard
    training monitored at an IBP run's radii). With ``checkpoints`` (a dict), the parameters
    after each of ``checkpoint_steps`` updates (0: the initial ones) are stored in it, on the
    CPU, by step.
    """
    if eps < 0 or not math.isfinite(eps):
        raise BasinscopeError(f"eps must be a finite number >= 0, got {eps!r}")
    if not 0.0 <= kappa <= 1.0:
        raise BasinscopeError(f"kappa must be in [0, 1], got {kappa!r}")
    n = len(x)
    bs = min(batch_size, n)
    gen = torch.Generator().manual_seed(data_seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    hist: dict[str, list[float]] = {k: [] for k in ("step", "eps", "kappa", "natural", "ibp")}
    order, pos = torch.randperm(n, generator=gen), 0
    keep = set(checkpoint_steps) if checkpoints is not None else set()

    def save(step: int) -> None:
        if step in keep:
            checkpoints[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    for step in range(steps):
        save(step)
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + bs]
        pos += bs
        xb, yb = x[idx], y[idx]
        e, k = ibp_schedule(
            step, eps=eps, kappa=kappa if eps > 0 else 1.0, warmup=warmup, ramp=ramp
        )
        nat = F.cross_entropy(model(xb), yb)
        if e > 0 and k < 1.0:
            rob = ibp_loss(model, xb, yb, e, data_range=data_range)
            loss = k * nat + (1.0 - k) * rob
        else:
            rob, loss = None, nat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % record_every == 0 or step == steps - 1:
            if record_eps is not None:
                e = ibp_schedule(step, eps=record_eps, kappa=kappa, warmup=warmup, ramp=ramp)[0]
                rob = None
            if rob is None:
                with torch.no_grad():
                    rob = ibp_loss(model, xb, yb, e, data_range=data_range)
            hist["step"].append(step)
            hist["eps"].append(e)
            hist["kappa"].append(k)
            hist["natural"].append(float(nat.detach()))
            hist["ibp"].append(float(rob.detach()))
    save(steps)
    model.eval()
    return hist
