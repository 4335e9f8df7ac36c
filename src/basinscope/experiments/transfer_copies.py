"""Section "copies" of the transfer-methods study: copies from one initialization, their
mistakes, and interpolation across target domains (Neyshabur, Sedghi & Zhang 2020, *What
is being transferred in transfer learning?*, the talk ``../shared/talks/002_*``).

1. **Copies from one init.** On the target (digits rotated by ``target_angle``): P-T copies
   (fine-tuned from the pre-trained model P, data orders = the seeds) and RI-T copies
   (trained from *the same* random initialization ``pre.init``, data orders = the seeds, for
   ``copies_random_steps`` at ``copies_random_lr``). For the pairs P-T & P-T, RI-T & RI-T,
   P-T & P, RI-T & P and P-T & RI-T: the barrier on the straight line
   (:func:`~basinscope.analyses.barrier.barrier`, ``copies_barrier_definition``, of the
   test error and of the test loss, bootstrap CI over the test digits), the line itself
   extrapolated to alpha in [-1, 2] (:func:`~basinscope.analyses.interpolation.interpolate`),
   the L2 distance in parameter space (whole and per module,
   :func:`~basinscope.analyses.distance.parameter_distance`) and linear CKA per layer
   (:func:`~basinscope.analyses.similarity.cka_matrix`, ``method="linear"``).
2. **Common mistakes.** On the target test digits, for each seed s: the examples P-T_s gets
   wrong and RI-T_s right (set "P-T wrong only") and the reverse ("RI-T wrong only"); the
   Jaccard index of the mistake sets of two P-T copies against two RI-T copies; and the
   ambiguity of each example (:func:`predictive_entropy` of all fine-tuned models) compared
   between the two sets.
3. **Cross-domain interpolation.** P-T and RI-T models (seed 0) on each of
   ``copies_domains``; for each pair of domains, the two models' weights interpolated and
   evaluated on both domains' test digits along alpha; the barrier of the error on the
   union of both test sets and the *boost* (:func:`interior_boost`).

The answers (:func:`answers`) are computed from these numbers against
``copies_tolerance``: a barrier is "absent" when its bootstrap interval lies at or below the
tolerance and "present" when it lies above it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, StudyContext
from basinscope.experiments.stages import cached_stage, placement, stage_dir
from basinscope.experiments.transfer_common import (
    finetune_call,
    lenet,
    shifted_digits,
    spread,
    train_config,
)

__all__ = [
    "DEFINITIONS",
    "FIGURES",
    "KEY",
    "OTHER_INITS",
    "PAIR_KINDS",
    "QUICK",
    "SMOKE",
    "TITLE",
    "Settings",
    "answers",
    "check",
    "interior_boost",
    "jaccard",
    "mean_difference_ci",
    "parse_domain",
    "predictive_entropy",
    "report",
    "run",
]

KEY = "copies"
TITLE = "Copies from one init, their mistakes, and cross-domain interpolation"
PAIR_KINDS = ("P-T & P-T", "RI-T & RI-T", "P-T & P", "RI-T & P", "P-T & RI-T")
#: the control pairs (``copies_other_inits``): RI-T models each from its own random init
OTHER_INITS = "RI-T & RI-T (own inits)"
FIGURES = ("copies_barriers", "copies_similarity", "copies_mistakes", "copies_cross")


@dataclass(frozen=True)
class Settings:
    """Settings of the copies section (steps are gradient steps)."""

    copies_random_steps: int = 300  # RI-T: steps from the shared random init (SGD + momentum)
    copies_random_lr: float = 0.05  # RI-T: learning rate (constant)
    # control: RI-T models each from its own random init (init_seed + 1 + seed), same recipe
    copies_other_inits: bool = True
    # target domains of the cross-domain interpolation: "rot<degrees>", "block<pixels>" or
    # "rot<degrees>+block<pixels>" (digits rotated, then block-shuffled)
    copies_domains: tuple[str, ...] = ("rot30", "rot60", "rot90", "block4")
    copies_barrier_definition: str = "linear"  # basinscope barrier: linear, mean, midpoint
    copies_barrier_points: int = 25  # even grid on [0, 1], refined at the worst alpha
    copies_refine: int = 2  # rounds of 9 more points around the worst alpha (0: none)
    # P-T & P, RI-T & P and P-T & RI-T pairs of the first N seeds (0: every seed)
    copies_pair_seeds: int = 0
    copies_line_points: int = 31  # the extrapolated line: even grid on [-1, 2]
    copies_cross_points: int = 21  # cross-domain curves: even grid on [0, 1]
    copies_bootstrap: int = 200  # resamples of the test digits for every interval
    copies_tolerance: float = 0.02  # error barrier at or below this: no barrier
    copies_shown: int = 8  # example images of each mistake set in the figure
    copies_seed: int = 0  # seed of the bootstraps


QUICK: dict[str, Any] = dict(copies_random_steps=150, copies_domains=("rot30", "rot60"))
QUICK.update(copies_barrier_points=13, copies_line_points=16, copies_cross_points=11)
QUICK.update(copies_bootstrap=100, copies_refine=1, copies_pair_seeds=1)
SMOKE: dict[str, Any] = dict(copies_random_steps=10, copies_domains=("rot30", "block4"))
SMOKE.update(copies_barrier_points=5, copies_line_points=7, copies_cross_points=5)
SMOKE.update(copies_bootstrap=20, copies_shown=3, copies_refine=1)

_DOMAIN = re.compile(r"^(?:rot(-?\d+(?:\.\d+)?))?(?:\+?block(\d+))?$")


def parse_domain(text: str) -> tuple[float, int | None]:
    """``(rotation in degrees, block size or None)`` of a domain name: ``"rot30"`` is
    ``(30.0, None)``, ``"block4"`` is ``(0.0, 4)``, ``"rot30+block4"`` is ``(30.0, 4)``."""
    m = _DOMAIN.match(str(text))
    if not text or m is None or (m.group(1) is None and m.group(2) is None):
        raise BasinscopeError(
            f"copies_domains: cannot read the domain {text!r}: write rot<degrees>, "
            "block<pixels> or rot<degrees>+block<pixels>, e.g. rot30, block4, rot30+block4"
        )
    rot = float(m.group(1)) if m.group(1) is not None else 0.0
    return rot, int(m.group(2)) if m.group(2) is not None else None


def check(cfg: Any) -> None:
    from basinscope.analyses.barrier import BARRIER_DEFINITIONS

    at_least("copies_random_steps", cfg.copies_random_steps, 1, high=1_000_000)
    positive_float("copies_random_lr", cfg.copies_random_lr)
    doms = [parse_domain(d) for d in cfg.copies_domains]
    if len(doms) < 2 or len(set(doms)) != len(doms):
        raise BasinscopeError(
            f"copies_domains {list(cfg.copies_domains)}: give at least two distinct domains, "
            "e.g. [rot30, rot60, rot90]"
        )
    for rot, block in doms:
        finite_float("copies_domains rotation", rot, low=-360, high=360)
        if block is not None and (block < 1 or 8 % block):
            raise BasinscopeError(
                f"copies_domains: block{block} does not tile the 8x8 digits: use block1, "
                "block2, block4 or block8"
            )
    if cfg.copies_barrier_definition not in BARRIER_DEFINITIONS:
        raise BasinscopeError(
            f"copies_barrier_definition must be one of {', '.join(BARRIER_DEFINITIONS)}, got "
            f"{cfg.copies_barrier_definition!r}"
        )
    at_least("copies_barrier_points", cfg.copies_barrier_points, 3, high=10_001)
    at_least("copies_refine", cfg.copies_refine, 0, high=10)
    at_least("copies_pair_seeds", cfg.copies_pair_seeds, 0, high=cfg.seeds)
    at_least("copies_line_points", cfg.copies_line_points, 4, high=10_001)
    if (cfg.copies_line_points - 1) % 3:
        raise BasinscopeError(
            f"copies_line_points={cfg.copies_line_points} puts alpha 0 and 1 off the even "
            "grid on [-1, 2]: give 3k + 1 points, e.g. 31"
        )
    at_least("copies_cross_points", cfg.copies_cross_points, 3, high=10_001)
    at_least("copies_bootstrap", cfg.copies_bootstrap, 0, high=100_000)
    at_least("copies_shown", cfg.copies_shown, 1, high=100)
    finite_float("copies_tolerance", cfg.copies_tolerance, low=0, high=1)
    check_seed("copies_seed", cfg.copies_seed)


# -- numbers from predictions and curves --------------------------------------------------------


def jaccard(a: Any, b: Any) -> float | None:
    """Jaccard index |A ∩ B| / |A ∪ B| of two sets given as boolean masks of equal length
    (``None`` when both are empty: the index is undefined)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise BasinscopeError(f"jaccard needs masks of one shape, got {a.shape} and {b.shape}")
    union = int((a | b).sum())
    return None if union == 0 else int((a & b).sum()) / union


def predictive_entropy(probs: Any) -> np.ndarray:
    """The entropy (nats) of the mean predictive distribution of M models, per example:
    :math:`H(\\bar p(x)) = -\\sum_c \\bar p_c \\log \\bar p_c` with
    :math:`\\bar p = \\frac1M \\sum_m p_m(x)`; ``probs`` has shape ``(M, N, C)``."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 3:
        raise BasinscopeError(f"probs must have shape (models, examples, classes), got {p.shape}")
    mean = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(mean > 0, mean * np.log(mean), 0.0)
    return -terms.sum(axis=1)


def interior_boost(alphas: Any, values: Any) -> tuple[float, float]:
    """The boost of a curve on [0, 1]: :math:`\\max_{0 < \\alpha < 1} f(\\alpha) -
    \\max(f(0), f(1))` and the alpha where it is reached (positive: some interpolated point
    beats both endpoints). Needs 0, 1 and at least one point between them."""
    a, v = np.asarray(alphas, np.float64), np.asarray(values, np.float64)
    inside = (a > 0) & (a < 1)
    if 0.0 not in a or 1.0 not in a or not inside.any():
        raise BasinscopeError(
            "interior_boost needs alpha 0, alpha 1 and a point between them, e.g. "
            "np.linspace(0, 1, 21)"
        )
    ends = max(v[a == 0.0][0], v[a == 1.0][0])
    i = int(np.argmax(np.where(inside, v, -np.inf)))
    return float(v[i] - ends), float(a[i])


def mean_difference_ci(
    x: Any, y: Any, *, bootstrap: int, level: float, seed: int
) -> tuple[float | None, list[float] | None]:
    """mean(x) - mean(y) and its percentile bootstrap interval at ``level`` (x and y
    resampled independently, ``bootstrap`` times); ``(None, None)`` when one is empty,
    no interval without resamples."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not len(x) or not len(y):
        return None, None
    diff = float(x.mean() - y.mean())
    if bootstrap < 1:
        return diff, None
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(len(x), size=(bootstrap, len(x)))].mean(1)
    by = y[rng.integers(len(y), size=(bootstrap, len(y)))].mean(1)
    q = np.quantile(bx - by, [(1 - level) / 2, (1 + level) / 2])
    return diff, [float(q[0]), float(q[1])]


def _jaccard_gap(wrong_pt, wrong_ri, pairs, bootstrap, level, seed):
    """Mean Jaccard index of the P-T pairs minus that of the RI-T pairs, with a percentile
    bootstrap interval over the test examples (the same resample for every pair)."""

    def gap(idx):
        pt = [jaccard(wrong_pt[i][idx], wrong_pt[j][idx]) for i, j in pairs]
        ri = [jaccard(wrong_ri[i][idx], wrong_ri[j][idx]) for i, j in pairs]
        pt, ri = [v for v in pt if v is not None], [v for v in ri if v is not None]
        return float(np.mean(pt) - np.mean(ri)) if pt and ri else None

    n = len(wrong_pt[0])
    value = gap(np.arange(n))
    if value is None or bootstrap < 1:
        return value, None
    rng = np.random.default_rng(seed)
    draws = [gap(rng.integers(n, size=n)) for _ in range(bootstrap)]
    draws = [d for d in draws if d is not None]
    q = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return value, [float(q[0]), float(q[1])]


# -- stages -------------------------------------------------------------------------------------


def _domain_data(cfg, name: str) -> dict[str, Any]:
    rot, block = parse_domain(name)
    return shifted_digits(cfg, rot, block=block)


def _barrier_settings(cfg) -> dict[str, Any]:
    """The barrier settings of a pair's and a cross-domain stage (part of their hashes)."""
    return {
        "definition": cfg.copies_barrier_definition,
        "points": cfg.copies_barrier_points,
        "refine": cfg.copies_refine,
        "bootstrap": cfg.copies_bootstrap,
        "ci_level": cfg.ci_level,
        "seed": cfg.copies_seed,
        "strategy": cfg.eval_strategy,
        **placement(cfg),
    }


def _pair_call(cfg, root, a, b, kind, test) -> StageCall:
    """Barriers (error and loss, bootstrap CI), the line on [-1, 2], distance and CKA of one
    pair of models on the target test digits."""
    (ma, na), (mb, nb) = a, b
    settings = {
        "a": na,
        "b": nb,
        "kind": kind,
        "data": test.name,
        "line_points": cfg.copies_line_points,
        **_barrier_settings(cfg),
    }
    where = placement(cfg)

    def compute(_d):
        from basinscope.analyses.barrier import barrier
        from basinscope.analyses.distance import parameter_distance
        from basinscope.analyses.interpolation import interpolate
        from basinscope.analyses.similarity import cka_matrix

        out: dict[str, Any] = {"kind": kind, "models": [na, nb]}
        for metric in ("error", "loss"):
            br = barrier(
                ma,
                mb,
                test,
                definition=cfg.copies_barrier_definition,
                metric=metric,
                num_points=cfg.copies_barrier_points,
                refine=cfg.copies_refine > 0,
                refine_rounds=max(cfg.copies_refine, 1),
                bootstrap=cfg.copies_bootstrap,
                ci_level=cfg.ci_level,
                seed=cfg.copies_seed,
                labels=(f"{kind}: a", f"{kind}: b"),
                strategy=cfg.eval_strategy,
                **where,
            )
            out[metric] = {
                "barrier": br.value,
                "ci": list(br.ci) if br.ci is not None else None,
                "worst_alpha": br.worst_alpha,
                "f0": br.f0,
                "f1": br.f1,
                "definition": br.definition,
                "formula": br.definition_formula,
            }
        line = interpolate(
            ma,
            mb,
            {"target": test},
            alphas=np.linspace(-1.0, 2.0, cfg.copies_line_points),
            strategy=cfg.eval_strategy,
            **where,
        )
        ds = line.dataset
        out["line"] = {
            "alpha": ds["alpha"].values.tolist(),
            "accuracy": ds["target_accuracy"].values.tolist(),
            "loss": ds["target_loss"].values.tolist(),
        }
        dist = parameter_distance(ma, mb)
        out["distance"] = {
            "whole": dist.overall["l2"],
            **{m: s["l2"] for m, s in dist.per_module.items()},
        }
        cka = cka_matrix(ma, mb, test, method="linear", device=cfg.device)
        out["cka"] = cka.diagonal()
        out["cka_method"] = cka.method
        return out

    def call(lg):
        return cached_stage(root, "copies-pair", settings, compute, log=lg)

    return StageCall(stage_dir(root, "copies-pair", settings), call)


def _mistakes_call(cfg, root, pre, pts, ris, test) -> StageCall:
    """Per-example predictions of P and every copy on the target test digits: the mistake
    sets, their Jaccard indices, the ambiguity, and the examples shown."""
    settings = {
        "pre": pre.name,
        "pt": [n for _, n in pts],
        "ri": [n for _, n in ris],
        "data": test.name,
        "bootstrap": cfg.copies_bootstrap,
        "ci_level": cfg.ci_level,
        "seed": cfg.copies_seed,
        "shown": cfg.copies_shown,
        **placement(cfg),
    }

    def compute(_d):
        from basinscope.analyses.calibration import log_probabilities

        models = [m for m, _ in pts] + [m for m, _ in ris]
        logp, y = log_probabilities(models, test, device=cfg.device, dtype=cfg.dtype)
        probs = np.exp(logp)
        k = len(pts)
        pred = probs.argmax(-1)
        wrong = pred != y[None, :]
        w_pt, w_ri = wrong[:k], wrong[k:]
        amb = predictive_entropy(probs)
        pairs = list(itertools.combinations(range(k), 2))
        jac = {
            "P-T & P-T": [jaccard(w_pt[i], w_pt[j]) for i, j in pairs],
            "RI-T & RI-T": [jaccard(w_ri[i], w_ri[j]) for i, j in pairs],
            "P-T & RI-T": [jaccard(w_pt[s], w_ri[s]) for s in range(k)],
        }
        gap, gap_ci = _jaccard_gap(
            w_pt, w_ri, pairs, cfg.copies_bootstrap, cfg.ci_level, cfg.copies_seed
        )
        only_pt = w_pt & ~w_ri  # P-T_s wrong, RI-T_s right
        only_ri = ~w_pt & w_ri
        a_pt = np.concatenate([amb[only_pt[s]] for s in range(k)])
        a_ri = np.concatenate([amb[only_ri[s]] for s in range(k)])
        diff, diff_ci = mean_difference_ci(
            a_pt, a_ri, bootstrap=cfg.copies_bootstrap, level=cfg.ci_level, seed=cfg.copies_seed
        )
        median = float(np.median(amb))

        def summary(a):
            return {
                "count": len(a),
                "mean_ambiguity": float(a.mean()) if len(a) else None,
                "easy_fraction": float((a < median).mean()) if len(a) else None,
            }

        def shown(mask):
            idx = np.flatnonzero(mask)[: cfg.copies_shown]
            return [
                {
                    "index": int(i),
                    "label": int(y[i]),
                    "pt": int(pred[0, i]),
                    "ri": int(pred[k, i]),
                    "ambiguity": float(amb[i]),
                    "image": np.round(test.x[i, 0].numpy().astype(np.float64), 4).tolist(),
                }
                for i in idx
            ]

        return {
            "accuracy": {
                "P-T": [float(1 - w.mean()) for w in w_pt],
                "RI-T": [float(1 - w.mean()) for w in w_ri],
            },
            "mistakes": {"P-T": [int(w.sum()) for w in w_pt], "RI-T": [int(w.sum()) for w in w_ri]},
            "jaccard": jac,
            "jaccard_gap": gap,
            "jaccard_gap_ci": gap_ci,
            "only_pt_wrong": summary(a_pt),
            "only_ri_wrong": summary(a_ri),
            "all_examples": {"count": len(amb), "mean_ambiguity": float(amb.mean())},
            "median_ambiguity": median,
            "ambiguity_gap": diff,
            "ambiguity_gap_ci": diff_ci,
            "examples": {"only_pt_wrong": shown(only_pt[0]), "only_ri_wrong": shown(only_ri[0])},
        }

    def call(lg):
        return cached_stage(root, "copies-mistakes", settings, compute, log=lg)

    return StageCall(stage_dir(root, "copies-mistakes", settings), call)


def _cross_call(cfg, root, family, da, db, a, b) -> StageCall:
    """Interpolation between the models of two domains: accuracy on each domain along alpha,
    the error barrier on the union of both test sets (bootstrap CI) and the boost."""
    (ma, na), (mb, nb) = a, b
    ta, tb = _domain_data(cfg, da)["test"], _domain_data(cfg, db)["test"]
    settings = {
        "family": family,
        "a": na,
        "b": nb,
        "data": [ta.name, tb.name],
        "cross_points": cfg.copies_cross_points,
        **_barrier_settings(cfg),
    }
    where = placement(cfg)

    def compute(_d):
        import torch

        from basinscope.analyses.barrier import barrier
        from basinscope.analyses.interpolation import interpolate
        from basinscope.data.tensordata import TensorData

        alphas = np.linspace(0.0, 1.0, cfg.copies_cross_points)
        land = interpolate(
            ma, mb, {"da": ta, "db": tb}, alphas=alphas, strategy=cfg.eval_strategy, **where
        )
        ds = land.dataset
        acc = {da: ds["da_accuracy"].values, db: ds["db_accuracy"].values}
        union_acc = (acc[da] * len(ta) + acc[db] * len(tb)) / (len(ta) + len(tb))
        union = TensorData(torch.cat([ta.x, tb.x]), torch.cat([ta.y, tb.y]), f"{ta.name}+{tb.name}")
        br = barrier(
            ma,
            mb,
            union,
            definition=cfg.copies_barrier_definition,
            metric="error",
            num_points=cfg.copies_barrier_points,
            refine=cfg.copies_refine > 0,
            refine_rounds=max(cfg.copies_refine, 1),
            bootstrap=cfg.copies_bootstrap,
            ci_level=cfg.ci_level,
            seed=cfg.copies_seed,
            labels=(da, db),
            strategy=cfg.eval_strategy,
            **where,
        )
        boost, at = interior_boost(alphas, union_acc)
        per = {d: dict(zip(("boost", "alpha"), interior_boost(alphas, acc[d]))) for d in acc}
        return {
            "family": family,
            "domains": [da, db],
            "models": [na, nb],
            "alpha": alphas.tolist(),
            "accuracy": {d: v.tolist() for d, v in acc.items()},
            "union_accuracy": union_acc.tolist(),
            "barrier": br.value,
            "barrier_ci": list(br.ci) if br.ci is not None else None,
            "barrier_alpha": br.worst_alpha,
            "barrier_definition": br.definition,
            "barrier_formula": br.definition_formula,
            "boost": boost,
            "boost_alpha": at,
            "domain_boost": per,
        }

    def call(lg):
        return cached_stage(root, "copies-cross", settings, compute, log=lg)

    return StageCall(stage_dir(root, "copies-cross", settings), call)


# -- the section --------------------------------------------------------------------------------


def run(cfg: Any, ctx: StudyContext, pre: Any) -> dict[str, Any]:
    root, seeds = ctx.stages_root, range(cfg.seeds)
    target = f"rot{cfg.target_angle:g}"
    init_name = f"{pre.name}@step0"  # the pre-training's checkpoint 0 is the shared random init

    def data(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "train": d["train"],
            "source": pre.source["source"],
            "eval_source": pre.source["test"],
            "eval_target": d["test"],
        }

    def pt_call(d, s):
        tc = train_config(cfg, s)
        return finetune_call(cfg, root, pre.model, pre.name, "ft", {}, tc, data(d), {})

    def ri_call(d, s):
        tc = train_config(cfg, s, steps=cfg.copies_random_steps, lr=cfg.copies_random_lr)
        return finetune_call(cfg, root, pre.init, init_name, "ft", {}, tc, data(d), {})

    def other_call(d, s):
        seed = cfg.init_seed + 1 + s
        tc = train_config(cfg, s, steps=cfg.copies_random_steps, lr=cfg.copies_random_lr)
        start = f"random init: lenet width {cfg.width}, init_seed {seed}"
        return finetune_call(cfg, root, lenet(cfg, seed), start, "ft", {}, tc, data(d), {})

    # -- 1. every training at once: the copies on the target, seed 0 on every domain ----------
    plan: dict[tuple[str, str, int], StageCall] = {}
    for s in seeds:
        plan[("P-T", target, s)] = pt_call(pre.target, s)
        plan[("RI-T", target, s)] = ri_call(pre.target, s)
        if cfg.copies_other_inits:
            plan[("RI-T own init", target, s)] = other_call(pre.target, s)
    for dom in cfg.copies_domains:
        d = _domain_data(cfg, dom)
        for fam, make in (("P-T", pt_call), ("RI-T", ri_call)):
            plan.setdefault((fam, _same(cfg, dom, target), 0), make(d, 0))
    keys, calls, seen = [], [], {}
    for key, call in plan.items():
        if call.folder not in seen:
            seen[call.folder] = len(calls)
            calls.append(call)
        keys.append((key, seen[call.folder]))
    done = ctx.run_stages(
        calls,
        what=f"  training: {cfg.seeds} P-T and {cfg.seeds} RI-T copies on the target "
        f"({target}), and both on the domains {', '.join(cfg.copies_domains)}",
    )
    trained = {key: done[i] for key, i in keys}

    def model(fam, dom, s):
        st = trained[(fam, dom, s)]
        return st.model, st.run_dir.name

    # -- 2. every measurement at once -------------------------------------------------------
    test = pre.target["test"]
    P = (pre.model, pre.name)
    pt = [model("P-T", target, s) for s in seeds]
    ri = [model("RI-T", target, s) for s in seeds]
    pairs: list[tuple[str, Any, Any, list[int]]] = []
    for i, j in itertools.combinations(seeds, 2):
        pairs.append(("P-T & P-T", pt[i], pt[j], [i, j]))
        pairs.append(("RI-T & RI-T", ri[i], ri[j], [i, j]))
    if cfg.copies_other_inits:
        own = [model("RI-T own init", target, s) for s in seeds]
        for i, j in itertools.combinations(seeds, 2):
            pairs.append((OTHER_INITS, own[i], own[j], [i, j]))
    for s in seeds[: cfg.copies_pair_seeds or None]:
        pairs.append(("P-T & P", pt[s], P, [s]))
        pairs.append(("RI-T & P", ri[s], P, [s]))
        pairs.append(("P-T & RI-T", pt[s], ri[s], [s]))
    doms = [_same(cfg, d, target) for d in cfg.copies_domains]
    cross = [(fam, da, db) for da, db in itertools.combinations(doms, 2) for fam in ("P-T", "RI-T")]
    m_calls = [_pair_call(cfg, root, a, b, kind, test) for kind, a, b, _ in pairs]
    m_calls.append(_mistakes_call(cfg, root, pre, pt, ri, test))
    m_calls += [
        _cross_call(cfg, root, fam, da, db, model(fam, da, 0), model(fam, db, 0))
        for fam, da, db in cross
    ]
    measured = ctx.run_stages(
        m_calls,
        what="  measuring: barriers, lines, distances and CKA of every pair; mistakes; "
        "cross-domain interpolations",
    )
    n = len(pairs)
    pair_rows = []
    for (_kind, _a, _b, ss), (val, d) in zip(pairs, measured[:n], strict=True):
        pair_rows.append({**val, "seeds": ss, "folder": d.name})
    mistakes, mdir = measured[n]
    cross_rows = [{**val, "folder": d.name} for val, d in measured[n + 1 :]]

    summary = {}
    for kind in (*PAIR_KINDS, OTHER_INITS):
        rows = [r for r in pair_rows if r["kind"] == kind]
        if not rows:
            continue
        layers = list(rows[0]["cka"])
        modules = list(rows[0]["distance"])
        summary[kind] = {
            "pairs": len(rows),
            "error_barrier": spread([r["error"]["barrier"] for r in rows], cfg.ci_level),
            "error_barrier_ci_high": max(_high(r["error"]) for r in rows),
            "error_barrier_ci_low": min(_low(r["error"]) for r in rows),
            "loss_barrier": spread([r["loss"]["barrier"] for r in rows], cfg.ci_level),
            "distance": {m: spread([r["distance"][m] for r in rows]) for m in modules},
            "cka": {m: spread([r["cka"][m] for r in rows]) for m in layers},
        }
    fams = ("P-T", "RI-T", "RI-T own init") if cfg.copies_other_inits else ("P-T", "RI-T")
    accuracy = {
        fam: spread([trained[(fam, target, s)].info["after"]["target"]["accuracy"] for s in seeds])
        for fam in fams
    }
    domain_acc = {
        fam: {d: trained[(fam, d, 0)].info["after"]["target"]["accuracy"] for d in doms}
        for fam in ("P-T", "RI-T")
    }
    return {
        "target": target,
        "domains": doms,
        "accuracy": accuracy,
        "domain_accuracy": domain_acc,
        "pairs": pair_rows,
        "summary": summary,
        "mistakes": {**mistakes, "folder": mdir.name},
        "cross": cross_rows,
        "tolerance": cfg.copies_tolerance,
        "definition": cfg.copies_barrier_definition,
        "ci_level": cfg.ci_level,
        "folders": {
            f"{fam} {dom} seed {s}": trained[(fam, dom, s)].run_dir.name for fam, dom, s in plan
        },
    }


def _same(cfg, dom: str, target: str) -> str:
    """The target's name for a domain that is the target (``rot60.0`` -> ``rot60``)."""
    rot, block = parse_domain(dom)
    if block is None and rot == cfg.target_angle:
        return target
    return dom


def _low(b: dict[str, Any]) -> float:
    return b["ci"][0] if b.get("ci") is not None else b["barrier"]


def _high(b: dict[str, Any]) -> float:
    return b["ci"][1] if b.get("ci") is not None else b["barrier"]


# -- answers ------------------------------------------------------------------------------------


def _basin_claim(low_group, high_group, tol):
    """(supported, below, above): is every barrier of ``low_group`` absent (interval at or
    below ``tol``) and every one of ``high_group`` present (interval above ``tol``)? False
    when one contradicts it clearly, None when an interval straddles the tolerance."""
    lo_ok = all(_high(b) <= tol for b in low_group)
    lo_bad = any(_low(b) > tol for b in low_group)
    hi_ok = all(_low(b) > tol for b in high_group)
    hi_bad = any(_high(b) <= tol for b in high_group)
    if lo_bad or hi_bad:
        return False
    return True if lo_ok and hi_ok else None


def _fmt_ci(ci) -> str:
    return "no interval" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def answers(section: dict[str, Any]) -> list[dict[str, Any]]:
    tol, lvl = section["tolerance"], f"{section['ci_level']:.0%}"
    out = []
    # 1. copies from one init
    rows = section["pairs"]
    pt = [r["error"] for r in rows if r["kind"] == "P-T & P-T"]
    ri = [r["error"] for r in rows if r["kind"] == "RI-T & RI-T"]
    sup = _basin_claim(pt, ri, tol)
    s = section["summary"]

    def bars(kind):
        v = s[kind]
        return (
            f"{kind} error barrier {v['error_barrier']['mean']:.3f} (max {v['error_barrier']['max']:.3f}, "
            f"{lvl} bootstrap intervals between {v['error_barrier_ci_low']:.3f} and "
            f"{v['error_barrier_ci_high']:.3f})"
        )

    verdict = {
        True: "yes: the P-T copies are in one basin and the RI-T copies from the same random "
        "init are not",
        False: "no: "
        + (
            "the P-T copies are not in one basin"
            if any(_low(b) > tol for b in pt)
            else "the RI-T copies from the same random init are in one basin too"
            if any(_high(b) <= tol for b in ri)
            else "the RI-T copies are in one basin"
        ),
        None: "cannot tell: an interval straddles the tolerance",
    }[sup]
    out.append(
        {
            "question": "fit",
            "answer": f"Do P-T copies share one basin of the target loss while RI-T copies from "
            f"one random init do not? {verdict} ({bars('P-T & P-T')}; {bars('RI-T & RI-T')}; "
            f"between the families, {bars('P-T & RI-T')}"
            + (f"; control, {bars(OTHER_INITS)}" if OTHER_INITS in s else "")
            + f"; absent: interval at or below {tol:g}, present: above).",
            "supported": sup,
            "evidence": "the pair table and the barrier curves with extrapolation",
        }
    )
    # 2. mistakes
    m = section["mistakes"]
    gap, ci = m["jaccard_gap"], m["jaccard_gap_ci"]
    sup = _ci_sign(gap, ci)
    jpt = [v for v in m["jaccard"]["P-T & P-T"] if v is not None]
    jri = [v for v in m["jaccard"]["RI-T & RI-T"] if v is not None]
    out.append(
        {
            "question": "fit",
            "answer": "Do two P-T copies make more similar mistakes than two RI-T copies? "
            + {
                True: "yes",
                False: "no: the RI-T copies' mistakes overlap more",
                None: "cannot tell",
            }[sup]
            + f" (Jaccard index of the mistake sets: P-T {_mean(jpt)}, RI-T {_mean(jri)}; "
            f"difference {_num(gap)}, {lvl} bootstrap interval {_fmt_ci(ci)}).",
            "supported": sup,
            "evidence": "the mistakes table",
        }
    )
    a, b = m["only_pt_wrong"], m["only_ri_wrong"]
    gap, ci = m["ambiguity_gap"], m["ambiguity_gap_ci"]
    sup = _ci_sign(gap, ci)
    out.append(
        {
            "question": "fit",
            "answer": "Are the digits only P-T gets wrong more ambiguous than those only RI-T "
            "gets wrong (the talk: P-T's own mistakes are ambiguous samples, RI-T's include "
            "easy ones)? "
            + {True: "yes", False: "no: the reverse", None: "cannot tell"}[sup]
            + f" (mean ambiguity {_num(a['mean_ambiguity'])} over {a['count']} against "
            f"{_num(b['mean_ambiguity'])} over {b['count']}, all digits "
            f"{m['all_examples']['mean_ambiguity']:.3f}; difference {_num(gap)}, {lvl} "
            f"bootstrap interval {_fmt_ci(ci)}; easy, below the median: "
            f"{_num(a['easy_fraction'])} against {_num(b['easy_fraction'])}).",
            "supported": sup,
            "evidence": "the mistakes table and the example images",
        }
    )
    # 3. cross-domain
    cp = [c for c in section["cross"] if c["family"] == "P-T"]
    cr = [c for c in section["cross"] if c["family"] == "RI-T"]
    as_b = [{"barrier": c["barrier"], "ci": c["barrier_ci"]} for c in cp]
    as_r = [{"barrier": c["barrier"], "ci": c["barrier_ci"]} for c in cr]
    sup = _basin_claim(as_b, as_r, tol)
    boosts = [c for c in cp if c["boost"] > tol]
    out.append(
        {
            "question": "fit",
            "answer": "Are the P-T models of different target domains in one shared basin "
            "(no barrier between them) while the RI-T ones are not? "
            + {True: "yes", False: "no", None: "cannot tell"}[sup]
            + " (error barrier on the union of both domains' test digits: P-T "
            + ", ".join(f"{'/'.join(c['domains'])} {c['barrier']:.3f}" for c in cp)
            + "; RI-T "
            + ", ".join(f"{'/'.join(c['domains'])} {c['barrier']:.3f}" for c in cr)
            + f"; a boost above {tol:g}, an interpolated model beating both ends on the "
            f"union, for {len(boosts)} of {len(cp)} P-T pairs and "
            f"{sum(c['boost'] > tol for c in cr)} of {len(cr)} RI-T pairs).",
            "supported": sup,
            "evidence": "the cross-domain table and curves",
        }
    )
    broken = [c for c in cp if _low({"barrier": c["barrier"], "ci": c["barrier_ci"]}) > tol]
    held = [c for c in cp if _high({"barrier": c["barrier"], "ci": c["barrier_ci"]}) <= tol]
    sup = True if broken else (False if len(held) == len(cp) else None)
    out.append(
        {
            "question": "breaks",
            "answer": "Does the shared basin of the P-T models break between some of the "
            "target domains? "
            + {True: "yes", False: "no: no pair of domains has a barrier", None: "cannot tell"}[sup]
            + " (barrier present between "
            + (", ".join("/".join(c["domains"]) for c in broken) or "none")
            + "; absent between "
            + (", ".join("/".join(c["domains"]) for c in held) or "none")
            + f"; tolerance {tol:g}).",
            "supported": sup,
            "evidence": "the cross-domain table",
        }
    )
    return out


def _ci_sign(value, ci) -> bool | None:
    """True when the interval lies above 0, False below, None otherwise (or no value)."""
    if value is None:
        return None
    lo, hi = ci if ci is not None else (value, value)
    return True if lo > 0 else False if hi < 0 else None


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _mean(v) -> str:
    return _num(float(np.mean(v)) if v else None)


DEFINITIONS: dict[str, str] = {
    "P-T": "a copy fine-tuned on the target from the pre-trained model P (every parameter, "
    "steps and lr of the study, data order = its seed)",
    "RI-T": "a copy trained on the target from the random initialization P started from "
    "(shared by every RI-T copy), copies_random_steps steps at copies_random_lr, data order "
    "= its seed",
    "RI-T own init": "the control (copies_other_inits): trained like RI-T but each from its "
    "own random initialization, init_seed + 1 + its seed",
    "error_barrier": "copies_barrier_definition (default linear, Entezari et al. 2022: "
    "max_alpha f(alpha) - ((1 - alpha) f(0) + alpha f(1))) of f = test error (1 - accuracy) "
    "on the target test digits along (1 - alpha) theta_A + alpha theta_B, alpha in [0, 1] "
    "(even grid refined at the worst alpha); percentile bootstrap interval over the digits",
    "loss_barrier": "the same with f = mean cross-entropy",
    "line": "test accuracy and loss along (1 - alpha) theta_A + alpha theta_B for alpha on an "
    "even grid of [-1, 2] (extrapolated beyond both models)",
    "distance": "L2 norm of theta_A - theta_B, of all parameters (whole) and of each module's",
    "cka": "linear CKA (Kornblith et al. 2019) of the two models' outputs of each layer on "
    "the target test digits (flattened per example, float64)",
    "jaccard": "|A ∩ B| / |A ∪ B| of the sets of target test digits two models get wrong",
    "jaccard_gap": "mean Jaccard index of the P-T & P-T pairs minus that of the RI-T & RI-T "
    "pairs, with a percentile bootstrap interval over the test digits",
    "ambiguity": "entropy (nats) of the mean softmax of all P-T and RI-T copies on the digit: "
    "H(mean_m p_m(x)); 0: every copy is sure of one class, ln 10 = 2.303 at most",
    "only_pt_wrong": "for each seed s the digits P-T_s gets wrong and RI-T_s right, pooled "
    "over the seeds (a digit counts once per seed)",
    "only_ri_wrong": "the same with the roles swapped",
    "easy_fraction": "fraction of a set whose ambiguity is below the median over all test digits",
    "ambiguity_gap": "mean ambiguity of only_pt_wrong minus that of only_ri_wrong, percentile "
    "bootstrap interval (each set resampled)",
    "cross_barrier": "error barrier (copies_barrier_definition) between the seed-0 models of "
    "two domains on the union of both domains' test digits",
    "boost": "max over 0 < alpha < 1 of the accuracy on the union of both domains' test "
    "digits minus the better endpoint's; positive: an interpolated model beats both",
    "absent/present": "a barrier is absent when its bootstrap interval lies at or below "
    "copies_tolerance and present when it lies above; otherwise undecided",
}


def report(rep: Any, section: dict[str, Any], cfg: dict[str, Any], figs: Any) -> None:
    from basinscope.experiments.transfer_copies_report import write_section

    write_section(rep, section, cfg, figs)
