"""Fine-tuning that stays in the source basin: a trust region on the source-loss barrier, and
parameter-level subnetworks chosen from local loss-surface signals.

``TrustRegion`` (a training callback) keeps the barrier of the *source* loss
:math:`f(\\alpha) = L_s(\\theta_0 + \\alpha(\\theta_t - \\theta_0))` on the segment from the
pre-trained weights :math:`\\theta_0` to the current weights :math:`\\theta_t` (on
``points`` even values of :math:`\\alpha`), by a named ``definition``
(:data:`TRUST_DEFINITIONS`):

``rise``    :math:`\\max_\\alpha f(\\alpha) - f(0)`: how far the source loss climbs above the
            pre-trained one anywhere on the path (the default: staying in the source basin),
``linear``  :math:`\\max_\\alpha f(\\alpha) - ((1-\\alpha) f(0) + \\alpha f(1))` (Entezari
            et al. 2022: a bump above the chord; 0 on a convex path),
``mean``    :math:`\\max_\\alpha f(\\alpha) - (f(0) + f(1))/2` (Frankle et al. 2020),

at most ``epsilon``: every ``every`` steps it measures :math:`B`, and when
it is above, it projects :math:`\\theta_t` back along the segment to
:math:`\\theta_0 + s(\\theta_t - \\theta_0)`, with the largest :math:`s` that bisection
(``bisect`` halvings) finds with :math:`B \\le \\epsilon` (:math:`B = 0` at :math:`s = 0`).
Every check is recorded (step, barrier, scale).

``mask_scores`` scores every parameter entry on the target data by a named signal;
``top_mask`` keeps the top ``fraction`` as the trainable subnetwork, which
:func:`~basinscope.training.train` enforces with ``masks=`` (the other entries keep their
values exactly). Signals (definitions in :data:`MASK_SIGNALS`):

``gradient``  :math:`|\\nabla_\\theta L_t|` on the target data,
``fisher``    the empirical Fisher diagonal :math:`\\frac1N\\sum_n g_n^2`,
``hessian``   :math:`|\\operatorname{diag} H|` by Hutchinson's estimator
              :math:`\\mathbb E[z \\odot Hz]` with Rademacher :math:`z` (``probes`` of them),
``probe``     the relative change :math:`|\\theta' - \\theta| / (|\\theta| + 10^{-12})` after a
              short full fine-tuning probe of ``probe_steps`` steps,
``random``    uniform scores (seeded): the control at the same trainable count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from basinscope.errors import BasinscopeError

__all__ = [
    "MASK_SIGNALS",
    "TRUST_DEFINITIONS",
    "TrustRegion",
    "barrier_of",
    "mask_scores",
    "top_mask",
]

TRUST_DEFINITIONS = {
    "rise": "max_alpha f(alpha) - f(0)",
    "linear": "max_alpha f(alpha) - ((1 - alpha) f(0) + alpha f(1))",
    "mean": "max_alpha f(alpha) - (f(0) + f(1)) / 2",
}
MASK_SIGNALS = {
    "gradient": "|grad L_target| per entry",
    "fisher": "empirical Fisher diagonal 1/N sum_n g_n^2 on the target data",
    "hessian": "|diag H| by Hutchinson, E[z * Hz] over Rademacher probes",
    "probe": "relative change |theta' - theta| / |theta| after a short full fine-tuning probe",
    "random": "uniform random scores (the control)",
}


def barrier_of(values: np.ndarray, alphas: np.ndarray, definition: str = "rise") -> float:
    """The barrier of a curve f(alpha) on [0, 1] by ``definition`` (:data:`TRUST_DEFINITIONS`)."""
    if definition == "rise":
        return float(np.max(values) - values[0])
    if definition == "mean":
        return float(np.max(values) - 0.5 * (values[0] + values[-1]))
    if definition == "linear":
        line = (1 - alphas) * values[0] + alphas * values[-1]
        return float(np.max(values - line))
    raise BasinscopeError(
        f"unknown barrier definition {definition!r}: expected one of {', '.join(TRUST_DEFINITIONS)}"
    )


class TrustRegion:
    """A training callback that keeps the source-loss barrier from ``anchor`` below
    ``epsilon`` (module docstring). ``source_data`` is evaluated with the model's stored
    BatchNorm statistics; ``history`` holds one row per check."""

    def __init__(
        self,
        source_data: Any,
        epsilon: float,
        *,
        anchor: Mapping[str, Tensor] | None = None,
        every: int = 10,
        points: int = 9,
        bisect: int = 8,
        definition: str = "rise",
        task: Any = None,
        batch_size: int = 1024,
    ) -> None:
        if definition not in TRUST_DEFINITIONS:
            raise BasinscopeError(
                f"unknown barrier definition {definition!r}: expected one of "
                f"{', '.join(TRUST_DEFINITIONS)}"
            )
        self.definition = definition
        if not epsilon >= 0 or not math.isfinite(epsilon):
            raise BasinscopeError(
                f"the trust region's epsilon must be a number >= 0, got {epsilon}"
            )
        if every < 1 or points < 3 or bisect < 1:
            raise BasinscopeError(
                f"every >= 1, points >= 3 and bisect >= 1 are needed, got {every}, {points}, {bisect}"
            )
        self.source_data = source_data
        self.epsilon = float(epsilon)
        self.anchor = None if anchor is None else {k: v.detach().clone() for k, v in anchor.items()}
        self.every, self.points, self.bisect = every, points, bisect
        self.task = task
        self.batch_size = batch_size
        self.alphas = np.linspace(0.0, 1.0, points)
        self.history: list[dict[str, float]] = []

    def start(self, model: nn.Module) -> None:
        """Take ``model``'s weights as the anchor (when none was given)."""
        if self.anchor is None:
            self.anchor = {k: v.detach().clone() for k, v in model.named_parameters()}

    def _curve(self, model: nn.Module, scales: Sequence[float]) -> list[float]:
        """The barrier at each scale s of the step theta_0 + s (theta - theta_0)."""
        from basinscope.engine import EvalJob, PointBasis
        from basinscope.engine.evaluate import evaluate_points
        from basinscope.engine.task import as_task

        assert self.anchor is not None
        now = {k: v.detach() for k, v in model.named_parameters()}
        origin = {k: self.anchor[k].to(now[k]) for k in now}
        delta = {k: now[k] - origin[k] for k in now}
        job = EvalJob(
            model,
            PointBasis(origin, (delta,), {k: b.detach() for k, b in model.named_buffers()}),
            {"source": self.source_data},
            metrics=("loss",),
            batch_size=self.batch_size,
            dtype=next(iter(now.values())).dtype,
            device=str(next(iter(now.values())).device),
            strategy="loop",
            task=as_task(self.task),
        )
        coeffs = np.array([[s * a] for s in scales for a in self.alphas])
        values = evaluate_points(job, coeffs, chunk_size=len(coeffs)).values["source_loss"]
        curves = values.reshape(len(scales), len(self.alphas))
        return [barrier_of(c, self.alphas, self.definition) for c in curves]

    def __call__(self, step: int, model: nn.Module, info: Mapping[str, Any] | None = None) -> None:
        if self.anchor is None:
            raise BasinscopeError(
                "the trust region has no anchor: pass anchor= or call start(model) before training"
            )
        if step % self.every:
            return
        (b,) = self._curve(model, [1.0])
        scale = 1.0
        if b > self.epsilon:
            lo, hi = 0.0, 1.0
            for _ in range(self.bisect):
                mid = 0.5 * (lo + hi)
                (bm,) = self._curve(model, [mid])
                if bm <= self.epsilon:
                    lo = mid
                else:
                    hi = mid
            scale = lo
            with torch.no_grad():
                for k, p in model.named_parameters():
                    a = self.anchor[k].to(p)
                    p.copy_(a + scale * (p - a))
        self.history.append({"step": float(step), "barrier": b, "scale": scale})


# -- subnetworks ------------------------------------------------------------------------------
def mask_scores(
    model: nn.Module,
    data: Any,
    signal: str,
    *,
    task: Any = None,
    examples: int = 256,
    probes: int = 16,
    probe_steps: int = 20,
    probe_lr: float = 0.01,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """A score per parameter entry of ``model`` on ``data`` (module docstring), float64 on
    the CPU; the curvature and the probe run on ``device``."""
    if signal not in MASK_SIGNALS:
        raise BasinscopeError(
            f"unknown mask signal {signal!r}: expected one of {', '.join(MASK_SIGNALS)}"
        )
    params = {k: p.detach() for k, p in model.named_parameters()}
    if signal == "random":
        g = torch.Generator().manual_seed(seed)
        return {k: torch.rand(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    if signal == "probe":
        from basinscope.training.config import TrainConfig
        from basinscope.training.trainer import train

        cfg = TrainConfig(steps=probe_steps, lr=probe_lr, batch_size=64, data_seed=seed)
        probed = dict(train(model, data, cfg, task=task, device=device).model.named_parameters())
        return {
            k: ((probed[k].detach().cpu() - p.cpu()).abs() / (p.cpu().abs() + 1e-12)).double()
            for k, p in params.items()
        }
    from basinscope.curvature import EFOperator, HessianOperator
    from basinscope.curvature.loss import first_examples

    sub = first_examples(data, examples)
    if signal in ("gradient", "fisher"):
        op = EFOperator(model, sub, task=task, dtype=torch.float64, device=device)
        if signal == "gradient":
            flat = op.gradient().abs().cpu()
        else:
            rows = [op.per_example_gradients(x, y) for x, y in op.empirical_loss.batches]
            g = torch.cat(rows)
            flat = (g * g).mean(0).cpu()
        return {k: v.clone().cpu() for k, v in op.unflatten(flat).items()}
    op = HessianOperator(
        model, sub, task=task, method="double-backward", dtype=torch.float64, device=device
    )
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(op.n, dtype=torch.float64)
    for _ in range(probes):
        z = torch.randint(0, 2, (op.n,), generator=gen, dtype=torch.float64) * 2 - 1
        acc += z * op.matvec(z.to(op.device)).cpu()
    return {k: v.abs().clone() for k, v in op.unflatten(acc / probes).items()}


def top_mask(
    scores: Mapping[str, Tensor], fraction: float | None = None, *, count: int | None = None
) -> dict[str, Tensor]:
    """Boolean masks of the top entries of all ``scores`` (ties broken by position):
    exactly ``count`` of them, or ``ceil(fraction * N)`` (give one of the two; ``count``
    matches another subnetwork's trainable-parameter count exactly)."""
    keys = list(scores)
    flat = torch.cat([scores[k].reshape(-1).double() for k in keys])
    if (fraction is None) == (count is None):
        raise BasinscopeError("top_mask takes either fraction= or count=, not both or neither")
    if count is not None:
        if not 1 <= count <= flat.numel():
            raise BasinscopeError(
                f"the trainable count must be between 1 and the {flat.numel()} entries, got {count}"
            )
        k = int(count)
    else:
        assert fraction is not None
        if not 0 < fraction <= 1:
            raise BasinscopeError(f"the trainable fraction must be in (0, 1], got {fraction}")
        k = math.ceil(fraction * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    out, i = {}, 0
    for name in keys:
        n = scores[name].numel()
        out[name] = keep[i : i + n].view(scores[name].shape).clone()
        i += n
    return out
