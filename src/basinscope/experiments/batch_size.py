"""The flatness-vs-batch-size study: are large-batch minima sharper, and does it depend on how
sharpness is measured?

Keskar et al. 2017 ("On large-batch training for deep learning: generalization gap and
sharp minima") train one network with a small and with a large batch and find the
large-batch minimum sharper: the loss rises faster beyond it on the line through both
solutions, and their relative :math:`\\epsilon`-sharpness is larger. Li et al. 2018
("Visualizing the loss landscape of neural nets", Fig. 2-3) point out that such raw
comparisons depend on the scale of the weights, and compare solutions fairly along random
*filter-normalized* directions. This study does both, on built-in data:

1. train the same model (same initialization) with a small and a large batch, for the
   same number of SGD steps and the same learning-rate schedule,
2. the line :math:`f(\\alpha) = L((1 - \\alpha)\\theta_{small} + \\alpha\\theta_{large})`
   for :math:`\\alpha \\in [-0.5, 1.5]`, train and test, loss and accuracy (raw, no
   normalization),
3. a filter-normalized random plane around each solution (same direction seed, biases
   zeroed), shown side by side with one colour scale,
4. numbers per solution: top Hessian eigenvalue (Lanczos), Hessian trace (Hutchinson with
   its confidence interval), four sharpness measures (Keskar's relative worst case, plain
   worst case in an l2 ball, adaptive worst case, filter-normalized), accuracies, norms.

Every stage is stored under ``<root>/stages`` (folders named by a hash of their settings,
which include the folders of the stages they use), so a second run reuses everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from basinscope._checks import MAX_POINTS, at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, Study, StudyContext, register
from basinscope.experiments.stages import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    StageLog,
    cached_stage,
    landscape_stage,
    placement,
    stage_dir,
    train_stage,
)

__all__ = ["QUICK", "STUDY", "BatchSizeConfig", "run"]

NAME = "flatness-vs-batch-size"
DIGITS_TRAIN = 1347  # examples in basinscope.data.load_digits("train")
STUDY_MAX_STEPS = 1_000_000  # far more than any study needs: a larger value is a typo


@dataclass(frozen=True)
class BatchSizeConfig:
    """Settings of the flatness-vs-batch-size study.

    Both runs start from the same initialization and take the same number of SGD steps
    with the same learning-rate schedule; only the batch size differs (so the large-batch
    run makes many more passes over the data). Data: scikit-learn's 8x8 digits, the
    built-in train split (1347 images) for training, curvature and sharpness, the test
    split (450) for test numbers.
    """

    model: str = "mlp"  # "mlp" (ReLU MLP on flattened pixels) or "lenet"; neither has BatchNorm
    hidden: tuple[int, ...] = (64, 64)  # hidden widths of the MLP (ignored by lenet)
    init_seed: int = 0  # the one initialization both runs start from
    data_seed: int = 0  # minibatch order of both runs
    small_batch: int = 16  # examples per step of the small-batch run
    large_batch: int = 1347  # examples per step of the large-batch run (1347: full batch)
    steps: int = 2000  # SGD steps of each run (the same for both)
    lr: float = 0.05  # peak learning rate of both runs
    momentum: float = 0.9  # SGD momentum of both runs
    schedule: str = "cosine"  # learning-rate schedule of both runs (cosine: decay to 0)
    line_points: int = 41  # points of the interpolation line
    line_range: tuple[float, ...] = (-0.5, 1.5)  # alpha range of the interpolation line
    grid: int = 41  # points per axis of each 2D surface
    surface_range: float = 1.0  # each surface spans alpha, beta in [-r, r]
    direction_seed: int = 0  # seed of the two random directions (the same for both solutions)
    hessian_subset: int | None = None  # examples of the train split for the Hessian (None: all)
    lanczos_tol: float = 1e-4  # relative Ritz residual at which Lanczos stops
    trace_rtol: float = 0.05  # Hutchinson stops when the 95% CI half-width is this fraction
    trace_max_probes: int = 200  # ... or after this many Rademacher probes
    keskar_eps: float = 1e-3  # Keskar's box |delta_i| <= eps (|theta_i| + 1), l-infinity
    l2_rho: float = 0.1  # radius of the plain l2 ball, ||delta||_2 <= rho
    adaptive_rho: float = 1.0  # radius of the adaptive l2 ball, ||delta / |theta| ||_2 <= rho
    ascent_steps: int = 10  # projected gradient-ascent steps per restart (worst-case measures)
    ascent_restarts: int = 3  # restarts of the ascent (the first from delta = 0)
    fn_alpha: float = 0.25  # step along each filter-normalized direction
    fn_directions: int = 10  # random filter-normalized directions averaged
    threads: int = 1  # torch CPU threads during the run (restored after; tiny models: 1)
    eval_strategy: str = "vmap"  # engine: "vmap" (fast for MLPs) or "loop" (CNNs); never timed
    hvp_method: str = (
        "double-backward"  # or "forward-over-reverse", "reverse-over-forward"; never timed
    )
    device: str = DEFAULT_DEVICE  # where every stage computes: cpu, cuda, cuda:N or mps
    # precision of the evaluations (accuracies, line, surfaces, sharpness): float32 or
    # float64; Hessians are always float64, training is float32
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        if self.model not in ("mlp", "lenet"):
            raise BasinscopeError(f"model must be 'mlp' or 'lenet', got {self.model!r}")
        if not self.hidden:
            raise BasinscopeError("hidden is empty: give the MLP's hidden widths, e.g. [64, 64]")
        for h in self.hidden:
            at_least("hidden", h, 1, high=4096, high_why=" units per layer")
        if not 1 <= self.small_batch < min(self.large_batch, DIGITS_TRAIN):
            raise BasinscopeError(
                f"need 1 <= small_batch < large_batch and small_batch < {DIGITS_TRAIN} (the "
                f"training digits), got {self.small_batch} and {self.large_batch}"
            )
        at_least("large_batch", self.large_batch, 2)
        if len(self.line_range) != 2 or not self.line_range[0] < self.line_range[1]:
            raise BasinscopeError(
                f"line_range must be two increasing numbers, e.g. [-0.5, 1.5], got {self.line_range}"
            )
        for x in self.line_range:
            finite_float("line_range", x, fix="e.g. line_range=[-0.5, 1.5]")
        at_least("steps", self.steps, 2, high=STUDY_MAX_STEPS)
        at_least("line_points", self.line_points, 2, high=MAX_POINTS)
        at_least("grid", self.grid, 2, high=201, high_why=" points per axis (41,000 points)")
        at_least(
            "trace_max_probes",
            self.trace_max_probes,
            10,
            high=10_000,
            why=" (Hutchinson draws at least 10 probes before it stops)",
        )
        at_least("fn_directions", self.fn_directions, 2, high=10_000)
        at_least("threads", self.threads, 1, high=1024)
        at_least("ascent_steps", self.ascent_steps, 1, high=10_000)
        at_least("ascent_restarts", self.ascent_restarts, 1, high=1000)
        for key in ("lr", "surface_range", "keskar_eps", "l2_rho", "adaptive_rho", "fn_alpha"):
            positive_float(key, getattr(self, key))
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        finite_float("lanczos_tol", self.lanczos_tol, low=0, high=1, low_open=True, high_open=True)
        finite_float("trace_rtol", self.trace_rtol, low=0, high=1, low_open=True, high_open=True)
        if self.schedule not in ("constant", "cosine", "linear"):
            raise BasinscopeError(
                f"schedule {self.schedule!r}: expected constant, cosine or linear (the schedules "
                "that need no other setting)"
            )
        if self.hessian_subset is not None and not 1 <= self.hessian_subset <= DIGITS_TRAIN:
            raise BasinscopeError(
                f"hessian_subset must lie in [1, {DIGITS_TRAIN}] or be none, got {self.hessian_subset}"
            )
        for name in ("init_seed", "data_seed", "direction_seed"):
            check_seed(name, getattr(self, name))


# The reduced version (--quick): a few seconds of training, tiny grids, capped probes.
QUICK: dict[str, Any] = dict(steps=300, line_points=17, grid=9, hessian_subset=512)
QUICK.update(trace_max_probes=40, ascent_steps=5, ascent_restarts=1, fn_directions=4)
# The smoke version (tests, pipeline checks): every stage and figure, in seconds.
SMOKE: dict[str, Any] = dict(steps=30, line_points=5, grid=3, hessian_subset=64)
SMOKE.update(figure_formats=("png",))
SMOKE.update(trace_max_probes=10, ascent_steps=2, fn_directions=2, hidden=(16,))


# -- stages ---------------------------------------------------------------------------------


def _evaluate(model, init, splits, cfg: BatchSizeConfig) -> dict[str, Any]:
    from basinscope.engine import evaluate_model
    from basinscope.geometry import get_params, norm, sub

    ev = evaluate_model(model, splits, **placement(cfg))
    theta, theta0 = get_params(model), get_params(init)
    return {
        **{k: float(v) for k, v in ev.items()},
        "accuracy_gap": float(ev["train_accuracy"] - ev["test_accuracy"]),
        "param_norm": float(norm(theta)),
        "distance_from_init": float(norm(sub(theta, theta0))),
    }


def _hessian(model, data, cfg: BatchSizeConfig) -> dict[str, Any]:
    from basinscope.analyses.hessian import hessian_analysis

    rep = hessian_analysis(
        model,
        data,
        k_top=1,
        k_bottom=0,
        tol=cfg.lanczos_tol,
        trace="hutchinson",
        trace_rtol=cfg.trace_rtol,
        trace_kwargs={"max_samples": cfg.trace_max_probes},
        subset=cfg.hessian_subset,
        method=cfg.hvp_method,
        device=cfg.device,  # in float64 (hessian_analysis's default), whatever cfg.dtype
    )
    return {
        "lambda_max": float(rep.top.eigenvalues[0]),
        "lanczos": rep.top.to_dict(),
        "trace": rep.trace.to_dict(),
        "semantics": rep.semantics,
    }


def _sharpness(model, data, cfg: BatchSizeConfig) -> dict[str, Any]:
    from basinscope.analyses import (
        adaptive_sharpness,
        filter_normalized_sharpness,
        worst_case_sharpness,
    )

    ascent = dict(steps=cfg.ascent_steps, restarts=cfg.ascent_restarts, seed=0)
    ascent.update(placement(cfg))
    return {
        "keskar": worst_case_sharpness(
            model, data, rho=cfg.keskar_eps, norm="linf", relative=True, **ascent
        ).to_dict(),
        "worst_l2": worst_case_sharpness(
            model, data, rho=cfg.l2_rho, norm="l2", **ascent
        ).to_dict(),
        "adaptive": adaptive_sharpness(
            model,
            data,
            rho=cfg.adaptive_rho,
            norm="l2",
            eta=0.0,
            kind="worst",
            strategy=cfg.eval_strategy,
            **ascent,
        ).to_dict(),
        "filter_normalized": filter_normalized_sharpness(
            model,
            data,
            alpha=cfg.fn_alpha,
            num_directions=cfg.fn_directions,
            seed=0,
            strategy=cfg.eval_strategy,
            **placement(cfg),
        ).to_dict(),
    }


# -- the study ------------------------------------------------------------------------------


def run(cfg: BatchSizeConfig, ctx: StudyContext) -> dict[str, Any]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, ctx)
    finally:
        torch.set_num_threads(before)


HESSIAN_SETTINGS = ("hessian_subset", "lanczos_tol", "trace_rtol", "trace_max_probes")
HESSIAN_SETTINGS += ("hvp_method",)
SHARPNESS_SETTINGS = (
    *("keskar_eps", "l2_rho", "adaptive_rho", "ascent_steps", "ascent_restarts"),
    *("fn_alpha", "fn_directions", "eval_strategy"),
)
RATIOS = ("lambda_max", "trace", "sharpness_keskar", "sharpness_worst_l2")
RATIOS += ("sharpness_adaptive", "sharpness_filter_normalized")


def _train_call(cfg: BatchSizeConfig, ctx: StudyContext, batch: int, init, train_data, log):
    """The training stage of the run with batch size ``batch`` (a TrainedStage)."""
    from basinscope.training import TrainConfig

    tc = TrainConfig(
        steps=cfg.steps,
        batch_size=batch,
        lr=cfg.lr,
        momentum=cfg.momentum,
        schedule=cfg.schedule,
        data_seed=cfg.data_seed,
        checkpoint_steps=(0, cfg.steps),
    )
    spec = {"model": cfg.model, "model_kwargs": _kwargs(cfg), "init_seed": cfg.init_seed}
    spec["data"] = train_data.name
    on = placement(cfg, dtype=False)  # training and Hessians: the device only
    folder = stage_dir(ctx.stages_root, "train", {**spec, **tc.to_dict(), **on})
    progress = ctx.progress

    def call(lg):
        return train_stage(
            folder, init, train_data, tc, spec, progress=progress, log=lg, device=cfg.device
        )

    return StageCall(folder, call, log)


def _measure_calls(cfg: BatchSizeConfig, ctx: StudyContext, st, init, splits, log) -> list:
    """The stages that measure the solution of train stage ``st``: evaluate, hessian,
    sharpness (each a ``(value, folder)``)."""
    root, train_data = ctx.stages_root, splits["train"]
    model, up = st.model, {"train": st.run_dir.name}
    on = placement(cfg, dtype=False)  # training and Hessians: the device only

    def stage(name: str, settings: dict, compute: Callable) -> StageCall:
        settings = {**up, **settings}

        def call(lg):
            return cached_stage(root, name, settings, compute, log=lg)

        return StageCall(stage_dir(root, name, settings), call, log)

    return [
        stage("evaluate", placement(cfg), lambda d: _evaluate(model, init, splits, cfg)),
        stage(
            "hessian",
            {**{k: getattr(cfg, k) for k in HESSIAN_SETTINGS}, **on},
            lambda d: _hessian(model, train_data, cfg),
        ),
        stage(
            "sharpness",
            {**{k: getattr(cfg, k) for k in SHARPNESS_SETTINGS}, **placement(cfg)},
            lambda d: _sharpness(model, train_data, cfg),
        ),
    ]


def _numbers(cfg: BatchSizeConfig, batch: int, n: int, st, measured) -> tuple:
    """A solution's (numbers, details, stage folders) from its train stage and the values
    of its measuring stages."""
    (ev, ev_dir), (hs, hs_dir), (sh, sh_dir) = measured
    numbers = {
        "batch_size": batch,
        "epochs": cfg.steps * min(batch, n) / n,
        **ev,
        "lambda_max": hs["lambda_max"],
        "trace": hs["trace"]["estimate"],
        "trace_ci_halfwidth": hs["trace"]["ci_halfwidth"],
        **{f"sharpness_{k}": v["value"] for k, v in sh.items()},
        "sharpness_filter_normalized_se": sh["filter_normalized"]["std_error"],
    }
    folders = {"train": st.run_dir.name, "evaluate": ev_dir.name}
    folders.update(hessian=hs_dir.name, sharpness=sh_dir.name)
    return numbers, {"hessian": hs, "sharpness": sh}, folders


def _kwargs(cfg: BatchSizeConfig) -> dict[str, Any]:
    return {"hidden": list(cfg.hidden)} if cfg.model == "mlp" else {}


def _run(cfg: BatchSizeConfig, ctx: StudyContext) -> dict[str, Any]:
    import torch

    from basinscope.analyses import interpolate, random_surface
    from basinscope.data import load_digits
    from basinscope.geometry import get_params, norm, sub
    from basinscope.models import build_model

    splits = {"train": load_digits("train"), "test": load_digits("test")}
    init = build_model(cfg.model, _kwargs(cfg), init_seed=cfg.init_seed)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in init.modules())
    bn = (
        "BatchNorm: stored running statistics of each solution (interpolated along the line)"
        if has_bn
        else "the model has no BatchNorm layers, so no statistics policy applies"
    )
    root, progress = ctx.stages_root, ctx.progress
    batches = {"small": cfg.small_batch, "large": cfg.large_batch}
    # the stages of each run, then those of both, logged in the order of a run step by step
    logs = {"small": StageLog(), "large": StageLog(), "both": StageLog()}

    # -- 1. train both runs from the same initialization (at once) --------------------------
    trained = ctx.run_stages(
        [_train_call(cfg, ctx, b, init, splits["train"], logs[k]) for k, b in batches.items()],
        what=f"[1/2] training with batch sizes {cfg.small_batch} and {cfg.large_batch} "
        f"({cfg.steps} steps each)",
    )
    runs = dict(zip(batches, trained, strict=True))
    models = {k: st.model for k, st in runs.items()}

    # -- 2. measure each solution; the line through both; a plane around each (at once) -----
    calls = [c for k in batches for c in _measure_calls(cfg, ctx, runs[k], init, splits, logs[k])]
    alphas = np.linspace(*cfg.line_range, cfg.line_points)
    line_settings = {
        "a": runs["small"].run_dir.name,
        "b": runs["large"].run_dir.name,
        "alphas": alphas.tolist(),
        "strategy": cfg.eval_strategy,
        **placement(cfg),
    }

    def line_call(lg):
        return landscape_stage(
            root,
            "interpolation",
            line_settings,
            lambda d: interpolate(
                models["small"],
                models["large"],
                splits,
                alphas=alphas,
                run_dir=d,
                attrs={"label_a": f"B={cfg.small_batch}", "label_b": f"B={cfg.large_batch}"},
                strategy=cfg.eval_strategy,
                progress=progress,
                **placement(cfg),
            ),
            log=lg,
        )

    calls.append(
        StageCall(stage_dir(root, "interpolation", line_settings), line_call, logs["both"])
    )
    axis = np.linspace(-cfg.surface_range, cfg.surface_range, cfg.grid)
    for key in batches:
        settings = {
            "train": runs[key].run_dir.name,
            "seed": cfg.direction_seed,
            "axis": axis.tolist(),
            "strategy": cfg.eval_strategy,
            **placement(cfg),
        }

        def surface_call(lg, m=models[key], settings=settings):
            return landscape_stage(
                root,
                "surface",
                settings,
                lambda d: random_surface(
                    m,
                    splits,
                    seed=cfg.direction_seed,
                    normalization="filter",
                    bias_policy="zero",
                    alphas=axis,
                    betas=axis,
                    run_dir=d,
                    strategy=cfg.eval_strategy,
                    progress=progress,
                    **placement(cfg),
                ),
                log=lg,
            )

        folder = stage_dir(root, "surface", settings)
        calls.append(StageCall(folder, surface_call, logs["both"]))
    done = ctx.run_stages(
        calls,
        what=f"[2/2] Hessians and sharpness of both solutions, the line through them "
        f"({cfg.line_points} points) and filter-normalized surfaces ({cfg.grid}x{cfg.grid} "
        "points each)",
    )
    for log in logs.values():
        ctx.log.extend(log)
    numbers, details, stages = {}, {}, {}
    n = len(splits["train"].y)
    for i, (key, batch) in enumerate(batches.items()):
        numbers[key], details[key], stages[key] = _numbers(
            cfg, batch, n, runs[key], done[3 * i : 3 * i + 3]
        )
    line, surfs = done[6], dict(zip(batches, done[7:], strict=True))
    ds = line.dataset

    surfaces, c = {}, cfg.grid // 2
    for key in batches:
        surf = surfs[key]
        sd = surf.dataset
        surfaces[key] = {
            "stage": surf.run_dir.name,
            "definition": f"f(alpha, beta) = L(theta* + alpha d1 + beta d2) on a {cfg.grid}x{cfg.grid} "
            f"grid, alpha, beta in [-{cfg.surface_range:g}, {cfg.surface_range:g}]; d1, d2 Gaussian "
            f"(seeds {cfg.direction_seed}, {cfg.direction_seed + 1}), filter-normalized to theta* "
            "(biases zeroed); loss and accuracy on all train and test digits; " + bn,
            "strategy": surf.evaluation.get("strategy"),
            "train_loss_min": float(sd.train_loss.min()),
            "train_loss_max": float(sd.train_loss.max()),
            "slice_alpha": axis.tolist(),  # beta = 0: the line theta* + alpha d1
            **{f"slice_{v}": sd[v].values[:, c].tolist() for v in sd.data_vars},
        }

    from basinscope.experiments.batch_size_report import definitions

    n_hess = cfg.hessian_subset or len(splits["train"].y)
    return {
        "setup": {
            "model": cfg.model,
            "model_kwargs": _kwargs(cfg),
            "description": _describe(cfg),
            "parameters": sum(p.numel() for p in init.parameters()),
            "batchnorm": has_bn,
            "bn_policy": bn,
            "train_examples": len(splits["train"].y),
            "test_examples": len(splits["test"].y),
            "hessian_examples": n_hess,
            "same": f"same initialization (init_seed={cfg.init_seed}), same number of SGD steps "
            f"({cfg.steps}), same schedule ({cfg.schedule}, peak lr {cfg.lr}, momentum {cfg.momentum})",
        },
        "solutions": numbers,
        "ratios_large_over_small": {
            k: numbers["large"][k] / numbers["small"][k] for k in RATIOS if numbers["small"][k]
        },
        "distance_between_solutions": float(
            norm(sub(get_params(models["large"]), get_params(models["small"])))
        ),
        "definitions": definitions(cfg, n_hess, bn),
        "details": details,
        "interpolation": {
            "stage": line.run_dir.name,
            "strategy": line.evaluation.get("strategy"),
            "definition": "f(alpha) = L((1 - alpha) theta_small + alpha theta_large), raw (no "
            f"normalization), {cfg.line_points} points; loss and accuracy on all train and test "
            "digits; " + bn,
            "alpha": ds.alpha.values.tolist(),
            **{v: ds[v].values.tolist() for v in ds.data_vars},
        },
        "surfaces": surfaces,
        "stage_folders": stages,
    }


def _describe(cfg: BatchSizeConfig) -> str:
    if cfg.model == "mlp":
        widths = "→".join(str(w) for w in (64, *cfg.hidden, 10))
        return f"ReLU MLP {widths}"
    return "LeNet (two 3x3 conv + max-pool stages, two fully connected layers)"


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.batch_size_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Small vs. large batch from one initialization: the line through both minima, "
        "filter-normalized surfaces, Hessian top eigenvalue and trace, four sharpness measures.",
        config=BatchSizeConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
