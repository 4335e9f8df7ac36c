"""Section "fit" of the transfer-methods study: do pre-trained weights fit the target
distribution? Two experiments of the "what is being transferred" talk (Neyshabur, Sedghi and
Zhang 2020, ``../shared/talks/002_*``), on the 8x8 digits.

1. **Which pre-trained checkpoint.** From every kept pre-training checkpoint (step 0: the
   random initialization) the LeNet is fine-tuned with strategy ft (every parameter) on the
   target digits (rotated by ``target_angle``) for ``steps`` steps, one run per seed (data
   order), its target test accuracy measured every ``fit_eval_every`` steps. Against the
   checkpoint's pre-training step: the checkpoint's source test accuracy, the final target
   accuracy and the steps to reach ``fit_target_accuracy`` (:func:`steps_to_accuracy`).
2. **Block shuffle and feature reuse.** The target digits cut into b x b tiles permuted by one
   fixed permutation (seed ``fit_shuffle_seed``) for each b of ``fit_blocks`` (8: one tile,
   the unshuffled images). P-T (fine-tuned from the pre-trained model) and RI-T (trained from
   the same random initialization it was pre-trained from), ``fit_shuffle_steps`` steps each,
   every seed: final accuracies, the relative accuracy drop (:func:`relative_drop`) and the
   convergence speed (the mean training loss over the run, :func:`area_under_loss`, and the
   steps to reach ``fit_speed_fraction`` of the run's final accuracy).

The answers (:func:`verdict`) are computed from these numbers with the criteria stated in
:data:`DEFINITIONS`. Every run is a stage (:func:`~basinscope.experiments.stages.cached_stage`)
that stores its accuracy and loss curves, named by its start (the pre-training stage's folder
and the checkpoint's step), its data and its configuration; all are submitted together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, finite_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, StudyContext
from basinscope.experiments.stages import cached_stage, placement, stage_dir
from basinscope.experiments.transfer_common import (
    Pretrained,
    shifted_digits,
    spread,
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
    "area_under_loss",
    "check",
    "earliest_within",
    "interval_order",
    "relative_drop",
    "report",
    "run",
    "steps_to_accuracy",
    "verdict",
]

KEY = "fit"
TITLE = "Do pre-trained weights fit the target? Which checkpoint, and feature reuse"
FIGURES = ("fit_checkpoints", "fit_curves", "fit_shuffle", "fit_blocks")
IMAGE_SIZE = 8  # the digits are 8x8: valid block sizes divide 8


@dataclass(frozen=True)
class Settings:
    """Settings of the "fit" section (steps are gradient steps, accuracies fractions)."""

    fit_eval_every: int = 10  # steps between measurements of the target test accuracy
    fit_target_accuracy: float = 0.9  # steps to reach this target test accuracy
    fit_tolerance: float = 0.01  # "no accuracy lost": within this of the last checkpoint
    fit_blocks: tuple[int, ...] = (8, 4, 2, 1)  # block-shuffle tile sizes (8: unshuffled)
    fit_shuffle_steps: int = 300  # steps of P-T and RI-T on each block-shuffled target
    fit_shuffle_seed: int = 0  # seed of the one tile permutation
    fit_speed_fraction: float = 0.9  # steps to reach this fraction of the run's final accuracy


QUICK: dict[str, Any] = dict(fit_shuffle_steps=100, fit_blocks=(8, 2, 1), fit_target_accuracy=0.8)
SMOKE: dict[str, Any] = dict(fit_eval_every=4, fit_shuffle_steps=8, fit_blocks=(8, 1))


def check(cfg: Any) -> None:
    at_least("fit_eval_every", cfg.fit_eval_every, 1, high=1_000_000)
    at_least("fit_shuffle_steps", cfg.fit_shuffle_steps, 1, high=1_000_000)
    check_seed("fit_shuffle_seed", cfg.fit_shuffle_seed)
    for key in ("fit_target_accuracy", "fit_speed_fraction"):
        finite_float(key, getattr(cfg, key), low=0, high=1, low_open=True)
    finite_float("fit_tolerance", cfg.fit_tolerance, low=0, high=1, high_open=True)
    valid = [b for b in range(1, IMAGE_SIZE + 1) if IMAGE_SIZE % b == 0]
    blocks = list(cfg.fit_blocks)
    bad = [b for b in blocks if b not in valid]
    if bad or len(blocks) < 2 or len(set(blocks)) != len(blocks):
        raise BasinscopeError(
            f"fit_blocks {blocks}: give at least two distinct tile sizes that divide the "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} digits ({valid}), e.g. [8, 4, 2, 1] (8: unshuffled)"
        )


# -- the numbers ------------------------------------------------------------------------------


def steps_to_accuracy(steps: list[float], accuracy: list[float], threshold: float) -> int | None:
    """The first measured step whose accuracy is ``>= threshold``; None when no measurement
    reaches it ("not reached", never a number). ``steps`` are the steps at which ``accuracy``
    was measured (0 before the first update, every ``fit_eval_every`` and the last), so the
    answer is exact up to that resolution."""
    for s, a in zip(steps, accuracy, strict=True):
        if a >= threshold:
            return int(s)
    return None


def area_under_loss(losses: list[float]) -> float:
    """The area under the training-loss curve per step: the mean over the run's updates of
    the minibatch cross-entropy of each update (lower: the run converged faster)."""
    if not len(losses):
        raise BasinscopeError("area_under_loss needs at least one update's loss")
    return float(np.mean(np.asarray(losses, np.float64)))


def relative_drop(pt: float, rit: float) -> float:
    """The relative accuracy drop of Neyshabur et al. 2020: ``(acc(P-T) - acc(RI-T)) /
    acc(P-T)``, the fraction of the fine-tuned model's accuracy that training from the
    random initialization loses (0: pre-training brings nothing)."""
    if pt <= 0:
        raise BasinscopeError(f"relative_drop needs acc(P-T) > 0, got {pt!r}")
    return (pt - rit) / pt


def interval_order(a: list[float] | None, b: list[float] | None) -> bool | None:
    """True when interval ``a`` lies entirely above ``b``, False when entirely below, None when
    they overlap or either is missing (one seed: no interval)."""
    if a is None or b is None:
        return None
    if a[0] > b[1]:
        return True
    if a[1] < b[0]:
        return False
    return None


def earliest_within(steps: list[int], values: list[float | None], bound: float) -> int | None:
    """The first of ``steps`` (in order) whose value is ``>= bound`` (None values never)."""
    for s, v in zip(steps, values, strict=True):
        if v is not None and v >= bound:
            return int(s)
    return None


def _steps_summary(values: list[int | None], level: float) -> dict[str, Any]:
    """Steps to a threshold over seeds: every value (None: not reached), how many reached,
    and the mean with its interval only when every seed reached it."""
    reached = [v for v in values if v is not None]
    out: dict[str, Any] = {"values": values, "reached": len(reached), "runs": len(values)}
    out["mean"] = out["ci"] = None
    if reached and len(reached) == len(values):
        s = spread([float(v) for v in reached], level, low=0.0)
        out["mean"], out["ci"] = s["mean"], s["ci"]
    return out


def _faster(a: list[int | None], b: list[int | None]) -> bool | None:
    """True when every run of ``a`` reached the threshold before every run of ``b`` (a run
    that never reached it counts as infinitely slow), False for the reverse, None otherwise."""
    inf = float("inf")
    fa = [inf if v is None else v for v in a]
    fb = [inf if v is None else v for v in b]
    if max(fa) < min(fb):
        return True
    if max(fb) < min(fa):
        return False
    return None


# -- stages -----------------------------------------------------------------------------------


def _curve_call(cfg, root, start, start_name: str, data: dict[str, Any], tc) -> StageCall:
    """Strategy ft (every parameter trained) from ``start`` on ``data["train"]`` with the
    target test accuracy measured every ``tc.eval_every`` steps: a stage whose value holds the
    curves (no weights are kept)."""
    settings = {
        "start": start_name,
        "strategy": "ft",
        "data": data["train"].name,
        "eval": data["test"].name,
        "config": tc.to_dict(),
        **placement(cfg, dtype=False),
    }

    def compute(_d):
        from basinscope.training import train

        res = train(start, data["train"], tc, eval_data=data["test"], device=cfg.device)
        h = res.history
        return {
            "eval_step": [int(s) for s in h["eval_step"]],
            "eval_accuracy": [float(a) for a in h["eval_accuracy"]],
            "eval_loss": [float(v) for v in h["eval_loss"]],
            "train_loss": [float(v) for v in h["loss"]],
            "final_accuracy": float(h["eval_accuracy"][-1]),
            "final_loss": float(h["eval_loss"][-1]),
        }

    def call(lg):
        return cached_stage(root, "fit-curve", settings, compute, log=lg)

    return StageCall(stage_dir(root, "fit-curve", settings), call)


def _checkpoints_call(cfg, root, pre: Pretrained, steps: list[int]) -> StageCall:
    """The source and target test accuracy of every kept pre-training checkpoint."""
    settings = {
        "pretrain": pre.name,
        "steps": steps,
        "eval": [pre.source["test"].name, pre.target["test"].name],
        **placement(cfg),
    }

    def compute(_d):
        from basinscope.engine import evaluate_model

        out: dict[str, list[float]] = {k: [] for k in ("source_accuracy", "target_accuracy")}
        for s in steps:
            ev = evaluate_model(
                pre.checkpoint(s),
                {"source": pre.source["test"], "target": pre.target["test"]},
                **placement(cfg),
            )
            out["source_accuracy"].append(float(ev["source_accuracy"]))
            out["target_accuracy"].append(float(ev["target_accuracy"]))
        return out

    def call(lg):
        return cached_stage(root, "fit-checkpoints", settings, compute, log=lg)

    return StageCall(stage_dir(root, "fit-checkpoints", settings), call)


def run(cfg: Any, ctx: StudyContext, pre: Pretrained) -> dict[str, Any]:
    root, seeds = ctx.stages_root, range(cfg.seeds)
    steps = sorted(pre.stage.checkpoints)
    last = cfg.pretrain_steps
    target = {"train": pre.target["train"], "test": pre.target["test"]}
    shuffled = {
        b: shifted_digits(cfg, cfg.target_angle, block=b, seed=cfg.fit_shuffle_seed)
        for b in cfg.fit_blocks
    }
    starts = {s: (pre.checkpoint(s), f"{pre.name}@{s}") for s in steps}

    calls = [_checkpoints_call(cfg, root, pre, steps)]
    for s in steps:
        for seed in seeds:
            tc = train_config(cfg, seed, eval_every=cfg.fit_eval_every)
            calls.append(_curve_call(cfg, root, *starts[s], target, tc))
    inits = {"P-T": starts[last], "RI-T": starts[0]}
    for b in cfg.fit_blocks:
        for init in inits:
            for seed in seeds:
                tc = train_config(
                    cfg, seed, steps=cfg.fit_shuffle_steps, eval_every=cfg.fit_eval_every
                )
                calls.append(_curve_call(cfg, root, *inits[init], shuffled[b], tc))
    done = ctx.run_stages(
        calls,
        what=f"fit: {len(steps)} checkpoints x {cfg.seeds} seeds fine-tuned on the target, and "
        f"P-T/RI-T on the target block-shuffled by {list(cfg.fit_blocks)}",
    )
    (ck, ck_dir), runs = done[0], iter(done[1:])
    level = cfg.ci_level

    checkpoints = []
    for i, s in enumerate(steps):
        rs = [next(runs) for _ in seeds]
        finals = [v["final_accuracy"] for v, _ in rs]
        to = [
            steps_to_accuracy(v["eval_step"], v["eval_accuracy"], cfg.fit_target_accuracy)
            for v, _ in rs
        ]
        checkpoints.append(
            {
                "step": s,
                "source_accuracy": ck["source_accuracy"][i],
                "target_accuracy_before": ck["target_accuracy"][i],
                "final_accuracy": spread(finals, level, low=0.0, high=1.0),
                "steps_to_target": _steps_summary(to, level),
                "eval_step": rs[0][0]["eval_step"],
                "accuracy_curves": [v["eval_accuracy"] for v, _ in rs],
                "mean_train_loss": spread([area_under_loss(v["train_loss"]) for v, _ in rs]),
                "folders": [d.name for _, d in rs],
            }
        )

    blocks = []
    examples = {}
    for b in cfg.fit_blocks:
        per: dict[str, Any] = {}
        for init in inits:
            rs = [next(runs) for _ in seeds]
            finals = [v["final_accuracy"] for v, _ in rs]
            frac = [
                steps_to_accuracy(
                    v["eval_step"], v["eval_accuracy"], cfg.fit_speed_fraction * v["final_accuracy"]
                )
                for v, _ in rs
            ]
            per[init] = {
                "final_accuracy": spread(finals, level, low=0.0, high=1.0),
                "mean_train_loss": spread([area_under_loss(v["train_loss"]) for v, _ in rs], level),
                "steps_to_fraction": _steps_summary(frac, level),
                "eval_step": rs[0][0]["eval_step"],
                "accuracy_curves": [v["eval_accuracy"] for v, _ in rs],
                "folders": [d.name for _, d in rs],
            }
        pt, ri = per["P-T"], per["RI-T"]
        drops = [
            relative_drop(p, r)
            for p, r in zip(pt["final_accuracy"]["values"], ri["final_accuracy"]["values"])
        ]
        gaps = [
            r - p for p, r in zip(pt["mean_train_loss"]["values"], ri["mean_train_loss"]["values"])
        ]
        blocks.append(
            {
                "block": b,
                "tiles": (IMAGE_SIZE // b) ** 2,
                "data": shuffled[b]["train"].name,
                **per,
                "relative_drop": spread(drops, level),
                "loss_area_gap": spread(gaps, level),
            }
        )
        examples[str(b)] = shuffled[b]["test"].x[0, 0].tolist()

    out = {
        "setup": {
            "checkpoints": steps,
            "target_angle": cfg.target_angle,
            "blocks": list(cfg.fit_blocks),
            "finetune_steps": cfg.steps,
            "shuffle_steps": cfg.fit_shuffle_steps,
            "eval_every": cfg.fit_eval_every,
            "target_accuracy": cfg.fit_target_accuracy,
            "tolerance": cfg.fit_tolerance,
            "speed_fraction": cfg.fit_speed_fraction,
            "shuffle_seed": cfg.fit_shuffle_seed,
            "seeds": cfg.seeds,
            "ci_level": level,
            "strategy": "ft: every parameter trained (basinscope.training.train with the "
            "target test digits as eval_data), SGD with momentum at the study's lr",
            "speed_definitions": {
                "checkpoints": "steps_to_target",
                "shuffle": ["mean_train_loss", "steps_to_fraction"],
            },
        },
        "checkpoints_folder": ck_dir.name,
        "checkpoints": checkpoints,
        "shuffle": {
            "blocks": blocks,
            "examples": examples,
            "example_label": int(shuffled[cfg.fit_blocks[0]]["test"].y[0]),
            "example_upright": shifted_digits(cfg, cfg.source_angle)["test"].x[0, 0].tolist(),
        },
    }
    out["verdict"] = verdict(out, cfg.fit_tolerance, cfg.fit_eval_every)
    return out


# -- the answers ------------------------------------------------------------------------------


def verdict(section: dict[str, Any], tolerance: float, eval_every: int) -> dict[str, Any]:
    """The section's conclusions, from its numbers (criteria in :data:`DEFINITIONS`)."""
    cks = section["checkpoints"]
    first, last = cks[0], cks[-1]
    steps = [c["step"] for c in cks]
    lf = last["final_accuracy"]
    bound = lf["mean"] - tolerance if lf["ci"] is None else min(lf["ci"][0], lf["mean"] - tolerance)
    earliest_final = earliest_within(steps, [c["final_accuracy"]["mean"] for c in cks], bound)
    src = [c["source_accuracy"] for c in cks]
    plateau = earliest_within(steps, src, src[-1] - tolerance)
    lt = last["steps_to_target"]
    earliest_speed = None
    if lt["mean"] is not None:
        # -(steps) so that "within" is ">= bound": at most one measurement interval slower
        neg = [
            None if c["steps_to_target"]["mean"] is None else -c["steps_to_target"]["mean"]
            for c in cks
        ]
        earliest_speed = earliest_within(steps, neg, -(lt["mean"] + eval_every))
    independent = None
    if earliest_final is not None and earliest_speed is not None:
        if earliest_final != earliest_speed:
            independent = True
        elif earliest_final != steps[-1]:
            independent = False

    blocks = section["shuffle"]["blocks"]
    big = max(blocks, key=lambda r: r["block"])
    small = min(blocks, key=lambda r: r["block"])
    speed = {str(r["block"]): interval_order(r["loss_area_gap"]["ci"], [0.0, 0.0]) for r in blocks}
    return {
        "first_step": first["step"],
        "last_step": last["step"],
        "later_better_final": interval_order(lf["ci"], first["final_accuracy"]["ci"]),
        "later_faster": _faster(lt["values"], first["steps_to_target"]["values"]),
        "final_bound": bound,
        "earliest_final": earliest_final,
        "earliest_speed": earliest_speed,
        "source_plateau": plateau,
        "start_earlier": None if earliest_final is None else earliest_final < last["step"],
        "speed_independent": independent,
        "largest_block": big["block"],
        "smallest_block": small["block"],
        "drop_shrinks": interval_order(big["relative_drop"]["ci"], small["relative_drop"]["ci"]),
        "pt_better": {
            str(r["block"]): interval_order(r["relative_drop"]["ci"], [0.0, 0.0]) for r in blocks
        },
        "drops": {str(r["block"]): r["relative_drop"]["mean"] for r in blocks},
        "pt_faster": speed,
        "speed_survives": speed[str(small["block"])],
    }


def _acc(s: dict[str, Any]) -> str:
    ci = s["ci"]
    return f"{s['mean']:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _steps(s: dict[str, Any]) -> str:
    if s["reached"] == 0:
        return "not reached"
    if s["mean"] is None:
        return f"reached by {s['reached']} of {s['runs']} runs"
    return f"{s['mean']:.0f} steps"


def answers(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The "fit" question's answers, in words computed from the numbers."""
    v, cks = section["verdict"], section["checkpoints"]
    su = section["setup"]
    first, last = cks[0], cks[-1]
    thr = su["target_accuracy"]
    ev1 = "table 'Which pre-trained checkpoint', figures fit_checkpoints and fit_curves"
    ev2 = "table 'Block shuffle', figures fit_shuffle and fit_blocks"
    out = []

    fa, la = first["final_accuracy"], last["final_accuracy"]
    better = v["later_better_final"]
    out.append(
        {
            "question": "fit",
            "answer": f"Final target accuracy from the last checkpoint (step {last['step']}) "
            f"{_acc(la)} vs the random initialization (step 0) {_acc(fa)}: "
            + {
                True: "pre-trained weights fit the target better (intervals apart).",
                False: "the random initialization does better (intervals apart).",
                None: "the intervals overlap, the data cannot tell.",
            }[better],
            "supported": better,
            "evidence": ev1,
        }
    )
    faster = v["later_faster"]
    out.append(
        {
            "question": "fit",
            "answer": f"Steps to {thr:.0%} target accuracy: {_steps(last['steps_to_target'])} "
            f"from the last checkpoint vs {_steps(first['steps_to_target'])} from the random "
            "initialization: "
            + {
                True: "later checkpoints converge faster (in every seed).",
                False: "the random initialization converges faster (in every seed).",
                None: "not faster in every seed, the data cannot tell.",
            }[faster],
            "supported": faster,
            "evidence": ev1,
        }
    )
    ef = v["earliest_final"]
    if ef is None:
        txt = "no checkpoint reaches the last one's final accuracy, not even the last"
    else:
        txt = (
            f"the earliest checkpoint whose final target accuracy is within the last "
            f"checkpoint's (>= {v['final_bound']:.3f}) is step {ef} of {last['step']}"
            + (
                " (the random initialization: pre-training brings no final accuracy here)"
                if ef == 0
                else ""
            )
            + f"; the pre-training source accuracy plateaus at step {v['source_plateau']}"
        )
    out.append(
        {
            "question": "fit",
            "answer": "Starting from an earlier checkpoint without losing accuracy: "
            + txt
            + "."
            + (" One can start earlier." if v["start_earlier"] else " One cannot start earlier."),
            "supported": v["start_earlier"],
            "evidence": ev1,
        }
    )
    es, ind = v["earliest_speed"], v["speed_independent"]
    out.append(
        {
            "question": "fit",
            "answer": "Speed vs final accuracy: the final accuracy saturates at checkpoint "
            f"{ef}, the speed (steps to {thr:.0%}) at {es}: "
            + {
                True: "at different checkpoints, so the two benefits are independent.",
                False: "at the same checkpoint, so they are not independent here.",
                None: "the data cannot tell (one of them never saturates before the last "
                "checkpoint or is not reached).",
            }[ind],
            "supported": ind,
            "evidence": ev1,
        }
    )
    drops = ", ".join(f"b={b}: {d:+.3f}" for b, d in v["drops"].items())
    shr = v["drop_shrinks"]
    big = v["largest_block"]
    benefit = v["pt_better"][str(big)]
    base = (
        f" Unshuffled ({big}x{big} tiles) pre-training "
        + {
            True: "does raise the final accuracy (the drop's interval lies above 0).",
            False: "lowers the final accuracy (the drop's interval lies below 0).",
            None: f"may or may not raise the final accuracy after {su['shuffle_steps']} steps: "
            "the drop's interval contains 0, so there may be no benefit to shrink.",
        }[benefit]
    )
    out.append(
        {
            "question": "fit",
            "answer": f"Feature reuse: relative accuracy drop (P-T - RI-T) / P-T by block size "
            f"{drops}: "
            + {
                True: f"the benefit of pre-training shrinks from {v['largest_block']}x"
                f"{v['largest_block']} to {v['smallest_block']}x{v['smallest_block']} tiles "
                "(intervals apart): features are reused.",
                False: f"the benefit is larger at {v['smallest_block']}x{v['smallest_block']} "
                "tiles than unshuffled (intervals apart): not supported.",
                None: "the intervals of the largest and the smallest block overlap, the data "
                "cannot tell.",
            }[shr]
            + base,
            "supported": shr,
            "evidence": ev2,
        }
    )
    sv = v["speed_survives"]
    small = v["smallest_block"]
    out.append(
        {
            "question": "fit",
            "answer": f"Optimization speed under the strongest shuffle ({small}x{small} tiles): "
            "P-T's mean training loss (area under the loss curve per step) "
            + {
                True: "is below RI-T's (the paired interval excludes 0): the speed benefit "
                "survives shuffling (low-level statistics).",
                False: "is above RI-T's (the paired interval excludes 0): not supported.",
                None: "and RI-T's cannot be told apart (the paired interval contains 0).",
            }[sv],
            "supported": sv,
            "evidence": ev2,
        }
    )
    return out


DEFINITIONS = {
    "final_accuracy": "target test accuracy (fraction of the 450 test digits under the "
    "target shift) after the last fine-tuning step; mean and Student-t interval over seeds",
    "source_accuracy": "a pre-training checkpoint's accuracy on the 450 source test digits",
    "steps_to_target": "the first measured step (0, every fit_eval_every steps, and the "
    "last) at which the target test accuracy is >= fit_target_accuracy; 'not reached' when "
    "no measurement reaches it (never a number); the mean only when every seed reached it",
    "steps_to_fraction": "block shuffle: the first measured step at which a run's test "
    "accuracy is >= fit_speed_fraction x its own final accuracy (a speed only for runs that "
    "converged: a run still climbing reaches a fraction of its low final accuracy early)",
    "mean_train_loss": "area under the training-loss curve per step: the mean over the "
    "run's updates of the minibatch cross-entropy (lower: faster convergence)",
    "relative_drop": "(acc(P-T) - acc(RI-T)) / acc(P-T), final accuracies of the same seed "
    "(Neyshabur et al. 2020); P-T: fine-tuned from the pre-trained model, RI-T: trained from "
    "the random initialization it was pre-trained from, same steps and data order",
    "loss_area_gap": "mean_train_loss(RI-T) - mean_train_loss(P-T), paired by seed (> 0: "
    "P-T converges faster)",
    "later_better_final": "True when the last checkpoint's final-accuracy interval lies above "
    "the random initialization's, False when below, None when they overlap",
    "later_faster": "True when every seed from the last checkpoint reaches "
    "fit_target_accuracy before every seed from the random initialization (not reached = "
    "never), False for the reverse, None otherwise",
    "earliest_final": "the earliest checkpoint whose mean final accuracy is >= min(lower end "
    "of the last checkpoint's interval, its mean - fit_tolerance)",
    "earliest_speed": "the earliest checkpoint every seed of which reaches fit_target_accuracy, "
    "with mean steps_to_target <= the last checkpoint's + fit_eval_every (one measurement)",
    "source_plateau": "the earliest checkpoint whose source accuracy is >= the last "
    "checkpoint's - fit_tolerance",
    "speed_independent": "True when earliest_final and earliest_speed differ (the two benefits "
    "saturate at different checkpoints), False when they coincide before the last checkpoint, "
    "None when either is undefined or both are the last",
    "drop_shrinks": "True when the relative drop's interval at the largest block lies above "
    "the smallest block's, False when below, None when they overlap",
    "pt_better": "per block: True when the relative drop's interval lies above 0 (P-T ends "
    "more accurate than RI-T), False when below, None when it contains 0",
    "speed_survives": "True when the interval of loss_area_gap at the smallest block lies "
    "above 0, False when below, None when it contains 0",
}


def report(rep: Any, section: dict[str, Any], cfg: dict[str, Any], figs: Any) -> None:
    from basinscope.experiments.transfer_fit_report import write_section

    write_section(rep, section, cfg, figs)
