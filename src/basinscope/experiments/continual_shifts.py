"""The continual-shifts study (issue 17's methods): learning rotations one after another,
and subnetworks chosen from the loss landscape.

1. **Continual learning across shifts.** A LeNet is pre-trained on upright 8x8 digits (task
   0, rotation ``angles[0]``), then fine-tuned on the digits rotated by ``angles[1]``, then
   by ``angles[2]``, ... : each stage starts from the previous stage's weights and trains on
   the next rotation only. Each *method* is a fine-tuning strategy of
   :func:`~basinscope.training.finetune.finetune` (``ft``, ``l2sp``, ``ewc``,
   ``trust-region``, ``mask``), and ``ft`` is also run with each sharpness-aware optimizer
   (``sam``, ``cflat``: :class:`~basinscope.training.TrainConfig`'s ``sharpness_aware``).
   The anchor of ``l2sp``, ``ewc`` and ``trust-region`` is the *previous stage's* weights,
   and their source data (EWC's Fisher, the trust region's barrier) is the first
   ``source_examples`` training digits of the *previous task* only: no memory of older
   tasks is kept (not Online EWC, no replay), so each penalty protects the task just left.
   ``mask`` trains the top ``mask_fraction`` of entries by ``mask_signal`` on the new task.
   Measured for every stage's solution: the test accuracy on every task (the accuracy
   matrix), the adaptive worst-case sharpness on its own task's training digits (Kwon et
   al. 2021 with eta = 0: scale-invariant), and the barrier (``barrier_definition`` of
   :func:`~basinscope.analyses.barrier.barrier`, with a bootstrap CI) between consecutive
   solutions on the union of both tasks' test digits.
2. **Subnetworks from the landscape.** From the pre-trained model, one shift (``angles[0]``
   -> ``shift_angle``): masks by each of ``mask_signals`` (gradient, Fisher, Hessian
   diagonal, probe, random) against module-level surgical fine-tuning of each of
   ``surgical_blocks``, *at equal trainable-parameter counts* (the mask keeps exactly as
   many entries as the block has parameters), over ``seeds`` data orders.
3. The conclusions (:func:`verdict`) are computed from these numbers.

Every fine-tuning and every measurement is a stage stored in a folder named by a hash of its
settings (which include the folders of the stages it depends on); a continual stage names
the previous stage's folder, so the sequences are computed wave by wave (all methods' stage 1
with every subnetwork run, then all stage 2, ...), then every measurement at once.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    train_stage,
)
from basinscope.experiments.transfer_common import (
    finetune_call,
    pretrain_config,
    spread,
    train_config,
)

__all__ = [
    "DEFINITIONS",
    "STUDY",
    "ContinualShiftsConfig",
    "average_forgetting",
    "equal_count_fraction",
    "learning_accuracy",
    "method_names",
    "run",
    "verdict",
]

NAME = "continual-shifts"
CONTINUAL_STRATEGIES = ("ft", "l2sp", "ewc", "trust-region", "mask")
OPTIMIZERS = ("sgd", "sam", "cflat")
OPTIMIZER_NAMES = {"sgd": "SGD", "sam": "SAM", "cflat": "C-Flat"}
SIGNALS = ("gradient", "fisher", "hessian", "probe", "random")
LENET_MODULES = ("conv1", "conv2", "fc1", "fc2")


@dataclass(frozen=True)
class ContinualShiftsConfig:
    """Settings of the continual-shifts study (steps are gradient steps, angles degrees)."""

    angles: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0)  # the tasks, in order; 0: pre-training
    width: int = 2  # LeNet width multiplier (21,410 parameters at 2)
    init_seed: int = 0  # the pre-trained model's initialization
    pretrain_steps: int = 600  # SGD with momentum on the first task
    pretrain_lr: float = 0.05
    steps: int = 150  # steps of every later stage (and of every subnetwork run)
    lr: float = 0.02  # learning rate of every later stage (SGD with momentum, constant)
    batch_size: int = 64
    momentum: float = 0.9
    seeds: int = 2  # data orders 0..seeds-1 of every fine-tuning (and of the random masks)
    strategies: tuple[str, ...] = CONTINUAL_STRATEGIES  # continual methods (SGD)
    optimizers: tuple[str, ...] = OPTIMIZERS  # ft is also run with each of these
    sam_rho: float = 0.05  # SAM's and C-Flat's radius rho
    l2sp_strength: float = 0.1  # alpha of alpha/2 ||w - w_prev||^2
    ewc_strength: float = 200.0  # alpha of alpha/2 sum F (w - w_prev)^2 (600 diverges at lr 0.02)
    fisher_examples: int = 256  # EWC: previous-task examples of the Fisher diagonal
    trust_epsilon: float = 0.1  # trust region: the largest previous-task loss rise allowed
    trust_every: int = 25  # trust region: steps between checks
    source_examples: int = 512  # previous-task training digits of EWC and the trust region
    mask_signal: str = "fisher"  # the continual mask method's signal
    mask_fraction: float = 0.1  # the continual mask method's trainable fraction
    # -- subnetworks --
    shift_angle: float = 60.0  # the one shift of the subnetwork comparison (from angles[0])
    surgical_blocks: tuple[str, ...] = ("conv1", "conv2")  # each sets one trainable count
    mask_signals: tuple[str, ...] = SIGNALS  # compared with surgical at each count
    # -- measurements --
    sharpness_rho: float = 0.5  # adaptive sharpness: ||delta / |w| ||_2 <= rho
    ascent_steps: int = 10  # projected gradient-ascent steps of the sharpness
    ascent_restarts: int = 1
    sharpness_examples: int = 512  # first N training digits of the solution's own task
    sharpness_seed: int = 0
    barrier_definition: str = "linear"  # "linear", "mean" or "midpoint" (basinscope barrier)
    barrier_metric: str = "loss"  # "loss" (cross-entropy) or "error"
    barrier_points: int = 25  # initial grid on [0, 1], refined at the worst alpha
    barrier_bootstrap: int = 200  # resamples of the test digits for the CI
    ci_level: float = 0.95
    clear_margin: float = 0.0  # "clearly": the seeds' ranges are apart by more than this
    eval_strategy: str = "loop"  # engine: "loop" or "vmap" (slower for this CNN), never timed
    # where pre-training, fine-tuning, sharpness and barriers compute (cpu, cuda, cuda:N, mps)
    device: str = DEFAULT_DEVICE
    # precision of the evaluations (accuracies, sharpness, barriers): float32 or float64;
    # training and fine-tuning are float32
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        from basinscope.analyses.barrier import BARRIER_DEFINITIONS, BARRIER_METRICS

        if len(self.angles) < 2:
            raise BasinscopeError(
                f"angles {list(self.angles)}: give at least two tasks, e.g. [0, 30, 60, 90]"
            )
        if len(set(self.angles)) != len(self.angles):
            raise BasinscopeError(f"angles {list(self.angles)}: each angle may appear once")
        for a in (*self.angles, self.shift_angle):
            finite_float("angles", a, low=-360, high=360)
        if self.shift_angle == self.angles[0]:
            raise BasinscopeError(
                f"shift_angle {self.shift_angle:g} is the pre-training angle: give a shift"
            )
        for key, values, valid in (
            ("strategies", self.strategies, CONTINUAL_STRATEGIES),
            ("optimizers", self.optimizers, OPTIMIZERS),
            ("mask_signals", self.mask_signals, SIGNALS),
            ("surgical_blocks", self.surgical_blocks, LENET_MODULES),
        ):
            bad = [v for v in values if v not in valid]
            if bad or len(set(values)) != len(values):
                raise BasinscopeError(
                    f"{key} {list(values)}: expected distinct values of {', '.join(valid)}"
                )
        if "ft" not in self.strategies or "sgd" not in self.optimizers:
            raise BasinscopeError(
                "strategies must include 'ft' and optimizers 'sgd': ft with SGD is the "
                "baseline every method is compared with"
            )
        if "random" not in self.mask_signals:
            raise BasinscopeError("mask_signals must include 'random' (the control)")
        if self.mask_signal not in SIGNALS:
            raise BasinscopeError(f"mask_signal must be one of {', '.join(SIGNALS)}")
        at_least("width", self.width, 1, high=64)
        at_least("seeds", self.seeds, 1, high=100)
        for key in ("pretrain_steps", "steps"):
            at_least(key, getattr(self, key), 1, high=1_000_000)
        for key in ("batch_size", "fisher_examples", "trust_every", "source_examples"):
            at_least(key, getattr(self, key), 1)
        for key in ("ascent_steps", "ascent_restarts", "sharpness_examples"):
            at_least(key, getattr(self, key), 1)
        at_least("barrier_points", self.barrier_points, 3, high=10_001)
        at_least("barrier_bootstrap", self.barrier_bootstrap, 0, high=100_000)
        for key in ("pretrain_lr", "lr", "sam_rho", "sharpness_rho"):
            positive_float(key, getattr(self, key))
        for key in ("l2sp_strength", "ewc_strength", "trust_epsilon", "clear_margin"):
            finite_float(key, getattr(self, key), low=0)
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        finite_float("mask_fraction", self.mask_fraction, low=0, high=1, low_open=True)
        finite_float("ci_level", self.ci_level, low=0, high=1, low_open=True, high_open=True)
        if self.barrier_definition not in BARRIER_DEFINITIONS:
            raise BasinscopeError(
                f"barrier_definition must be one of {', '.join(BARRIER_DEFINITIONS)}"
            )
        if self.barrier_metric not in BARRIER_METRICS:
            raise BasinscopeError(f"barrier_metric must be one of {', '.join(BARRIER_METRICS)}")
        for key in ("init_seed", "sharpness_seed"):
            check_seed(key, getattr(self, key))


# The reduced version (--quick): under a minute on 2 cores.
QUICK: dict[str, Any] = dict(pretrain_steps=200, steps=40, trust_every=20, ascent_steps=3)
QUICK.update(barrier_points=9, barrier_bootstrap=50, sharpness_examples=128)
# The smoke version (tests, pipeline checks): every stage and figure, in seconds.
SMOKE: dict[str, Any] = dict(angles=(0.0, 45.0, 90.0), shift_angle=45.0, width=1)
SMOKE.update(pretrain_steps=30, steps=8, trust_every=4, surgical_blocks=("conv1",))
SMOKE.update(fisher_examples=64, source_examples=128, sharpness_examples=64, ascent_steps=2)
SMOKE.update(barrier_points=5, barrier_bootstrap=20, figure_formats=("png",))


# -- helpers ----------------------------------------------------------------------------------


def method_names(cfg: ContinualShiftsConfig) -> dict[str, str]:
    """The continual methods, key -> label: ft with each optimizer, then each other
    strategy (with SGD)."""
    out = {f"ft-{o}": f"ft ({OPTIMIZER_NAMES[o]})" for o in cfg.optimizers}
    for s in cfg.strategies:
        if s != "ft":
            out[s] = f"mask ({cfg.mask_signal})" if s == "mask" else s
    return out


def _method(key: str) -> tuple[str, str]:
    """(strategy, optimizer) of a method key."""
    return ("ft", key[3:]) if key.startswith("ft-") else (key, "sgd")


def equal_count_fraction(count: int, total: int) -> float:
    """The ``mask_fraction`` for which :func:`~basinscope.training.constraints.top_mask` keeps
    exactly ``count`` of ``total`` entries (it keeps ``ceil(fraction * total)``)."""
    if not 0 < count <= total:
        raise BasinscopeError(f"a mask of {count} of {total} entries is not possible")
    return (count - 0.5) / total


def average_forgetting(acc: list[list[float]]) -> float:
    """Average forgetting (Chaudhry et al. 2018) of an accuracy matrix ``acc[i][j]`` (task
    i's test accuracy after stage j, T tasks and stages): the mean over the tasks i < T - 1
    of max_{i <= j <= T - 2} acc[i][j] - acc[i][T - 1]."""
    t = len(acc)
    if t < 2:
        return 0.0
    return float(np.mean([max(acc[i][i : t - 1]) - acc[i][t - 1] for i in range(t - 1)]))


def learning_accuracy(acc: list[list[float]]) -> float:
    """The mean over the stages j >= 1 of acc[j][j]: each new task's test accuracy just after
    it was learned (plasticity; Riemer et al. 2019's learning accuracy, without task 0)."""
    t = len(acc)
    return float(np.mean([acc[j][j] for j in range(1, t)]))


def _digits(cfg: ContinualShiftsConfig) -> dict[str, Any]:
    from basinscope.data import load_digits, rotate
    from basinscope.data.tensordata import TensorData

    tr, te = load_digits("train"), load_digits("test")
    angles = sorted({*cfg.angles, cfg.shift_angle})
    out: dict[str, Any] = {}
    for a in angles:
        out[a] = {
            "train": TensorData(rotate(tr.x, a), tr.y, f"digits-train-rot{a:g}"),
            "test": TensorData(rotate(te.x, a), te.y, f"digits-test-rot{a:g}"),
            "source": TensorData(
                rotate(tr.x[: cfg.source_examples], a),
                tr.y[: cfg.source_examples],
                f"digits-train-rot{a:g}-first{cfg.source_examples}",
            ),
        }
    return out


def _lenet(cfg: ContinualShiftsConfig):
    from basinscope.models import build_model

    return build_model("lenet", {"width": cfg.width}, init_seed=cfg.init_seed)


def _tc(cfg: ContinualShiftsConfig, seed: int, optimizer: str = "sgd"):
    extra = {} if optimizer == "sgd" else {"sharpness_aware": optimizer, "sam_rho": cfg.sam_rho}
    return train_config(cfg, seed, **extra)


def _strategy_kwargs(cfg: ContinualShiftsConfig, strategy: str) -> dict[str, Any]:
    if strategy == "l2sp":
        return {"penalty_strength": cfg.l2sp_strength}
    if strategy == "ewc":
        return {"penalty_strength": cfg.ewc_strength, "fisher_examples": cfg.fisher_examples}
    if strategy == "trust-region":
        return {"trust_epsilon": cfg.trust_epsilon, "trust_every": cfg.trust_every}
    if strategy == "mask":
        return {"mask_signal": cfg.mask_signal, "mask_fraction": cfg.mask_fraction}
    return {}


MEASURE_SETTINGS = (
    *("sharpness_rho", "ascent_steps", "ascent_restarts", "sharpness_examples"),
    *("sharpness_seed", "barrier_definition", "barrier_metric", "barrier_points"),
    *("barrier_bootstrap", "ci_level", "eval_strategy"),
)


def _measure_call(cfg, root, model, name, prev, prev_name, task: int, digits) -> StageCall:
    """Accuracy on every task's test digits, sharpness on task ``task``'s training digits,
    and (with ``prev``) the barrier from ``prev`` on the union of tasks task-1 and task."""
    angles = cfg.angles
    settings = {"solution": name, "previous": prev_name, "task": angles[task]}
    settings |= {k: getattr(cfg, k) for k in MEASURE_SETTINGS}
    settings |= {"tests": [digits[a]["test"].name for a in angles], **placement(cfg)}

    def compute(_d):
        import torch

        from basinscope.analyses import adaptive_sharpness
        from basinscope.analyses.barrier import barrier
        from basinscope.data.tensordata import TensorData
        from basinscope.engine import evaluate_model

        where = placement(cfg)
        ev = evaluate_model(
            model, {f"task{i}": digits[a]["test"] for i, a in enumerate(angles)}, **where
        )
        out: dict[str, Any] = {
            "accuracy": [float(ev[f"task{i}_accuracy"]) for i in range(len(angles))],
            "loss": [float(ev[f"task{i}_loss"]) for i in range(len(angles))],
        }
        sharp = adaptive_sharpness(
            model,
            digits[angles[task]]["train"],
            rho=cfg.sharpness_rho,
            norm="l2",
            eta=0.0,
            kind="worst",
            steps=cfg.ascent_steps,
            restarts=cfg.ascent_restarts,
            seed=cfg.sharpness_seed,
            subset=cfg.sharpness_examples,
            strategy=cfg.eval_strategy,
            **where,
        )
        out["sharpness"] = sharp.value
        out["sharpness_definition"] = sharp.definition
        if prev is not None:
            a, b = digits[angles[task - 1]]["test"], digits[angles[task]]["test"]
            union = TensorData(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), f"{a.name}+{b.name}")
            br = barrier(
                prev,
                model,
                union,
                definition=cfg.barrier_definition,
                metric=cfg.barrier_metric,
                num_points=cfg.barrier_points,
                bootstrap=cfg.barrier_bootstrap,
                ci_level=cfg.ci_level,
                seed=cfg.sharpness_seed,
                labels=(f"stage {task - 1}", f"stage {task}"),
                strategy=cfg.eval_strategy,
                **where,
            )
            out["barrier"] = br.value
            out["barrier_ci"] = list(br.ci) if br.ci is not None else None
            out["barrier_alpha"] = br.worst_alpha
            out["barrier_curve"] = {"alpha": br.alphas.tolist(), "value": br.values.tolist()}
            out["barrier_formula"] = br.definition_formula
        return out

    def call(lg):
        return cached_stage(root, "measure", settings, compute, log=lg)

    return StageCall(stage_dir(root, "measure", settings), call)


# -- the study --------------------------------------------------------------------------------


def run(cfg: ContinualShiftsConfig, ctx: StudyContext) -> dict[str, Any]:
    root, angles = ctx.stages_root, cfg.angles
    digits = _digits(cfg)
    init = _lenet(cfg)
    total = sum(p.numel() for p in init.parameters())
    counts = {
        b: sum(p.numel() for n, p in init.named_parameters() if n.startswith(b + "."))
        for b in cfg.surgical_blocks
    }

    # -- 1. pre-training on the first task ----------------------------------------------------
    pc = pretrain_config(cfg, (0, cfg.pretrain_steps))
    first = digits[angles[0]]["train"]
    pspec = {"model": "lenet", "width": cfg.width, "init_seed": cfg.init_seed, "data": first.name}
    pre_dir = stage_dir(root, "pretrain", {**pspec, **pc.to_dict(), **placement(cfg, dtype=False)})

    def pre_call(lg):
        return train_stage(
            pre_dir, init, first, pc, pspec, progress=ctx.progress, log=lg, device=cfg.device
        )

    (pre,) = ctx.run_stages(
        [StageCall(pre_dir, pre_call)],
        what=f"[1/3] pre-training a LeNet on digits rotated by {angles[0]:g} ({cfg.pretrain_steps} steps)",
    )

    # -- 2. the sequences, stage by stage; every subnetwork run with stage 1 -------------------
    methods = method_names(cfg)
    seeds = range(cfg.seeds)
    chains = {(m, s): [(pre.model, pre.run_dir.name, {})] for m in methods for s in seeds}
    sub_plan: list[tuple[str, str, int]] = []
    for j in range(1, len(angles)):
        prev, cur = digits[angles[j - 1]], digits[angles[j]]
        data = {"train": cur["train"], "source": prev["source"]}
        data |= {"eval_source": prev["test"], "eval_target": cur["test"]}
        calls, keys = [], []
        for m in methods:
            strategy, opt = _method(m)
            for s in seeds:
                start, start_name = chains[(m, s)][-1][:2]
                calls.append(
                    finetune_call(
                        cfg,
                        root,
                        start,
                        start_name,
                        strategy,
                        _strategy_kwargs(cfg, strategy),
                        _tc(cfg, s, opt),
                        data,
                        {},
                    )
                )
                keys.append((m, s))
        n_seq = len(calls)
        if j == 1:
            src, tgt = digits[angles[0]], digits[cfg.shift_angle]
            sdata = {"train": tgt["train"], "source": src["source"]}
            sdata |= {"eval_source": src["test"], "eval_target": tgt["test"]}
            for block in cfg.surgical_blocks:
                frac = equal_count_fraction(counts[block], total)
                plan = [("surgical", {"blocks": [block]})]
                plan += [
                    ("mask", {"mask_signal": sig, "mask_fraction": frac})
                    for sig in cfg.mask_signals
                ]
                for strategy, kw in plan:
                    for s in seeds:
                        calls.append(
                            finetune_call(
                                cfg,
                                root,
                                pre.model,
                                pre.run_dir.name,
                                strategy,
                                kw,
                                _tc(cfg, s),
                                sdata,
                                {"budget": block},
                            )
                        )
                        sub_plan.append((block, kw.get("mask_signal", "surgical"), s))
        what = f"[2/3] stage {j}: every method on digits rotated by {angles[j]:g}"
        if j == 1:
            what += f", and {len(sub_plan)} subnetwork runs ({angles[0]:g} -> {cfg.shift_angle:g})"
        done = ctx.run_stages(calls, what=what)
        for key, st in zip(keys, done[:n_seq], strict=True):
            chains[key].append((st.model, st.run_dir.name, st.info))
        if j == 1:
            sub_done = done[n_seq:]

    # -- 3. every solution measured --------------------------------------------------------------
    calls = [_measure_call(cfg, root, pre.model, pre.run_dir.name, None, None, 0, digits)]
    slots = []
    for (m, s), chain in chains.items():
        for j in range(1, len(angles)):
            model, name = chain[j][0], chain[j][1]
            prev_model, prev_name = chain[j - 1][0], chain[j - 1][1]
            calls.append(_measure_call(cfg, root, model, name, prev_model, prev_name, j, digits))
            slots.append((m, s, j))
    done = ctx.run_stages(
        calls,
        what="[3/3] accuracies on every task, sharpness of every solution and the barrier "
        "between consecutive solutions",
    )
    pre_m, pre_m_dir = done[0]
    measured = {}
    for (m, s, j), (val, d) in zip(slots, done[1:], strict=True):
        measured[(m, s, j)] = (val, d.name)

    # -- the numbers --------------------------------------------------------------------------
    continual = {}
    for m, label in methods.items():
        runs = []
        for s in seeds:
            acc = [[0.0] * len(angles) for _ in angles]  # acc[task][stage]
            for i in range(len(angles)):
                acc[i][0] = pre_m["accuracy"][i]
            stages = [
                {
                    "stage": 0,
                    "angle": angles[0],
                    "sharpness": pre_m["sharpness"],
                    "folders": {"train": pre.run_dir.name, "measure": pre_m_dir.name},
                }
            ]
            for j in range(1, len(angles)):
                val, mdir = measured[(m, s, j)]
                info = chains[(m, s)][j][2]
                for i in range(len(angles)):
                    acc[i][j] = val["accuracy"][i]
                stages.append(
                    {
                        "stage": j,
                        "angle": angles[j],
                        "sharpness": val["sharpness"],
                        "barrier": val["barrier"],
                        "barrier_ci": val["barrier_ci"],
                        "barrier_alpha": val["barrier_alpha"],
                        "barrier_curve": val["barrier_curve"],
                        "trainable_params": info["trainable_params"],
                        "final_train_loss": info["final_train_loss"],
                        "trust_checks": info.get("trust_checks"),
                        "trust_projections": info.get("trust_projections"),
                        "folders": {"train": chains[(m, s)][j][1], "measure": mdir},
                    }
                )
            runs.append(
                {
                    "seed": s,
                    "accuracy": acc,
                    "average_forgetting": average_forgetting(acc),
                    "average_final_accuracy": float(np.mean([row[-1] for row in acc])),
                    "learning_accuracy": learning_accuracy(acc),
                    "mean_sharpness": float(np.mean([st["sharpness"] for st in stages[1:]])),
                    "mean_barrier": float(np.mean([st["barrier"] for st in stages[1:]])),
                    "stages": stages,
                }
            )
        mean_acc = np.mean([r["accuracy"] for r in runs], axis=0).tolist()
        strategy, opt = _method(m)
        continual[m] = {
            "label": label,
            "strategy": strategy,
            "optimizer": opt,
            "runs": runs,
            "mean_accuracy": mean_acc,
            **{
                k: spread([r[k] for r in runs])
                for k in (
                    "average_forgetting",
                    "average_final_accuracy",
                    "learning_accuracy",
                    "mean_sharpness",
                    "mean_barrier",
                )
            },
        }

    rows = []
    for (block, signal, s), st in zip(sub_plan, sub_done, strict=True):
        info = st.info
        rows.append(
            {
                "budget": block,
                "method": "surgical" if signal == "surgical" else f"mask ({signal})",
                "signal": signal,
                "seed": s,
                "trainable_params": info["trainable_params"],
                "target_gain": info["adaptation"],
                "source_forgetting": info["forgetting"],
                "target_accuracy": info["after"]["target"]["accuracy"],
                "source_accuracy": info["after"]["source"]["accuracy"],
                "folder": st.run_dir.name,
            }
        )
    subnet = {}
    for block in cfg.surgical_blocks:
        per = {}
        for signal in ("surgical", *cfg.mask_signals):
            rs = [r for r in rows if r["budget"] == block and r["signal"] == signal]
            per[signal] = {
                "target_gain": spread([r["target_gain"] for r in rs]),
                "source_forgetting": spread([r["source_forgetting"] for r in rs]),
                "trainable_params": rs[0]["trainable_params"],
            }
        subnet[block] = {
            "block_params": counts[block],
            "fraction": counts[block] / total,
            "methods": per,
        }
    return {
        "setup": {
            "model": f"LeNet (width {cfg.width})",
            "parameters": total,
            "angles": list(angles),
            "shift": [angles[0], cfg.shift_angle],
            "methods": methods,
            "block_params": counts,
            "examples": {"train": len(first), "test": len(digits[angles[0]]["test"])},
        },
        "definitions": DEFINITIONS,
        "policies": _policies(cfg, total),
        "pretrained": {
            "accuracy": pre_m["accuracy"],
            "sharpness": pre_m["sharpness"],
            "folders": {"train": pre.run_dir.name, "measure": pre_m_dir.name},
        },
        "continual": continual,
        "subnetworks": {"rows": rows, "summary": subnet},
        "verdict": verdict(continual, subnet, cfg.clear_margin),
    }


def _apart(lower: dict[str, Any], higher: dict[str, Any], margin: float) -> bool:
    """Every value of ``lower`` is below every value of ``higher`` by more than ``margin``."""
    return lower["max"] + margin < higher["min"]


def verdict(
    continual: dict[str, Any], subnet: dict[str, Any], margin: float = 0.0
) -> dict[str, Any]:
    """The study's conclusions, from the numbers. "Clearly" means the seeds' ranges do not
    overlap (by more than ``margin``); with one seed it is the comparison of the means."""
    base = continual["ft-sgd"]
    order = sorted(continual, key=lambda m: continual[m]["average_forgetting"]["mean"])
    least = order[0]
    methods = {}
    for m, c in continual.items():
        methods[m] = {
            "label": c["label"],
            "forgetting": c["average_forgetting"]["mean"],
            "final_accuracy": c["average_final_accuracy"]["mean"],
            "learning_accuracy": c["learning_accuracy"]["mean"],
            "adaptation_cost": base["learning_accuracy"]["mean"] - c["learning_accuracy"]["mean"],
            "forgets_less_than_ft_clearly": _apart(
                c["average_forgetting"], base["average_forgetting"], margin
            ),
            "mean_sharpness": c["mean_sharpness"]["mean"],
            "mean_barrier": c["mean_barrier"]["mean"],
        }
    sharp = {}
    for m, c in continual.items():
        if c["strategy"] != "ft" or m == "ft-sgd":
            continue
        sharp[m] = {
            "label": c["label"],
            "sharpness": c["mean_sharpness"]["mean"],
            "sgd_sharpness": base["mean_sharpness"]["mean"],
            "flatter": c["mean_sharpness"]["mean"] < base["mean_sharpness"]["mean"],
            "flatter_clearly": _apart(c["mean_sharpness"], base["mean_sharpness"], 0.0),
            "forgetting": c["average_forgetting"]["mean"],
            "sgd_forgetting": base["average_forgetting"]["mean"],
            "forgets_less": c["average_forgetting"]["mean"] < base["average_forgetting"]["mean"],
            "forgets_less_clearly": _apart(
                c["average_forgetting"], base["average_forgetting"], margin
            ),
        }
    masks = {}
    for block, b in subnet.items():
        rnd = b["methods"]["random"]
        rows = {}
        for sig, v in b["methods"].items():
            if sig == "random":
                continue
            rows[sig] = {
                "target_gain": v["target_gain"]["mean"],
                "random_gain": rnd["target_gain"]["mean"],
                "gain_above_random": v["target_gain"]["mean"] - rnd["target_gain"]["mean"],
                "beats_random": v["target_gain"]["mean"] > rnd["target_gain"]["mean"],
                "beats_random_clearly": _apart(rnd["target_gain"], v["target_gain"], margin),
                "source_forgetting": v["source_forgetting"]["mean"],
                "random_forgetting": rnd["source_forgetting"]["mean"],
            }
        landscape = [s for s in rows if s != "surgical"]
        best = max(rows, key=lambda s: rows[s]["target_gain"])
        masks[block] = {
            "trainable_params": b["block_params"],
            "fraction": b["fraction"],
            "signals": rows,
            "landscape_beating_random_clearly": [
                s for s in landscape if rows[s]["beats_random_clearly"]
            ],
            "landscape_below_random": [s for s in landscape if not rows[s]["beats_random"]],
            "best": best,
            "best_gain": rows[best]["target_gain"],
        }
    barriers = [
        st["barrier"] for c in continual.values() for r in c["runs"] for st in r["stages"][1:]
    ]
    highs = [
        st["barrier_ci"][1]
        for c in continual.values()
        for r in c["runs"]
        for st in r["stages"][1:]
        if st.get("barrier_ci") is not None
    ]
    return {
        "barrier_max": float(max(barriers)),
        "barrier_ci_high_max": float(max(highs)) if highs else None,
        "forgetting_order": order,
        "least_forgetting": least,
        "least_forgetting_cost": methods[least]["adaptation_cost"],
        "best_final": max(continual, key=lambda m: continual[m]["average_final_accuracy"]["mean"]),
        "methods": methods,
        "sharpness_aware": sharp,
        "masks": masks,
        "seeds": len(base["runs"]),
        "margin": margin,
    }


DEFINITIONS = {
    "accuracy": "accuracy[i][j]: fraction of task i's 450 test digits (rotated by angles[i]) "
    "classified correctly by the solution after stage j (stage 0: pre-training on task 0; "
    "stage j >= 1: fine-tuning on task j from stage j - 1's weights)",
    "average_forgetting": "average forgetting (Chaudhry et al. 2018): mean over tasks i < T - 1 "
    "of max_{i <= j <= T - 2} accuracy[i][j] - accuracy[i][T - 1] (the best accuracy a task "
    "had before the last stage minus its final accuracy)",
    "average_final_accuracy": "mean over all T tasks of accuracy[i][T - 1]",
    "learning_accuracy": "mean over stages j >= 1 of accuracy[j][j]: each new task's accuracy "
    "just after it was learned (plasticity)",
    "adaptation_cost": "learning_accuracy of ft with SGD minus the method's",
    "sharpness": "adaptive worst-case sharpness (Kwon et al. 2021, eta = 0; scale-invariant): "
    "max over ||delta / |w| ||_2 <= sharpness_rho of L(w + delta) - L(w), L the mean "
    "cross-entropy on the first sharpness_examples training digits of the solution's own "
    "task, by projected gradient ascent",
    "mean_sharpness": "mean of sharpness over the stages j >= 1",
    "barrier": "barrier_definition (default linear, Entezari et al. 2022: max_alpha f(alpha) "
    "- ((1 - alpha) f(0) + alpha f(1))) of f(alpha) = barrier_metric of (1 - alpha) "
    "theta_{j-1} + alpha theta_j on the union of the test digits of tasks j - 1 and j, with a "
    "percentile bootstrap CI over those digits",
    "mean_barrier": "mean of barrier over the transitions j - 1 -> j",
    "target_gain": "subnetworks: accuracy on the shifted test digits after fine-tuning minus "
    "before (the pre-trained model's)",
    "source_forgetting": "subnetworks: accuracy on the unshifted test digits before minus "
    "after fine-tuning",
    "trainable_params": "parameter entries the method may change (the mask's kept entries, or "
    "the surgical block's parameters)",
    "spread": "mean (with its Student-t interval, ci), sample std, min and max over the seeds "
    "(data orders 0..seeds-1)",
    "clearly": "the seeds' ranges do not overlap (by more than clear_margin)",
}


def _policies(cfg: ContinualShiftsConfig, total: int) -> dict[str, str]:
    seq = " -> ".join(f"{a:g}" for a in cfg.angles)
    return {
        "data": "scikit-learn's 8x8 digits (1,347 training, 450 test), every task the same "
        f"digits rotated by its angle (degrees): {seq}",
        "model": f"LeNet width {cfg.width} ({total} parameters, no BatchNorm), PyTorch's "
        f"default initialization (seed {cfg.init_seed})",
        "pretrain": f"{cfg.pretrain_steps} steps of SGD (momentum {cfg.momentum:g}, lr "
        f"{cfg.pretrain_lr:g}, batch {cfg.batch_size}) on task 0",
        "stages": f"each later stage: {cfg.steps} steps (lr {cfg.lr:g}, constant, momentum "
        f"{cfg.momentum:g}, batch {cfg.batch_size}, data order = the seed) on the next task's "
        "training digits only, from the previous stage's weights",
        "anchors": "l2sp (alpha "
        f"{cfg.l2sp_strength:g}), ewc (alpha {cfg.ewc_strength:g}, Fisher diagonal on "
        f"{min(cfg.fisher_examples, cfg.source_examples)} examples) and trust-region (epsilon "
        f"{cfg.trust_epsilon:g}, rise definition, checked every {cfg.trust_every} steps) "
        "anchor at the previous stage's weights and measure the previous task only, on its "
        f"first {cfg.source_examples} training digits: nothing older is remembered",
        "mask": f"continual mask: the top {cfg.mask_fraction:g} of entries by the "
        f"{cfg.mask_signal} signal on the new task's training digits",
        "sharpness_aware": f"SAM (Foret et al. 2021) and C-Flat (Bian et al. 2024) with rho "
        f"{cfg.sam_rho:g}",
        "subnetworks": f"from the pre-trained model, {cfg.steps} steps on the digits rotated by "
        f"{cfg.shift_angle:g}; each mask keeps exactly the surgical block's parameter count",
        "batchnorm": "no BatchNorm: the LeNet's loss is a function of its weights alone, so "
        "no statistics policy applies (to the barriers either)",
        "precision": f"accuracies, sharpness and barriers in {cfg.dtype} on {cfg.device}; "
        f"training in float32 on {cfg.device}",
    }


def _report(run_dir, results: dict[str, Any]):
    from basinscope.experiments.continual_shifts_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Continual learning across shifts: rotations 0 -> 30 -> 60 -> 90 learned one after another with ft, "
        "l2sp, ewc, trust-region, mask and SAM/C-Flat (accuracy matrix, forgetting, "
        "sharpness, barriers); landscape-chosen masks vs surgical vs random at equal counts",
        config=ContinualShiftsConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
