"""What the transfer-methods study's sections share: the base settings, the digits under a
shift, the pre-trained LeNet (with its pre-training checkpoints), the fine-tuning stage, and
the statistics every section reports (means with Student-t intervals over seeds).

The study (:mod:`basinscope.experiments.transfer_methods`) is made of sections, one module
each (``transfer_<key>.py``), that answer the distribution-shift talk's research questions.
A section module has:

- ``KEY`` (its results live in ``results["sections"][KEY]``), ``TITLE``;
- ``Settings``: a frozen dataclass of its settings (each with a default, names prefixed by
  the section so that they never collide), which the study's configuration inherits;
- ``QUICK`` and ``SMOKE``: its overrides of the ``--quick`` and ``--smoke`` versions;
- ``check(cfg)``: refuses bad settings with a message that says the fix;
- ``run(cfg, ctx, pre) -> dict``: computes (every stage through ``ctx.run_stages``) and
  returns a JSON-ready dict, ``pre`` being the shared :class:`Pretrained`;
- ``answers(section) -> list[dict]``: for each research question it bears on, ``question``
  (a key of :data:`QUESTIONS`), ``answer`` (plain words, computed from the numbers),
  ``supported`` (True, False, or None for "the data cannot tell") and ``evidence`` (which
  table and figure of the report);
- ``DEFINITIONS``: every number's definition; ``FIGURES``: its figure files;
- ``report(rep, section, cfg, figs)``: adds its heading, tables and figures to the
  :class:`~basinscope.report.Report` (``cfg`` is the configuration as a dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, StudyContext
from basinscope.experiments.stages import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    TrainedStage,
    model_stage,
    placement,
    stage_dir,
    train_stage,
)

__all__ = [
    "QUESTIONS",
    "Pretrained",
    "TransferBase",
    "check_base",
    "finetune_call",
    "lenet",
    "mean_ci",
    "pretrain",
    "shifted_digits",
    "spread",
    "train_config",
]

#: The distribution-shift talk's research questions (``../shared/talks/000_*``), by key.
QUESTIONS: dict[str, str] = {
    "subnetworks": "Can we find subnetworks from local loss-surface information for better "
    "fine-tuning?",
    "basin-regularizer": "Can we adapt a model inside a basin, using basin information as a "
    "regularizer?",
    "fit": "Do pre-trained weights fit the target distribution?",
    "breaks": 'When does "staying in the basin" break?',
}


@dataclass(frozen=True)
class TransferBase:
    """Settings every section shares (steps are gradient steps, angles degrees)."""

    width: int = 2  # LeNet width multiplier (21,410 parameters at 2)
    init_seed: int = 0  # the pre-trained model's (and the shared random start's) initialization
    source_angle: float = 0.0  # the pre-training distribution: digits rotated by this
    target_angle: float = 60.0  # the main target shift
    pretrain_steps: int = 600  # SGD with momentum on the source digits
    pretrain_lr: float = 0.05
    # pre-training checkpoints kept (0: the random initialization; pretrain_steps: the model)
    pretrain_checkpoints: tuple[int, ...] = (0, 10, 25, 50, 100, 200, 400, 600)
    steps: int = 150  # steps of every fine-tuning
    lr: float = 0.02  # learning rate of every fine-tuning (SGD with momentum, constant)
    batch_size: int = 64
    momentum: float = 0.9
    seeds: int = 3  # data orders 0..seeds-1 of every fine-tuning
    source_examples: int = 512  # first N source training digits (EWC, trust region, barriers)
    ci_level: float = 0.95  # level of every interval
    eval_strategy: str = "loop"  # engine: "loop" or "vmap" (pinned, never timed)
    # where training and the measurements compute (cpu, cuda, cuda:N, mps)
    device: str = DEFAULT_DEVICE
    # precision of the evaluations; training is float32
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure


def check_base(cfg: TransferBase) -> None:
    at_least("width", cfg.width, 1, high=64)
    at_least("seeds", cfg.seeds, 1, high=100)
    if cfg.seeds < 2:
        raise BasinscopeError(
            f"seeds={cfg.seeds}: the sections compare copies fine-tuned with different data "
            "orders (barriers between them, their hull, intervals over them), so the study "
            "needs seeds >= 2, e.g. seeds=3"
        )
    for key in ("pretrain_steps", "steps"):
        at_least(key, getattr(cfg, key), 1, high=1_000_000)
    for key in ("batch_size", "source_examples"):
        at_least(key, getattr(cfg, key), 1)
    for key in ("pretrain_lr", "lr"):
        positive_float(key, getattr(cfg, key))
    for key in ("source_angle", "target_angle"):
        finite_float(key, getattr(cfg, key), low=-360, high=360)
    if cfg.target_angle == cfg.source_angle:
        raise BasinscopeError(
            f"target_angle {cfg.target_angle:g} is the source angle: give a shift, e.g. "
            "target_angle=60"
        )
    finite_float("momentum", cfg.momentum, low=0, high=1, high_open=True)
    finite_float("ci_level", cfg.ci_level, low=0, high=1, low_open=True, high_open=True)
    check_seed("init_seed", cfg.init_seed)
    bad = [s for s in cfg.pretrain_checkpoints if not 0 <= s <= cfg.pretrain_steps]
    if bad or not cfg.pretrain_checkpoints:
        raise BasinscopeError(
            f"pretrain_checkpoints {list(cfg.pretrain_checkpoints)}: give steps in [0, "
            f"pretrain_steps] = [0, {cfg.pretrain_steps}], e.g. [0, 50, {cfg.pretrain_steps}]"
        )
    if cfg.eval_strategy not in ("loop", "vmap"):
        raise BasinscopeError(f"eval_strategy must be 'loop' or 'vmap', got {cfg.eval_strategy!r}")


# -- data and models --------------------------------------------------------------------------

_DIGITS: dict[tuple, dict[str, Any]] = {}


def shifted_digits(
    cfg: TransferBase,
    rotation: float = 0.0,
    *,
    block: int | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """The 8x8 digits under a shift (:func:`~basinscope.data.apply_shift`: rotation by
    ``rotation`` degrees, then a ``block``-pixel block shuffle, then Gaussian noise of std
    ``noise``; ``seed`` fixes the tile permutation and the noise): ``train`` (1,347),
    ``test`` (450) and ``source`` (the first ``cfg.source_examples`` training digits). Each
    is named by its shift, so stage settings that name the data name the shift."""
    from basinscope.data import apply_shift, load_digits
    from basinscope.data.tensordata import TensorData

    key = (float(rotation), block, float(noise), int(seed), cfg.source_examples)
    if key not in _DIGITS:
        tr, te = load_digits("train"), load_digits("test")
        shift = {"rotation": rotation, "block_shuffle": block, "noise": noise}
        tr_s = apply_shift(tr, **shift, seed=seed)
        # the test digits get their own noise draw (another seed), the same tile permutation
        te_s = apply_shift(te, **shift, seed=seed)
        if noise:
            from basinscope.data import add_noise, block_shuffle, rotate

            x = te.x if not rotation else rotate(te.x, rotation)
            x = x if block is None else block_shuffle(x, block, seed)
            te_s = TensorData(add_noise(x, noise, seed + 1), te.y, te_s.name + "-testdraw")
        n = cfg.source_examples
        src = TensorData(tr_s.x[:n], tr_s.y[:n], f"{tr_s.name}-first{n}")
        _DIGITS[key] = {"train": tr_s, "test": te_s, "source": src}
    return _DIGITS[key]


def lenet(cfg: TransferBase, init_seed: int | None = None):
    """A LeNet of the study's width, initialized with ``init_seed`` (default the study's)."""
    from basinscope.models import build_model

    seed = cfg.init_seed if init_seed is None else init_seed
    return build_model("lenet", {"width": cfg.width}, init_seed=seed)


def train_config(cfg: TransferBase, seed: int, **changes: Any):
    """The fine-tuning :class:`~basinscope.training.TrainConfig`: ``cfg.steps`` steps of SGD
    with momentum at ``cfg.lr``, batch ``cfg.batch_size``, data order ``seed``; ``changes``
    override any field (``sharpness_aware``, ``checkpoint_steps``, ``steps``, ...)."""
    from basinscope.training import TrainConfig

    kw: dict[str, Any] = dict(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum
    )
    return TrainConfig(**{**kw, "data_seed": seed, **changes})


def pretrain_config(cfg: Any, checkpoints: tuple[int, ...]):
    """The pre-training's TrainConfig: ``cfg.pretrain_steps`` steps at ``cfg.pretrain_lr``,
    data order 0, checkpoints at ``checkpoints`` (any configuration with those fields and
    :func:`train_config`'s)."""
    return train_config(
        cfg, 0, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, checkpoint_steps=checkpoints
    )


# -- pre-training -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pretrained:
    """The shared pre-trained LeNet: ``stage`` (its model, its checkpoints at
    ``cfg.pretrain_checkpoints``, its folder), ``init`` (the random initialization it started
    from, the shared random start), ``source`` (the source digits) and ``target`` (the
    digits rotated by ``cfg.target_angle``)."""

    stage: TrainedStage
    init: Any
    source: dict[str, Any]
    target: dict[str, Any]

    @property
    def model(self):
        return self.stage.model

    @property
    def name(self) -> str:
        """The pre-training stage's folder name (name it in dependent stages' settings)."""
        return self.stage.run_dir.name

    def checkpoint(self, step: int):
        """A copy of the LeNet with the pre-training checkpoint of ``step`` loaded."""
        import copy

        if step not in self.stage.checkpoints:
            raise BasinscopeError(
                f"pre-training step {step} was not kept: kept steps are "
                f"{sorted(self.stage.checkpoints)} (setting pretrain_checkpoints)"
            )
        m = copy.deepcopy(self.init)
        m.load_state_dict(self.stage.checkpoints[step])
        return m


def pretrain(cfg: TransferBase, ctx: StudyContext, what: str) -> Pretrained:
    """Pre-train the LeNet on the source digits (or reuse the finished stage)."""
    source = shifted_digits(cfg, cfg.source_angle)
    target = shifted_digits(cfg, cfg.target_angle)
    init = lenet(cfg)
    ckpts = tuple(sorted({*cfg.pretrain_checkpoints, 0, cfg.pretrain_steps}))
    pc = pretrain_config(cfg, ckpts)
    spec = {"model": "lenet", "width": cfg.width, "init_seed": cfg.init_seed}
    spec["data"] = source["train"].name
    d = stage_dir(
        ctx.stages_root, "pretrain", {**spec, **pc.to_dict(), **placement(cfg, dtype=False)}
    )

    def call(lg):
        return train_stage(
            d, init, source["train"], pc, spec, progress=ctx.progress, log=lg, device=cfg.device
        )

    (stage,) = ctx.run_stages([StageCall(d, call)], what=what)
    return Pretrained(stage, init, source, target)


#: What the studies keep of each condition of a Definition 3.1 basin test
#: (:class:`~basinscope.analyses.basin.ConditionEstimate`), intervals as lists.
CONDITION_KEYS = (
    "condition",
    "name",
    "statement",
    "estimate",
    "ci",
    "threshold",
    "margin",
    "margin_ci",
    "holds",
    "ci_supports",
)


def condition_records(res: Any, keys: tuple[str, ...] = CONDITION_KEYS) -> list[dict[str, Any]]:
    """``keys`` of each condition of the basin test ``res``, tuples as lists."""
    out = []
    for c in res.conditions:
        values = {k: getattr(c, k) for k in keys}
        out.append({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
    return out


# -- fine-tuning ------------------------------------------------------------------------------


def finetune_call(cfg, root, start, start_name, strategy, kwargs, tc, data, extra) -> StageCall:
    """A fine-tuning stage (:func:`~basinscope.training.finetune.finetune` with ``strategy``
    and its ``kwargs``) from ``start`` (named ``start_name`` in the settings) on
    ``data["train"]``, with ``data["source"]`` as the source data of EWC and the trust region
    and ``data["eval_source"]``/``data["eval_target"]`` measured before and after, and
    ``data["dfr"]`` (optional; its name goes into the settings) as DFR's held-out set
    (``data["train"]`` may then be None). ``extra`` settings are added to the stage's. Its
    value is a :class:`~basinscope.experiments.stages.ModelStage` whose info holds the result: the
    strategy, trainable count, forgetting, adaptation, before/after metrics, final training
    loss and the trust region's checks. ``cfg`` gives the device (``placement``)."""
    from basinscope.training.finetune import finetune

    settings = {
        "start": start_name,
        "data": data["train"].name if data.get("train") is not None else None,
        "source": data["source"].name,
        "eval": [data["eval_source"].name, data["eval_target"].name],
        "strategy": strategy,
        **kwargs,
        "config": tc.to_dict(),
        **extra,
        **placement(cfg, dtype=False),
    }
    if data.get("dfr") is not None:
        settings["dfr_data"] = data["dfr"].name

    def compute():
        res = finetune(
            start,
            data.get("train"),
            strategy=strategy,
            config=tc,
            source_data=data["source"],
            eval_source=data["eval_source"],
            eval_target=data["eval_target"],
            dfr_data=data.get("dfr"),
            device=cfg.device,
            **kwargs,
        )
        res.model.cpu()
        h = res.history
        info = {
            "strategy": strategy,
            "trainable_params": res.trainable_params,
            "forgetting": res.forgetting,
            "adaptation": res.adaptation,
            "before": res.before,
            "after": res.after,
            "final_train_loss": h["loss"][-1] if h["loss"] else None,
        }
        if "trust_barrier" in h:
            info["trust_checks"] = len(h["trust_barrier"])
            info["trust_projections"] = sum(s < 1.0 for s in h["trust_scale"])
        return res.model, {}, info

    def call(lg):
        return model_stage(root, "finetune", settings, start, compute, log=lg)

    return StageCall(stage_dir(root, "finetune", settings), call)


# -- statistics -------------------------------------------------------------------------------


def mean_ci(
    values: list[float | None],
    level: float = 0.95,
    low: float | None = None,
    high: float | None = None,
) -> tuple[float | None, list[float] | None]:
    """The mean of ``values`` and its Student-t interval at ``level`` (``None`` for one value
    or none; ``None`` values are left out), clipped to ``[low, high]`` where the quantity is
    bounded (an accuracy, a barrier)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return None, None
    mean = float(np.mean(v))
    if len(v) < 2:
        return mean, None
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v)))
    lo, hi = mean - half, mean + half
    lo = lo if low is None else max(lo, low)
    hi = hi if high is None else min(hi, high)
    return mean, [lo, hi]


def spread(values: list[float], level: float = 0.95, **bounds: float) -> dict[str, Any]:
    """``mean``, its Student-t ``ci`` at ``level`` (None for one value), the sample ``std``,
    ``min``, ``max`` and the ``values`` themselves, over seeds."""
    v = np.asarray(values, float)
    mean, ci = mean_ci(list(v), level, **bounds)
    return {
        "mean": mean,
        "ci": ci,
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "values": [float(x) for x in v],
    }
