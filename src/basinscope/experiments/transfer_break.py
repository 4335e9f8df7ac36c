"""Section "breaks" of the transfer-methods study: when does "staying in the basin" break,
and the top Hessian eigenvalue along the pre-training and fine-tuning trajectories.

1. **When the basin breaks.** Three sweeps of shift strength away from the source digits:
   the rotation angle (``break_angles``, degrees added to ``source_angle``), the block size
   of a block shuffle (``break_blocks``; 8 is the whole 8x8 image, no shuffle) and the std of
   added Gaussian noise (``break_noises``, pixels in [0, 1]). At every strength the
   pre-trained LeNet is fine-tuned (``ft``, every parameter) on the shifted training digits
   with ``seeds`` data orders: the *copies*. Neyshabur et al. (2020) find that copies
   fine-tuned from one pre-trained model stay in one basin of the target loss; we test that
   claim as the shift grows:

   - the Definition 3.1 Monte Carlo test (:func:`~basinscope.analyses.basin.basin_test`) of
     ``S = conv(copies)`` on the *target* loss (``break_metric`` on the shifted test digits),
     at the smallest epsilon of condition 1 and ``delta = break_delta``;
   - the barrier (:func:`~basinscope.analyses.barrier.barrier`, ``break_barrier_definition``,
     bootstrap CI over the test digits) between every two copies on the target test digits,
     and between the pre-trained model and each copy on the source test digits (did
     fine-tuning leave the source basin?);
   - the **breaking point** (:func:`breaking_point`): the smallest strength at which the
     mean barrier, linearly interpolated between the sweep's strengths, reaches
     ``break_threshold``; its interval is a bootstrap over the units (the pairs of copies,
     or the copies) and the test digits (each unit's barrier drawn from a normal with its
     bootstrap standard error). When nothing reaches the threshold within the sweep, or the
     weakest shift already does, no point is given.

2. **lambda_max along the trajectories** (the break-even point, Jastrzebski et al. 2020).
   The top eigenvalue of the Hessian of the training loss (first ``break_hessian_examples``
   training digits, float64, Lanczos) at every pre-training checkpoint and at the
   checkpoints ``break_finetune_checkpoints`` of one fine-tuning (seed 0) on the main target
   (``target_angle``), against the stability threshold of heavy-ball SGD on a quadratic,
   ``2 (1 + momentum) / lr``. The break-even point is the first recorded step at which
   ``lambda_max`` reaches that threshold.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, StudyContext
from basinscope.experiments.stages import cached_stage, placement, stage_dir, train_stage
from basinscope.experiments.transfer_common import (
    CONDITION_KEYS,
    Pretrained,
    condition_records,
    finetune_call,
    shifted_digits,
    train_config,
)

__all__ = [
    "DEFINITIONS",
    "FIGURES",
    "KEY",
    "QUICK",
    "SMOKE",
    "TITLE",
    "Settings",
    "answers",
    "basin_flip",
    "breaking_point",
    "check",
    "first_crossing",
    "report",
    "run",
    "stability_threshold",
]

KEY = "breaks"
TITLE = 'When "staying in the basin" breaks; lambda_max along the trajectories'
FAMILIES = ("rotation", "block", "noise")
IMAGE = 8  # the digits are 8x8: block sizes divide 8, and 8 is no shuffle
FIGURES = ("break_sweep", "break_lambda_max")


@dataclass(frozen=True)
class Settings:
    """Settings of the "breaks" section (angles in degrees, steps are gradient steps)."""

    # rotation sweep: degrees added to source_angle (0: the source itself)
    break_angles: tuple[float, ...] = tuple(float(a) for a in range(0, 181, 15))
    # block-shuffle sweep: tile sizes on the 8x8 digits, weakest first (8: no shuffle)
    break_blocks: tuple[int, ...] = (8, 4, 2, 1)
    # noise sweep: std of Gaussian noise added to pixels in [0, 1], weakest first
    break_noises: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    break_metric: str = "loss"  # barriers and basin test: "loss" (cross-entropy) or "error"
    break_barrier_definition: str = "linear"  # linear, mean or midpoint (basinscope barrier)
    break_barrier_points: int = 9  # initial grid on [0, 1], refined at the worst alpha
    break_barrier_refine: int = 1  # rounds of 9 points around the worst alpha (0: none)
    break_barrier_bootstrap: int = 100  # resamples of the test digits per barrier
    break_threshold: float = 0.1  # a barrier at least this high (metric units) breaks the basin
    # other thresholds at which the breaking point is located too (how much it depends on it)
    break_other_thresholds: tuple[float, ...] = (0.05, 0.2)
    break_delta: float = 3.0  # Definition 3.1's delta (Euclidean, over all parameters)
    break_basin_samples: int = 32  # uniform points of the hull (mu, condition 1)
    break_basin_pairs: int = 32  # uniform pairs (conditions 2 and 3)
    break_resamples: int = 1000  # bootstrap resamples of the breaking point
    break_seed: int = 0  # barrier bootstraps, basin test draws, breaking-point bootstrap
    break_hessian_examples: int = 256  # first N training digits of the lambda_max loss
    break_hessian_tol: float = 1e-3  # Lanczos residual tolerance (relative)
    # steps of the fine-tuning on the target whose lambda_max is measured (<= steps)
    break_finetune_checkpoints: tuple[int, ...] = (0, 5, 10, 25, 50, 100, 150)


QUICK: dict[str, Any] = dict(
    break_angles=(0.0, 45.0, 90.0, 180.0),
    break_noises=(0.0, 0.5, 1.0),
    break_barrier_points=7,
    break_barrier_refine=1,
    break_barrier_bootstrap=50,
    break_basin_samples=10,
    break_basin_pairs=10,
    break_hessian_examples=64,
    break_hessian_tol=1e-2,
    break_finetune_checkpoints=(0, 10, 30, 60),
)
SMOKE: dict[str, Any] = dict(
    break_angles=(0.0, 90.0),
    break_blocks=(8, 2),
    break_noises=(0.0, 1.0),
    break_barrier_points=3,
    break_barrier_refine=0,
    break_barrier_bootstrap=10,
    break_basin_samples=4,
    break_basin_pairs=4,
    break_resamples=50,
    break_hessian_examples=32,
    break_hessian_tol=1e-2,
    break_finetune_checkpoints=(0, 4, 8),
)


def _increasing(key: str, values: tuple, what: str, example: str) -> None:
    if len(values) < 2 or any(b <= a for a, b in itertools.pairwise(values)):
        raise BasinscopeError(
            f"{key} {list(values)}: give at least two {what}, weakest shift first and each "
            f"once, e.g. {example}"
        )


def check(cfg: Any) -> None:
    """Refuse bad settings of the section, saying the fix."""
    from basinscope.analyses.barrier import BARRIER_DEFINITIONS, BARRIER_METRICS

    for a in cfg.break_angles:
        finite_float("break_angles", a, low=0, high=360)
    _increasing("break_angles", cfg.break_angles, "angles", "[0, 45, 90, 135, 180]")
    bad = [b for b in cfg.break_blocks if not (isinstance(b, int) and b > 0 and IMAGE % b == 0)]
    if bad:
        raise BasinscopeError(
            f"break_blocks {list(cfg.break_blocks)}: tile sizes must divide the {IMAGE}x{IMAGE} "
            f"digits (1, 2, 4 or 8), got {bad}; e.g. [8, 4, 2, 1]"
        )
    strengths = [IMAGE // b for b in cfg.break_blocks]
    _increasing("break_blocks", tuple(strengths), "tile sizes (largest first)", "[8, 4, 2, 1]")
    for s in cfg.break_noises:
        finite_float("break_noises", s, low=0)
    _increasing("break_noises", cfg.break_noises, "noise stds", "[0, 0.5, 1, 2]")
    if cfg.break_metric not in BARRIER_METRICS:
        raise BasinscopeError(
            f"break_metric must be one of {', '.join(BARRIER_METRICS)}, got {cfg.break_metric!r}"
        )
    if cfg.break_barrier_definition not in BARRIER_DEFINITIONS:
        raise BasinscopeError(
            f"break_barrier_definition must be one of {', '.join(BARRIER_DEFINITIONS)}, got "
            f"{cfg.break_barrier_definition!r}"
        )
    at_least("break_barrier_points", cfg.break_barrier_points, 3, high=10_001)
    at_least("break_barrier_refine", cfg.break_barrier_refine, 0, high=100)
    at_least("break_barrier_bootstrap", cfg.break_barrier_bootstrap, 0, high=100_000)
    at_least("break_basin_samples", cfg.break_basin_samples, 2, high=100_000)
    at_least("break_basin_pairs", cfg.break_basin_pairs, 2, high=100_000)
    at_least("break_resamples", cfg.break_resamples, 10, high=1_000_000)
    at_least("break_hessian_examples", cfg.break_hessian_examples, 1)
    for key in ("break_threshold", "break_delta", "break_hessian_tol"):
        positive_float(key, getattr(cfg, key))
    for t in cfg.break_other_thresholds:
        positive_float("break_other_thresholds", t)
    check_seed("break_seed", cfg.break_seed)
    ck = cfg.break_finetune_checkpoints
    if not ck or any(not 0 <= s <= cfg.steps for s in ck) or len(set(ck)) != len(ck):
        raise BasinscopeError(
            f"break_finetune_checkpoints {list(ck)}: give distinct steps in [0, steps] = [0, "
            f"{cfg.steps}], e.g. [0, {max(cfg.steps // 2, 1)}, {cfg.steps}]"
        )


# -- the estimators (pure functions) ----------------------------------------------------------


def first_crossing(x: Any, y: Any, threshold: float) -> tuple[str, float | None]:
    """Where the piecewise-linear curve through ``(x[i], y[i])`` (``x`` increasing) first
    reaches ``threshold``: ``("breaks", x*)`` with ``x*`` interpolated between the first
    point at or above the threshold and the one before it; ``("always", None)`` when the
    first point is already at or above it; ``("never", None)`` when no point is."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    above = np.flatnonzero(y >= threshold)
    if not len(above):
        return "never", None
    i = int(above[0])
    if i == 0:
        return "always", None
    t = (threshold - y[i - 1]) / (y[i] - y[i - 1])
    return "breaks", float(x[i - 1] + t * (x[i] - x[i - 1]))


def breaking_point(
    x: Any,
    values: list[list[float]],
    std_errors: list[list[float]] | None,
    threshold: float,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The breaking point of a sweep and its bootstrap interval.

    ``values[i]`` are the units' barriers at strength ``x[i]`` (``x`` increasing; a unit is a
    pair of copies or a copy), ``std_errors[i]`` their standard errors over the test digits
    (``None``: 0). The point is :func:`first_crossing` of the mean barrier at each strength.
    Each of ``resamples`` bootstrap resamples draws, independently at each strength, the
    units with replacement and each drawn unit's barrier from ``N(value, std_error^2)``,
    and takes the first crossing of the resampled means. The interval is the percentile
    interval at ``level`` of the crossings, where a resample that never crosses counts as
    beyond the sweep (+inf) and one that crosses at the first strength as below it (-inf):
    an end beyond the sweep is ``None`` (``ci_ends`` says which). The interval is that of
    the interpolated crossing: where between two strengths the curve really crosses is not
    measured, so ``bracket`` gives the two strengths around the point (the sweep's
    resolution). ``band`` is each
    strength's percentile interval of the resampled means. ``fractions`` counts the
    resamples by status."""
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim != 1 or len(xs) != len(values) or np.any(np.diff(xs) <= 0):
        raise BasinscopeError(
            f"breaking_point needs increasing strengths, one list of values each: got "
            f"{len(xs)} strengths and {len(values)} lists"
        )
    if any(len(v) == 0 for v in values):
        raise BasinscopeError("breaking_point needs at least one value at every strength")
    ses = std_errors if std_errors is not None else [[0.0] * len(v) for v in values]
    mean = np.array([np.mean(v) for v in values])
    status, point = first_crossing(xs, mean, threshold)
    bracket = None
    if status == "breaks":
        i = int(np.flatnonzero(mean >= threshold)[0])
        bracket = [float(xs[i - 1]), float(xs[i])]
    rng = np.random.default_rng(seed)
    curves = np.empty((resamples, len(xs)))
    for i, (v, s) in enumerate(zip(values, ses, strict=True)):
        v, s = np.asarray(v, dtype=np.float64), np.asarray(s, dtype=np.float64)
        pick = rng.integers(0, len(v), size=(resamples, len(v)))
        draws = v[pick] + s[pick] * rng.standard_normal((resamples, len(v)))
        curves[:, i] = draws.mean(axis=1)
    crossings = np.empty(resamples)
    counts = {"breaks": 0, "never": 0, "always": 0}
    for r in range(resamples):
        st, c = first_crossing(xs, curves[r], threshold)
        counts[st] += 1
        crossings[r] = c if st == "breaks" else (np.inf if st == "never" else -np.inf)
    crossings.sort()
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    lo = crossings[int(np.floor(lo_q * (resamples - 1)))]
    hi = crossings[int(np.ceil(hi_q * (resamples - 1)))]

    def end(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    def where(v: float) -> str:
        return "inside" if np.isfinite(v) else ("below the sweep" if v < 0 else "beyond the sweep")

    band = np.quantile(curves, [lo_q, hi_q], axis=0)
    return {
        "status": status,
        "point": point,
        "bracket": bracket,
        "ci": [end(lo), end(hi)],
        "ci_ends": [where(lo), where(hi)],
        "level": level,
        "threshold": threshold,
        "resamples": resamples,
        "fractions": {k: v / resamples for k, v in counts.items()},
        "x": xs.tolist(),
        "mean": mean.tolist(),
        "band": [band[0].tolist(), band[1].tolist()],
    }


def basin_flip(x: Any, holds: list[bool], supported: list[bool | None]) -> dict[str, Any]:
    """Where the Definition 3.1 verdict first flips to "not a basin" along the sweep:
    ``status`` "flips" (``between`` the last strength before it and the first failing one;
    ``supported``: the failing verdict's intervals support it), "never" (a basin at every
    strength) or "always" (not a basin at the weakest)."""
    xs = [float(v) for v in x]
    fails = [i for i, h in enumerate(holds) if not h]
    if not fails:
        return {"status": "never", "between": None, "supported": None}
    i = fails[0]
    if i == 0:
        return {"status": "always", "between": None, "supported": supported[0]}
    return {"status": "flips", "between": [xs[i - 1], xs[i]], "supported": supported[i]}


def stability_threshold(lr: float, momentum: float) -> float:
    """The largest curvature heavy-ball SGD is stable on for a quadratic: ``2 (1 + momentum)
    / lr`` (``2 / lr`` without momentum)."""
    return 2.0 * (1.0 + momentum) / lr


def break_even(steps: list[int], values: list[float], threshold: float) -> dict[str, Any]:
    """The peak of ``lambda_max`` along a trajectory and the break-even point: the first
    recorded step at which ``lambda_max >= threshold`` (``None`` when never), with the
    recorded step before it (the point lies between the two)."""
    v = np.asarray(values, dtype=np.float64)
    peak = int(np.argmax(v))
    hit = np.flatnonzero(v >= threshold)
    out: dict[str, Any] = {
        "peak_step": int(steps[peak]),
        "peak": float(v[peak]),
        "peak_ratio": float(v[peak] / threshold),
        "threshold": threshold,
        "reached": bool(len(hit)),
        "step": None,
        "after_step": None,
    }
    if len(hit):
        j = int(hit[0])
        out["step"] = int(steps[j])
        out["after_step"] = int(steps[j - 1]) if j > 0 else None
    return out


# -- the sweep --------------------------------------------------------------------------------
#: The basin test's conditions as this section keeps them (without their statements).
BREAK_CONDITION_KEYS = tuple(k for k in CONDITION_KEYS if k != "statement")


def _sweep(cfg: Any) -> dict[str, list[dict[str, Any]]]:
    """Each family's points: ``strength`` (as set), ``x`` (increasing) and the shift."""
    src = cfg.source_angle
    out: dict[str, list[dict[str, Any]]] = {}
    out["rotation"] = [
        {"strength": float(a), "x": float(a), "shift": (src + float(a), None, 0.0)}
        for a in cfg.break_angles
    ]
    out["block"] = [
        {
            "strength": int(b),
            "x": float(IMAGE // b),
            "shift": (src, None if b == IMAGE else int(b), 0.0),
        }
        for b in cfg.break_blocks
    ]
    out["noise"] = [
        {"strength": float(s), "x": float(s), "shift": (src, None, float(s))}
        for s in cfg.break_noises
    ]
    return out


FAMILY_AXES = {
    "rotation": "rotation from the source (degrees)",
    "block": "tiles per side, 8 / block size (1: no shuffle)",
    "noise": "noise std (pixels in [0, 1])",
}


def _digits(cfg: Any, shift: tuple) -> dict[str, Any]:
    rot, block, noise = shift
    return shifted_digits(cfg, rot, block=block, noise=noise)


def _barrier(a, b, data, cfg, labels) -> dict[str, Any]:
    from basinscope.analyses.barrier import barrier

    r = barrier(
        a,
        b,
        data,
        definition=cfg.break_barrier_definition,
        metric=cfg.break_metric,
        num_points=cfg.break_barrier_points,
        refine=cfg.break_barrier_refine > 0,
        refine_rounds=max(cfg.break_barrier_refine, 1),
        bootstrap=cfg.break_barrier_bootstrap,
        ci_level=cfg.ci_level,
        seed=cfg.break_seed,
        labels=labels,
        strategy=cfg.eval_strategy,
        **placement(cfg),
    )
    return {
        "models": list(labels),
        "value": r.value,
        "ci": list(r.ci) if r.ci is not None else None,
        "se": r.bootstrap_se or 0.0,
        "worst_alpha": r.worst_alpha,
        "f0": r.f0,
        "f1": r.f1,
    }


MEASURE_SETTINGS = (
    *("break_metric", "break_barrier_definition", "break_barrier_points", "break_barrier_refine"),
    *("break_barrier_bootstrap", "break_delta", "break_basin_samples", "break_basin_pairs"),
    *("break_seed", "ci_level", "eval_strategy"),
)


def _measure_call(cfg, root, pre: Pretrained, copies, names, data) -> StageCall:
    """The barriers and the basin test of one shift's copies."""
    settings = {"pretrained": pre.name, "copies": names, "source_test": pre.source["test"].name}
    settings |= {"target_test": data["test"].name, **placement(cfg)}
    settings |= {k: getattr(cfg, k) for k in MEASURE_SETTINGS}
    base = pre.model

    def compute(_d):
        from basinscope.analyses.basin import basin_test
        from basinscope.geometry import get_params, norm, sub

        labels = [f"copy {s}" for s in range(len(copies))]
        to_pre = [
            _barrier(base, c, pre.source["test"], cfg, ("pre-trained", lab))
            for c, lab in zip(copies, labels, strict=True)
        ]
        pairs = [(i, j) for i in range(len(copies)) for j in range(i + 1, len(copies))]
        between = [
            _barrier(copies[i], copies[j], data["test"], cfg, (labels[i], labels[j]))
            for i, j in pairs
        ]
        b = basin_test(
            copies,
            data["test"],
            epsilon=None,
            delta=cfg.break_delta,
            samples=cfg.break_basin_samples,
            pairs=cfg.break_basin_pairs,
            seed=cfg.break_seed,
            confidence=cfg.ci_level,
            metric=cfg.break_metric,
            labels=labels,
            **placement(cfg),
        )
        p0 = get_params(base)
        ps = [get_params(c) for c in copies]
        return {
            "barrier_pretrained": to_pre,
            "barrier_copies": between,
            "basin": {
                "set": "conv(copies)",
                "data": data["test"].name,
                "epsilon": b.epsilon,
                "epsilon_estimated": b.epsilon_estimated,
                "delta": b.delta,
                "holds": b.holds,
                "ci_supports": b.ci_supports,
                "mean_loss": b.mean_loss,
                "epsilon_range": list(b.epsilon_range),
                "affine_dimension": b.affine_dimension,
                "conditions": condition_records(b, BREAK_CONDITION_KEYS),
                "definition": b.definition,
            },
            "distance_to_pretrained": [float(norm(sub(p, p0))) for p in ps],
            "distance_between_copies": [float(norm(sub(ps[i], ps[j]))) for i, j in pairs],
        }

    def call(lg):
        return cached_stage(root, "break-measure", settings, compute, log=lg)

    return StageCall(stage_dir(root, "break-measure", settings), call)


def _lambda_call(cfg, root, name: str, template, checkpoints, steps, data) -> StageCall:
    """lambda_max of the training loss at each checkpoint of a trajectory (float64)."""
    settings = {"trajectory": name, "steps": list(steps), "data": data.name}
    settings |= {"examples": cfg.break_hessian_examples, "tol": cfg.break_hessian_tol}
    settings |= {"dtype": "float64", **placement(cfg, dtype=False)}
    states = {s: checkpoints[s] for s in steps}

    def compute(_d):
        import torch

        from basinscope.analyses.hessian import hessian_analysis

        values, converged, residuals = [], [], []
        semantics = None
        for s in steps:
            m = copy.deepcopy(template)
            m.load_state_dict(states[s])
            rep = hessian_analysis(
                m,
                data,
                k_top=1,
                k_bottom=0,
                tol=cfg.break_hessian_tol,
                trace="none",
                subset=cfg.break_hessian_examples,
                seed=cfg.break_seed,
                dtype=torch.float64,
                device=cfg.device,
            )
            values.append(float(rep.top.eigenvalues[0]))
            converged.append(bool(rep.top.converged[0]))
            residuals.append(float(rep.top.residuals[0]))
            semantics = rep.semantics
        return {
            "steps": list(steps),
            "lambda_max": values,
            "converged": converged,
            "residuals": residuals,
            "semantics": semantics,
        }

    def call(lg):
        return cached_stage(root, "break-lambda-max", settings, compute, log=lg)

    return StageCall(stage_dir(root, "break-lambda-max", settings), call)


def run(cfg: Any, ctx: StudyContext, pre: Pretrained) -> dict[str, Any]:
    root = ctx.stages_root
    sweep = _sweep(cfg)
    seeds = list(range(cfg.seeds))
    # every distinct shift once (the identity of every family is the source itself)
    shifts: dict[tuple, dict[str, Any]] = {}
    for points in sweep.values():
        for p in points:
            shifts.setdefault(p["shift"], _digits(cfg, p["shift"]))

    # -- wave 1: every fine-tuning, the trajectory run, lambda_max of pre-training ------------
    calls, keys = [], []
    for shift, d in shifts.items():
        data = {"train": d["train"], "source": pre.source["source"]}
        data |= {"eval_source": pre.source["test"], "eval_target": d["test"]}
        for s in seeds:
            calls.append(
                finetune_call(
                    cfg, root, pre.model, pre.name, "ft", {}, train_config(cfg, s), data, {}
                )
            )
            keys.append((shift, s))
    ck = tuple(sorted(cfg.break_finetune_checkpoints))
    tc = train_config(cfg, 0, checkpoint_steps=ck)
    target = pre.target
    spec = {"start": pre.name, "data": target["train"].name, "strategy": "ft"}
    traj_dir = stage_dir(
        root, "break-trajectory", {**spec, **tc.to_dict(), **placement(cfg, dtype=False)}
    )
    model = pre.model

    def traj(lg):
        return train_stage(traj_dir, model, target["train"], tc, spec, log=lg, device=cfg.device)

    calls.append(StageCall(traj_dir, traj))
    pre_steps = sorted(pre.stage.checkpoints)
    calls.append(
        _lambda_call(
            cfg,
            root,
            pre.name,
            pre.init,
            pre.stage.checkpoints,
            pre_steps,
            pre.source["train"],
        )
    )
    done = ctx.run_stages(
        calls,
        what=f"[breaks 1/2] fine-tuning {cfg.seeds} copies at each of {len(shifts)} shifts, "
        f"one fine-tuning with checkpoints, lambda_max at {len(pre_steps)} pre-training "
        "checkpoints",
    )
    copies: dict[tuple, list] = {}
    for (shift, _s), st in zip(keys, done, strict=False):
        copies.setdefault(shift, []).append(st)
    traj_stage, pre_lambda = done[len(keys)], done[len(keys) + 1]
    pre_lambda_val, pre_lambda_dir = pre_lambda

    # -- wave 2: barriers and basin tests of every shift, lambda_max of the fine-tuning -------
    calls = [
        _measure_call(
            cfg,
            root,
            pre,
            [st.model for st in copies[shift]],
            [st.run_dir.name for st in copies[shift]],
            d,
        )
        for shift, d in shifts.items()
    ]
    calls.append(
        _lambda_call(
            cfg,
            root,
            traj_stage.run_dir.name,
            pre.init,
            traj_stage.checkpoints,
            list(ck),
            target["train"],
        )
    )
    done = ctx.run_stages(
        calls,
        what=f"[breaks 2/2] barriers and the basin test at {len(shifts)} shifts, lambda_max "
        f"at {len(ck)} fine-tuning checkpoints",
    )
    measured = {shift: m for shift, m in zip(shifts, done[:-1], strict=True)}
    ft_lambda_val, ft_lambda_dir = done[-1]

    # -- the numbers --------------------------------------------------------------------------
    barrier_words = {
        "copies": f"{cfg.break_barrier_definition} {cfg.break_metric} barrier between every "
        "two copies on the shifted test digits",
        "pretrained": f"{cfg.break_barrier_definition} {cfg.break_metric} barrier between the "
        "pre-trained model and each copy on the source test digits",
    }
    families: dict[str, Any] = {}
    for fam, points in sweep.items():
        rows = []
        for p in points:
            val, mdir = measured[p["shift"]]
            sts = copies[p["shift"]]
            rows.append(
                {
                    "strength": p["strength"],
                    "x": p["x"],
                    "data": shifts[p["shift"]]["train"].name,
                    "target_accuracy": [st.info["after"]["target"]["accuracy"] for st in sts],
                    "source_accuracy": [st.info["after"]["source"]["accuracy"] for st in sts],
                    "target_accuracy_before": sts[0].info["before"]["target"]["accuracy"],
                    "barrier_copies": val["barrier_copies"],
                    "barrier_pretrained": val["barrier_pretrained"],
                    "barrier_copies_mean": float(
                        np.mean([b["value"] for b in val["barrier_copies"]])
                    ),
                    "barrier_pretrained_mean": float(
                        np.mean([b["value"] for b in val["barrier_pretrained"]])
                    ),
                    "basin": val["basin"],
                    "distance_to_pretrained": val["distance_to_pretrained"],
                    "distance_between_copies": val["distance_between_copies"],
                    "folders": {"finetune": [st.run_dir.name for st in sts], "measure": mdir.name},
                }
            )
        xs = [r["x"] for r in rows]
        breaking = {}
        for kind in ("copies", "pretrained"):
            vals = [[b["value"] for b in r[f"barrier_{kind}"]] for r in rows]
            ses = [[b["se"] for b in r[f"barrier_{kind}"]] for r in rows]

            found = [
                breaking_point(
                    xs,
                    vals,
                    ses,
                    t,
                    level=cfg.ci_level,
                    resamples=cfg.break_resamples,
                    seed=cfg.break_seed,
                )
                for t in (cfg.break_threshold, *sorted(set(cfg.break_other_thresholds)))
            ]
            breaking[kind] = found[0]
            breaking[kind]["other_thresholds"] = [
                {k: b[k] for k in ("threshold", "status", "point", "bracket", "ci", "ci_ends")}
                for b in found[1:]
            ]
        breaking["copies"]["measure"] = barrier_words["copies"]
        breaking["pretrained"]["measure"] = barrier_words["pretrained"]
        families[fam] = {
            "axis": FAMILY_AXES[fam],
            "points": rows,
            "breaking": breaking,
            "basin_flip": basin_flip(
                xs,
                [r["basin"]["holds"] for r in rows],
                [r["basin"]["ci_supports"] for r in rows],
            ),
        }

    thr_pre = stability_threshold(cfg.pretrain_lr, cfg.momentum)
    thr_ft = stability_threshold(cfg.lr, cfg.momentum)
    lam = {
        "pretrain": {
            **pre_lambda_val,
            "lr": cfg.pretrain_lr,
            "momentum": cfg.momentum,
            "threshold": thr_pre,
            "threshold_no_momentum": 2.0 / cfg.pretrain_lr,
            "loss": f"mean cross-entropy on the first {cfg.break_hessian_examples} source "
            "training digits",
            "break_even": break_even(
                pre_lambda_val["steps"], pre_lambda_val["lambda_max"], thr_pre
            ),
            "folders": {"train": pre.name, "measure": pre_lambda_dir.name},
        },
        "finetune": {
            **ft_lambda_val,
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "threshold": thr_ft,
            "threshold_no_momentum": 2.0 / cfg.lr,
            "loss": f"mean cross-entropy on the first {cfg.break_hessian_examples} target "
            f"training digits (rotated by {cfg.target_angle:g})",
            "break_even": break_even(ft_lambda_val["steps"], ft_lambda_val["lambda_max"], thr_ft),
            "folders": {"train": traj_stage.run_dir.name, "measure": ft_lambda_dir.name},
        },
    }
    return {
        "setup": {
            "families": list(FAMILIES),
            "shifts": len(shifts),
            "copies": cfg.seeds,
            "basin_set": "conv(copies): the copies fine-tuned from the pre-trained model with "
            "data orders 0..seeds-1 at one shift",
            "basin_loss": f"{cfg.break_metric} on the shifted (target) test digits",
            "barrier_copies": barrier_words["copies"],
            "barrier_pretrained": barrier_words["pretrained"],
            "threshold": cfg.break_threshold,
            "delta": cfg.break_delta,
        },
        "definitions": DEFINITIONS,
        "families": families,
        "lambda_max": lam,
    }


# -- answers ----------------------------------------------------------------------------------


def _fmt_x(fam: str, x: float | None) -> str:
    if x is None:
        return "?"
    if fam == "rotation":
        return f"{x:.0f}°"
    if fam == "block":
        return f"{x:.2g} tiles per side (block {IMAGE / x:.2g} px)"
    return f"std {x:.2g}"


KIND_WORDS = {
    "copies": "barrier between copies (target)",
    "pretrained": "barrier pre-trained → copy (source)",
}


def _kind_phrase(fam: str, kind: str, b: dict[str, Any]) -> str:
    lo, hi = b["x"][0], b["x"][-1]
    what = KIND_WORDS[kind]
    if b["status"] == "never":
        return f"{what} never within {_fmt_x(fam, lo)}..{_fmt_x(fam, hi)}"
    if b["status"] == "always":
        return f"{what} already at the weakest shift ({_fmt_x(fam, lo)})"
    ci = [
        _fmt_x(fam, c) if c is not None else e for c, e in zip(b["ci"], b["ci_ends"], strict=True)
    ]
    a, c = b["bracket"]
    return (
        f"{what} at {_fmt_x(fam, b['point'])} (between {_fmt_x(fam, a)} and {_fmt_x(fam, c)}; "
        f"interval {ci[0]} to {ci[1]})"
    )


def _family_sentence(fam: str, f: dict[str, Any]) -> str:
    parts = [_kind_phrase(fam, k, f["breaking"][k]) for k in ("copies", "pretrained")]
    flip = f["basin_flip"]
    if flip["status"] == "flips":
        sup = "" if flip["supported"] else ", not supported by its intervals"
        a, c = flip["between"]
        parts.append(
            f"Definition 3.1 verdict on conv(copies) flips between {_fmt_x(fam, a)} and "
            f"{_fmt_x(fam, c)}{sup}"
        )
    elif flip["status"] == "never":
        parts.append("conv(copies) an (eps, delta)-basin at every strength")
    else:
        parts.append("conv(copies) not an (eps, delta)-basin even at the weakest shift")
    return f"{fam}: " + ", ".join(parts)


def answers(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The "breaks" answers: where the basin breaks along each sweep, and the break-even
    point of lambda_max; ``supported`` computed from the breaking points' intervals and
    from whether lambda_max reaches the stability threshold."""
    fams = section["families"]
    thr = section["setup"]["threshold"]
    found = [(f, k, v["breaking"][k]) for f, v in fams.items() for k in ("copies", "pretrained")]
    located = [(f, k) for f, k, b in found if b["status"] == "breaks" and None not in b["ci"]]
    breaks = [(f, k) for f, k, b in found if b["status"] == "breaks"]
    supported: bool | None = True if located else (None if breaks else False)
    level = found[0][2]["level"]
    head = (
        f"The basin breaks where a mean barrier reaches {thr:g} (interpolated between the "
        f"sweep's strengths; {level:.0%} bootstrap interval over copies and test digits). "
    )
    tail = {
        True: " Located inside the sweep for: "
        + ", ".join(f"{f} ({KIND_WORDS[k]})" for f, k in located)
        + ".",
        None: " A barrier reaches the threshold, but every interval reaches outside the "
        "sweep: where cannot be told.",
        False: " No barrier reaches the threshold inside the sweeps after the weakest shift: "
        "the data locate no breaking point.",
    }[supported]
    out = [
        {
            "question": "breaks",
            "answer": head
            + "; ".join(_family_sentence(f, v) for f, v in fams.items())
            + "."
            + tail,
            "supported": supported,
            "evidence": "table 'breaking points' and figure 'break_sweep'",
        }
    ]
    lam = section["lambda_max"]
    pe, fe = lam["pretrain"]["break_even"], lam["finetune"]["break_even"]

    def line(name: str, e: dict[str, Any], lr: float) -> str:
        s = (
            f"{name}: lambda_max peaks at step {e['peak_step']} ({e['peak']:.3g}, "
            f"{e['peak_ratio']:.2f} of 2(1+beta)/lr = {e['threshold']:.3g} at lr {lr:g})"
        )
        if e["reached"]:
            s += f", reaches the threshold at step {e['step']}"
            if e["after_step"] is not None:
                s += f" (after step {e['after_step']})"
        else:
            s += ", never reaches it at the recorded steps"
        return s

    out.append(
        {
            "question": "breaks",
            "answer": "Break-even point (Jastrzebski et al. 2020; here: the first recorded step "
            "with lambda_max >= 2(1+beta)/lr): "
            + line("pre-training", pe, lam["pretrain"]["lr"])
            + "; "
            + line("fine-tuning", fe, lam["finetune"]["lr"])
            + (
                ". Pre-training reaches the break-even point."
                if pe["reached"]
                else ". Pre-training does not reach the stability threshold: no break-even "
                "point at these settings."
            ),
            "supported": bool(pe["reached"]),
            "evidence": "table 'lambda_max' and figure 'break_lambda_max'",
        }
    )
    return out


DEFINITIONS: dict[str, str] = {
    "copies": "the pre-trained LeNet fine-tuned (ft: every parameter, steps, lr, momentum of "
    "the study) on the shifted training digits with data orders 0..seeds-1",
    "strength": "rotation: degrees added to source_angle; block: the tile size of the block "
    "shuffle of the 8x8 digits (8 = none), plotted as 8 / size tiles per side; noise: std of "
    "Gaussian noise added to pixels in [0, 1] (the test digits get another draw)",
    "barrier_copies": "break_barrier_definition (default linear, Entezari et al. 2022: "
    "max_alpha f(alpha) - ((1 - alpha) f(0) + alpha f(1))) barrier of f = break_metric on the "
    "shifted test digits along the segment between two copies, with a percentile bootstrap "
    "CI over those digits; one per pair of copies",
    "barrier_pretrained": "the same barrier between the pre-trained model and a copy on the "
    "source test digits; one per copy",
    "basin": "Definition 3.1 (Neyshabur et al. 2020) Monte Carlo test of S = conv(copies) for "
    "the break_metric on the shifted test digits: epsilon = the smallest for which condition "
    "1 holds (estimated), delta = break_delta; holds = all three point verdicts, ci_supports "
    "= the normal intervals support that verdict",
    "breaking_point": "the smallest strength at which the mean barrier over the units (pairs "
    "of copies, or copies), linearly interpolated between the sweep's strengths, reaches "
    "break_threshold; none when no strength reaches it ('never') or the weakest does "
    "('always'). Interval: percentile bootstrap at ci_level over break_resamples resamples, "
    "each drawing at every strength the units with replacement and each unit's barrier from "
    "N(value, its bootstrap standard error over the test digits); resamples that never cross "
    "count as beyond the sweep",
    "other_thresholds": "the same breaking point and interval at each of "
    "break_other_thresholds (same bootstrap seed): how much the point depends on the "
    "threshold",
    "basin_flip": "the first strength at which the Definition 3.1 verdict is 'not a basin', "
    "with the strength before it",
    "lambda_max": "the top eigenvalue of the Hessian of the mean cross-entropy on the first "
    "break_hessian_examples training digits (source for pre-training, target for "
    "fine-tuning), float64, Lanczos to the relative residual break_hessian_tol",
    "threshold": "2 (1 + momentum) / lr: the largest curvature on which heavy-ball SGD with "
    "that learning rate and momentum is stable on a quadratic (2 / lr without momentum)",
    "break_even": "the first recorded step at which lambda_max >= threshold (Jastrzebski et "
    "al. 2020's break-even point, where the step becomes too large for the curvature); "
    "after_step: the recorded step before it",
}


# -- the report -------------------------------------------------------------------------------


def report(rep: Any, section: dict[str, Any], cfg: dict[str, Any], figs: Any) -> None:
    from basinscope.experiments.transfer_break_report import write_section

    write_section(rep, section, cfg, figs)
