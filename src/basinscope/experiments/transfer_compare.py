"""Section "compare" of the transfer-methods study: the new fine-tuning methods against
FT, LP, LP-FT, surgical and DFR, and where each lands relative to the pre-trained basin.

On the main shift (the source digits -> the digits rotated by ``target_angle``), from the
shared pre-trained LeNet, with ``seeds`` data orders each:

- the baselines: ``ft`` (every parameter), ``lp`` (the head), ``lp-ft`` (the head for
  ``compare_lp_steps``, then everything), ``surgical`` (the module
  ``compare_surgical_block`` only) and ``dfr`` (the head re-initialized and trained on a
  small held-out target set only: the *last* ``compare_dfr_examples`` target training
  digits; no method ever sees the test digits);
- the basin-informed methods: ``l2sp`` and ``ewc`` (penalties toward the pre-trained
  weights, EWC's weighted by the source Fisher diagonal), ``trust-region`` (the source-loss
  rise on the segment from the pre-trained weights kept below ``compare_trust_epsilon``),
  and ``ft`` with SAM and with C-Flat (flat-minimum optimizers);
- subnetworks: a mask from each landscape signal (gradient, Fisher, Hessian diagonal,
  probe) and a random one, each keeping *exactly* as many entries as the surgical block has
  parameters (:func:`~basinscope.experiments.continual_shifts.equal_count_fraction`).

Measured per method and seed: adaptation (target test accuracy after minus before),
forgetting (source test accuracy before minus after), and where the solution lands: its
parameter distance to the pre-trained weights, the ``compare_barrier_definition`` barrier
(bootstrap CI) of the source test loss on the straight path pre-trained -> fine-tuned, the
path excess of the rotated-digits study's criterion
(:data:`~basinscope.experiments.rotated_digits.PATH_CRITERION`), the source-loss rise along
the path, and the Definition 3.1 test (:func:`~basinscope.analyses.basin.basin_test`) of the
segment [pre-trained, solution] for the source test loss. A seed's solution is "in the
pre-trained basin" when its path excess is at most ``compare_basin_epsilon`` (no barrier)
and the segment is flat by Definition 3.1's condition 1 at that epsilon (the source loss
does not climb either); a method is, when every seed's is. Means with Student-t
intervals over the seeds; "clearly" means non-overlapping intervals. The answers
(:func:`answers`) are computed from these numbers by :func:`verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from basinscope._checks import at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall
from basinscope.experiments.stages import cached_stage, placement, stage_dir
from basinscope.experiments.transfer_common import finetune_call, spread, train_config

__all__ = [
    "DEFINITIONS",
    "FIGURES",
    "KEY",
    "QUICK",
    "SMOKE",
    "TITLE",
    "Settings",
    "answers",
    "check",
    "clearly_dominates",
    "method_plan",
    "report",
    "run",
    "verdict",
]

KEY = "compare"
TITLE = "New fine-tuning methods vs FT/LP/LP-FT/surgical/DFR, relative to the pre-trained basin"
SIGNALS = ("gradient", "fisher", "hessian", "probe", "random")
LENET_MODULES = ("conv1", "conv2", "fc1", "fc2")
BASELINES = ("ft", "lp", "lp-ft", "surgical", "dfr")
REGULARIZERS = ("l2sp", "ewc", "trust-region")
SHARPNESS_AWARE = {"ft-sam": "sam", "ft-cflat": "cflat"}
DIGITS_TRAIN = 1347  # scikit-learn's digits: the training split's size


@dataclass(frozen=True)
class Settings:
    """The section's settings (strengths as in the continual-shifts study)."""

    compare_surgical_block: str = "conv1"  # surgical's module; every mask keeps its count
    compare_lp_steps: int = 100  # lp-ft: steps of linear probing before the full fine-tuning
    compare_dfr_examples: int = 200  # DFR's held-out set: the last N target training digits
    compare_l2sp_strength: float = 0.1  # alpha of alpha/2 ||w - w_pre||^2
    compare_ewc_strength: float = 200.0  # alpha of alpha/2 sum F (w - w_pre)^2
    compare_fisher_examples: int = 256  # EWC: source examples of the Fisher diagonal
    compare_trust_epsilon: float = 0.1  # trust region: largest source-loss rise allowed
    compare_trust_every: int = 25  # trust region: steps between checks
    compare_sam_rho: float = 0.05  # SAM's and C-Flat's radius
    compare_mask_signals: tuple[str, ...] = SIGNALS  # masks compared at the block's count
    compare_barrier_definition: str = "linear"  # basinscope barrier: linear, mean, midpoint
    compare_barrier_metric: str = "loss"  # f on the path: "loss" (cross-entropy) or "error"
    compare_barrier_points: int = 25  # initial grid on [0, 1], refined at the worst alpha
    compare_barrier_bootstrap: int = 200  # resamples of the source test digits for the CI
    compare_basin_epsilon: float = 0.05  # path excess and Definition 3.1's epsilon (nats)
    compare_basin_delta: float = 1.0  # Definition 3.1's delta (L2 over all parameters)
    compare_basin_samples: int = 32  # Definition 3.1 test: uniform points of the segment
    compare_basin_pairs: int = 16  # Definition 3.1 test: pairs for conditions 2 and 3
    compare_seed: int = 0  # the bootstrap's generator


# --quick: 60 steps per fine-tuning (the study's), fewer probe steps and barrier points
QUICK: dict[str, Any] = dict(compare_lp_steps=40, compare_trust_every=30)
QUICK.update(compare_barrier_points=7, compare_barrier_bootstrap=50)
QUICK.update(compare_basin_samples=8, compare_basin_pairs=2)
# --smoke: every stage and figure in seconds
SMOKE: dict[str, Any] = dict(compare_lp_steps=4, compare_trust_every=4)
SMOKE.update(compare_fisher_examples=64, compare_dfr_examples=64)
SMOKE.update(compare_barrier_points=5, compare_barrier_bootstrap=20)
SMOKE.update(compare_basin_samples=4, compare_basin_pairs=2)


def check(cfg: Any) -> None:
    from basinscope.analyses.barrier import BARRIER_DEFINITIONS, BARRIER_METRICS

    if cfg.compare_surgical_block not in LENET_MODULES:
        raise BasinscopeError(
            f"compare_surgical_block {cfg.compare_surgical_block!r}: give one of the LeNet's "
            f"modules {', '.join(LENET_MODULES)}, e.g. compare_surgical_block=conv1"
        )
    sigs = cfg.compare_mask_signals
    if any(s not in SIGNALS for s in sigs) or len(set(sigs)) != len(sigs):
        raise BasinscopeError(
            f"compare_mask_signals {list(sigs)}: expected distinct values of {', '.join(SIGNALS)}"
        )
    if "random" not in sigs or len(sigs) < 2:
        raise BasinscopeError(
            f"compare_mask_signals {list(sigs)}: include 'random' (the control) and at least "
            "one landscape signal, e.g. [fisher, random]"
        )
    at_least("compare_lp_steps", cfg.compare_lp_steps, 1, high=1_000_000)
    at_least(
        "compare_dfr_examples",
        cfg.compare_dfr_examples,
        1,
        high=DIGITS_TRAIN - 1,
        high_why=f" (the target training split has {DIGITS_TRAIN:,} digits)",
        fix="e.g. compare_dfr_examples=200",
    )
    for key in ("compare_fisher_examples", "compare_trust_every"):
        at_least(key, getattr(cfg, key), 1)
    at_least("compare_barrier_points", cfg.compare_barrier_points, 3, high=10_001)
    at_least("compare_barrier_bootstrap", cfg.compare_barrier_bootstrap, 0, high=100_000)
    positive_float("compare_sam_rho", cfg.compare_sam_rho)
    for key in ("compare_l2sp_strength", "compare_ewc_strength", "compare_trust_epsilon"):
        finite_float(key, getattr(cfg, key), low=0)
    finite_float("compare_basin_epsilon", cfg.compare_basin_epsilon, low=0)
    positive_float("compare_basin_delta", cfg.compare_basin_delta)
    for key in ("compare_basin_samples", "compare_basin_pairs"):
        at_least(key, getattr(cfg, key), 2, why=" (a standard error needs two)")
    if cfg.compare_barrier_definition not in BARRIER_DEFINITIONS:
        raise BasinscopeError(
            f"compare_barrier_definition {cfg.compare_barrier_definition!r}: expected one of "
            f"{', '.join(BARRIER_DEFINITIONS)}"
        )
    if cfg.compare_barrier_metric not in BARRIER_METRICS:
        raise BasinscopeError(
            f"compare_barrier_metric {cfg.compare_barrier_metric!r}: expected one of "
            f"{', '.join(BARRIER_METRICS)}"
        )
    check_seed("compare_seed", cfg.compare_seed)


# -- the methods ------------------------------------------------------------------------------


def method_plan(cfg: Any, count: int, total: int) -> dict[str, dict[str, Any]]:
    """Every method, key -> ``label``, ``group`` (baseline, basin, sharpness-aware, mask),
    ``strategy``, its ``kwargs`` for :func:`~basinscope.training.finetune.finetune` and the
    TrainConfig ``changes``; masks keep ``count`` of the ``total`` entries."""
    from basinscope.experiments.continual_shifts import equal_count_fraction

    block = cfg.compare_surgical_block
    plan: dict[str, dict[str, Any]] = {
        "ft": dict(label="ft", group="baseline", strategy="ft", kwargs={}),
        "lp": dict(label="lp", group="baseline", strategy="lp", kwargs={}),
        "lp-ft": dict(
            label="lp-ft",
            group="baseline",
            strategy="lp-ft",
            kwargs={"lp_steps": cfg.compare_lp_steps},
        ),
        "surgical": dict(
            label=f"surgical ({block})",
            group="baseline",
            strategy="surgical",
            kwargs={"blocks": [block]},
        ),
        "dfr": dict(label="dfr", group="baseline", strategy="dfr", kwargs={}),
        "l2sp": dict(
            label="l2sp",
            group="basin",
            strategy="l2sp",
            kwargs={"penalty_strength": cfg.compare_l2sp_strength},
        ),
        "ewc": dict(
            label="ewc",
            group="basin",
            strategy="ewc",
            kwargs={
                "penalty_strength": cfg.compare_ewc_strength,
                "fisher_examples": cfg.compare_fisher_examples,
            },
        ),
        "trust-region": dict(
            label="trust-region",
            group="basin",
            strategy="trust-region",
            kwargs={
                "trust_epsilon": cfg.compare_trust_epsilon,
                "trust_every": cfg.compare_trust_every,
            },
        ),
    }
    for key, opt in SHARPNESS_AWARE.items():
        plan[key] = dict(
            label=f"ft ({'SAM' if opt == 'sam' else 'C-Flat'})",
            group="sharpness-aware",
            strategy="ft",
            kwargs={},
            changes={"sharpness_aware": opt, "sam_rho": cfg.compare_sam_rho},
        )
    frac = equal_count_fraction(count, total)
    for sig in cfg.compare_mask_signals:
        plan[f"mask-{sig}"] = dict(
            label=f"mask ({sig})",
            group="mask",
            strategy="mask",
            kwargs={"mask_signal": sig, "mask_fraction": frac},
        )
    for p in plan.values():
        p.setdefault("changes", {})
    return plan


def _dfr_set(cfg: Any, target: dict[str, Any]):
    from basinscope.data.tensordata import TensorData

    tr, n = target["train"], cfg.compare_dfr_examples
    return TensorData(tr.x[-n:], tr.y[-n:], f"{tr.name}-last{n}")


MEASURE_SETTINGS = (
    *("compare_barrier_definition", "compare_barrier_metric", "compare_barrier_points"),
    *("compare_barrier_bootstrap", "compare_seed", "ci_level", "eval_strategy"),
    *("compare_basin_epsilon", "compare_basin_delta", "compare_basin_samples"),
    "compare_basin_pairs",
)


def _lands_call(cfg: Any, root, pre, st) -> StageCall:
    """Where fine-tuned stage ``st`` lands: its distance to the pre-trained weights, the
    barrier of the source test loss on the straight path pre-trained -> fine-tuned, and the
    Definition 3.1 test of that segment for the source test loss."""
    source_test = pre.source["test"]
    settings = {"pretrained": pre.name, "finetuned": st.run_dir.name, "data": source_test.name}
    settings |= {k: getattr(cfg, k) for k in MEASURE_SETTINGS} | placement(cfg)

    def compute(_d):
        from basinscope.analyses.barrier import barrier
        from basinscope.analyses.basin import basin_test
        from basinscope.analyses.distance import parameter_distance
        from basinscope.experiments.rotated_digits import path_excess

        dist = parameter_distance(pre.model, st.model, labels=("pre-trained", "fine-tuned"))
        br = barrier(
            pre.model,
            st.model,
            source_test,
            definition=cfg.compare_barrier_definition,
            metric=cfg.compare_barrier_metric,
            num_points=cfg.compare_barrier_points,
            bootstrap=cfg.compare_barrier_bootstrap,
            ci_level=cfg.ci_level,
            seed=cfg.compare_seed,
            labels=("pre-trained", "fine-tuned"),
            strategy=cfg.eval_strategy,
            **placement(cfg),
        )
        bt = basin_test(
            [pre.model, st.model],
            source_test,
            epsilon=cfg.compare_basin_epsilon,
            delta=cfg.compare_basin_delta,
            samples=cfg.compare_basin_samples,
            pairs=cfg.compare_basin_pairs,
            seed=cfg.compare_seed,
            confidence=cfg.ci_level,
            metric="loss",
            strategy=cfg.eval_strategy,
            labels=("pre-trained", "fine-tuned"),
            **placement(cfg),
        )
        c1 = bt.condition1
        b = br.to_dict()
        return {
            "distance": dist.overall["l2"],
            "relative_distance": dist.overall["relative"],
            "distance_definition": dist.definition,
            "barrier": br.value,
            "barrier_ci": list(br.ci) if br.ci is not None else None,
            "barrier_formula": br.definition_formula,
            "path_excess": path_excess(b),
            "source_rise": float(max(br.values) - br.f0),
            "f0": br.f0,
            "f1": br.f1,
            "curve": {"alpha": br.alphas.tolist(), "value": br.values.tolist()},
            "flatness": c1.estimate,
            "flatness_ci": list(c1.ci),
            "flat": bool(c1.holds),
            "flat_ci_supports": c1.ci_supports,
            "definition31": {
                "holds": bool(bt.holds),
                "ci_supports": bool(bt.ci_supports),
                "estimates": [c.estimate for c in bt.conditions],
                "conditions_hold": [bool(c.holds) for c in bt.conditions],
                "epsilon": bt.epsilon,
                "delta": bt.delta,
                "definition": bt.definition,
            },
        }

    def call(lg):
        return cached_stage(root, "lands", settings, compute, log=lg)

    return StageCall(stage_dir(root, "lands", settings), call)


def run(cfg: Any, ctx: Any, pre: Any) -> dict[str, Any]:
    root, seeds = ctx.stages_root, range(cfg.seeds)
    model = pre.model
    total = sum(p.numel() for p in model.parameters())
    block = cfg.compare_surgical_block
    count = sum(p.numel() for n, p in model.named_parameters() if n.startswith(block + "."))
    plan = method_plan(cfg, count, total)
    src, tgt = pre.source, pre.target
    data = {"train": tgt["train"], "source": src["source"]}
    data |= {"eval_source": src["test"], "eval_target": tgt["test"]}
    dfr = _dfr_set(cfg, tgt)
    calls, keys = [], []
    for m, p in plan.items():
        d = {**data, "train": None, "dfr": dfr} if p["strategy"] == "dfr" else data
        for s in seeds:
            tc = train_config(cfg, s, **p["changes"])
            calls.append(
                finetune_call(cfg, root, model, pre.name, p["strategy"], p["kwargs"], tc, d, {})
            )
            keys.append((m, s))
    tuned = ctx.run_stages(
        calls,
        what=f"  fine-tuning: {len(plan)} methods x {cfg.seeds} seeds on the digits rotated by "
        f"{cfg.target_angle:g}",
    )
    lands = ctx.run_stages(
        [_lands_call(cfg, root, pre, st) for st in tuned],
        what="  where each solution lands: distance and source-loss barrier from the "
        "pre-trained weights",
    )
    rows = []
    for (m, s), st, (val, d) in zip(keys, tuned, lands, strict=True):
        info = st.info
        conn = bool(val["path_excess"] <= cfg.compare_basin_epsilon)
        rows.append(
            {
                "method": m,
                "seed": s,
                "trainable_params": info["trainable_params"],
                "adaptation": info["adaptation"],
                "forgetting": info["forgetting"],
                "target_accuracy": info["after"]["target"]["accuracy"],
                "source_accuracy": info["after"]["source"]["accuracy"],
                "final_train_loss": info["final_train_loss"],
                "trust_checks": info.get("trust_checks"),
                "trust_projections": info.get("trust_projections"),
                **{k: v for k, v in val.items() if k != "curve"},
                "curve": val["curve"],
                "connected": conn,
                "in_basin": conn and val["flat"],
                "folders": {"finetune": st.run_dir.name, "lands": d.name},
            }
        )
    lvl = cfg.ci_level
    methods = {}
    for m, p in plan.items():
        rs = [r for r in rows if r["method"] == m]
        methods[m] = {
            "label": p["label"],
            "group": p["group"],
            "strategy": p["strategy"],
            "settings": {**p["kwargs"], **p["changes"]},
            "trainable_params": rs[0]["trainable_params"],
            "adaptation": spread([r["adaptation"] for r in rs], lvl, low=-1.0, high=1.0),
            "forgetting": spread([r["forgetting"] for r in rs], lvl, low=-1.0, high=1.0),
            "distance": spread([r["distance"] for r in rs], lvl, low=0.0),
            "relative_distance": spread([r["relative_distance"] for r in rs], lvl, low=0.0),
            "barrier": spread([r["barrier"] for r in rs], lvl),
            "path_excess": spread([r["path_excess"] for r in rs], lvl, low=0.0),
            "source_rise": spread([r["source_rise"] for r in rs], lvl),
            "flatness": spread([r["flatness"] for r in rs], lvl, low=0.0),
            "connected_seeds": sum(r["connected"] for r in rs),
            "definition31_seeds": sum(r["definition31"]["holds"] for r in rs),
            "in_basin_seeds": sum(r["in_basin"] for r in rs),
            "in_basin": all(r["in_basin"] for r in rs),
        }
    pre_row = rows[0]
    return {
        "setup": {
            "shift": [cfg.source_angle, cfg.target_angle],
            "parameters": total,
            "surgical_block": block,
            "block_params": count,
            "mask_fraction": plan[f"mask-{cfg.compare_mask_signals[0]}"]["kwargs"]["mask_fraction"],
            "dfr_data": dfr.name,
            "dfr_examples": len(dfr),
            "seeds": cfg.seeds,
            "pretrained_source_loss": pre_row["f0"],
        },
        "criteria": {
            "barrier": f"{cfg.compare_barrier_definition} {cfg.compare_barrier_metric} barrier "
            f"({pre_row['barrier_formula']}) of the source test digits on (1 - alpha) theta_pre "
            "+ alpha theta_method, with a percentile bootstrap CI",
            "path": _path_criterion(cfg),
            "in_basin": f"in every seed ({cfg.seeds}): no barrier (path excess <= "
            f"compare_basin_epsilon = {cfg.compare_basin_epsilon:g}) and the segment [theta_pre, "
            "theta_method] flat on the source test loss by Definition 3.1's condition 1 "
            "(Neyshabur et al. 2020): E_{w ~ U(segment)} |loss(w) - mu| <= epsilon = "
            f"{cfg.compare_basin_epsilon:g} (Monte Carlo, {cfg.compare_basin_samples} points)",
            "definition31": f"all three conditions of Definition 3.1 (epsilon "
            f"{cfg.compare_basin_epsilon:g}, delta {cfg.compare_basin_delta:g}, "
            f"{cfg.compare_basin_samples} points, {cfg.compare_basin_pairs} pairs): the segment "
            "is itself a basin (flat inside, walls around); reported, not used in the verdict: "
            "a segment inside a wider flat region has no walls",
            "clearly": f"the {lvl:.0%} Student-t intervals over the seeds do not overlap",
        },
        "rows": rows,
        "methods": methods,
        "verdict": verdict(methods),
    }


def _path_criterion(cfg: Any) -> str:
    from basinscope.experiments.rotated_digits import PATH_CRITERION

    return (
        f"{PATH_CRITERION}: path excess = max over alpha in [0, 1] of f(alpha) - max(f(0), "
        f"f(1)), f = source test {cfg.compare_barrier_metric} on (1 - alpha) theta_pre + alpha "
        "theta_method; 0 when f rises or falls monotonically, positive only for a bump above "
        "both ends"
    )


# -- the verdict ------------------------------------------------------------------------------


def _side(a: dict[str, Any], b: dict[str, Any]) -> int:
    """+1 when ``a``'s interval lies wholly above ``b``'s, -1 wholly below, 0 otherwise
    (overlap, or no interval: one seed)."""
    if a["ci"] is None or b["ci"] is None:
        return 0
    if a["ci"][0] > b["ci"][1]:
        return 1
    if a["ci"][1] < b["ci"][0]:
        return -1
    return 0


def clearly_dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Method ``a`` clearly beats ``b`` on the adaptation-forgetting trade-off: clearly
    better on one (higher adaptation or lower forgetting: non-overlapping intervals) and
    not clearly worse on the other."""
    adapt, forget = _side(a["adaptation"], b["adaptation"]), _side(a["forgetting"], b["forgetting"])
    return (adapt == 1 or forget == -1) and adapt != -1 and forget != 1


def _pareto(methods: dict[str, Any]) -> list[str]:
    """The methods no other beats on both means (adaptation >=, forgetting <=, one strictly)."""

    def beats(a, b):
        aa, ab = a["adaptation"]["mean"], b["adaptation"]["mean"]
        fa, fb = a["forgetting"]["mean"], b["forgetting"]["mean"]
        return aa >= ab and fa <= fb and (aa > ab or fa < fb)

    return [m for m, v in methods.items() if not any(beats(o, v) for o in methods.values())]


def _vs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "adaptation_side": _side(a["adaptation"], b["adaptation"]),
        "forgetting_side": _side(a["forgetting"], b["forgetting"]),
        "adaptation_diff": a["adaptation"]["mean"] - b["adaptation"]["mean"],
        "forgetting_diff": a["forgetting"]["mean"] - b["forgetting"]["mean"],
        "clearly_beats": clearly_dominates(a, b),
        "clearly_beaten": clearly_dominates(b, a),
    }


def verdict(methods: dict[str, Any]) -> dict[str, Any]:
    """Both answers' numbers from the per-method summaries (``run``'s ``methods``)."""
    ft = methods["ft"]
    baselines = [m for m in BASELINES if m in methods]
    basin = {}
    for m in [*REGULARIZERS, *SHARPNESS_AWARE]:
        v = methods[m]
        vs = {b: _vs(v, methods[b]) for b in baselines if b != m}
        adapts = v["adaptation"]["ci"] is not None and v["adaptation"]["ci"][0] > 0
        less = vs["ft"]["forgetting_side"] == -1
        beaten_by = [b for b in baselines if vs[b]["clearly_beaten"]]
        success = v["in_basin"] and adapts and less and not beaten_by
        failure = (
            not v["in_basin"]
            or v["forgetting"]["mean"] >= ft["forgetting"]["mean"]
            or bool(beaten_by)
            or (v["adaptation"]["ci"] is not None and v["adaptation"]["ci"][1] <= 0)
        )
        basin[m] = {
            "label": v["label"],
            "in_basin": v["in_basin"],
            "adapts_clearly": adapts,
            "forgets_less_than_ft_clearly": less,
            "adaptation_cost": ft["adaptation"]["mean"] - v["adaptation"]["mean"],
            "adaptation_cost_clear": vs["ft"]["adaptation_side"] == -1,
            "vs": vs,
            "clearly_beaten_by": beaten_by,
            "beats_clearly": [b for b in baselines if vs[b]["clearly_beats"]],
            "helps": less and vs["ft"]["adaptation_side"] != -1,
            "success": bool(success),
            "failure": bool(failure),
        }
    regs = [basin[m] for m in REGULARIZERS]
    reg_supported = (
        True
        if any(r["success"] for r in regs)
        else False
        if all(r["failure"] for r in regs)
        else None
    )
    masks = [m for m in methods if m.startswith("mask-") and m != "mask-random"]
    sub = {}
    for m in masks:
        v = methods[m]
        refs = {"random": methods["mask-random"], "surgical": methods["surgical"]}
        vs = {k: _vs(v, r) for k, r in refs.items()}
        sub[m] = {
            "label": v["label"],
            "vs": vs,
            "success": all(x["clearly_beats"] for x in vs.values()),
            "failure": any(x["clearly_beaten"] for x in vs.values()),
        }
    sub_supported = (
        True
        if any(r["success"] for r in sub.values())
        else False
        if sub and all(r["failure"] for r in sub.values())
        else None
    )
    return {
        "basin": basin,
        "basin_regularizer_supported": reg_supported,
        "masks": sub,
        "subnetworks_supported": sub_supported,
        "pareto": _pareto(methods),
        "in_basin": [m for m, v in methods.items() if v["in_basin"]],
        "out_of_basin": [m for m, v in methods.items() if not v["in_basin"]],
    }


# -- the answers ------------------------------------------------------------------------------


def _ci(s: dict[str, Any]) -> str:
    ci = s["ci"]
    return f"{s['mean']:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _cmp(side: int, higher: str, lower: str) -> str:
    return higher if side == 1 else lower if side == -1 else "not clearly different"


def _trade(x: dict[str, Any]) -> str:
    """A comparison of two methods (:func:`_vs`) in words."""
    if x["clearly_beats"]:
        return "clearly better trade-off"
    if x["clearly_beaten"]:
        return "clearly worse trade-off"
    sides = [
        _cmp(x["adaptation_side"], "clearly higher adaptation", "clearly lower adaptation"),
        _cmp(x["forgetting_side"], "clearly more forgetting", "clearly less forgetting"),
    ]
    sides = [w for w in sides if not w.startswith("not")]
    return "a trade: " + " and ".join(sides) if sides else "cannot tell (intervals overlap)"


def _where(v: dict[str, Any], n: int) -> str:
    return (
        f"in the pre-trained basin in {v['in_basin_seeds']}/{n} seeds (no barrier in "
        f"{v['connected_seeds']}/{n}: path excess {v['path_excess']['max']:.3g} at most; "
        f"flatness {v['flatness']['mean']:.3g}, source-loss rise "
        f"{v['source_rise']['mean']:.3g}, distance {v['distance']['mean']:.3g})"
    )


def answers(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The answers to "basin-regularizer" and "subnetworks", in words, from the verdict."""
    ms, v, n = section["methods"], section["verdict"], section["setup"]["seeds"]
    ft = ms["ft"]
    clear = section["criteria"]["clearly"]
    parts = []
    for m in (*REGULARIZERS, *SHARPNESS_AWARE):
        b, x = v["basin"][m], ms[m]
        vs = b["vs"]
        base = "; ".join(f"vs {ms[k]['label']}: {_trade(vs[k])}" for k in ("lp-ft", "surgical"))
        parts.append(
            f"{b['label']}: forgetting {_ci(x['forgetting'])} vs ft {_ci(ft['forgetting'])} ("
            + _cmp(vs["ft"]["forgetting_side"], "clearly more", "clearly less")
            + f"), adaptation {_ci(x['adaptation'])} vs ft {_ci(ft['adaptation'])} (cost "
            f"{b['adaptation_cost']:+.3f}, "
            + _cmp(vs["ft"]["adaptation_side"], "clearly higher", "clearly lower")
            + f"); {base}; {_where(x, n)}."
        )
    sup = v["basin_regularizer_supported"]
    ok = [v["basin"][m]["label"] for m in REGULARIZERS if v["basin"][m]["success"]]
    head = (
        f"Yes: {', '.join(ok)} adapt(s) inside the pre-trained basin, forgetting clearly less "
        "than ft, and no baseline (ft, lp, lp-ft, surgical, dfr) clearly beats it on the "
        "adaptation-forgetting trade-off."
        if sup
        else "No: every basin-informed method (l2sp, ewc, trust-region) either leaves the "
        "pre-trained basin, forgets no less than ft on average, does not adapt, or is clearly "
        "beaten by a baseline on the adaptation-forgetting trade-off."
        if sup is False
        else "The data cannot tell: no basin-informed method (l2sp, ewc, trust-region) both "
        "forgets clearly less than ft inside the pre-trained basin and escapes being clearly "
        "beaten by a baseline, yet none clearly fails either."
    )
    flat = []
    for m in SHARPNESS_AWARE:
        b = v["basin"][m]
        flat.append(
            f"{b['label']} "
            + (
                "helps (forgets clearly less than ft, no clearly lower adaptation)"
                if b["helps"]
                else "does not clearly help (it does not forget clearly less than ft without "
                "a clearly lower adaptation)"
            )
        )
    head += " Flat-minimum optimizers: " + "; ".join(flat) + "."
    pareto = ", ".join(ms[m]["label"] for m in v["pareto"])
    reg = {
        "question": "basin-regularizer",
        "answer": f"{head} ({clear}; {section['criteria']['in_basin']}.) "
        + " ".join(parts)
        + f" Not beaten on both means by any other method (Pareto front): {pareto}. One "
        f"strength each (l2sp alpha {ms['l2sp']['settings']['penalty_strength']:g}, ewc alpha "
        f"{ms['ewc']['settings']['penalty_strength']:g}, trust-region epsilon "
        f"{ms['trust-region']['settings']['trust_epsilon']:g}): the trade-off moves with them.",
        "supported": sup,
        "evidence": "table 'every method', figures 'adaptation vs forgetting' and 'where each "
        "method lands'",
    }
    parts = []
    for m, r in v["masks"].items():
        x = ms[m]
        vs = r["vs"]
        parts.append(
            f"{r['label']}: adaptation {_ci(x['adaptation'])}, forgetting "
            f"{_ci(x['forgetting'])}; "
            + "; ".join(
                f"vs {ref}: {_trade(vs[ref])}"
                + f" (adaptation {vs[ref]['adaptation_diff']:+.3f}, forgetting "
                f"{vs[ref]['forgetting_diff']:+.3f})"
                for ref in ("random", "surgical")
            )
            + "."
        )
    rnd, surg = ms["mask-random"], ms["surgical"]
    sup = v["subnetworks_supported"]
    won = [r["label"] for r in v["masks"].values() if r["success"]]
    count = section["setup"]["block_params"]
    block = section["setup"]["surgical_block"]
    head = (
        f"Yes: {', '.join(won)} clearly beat(s) both a random mask and surgical fine-tuning "
        f"of {block} at {count} trainable entries on the adaptation-forgetting trade-off."
        if sup
        else f"No: at {count} trainable entries (the size of {block}) every landscape mask is "
        "clearly beaten by a random mask or by surgical fine-tuning on the "
        "adaptation-forgetting trade-off."
        if sup is False
        else f"The data cannot tell: at {count} trainable entries (the size of {block}) no "
        "landscape mask clearly beats both a random mask and surgical fine-tuning, and not "
        "every one is clearly beaten."
    )
    for ref, name in (("random", "a random mask"), ("surgical", "surgical fine-tuning")):
        above = [r["label"] for r in v["masks"].values() if r["vs"][ref]["adaptation_side"] == 1]
        head += (
            f" Adaptation alone, clearly higher than {name}'s: "
            + (", ".join(above) if above else "none")
            + "."
        )
    subq = {
        "question": "subnetworks",
        "answer": f"{head} ({clear}; 'better' = clearly better on adaptation or forgetting and "
        f"not clearly worse on the other.) Random mask: adaptation {_ci(rnd['adaptation'])}, "
        f"forgetting {_ci(rnd['forgetting'])}; surgical: adaptation {_ci(surg['adaptation'])}, "
        f"forgetting {_ci(surg['forgetting'])}; for scale, ft (every parameter): adaptation "
        f"{_ci(ft['adaptation'])}. " + " ".join(parts),
        "supported": sup,
        "evidence": "table 'every method' (masks rows), figure 'adaptation vs forgetting'",
    }
    return [subq, reg]


DEFINITIONS: dict[str, str] = {
    "adaptation": "target test accuracy (450 digits rotated by target_angle) after the "
    "fine-tuning minus before (the pre-trained model's)",
    "forgetting": "source test accuracy (450 digits rotated by source_angle) before minus after",
    "trainable_params": "parameter entries the method may change (a mask's kept entries, the "
    "surgical block's parameters, the head's for lp and dfr)",
    "distance": "||theta_method - theta_pre||_2 over all parameters; relative_distance: "
    "divided by ||theta_pre||_2 (basinscope.analyses.distance.parameter_distance)",
    "barrier": "compare_barrier_definition (default linear, Entezari et al. 2022: max_alpha "
    "f(alpha) - ((1 - alpha) f(0) + alpha f(1))) of f(alpha) = compare_barrier_metric on the "
    "source test digits at (1 - alpha) theta_pre + alpha theta_method, grid of "
    "compare_barrier_points refined at the worst alpha, percentile bootstrap CI over the "
    "digits (compare_barrier_bootstrap resamples)",
    "path_excess": "endpoint-max criterion of the rotated-digits study: max_alpha f(alpha) - "
    "max(f(0), f(1)) on the same curve (0 for a monotone curve)",
    "source_rise": "max_alpha f(alpha) - f(0) on the same curve: how far the source loss "
    "climbs above the pre-trained model's (the trust region's 'rise' definition, here on "
    "the test digits)",
    "connected": "a seed: path_excess <= compare_basin_epsilon (no barrier on the source path)",
    "flatness": "Definition 3.1's condition 1 (Neyshabur et al. 2020) on the segment S = "
    "[theta_pre, theta_method] for the source test cross-entropy: E_{w ~ U_S} |loss(w) - "
    "mu_S|, mu_S the mean loss on S (basinscope.analyses.basin.basin_test, Monte Carlo over "
    "compare_basin_samples uniform points)",
    "in_basin": "a seed: connected and flatness <= compare_basin_epsilon (the solution lies "
    "on the pre-trained basin's floor: the source loss neither bumps nor climbs by more than "
    "about epsilon along the way); a method: in every seed",
    "definition31": "all three conditions of Definition 3.1 on the segment (epsilon = "
    "compare_basin_epsilon, delta = compare_basin_delta): the segment is itself a basin, "
    "walls included; reported beside the verdict, not part of it",
    "clearly": "non-overlapping Student-t intervals (ci_level) over the seeds; with one seed "
    "nothing is clear",
    "clearly_beats": "clearly higher adaptation or clearly lower forgetting, and not clearly "
    "worse on the other",
    "pareto": "methods that no other method beats on both means (adaptation >=, forgetting "
    "<=, one strictly)",
    "dfr_data": "DFR's held-out set: the last compare_dfr_examples target training digits "
    "(every other method trains on all 1,347; no method sees the test digits)",
    "masks": "the top entries by each signal on the target training digits (gradient |dL/dw|, "
    "Fisher diagonal, Hutchinson |diag H|, relative change under a 20-step probe) or "
    "uniformly at random, exactly as many as compare_surgical_block has parameters",
}

FIGURES = ("compare_tradeoff", "compare_lands")


def report(rep: Any, section: dict[str, Any], cfg: dict[str, Any], figs: Any) -> None:
    from basinscope.experiments.transfer_compare_report import write_section

    write_section(rep, section, cfg, figs)
