"""The rotated-digits transfer study: does fine-tuning stay in the pre-trained basin?

The distribution-shift talk's toy example on built-in data (Neyshabur, Sedghi & Zhang
2020, "What is being transferred in transfer learning?"): pre-train a LeNet on upright
digits (the source distribution), then fine-tune it on the digits rotated by each angle
(the targets) for ``finetune_steps`` gradient steps, from the pre-trained weights with each
strategy (FT, LP, LP-FT, surgical, landscape-guided surgical) and, for comparison, from two
random starts: the talk's shared random initialization (``finetune_steps``) and independent
random initializations trained to a plateau (``independent_steps``); ``copies`` times each
with different SGD noise (data order), and the whole study repeated for ``seeds`` seeds
(summary rows are means over seeds with 95% CIs; every barrier has a bootstrap CI).

Measured per angle and strategy: source and target accuracy before and after (forgetting
vs. adaptation; forgetting is N/A from a random start); the straight path pre-trained ->
fine-tuned on source and target data, extrapolated to alpha in [-1, 2]; the barrier between
the fine-tuned copies (pre-trained vs. random starts); the path criterion (the path's excess
over max(f(0), f(1))) and the verdict "stayed in the pre-trained basin"; beside it, for
every start, the Monte Carlo test of Definition 3.1 (Neyshabur et al.) on the convex hull of
the fine-tuned copies, with epsilon = the barrier threshold, its intervals and whether it
agrees with the barrier verdict; parameter distance
and per-layer CKA to the pre-trained model; module criticality per layer on a log-spaced
sigma grid (minimisers on its edge flagged); the top Hessian eigenvalue and trace of each
solution; and 2D landscapes around each start (source and target loss) with the copies'
trajectories drawn. A conclusion is computed from the numbers.

Every stage stores its result in a folder named by a hash of its settings (which include
the folders of the stages it depends on): see :mod:`basinscope.experiments.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from basinscope._checks import (
    MAX_POINTS,
    at_least,
    check_seed,
    finite_float,
    in_range,
    positive_float,
)
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, Study, StudyContext, register
from basinscope.experiments.stages import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    StageLog,
    cached_stage,
    landscape_stage,
    model_stage,
    placement,
    stage_dir,
    train_stage,
)

__all__ = ["STUDY", "RotatedDigitsConfig", "run"]

STRATEGY_NAMES = {
    "ft": "FT",
    "lp": "LP",
    "lp-ft": "LP-FT",
    "surgical": "surgical",
    "guided": "guided surgical",
}


DIGITS_TRAIN = 1347  # examples in basinscope.data.load_digits("train")
_DIGITS_WHY = " (the digits' training split has 1,347 images)"
STUDY_MAX_STEPS = 1_000_000  # far more than any study needs: a larger value is a typo


@dataclass(frozen=True)
class RotatedDigitsConfig:
    """Settings of the rotated-digits study (steps are gradient steps; angles in degrees)."""

    angles: tuple[float, ...] = (0.0, 15.0, 35.0, 60.0, 90.0)  # target rotations
    strategies: tuple[str, ...] = ("ft", "lp", "lp-ft", "surgical", "guided")  # pre-trained start
    copies: int = 2  # fine-tuning copies per start and strategy, SGD data seeds 0, 1, ...
    # independent repetitions of the whole study (pre-training init, random inits, data
    # order): seed k uses init_seed + 1000 k, random_start_seed + 1000 k, data seeds 1000 k + c
    seeds: int = 3
    # the random-independent start: each copy from its own random initialization
    # (random_start_seed + 1000 k + copy), trained with random_start_lr to a plateau
    independent_steps: int = 600
    pretrain_steps: int = 600  # LeNet on upright digits, SGD with momentum
    pretrain_lr: float = 0.05
    finetune_steps: int = 100  # the talk's "100 gradient steps"
    finetune_lr: float = 0.02  # from the pre-trained start
    random_start_lr: float = 0.05  # from a random start (the pre-training learning rate)
    batch_size: int = 64
    momentum: float = 0.9
    lp_steps: int = 50  # LP-FT: linear-probing steps before the finetune_steps of FT
    surgical_blocks: tuple[str, ...] = ("conv1", "conv2")  # surgical: the feature layers
    guided_signal: str = "relative_gradient_norm"  # guided surgical: Lee et al.'s Auto-RGN
    guided_top_k: int = 1  # guided surgical: how many top-ranked modules are tuned
    checkpoint_every: int = 5  # fine-tuning checkpoints for the drawn trajectories
    init_seed: int = 0  # pre-training initialization
    random_start_seed: int = 1  # initialization of the random start
    width: int = 1  # LeNet width multiplier
    grid: int = 21  # points per axis of each 2D landscape
    surface_margin: float = 0.3  # grid margin around the trajectories (fraction of span)
    line_points: int = 31  # points on alpha in [-1, 2]
    barrier_points: int = 25  # initial grid of each barrier on [0, 1] (refined at the max)
    barrier_metric: str = "error"  # "error" (1 - accuracy) or "loss"
    barrier_definition: str = "linear"  # "linear", "mean" or "midpoint" (basinscope barrier)
    bootstrap: int = 200  # resamples of the test examples for each barrier's 95% CI
    basin_epsilon: float = 0.02  # "stayed in the basin": copies barrier and path excess <= this
    # the Definition 3.1 basin test of the copies' convex hull (epsilon = basin_epsilon, on the
    # barrier's metric and split): delta in the Euclidean norm over all parameters (the
    # pre-trained weights' norm is about 11-12), Monte Carlo points of the hull (condition 1),
    # pairs (conditions 2 and 3) and the level of every interval
    basin_delta: float = 5.0
    basin_samples: int = 8
    basin_pairs: int = 8
    basin_confidence: float = 0.95
    hessian_examples: int = 512  # target training examples for the Hessian numbers
    hessian_tol: float = 1e-3  # Lanczos relative Ritz-residual tolerance of lambda_max
    trace_probes: int = 64  # Hutchinson probes at most (stops earlier at 5% CI half-width)
    criticality_points: int = 6  # alphas of module criticality (evenly spaced on [0, 1])
    criticality_sigmas: int = 13  # sigmas of module criticality, log-spaced on the range below
    criticality_sigma_range: tuple[float, float] = (1e-3, 1.0)
    criticality_samples: int = 2  # noise draws per (alpha, sigma)
    criticality_examples: int = 512  # target training examples for module criticality
    eval_strategy: str = "loop"  # engine: "loop" or "vmap" (slower for this CNN), never timed
    hvp_method: str = (
        "double-backward"  # or "forward-over-reverse", "reverse-over-forward"; never timed
    )
    # where pre-training, the landscapes, barriers, criticality and Hessians compute (cpu,
    # cuda, cuda:N, mps); fine-tuning and CKA run on the CPU
    device: str = DEFAULT_DEVICE
    # precision of the evaluations (the pre-trained model's accuracies, landscapes, barriers,
    # criticality): float32 or float64; Hessians and CKA are always float64, training and
    # fine-tuning (with its accuracies) float32
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        from basinscope.analyses.barrier import BARRIER_DEFINITIONS as DEFS
        from basinscope.training.finetune import GUIDED_SIGNALS

        if not self.angles:
            raise BasinscopeError("angles is empty: give at least one target rotation, e.g. [35]")
        bad = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if bad or not self.strategies:
            raise BasinscopeError(
                f"strategies {list(self.strategies)}: expected a non-empty list of "
                f"{', '.join(STRATEGY_NAMES)} (dfr needs a held-out set and is not part of this study)"
            )
        if "ft" not in self.strategies:
            raise BasinscopeError(
                "strategies must include 'ft': the landscapes, criticality and the random-start "
                "comparison are of full fine-tuning"
            )
        at_least(
            "copies",
            self.copies,
            2,
            high=16,
            why=" (the barrier is between two fine-tuned copies)",
            high_why=" (each copy repeats every fine-tuning run of every angle)",
        )
        if self.guided_signal not in GUIDED_SIGNALS:
            raise BasinscopeError(
                f"guided_signal {self.guided_signal!r}: expected one of {', '.join(GUIDED_SIGNALS)}"
            )
        if self.barrier_definition not in DEFS:
            raise BasinscopeError(
                f"barrier_definition {self.barrier_definition!r}: expected one of {', '.join(DEFS)}"
            )
        if self.barrier_metric not in ("error", "loss"):
            raise BasinscopeError(
                f"barrier_metric {self.barrier_metric!r}: expected 'error' or 'loss'"
            )
        self._check_numbers()
        self._check_blocks()

    def _check_numbers(self) -> None:
        for angle in self.angles:
            in_range("angles", angle, -360, 360, fix="rotations in degrees, e.g. [0, 15, 35]")
        # points: each landscape point is evaluated on all source and target data
        at_least("grid", self.grid, 3, high=201, high_why=" points per axis (41,000 points)")
        for name in ("line_points", "barrier_points"):
            at_least(name, getattr(self, name), 3, high=MAX_POINTS)
        at_least("criticality_points", self.criticality_points, 3, high=51)
        at_least("criticality_sigmas", self.criticality_sigmas, 3, high=51)
        lo_hi = tuple(self.criticality_sigma_range)
        if len(lo_hi) != 2 or not all(isinstance(v, (int, float)) for v in lo_hi):
            raise BasinscopeError(
                f"criticality_sigma_range {list(lo_hi)}: expected two numbers [smallest, "
                "largest], e.g. [0.001, 1]"
            )
        positive_float("criticality_sigma_range", lo_hi[0], fix="e.g. [0.001, 1]")
        if not lo_hi[0] < lo_hi[1] < 1e6:
            raise BasinscopeError(
                f"criticality_sigma_range {list(lo_hi)}: the smallest sigma must be below the "
                "largest (and the largest below 1e6), e.g. [0.001, 1]"
            )
        at_least("seeds", self.seeds, 1, high=16, high_why=" (each seed repeats the whole study)")
        at_least("bootstrap", self.bootstrap, 0, high=100_000)
        for name in ("pretrain_steps", "finetune_steps", "lp_steps", "independent_steps"):
            at_least(name, getattr(self, name), 1, high=STUDY_MAX_STEPS)
        at_least("checkpoint_every", self.checkpoint_every, 1)
        at_least("batch_size", self.batch_size, 1)
        for name in ("pretrain_lr", "finetune_lr", "random_start_lr"):
            positive_float(name, getattr(self, name), fix=f"e.g. {name}=0.02")
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        at_least("width", self.width, 1, high=16, high_why=" (the LeNet width multiplier)")
        finite_float("surface_margin", self.surface_margin, low=0)
        finite_float("basin_epsilon", self.basin_epsilon, low=0)
        positive_float("basin_delta", self.basin_delta, fix="e.g. basin_delta=5")
        for name in ("basin_samples", "basin_pairs"):
            at_least(
                name,
                getattr(self, name),
                2,
                high=10_000,
                why=" (a Monte Carlo standard error needs two draws)",
                high_why=" (each draw is a pass over the target test split)",
            )
        finite_float(
            "basin_confidence",
            self.basin_confidence,
            low=0,
            high=1,
            low_open=True,
            high_open=True,
            fix="e.g. basin_confidence=0.95",
        )
        for name in ("hessian_examples", "criticality_examples"):
            at_least(name, getattr(self, name), 1, high=DIGITS_TRAIN, high_why=_DIGITS_WHY)
        finite_float("hessian_tol", self.hessian_tol, low=0, high=1, low_open=True, high_open=True)
        at_least("trace_probes", self.trace_probes, 2, high=10_000)
        if self.criticality_samples % 2:
            raise BasinscopeError(
                f"criticality_samples must be even (antithetic pairs of noise draws), got "
                f"{self.criticality_samples}"
            )
        at_least("criticality_samples", self.criticality_samples, 2, high=1000)
        check_seed("init_seed", self.init_seed)
        check_seed("random_start_seed", self.random_start_seed)

    def _check_blocks(self) -> None:
        from basinscope.models import build_model
        from basinscope.training.finetune import parameter_modules, surgical_parameters

        lenet = build_model("lenet", {"width": self.width})
        try:
            surgical_parameters(lenet, list(self.surgical_blocks))
        except BasinscopeError as e:
            raise BasinscopeError(f"surgical_blocks {list(self.surgical_blocks)}: {e}") from None
        at_least(
            "guided_top_k",
            self.guided_top_k,
            1,
            high=len(parameter_modules(lenet)),
            high_why=" (the LeNet's modules with parameters)",
        )


# the smoke version (tests, pipeline checks): one angle, FT and LP, a few steps, tiny grids
SMOKE = {
    "figure_formats": ("png",),
    "angles": (60.0,),
    "strategies": ("ft", "lp"),
    "pretrain_steps": 40,
    "finetune_steps": 6,
    "lp_steps": 3,
    "checkpoint_every": 2,
    "grid": 3,
    "line_points": 4,
    "barrier_points": 3,
    "hessian_examples": 32,
    "trace_probes": 4,
    "criticality_points": 3,
    "criticality_sigmas": 4,
    "criticality_examples": 32,
    "seeds": 2,  # two, so that the means and CIs over seeds are exercised
    "independent_steps": 12,
    "bootstrap": 20,
    "basin_samples": 2,
    "basin_pairs": 2,
}

QUICK = {
    "angles": (0.0, 60.0),
    "pretrain_steps": 150,
    "finetune_steps": 30,
    "lp_steps": 10,
    "grid": 7,
    "line_points": 13,
    "barrier_points": 9,
    "hessian_examples": 128,
    "trace_probes": 16,
    "criticality_points": 3,
    "criticality_sigmas": 7,
    "criticality_examples": 128,
    "independent_steps": 300,
    "bootstrap": 100,
    "basin_samples": 6,
    "basin_pairs": 6,
}


def _train_config(steps: int, lr: float, cfg: RotatedDigitsConfig, every: int, data_seed: int = 0):
    from basinscope.training import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        lr=lr,
        momentum=cfg.momentum,
        data_seed=data_seed,
        checkpoint_steps=tuple(range(0, steps + 1, every)) + ((steps,) if steps % every else ()),
    )


def _lenet(seed: int, cfg: RotatedDigitsConfig):
    from basinscope.models import build_model

    return build_model("lenet", {"width": cfg.width}, init_seed=seed)


SEED_STRIDE = 1000  # seed k offsets every initialization and data-order seed by 1000 k
#: the two random starts: the talk's shared initialization, and independent ones trained long
RANDOM_STARTS = ("random", "random-independent")
START_NAMES = {
    "pre-trained": "pre-trained",
    "random": "random (shared init)",
    "random-independent": "random (independent inits)",
}


def _seeded(base: int, k: int) -> int:
    return base + SEED_STRIDE * k


def run(cfg: RotatedDigitsConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.data import load_digits, rotate
    from basinscope.data.tensordata import TensorData
    from basinscope.engine import evaluate_model

    say, root = ctx.say, ctx.stages_root
    src_train, src_test = load_digits("train"), load_digits("test")
    where = placement(cfg)  # device and dtype of every evaluation

    # -- pre-training on the source, once per seed --------------------------------------------
    pres, pre_evals = [], []
    for k in range(cfg.seeds):
        seed = _seeded(cfg.init_seed, k)
        say(
            f"pre-training a LeNet on upright digits ({cfg.pretrain_steps} steps, "
            f"seed {k + 1} of {cfg.seeds})"
        )
        pre_cfg = _train_config(
            cfg.pretrain_steps, cfg.pretrain_lr, cfg, max(cfg.pretrain_steps // 10, 1)
        )
        pre_spec = {"model": "lenet", "width": cfg.width, "init_seed": seed}
        pre = train_stage(
            stage_dir(
                root,
                "pretrain",
                {
                    **pre_spec,
                    "data": src_train.name,
                    **pre_cfg.to_dict(),
                    **placement(cfg, dtype=False),
                },
            ),
            _lenet(seed, cfg),
            src_train,
            pre_cfg,
            pre_spec,
            progress=ctx.progress,
            log=ctx.log,
            device=cfg.device,
        )
        pres.append(pre)
        pre_evals.append(
            evaluate_model(pre.model, {"source_train": src_train, "source_test": src_test}, **where)
        )

    targets = []
    for angle in cfg.angles:
        tgt_train = TensorData(
            rotate(src_train.x, angle), src_train.y, f"digits-train-rot{angle:g}"
        )
        tgt_test = TensorData(rotate(src_test.x, angle), src_test.y, f"digits-test-rot{angle:g}")
        data = {"src_train": src_train, "src_test": src_test}
        data.update(tgt_train=tgt_train, tgt_test=tgt_test)
        targets.append((angle, data))
    # each angle's stages are logged together, in the order a run angle by angle lists them
    logs = [StageLog() for _ in targets]

    # -- fine-tuning: every angle, seed, strategy, start and copy at once (each needs only its
    # pre-trained model); every strategy from the pre-trained start, FT from the random starts
    calls, slots = [], []
    plans = [_plan(cfg, pre, k) for k, pre in enumerate(pres)]
    for i, (_, data) in enumerate(targets):
        for k, plan in enumerate(plans):
            for start, strategy, copy_models in plan:
                for c, (model, start_name) in enumerate(copy_models):
                    call = _finetune_call(
                        cfg,
                        root,
                        start_name,
                        model,
                        strategy,
                        data,
                        logs[i],
                        start=start,
                        data_seed=_seeded(c, k),
                    )
                    calls.append(call)
                    slots.append((i, k, f"{start}/{strategy}"))
    angle_list = ", ".join(f"{a:g}" for a in cfg.angles)
    done = ctx.run_stages(calls, what=f"fine-tuning on the digits rotated by {angle_list} degrees")
    runs: list[list[dict[str, list]]] = [[{} for _ in pres] for _ in targets]
    for (i, k, key), stage in zip(slots, done, strict=True):
        runs[i][k].setdefault(key, []).append(stage)

    # -- the analyses of every angle at once (each needs only its fine-tuned models): all of
    # seed 0's, and the barriers of every further seed ------------------------------------
    random_init = _lenet(cfg.random_start_seed, cfg)
    calls, slots = [], []
    for i, (_, data) in enumerate(targets):
        for what, call in _analysis_calls(
            cfg, ctx, pres[0], random_init, runs[i][0], data, logs[i]
        ):
            calls.append(call)
            slots.append((i, what))
        for k in range(1, len(pres)):
            what, call = _connectivity_call(cfg, root, pres[k], runs[i][k], data, logs[i])
            calls.append(call)
            slots.append((i, f"{what}/seed{k}"))
        for k in range(len(pres)):  # the Definition 3.1 test of every seed's copies
            what, call = _basin_call(cfg, root, k, runs[i][k], data, logs[i])
            calls.append(call)
            slots.append((i, what))
    done = ctx.run_stages(
        calls,
        what="analyses (lines, surfaces, barriers, CKA, criticality, Hessians, basin tests)",
    )
    values: list[list[tuple[str, Any]]] = [[] for _ in targets]
    for (i, what), value in zip(slots, done, strict=True):
        values[i].append((what, value))
    for log in logs:
        ctx.log.extend(log)

    angles = {
        f"{angle:g}": _angle_result(cfg, angle, runs[i], values[i])
        for i, (angle, _) in enumerate(targets)
    }
    summary = summary_rows(cfg, angles)
    return {
        "definitions": definitions(cfg),
        "pretrained": {
            "stage": pres[0].run_dir.name,
            "source_train_accuracy": pre_evals[0]["source_train_accuracy"],
            "source_test_accuracy": pre_evals[0]["source_test_accuracy"],
            "source_test_loss": pre_evals[0]["source_test_loss"],
            "seeds": [
                {
                    "seed": k,
                    "init_seed": _seeded(cfg.init_seed, k),
                    "stage": p.run_dir.name,
                    "source_test_accuracy": e["source_test_accuracy"],
                    "parameter_norm": _parameter_norm(p.model),
                }
                for k, (p, e) in enumerate(zip(pres, pre_evals, strict=True))
            ],
        },
        "angles": angles,
        "summary": summary,
        "conclusion": conclusion(cfg, summary, angles),
        "figures": _figure_data(root, angles),  # the curves the report draws from stages
    }


def _parameter_norm(model) -> float:
    """||theta||_2 over all parameters (the scale basin_delta is measured against)."""
    return float(np.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())))


def _figure_data(root: Path, angles: dict[str, Any]) -> dict[str, Any]:
    """The report's curves that live in stage folders (paths, trajectories), for
    result.json: :func:`basinscope.experiments.rotated_digits_report.figure_data`."""
    from basinscope.experiments.rotated_digits_report import figure_data

    return figure_data(root, {"angles": angles})


def _plan(cfg: RotatedDigitsConfig, pre, k: int) -> list[tuple[str, str, list]]:
    """Seed ``k``'s fine-tuning runs: ``(start, strategy, [(model, start name) per copy])``.
    Every strategy from the pre-trained model; FT from the talk's shared random initialization
    (one init, the copies differ in data order) and from independent random initializations
    (one per copy)."""
    pre_name = pre.run_dir.name
    plan = [("pre-trained", s, [(pre.model, pre_name)] * cfg.copies) for s in cfg.strategies]
    rs = _seeded(cfg.random_start_seed, k)
    shared = _lenet(rs, cfg)
    plan.append(("random", "ft", [(shared, f"random-init-seed{rs}")] * cfg.copies))
    independent = [(_lenet(rs + c, cfg), f"random-init-seed{rs + c}") for c in range(cfg.copies)]
    plan.append(("random-independent", "ft", independent))
    return plan


def _angle_result(cfg, angle: float, runs: list[dict[str, list]], values) -> dict:
    """One angle's results from its fine-tuning runs (one dict per seed) and its analysis
    stages' values: seed 0's analyses in full, and per seed the accuracies and barriers."""
    out: dict[str, Any] = {"lines": {}, "surfaces": {}, "criticality": {}, "curvature": {}}
    conns: dict[int, dict] = {}
    for what, value in values:
        group, _, key = what.partition("/")
        if group == "connectivity":
            k = int(key.removeprefix("seed")) if key else 0
            conns.setdefault(k, {}).update(connectivity=value[0], connectivity_stage=value[1].name)
        elif group == "basin":
            k = int(key.removeprefix("seed"))
            conns.setdefault(k, {}).update(basin_test=value[0], basin_test_stage=value[1].name)
        elif group == "similarity":
            out["similarity"] = value[0]
        elif group == "criticality":
            out["criticality"][key] = value[0]
        else:  # lines, surfaces, curvature: the stage's value
            out[group][key] = value
    first = runs[0]
    seeds = [
        {
            "seed": k,
            "finetune": {key: [r.info for r in v] for key, v in runs[k].items()},
            "finetune_stages": {key: [r.run_dir.name for r in v] for key, v in runs[k].items()},
            **conns[k],
        }
        for k in range(len(runs))
    ]
    return {
        "angle": angle,
        "finetune": {k: [r.info for r in v] for k, v in first.items()},
        "finetune_stages": {k: [r.run_dir.name for r in v] for k, v in first.items()},
        "lines": out["lines"],
        "surfaces": out["surfaces"],
        "connectivity": conns[0]["connectivity"],
        "connectivity_stage": conns[0]["connectivity_stage"],
        "similarity": out["similarity"],
        "criticality": out["criticality"],
        "criticality_grid": {
            start: criticality_edges(c) for start, c in out["criticality"].items()
        },
        "curvature": out["curvature"],
        "seeds": seeds,
        "per_seed": seed_rows(cfg, seeds),
    }


def _analysis_calls(cfg, ctx, pre, random_init, runs, data, log) -> list[tuple[str, StageCall]]:
    """The analysis stages of one angle, ``(what, stage)`` in the order they are logged.

    Each stage's ``compute`` may run in a Ray task: it closes over the models, data and
    settings it needs, never over ``ctx``."""
    from basinscope.analyses import interpolate

    root, progress = ctx.stages_root, ctx.progress
    where = placement(cfg)  # device and dtype of every evaluation
    pre_model, pre_name = pre.model, pre.run_dir.name
    models = {k: [r.model for r in v] for k, v in runs.items()}  # what the stages need of runs
    calls: list[tuple[str, StageCall]] = []

    # -- the straight path pre-trained -> fine-tuned, extrapolated --------------------------
    tests = {"source": data["src_test"], "target": data["tgt_test"]}
    for strategy in cfg.strategies:
        ft = runs[f"pre-trained/{strategy}"][0]
        settings = {"a": pre_name, "b": ft.run_dir.name, "n": cfg.line_points}
        settings.update(strategy=cfg.eval_strategy, **where)

        def line(lg, ft_model=ft.model, strategy=strategy, settings=settings) -> dict[str, Any]:
            land = landscape_stage(
                root,
                "line",
                settings,
                lambda d: interpolate(
                    pre_model,
                    ft_model,
                    tests,
                    alphas=np.linspace(-1, 2, cfg.line_points),
                    run_dir=d,
                    attrs={"label_a": "pre-trained", "label_b": f"fine-tuned ({strategy})"},
                    strategy=cfg.eval_strategy,
                    progress=progress,
                    **where,
                ),
                log=lg,
            )
            return {"stage": land.run_dir.name, "strategy": land.evaluation.get("strategy")}

        calls.append((f"lines/{strategy}", StageCall(stage_dir(root, "line", settings), line, log)))

    # -- 2D landscapes around each start, with the copies' trajectories --------------------
    trains = {"source": data["src_train"], "target": data["tgt_train"]}
    for start, start_model in (("pre-trained", pre_model), ("random", random_init)):
        copies = [(c.run_dir.name, c.checkpoints) for c in runs[f"{start}/ft"]]
        settings = {
            "start": start,
            "copies": [name for name, _ in copies],
            "grid": cfg.grid,
            "margin": cfg.surface_margin,
            "strategy": cfg.eval_strategy,
            **where,
        }

        def surface(lg, settings=settings, m=start_model, copies=copies) -> dict[str, Any]:
            return landscape_stage(
                root,
                "surface",
                settings,
                lambda d: _surface(cfg, progress, d, m, [c for _, c in copies], trains),
                log=lg,
            )

        folder = stage_dir(root, "surface", settings)
        calls.append((f"surfaces/{start}", StageCall(folder, surface, log)))

    # -- connectivity: barriers between copies and on the path pre-trained -> fine-tuned ----
    calls.append(_connectivity_call(cfg, root, pre, runs, data, log))

    # -- representations and parameters: distance and per-layer CKA to the pre-trained model
    def similarity(_d: Path) -> dict[str, Any]:
        from basinscope.analyses.distance import parameter_distance
        from basinscope.analyses.similarity import cka_matrix

        out = {}
        for key in models:
            if not key.startswith("pre-trained"):
                continue
            ft = models[key][0]
            dist = parameter_distance(pre_model, ft)
            cka = {}
            for split in ("tgt_test", "src_test"):
                res = cka_matrix(
                    pre_model, ft, data[split], method="linear", split=split, device=cfg.device
                )
                cka[split] = res.diagonal()
            out[key] = {"distance": dist.to_dict(), "cka": cka}
        return out

    calls.append(
        _cached_call(
            "similarity",
            root,
            "similarity",
            {
                "pre": pre_name,
                "runs": [runs[k][0].run_dir.name for k in runs],
                **placement(cfg, dtype=False),  # CKA in float64, on the study's device
            },
            similarity,
            log,
        )
    )

    # -- module criticality (Chatterji et al.) of full fine-tuning from each start ---------
    n_crit = min(cfg.criticality_examples, len(data["tgt_train"].y))
    sub = (data["tgt_train"].x[:n_crit], data["tgt_train"].y[:n_crit])
    for start, init in (("pre-trained", pre_model), ("random", random_init)):
        ft = runs[f"{start}/ft"][0]

        def criticality(_d: Path, final=ft.model, init=init) -> Any:
            from basinscope.analyses.criticality import module_criticality

            return module_criticality(
                final,
                init,
                sub,
                alphas=np.linspace(0, 1, cfg.criticality_points),
                sigmas=criticality_sigmas(cfg),
                samples=cfg.criticality_samples,
                strategy=cfg.eval_strategy,
                **where,
            )  # stored as the CriticalityResult itself; the stage's value is its dict

        settings = {
            "final": ft.run_dir.name,
            "init": pre_name if start == "pre-trained" else cfg.random_start_seed,
            "points": cfg.criticality_points,
            "sigmas": [float(x) for x in criticality_sigmas(cfg)],
            "samples": cfg.criticality_samples,
            "examples": n_crit,
            "strategy": cfg.eval_strategy,
            **where,
        }
        calls.append(
            _cached_call(f"criticality/{start}", root, "criticality", settings, criticality, log)
        )

    # -- curvature of each solution on the target training loss ----------------------------
    n_h = min(cfg.hessian_examples, len(data["tgt_train"].y))
    hsub = (data["tgt_train"].x[:n_h], data["tgt_train"].y[:n_h])
    pre_call = _hessian_call(cfg, root, pre_model, pre_name, hsub, log, progress)
    calls.append(("curvature/pre-trained (start)", pre_call))
    for key in runs:
        name = runs[key][0].run_dir.name
        call = _hessian_call(cfg, root, models[key][0], name, hsub, log, progress)
        calls.append((f"curvature/{key}", call))
    return calls


def _connectivity_call(cfg, root, pre, runs, data, log) -> tuple[str, StageCall]:
    """The barriers of one seed and angle: between the fine-tuned copies of every (start,
    strategy), and on the path pre-trained -> fine-tuned (copy 0) on the target and the
    source test split, each with a bootstrap CI over the test examples."""
    where = placement(cfg)
    pre_model = pre.model
    models = {k: [r.model for r in v] for k, v in runs.items()}

    def connectivity(_d: Path) -> dict[str, Any]:
        from basinscope.analyses.barrier import barrier

        def b(m1, m2, split, labels):
            return barrier(
                m1,
                m2,
                data[split],
                definition=cfg.barrier_definition,
                metric=cfg.barrier_metric,
                split=split,
                num_points=cfg.barrier_points,
                labels=labels,
                bootstrap=cfg.bootstrap,
                strategy=cfg.eval_strategy,
                **where,
            )

        out: dict[str, Any] = {}
        for key, (m0, m1, *_) in models.items():
            c = b(m0, m1, "tgt_test", ("copy 0", "copy 1"))
            row = {"copies": c.to_dict()}
            if key.startswith("pre-trained"):
                for split in ("tgt_test", "src_test"):
                    p = b(pre_model, m0, split, ("pre-trained", "fine-tuned"))
                    row[f"path_{split}"] = p.to_dict()
            out[key] = row
        return out

    return _cached_call(
        "connectivity",
        root,
        "connectivity",
        {
            "runs": {k: [r.run_dir.name for r in v] for k, v in runs.items()},
            "pre": pre.run_dir.name,
            "n": cfg.barrier_points,
            "metric": cfg.barrier_metric,
            "definition": cfg.barrier_definition,
            "bootstrap": cfg.bootstrap,
            "strategy": cfg.eval_strategy,
            **where,
        },
        connectivity,
        log,
    )


def _basin_call(cfg, root, k: int, runs, data, log) -> tuple[str, StageCall]:
    """The Definition 3.1 basin test of one seed ``k`` and angle: for every (start, strategy),
    is the convex hull of its fine-tuned copies an (epsilon, delta)-basin of the target test
    loss (the barrier's metric and split), with epsilon = ``basin_epsilon``, the barrier
    threshold of the study's verdict? Random draws use seed ``k``. The value per (start,
    strategy) is :func:`basin_record` of the test's result."""
    where = placement(cfg)
    models = {key: [r.model for r in v] for key, v in runs.items()}

    def basin(_d: Path) -> dict[str, Any]:
        from basinscope.analyses.basin import basin_test

        return {
            key: basin_record(
                basin_test(
                    copies,
                    data["tgt_test"],
                    epsilon=cfg.basin_epsilon,
                    delta=cfg.basin_delta,
                    samples=cfg.basin_samples,
                    pairs=cfg.basin_pairs,
                    seed=k,
                    confidence=cfg.basin_confidence,
                    metric=cfg.barrier_metric,
                    strategy=cfg.eval_strategy,
                    labels=[f"copy {c}" for c in range(len(copies))],
                    **where,
                )
            )
            for key, copies in models.items()
        }

    return _cached_call(
        f"basin/seed{k}",
        root,
        "basin",
        {
            "runs": {key: [r.run_dir.name for r in v] for key, v in runs.items()},
            "data": data["tgt_test"].name,
            "metric": cfg.barrier_metric,
            "epsilon": cfg.basin_epsilon,
            "delta": cfg.basin_delta,
            "samples": cfg.basin_samples,
            "pairs": cfg.basin_pairs,
            "confidence": cfg.basin_confidence,
            "seed": k,
            "strategy": cfg.eval_strategy,
            **where,
        },
        basin,
        log,
    )


def basin_record(res) -> dict[str, Any]:
    """What the study keeps of a :class:`~basinscope.analyses.basin.BasinResult`: epsilon,
    delta, the verdict and whether the intervals support it, the mean loss in the hull, each
    condition's estimate, threshold, margin and intervals, the point-estimate range of
    epsilon, the losses drawn, and the definition and settings that produced them."""
    from basinscope.experiments.transfer_common import condition_records

    conds = condition_records(res)
    return {
        "epsilon": res.epsilon,
        "delta": res.delta,
        "holds": res.holds,
        "ci_supports": res.ci_supports,
        "failed": [c["condition"] for c in conds if not c["holds"]],
        "mean_loss": res.mean_loss,
        "mean_loss_ci": list(res.mean_loss_ci),
        "conditions": conds,
        "epsilon_range": list(res.epsilon_range),
        "num_params": res.num_params,
        "affine_dimension": res.affine_dimension,
        "vertex_losses": list(res.vertex_losses),
        "inside_losses": list(res.inside_losses),
        "noise_losses": list(res.noise_losses),
        "step_losses": list(res.step_losses),
        "labels": list(res.labels),
        "definition": res.definition,
        "settings": {k: v for k, v in res.settings.items() if k != "task"},
    }


def criticality_sigmas(cfg: RotatedDigitsConfig) -> np.ndarray:
    """The sigmas of module criticality: ``criticality_sigmas`` values log-spaced over
    ``criticality_sigma_range``."""
    lo, hi = cfg.criticality_sigma_range
    return np.geomspace(lo, hi, cfg.criticality_sigmas)


def criticality_edges(crit: dict[str, Any]) -> dict[str, Any]:
    """Where each module's minimiser sits on the sigma grid: ``on_edge`` is ``"smallest"`` or
    ``"largest"`` when sigma* is the grid's end (mu is then bounded by the grid, not found),
    ``"none feasible"`` when no point is within epsilon, else ``None`` (also when mu = 0:
    alpha* = 0 at every sigma, so sigma* means nothing); with the number of
    feasible grid points. ``n_on_edge`` counts the flagged modules."""
    sigmas = np.asarray(crit["sigmas"], dtype=np.float64)
    out: dict[str, Any] = {}
    for name, m in crit["modules"].items():
        feasible = int(np.sum(np.asarray(m["feasible"], dtype=bool)))
        s = float(m["sigma_star"]) if m["sigma_star"] is not None else float("nan")
        if not feasible or not np.isfinite(s):
            edge = "none feasible"
        elif m["alpha_star"] == 0:
            edge = None  # mu = 0 at every sigma: the module rewinds all the way to theta^0
        elif np.isclose(s, sigmas[0]):
            edge = "smallest"
        elif np.isclose(s, sigmas[-1]):
            edge = "largest"
        else:
            edge = None
        out[name] = {"sigma_star": s if np.isfinite(s) else None, "on_edge": edge}
        out[name]["feasible_points"] = feasible
    flagged = sum(v["on_edge"] is not None for v in out.values())
    return {"modules": out, "n_on_edge": flagged, "n_modules": len(out)}


def _cached_call(what, root, name, settings, compute, log) -> tuple[str, StageCall]:
    """``(what, a stage that runs cached_stage(root, name, settings, compute))``; its value
    is ``(value, folder)``."""

    def call(lg):
        return cached_stage(root, name, settings, compute, log=lg)

    return what, StageCall(stage_dir(root, name, settings), call, log)


def _finetune_call(
    cfg, root, start_name, model, strategy, data, log, *, start: str, data_seed: int
) -> StageCall:
    """The fine-tuning stage of ``model`` with ``strategy`` and SGD seed ``data_seed`` on the
    target; its value is a :class:`~basinscope.experiments.stages.ModelStage`. ``start``
    sets the learning rate and the steps: ``finetune_lr`` from the pre-trained start,
    ``random_start_lr`` from a random one, ``independent_steps`` (to a plateau, checked at
    half of them) from the independent random initializations."""
    from basinscope.training.finetune import finetune

    lr = cfg.finetune_lr if start == "pre-trained" else cfg.random_start_lr
    if start == "random-independent":
        steps = cfg.independent_steps
        tcfg = _train_config(steps, lr, cfg, max(steps // 10, 1), data_seed=data_seed)
    else:
        tcfg = _train_config(cfg.finetune_steps, lr, cfg, cfg.checkpoint_every, data_seed)
    kwargs = {"strategy": strategy}
    if strategy == "lp-ft":
        kwargs["lp_steps"] = cfg.lp_steps
    if strategy == "surgical":
        kwargs["blocks"] = list(cfg.surgical_blocks)
    if strategy == "guided":
        kwargs.update(guided_signal=cfg.guided_signal, guided_top_k=cfg.guided_top_k)
    settings = {
        "start": start_name,
        "data": data["tgt_train"].name,
        "config": tcfg.to_dict(),
        **kwargs,
        **placement(cfg, dtype=False),  # the device counts only when not the CPU
    }

    def compute():
        res = finetune(
            model,
            data["tgt_train"],
            config=tcfg,
            source_data=data["src_test"],
            eval_target=data["tgt_test"],
            device=cfg.device,
            **kwargs,
        )
        res.model.cpu()  # saved and used from the CPU
        info = res.to_dict()
        info.pop("history")
        info["final_train_loss"] = res.history["loss"][-1] if res.history["loss"] else None
        if start == "random-independent":
            info["plateau"] = _plateau(res.model, res.runs[-1].checkpoints, data["tgt_test"])
        return res.model, res.runs[-1].checkpoints, info

    def call(lg):
        return model_stage(root, "finetune", settings, model, compute, log=lg)

    return StageCall(stage_dir(root, "finetune", settings), call, log)


def _plateau(model, checkpoints, tgt_test) -> dict[str, Any]:
    """Target test accuracy at the checkpoint half-way through training and at the end: a
    run trained to a plateau gains little in its second half."""
    import copy

    import torch

    from basinscope.engine import evaluate_model

    steps = sorted(checkpoints)
    half = min(steps, key=lambda s: abs(s - steps[-1] / 2))
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(checkpoints[half][name])
    acc = [evaluate_model(x, {"t": tgt_test})["t_accuracy"] for x in (m, model)]
    return {
        "half_step": int(half),
        "final_step": int(steps[-1]),
        "target_acc_half": float(acc[0]),
        "target_acc_final": float(acc[1]),
        "gain_second_half": float(acc[1] - acc[0]),
    }


def _surface(cfg, progress: bool, d: Path, start_model, copies, trains):
    """The PCA plane of both copies' trajectories (their checkpoints, one dict per copy),
    centred at their common start."""
    from basinscope.analyses import TrajectoryProjection, pca_surface
    from basinscope.store import save

    traj = [c[s] for c in copies for s in sorted(c)]
    land, proj = pca_surface(
        start_model,
        traj,
        trains,
        n=cfg.grid,
        margin=cfg.surface_margin,
        run_dir=d,
        attrs={"center": "start of fine-tuning"},
        strategy=cfg.eval_strategy,
        progress=progress,
        **placement(cfg),
    )
    out, i = [], 0
    for k, c in enumerate(copies):
        steps = sorted(c)
        j = i + len(steps)
        out.append(
            TrajectoryProjection(
                f"copy {k} (SGD seed {k})",
                np.asarray(steps, dtype=np.int64),
                proj.alpha[i:j],
                proj.beta[i:j],
                proj.distance[i:j],
            )
        )
        i = j
    # the copies' paths, projected, are part of the stage's landscape (drawn by the report)
    save(dataclasses.replace(land, trajectories=tuple(out)), d)
    return {
        "stage": d.name,
        "explained_variance_ratio": list(land.dataset.attrs["explained_variance_ratio"]),
        "max_distance_from_plane": float(np.max(proj.distance)),
        "strategy": land.evaluation.get("strategy", land.dataset.attrs.get("strategy")),
    }


def _hessian_call(
    cfg, root, model, model_stage_name: str, sub, log, progress: bool = False
) -> StageCall:
    """lambda_max and trace on ``sub``; the stage is keyed by the model's stage and a
    fingerprint of the examples (a 90-degree rotation keeps pixel sums: names or sums would
    not do). Its value is the numbers' dict."""
    from basinscope.store import fingerprint_tensors

    def compute(_d: Path) -> dict[str, Any]:
        from basinscope.analyses.hessian import hessian_analysis

        rep = hessian_analysis(
            model,
            sub,
            k_top=1,
            k_bottom=0,
            tol=cfg.hessian_tol,
            trace="hutchinson",
            trace_rtol=0.05,
            trace_kwargs={"min_samples": min(8, cfg.trace_probes), "max_samples": cfg.trace_probes},
            method=cfg.hvp_method,
            device=cfg.device,  # in float64 (hessian_analysis's default), whatever cfg.dtype
            progress=progress,
        )
        tr = rep.trace.to_dict()
        return {
            "lambda_max": float(rep.top.eigenvalues[0]),
            "lambda_max_converged": bool(np.all(rep.top.converged)),
            "trace": tr["estimate"],
            "trace_ci_halfwidth": tr["ci_halfwidth"],
            "trace_probes": tr["num_samples"],
            "semantics": tr["semantics"],
            "hvp_method": rep.semantics.get("method"),
            "seconds": rep.seconds,
        }

    settings = {
        "model": model_stage_name,
        "examples": len(sub[1]),
        "data": fingerprint_tensors({"x": sub[0], "y": sub[1]}),
        "tol": cfg.hessian_tol,
        "probes": cfg.trace_probes,
        "hvp_method": cfg.hvp_method,
        **placement(cfg, dtype=False),
    }

    def call(lg) -> dict[str, Any]:
        return cached_stage(root, "hessian", settings, compute, log=lg)[0]

    return StageCall(stage_dir(root, "hessian", settings), call, log)


PATH_CRITERION = "endpoint-max"
FORGETTING_NA = (
    "N/A: forgetting is defined for the pre-trained start only (a random start has no "
    "source skill to lose)"
)


def definitions(cfg: RotatedDigitsConfig) -> dict[str, str]:
    from basinscope.analyses.barrier import BARRIER_DEFINITIONS as FORMULAS
    from basinscope.analyses.basin import DEFINITION as BASIN_DEFINITION
    from basinscope.analyses.similarity import CKA_ESTIMATORS

    lo, hi = cfg.criticality_sigma_range
    return {
        "accuracy": "fraction of correct predictions on the test split (450 digits) of the source (upright) or target (rotated) distribution",
        "forgetting": f"source test accuracy of the pre-trained model minus that of the fine-tuned model; {FORGETTING_NA}",
        "adaptation": "target test accuracy after fine-tuning minus before",
        "relative distance": "||theta_ft - theta_pre||_2 / ||theta_pre||_2 over all parameters",
        "seeds": f"{cfg.seeds} independent repetitions of the study: seed k pre-trains from init_seed + {SEED_STRIDE} k, starts the random runs from random_start_seed + {SEED_STRIDE} k (+ copy for the independent inits) and orders the data of copy c by seed {SEED_STRIDE} k + c",
        "mean and CI over seeds": "the mean over the seeds of each seed's value (itself a mean over the copies where it is an accuracy) and the 95% Student-t interval mean +- t(0.975, n-1) sd / sqrt(n); none for one seed",
        "random starts": f"random (shared init): the talk's control, {cfg.copies} copies from one random initialization that differ in data order, trained for finetune_steps = {cfg.finetune_steps} steps; random (independent inits): each copy from its own random initialization, trained for independent_steps = {cfg.independent_steps} steps (to a plateau: the target test accuracy gained in the second half of training is recorded as plateau.gain_second_half); both with random_start_lr = {cfg.random_start_lr:g}",
        "barrier": f"{cfg.barrier_definition}: {FORMULAS[cfg.barrier_definition]}; f = test {cfg.barrier_metric} at (1 - alpha) theta_A + alpha theta_B, {cfg.barrier_points} points on [0, 1] refined around the maximum; CI: 95% bootstrap percentile interval over {cfg.bootstrap} resamples of the test examples",
        "barrier between copies": "between the fine-tuned copies 0 and 1 (same start, different SGD data order; independent inits: different starts too), on the target test split",
        "path criterion": f"{PATH_CRITERION}: the path excess max over alpha in [0, 1] of f(alpha) - max(f(0), f(1)), f = target test {cfg.barrier_metric} on (1 - alpha) theta_pre + alpha theta_ft (copy 0); 0 when f falls or rises monotonically, positive only for a bump above both ends",
        "path barrier": f"the {cfg.barrier_definition} barrier on the same path (above the chord, so a monotone but convex curve counts), recorded for reference; the verdict uses the path criterion",
        "stayed in the pre-trained basin": f"for one seed: the barrier between copies and the path excess ({PATH_CRITERION}) on the target test split are both at most basin_epsilon = {cfg.basin_epsilon:g} (Neyshabur et al. 2020, Sec. 3.3, use the absence of a performance barrier between fine-tuned copies as their test); for a row: in every seed ({cfg.seeds}). Source forgetting is shown beside it: staying in the basin on the target says nothing about the source",
        "basin test (Definition 3.1)": f"Neyshabur, Sedghi & Zhang 2020, Definition 3.1, Monte Carlo (basinscope.analyses.basin.basin_test): {BASIN_DEFINITION} Here, per angle, (start, strategy) and seed: S = the convex hull of the {cfg.copies} fine-tuned copies (a segment for 2 copies); l = {cfg.barrier_metric} on the target test split (the barrier's metric and data); epsilon = basin_epsilon = {cfg.basin_epsilon:g}, the barrier threshold of 'stayed in the pre-trained basin'; delta = basin_delta = {cfg.basin_delta:g} in the Euclidean norm over all parameters (pretrained.seeds[k].parameter_norm gives the pre-trained weights' norm for scale); {cfg.basin_samples} uniform points of S for mu and condition 1, {cfg.basin_pairs} pairs for conditions 2 and 3, draws seeded by the seed's index; every interval a normal {cfg.basin_confidence:g} Monte Carlo interval. A seed's verdict: all three point estimates pass; supported: the intervals lie on the verdict's side (a holding verdict: every condition's margin interval >= 0; a failing one: some failing condition's < 0). For a row: a basin in every seed (yes), in none (no), else mixed; the conditions' columns are means over seeds with their CI over seeds",
        "basin test vs. barrier": f"per (angle, start, strategy, seed), the Definition 3.1 point verdict against the barrier verdict: from the pre-trained start 'stayed in the pre-trained basin' (copies barrier and path excess <= {cfg.basin_epsilon:g}); from a random start, which has no pre-trained model to draw a path from, the copies barrier <= {cfg.basin_epsilon:g}",
        "lambda_max": f"largest Hessian eigenvalue of the mean cross-entropy on the first {cfg.hessian_examples} target training examples (Lanczos, relative Ritz residual <= {cfg.hessian_tol:g}), float64, no BatchNorm; seed 0",
        "trace": f"Hessian trace on the same examples, Hutchinson with Rademacher probes (at most {cfg.trace_probes}, stopping at a 95% CI half-width of 5%); seed 0",
        "cka": f"CKA estimator 'linear': {CKA_ESTIMATORS['linear']}; float64, between the pre-trained and the fine-tuned model's outputs of the same layer on a test split; seed 0",
        "module criticality": f"Chatterji et al. 2020: mu_i = min over (alpha, sigma) with loss(theta_i(alpha) + N(0, sigma^2)) <= epsilon of alpha^2 ||theta_i^F - theta_i^0||^2 / sigma^2 (see basinscope.analyses.criticality), on target training examples; {cfg.criticality_points} alphas on [0, 1] x {cfg.criticality_sigmas} sigmas log-spaced on [{lo:g}, {hi:g}]; a sigma* at the grid's smallest or largest value is flagged (mu is then set by the grid); seed 0",
        "precision": f"the pre-trained model's accuracies, landscapes, barriers and module criticality in {cfg.dtype} on {cfg.device}; Hessian numbers in float64 on {cfg.device}; pre-training in float32 on {cfg.device}; fine-tuning and the accuracies before and after it (float32) and CKA (float64) on the CPU",
        "trajectories": f"checkpoints every {cfg.checkpoint_every} steps of both fine-tuning copies, projected onto the plane of their top two principal components around the start; seed 0",
    }


def mean_ci(
    values: list[float | None], low: float | None = None, high: float | None = None
) -> tuple[float | None, list[float] | None]:
    """The mean of ``values`` and its 95% Student-t interval (``None`` for one value or
    none; ``None`` values are left out), clipped to ``[low, high]`` where the quantity is
    bounded (an accuracy, a barrier): :func:`~basinscope.experiments.transfer_common.mean_ci`
    at level 0.95."""
    from basinscope.experiments.transfer_common import mean_ci as t_interval

    return t_interval(values, 0.95, low, high)


def path_excess(b: dict[str, Any]) -> float:
    """The path criterion's number from a stored barrier: max over its curve on [0, 1] of
    f(alpha) - max(f(0), f(1))."""
    values = np.asarray(b["values"], dtype=np.float64)
    return float(max(np.max(values) - max(b["f0"], b["f1"]), 0.0))


def seed_rows(cfg: RotatedDigitsConfig, seeds: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """Per (start, strategy), one row per seed: accuracies (means over the copies), forgetting,
    barriers with their bootstrap CIs, the path excess and the seed's basin verdict; the
    Definition 3.1 test of the copies' hull (:func:`basin_test_columns`) and the barrier
    verdict it is compared with (``barrier_verdict``)."""
    out: dict[str, list[dict]] = {}
    for sd in seeds:
        for key, infos in sd["finetune"].items():
            start = key.split("/")[0]
            conn = sd["connectivity"][key]

            def mean(f, infos=infos) -> float:
                return float(np.mean([f(i) for i in infos]))

            row: dict[str, Any] = {
                "seed": sd["seed"],
                "target_acc_before": mean(lambda i: i["before"]["target"]["accuracy"]),
                "target_acc_after": mean(lambda i: i["after"]["target"]["accuracy"]),
                "source_acc_before": mean(lambda i: i["before"]["source"]["accuracy"]),
                "source_acc_after": mean(lambda i: i["after"]["source"]["accuracy"]),
                "forgetting": None,
                "barrier_copies": conn["copies"]["value"],
                "barrier_copies_ci": conn["copies"]["ci"],
            }
            if start == "pre-trained":
                tgt, src = conn["path_tgt_test"], conn["path_src_test"]
                excess = path_excess(tgt)
                row.update(
                    forgetting=mean(lambda i: i["forgetting"]),
                    path_excess_target=excess,
                    path_excess_source=path_excess(src),
                    barrier_path_target=tgt["value"],
                    barrier_path_target_ci=tgt["ci"],
                    in_pretrained_basin=bool(
                        max(conn["copies"]["value"], excess) <= cfg.basin_epsilon
                    ),
                )
            if start == "random-independent":
                row["plateau_gain"] = mean(lambda i: i["plateau"]["gain_second_half"])
            row.update(basin_test_columns(sd["basin_test"][key]))
            # the barrier side of the comparison: the study's verdict from the pre-trained
            # start; from a random start its copies half (no path to a pre-trained model)
            row["barrier_verdict"] = row.get(
                "in_pretrained_basin", bool(conn["copies"]["value"] <= cfg.basin_epsilon)
            )
            out.setdefault(key, []).append(row)
    return out


#: the three conditions of Definition 3.1 as summary columns: the estimate of condition 1
#: (E|l - mu| inside the hull) and the expected rises of conditions 2 and 3
BASIN_CONDITIONS = ("basin_flatness", "basin_noise_rise", "basin_step_rise")


def basin_test_columns(rec: dict[str, Any]) -> dict[str, Any]:
    """One seed's Definition 3.1 numbers for its row: the point verdict, whether the
    intervals support it, the failed conditions, and each condition's estimate with its
    Monte Carlo interval."""
    row: dict[str, Any] = {
        "basin_test_holds": rec["holds"],
        "basin_test_supported": rec["ci_supports"],
        "basin_test_failed": list(rec["failed"]),
    }
    for col, c in zip(BASIN_CONDITIONS, rec["conditions"], strict=True):
        row[col], row[f"{col}_mc_ci"] = c["estimate"], list(c["ci"])
    return row


#: the columns of a summary row that are means over seeds, each with a ``<name>_ci`` clipped
#: to the quantity's range
SEED_MEANS = {
    "target_acc_after": (0.0, 1.0),
    "source_acc_after": (0.0, 1.0),
    "forgetting": (-1.0, 1.0),
    "barrier_copies": (0.0, None),
    "path_excess_target": (0.0, None),
    "path_excess_source": (0.0, None),
    "basin_flatness": (0.0, None),
    "basin_noise_rise": (None, None),
    "basin_step_rise": (None, None),
}


def summary_rows(cfg: RotatedDigitsConfig, angles: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per angle and (start, strategy): the study's answers, as means over the seeds
    with their 95% CIs; similarity and curvature of seed 0."""
    rows = []
    for a, res in angles.items():
        for key, per in res["per_seed"].items():
            start, strategy = key.split("/")
            curv = res["curvature"][key]

            def avg(col, per=per):
                return mean_ci([r.get(col) for r in per])[0]

            row: dict[str, Any] = {
                "angle": float(a),
                "start": start,
                "strategy": STRATEGY_NAMES[strategy],
                "seeds": len(per),
                "target_acc_before": avg("target_acc_before"),
                "source_acc_before": avg("source_acc_before"),
            }
            for col, (low, high) in SEED_MEANS.items():
                row[col], row[f"{col}_ci"] = mean_ci([r.get(col) for r in per], low, high)
            if start == "pre-trained":
                sim = res["similarity"][key]
                n_in = sum(r["in_pretrained_basin"] for r in per)
                row.update(
                    {
                        "seeds_in_basin": n_in,
                        "in_pretrained_basin": n_in == len(per),
                        "relative_distance": sim["distance"]["overall"]["relative"],
                        "cka_fc1_target": sim["cka"]["tgt_test"].get("fc1"),
                    }
                )
            else:
                row.update(
                    {
                        "forgetting_note": FORGETTING_NA,
                        "seeds_in_basin": None,
                        "in_pretrained_basin": None,
                        "relative_distance": None,
                        "cka_fc1_target": None,
                    }
                )
            if start == "random-independent":
                row["plateau_gain"], row["plateau_gain_ci"] = mean_ci(
                    [r["plateau_gain"] for r in per], -1.0, 1.0
                )
            n_holds = sum(r["basin_test_holds"] for r in per)
            row.update(
                {
                    "basin_test_seeds": n_holds,
                    "basin_test_supported_seeds": sum(r["basin_test_supported"] for r in per),
                    # every seed a basin (True), none (False), the seeds disagree (None)
                    "basin_test": True if n_holds == len(per) else False if not n_holds else None,
                    "barrier_seeds": sum(r["barrier_verdict"] for r in per),
                    "tests_agree_seeds": sum(
                        r["basin_test_holds"] == r["barrier_verdict"] for r in per
                    ),
                }
            )
            row.update({"lambda_max": curv["lambda_max"], "trace": curv["trace"]})
            rows.append(row)
    return rows


def _fmt_ci(mean: float | None, ci: list[float] | None) -> str:
    if mean is None:
        return "N/A"
    return f"{mean:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _col(row: dict[str, Any], col: str) -> str:
    """``row[col]`` with its CI over seeds, as text."""
    return _fmt_ci(row[col], row.get(f"{col}_ci"))


def conclusion(cfg: RotatedDigitsConfig, rows: list[dict], angles: dict[str, Any]) -> dict:
    """What the numbers show, in sentences computed from them, and the findings behind them:
    per strategy the angles where it stays in the pre-trained basin; whether the copies from
    the pre-trained start are better connected than those from each random start (95% CIs
    over the seeds disjoint); forgetting at the largest angle; the criticality grid's edges."""
    eps = cfg.basin_epsilon
    by = {(r["angle"], r["start"], r["strategy"]): r for r in rows}
    angle_list = sorted({r["angle"] for r in rows})
    n = rows[0]["seeds"] if rows else 0
    text: list[str] = []
    findings: dict[str, Any] = {"seeds": n, "basin": {}, "contrast": {}, "criticality": {}}

    for s in cfg.strategies:
        name = STRATEGY_NAMES[s]
        inside, outside, mixed = [], [], []
        for a in angle_list:
            r = by[(a, "pre-trained", name)]
            k = r["seeds_in_basin"]
            (inside if k == n else outside if k == 0 else mixed).append(a)
        findings["basin"][name] = {"in": inside, "out": outside, "mixed": mixed}

        def degs(xs):
            return ", ".join(f"{a:g}°" for a in xs)

        def nums(xs, name=name):
            return "; ".join(
                f"{a:g}°: copies barrier {_col(by[(a, 'pre-trained', name)], 'barrier_copies')}, "
                f"path excess {_col(by[(a, 'pre-trained', name)], 'path_excess_target')}, "
                f"forgetting {_col(by[(a, 'pre-trained', name)], 'forgetting')}"
                for a in xs
            )

        parts = []
        if inside:
            parts.append(f"stays in the pre-trained basin in all {n} seeds at {degs(inside)}")
        if mixed:
            parts.append(f"in some seeds only at {degs(mixed)}")
        if outside:
            parts.append(f"leaves it in every seed at {degs(outside)}")
        text.append(f"{name} {'; '.join(parts)} (ε = {eps:g}; {nums(angle_list)}).")

    # the pre-trained start against each random start: the copies barrier of FT
    for rs in RANDOM_STARTS:
        lower, same = [], []
        for a in angle_list:
            p, r = by[(a, "pre-trained", "FT")], by[(a, rs, "FT")]
            if p["barrier_copies_ci"] is None or r["barrier_copies_ci"] is None:
                continue
            if p["barrier_copies_ci"][1] < r["barrier_copies_ci"][0]:
                lower.append(a)
            elif not r["barrier_copies_ci"][1] < p["barrier_copies_ci"][0]:
                same.append(a)
        findings["contrast"][rs] = {"pretrained_lower": lower, "overlapping": same}
        detail = "; ".join(
            f"{a:g}°: pre-trained {_col(by[(a, 'pre-trained', 'FT')], 'barrier_copies')} vs. "
            f"{_col(by[(a, rs, 'FT')], 'barrier_copies')}"
            for a in angle_list
        )
        who = START_NAMES[rs]
        if n < 2:
            verdict = f"with one seed there is no CI to compare the pre-trained start with the {who} start"
        elif len(lower) == len(angle_list):
            verdict = (
                f"at every angle the FT copies from the pre-trained start are better connected "
                "(a lower barrier between copies) "
                f"than those from the {who} start (95% CIs over seeds disjoint)"
            )
        elif lower:
            verdict = (
                f"the FT copies from the pre-trained start are better connected than those from "
                f"the {who} start at {', '.join(f'{a:g}°' for a in lower)} only (CIs disjoint)"
            )
        else:
            verdict = (
                f"the copies barrier does not separate the pre-trained start from the {who} "
                "start at any angle (CIs overlap or lie the other way)"
            )
        text.append(f"{verdict[0].upper()}{verdict[1:]} ({detail}).")
    ind = [by[(a, "random-independent", "FT")] for a in angle_list]
    gains = [r["plateau_gain"] for r in ind]
    findings["independent_plateau_gain_max"] = float(max(gains))
    text.append(
        "The independent random starts reach target accuracy "
        + ", ".join(f"{r['target_acc_after']:.2f}" for r in ind)
        + f" at {', '.join(f'{a:g}°' for a in angle_list)} after {cfg.independent_steps} steps, "
        f"gaining at most {max(gains):.3f} in the second half of training (mean over seeds)."
    )
    big = angle_list[-1]
    forget = {
        STRATEGY_NAMES[s]: by[(big, "pre-trained", STRATEGY_NAMES[s])] for s in cfg.strategies
    }
    most = max(forget, key=lambda k: forget[k]["forgetting"])
    least = min(forget, key=lambda k: forget[k]["forgetting"])
    findings["forgetting_at_largest_angle"] = {k: v["forgetting"] for k, v in forget.items()}
    text.append(
        f"At {big:g}° {most} forgets most ({_col(forget[most], 'forgetting')} of source "
        f"accuracy) and {least} least ({_col(forget[least], 'forgetting')})."
    )
    agreement = basin_test_agreement(angles)
    findings["basin_test"] = agreement
    text += _basin_test_sentences(cfg, agreement)
    edges = [
        (a, start, g["n_on_edge"], g["n_modules"])
        for a, res in angles.items()
        for start, g in res["criticality_grid"].items()
    ]
    flagged, total = sum(e[2] for e in edges), sum(e[3] for e in edges)
    findings["criticality"] = {"on_edge": flagged, "entries": total}
    text.append(
        f"Module criticality: sigma* lies on the edge of the sigma grid (or no point is "
        f"feasible) in {flagged} of {total} entries (seed 0); those values are bounded by the "
        "grid, not measured."
    )
    return {"text": text, "findings": findings}


def basin_test_agreement(angles: dict[str, Any]) -> dict[str, Any]:
    """The Definition 3.1 verdict against the barrier verdict, per (angle, start, strategy,
    seed), grouped by start: ``cases``, how many agree, how many Definition 3.1 verdicts
    their intervals support, and the disagreements either way (``barrier_only``: the barrier
    criterion says basin and Definition 3.1 does not; ``basin_test_only``: the reverse), each
    ``{angle, strategy, seed, failed, supported}``."""
    out: dict[str, Any] = {}
    for a, res in angles.items():
        for key, per in res["per_seed"].items():
            start, strategy = key.split("/")
            g = out.setdefault(
                start,
                {
                    "cases": 0,
                    "agree": 0,
                    "supported": 0,
                    "barrier": 0,
                    "basin_test": 0,
                    "barrier_only": [],
                    "basin_test_only": [],
                },
            )
            for r in per:
                b, t = r["barrier_verdict"], r["basin_test_holds"]
                g["cases"] += 1
                g["agree"] += b == t
                g["supported"] += r["basin_test_supported"]
                g["barrier"] += b
                g["basin_test"] += t
                if b != t:
                    case = {
                        "angle": float(a),
                        "strategy": STRATEGY_NAMES[strategy],
                        "seed": r["seed"],
                        "failed": r["basin_test_failed"],
                        "supported": r["basin_test_supported"],
                    }
                    g["barrier_only" if b else "basin_test_only"].append(case)
    return out


#: what the failure of each condition of Definition 3.1 says, for the conclusion
FAILED_CONDITION = {
    1: "(1) the loss is not flat inside the hull",
    2: "(2) noise of scale δ where a ray leaves the hull raises the loss by less than 2ε",
    3: "(3) an outward step of scale δ along the ray raises it by less than 2ε",
}


def _cases_text(cases: list[dict[str, Any]], most: int = 6) -> str:
    """The cases by name (at most ``most``), with the conditions that failed and how often
    each failed among them."""

    def one(c):
        why = f"fails condition {', '.join(map(str, c['failed']))}" if c["failed"] else "holds"
        sure = "" if c["supported"] else ", not supported by its intervals"
        return f"{c['angle']:g}° {c['strategy']} seed {c['seed']} ({why}{sure})"

    shown = "; ".join(one(c) for c in cases[:most])
    shown += f"; and {len(cases) - most} more" if len(cases) > most else ""
    counts = {k: sum(k in c["failed"] for c in cases) for k in FAILED_CONDITION}
    if any(counts.values()):
        shown += " — failed: " + "; ".join(
            f"{FAILED_CONDITION[k]} in {n} of {len(cases)}" for k, n in counts.items() if n
        )
    return shown


def _basin_test_sentences(cfg: RotatedDigitsConfig, agreement: dict[str, Any]) -> list[str]:
    """Whether the Definition 3.1 test and the barrier criterion agree, computed per case."""
    test = (
        f"the Definition 3.1 basin test (S = the convex hull of the {cfg.copies} fine-tuned "
        f"copies, l = target test {cfg.barrier_metric}, ε = {cfg.basin_epsilon:g}, "
        f"δ = {cfg.basin_delta:g}, {cfg.basin_samples} points and {cfg.basin_pairs} pairs)"
    )
    text = []
    for start, g in agreement.items():
        n = g["cases"]
        if start == "pre-trained":
            side = "the barrier verdict (copies barrier and path excess <= ε)"
            who = "From the pre-trained start"
        else:
            side = "the copies barrier <= ε"
            who = f"From the {START_NAMES[start]} start"
        if g["agree"] == n:
            how = f"agrees with {side} in all {n} (angle, strategy, seed) cases"
        elif g["agree"] == 0:
            how = f"disagrees with {side} in all {n} (angle, strategy, seed) cases"
        else:
            how = f"agrees with {side} in {g['agree']} of {n} (angle, strategy, seed) cases"
        sentence = (
            f"{who}, {test if not text else 'the Definition 3.1 test'} {how}: it finds a basin in "
            f"{g['basin_test']} and the barrier criterion in {g['barrier']}; "
            f"{g['supported']} of the {n} Definition 3.1 verdicts are supported by their "
            f"{cfg.basin_confidence:.0%} intervals"
        )
        if g["barrier_only"]:
            sentence += (
                f". Basin by the barrier, not by Definition 3.1: {_cases_text(g['barrier_only'])}"
            )
        if g["basin_test_only"]:
            sentence += (
                f". Basin by Definition 3.1, not by the barrier: "
                f"{_cases_text(g['basin_test_only'])}"
            )
        text.append(sentence + ".")
    return text


def report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.rotated_digits_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name="rotated-digits",
        summary=(
            "LeNet pre-trained on upright digits, fine-tuned on rotated digits (0-90 degrees) "
            "with FT, LP, LP-FT and (guided) surgical fine-tuning from the pre-trained start and "
            "from random starts, over seeds: forgetting, basins, barriers with CIs, CKA, "
            "criticality, curvature"
        ),
        config=RotatedDigitsConfig,
        run=run,
        report=report,
        quick=QUICK,
        smoke=SMOKE,
        about="""Pre-trains a LeNet on upright digits, fine-tunes it on digits rotated by 0-90
degrees with FT, LP, LP-FT and (landscape-guided) surgical fine-tuning from the pre-trained
start and from a random start, and writes an HTML report: adaptation vs. forgetting, 2D
landscapes with the fine-tuning trajectories, the extrapolated path pre-trained ->
fine-tuned, barriers, the Definition 3.1 basin test of the fine-tuned copies' convex hull
beside the barrier verdict, distances and CKA, module criticality, and the curvature of each
solution, with a summary table.

Three seeds, with 95% CIs over them and bootstrap CIs on every barrier, and a
conclusion computed from the numbers. Runs on a 2-core CPU in about 3 minutes (--quick:
about one). Every stage is stored under --out and reused when it runs again.""",
    )
)
