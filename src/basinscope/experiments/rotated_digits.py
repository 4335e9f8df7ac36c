"""The rotated-digits transfer study: does fine-tuning stay in the pre-trained basin?

The distribution-shift talk's toy example on built-in data (Neyshabur, Sedghi & Zhang
2020, "What is being transferred in transfer learning?"): pre-train a LeNet on upright
digits (the source distribution), then fine-tune it on the digits rotated by each angle
(the targets) for ``finetune_steps`` gradient steps, from the pre-trained weights with each
strategy (FT, LP, LP-FT, surgical, landscape-guided surgical) and, for comparison, from a
random initialization, ``copies`` times each with different SGD noise (data order).

Measured per angle and strategy: source and target accuracy before and after (forgetting
vs. adaptation); the straight path pre-trained -> fine-tuned on source and target data,
extrapolated to alpha in [-1, 2]; the barrier between the fine-tuned copies (pre-trained
vs. random start); the barrier on the path pre-trained -> fine-tuned; parameter distance
and per-layer CKA to the pre-trained model; module criticality per layer; the top Hessian
eigenvalue and trace of each solution; and 2D landscapes around each start (source and
target loss) with the copies' trajectories drawn.

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
    basin_epsilon: float = 0.02  # "stayed in the basin": both barriers at most this
    hessian_examples: int = 512  # target training examples for the Hessian numbers
    hessian_tol: float = 1e-3  # Lanczos relative Ritz-residual tolerance of lambda_max
    trace_probes: int = 64  # Hutchinson probes at most (stops earlier at 5% CI half-width)
    criticality_points: int = 6  # alphas and sigmas per axis of module criticality
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
        for name in ("pretrain_steps", "finetune_steps", "lp_steps"):
            at_least(name, getattr(self, name), 1, high=STUDY_MAX_STEPS)
        at_least("checkpoint_every", self.checkpoint_every, 1)
        at_least("batch_size", self.batch_size, 1)
        for name in ("pretrain_lr", "finetune_lr", "random_start_lr"):
            positive_float(name, getattr(self, name), fix=f"e.g. {name}=0.02")
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        at_least("width", self.width, 1, high=16, high_why=" (the LeNet width multiplier)")
        finite_float("surface_margin", self.surface_margin, low=0)
        finite_float("basin_epsilon", self.basin_epsilon, low=0)
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
    "criticality_examples": 32,
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
    "criticality_examples": 128,
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


def run(cfg: RotatedDigitsConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.data import load_digits, rotate
    from basinscope.data.tensordata import TensorData
    from basinscope.engine import evaluate_model

    say, root = ctx.say, ctx.stages_root
    src_train, src_test = load_digits("train"), load_digits("test")
    where = placement(cfg)  # device and dtype of every evaluation

    # -- pre-training on the source ------------------------------------------------------
    say(f"pre-training a LeNet on upright digits ({cfg.pretrain_steps} steps)")
    pre_cfg = _train_config(
        cfg.pretrain_steps, cfg.pretrain_lr, cfg, max(cfg.pretrain_steps // 10, 1)
    )
    pre_spec = {"model": "lenet", "width": cfg.width, "init_seed": cfg.init_seed}
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
        _lenet(cfg.init_seed, cfg),
        src_train,
        pre_cfg,
        pre_spec,
        progress=ctx.progress,
        log=ctx.log,
        device=cfg.device,
    )
    random_init = _lenet(cfg.random_start_seed, cfg)
    pre_eval = evaluate_model(
        pre.model, {"source_train": src_train, "source_test": src_test}, **where
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

    # -- fine-tuning: every angle, strategy, start and copy at once (each needs only the
    # pre-trained model); every strategy from the pre-trained start, FT from a random start
    plan = [("pre-trained", s, pre.model, pre.run_dir.name) for s in cfg.strategies]
    plan.append(("random", "ft", random_init, f"random-init-seed{cfg.random_start_seed}"))
    calls, slots = [], []
    for i, (_, data) in enumerate(targets):
        for start, strategy, model, start_name in plan:
            lr = cfg.finetune_lr if start == "pre-trained" else cfg.random_start_lr
            for seed in range(cfg.copies):
                calls.append(
                    _finetune_call(cfg, root, start_name, model, strategy, lr, seed, data, logs[i])
                )
                slots.append((i, f"{start}/{strategy}"))
    angle_list = ", ".join(f"{a:g}" for a in cfg.angles)
    done = ctx.run_stages(calls, what=f"fine-tuning on the digits rotated by {angle_list} degrees")
    runs: list[dict[str, list]] = [{} for _ in targets]
    for (i, key), stage in zip(slots, done, strict=True):
        runs[i].setdefault(key, []).append(stage)

    # -- the analyses of every angle at once (each needs only its fine-tuned models) ---------
    calls, slots = [], []
    for i, (_, data) in enumerate(targets):
        for what, call in _analysis_calls(cfg, ctx, pre, random_init, runs[i], data, logs[i]):
            calls.append(call)
            slots.append((i, what))
    done = ctx.run_stages(
        calls, what="analyses (lines, surfaces, barriers, CKA, criticality, Hessians)"
    )
    values: list[list[tuple[str, Any]]] = [[] for _ in targets]
    for (i, what), value in zip(slots, done, strict=True):
        values[i].append((what, value))
    for log in logs:
        ctx.log.extend(log)

    angles = {
        f"{angle:g}": _angle_result(angle, runs[i], values[i])
        for i, (angle, _) in enumerate(targets)
    }
    return {
        "definitions": definitions(cfg),
        "pretrained": {
            "stage": pre.run_dir.name,
            "source_train_accuracy": pre_eval["source_train_accuracy"],
            "source_test_accuracy": pre_eval["source_test_accuracy"],
            "source_test_loss": pre_eval["source_test_loss"],
        },
        "angles": angles,
        "summary": summary_rows(cfg, angles),
        "figures": _figure_data(root, angles),  # the curves the report draws from stages
    }


def _figure_data(root: Path, angles: dict[str, Any]) -> dict[str, Any]:
    """The report's curves that live in stage folders (paths, trajectories), for
    result.json: :func:`basinscope.experiments.rotated_digits_report.figure_data`."""
    from basinscope.experiments.rotated_digits_report import figure_data

    return figure_data(root, {"angles": angles})


def _angle_result(angle: float, runs: dict[str, list], values: list[tuple[str, Any]]) -> dict:
    """One angle's results from its fine-tuning runs and its analysis stages' values."""
    out: dict[str, Any] = {"lines": {}, "surfaces": {}, "criticality": {}, "curvature": {}}
    for what, value in values:
        group, _, key = what.partition("/")
        if group == "connectivity":
            out["connectivity"], out["connectivity_stage"] = value[0], value[1].name
        elif group == "similarity":
            out["similarity"] = value[0]
        elif group == "criticality":
            out["criticality"][key] = value[0]
        else:  # lines, surfaces, curvature: the stage's value
            out[group][key] = value
    return {
        "angle": angle,
        "finetune": {k: [r.info for r in v] for k, v in runs.items()},
        "finetune_stages": {k: [r.run_dir.name for r in v] for k, v in runs.items()},
        "lines": out["lines"],
        "surfaces": out["surfaces"],
        "connectivity": out["connectivity"],
        "connectivity_stage": out["connectivity_stage"],
        "similarity": out["similarity"],
        "criticality": out["criticality"],
        "curvature": out["curvature"],
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

    calls.append(
        _cached_call(
            "connectivity",
            root,
            "connectivity",
            {
                "runs": {k: [r.run_dir.name for r in v] for k, v in runs.items()},
                "pre": pre_name,
                "n": cfg.barrier_points,
                "metric": cfg.barrier_metric,
                "definition": cfg.barrier_definition,
                "strategy": cfg.eval_strategy,
                **where,
            },
            connectivity,
            log,
        )
    )

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
                sigmas=np.linspace(0.05, 1.0, cfg.criticality_points),
                samples=cfg.criticality_samples,
                strategy=cfg.eval_strategy,
                **where,
            )  # stored as the CriticalityResult itself; the stage's value is its dict

        settings = {
            "final": ft.run_dir.name,
            "init": pre_name if start == "pre-trained" else cfg.random_start_seed,
            "points": cfg.criticality_points,
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


def _cached_call(what, root, name, settings, compute, log) -> tuple[str, StageCall]:
    """``(what, a stage that runs cached_stage(root, name, settings, compute))``; its value
    is ``(value, folder)``."""

    def call(lg):
        return cached_stage(root, name, settings, compute, log=lg)

    return what, StageCall(stage_dir(root, name, settings), call, log)


def _finetune_call(cfg, root, start_name, model, strategy, lr, seed, data, log) -> StageCall:
    """The fine-tuning stage of ``model`` with ``strategy`` and SGD seed ``seed`` on the
    target; its value is a :class:`~basinscope.experiments.stages.ModelStage`."""
    from basinscope.training.finetune import finetune

    tcfg = _train_config(cfg.finetune_steps, lr, cfg, cfg.checkpoint_every, data_seed=seed)
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
        return res.model, res.runs[-1].checkpoints, info

    def call(lg):
        return model_stage(root, "finetune", settings, model, compute, log=lg)

    return StageCall(stage_dir(root, "finetune", settings), call, log)


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


def definitions(cfg: RotatedDigitsConfig) -> dict[str, str]:
    from basinscope.analyses.barrier import BARRIER_DEFINITIONS as FORMULAS
    from basinscope.analyses.similarity import CKA_ESTIMATORS

    return {
        "accuracy": "fraction of correct predictions on the test split (450 digits) of the source (upright) or target (rotated) distribution",
        "forgetting": "source test accuracy of the pre-trained model minus that of the fine-tuned model",
        "adaptation": "target test accuracy after fine-tuning minus before",
        "relative distance": "||theta_ft - theta_pre||_2 / ||theta_pre||_2 over all parameters",
        "barrier": f"{cfg.barrier_definition}: {FORMULAS[cfg.barrier_definition]}; f = test {cfg.barrier_metric} at (1 - alpha) theta_A + alpha theta_B, {cfg.barrier_points} points on [0, 1] refined around the maximum",
        "barrier between copies": "between the fine-tuned copies 0 and 1 (same start, different SGD data order), on the target test split",
        "path barrier": "between the pre-trained and the fine-tuned model (copy 0), on the target (and the source) test split",
        "stayed in the pre-trained basin": f"both the copies barrier and the path barrier on the target test split are at most basin_epsilon = {cfg.basin_epsilon:g}, and fine-tuning did not raise the target test {cfg.barrier_metric} (f(1) <= f(0) on the path): no barrier separates the fine-tuned solutions from each other or from the pre-trained start, and the path from it leads downhill (Neyshabur et al. 2020, Sec. 3.3, use the absence of a performance barrier between fine-tuned copies as their test)",
        "lambda_max": f"largest Hessian eigenvalue of the mean cross-entropy on the first {cfg.hessian_examples} target training examples (Lanczos, relative Ritz residual <= {cfg.hessian_tol:g}), float64, no BatchNorm",
        "trace": f"Hessian trace on the same examples, Hutchinson with Rademacher probes (at most {cfg.trace_probes}, stopping at a 95% CI half-width of 5%)",
        "cka": f"CKA estimator 'linear': {CKA_ESTIMATORS['linear']}; float64, between the pre-trained and the fine-tuned model's outputs of the same layer on a test split",
        "module criticality": "Chatterji et al. 2020: mu_i = min over (alpha, sigma) with loss(theta_i(alpha) + N(0, sigma^2)) <= epsilon of alpha^2 ||theta_i^F - theta_i^0||^2 / sigma^2 (see basinscope.analyses.criticality), on target training examples",
        "precision": f"the pre-trained model's accuracies, landscapes, barriers and module criticality in {cfg.dtype} on {cfg.device}; Hessian numbers in float64 on {cfg.device}; pre-training in float32 on {cfg.device}; fine-tuning and the accuracies before and after it (float32) and CKA (float64) on the CPU",
        "trajectories": f"checkpoints every {cfg.checkpoint_every} steps of both fine-tuning copies, projected onto the plane of their top two principal components around the start",
    }


def summary_rows(cfg: RotatedDigitsConfig, angles: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per angle and (start, strategy): the study's answers."""
    rows = []
    for a, res in angles.items():
        for key, infos in res["finetune"].items():
            start, strategy = key.split("/")
            conn = res["connectivity"][key]
            curv = res["curvature"][key]

            def mean(f, infos=infos) -> float:
                return float(np.mean([f(i) for i in infos]))

            row = {
                "angle": float(a),
                "start": start,
                "strategy": STRATEGY_NAMES[strategy],
                "target_acc_before": mean(lambda i: i["before"]["target"]["accuracy"]),
                "target_acc_after": mean(lambda i: i["after"]["target"]["accuracy"]),
                "source_acc_before": mean(lambda i: i["before"]["source"]["accuracy"]),
                "source_acc_after": mean(lambda i: i["after"]["source"]["accuracy"]),
                "forgetting": mean(lambda i: i["forgetting"]),
                "barrier_copies": conn["copies"]["value"],
            }
            if start == "pre-trained":
                sim = res["similarity"][key]
                path = conn["path_tgt_test"]["value"]
                row.update(
                    {
                        "relative_distance": sim["distance"]["overall"]["relative"],
                        "barrier_path_target": path,
                        "barrier_path_source": conn["path_src_test"]["value"],
                        "in_pretrained_basin": bool(
                            max(conn["copies"]["value"], path) <= cfg.basin_epsilon
                            and conn["path_tgt_test"]["f1"] <= conn["path_tgt_test"]["f0"]
                        ),
                        "cka_fc1_target": sim["cka"]["tgt_test"].get("fc1"),
                    }
                )
            else:
                row.update(
                    {
                        "relative_distance": None,
                        "barrier_path_target": None,
                        "barrier_path_source": None,
                        "in_pretrained_basin": None,
                        "cka_fc1_target": None,
                    }
                )
            row.update({"lambda_max": curv["lambda_max"], "trace": curv["trace"]})
            rows.append(row)
    return rows


def report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.rotated_digits_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name="rotated-digits",
        summary=(
            "LeNet pre-trained on upright digits, fine-tuned on rotated digits (0-90 degrees) "
            "with FT, LP, LP-FT and (guided) surgical fine-tuning from the pre-trained and a "
            "random start: forgetting, basins, barriers, CKA, criticality, curvature"
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
fine-tuned, barriers, distances and CKA, module criticality, and the curvature of each
solution, with a summary table.

Runs on a 2-core CPU in a few minutes (--quick: under one). Every stage is stored
under --out and reused when it runs again.""",
    )
)
