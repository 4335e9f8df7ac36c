"""The double-descent study: model-wise and epoch-wise, with label noise and BatchNorm, and
the memorisation-consolidation check.

Deep double descent (Nakkiran et al. 2020): with label noise, the test error of a model
trained to completion first falls with its width, rises to a peak near the *interpolation
threshold* (the smallest width that fits every training label, the noisy ones included),
and falls again beyond it; over training (epoch-wise), the test loss of a model near the
threshold peaks about when it reaches zero training error. Vetrov's talk (shared/talks/004)
proposes an explanation for networks with BatchNorm, whose hidden layers are
scale-invariant: a *memorisation* phase (the weight norm grows, the effective learning rate
:math:`\\eta/\\lVert w\\rVert^2` falls, SGD settles into a narrow minimum, the test loss peaks)
followed by *consolidation* (weight decay shrinks the norm, the effective learning rate
rises, SGD drifts to wider minima, the test loss falls). The study measures, on the first
``train_examples`` of scikit-learn's 8x8 digits with a one-hidden-layer ReLU MLP:

1. **model-wise**: a width sweep through the interpolation threshold, for each label-noise
   rate and with and without BatchNorm; train and test error and loss at the end of
   training, and the fraction of the flipped labels the model fits (memorised);
2. **epoch-wise**: a long run at the threshold width (by default the sweep's threshold at
   the largest epoch-wise noise rate, for the same BatchNorm setting), tracked by
   :class:`~basinscope.analyses.tracking.Tracker` at log-spaced steps: train/test loss and
   error, total and per-layer weight norm, the effective learning rate of the
   scale-invariant layers, the filter-normalized sharpness (scale-invariant; the *effective
   width* of the minimum is its inverse) and the top Hessian eigenvalue (not
   scale-invariant), plus the fraction of the flipped labels fit;
3. **the check**: does the epoch-wise test-loss peak coincide, within ``coincidence_steps``
   tracked steps, with the weight-norm maximum and the sharpness maximum (the width
   minimum), and do the test loss, the weight norm and the sharpness fall after it?
   Every verdict is computed from the numbers (:func:`memorisation_check`).

Every training is a stage stored under ``<root>/stages`` by a hash of its settings
(reused when the study runs again); independent trainings are submitted together
(:meth:`~basinscope.experiments.registry.StudyContext.run_stages`).
:mod:`basinscope.experiments.double_descent_report` draws the report from the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, Study, StudyContext, register
from basinscope.experiments.stages import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    cached_stage,
    placement,
    stage_dir,
)

__all__ = [
    "DEFINITIONS",
    "STUDY",
    "DoubleDescentConfig",
    "epochwise_peak",
    "interpolation_threshold",
    "memorisation_check",
    "modelwise_peak",
    "run",
    "tracked_steps",
]

NAME = "double-descent"
DIGITS_TRAIN = 1347  # examples in basinscope.data.load_digits("train")
STUDY_MAX_STEPS = 1_000_000  # far more than any study needs: a larger value is a typo
OPTIMIZERS = ("sgd", "adam", "adamw")
SHARPNESS = ("filter_normalized", "adaptive")


@dataclass(frozen=True)
class DoubleDescentConfig:
    """Settings of the double-descent study (steps are optimizer updates).

    Every model is an MLP on the flattened 8x8 digits with ``hidden_layers`` ReLU layers of
    one width, with or without BatchNorm after each hidden linear layer; every training uses
    one recipe (``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``batch_size``), the
    sweep for ``steps`` updates and the epoch-wise runs for ``epoch_steps``.
    """

    train_examples: int = 300  # the first N of the 1,347 training digits (few: interpolable)
    noise_rates: tuple[float, ...] = (0.0, 0.2)  # symmetric label noise of the sweep
    noise_seed: int = 0  # which labels are flipped, and to what
    batchnorm: tuple[bool, ...] = (False, True)  # the sweep without and with BatchNorm
    widths: tuple[int, ...] = (2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512)
    hidden_layers: int = 1  # hidden layers of the MLP, each of the width
    seeds: int = 1  # initializations per sweep point (init seeds 0..seeds-1), averaged
    steps: int = 4000  # updates of each sweep training
    optimizer: str = "sgd"  # sgd, adam or adamw (every training)
    lr: float = 0.05  # constant learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-3  # L2 penalty (decoupled for adamw): shrinks scale-invariant weights
    batch_size: int = 32  # examples per update
    data_seed: int = 0  # minibatch order of every training
    interpolation_tol: float = 0.01  # train error (noisy labels) at most this: interpolates
    dd_margin: float = 0.02  # a model-wise peak must rise this much above both sides' minima
    epoch_noise_rates: tuple[float, ...] = (0.2, 0.0)  # label noise of the epoch-wise runs
    epoch_batchnorm: tuple[bool, ...] = (True, False)  # epoch-wise runs with/without BatchNorm
    epoch_width: int = 0  # width of the epoch-wise runs (0: the sweep's threshold, see above)
    epoch_steps: int = 20000  # updates of each epoch-wise run
    epoch_init_seed: int = 0  # initialization of the epoch-wise runs
    track_points: int = 30  # log-spaced tracked steps between 1 and epoch_steps
    track_examples: int = 300  # first N training examples for the Hessian and the sharpness
    sharpness: str = "filter_normalized"  # or "adaptive": the scale-invariant sharpness
    sharpness_alphas: tuple[float, ...] = (0.05, 0.1, 0.2)  # filter-normalized steps (max over)
    sharpness_directions: int = 5  # random filter-normalized directions averaged
    adaptive_rho: float = 0.05  # radius of the adaptive sharpness (sharpness="adaptive")
    hessian_tol: float = 1e-3  # Lanczos relative residual tolerance (warm-started)
    hessian_max_iter: int = 40  # Lanczos steps per tracked step at most
    coincidence_steps: int = 2  # peaks "coincide" within this many tracked steps
    consolidation_drop: float = 0.05  # a fall after the peak counts when >= this fraction
    # where training and every evaluation compute (cpu, cuda, cuda:N, mps)
    device: str = DEFAULT_DEVICE
    # precision of the sweep's evaluations and of the sharpness: float32 or float64; training
    # is float32, the tracked losses are in the model's float32, lambda_max in float64
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        at_least("train_examples", self.train_examples, 10, high=DIGITS_TRAIN)
        if not self.widths or not self.noise_rates or not self.batchnorm:
            raise BasinscopeError(
                "widths, noise_rates and batchnorm each need at least one value, e.g. "
                "widths=[4, 16, 64], noise_rates=[0, 0.2], batchnorm=[false, true]"
            )
        if list(self.widths) != sorted(set(self.widths)):
            raise BasinscopeError(
                f"widths must increase strictly (the threshold is read along them), got "
                f"{list(self.widths)}"
            )
        for w in self.widths:
            at_least("widths", w, 1, high=8192, high_why=" units per layer")
        for key in ("noise_rates", "epoch_noise_rates"):
            for r in getattr(self, key):
                finite_float(key, r, low=0, high=1, high_open=True, fix="e.g. [0, 0.2]")
        for key in ("noise_rates", "batchnorm", "epoch_noise_rates", "epoch_batchnorm"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise BasinscopeError(f"{key} lists a value twice: {list(values)}")
        if not self.epoch_noise_rates or not self.epoch_batchnorm:
            raise BasinscopeError(
                "epoch_noise_rates and epoch_batchnorm each need at least one value"
            )
        if self.epoch_width == 0:
            rate = max(self.epoch_noise_rates)
            if rate not in self.noise_rates or not set(self.epoch_batchnorm) <= set(self.batchnorm):
                raise BasinscopeError(
                    f"epoch_width=0 takes the width from the sweep's threshold at noise rate "
                    f"{rate:g} with batchnorm {list(self.epoch_batchnorm)}, which the sweep "
                    f"(noise_rates {list(self.noise_rates)}, batchnorm {list(self.batchnorm)}) "
                    "does not run; add them to the sweep or set epoch_width"
                )
        else:
            at_least("epoch_width", self.epoch_width, 0, high=8192, high_why=" units per layer")
        at_least("hidden_layers", self.hidden_layers, 1, high=8)
        at_least("seeds", self.seeds, 1, high=100)
        for key in ("steps", "epoch_steps"):
            at_least(key, getattr(self, key), 1, high=STUDY_MAX_STEPS)
        at_least("batch_size", self.batch_size, 1)
        at_least("track_points", self.track_points, 3, high=10_000)
        at_least("track_examples", self.track_examples, 2, high=DIGITS_TRAIN)
        at_least("sharpness_directions", self.sharpness_directions, 1, high=1000)
        at_least("hessian_max_iter", self.hessian_max_iter, 1, high=10_000)
        at_least("coincidence_steps", self.coincidence_steps, 0, high=10_000)
        if self.optimizer not in OPTIMIZERS:
            raise BasinscopeError(
                f"optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"
            )
        if self.sharpness not in SHARPNESS:
            raise BasinscopeError(
                f"sharpness {self.sharpness!r}: expected one of {', '.join(SHARPNESS)} (both "
                "are invariant to rescaling a layer)"
            )
        positive_float("lr", self.lr, fix="e.g. lr=0.05")
        positive_float("adaptive_rho", self.adaptive_rho)
        if not self.sharpness_alphas:
            raise BasinscopeError("sharpness_alphas needs at least one step, e.g. [0.05, 0.1]")
        for a in self.sharpness_alphas:
            positive_float("sharpness_alphas", a)
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        finite_float("weight_decay", self.weight_decay, low=0)
        finite_float("interpolation_tol", self.interpolation_tol, low=0, high=1)
        finite_float("dd_margin", self.dd_margin, low=0, high=1)
        finite_float("consolidation_drop", self.consolidation_drop, low=0, high=1)
        finite_float("hessian_tol", self.hessian_tol, low=0, high=1, low_open=True, high_open=True)
        for key in ("noise_seed", "data_seed", "epoch_init_seed"):
            check_seed(key, getattr(self, key))


# Every number of the results, with its definition.
DEFINITIONS = {
    "width": "units of each hidden layer of the MLP",
    "parameters": "number of trainable parameters (BatchNorm's scale and shift included)",
    "noise_rate": "fraction of the training labels replaced by another class, drawn uniformly "
    "(exactly round(rate * N) labels, seeded: basinscope.data.label_noise)",
    "train_error": "1 - accuracy on the training examples with the labels trained on (the "
    "noisy ones included)",
    "train_loss": "mean cross-entropy on the training examples with the labels trained on",
    "clean_train_error": "1 - accuracy on the training examples with their true labels",
    "test_error": "1 - accuracy on the 450 test digits (clean labels)",
    "test_loss": "mean cross-entropy on the 450 test digits",
    "memorised": "fraction of the flipped training examples predicted as their (wrong) noisy "
    "label: how much of the noise the model has memorised (null without noise)",
    "interpolation_threshold": "the smallest width of the sweep from which on every wider "
    "model has a mean train error <= interpolation_tol (null: no width interpolates)",
    "modelwise_peak": "the width whose mean test error stands highest above both the lowest "
    "test error of the narrower and of the wider models (score = the smaller of the two "
    "rises); a double descent when that score >= dd_margin",
    "weight_norm": "||theta||_2 of all parameters",
    "scale_invariant_norm": "||w||_2 of the layers whose output feeds a BatchNorm directly "
    "(their weights and biases; the function does not change when they are scaled)",
    "effective_lr": "lr / ||w_l||^2 of each scale-invariant layer (null without BatchNorm)",
    "sharpness": "scale-invariant sharpness of the training loss on the first track_examples "
    "examples: filter_normalized = mean over random filter-normalized directions d of "
    "max_alpha L(theta + alpha d) - L(theta) (Li et al. 2018), adaptive = worst case in the "
    "|w|-scaled ball (Kwon et al. 2021); the effective width of the minimum is its inverse",
    "lambda_max": "top Hessian eigenvalue of the training loss on the same examples (float64, "
    "BatchNorm in eval mode, Lanczos warm-started); NOT scale-invariant: it falls as the "
    "scale-invariant weights grow",
    "test_loss_peak": "the tracked step where the test loss stands highest above its lowest "
    "earlier value (the end of the memorisation phase); null when it never rises",
    "first_descent_end": "the tracked step of the lowest test loss before the peak",
    "interpolation_step": "the first tracked step with train error <= interpolation_tol",
    "coincide": "two maxima coincide when at most coincidence_steps tracked steps apart",
    "fall_after_peak": "(value at its maximum - value at the last tracked step) / value at its "
    "maximum; for the test loss, from the peak to the lowest later value",
}

BN_POLICY = (
    "BatchNorm (BatchNorm1d after each hidden linear layer) trains on batch statistics; "
    "every evaluation, Hessian and sharpness uses the running statistics (eval mode)"
)


# -- pure functions of the numbers ----------------------------------------------------------


def tracked_steps(total: int, points: int) -> list[int]:
    """``points`` log-spaced steps from 1 to ``total`` (rounded, distinct, both ends in)."""
    raw = np.round(np.geomspace(1, total, points)).astype(int)
    return sorted({int(s) for s in raw} | {1, int(total)})


def interpolation_threshold(
    widths: Sequence[int], train_errors: Sequence[float], tol: float
) -> int | None:
    """The smallest width from which on every wider model has ``train_error <= tol``."""
    found = None
    for w, e in sorted(zip(widths, train_errors, strict=True), reverse=True):
        if e is None or not e <= tol + 1e-9:  # 3/300 is 0.010000000000000009
            break
        found = w
    return found


def modelwise_peak(values: Sequence[float]) -> tuple[int | None, float]:
    """The index of the interior point that stands highest above both the lowest value
    before it and the lowest after it, and that height (the smaller of the two rises);
    ``(None, 0.0)`` with fewer than three points."""
    v = np.asarray(values, dtype=np.float64)
    best, score = None, 0.0
    for i in range(1, len(v) - 1):
        s = min(v[i] - v[:i].min(), v[i] - v[i + 1 :].min())
        if best is None or s > score:
            best, score = i, float(s)
    return best, score


def epochwise_peak(loss: Sequence[float]) -> tuple[int, int] | None:
    """``(i_first_min, i_peak)``: the index where ``loss`` stands highest above its lowest
    earlier value, and the index of that lowest earlier value; ``None`` when it never rises."""
    v = np.asarray(loss, dtype=np.float64)
    run_min = np.minimum.accumulate(v)
    rise = v - run_min
    i_peak = int(np.argmax(rise))
    if rise[i_peak] <= 0:
        return None
    return int(np.argmin(v[: i_peak + 1])), i_peak


def _fall(v: np.ndarray, i: int) -> float:
    top = float(v[i])
    return (top - float(v[-1])) / top if top else 0.0


def memorisation_check(
    steps: Sequence[int],
    series: dict[str, Sequence[float]],
    *,
    tolerance: int,
    drop: float,
    interpolation_tol: float,
) -> dict[str, Any]:
    """The memorisation-consolidation check of one tracked run.

    ``series`` holds ``test_loss``, ``weight_norm``, ``sharpness``, ``lambda_max`` and
    ``train_error`` at ``steps``. The test-loss peak (:func:`epochwise_peak`) is compared
    with the maxima of the weight norm, the sharpness (the width minimum) and lambda_max:
    each *coincides* when at most ``tolerance`` tracked steps away. *Consolidation* is seen
    when after the peak the test loss falls to a value at least ``drop`` (a fraction) below
    the peak, and the weight norm and the sharpness end at least ``drop`` below their
    maxima. ``supported`` is True only when the peak coincides with both maxima and
    consolidation is seen."""
    steps = [int(s) for s in steps]
    arr = {k: np.asarray(v, dtype=np.float64) for k, v in series.items()}
    n = len(steps)
    span = (steps[-1] / steps[0]) ** (tolerance / max(n - 1, 1)) if n > 1 else 1.0
    out: dict[str, Any] = {
        "tolerance_tracked_steps": tolerance,
        "tolerance_factor": float(span),
        "drop": drop,
    }
    err = arr["train_error"]
    fit = np.flatnonzero(err <= interpolation_tol + 1e-9)
    out["interpolation_step"] = steps[int(fit[0])] if fit.size else None
    maxima = {}
    for key in ("weight_norm", "sharpness", "lambda_max"):
        v = arr[key]
        i = int(np.nanargmax(v)) if np.isfinite(v).any() else None
        maxima[key] = i
        out[f"{key}_max_step"] = steps[i] if i is not None else None
        out[f"{key}_max"] = float(v[i]) if i is not None else None
        out[f"{key}_fall_after_max"] = _fall(v, i) if i is not None else None
        out[f"{key}_max_at_end"] = i == n - 1 if i is not None else None
    peak = epochwise_peak(arr["test_loss"])
    if peak is None:
        out.update(
            test_loss_peak_step=None,
            first_descent_end_step=None,
            supported=False,
            consolidation=False,
        )
        for key in maxima:
            out[f"{key}_coincides"] = None
            out[f"{key}_offset"] = None
        return out
    i_min, i_peak = peak
    loss = arr["test_loss"]
    later = loss[i_peak:]
    out["first_descent_end_step"] = steps[i_min]
    out["test_loss_peak_step"] = steps[i_peak]
    out["test_loss_at_first_min"] = float(loss[i_min])
    out["test_loss_at_peak"] = float(loss[i_peak])
    out["test_loss_peak_at_end"] = i_peak == n - 1
    out["test_loss_min_after_peak"] = float(later.min())
    out["test_loss_min_after_peak_step"] = steps[i_peak + int(np.argmin(later))]
    out["test_loss_fall_after_peak"] = (float(loss[i_peak]) - float(later.min())) / float(
        loss[i_peak]
    )
    for key, i in maxima.items():
        out[f"{key}_offset"] = None if i is None else i - i_peak  # in tracked steps
        out[f"{key}_coincides"] = None if i is None else abs(i - i_peak) <= tolerance
    falls = {
        "test_loss": out["test_loss_fall_after_peak"],
        "weight_norm": out["weight_norm_fall_after_max"],
        "sharpness": out["sharpness_fall_after_max"],
    }
    out["consolidation"] = all(f is not None and f >= drop for f in falls.values())
    out["supported"] = bool(
        out["weight_norm_coincides"] and out["sharpness_coincides"] and out["consolidation"]
    )
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def verdict_text(run: dict[str, Any]) -> str:
    """One paragraph on one epoch-wise run, every claim read from ``run["check"]``."""
    c = run["check"]
    name = run["label"]
    tol = (
        f"{c['tolerance_tracked_steps']} tracked steps (a factor {c['tolerance_factor']:.2g} "
        "in steps)"
    )
    if c["test_loss_peak_step"] is None:
        return (
            f"{name}: the test loss never rises above an earlier value at the tracked steps, so "
            "there is no epoch-wise peak to compare with; the memorisation-consolidation "
            "picture does not apply to this run."
        )
    parts = [
        f"{name}: the test loss falls to {c['test_loss_at_first_min']:.3g} at step "
        f"{c['first_descent_end_step']}, then peaks at {c['test_loss_at_peak']:.3g} at step "
        f"{c['test_loss_peak_step']}"
        + (
            " (the last tracked step: it was still rising when the run ended)"
            if c["test_loss_peak_at_end"]
            else f" and falls {_pct(c['test_loss_fall_after_peak'])} to "
            f"{c['test_loss_min_after_peak']:.3g} by step {c['test_loss_min_after_peak_step']}"
        )
        + "."
    ]
    if c["interpolation_step"] is not None:
        parts.append(
            f"The train error first reaches <= tolerance at step {c['interpolation_step']}."
        )
    else:
        parts.append("The train error never reaches the interpolation tolerance.")
    for key, what in (
        ("weight_norm", "the weight norm"),
        ("sharpness", "the sharpness (the width minimum)"),
        ("lambda_max", "lambda_max"),
    ):
        if c[f"{key}_max_step"] is None:
            continue
        off = c[f"{key}_offset"]
        rel = (
            "at the peak"
            if off == 0
            else f"{abs(off)} tracked steps {'after' if off > 0 else 'before'} it"
        )
        parts.append(
            f"The maximum of {what} is at step {c[f'{key}_max_step']} ({rel}): it "
            + ("coincides" if c[f"{key}_coincides"] else "does not coincide")
            + f" within {tol}"
            + (
                "; it is the last tracked step (still growing)"
                if c[f"{key}_max_at_end"]
                else f"; it then falls {_pct(c[f'{key}_fall_after_max'])} by the end"
            )
            + "."
        )
    if c["supported"]:
        parts.append(
            "This run agrees with the memorisation-consolidation hypothesis: the test-loss peak "
            "coincides with the weight-norm maximum and the width minimum, and the test loss, the "
            f"weight norm and the sharpness all fall by at least {_pct(c['drop'])} after them."
        )
    else:
        why = []
        if not c["weight_norm_coincides"]:
            why.append("the weight-norm maximum is not at the test-loss peak")
        if not c["sharpness_coincides"]:
            why.append("the sharpness maximum (width minimum) is not at the test-loss peak")
        if not c["consolidation"]:
            why.append(
                f"no consolidation phase: the test loss, the weight norm and the sharpness do "
                f"not all fall by {_pct(c['drop'])} after their maxima"
            )
        parts.append("The data disagree with the hypothesis here: " + "; ".join(why) + ".")
    return " ".join(parts)


# -- stages -----------------------------------------------------------------------------------


def _model(width: int, batchnorm: bool, seed: int, cfg: DoubleDescentConfig):
    from basinscope.models import build_model

    kwargs = {"hidden": [width] * cfg.hidden_layers, "batchnorm": batchnorm}
    return build_model("mlp", kwargs, init_seed=seed), kwargs


def _train_config(cfg: DoubleDescentConfig, steps: int):
    from basinscope.training import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum if cfg.optimizer == "sgd" else 0.0,
        weight_decay=cfg.weight_decay,
        data_seed=cfg.data_seed,
    )


def _noise_fit(model, noisy, device: str) -> dict[str, float | None]:
    """Error on the true labels of the training examples, and the fraction of the flipped
    examples predicted as their noisy label."""
    import torch

    was = model.training
    model.eval()
    with torch.no_grad():
        x = noisy.data.x.to(device=device, dtype=next(model.parameters()).dtype)
        pred = model(x).argmax(1).cpu()
    model.train(was)
    clean = noisy.clean_labels.cpu()
    out: dict[str, float | None] = {"clean_train_error": float((pred != clean).float().mean())}
    idx = noisy.flipped
    out["memorised"] = (
        float((pred[idx] == noisy.data.y.cpu()[idx]).float().mean()) if len(idx) else None
    )
    return out


class _NoiseTracker:
    """A training callback: :func:`_noise_fit` at the tracked steps."""

    def __init__(self, steps: Sequence[int], noisy, device: str) -> None:
        self.steps, self.noisy, self.device = set(steps), noisy, device
        self.rows: list[dict[str, Any]] = []

    def __call__(self, step: int, model, info=None) -> None:
        if step in self.steps:
            self.rows.append({"step": step, **_noise_fit(model, self.noisy, self.device)})


def _sweep_point(model, noisy, test, cfg: DoubleDescentConfig, steps: int, d: Path):
    from basinscope.engine import evaluate_model
    from basinscope.models import save_weights
    from basinscope.store import paths
    from basinscope.training import train

    result = train(model, noisy.data, _train_config(cfg, steps), device=cfg.device)
    trained = result.model
    ev = evaluate_model(trained, {"train": noisy.data, "test": test}, **placement(cfg))
    row = {
        "train_loss": ev["train_loss"],
        "train_error": 1.0 - ev["train_accuracy"],
        "test_loss": ev["test_loss"],
        "test_error": 1.0 - ev["test_accuracy"],
        **_noise_fit(trained, noisy, cfg.device),
        "parameters": sum(p.numel() for p in trained.parameters()),
    }
    save_weights(trained.cpu(), d / paths.WEIGHTS)
    return row


def _tracked_run(model, noisy, test, cfg: DoubleDescentConfig, d: Path):
    import xarray as xr

    from basinscope.analyses.tracking import TRACK_MEASURES, Tracker
    from basinscope.models import save_weights
    from basinscope.store import paths
    from basinscope.training import train

    steps = tracked_steps(cfg.epoch_steps, cfg.track_points)
    sharp = {"dtype": cfg.dtype, "device": cfg.device}
    if cfg.sharpness == "filter_normalized":
        sharp |= {"alpha": list(cfg.sharpness_alphas), "num_directions": cfg.sharpness_directions}
    else:
        sharp |= {"rho": cfg.adaptive_rho}
    tracker = Tracker(
        steps,
        train_data=noisy.data,
        test_data=test,
        measures=tuple(m for m in TRACK_MEASURES if m != "noise_scale"),
        examples=cfg.track_examples,
        hessian_tol=cfg.hessian_tol,
        hessian_max_iter=cfg.hessian_max_iter,
        sharpness=cfg.sharpness,
        sharpness_kwargs=sharp,
        seed=cfg.epoch_init_seed,
    )
    fits = _NoiseTracker(steps, noisy, cfg.device)
    result = train(
        model,
        noisy.data,
        _train_config(cfg, cfg.epoch_steps),
        device=cfg.device,
        callbacks=[tracker, fits],
    )
    save_weights(result.model.cpu(), d / paths.WEIGHTS)
    tracking = tracker.result()
    extra = {
        k: ("step", np.array([np.nan if r[k] is None else r[k] for r in fits.rows]))
        for k in ("clean_train_error", "memorised")
    }
    definition = {
        **tracking.definition,
        "clean_train_error": DEFINITIONS["clean_train_error"],
        "memorised": DEFINITIONS["memorised"],
    }
    return replace(
        tracking, dataset=tracking.dataset.assign(xr.Dataset(extra)), definition=definition
    )


def _label(bn: bool, rate: float) -> str:
    return f"{'BatchNorm' if bn else 'no BatchNorm'}, {rate:.0%} label noise"


def _tag(width: int, bn: bool, rate: float, seed: int | None = None) -> str:
    s = "" if seed is None else f"-s{seed}"
    return f"mlp-w{width}-{'bn' if bn else 'nobn'}-noise{rate:g}{s}"


def _none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run(cfg: DoubleDescentConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.data import label_noise, load_digits

    root = ctx.stages_root
    n = cfg.train_examples
    base = load_digits("train")
    train = base.subset(range(n), f"{base.name}-first{n}")
    test = load_digits("test")
    rates = sorted(set(cfg.noise_rates) | set(cfg.epoch_noise_rates))
    noisy = {r: label_noise(train, r, seed=cfg.noise_seed) for r in rates}
    data = {"data": train.name, "train_examples": n, "noise_seed": cfg.noise_seed}
    where = placement(cfg)

    # -- 1. the width sweep -------------------------------------------------------------
    grid = [
        (bn, r, s, w)
        for bn in cfg.batchnorm
        for r in cfg.noise_rates
        for s in range(cfg.seeds)
        for w in cfg.widths
    ]
    tcfg = _train_config(cfg, cfg.steps).to_dict()
    calls = []
    for bn, r, s, w in grid:
        model, kwargs = _model(w, bn, s, cfg)
        settings = {"model": "mlp", "model_kwargs": kwargs, "init_seed": s, **data}
        settings |= {"noise_rate": r, "train": tcfg, **where}
        name = f"sweep-{_tag(w, bn, r, s)}"

        def sweep_call(lg, name=name, settings=settings, model=model, r=r):
            def compute(d):
                return _sweep_point(model, noisy[r], test, cfg, cfg.steps, d)

            return cached_stage(root, name, settings, compute, log=lg)

        calls.append(StageCall(stage_dir(root, name, settings), sweep_call))
    done = ctx.run_stages(
        calls,
        what=f"[1/2] training {len(cfg.widths)} widths x {len(cfg.noise_rates)} noise rates x "
        f"{len(cfg.batchnorm)} BatchNorm settings x {cfg.seeds} seeds ({cfg.steps} steps each)",
    )
    rows = []
    for (bn, r, s, w), (value, folder) in zip(grid, done, strict=True):
        rows.append(
            {"batchnorm": bn, "noise_rate": r, "seed": s, "width": w, **value, "stage": folder.name}
        )
    curves = [_curve(rows, bn, r, cfg) for bn in cfg.batchnorm for r in cfg.noise_rates]

    # -- 2. the epoch-wise runs ---------------------------------------------------------
    runs = []
    for bn in cfg.epoch_batchnorm:
        if cfg.epoch_width:
            width, source = cfg.epoch_width, "set by epoch_width"
        else:
            rate = max(cfg.epoch_noise_rates)
            c = next(c for c in curves if c["batchnorm"] == bn and c["noise_rate"] == rate)
            if c["interpolation_threshold"] is not None:
                width = c["interpolation_threshold"]
                source = f"the sweep's interpolation threshold ({_label(bn, rate)})"
            else:
                width = max(cfg.widths)
                source = (
                    f"the widest model of the sweep: no width interpolated ({_label(bn, rate)})"
                )
        for r in cfg.epoch_noise_rates:
            runs.append({"batchnorm": bn, "noise_rate": r, "width": width, "width_source": source})
    tracked = tracked_steps(cfg.epoch_steps, cfg.track_points)
    track = {
        "steps": tracked,
        "examples": cfg.track_examples,
        "sharpness": cfg.sharpness,
        "hessian_tol": cfg.hessian_tol,
        "hessian_max_iter": cfg.hessian_max_iter,
    }
    if cfg.sharpness == "filter_normalized":
        track |= {"alphas": list(cfg.sharpness_alphas), "directions": cfg.sharpness_directions}
    else:
        track |= {"rho": cfg.adaptive_rho}
    calls = []
    for run_ in runs:
        bn, r, w = run_["batchnorm"], run_["noise_rate"], run_["width"]
        model, kwargs = _model(w, bn, cfg.epoch_init_seed, cfg)
        settings = {"model": "mlp", "model_kwargs": kwargs, "init_seed": cfg.epoch_init_seed}
        settings |= {
            **data,
            "noise_rate": r,
            "train": _train_config(cfg, cfg.epoch_steps).to_dict(),
        }
        settings |= {"track": track, **where}
        name = f"epochwise-{_tag(w, bn, r)}"

        def epoch_call(lg, name=name, settings=settings, model=model, r=r):
            def compute(d):
                return _tracked_run(model, noisy[r], test, cfg, d)

            return cached_stage(root, name, settings, compute, log=lg)

        calls.append(StageCall(stage_dir(root, name, settings), epoch_call))
    done = ctx.run_stages(
        calls,
        what=f"[2/2] {len(runs)} epoch-wise runs of {cfg.epoch_steps} steps, tracked at "
        f"{len(tracked)} steps",
    )
    for run_, (value, folder) in zip(runs, done, strict=True):
        run_.update(_series(value, cfg))
        run_["label"] = f"width {run_['width']}, {_label(run_['batchnorm'], run_['noise_rate'])}"
        run_["stage"] = folder.name
        run_["check"] = memorisation_check(
            run_["steps"],
            {
                k: run_[k]
                for k in ("test_loss", "weight_norm", "sharpness", "lambda_max", "train_error")
            },
            tolerance=cfg.coincidence_steps,
            drop=cfg.consolidation_drop,
            interpolation_tol=cfg.interpolation_tol,
        )
        run_["verdict"] = verdict_text(run_)

    return {
        "definitions": DEFINITIONS,
        "policies": {
            "batchnorm": BN_POLICY,
            "data": f"the first {n} of the 1,347 training digits (labels made noisy per run, "
            f"noise seed {cfg.noise_seed}); the 450 test digits with clean labels",
            "training": f"{cfg.optimizer} (lr {cfg.lr:g}, momentum {cfg.momentum:g}, weight "
            f"decay {cfg.weight_decay:g}, constant schedule), batches of {cfg.batch_size}, "
            f"{cfg.steps} steps per sweep point and {cfg.epoch_steps} per epoch-wise run; "
            f"MLPs with {cfg.hidden_layers} hidden ReLU layer(s), PyTorch's default init",
            "sharpness": _sharpness_policy(cfg),
            "precision": f"training in float32 on {cfg.device}; sweep evaluations and the "
            f"sharpness in {cfg.dtype}; tracked losses in float32; lambda_max in float64",
        },
        "modelwise": {"rows": rows, "curves": curves},
        "epochwise": {"tracked_steps": tracked, "runs": runs},
        "conclusions": _conclusions(curves, runs, cfg),
    }


def _sharpness_policy(cfg: DoubleDescentConfig) -> str:
    if cfg.sharpness == "filter_normalized":
        return (
            f"filter-normalized sharpness (Li et al. 2018): mean over {cfg.sharpness_directions} "
            "seeded Gaussian directions, each filter (row of a Linear layer) rescaled to the "
            "norm of the weights' filter and bias components zeroed, of the largest rise "
            f"L(theta + alpha d) - L(theta) over alpha in {list(cfg.sharpness_alphas)}, on the "
            f"first {cfg.track_examples} training examples (with their noisy labels). Invariant "
            "to rescaling a layer, so it measures the width of the minimum whatever the weight "
            "norm; the effective width is its inverse"
        )
    return (
        f"adaptive sharpness (Kwon et al. 2021): the worst rise of the training loss in the "
        f"ball ||delta / |theta| ||_2 <= {cfg.adaptive_rho:g} on the first {cfg.track_examples} "
        "training examples; invariant to rescaling a layer; the effective width is its inverse"
    )


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _curve(rows: list[dict], bn: bool, rate: float, cfg: DoubleDescentConfig) -> dict[str, Any]:
    sel = [r for r in rows if r["batchnorm"] == bn and r["noise_rate"] == rate]
    keys = (
        "train_error",
        "train_loss",
        "test_error",
        "test_loss",
        "memorised",
        "clean_train_error",
    )
    curve: dict[str, Any] = {"batchnorm": bn, "noise_rate": rate, "label": _label(bn, rate)}
    curve["widths"] = list(cfg.widths)
    for k in keys:
        curve[k] = [_mean([r[k] for r in sel if r["width"] == w]) for w in cfg.widths]
    curve["parameters"] = [
        next(r["parameters"] for r in sel if r["width"] == w) for w in cfg.widths
    ]
    thr = interpolation_threshold(cfg.widths, curve["train_error"], cfg.interpolation_tol)
    curve["interpolation_threshold"] = thr
    for k in ("test_error", "test_loss"):
        i, score = modelwise_peak(curve[k])
        curve[f"{k}_peak_width"] = None if i is None else cfg.widths[i]
        curve[f"{k}_peak_score"] = score
        curve[f"{k}_double_descent"] = bool(i is not None and score >= cfg.dd_margin)
    i = cfg.widths.index(thr) if thr is not None else None
    curve["test_error_at_threshold"] = None if i is None else curve["test_error"][i]
    peak = curve["test_error_peak_width"]
    curve["peak_to_threshold"] = (
        None
        if peak is None or thr is None
        else cfg.widths.index(peak) - cfg.widths.index(thr)  # in grid positions
    )
    return curve


def _series(tracking: dict[str, Any], cfg: DoubleDescentConfig) -> dict[str, Any]:
    """The tracked curves as lists (a Tracking's ``to_dict()`` read back with its type)."""
    from basinscope.analyses.tracking import Tracking

    ds = Tracking.from_dict(tracking).dataset
    out: dict[str, Any] = {"steps": [int(s) for s in ds["step"].values]}
    for k in (
        "train_loss",
        "train_error",
        "test_loss",
        "test_error",
        "weight_norm",
        "sharpness",
        "lambda_max",
        "clean_train_error",
        "memorised",
    ):
        out[k] = [_none(float(v)) for v in ds[k].values]
    layers = [str(x) for x in ds["layer"].values] if "effective_lr" in ds else []
    out["scale_invariant_layers"] = layers
    if layers:
        out["effective_lr"] = {
            name: [_none(float(v)) for v in ds["effective_lr"].sel(layer=name).values]
            for name in layers
        }
        sq = sum(ds["module_norm"].sel(module=name) ** 2 for name in layers)
        out["scale_invariant_norm"] = [_none(float(v)) for v in np.sqrt(sq.values)]
    else:
        out["effective_lr"] = {}
        out["scale_invariant_norm"] = None
    return out


def _conclusions(curves: list[dict], runs: list[dict], cfg: DoubleDescentConfig) -> list[str]:
    out = []
    for c in curves:
        thr = c["interpolation_threshold"]
        text = f"Model-wise, {c['label']}: "
        text += (
            f"the interpolation threshold is at width {thr} (train error <= "
            f"{cfg.interpolation_tol:g} from there on)"
            if thr is not None
            else f"no width up to {max(cfg.widths)} interpolates (train error <= "
            f"{cfg.interpolation_tol:g}) in {cfg.steps} steps"
        )
        pw = c["test_error_peak_width"]
        if c["test_error_double_descent"]:
            text += (
                f"; the test error peaks at width {pw} ({c['test_error'][cfg.widths.index(pw)]:.3f}, "
                f"{c['test_error_peak_score']:.3f} above the best narrower and the best wider "
                "model): a double descent"
            )
            if thr is not None:
                off = c["peak_to_threshold"]
                text += (
                    ", at the threshold"
                    if off == 0
                    else f", {abs(off)} grid width(s) {'above' if off > 0 else 'below'} the threshold"
                )
        else:
            text += (
                f"; no double descent in the test error (the highest interior peak, at width "
                f"{pw}, stands {c['test_error_peak_score']:.3f} above its sides, below the "
                f"margin {cfg.dd_margin:g})"
            )
        out.append(text + ".")
    by = {(c["batchnorm"], c["noise_rate"]): c for c in curves}
    noisy = [r for r in cfg.noise_rates if r > 0]
    if 0.0 in cfg.noise_rates and noisy:
        for bn in cfg.batchnorm:
            clean, dirty = by[(bn, 0.0)], by[(bn, max(noisy))]
            thr = dirty["interpolation_threshold"]
            if thr is None:
                continue
            i = cfg.widths.index(thr)
            e0, e1 = clean["test_error"][i], dirty["test_error"][i]
            out.append(
                f"At the threshold width {thr} ({'with' if bn else 'without'} BatchNorm), "
                f"{max(noisy):.0%} label noise "
                + ("raises" if e1 > e0 else "does not raise")
                + f" the test error: {e1:.3f} vs {e0:.3f} with clean labels."
            )
    out.extend(r["verdict"] for r in runs)
    return out


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.double_descent_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Deep double descent on digits: a width sweep through the interpolation "
        "threshold and long tracked runs at it, with label noise and BatchNorm; does the "
        "test-loss peak coincide with the weight-norm maximum and the width minimum?",
        config=DoubleDescentConfig,
        run=run,
        report=_report,
        quick={
            "widths": (4, 8, 16, 32, 64, 256),
            "steps": 1500,
            "epoch_noise_rates": (0.2,),
            "epoch_batchnorm": (True,),
            "epoch_steps": 4000,
            "track_points": 16,
            "track_examples": 150,
            "sharpness_directions": 3,
            "hessian_max_iter": 20,
        },
        smoke={
            "figure_formats": ("png",),
            "train_examples": 60,
            "widths": (2, 8, 32),
            "steps": 60,
            "epoch_noise_rates": (0.2, 0.0),
            "epoch_batchnorm": (True,),
            "epoch_steps": 40,
            "track_points": 6,
            "track_examples": 32,
            "sharpness_alphas": (0.1,),
            "sharpness_directions": 2,
            "hessian_max_iter": 8,
        },
    )
)
