"""The merging study: do models fine-tuned from one pre-trained start share a basin that
their weights can be merged in?

An MLP is pre-trained on upright 8x8 digits (the source distribution). From that start,
one model is fine-tuned per target distribution (``tasks``: rotations, block shuffles,
Gaussian noise, label subsets of the same digits), all for ``finetune_steps`` SGD steps.
As a control, the same tasks are fine-tuned for the same number of steps from a random
(untrained) start. Each family (pre-trained, random) is then merged with every method of
:mod:`basinscope.analyses.merging` at a matched rank (the subspace merges) and a matched
validation budget (every method that selects a hyper-parameter gets a grid of ``budget``
candidates, scored on the tasks' validation splits), and measured:

1. per task, and as the mean and worst task, the test accuracy of every merge, next to the
   start (zero-shot), each fine-tuned model on its own task and on every other task;
2. the curvature-aware vs. flat subspace merge across ranks: the error decomposition of
   :func:`~basinscope.analyses.merging.merge_decomposition` (Fréchet variance inside the
   subspace, residual energy outside it, predicted vs. measured loss increase);
3. the plane through the start and two task vectors (:func:`merge_plane`) with every merged
   point drawn on it: each task's test loss on the plane;
4. the barrier between each fine-tuned model and each merge (on that task's test split,
   :func:`basinscope.analyses.barrier.barrier` with its named definition).

The report says, from the numbers, whether merging works for each family: whether the
merge chosen on validation beats both the start and the best single fine-tuned model on
the mean test accuracy over the tasks.

Every stage stores its result in a folder named by a hash of its settings (which include
the folders of the stages it depends on): see :mod:`basinscope.experiments.registry`.
Fine-tuning reuses the rotated-digits study's fine-tuning stage.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
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
    landscape_stage,
    placement,
    stage_dir,
    train_stage,
)

__all__ = ["STUDY", "MergingConfig", "TaskData", "parse_task", "run", "verdict"]

DIGITS_TRAIN = 1347  # examples in basinscope.data.load_digits("train")
STUDY_MAX_STEPS = 1_000_000  # far more than any study needs: a larger value is a typo
FAMILIES = ("pre-trained", "random")  # the start of each family of fine-tuned models
CHANCE = 0.1  # accuracy of a constant guess over the 10 digit classes
TASK_SYNTAX = (
    "rot<degrees> (rotation, e.g. rot30), block<size> (tiles of size x size pixels "
    "shuffled by one fixed permutation, size 1, 2 or 4), noise<std> (Gaussian pixel noise, "
    "e.g. noise0.3), labels<a>-<b> or labels<a>_<b>_... (only those classes, e.g. labels0-4)"
)


@dataclass(frozen=True)
class MergingConfig:
    """Settings of the merging study (steps are SGD steps with momentum)."""

    # target distributions, one fine-tuned model each (see TASK_SYNTAX); at least 2
    tasks: tuple[str, ...] = ("rot30", "rot60", "block4", "noise0.3", "labels0-4")
    hidden: tuple[int, ...] = (64, 64)  # widths of the MLP's hidden layers
    val_examples: int = 300  # held out of the 1,347 training digits (stratified): validation
    split_seed: int = 0  # the stratified train/validation split
    pretrain_steps: int = 600  # on upright digits
    pretrain_lr: float = 0.05
    finetune_steps: int = 100  # every task model, from either start
    finetune_lr: float = 0.01  # from the pre-trained start
    random_start_lr: float = 0.05  # from the random start (the pre-training learning rate)
    batch_size: int = 64
    momentum: float = 0.9
    init_seed: int = 0  # initialization of the pre-trained model
    random_start_seed: int = 1  # initialization of the random start (the control)
    block_seed: int = 0  # the tile permutation of block<size> tasks (one per task, all splits)
    noise_seed: int = 0  # noise<std> tasks: train, validation, test draw seeds +0, +1, +2
    methods: tuple[str, ...] = (
        "uniform",
        "task_arithmetic",
        "ties",
        "dare",
        "fisher",
        "subspace",
    )
    # geometries of the subspace merge, each a row of the tables (matched rank)
    geometries: tuple[str, ...] = ("curvature", "flat", "spectral")
    rank: int = 0  # rank of every subspace merge (0: the number of tasks)
    budget: int = 12  # candidates of each selected hyper-parameter (the validation budget)
    lam_min: float = 0.1  # the lambda grid: budget values evenly spaced in [lam_min, lam_max]
    lam_max: float = 1.5
    density: float = 0.2  # TIES: fraction of each task vector kept (by magnitude)
    drop_rate: float = 0.9  # DARE: fraction of each task vector dropped (then rescaled)
    # what the selection maximises on validation: mean_accuracy, worst_accuracy (or minimises:
    # mean_loss)
    select_metric: str = "mean_accuracy"
    curvature: str = "ggn"  # the curvature-aware merge's G_i: ggn, hessian, empirical_fisher
    # the curvature-aware mean: "projected" (of the projected task vectors, EpiMer's) or
    # "quadratic" (the minimiser of sum_i (theta - theta_i)^T H_i (theta - theta_i) in U_r)
    mean: str = "projected"
    fisher: str = "empirical"  # diagonal Fisher of fisher merging: empirical or true
    examples: int = 512  # training examples per task for the Fishers and the curvatures
    ranks: tuple[int, ...] = ()  # ranks of the error decomposition (empty: 1 .. number of tasks)
    plane_tasks: tuple[int, ...] = (0, 1)  # the two task vectors spanning the plane (indices)
    grid: int = 31  # points per axis of the plane
    plane_margin: float = 0.25  # grid margin around the points drawn (fraction of their span)
    barrier_points: int = 25  # initial grid of each barrier on [0, 1] (refined at the max)
    barrier_metric: str = "error"  # "error" (1 - accuracy) or "loss"
    barrier_definition: str = "linear"  # "linear", "mean" or "midpoint" (basinscope barrier)
    eval_strategy: str = "vmap"  # engine: "loop" or "vmap" (fast for an MLP), never timed
    # where pre-training, the merges, planes and barriers compute (cpu, cuda, cuda:N, mps);
    # fine-tuning runs on the CPU
    device: str = DEFAULT_DEVICE
    # precision of the evaluations (test accuracies, planes, barriers): float32 or float64;
    # Fishers, curvatures and the validation scores of the selection are float64, training
    # and fine-tuning float32
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        from basinscope.analyses.barrier import BARRIER_DEFINITIONS as DEFS

        if len(self.tasks) < 2:
            raise BasinscopeError(
                f"tasks {list(self.tasks)}: give at least two target distributions to merge, "
                'e.g. tasks=["rot30", "block4"]'
            )
        if len(set(self.tasks)) != len(self.tasks):
            raise BasinscopeError(f"tasks {list(self.tasks)}: each task may appear once")
        for t in self.tasks:
            parse_task(t)
        self._check_methods()
        if self.barrier_definition not in DEFS:
            raise BasinscopeError(
                f"barrier_definition {self.barrier_definition!r}: expected one of {', '.join(DEFS)}"
            )
        if self.barrier_metric not in ("error", "loss"):
            raise BasinscopeError(
                f"barrier_metric {self.barrier_metric!r}: expected 'error' or 'loss'"
            )
        k = len(self.tasks)
        if len(self.plane_tasks) != 2 or len(set(self.plane_tasks)) != 2:
            raise BasinscopeError(
                f"plane_tasks {list(self.plane_tasks)}: expected two different task indices, "
                "e.g. [0, 1]"
            )
        for i in self.plane_tasks:
            at_least("plane_tasks", i, 0, high=k - 1, high_why=f" (there are {k} tasks)")
        at_least("rank", self.rank, 0, high=k, high_why=f" (the {k} task vectors span at most {k})")
        for r in self.ranks:
            at_least("ranks", r, 1, high=k, high_why=f" (the {k} task vectors span at most {k})")
        self._check_numbers()

    def _check_methods(self) -> None:
        from basinscope.analyses.merging import (
            CURVATURES,
            FISHERS,
            GEOMETRIES,
            MEANS,
            MERGE_METHODS,
            SELECT_METRICS,
        )

        for key, values, allowed in (
            ("methods", self.methods, MERGE_METHODS),
            ("geometries", self.geometries, GEOMETRIES),
        ):
            bad = [v for v in values if v not in allowed]
            if bad or not values or len(set(values)) != len(values):
                raise BasinscopeError(
                    f"{key} {list(values)}: expected a non-empty list of different values "
                    f"among {', '.join(allowed)}"
                )
        for key, allowed in (
            ("select_metric", SELECT_METRICS),
            ("curvature", CURVATURES),
            ("mean", MEANS),
            ("fisher", FISHERS),
        ):
            if getattr(self, key) not in allowed:
                raise BasinscopeError(
                    f"{key} {getattr(self, key)!r}: expected one of {', '.join(allowed)}"
                )

    def _check_numbers(self) -> None:
        for w in self.hidden:
            at_least("hidden", w, 1, high=4096, high_why=" units per layer")
        at_least("val_examples", self.val_examples, 10, high=DIGITS_TRAIN // 2)
        for name in ("pretrain_steps", "finetune_steps"):
            at_least(name, getattr(self, name), 1, high=STUDY_MAX_STEPS)
        at_least("batch_size", self.batch_size, 1)
        for name in ("pretrain_lr", "finetune_lr", "random_start_lr"):
            positive_float(name, getattr(self, name), fix=f"e.g. {name}=0.01")
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        at_least("budget", self.budget, 1, high=1000)
        positive_float("lam_min", self.lam_min, fix="e.g. lam_min=0.1")
        finite_float("lam_max", self.lam_max, low=self.lam_min)
        finite_float("density", self.density, low=0, high=1, low_open=True)
        finite_float("drop_rate", self.drop_rate, low=0, high=1, high_open=True)
        at_least("examples", self.examples, 1, high=DIGITS_TRAIN)
        at_least("grid", self.grid, 3, high=201, high_why=" points per axis (40,401 points)")
        finite_float("plane_margin", self.plane_margin, low=0)
        at_least("barrier_points", self.barrier_points, 3, high=10_000)
        for name in ("split_seed", "init_seed", "random_start_seed", "block_seed", "noise_seed"):
            check_seed(name, getattr(self, name))


# the quick version: the same models (every task, every step), coarser measurements
QUICK = {
    "budget": 5,
    "examples": 128,
    "grid": 11,
    "barrier_points": 9,
}

# the smoke version (tests, pipeline checks): every stage and figure in seconds
SMOKE = {
    "figure_formats": ("png",),
    "tasks": ("rot30", "block4", "labels0-4"),
    "hidden": (16,),
    "pretrain_steps": 40,
    "finetune_steps": 8,
    "geometries": ("curvature", "flat"),
    "budget": 2,
    "examples": 32,
    "grid": 5,
    "barrier_points": 3,
}


# -- the tasks -----------------------------------------------------------------------------


def parse_task(name: str) -> tuple[str, Any]:
    """``(kind, argument)`` of a task name: ``rot30`` is ``("rot", 30.0)``, ``block4``
    ``("block", 4)``, ``noise0.3`` ``("noise", 0.3)``, ``labels0-4`` ``("labels", (0, 1, 2,
    3, 4))``; anything else is refused with the syntax."""

    def bad(why: str = "") -> BasinscopeError:
        return BasinscopeError(f"task {name!r}{why}: expected one of {TASK_SYNTAX}")

    m = re.fullmatch(r"(rot|block|noise|labels)(.+)", str(name))
    if m is None:
        raise bad()
    kind, arg = m.groups()
    try:
        if kind == "labels":
            if re.fullmatch(r"\d-\d", arg):
                value: Any = tuple(range(int(arg[0]), int(arg[2]) + 1))
            else:
                value = tuple(sorted({int(v) for v in arg.split("_")}))
        else:
            value = int(arg) if kind == "block" else float(arg)
    except ValueError:
        raise bad() from None
    if kind == "rot" and not (np.isfinite(value) and -360 <= value <= 360 and value != 0):
        raise bad(" (a rotation is a non-zero angle in [-360, 360] degrees)")
    if kind == "block" and value not in (1, 2, 4):
        raise bad(" (the 8x8 digits are cut into tiles of 1, 2 or 4 pixels)")
    if kind == "noise" and not (np.isfinite(value) and 0 < value <= 10):
        raise bad(" (a noise standard deviation in (0, 10])")
    if kind == "labels" and (not value or len(value) > 9 or not all(0 <= v <= 9 for v in value)):
        raise bad(" (some, not all, of the classes 0-9)")
    return kind, value


@dataclass(frozen=True)
class TaskData:
    """One target distribution: its name (``rot30``) and train, validation, test splits."""

    name: str
    train: Any
    val: Any
    test: Any


def _shift(data, name: str, cfg: MergingConfig, split: int):
    from basinscope.data.shifts import apply_shift, label_subset

    kind, arg = parse_task(name)
    if kind == "rot":
        return apply_shift(data, rotation=arg)
    if kind == "block":  # one tile permutation for every split: it defines the task
        return apply_shift(data, block_shuffle=arg, seed=cfg.block_seed)
    if kind == "noise":  # fresh noise for each split
        return apply_shift(data, noise=arg, seed=cfg.noise_seed + split)
    return label_subset(data, arg)


def source_splits(cfg: MergingConfig):
    """The upright digits: ``(train, val, test)``, the validation split held out of the
    training digits (stratified, ``split_seed``), each named by what it holds."""
    from basinscope.data import load_digits
    from basinscope.data.digits import stratified_split

    full, test = load_digits("train"), load_digits("test")
    fit, val = stratified_split(full.y.numpy(), cfg.val_examples, cfg.split_seed)
    tag = f"{cfg.val_examples}-seed{cfg.split_seed}"
    train = full.subset(sorted(fit.tolist()), f"digits-train-minus-val{tag}")
    val = full.subset(sorted(val.tolist()), f"digits-val{tag}")
    return train, val, test


def task_data(cfg: MergingConfig, source=None) -> list[TaskData]:
    """Every task's splits: the source splits shifted by the task."""
    train, val, test = source if source is not None else source_splits(cfg)
    return [
        TaskData(t, _shift(train, t, cfg, 0), _shift(val, t, cfg, 1), _shift(test, t, cfg, 2))
        for t in cfg.tasks
    ]


# -- running -------------------------------------------------------------------------------


def _mlp(seed: int, cfg: MergingConfig):
    from basinscope.models import build_model

    return build_model("mlp", {"hidden": list(cfg.hidden)}, init_seed=seed)


def _finetune_settings(cfg: MergingConfig) -> types.SimpleNamespace:
    """What the rotated-digits fine-tuning stage reads of a configuration: one checkpoint at
    the start and one at the end (no trajectories are drawn here)."""
    return types.SimpleNamespace(
        finetune_steps=cfg.finetune_steps,
        checkpoint_every=cfg.finetune_steps,
        batch_size=cfg.batch_size,
        momentum=cfg.momentum,
        finetune_lr=cfg.finetune_lr,  # from the pre-trained start
        random_start_lr=cfg.random_start_lr,  # from the random start
        device=DEFAULT_DEVICE,  # fine-tuning runs on the CPU
    )


def run(cfg: MergingConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.engine import evaluate_model
    from basinscope.experiments.rotated_digits import _finetune_call, _train_config

    say, root = ctx.say, ctx.stages_root
    source = source_splits(cfg)
    src_train, _, src_test = source
    tasks = task_data(cfg, source)

    # -- pre-training on the upright digits -------------------------------------------------
    say(f"pre-training an MLP {list(cfg.hidden)} on upright digits ({cfg.pretrain_steps} steps)")
    pre_cfg = _train_config(cfg.pretrain_steps, cfg.pretrain_lr, cfg, cfg.pretrain_steps)
    pre_spec = {"model": "mlp", "hidden": list(cfg.hidden), "init_seed": cfg.init_seed}
    on_device = placement(cfg, dtype=False)
    pre = train_stage(
        stage_dir(
            root, "pretrain", {**pre_spec, "data": src_train.name, **pre_cfg.to_dict(), **on_device}
        ),
        _mlp(cfg.init_seed, cfg),
        src_train,
        pre_cfg,
        pre_spec,
        progress=ctx.progress,
        log=ctx.log,
        device=cfg.device,
    )
    pre_eval = evaluate_model(pre.model, {"test": src_test}, **placement(cfg))
    hidden = "-".join(map(str, cfg.hidden))
    starts = {
        "pre-trained": (pre.model, pre.run_dir.name, cfg.finetune_lr),
        "random": (
            _mlp(cfg.random_start_seed, cfg),
            f"random-init-mlp{hidden}-seed{cfg.random_start_seed}",
            cfg.random_start_lr,
        ),
    }

    # -- fine-tuning: every task from both starts at once -----------------------------------
    ft_cfg = _finetune_settings(cfg)
    calls = []
    for family in FAMILIES:
        model, start_name, _ = starts[family]
        for t in tasks:
            data = {"tgt_train": t.train, "tgt_test": t.test, "src_test": src_test}
            calls.append(
                _finetune_call(
                    ft_cfg, root, start_name, model, "ft", data, None, start=family, data_seed=0
                )
            )
    done = ctx.run_stages(
        calls, what=f"fine-tuning on {', '.join(cfg.tasks)} from the pre-trained and a random start"
    )
    k = len(tasks)
    runs = {f: done[i * k : (i + 1) * k] for i, f in enumerate(FAMILIES)}

    # -- merges and the error decomposition of each family (each needs only its models) ------
    calls = []
    for family in FAMILIES:
        base, start_name, _ = starts[family]
        calls.append(_merge_call(cfg, root, family, base, start_name, runs[family], tasks))
        calls.append(_decomposition_call(cfg, root, base, start_name, runs[family], tasks))
    done = ctx.run_stages(calls, what="merging (every method) and the error decompositions")
    merges = {f: done[2 * i] for i, f in enumerate(FAMILIES)}
    decompositions = {f: done[2 * i + 1] for i, f in enumerate(FAMILIES)}

    # -- the plane with the merged points, and the barriers to each merge --------------------
    calls = []
    for family in FAMILIES:
        base, start_name, _ = starts[family]
        merge_dir = root / merges[family]["stage"]
        calls.append(_plane_call(cfg, root, base, start_name, runs[family], tasks, merge_dir))
        calls.append(_barrier_call(cfg, root, runs[family], tasks, base, merge_dir))
    done = ctx.run_stages(calls, what="planes through the task vectors, barriers to each merge")
    planes = {f: done[2 * i] for i, f in enumerate(FAMILIES)}
    barriers = {f: done[2 * i + 1] for i, f in enumerate(FAMILIES)}

    families = {}
    for family in FAMILIES:
        families[family] = {
            "start": starts[family][1],
            "finetune_stages": [r.run_dir.name for r in runs[family]],
            "finetune": [_finetune_info(r.info) for r in runs[family]],
            **merges[family],
            "decomposition": decompositions[family],
            "plane": planes[family],
            "barriers": barriers[family],
        }
        families[family]["verdict"] = verdict(families[family])
    return {
        "definitions": definitions(cfg),
        "tasks": list(cfg.tasks),
        "pretrained": {
            "stage": pre.run_dir.name,
            "source_test_accuracy": pre_eval["test_accuracy"],
            "source_test_loss": pre_eval["test_loss"],
        },
        "families": families,
        "summary": summary_rows(families),
        "conclusion": conclusion(families),
    }


def _finetune_info(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "source_test_accuracy_after": info["after"]["source"]["accuracy"],
        "target_test_accuracy_before": info["before"]["target"]["accuracy"],
        "target_test_accuracy_after": info["after"]["target"]["accuracy"],
        "final_train_loss": info.get("final_train_loss"),
    }


def lam_grid(cfg: MergingConfig) -> list[float]:
    """The ``budget`` candidates of lambda every selecting method is scored on."""
    return [float(v) for v in np.round(np.linspace(cfg.lam_min, cfg.lam_max, cfg.budget), 6)]


def _variants(cfg: MergingConfig) -> list[tuple[str, str, str | None]]:
    """``(row name, method, geometry)`` of every merge: each method, the subspace method
    once per geometry."""
    out = []
    for method in cfg.methods:
        if method == "subspace":
            out.extend((f"subspace/{g}", method, g) for g in cfg.geometries)
        else:
            out.append((method, method, None))
    return out


def _accuracy(metrics: dict[str, dict[str, float]]) -> tuple[float, float]:
    acc = [m["accuracy"] for m in metrics.values()]
    return float(np.mean(acc)), float(np.min(acc))


def _merge_call(cfg, root, family, base, start_name, runs, tasks) -> StageCall:
    """Every merge of one family (hyper-parameters chosen on the validation splits), their
    test metrics, and the references: the start and each fine-tuned model on every task.
    The merged weights are written to ``merged-<row>.safetensors`` in the stage folder."""
    where = placement(cfg)
    labels = [t.name for t in tasks]
    settings = {
        "family": family,
        "start": start_name,
        "models": [r.run_dir.name for r in runs],
        "train": [t.train.name for t in tasks],
        "val": [t.val.name for t in tasks],
        "test": [t.test.name for t in tasks],
        "variants": [v[0] for v in _variants(cfg)],
        "rank": _rank(cfg),
        "lams": lam_grid(cfg),
        "density": cfg.density,
        "drop_rate": cfg.drop_rate,
        "select_metric": cfg.select_metric,
        "curvature": cfg.curvature,
        "mean": cfg.mean,
        "fisher": cfg.fisher,
        "examples": cfg.examples,
        "merge_dtype": "float64",
        **where,  # the test metrics of the merges in the study's precision
    }
    models = [r.model for r in runs]

    def compute(d: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        from basinscope.analyses.merging import METHOD_HYPER, merge_all
        from basinscope.engine import evaluate_model

        def test_metrics(model) -> dict[str, dict[str, float]]:
            out = {}
            for t in tasks:
                ev = evaluate_model(model, {"test": t.test}, **where)
                out[t.name] = {"loss": ev["test_loss"], "accuracy": ev["test_accuracy"]}
            return out

        # every method with a lambda selects it on the same grid; the others select nothing
        entries = [
            (
                method,
                {"select": ("lam",) if "lam" in METHOD_HYPER[method] else ()}
                | ({"geometry": geometry} if geometry else {}),
            )
            for _, method, geometry in _variants(cfg)
        ]
        results = merge_all(
            base,
            models,
            methods=entries,
            task_data=[t.train for t in tasks],
            val_data=[t.val for t in tasks],
            labels=labels,
            lams=tuple(lam_grid(cfg)),
            rank=_rank(cfg),
            density=cfg.density,
            drop_rate=cfg.drop_rate,
            select_metric=cfg.select_metric,
            curvature=cfg.curvature,
            mean=cfg.mean,
            fisher=cfg.fisher,
            examples=cfg.examples,
            dtype="float64",  # the Fishers, curvature products and the validation scores
            device=cfg.device,
        )
        rows = {}
        for name, _, _ in _variants(cfg):
            res = results[name]
            save_file(
                {k: v.contiguous() for k, v in res.merged.items()},
                str(d / f"merged-{name.replace('/', '-')}.safetensors"),
            )
            test = test_metrics(res.to_model(base))
            mean, worst = _accuracy(test)
            rows[name] = {
                "method": res.method,
                "definition": res.definition,
                "hyper": res.hyper,
                "selected": list(res.selected),
                "selection": res.selection,
                "val": res.metrics,
                "val_mean_accuracy": res.mean_accuracy,
                "val_worst_accuracy": res.worst_accuracy,
                "subspace": {k: v for k, v in (res.subspace or {}).items()},
                "test": test,
                "test_mean_accuracy": mean,
                "test_worst_accuracy": worst,
            }
        start = test_metrics(base)
        single = [test_metrics(m) for m in models]  # each fine-tuned model on every task
        return {
            "merges": rows,
            "start_test": start,
            "single_test": single,
            "own_test": {t.name: single[i][t.name] for i, t in enumerate(tasks)},
        }

    def call(lg):
        value, folder = cached_stage(root, "merge", settings, compute, log=lg)
        return {**value, "stage": folder.name}

    return StageCall(stage_dir(root, "merge", settings), call)


def _rank(cfg: MergingConfig) -> int:
    """The rank of every subspace merge (matched): ``rank``, or the number of tasks."""
    return cfg.rank or len(cfg.tasks)


def _ranks(cfg: MergingConfig) -> list[int]:
    return list(cfg.ranks) or list(range(1, len(cfg.tasks) + 1))


def _decomposition_call(cfg, root, base, start_name, runs, tasks) -> StageCall:
    """The curvature-aware vs. flat subspace merge across ranks: the error decomposition."""
    settings = {
        "start": start_name,
        "models": [r.run_dir.name for r in runs],
        "train": [t.train.name for t in tasks],
        "ranks": _ranks(cfg),
        "curvature": cfg.curvature,
        "mean": cfg.mean,
        "examples": cfg.examples,
        **placement(cfg, dtype=False),  # in float64
    }
    models = [r.model for r in runs]

    def compute(_d: Path):
        from basinscope.analyses.merging import merge_decomposition

        return merge_decomposition(
            base,
            models,
            [t.train for t in tasks],
            ranks=_ranks(cfg),
            curvature=cfg.curvature,
            mean=cfg.mean,
            geometries=("curvature", "flat"),
            examples=cfg.examples,
            labels=[t.name for t in tasks],
            device=cfg.device,
        )

    def call(lg):
        return cached_stage(root, "merge-decomposition", settings, compute, log=lg)[1].name

    return StageCall(stage_dir(root, "merge-decomposition", settings), call)


def _load_merged(merge_dir: Path, names: list[str], base) -> dict[str, dict]:
    """The merged parameters of each merge, in ``base``'s parameter order (a safetensors file
    comes back in sorted key order; the plane projects flattened dicts in their order)."""
    from safetensors.torch import load_file

    order = [k for k, _ in base.named_parameters()]
    out = {}
    for n in names:
        loaded = load_file(str(merge_dir / f"merged-{n.replace('/', '-')}.safetensors"))
        out[n] = {k: loaded[k] for k in order}
    return out


def _plane_call(cfg, root, base, start_name, runs, tasks, merge_dir: Path) -> StageCall:
    """The plane through the start and two fine-tuned models, every task's test loss and
    accuracy on it, every merge's point on it."""
    i, j = cfg.plane_tasks
    names = [v[0] for v in _variants(cfg)]
    settings = {
        "start": start_name,
        "models": [r.run_dir.name for r in runs],
        "merge": merge_dir.name,
        "test": [t.test.name for t in tasks],
        "i": i,
        "j": j,
        "grid": cfg.grid,
        "margin": cfg.plane_margin,
        "strategy": cfg.eval_strategy,
        **placement(cfg),
    }
    models = [r.model for r in runs]

    def compute(d: Path):
        from basinscope.analyses.merging import merge_plane

        return merge_plane(
            base,
            models,
            _load_merged(merge_dir, names, base),
            {t.name: t.test for t in tasks},
            i=i,
            j=j,
            n=cfg.grid,
            margin=cfg.plane_margin,
            labels=[t.name for t in tasks],
            run_dir=d,
            strategy=cfg.eval_strategy,
            **placement(cfg),
        )

    def call(lg):
        land = landscape_stage(root, "merge-plane", settings, compute, log=lg)
        attrs = land.dataset.attrs
        return {
            "stage": land.run_dir.name,
            "merged_points": attrs["merged_points"],
            "model_points": attrs["model_points"],
            "model_labels": attrs["model_labels"],
        }

    return StageCall(stage_dir(root, "merge-plane", settings), call)


def _barrier_call(cfg, root, runs, tasks, base, merge_dir: Path) -> StageCall:
    """The barrier between each fine-tuned model and each merge, on that task's test split."""
    names = [v[0] for v in _variants(cfg)]
    settings = {
        "models": [r.run_dir.name for r in runs],
        "merge": merge_dir.name,
        "test": [t.test.name for t in tasks],
        "n": cfg.barrier_points,
        "metric": cfg.barrier_metric,
        "definition": cfg.barrier_definition,
        "strategy": cfg.eval_strategy,
        **placement(cfg),
    }
    models = [r.model for r in runs]

    def compute(_d: Path) -> dict[str, Any]:
        from basinscope.analyses.barrier import barrier

        merged = _load_merged(merge_dir, names, base)
        out: dict[str, Any] = {}
        for name in names:
            out[name] = {}
            for model, t in zip(models, tasks, strict=True):
                b = barrier(
                    model,
                    merged[name],
                    t.test,
                    definition=cfg.barrier_definition,
                    metric=cfg.barrier_metric,
                    split=t.name,
                    num_points=cfg.barrier_points,
                    labels=(f"fine-tuned ({t.name})", f"merge ({name})"),
                    strategy=cfg.eval_strategy,
                    **placement(cfg),
                )
                out[name][t.name] = {"value": b.value, "f0": b.f0, "f1": b.f1}
        return out

    def call(lg):
        value, folder = cached_stage(root, "merge-barrier", settings, compute, log=lg)
        return {"stage": folder.name, "values": value}

    return StageCall(stage_dir(root, "merge-barrier", settings), call)


# -- what the numbers say ----------------------------------------------------------------


def verdict(family: dict[str, Any]) -> dict[str, Any]:
    """Whether merging works for one family, from its numbers: the merge with the best
    validation score (``val_mean_accuracy``) is compared on the mean test accuracy over the
    tasks with the start (zero-shot) and with the best single fine-tuned model (each model
    on every task); it works when it beats both."""
    merges = family["merges"]
    chosen = max(merges, key=lambda n: merges[n]["val_mean_accuracy"] or 0.0)
    best_test = max(merges, key=lambda n: merges[n]["test_mean_accuracy"])
    start = _accuracy(family["start_test"])[0]
    singles = [_accuracy(s)[0] for s in family["single_test"]]
    own = _accuracy(family["own_test"])[0]
    merged = merges[chosen]["test_mean_accuracy"]
    return {
        "chosen": chosen,
        "merged_mean_accuracy": merged,
        "merged_worst_accuracy": merges[chosen]["test_worst_accuracy"],
        "best_test_merge": best_test,
        "best_test_mean_accuracy": merges[best_test]["test_mean_accuracy"],
        "start_mean_accuracy": start,
        "best_single_mean_accuracy": max(singles),
        "best_single_model": int(np.argmax(singles)),
        "individual_mean_accuracy": own,
        "normalized_accuracy": merged / own if own > 0 else None,
        "works": bool(merged > start and merged > max(singles)),
    }


def conclusion(families: dict[str, Any]) -> str:
    """The study's answer in words, every number computed."""
    parts = []
    for family in FAMILIES:
        v = families[family]["verdict"]
        parts.append(
            f"From the {family} start, the merge chosen on validation ({v['chosen']}) reaches a "
            f"mean test accuracy of {v['merged_mean_accuracy']:.3f} over the tasks (worst task "
            f"{v['merged_worst_accuracy']:.3f}), against {v['start_mean_accuracy']:.3f} for the "
            f"start itself, {v['best_single_mean_accuracy']:.3f} for the best single fine-tuned "
            f"model on every task, and {v['individual_mean_accuracy']:.3f} for each task's own "
            f"model on its task (normalized accuracy {v['normalized_accuracy']:.2f}): merging "
            + ("works" if v["works"] else "fails")
            + (
                " (it beats both the start and every single model)."
                if v["works"]
                else " (it does not beat "
                + (
                    "the start"
                    if v["merged_mean_accuracy"] <= v["start_mean_accuracy"]
                    else "the best single model"
                )
                + ")."
            )
        )
    pre, ctl = (families[f]["verdict"] for f in FAMILIES)
    gap = pre["merged_mean_accuracy"] - ctl["merged_mean_accuracy"]
    expected = pre["works"] and not ctl["works"]
    parts.append(
        f"The pre-trained family's merge is {abs(gap):.3f} {'above' if gap >= 0 else 'below'} "
        "the control's. "
        + (
            "As expected, merging works from the shared pre-trained start and fails for the "
            "control fine-tuned from a random start."
            if expected
            else "This is not the expected picture (merging working from the pre-trained start "
            "and failing for the control): "
            + ("the control's merge works too." if ctl["works"] else "")
            + ("" if pre["works"] else " the pre-trained family's merge does not work.")
        )
    )
    return "\n\n".join(parts)


def summary_rows(families: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per family and merge: validation choice and test accuracies."""
    rows = []
    for family in FAMILIES:
        for name, m in families[family]["merges"].items():
            rows.append(
                {
                    "family": family,
                    "merge": name,
                    "hyper": {k: float(v) for k, v in m["hyper"].items()},
                    "selected": m["selected"],
                    "val_mean_accuracy": m["val_mean_accuracy"],
                    "test_mean_accuracy": m["test_mean_accuracy"],
                    "test_worst_accuracy": m["test_worst_accuracy"],
                    **{f"test_accuracy_{t}": v["accuracy"] for t, v in m["test"].items()},
                }
            )
    return rows


def definitions(cfg: MergingConfig) -> dict[str, str]:
    from basinscope.analyses.barrier import BARRIER_DEFINITIONS as FORMULAS

    k = len(cfg.tasks)
    rank = cfg.rank or k
    return {
        "tasks": f"{TASK_SYNTAX}; each task's train split is the {DIGITS_TRAIN - cfg.val_examples} training digits less the validation split, its validation split the {cfg.val_examples} held out (stratified, seed {cfg.split_seed}), its test split the 450 test digits, all shifted by the task (a label subset keeps only those classes of each split)",
        "accuracy": "fraction of correct predictions (arg-max over the 10 digit classes) on a task's test split; chance is 0.1",
        "mean accuracy": "mean over the tasks of the test accuracy on each",
        "worst accuracy": "smallest test accuracy over the tasks",
        "start (zero-shot)": "the start of the family (the pre-trained model, or the random initialization) on each task",
        "single model": "one fine-tuned model evaluated on every task; the best single model is the one with the highest mean accuracy",
        "own model": "each task's fine-tuned model on its own task (the reference merging tries to keep)",
        "normalized accuracy": "mean accuracy of the merge divided by the mean accuracy of the own models",
        "merging works": "the merge with the best validation score (mean validation accuracy over the tasks, hyper-parameters chosen on validation) has a higher mean test accuracy than both the start and the best single fine-tuned model",
        "matched validation budget": f"every method that selects a hyper-parameter (task arithmetic, TIES, DARE, subspace: lambda) scores the same {cfg.budget} candidates lambda in [{cfg.lam_min:g}, {cfg.lam_max:g}] on the validation splits by {cfg.select_metric}; uniform soup and Fisher merging have no hyper-parameter",
        "matched rank": f"every subspace merge (geometries {', '.join(cfg.geometries)}) at rank {rank} of the {k} task vectors",
        "barrier": f"{cfg.barrier_definition}: {FORMULAS[cfg.barrier_definition]}; f = test {cfg.barrier_metric} of the task at (1 - alpha) theta_i + alpha theta_merge, {cfg.barrier_points} points on [0, 1] refined around the maximum; theta_i is the task's fine-tuned model",
        "plane": f"the plane through the start theta_0 and the fine-tuned models of tasks {cfg.plane_tasks[0]} and {cfg.plane_tasks[1]} (orthonormal axes), a {cfg.grid}x{cfg.grid} grid with margin {cfg.plane_margin:g}; each merge is drawn at its projection, with its distance from the plane",
        "decomposition": f"merge_decomposition with the {cfg.curvature} metric on {cfg.examples} training examples per task, ranks {_ranks(cfg)}: variance 1/2 (c* - c_i)^T G_i (c* - c_i) inside the subspace, residual 1/2 r_i^T H_i r_i outside it, their cross term, predicted = their sum, measured = L_i(theta*) - L_i(theta_i) on the same examples",
        "precision": f"test accuracies, planes and barriers in {cfg.dtype} on {cfg.device}; Fishers, curvatures, the validation scores of the selection and the decomposition in float64 on {cfg.device}; pre-training in float32 on {cfg.device}; fine-tuning (float32) on the CPU",
    }


def report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.merging_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name="merging",
        summary=(
            "MLPs fine-tuned on shifted digits (rotations, block shuffle, noise, a label subset) "
            "from a pre-trained and a random start, merged by every method (soups, task "
            "arithmetic, TIES, DARE, Fisher, subspace): accuracy, error decomposition, planes, barriers"
        ),
        config=MergingConfig,
        run=run,
        report=report,
        quick=QUICK,
        smoke=SMOKE,
        about="""Pre-trains an MLP on upright digits, fine-tunes one model per target distribution
(rotations, block shuffle, noise, a label subset) from it and, as a control, from a random
start, merges each family with every method at matched rank and validation budget, and
writes an HTML report: per-task, mean and worst-task test accuracy of every merge, the
curvature-aware vs. flat error decomposition across ranks, the plane through the start and
two task vectors with the merged points, the barriers between each model and each merge,
and whether merging works for each family.""",
    )
)
