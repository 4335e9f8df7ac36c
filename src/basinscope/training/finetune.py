"""Fine-tuning strategies under distribution shift, each reporting forgetting and adaptation.

Every strategy is a choice of which parameters :func:`~basinscope.training.train` may
update (its ``trainable`` patterns); the rest stay bit-identical.

* ``"ft"``: all parameters.
* ``"lp"``: linear probing, the head only, with ``bn_mode="eval"`` so the backbone's
  BatchNorm statistics are bit-identical too.
* ``"lp-ft"``: LP for ``lp_steps``, then FT for ``config.steps`` from the probed model
  (Kumar et al. 2022, *Fine-Tuning can Distort Pretrained Features*).
* ``"surgical"``: only the modules whose names match ``blocks`` (``fnmatch``) (Lee et al.
  2022, *Surgical Fine-Tuning Improves Adaptation to Distribution Shifts*).
* ``"dfr"``: deep feature reweighting, last-layer retraining on a small held-out set
  ``dfr_data`` only (Kirichenko et al. 2022). The head is re-initialised
  (``reset_parameters()``, seeded by ``config.data_seed``) unless ``dfr_reinit=False``.
* ``"l2sp"`` / ``"ewc"``: full fine-tuning with a penalty toward the pre-trained weights,
  :math:`\\frac{\\alpha}{2}\\lVert w - w_0\\rVert^2` (Li et al. 2018, *Explicit inductive
  bias for transfer learning*) or :math:`\\frac{\\alpha}{2}\\sum_j F_j (w_j - w_{0,j})^2`
  with the source loss's diagonal empirical Fisher :math:`F` on ``source_data``
  (Kirkpatrick et al. 2017); :math:`\\alpha` is ``penalty_strength``.
* ``"trust-region"``: full fine-tuning that keeps the source-loss barrier on the segment
  from the pre-trained weights below ``trust_epsilon``, checked every ``trust_every``
  steps and enforced by projection along the segment
  (:class:`~basinscope.training.constraints.TrustRegion`; its checks are in ``history``).
* ``"mask"``: the top ``mask_fraction`` of all parameter entries by ``mask_signal`` on the
  target data (:func:`~basinscope.training.constraints.mask_scores`: gradient, Fisher
  diagonal, Hutchinson Hessian diagonal, relative change under a short probe, or random),
  the others exactly frozen.
* ``"guided"``: landscape-guided surgical fine-tuning: every module that owns parameters
  (the head included) is ranked by a signal on the target data, and the top
  ``guided_top_k`` are tuned surgically. Signals:
  ``"gradient_norm"`` :math:`\\|\\nabla_{\\theta_M} L\\|_2`,
  ``"relative_gradient_norm"`` :math:`\\|\\nabla_{\\theta_M} L\\|_2 / \\|\\theta_M\\|_2`
  (Lee et al.'s Auto-RGN criterion) and ``"curvature"``, the top Hessian eigenvalue of
  the module's diagonal block (:func:`~basinscope.curvature.per_module.per_module_curvature`).

Source and target metrics are measured before and after; ``forgetting`` is
:math:`\\mathrm{acc}_{src}^{before} - \\mathrm{acc}_{src}^{after}` and ``adaptation`` is
:math:`\\mathrm{acc}_{tgt}^{after} - \\mathrm{acc}_{tgt}^{before}` (None when the task's
targets are not class labels, e.g. an MSE regression: the losses are still measured).

Any model and data go through a :class:`~basinscope.engine.task.Task` (``task=``: how a
batch is split, how the model is called, which loss is minimised and measured), on
``device=`` in ``dtype=`` (mixed precision for bfloat16/float16), with data in memory or
a DataLoader streamed batch by batch (see :func:`~basinscope.training.train`).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import glob
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from basinscope._checks import MAX_SEED, MAX_STEPS
from basinscope.engine.batches import StreamingBatches, streams
from basinscope.engine.fit import check_model_data
from basinscope.engine.precision import autocast
from basinscope.engine.task import Task, as_task, call_model, inputs_to
from basinscope.errors import BasinscopeError
from basinscope.models import save_weights
from basinscope.result import Result, fmt, transient
from basinscope.spec import EVAL_DTYPES, Spec, group, option, takes_spec
from basinscope.training._data import (
    as_examples,
    as_tensors,
    examples_per_pass,
    iter_chunks,
    targets_to,
)
from basinscope.training._task import (
    Objective,
    evaluate_task,
    resolve_device,
    resolve_precision,
)
from basinscope.training.config import OPTIMIZERS, SHARPNESS_AWARE, TrainConfig
from basinscope.training.trainer import TrainResult, train

#: The fine-tuning strategies: name -> which parameters are trained, and the paper.
STRATEGY_DEFINITIONS: dict[str, str] = {
    "ft": "full fine-tuning: every parameter",
    "lp": "linear probing: the head only, BatchNorm statistics frozen",
    "lp-ft": "linear probing for lp_steps, then full fine-tuning (Kumar et al. 2022)",
    "surgical": "the modules matching the block patterns only (Lee et al. 2022)",
    "dfr": "deep feature reweighting: the re-initialised head on a small held-out set "
    "(Kirichenko et al. 2022)",
    "guided": "the top-k modules ranked by a landscape signal on the target data, surgically",
    "l2sp": "every parameter, with the penalty alpha/2 ||w - w_pre||^2 (Li et al. 2018)",
    "ewc": "every parameter, with the penalty alpha/2 sum F (w - w_pre)^2, F the source "
    "loss's diagonal empirical Fisher (Kirkpatrick et al. 2017)",
    "trust-region": "every parameter, projected back along the segment from w_pre whenever "
    "the source-loss barrier on it (rise: max_alpha L_s - L_s(w_pre)) exceeds epsilon",
    "mask": "the top fraction of parameter entries by a landscape signal on the target data "
    "(gradient, fisher, hessian, probe or random), the rest exactly frozen",
}
STRATEGIES: tuple[str, ...] = tuple(STRATEGY_DEFINITIONS)
GUIDED_SIGNALS: tuple[str, ...] = ("gradient_norm", "relative_gradient_norm", "curvature")
FORGETTING = "forgetting = source accuracy before - source accuracy after"
ADAPTATION = "adaptation = target accuracy after - target accuracy before"

__all__ = [
    "GUIDED_SIGNALS",
    "STRATEGIES",
    "STRATEGY_DEFINITIONS",
    "FinetuneComparison",
    "FinetuneComparisonSpec",
    "FinetuneResult",
    "FinetuneSpec",
    "FinetuneTraining",
    "compare_strategies",
    "finetune",
    "head_parameters",
    "module_ranking",
    "parameter_modules",
    "surgical_parameters",
    "table",
]


@dataclass(frozen=True)
class FinetuneSpec(Spec):
    """The settings of :func:`finetune` besides its training configuration (and of one
    strategy of ``basinscope finetune``, which takes several: ``--strategy``, repeatable)."""

    kind: ClassVar[str] = "finetune"

    strategy: str = option(
        "ft",
        "ft, lp, lp-ft, surgical, dfr, guided, l2sp, ewc, trust-region or mask.",
        choices=STRATEGIES,
        cli=False,
    )
    blocks: tuple[str, ...] = option((), "fnmatch pattern of modules for surgical; repeat.")
    head: str | None = option(None, "Head module (default: the last Linear).")
    lp_steps: int = option(100, "Linear-probing steps of lp-ft.", low=1, high=MAX_STEPS)
    dfr_reinit: bool = option(True, "dfr: re-initialise the head first.", cli=False)
    guided_signal: str = option(
        "gradient_norm",
        "guided: gradient_norm, relative_gradient_norm or curvature.",
        choices=GUIDED_SIGNALS,
    )
    guided_top_k: int = option(1, "guided: modules tuned.", low=1)
    penalty_strength: float = option(0.01, "l2sp, ewc: the penalty's strength alpha.", low=0.0)
    fisher_examples: int = option(256, "ewc: source examples of the Fisher diagonal.", low=1)
    trust_epsilon: float = option(
        0.05, "trust-region: the largest source-loss barrier allowed.", low=0.0
    )
    trust_every: int = option(10, "trust-region: steps between checks.", low=1)
    mask_signal: str = option(
        "fisher",
        "mask: the per-entry signal.",
        choices=("gradient", "fisher", "hessian", "probe", "random"),
    )
    mask_fraction: float = option(
        0.05, "mask: the fraction of parameter entries trained.", low=0.0, high=1.0
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N or mps.")
    dtype: str = option(
        "float32",
        "float32, float64, or mixed precision bfloat16/float16 (autocast over float32 weights).",
        choices=EVAL_DTYPES,
    )

    def check(self) -> None:
        resolve_device(self.device, self.name_of("device"))


@dataclass(frozen=True)
class FinetuneTraining(Spec):
    """The training settings of ``basinscope finetune``: :meth:`config` is the
    :class:`TrainConfig` that :func:`finetune` takes."""

    steps: int = option(200, "Training steps (the FT phase for lp-ft).", low=1, high=MAX_STEPS)
    lr: float = option(0.01, "Learning rate.")
    batch_size: int = option(64, "Examples per training step.", low=1)
    optimizer: str = option("sgd", "sgd, adam or adamw.", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.0, "Weight decay.")
    seed: int = option(0, "Seed of the batch order (and dfr's head init).", low=0, high=MAX_SEED)
    sharpness_aware: str = option(
        "none",
        "none, sam, asam or cflat: the sharpness-aware gradient every step uses.",
        choices=SHARPNESS_AWARE,
    )
    sam_rho: float = option(0.05, "sam, asam, cflat: the perturbation radius rho.")

    def check(self) -> None:
        if not self.lr > 0:
            raise BasinscopeError(
                f"{self.name_of('lr')} must be a finite number > 0, got {self.lr}"
            )
        self.config()  # TrainConfig's own checks (momentum in [0, 1), weight decay >= 0)

    def config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            data_seed=self.seed,
            sharpness_aware=self.sharpness_aware,
            sam_rho=self.sam_rho,
        )


@dataclass(frozen=True)
class FinetuneComparisonSpec(Spec):
    """Fine-tune a pretrained model on a shifted target; forgetting and adaptation.

    The data options (--data, --rotation, --block-shuffle, --noise) describe the target
    distribution; the source is the same --data with --source-rotation and no other shift.

    Each --strategy (repeat to compare several in one run) trains a copy of the model on the
    target's train split: ft (all parameters), lp (the head only, BatchNorm frozen), lp-ft
    (--lp-steps of LP, then FT; Kumar et al. 2022), surgical (the modules matching --blocks,
    fnmatch patterns; Lee et al. 2022), dfr (the re-initialised head on the last
    --dfr-examples of the target's train split; Kirichenko et al. 2022), guided (the top
    --guided-top-k modules by --guided-signal on the target), l2sp (all parameters with the
    penalty --penalty-strength/2 ||w - w_pre||²; Li et al. 2018), ewc (the same weighted by
    the source loss's diagonal Fisher on --fisher-examples source training examples;
    Kirkpatrick et al. 2017), trust-region (all parameters, projected back toward w_pre
    whenever the source-loss barrier on the segment from w_pre exceeds --trust-epsilon,
    checked every --trust-every steps) or mask (the top --mask-fraction of parameter
    entries by --mask-signal on the target: gradient, fisher, hessian (Hutchinson), probe
    (relative change under a short probe) or random; the rest frozen exactly).
    --sharpness-aware sam, asam or cflat trains any strategy with that optimizer's gradient
    (radius --sam-rho). Source and target accuracy are
    measured on --eval-split before and after: forgetting = source accuracy before - after,
    adaptation = target accuracy after - before. Each strategy's weights are saved as
    RUN/models/<strategy>.safetensors; figures/finetune_comparison shows forgetting and
    adaptation. --device and --dtype say where and in which precision the models are
    trained and evaluated (bfloat16/float16: float32 weights, forward passes under autocast).

    Library: ``compare_strategies(model, target_train, spec=FinetuneComparisonSpec(...),
    eval_source=..., eval_target=...)``.
    """

    kind: ClassVar[str] = "finetune_comparison"

    strategies: tuple[str, ...] = option(
        (),
        "ft, lp, lp-ft, surgical, dfr, guided, l2sp, ewc, trust-region or mask; repeat "
        "(default: ft).",
        flag="--strategy",
        choices=STRATEGIES,
    )
    finetune: FinetuneSpec = group(FinetuneSpec)
    dfr_examples: int = option(
        200, "dfr: held-out target examples the head is retrained on.", low=1
    )
    eval_split: str = option("test", "Split of the before/after evaluation.")
    train: FinetuneTraining = group(FinetuneTraining)

    def check(self) -> None:
        flag, blocks = self.name_of("strategies"), self.finetune.name_of("blocks")
        if len(set(self.strategies)) != len(self.strategies):
            raise BasinscopeError(f"each {flag} may be given once, got {list(self.strategies)}")
        if self.finetune.blocks and "surgical" not in self.strategies:
            raise BasinscopeError(
                f"{blocks} is only used by {flag} surgical; add it or drop {blocks}"
            )

    def kwargs(self) -> dict[str, Any]:
        """:func:`compare_strategies`' keyword arguments: ``strategies`` (default ``("ft",)``),
        ``dfr_examples``, ``eval_split``, ``config`` (:meth:`FinetuneTraining.config`) and
        each strategy's settings (``finetune``'s fields but the strategy)."""
        out = {k: v for k, v in self.finetune.kwargs().items() if k != "strategy"}
        return {
            **out,
            "strategies": self.strategies or ("ft",),
            "dfr_examples": self.dfr_examples,
            "eval_split": self.eval_split,
            "config": self.train.config(),
        }


@dataclass(frozen=True)
class FinetuneResult(Result, kind="finetune"):
    """What :func:`finetune` returns.

    Attributes:
        strategy: the strategy name (``definition`` says what it trains and the paper).
        trainable: names of the parameters that were trained (for ``"lp-ft"`` the FT phase).
        ranking: for ``"guided"``, ``(module, signal value)`` pairs, highest first.
        signal: for ``"guided"``, the signal name.
        before, after: ``{"source": {...}, "target": {...}}`` metrics from
            :func:`~basinscope.engine.evaluate.evaluate_model` (empty without eval data).
        forgetting: source accuracy before minus after (None without source data).
        adaptation: target accuracy after minus before (None without target eval data).
        config: the configuration passed in.
        history: the trainer's ``step``/``loss``/``lr`` (phases concatenated, steps
            continuing) and ``phase`` (0 for LP, 1 for FT in ``"lp-ft"``; 0 otherwise).
        trainable_params: the number of trained parameter entries.
        definition: the strategy, forgetting and adaptation in words.
        spec: the settings (the training configuration is ``config``; ``spec.device`` and
            ``spec.dtype`` are where and in which precision it ran).
        task: the task's :meth:`~basinscope.engine.task.Task.describe` (the loss).
        data_order: the trainer's (``"seeded permutation"``, or ``"loader"`` for a
            streamed DataLoader).
        model: the fine-tuned copy (in memory only: a loaded result has ``None``).
        runs: the underlying :class:`TrainResult` of each phase (in memory only).
    """

    strategy: str
    trainable: tuple[str, ...]
    ranking: tuple[tuple[str, float], ...] | None
    signal: str | None
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    forgetting: float | None
    adaptation: float | None
    config: TrainConfig
    history: dict[str, list[float]]
    trainable_params: int = 0
    definition: dict[str, str] | None = None
    spec: FinetuneSpec | None = None
    task: dict[str, Any] | None = None
    data_order: str | None = None
    model: nn.Module | None = transient(default=None)
    runs: tuple[TrainResult, ...] = transient(default=())

    def __post_init__(self) -> None:
        if self.definition is None:
            definition = {
                "strategy": f"{self.strategy}: {STRATEGY_DEFINITIONS.get(self.strategy, '?')}",
                "forgetting": FORGETTING,
                "adaptation": ADAPTATION,
            }
            object.__setattr__(self, "definition", definition)


@dataclass(frozen=True)
class FinetuneComparison(Result, kind="finetune_comparison"):
    """Several strategies fine-tuned from the same model on the same target: what
    ``basinscope finetune`` computes. ``source``/``target`` describe the two distributions,
    ``weights_files`` where each strategy's fine-tuned weights were saved."""

    strategies: tuple[FinetuneResult, ...]
    eval_split: str | None = None
    source: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    weights_files: dict[str, str] | None = None
    definition: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.definition is None:
            definition = {
                "strategies": "; ".join(r.definition["strategy"] for r in self.strategies),
                "forgetting": FORGETTING,
                "adaptation": ADAPTATION,
            }
            object.__setattr__(self, "definition", definition)

    def table(self) -> list[dict[str, Any]]:
        """One row per strategy (see :func:`table`)."""
        return table(self.strategies)

    def summary(self) -> list[str]:
        """The :meth:`table` (accuracies, forgetting, adaptation), then the weights folder."""
        lines = [
            f"{'strategy':<10} {'params':>8} {'src before':>10} {'src after':>10} "
            f"{'tgt before':>10} {'tgt after':>10} {'forgetting':>10} {'adaptation':>10}"
        ]
        lines += [
            f"{row['strategy']:<10} {row['trainable_params']:>8} "
            f"{fmt(row['source_accuracy_before']):>10} {fmt(row['source_accuracy_after']):>10} "
            f"{fmt(row['target_accuracy_before']):>10} {fmt(row['target_accuracy_after']):>10} "
            f"{fmt(row['forgetting']):>10} {fmt(row['adaptation']):>10}"
            for row in self.table()
        ]
        lines += [t for r in self.strategies if (t := _trust_line(r))]
        if self.weights_files:
            folder = Path(next(iter(self.weights_files.values()))).parent
            lines.append(f"fine-tuned weights: {folder}")
        return lines


def _trust_line(r: FinetuneResult) -> str | None:
    """What the trust region did, in one line (None for other strategies): its checks, its
    projections and the largest source-loss rise against epsilon, and what to change when
    it never acted (then it trained exactly as ``ft`` does)."""
    h = r.history
    if not h.get("trust_step"):
        return None
    spec = r.spec
    eps = (
        spec.get("trust_epsilon")
        if isinstance(spec, dict)
        else getattr(spec, "trust_epsilon", None)
    )
    moved = sum(scale < 1.0 for scale in h["trust_scale"])
    line = (
        f"{r.strategy}: {len(h['trust_step'])} checks, {moved} projections toward w_pre; "
        f"largest source-loss rise {max(h['trust_barrier']):.4g}"
        + (f" (epsilon {eps:g})" if eps is not None else "")
    )
    if not moved:
        line += (
            ": it never acted, so it trained as ft does; a smaller --trust-epsilon constrains it"
        )
    return line


def _module_params(model: nn.Module, module: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if module == "" or n.startswith(module + ".")]


def head_parameters(model: nn.Module, head: str | None = None) -> list[str]:
    """Parameter names of the head: module ``head``, or the last ``nn.Linear`` in
    ``named_modules()`` order."""
    modules = dict(model.named_modules())
    if head is None:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise BasinscopeError(
                "the model has no nn.Linear module to use as the head; pass head='<module "
                f"name>' (modules: {[n for n in modules if n]})."
            )
        head = linears[-1]
    elif head not in modules:
        raise BasinscopeError(
            f"the model has no module {head!r} to use as the head; modules are "
            f"{[n for n in modules if n]}."
        )
    names = _module_params(model, head)
    if not names:
        raise BasinscopeError(f"the head module {head!r} has no parameters.")
    return names


def parameter_modules(model: nn.Module) -> dict[str, list[str]]:
    """``{module: parameters it owns directly}`` for each module that owns parameters."""
    blocks: dict[str, list[str]] = {}
    for n, _ in model.named_parameters():
        blocks.setdefault(n.rpartition(".")[0], []).append(n)
    return blocks


def surgical_parameters(model: nn.Module, blocks: Sequence[str]) -> list[str]:
    """Parameter names of the modules matching the ``fnmatch`` patterns ``blocks`` (in
    ``named_parameters()`` order); a pattern that matches no module is refused."""
    if isinstance(blocks, str):
        blocks = (blocks,)
    if not blocks:
        raise BasinscopeError("strategy='surgical' needs blocks=[...], e.g. blocks=['conv1'].")
    modules = [n for n, _ in model.named_modules() if n and _module_params(model, n)]
    chosen: list[str] = []
    for pat in blocks:
        hits = [m for m in modules if fnmatch.fnmatchcase(m, pat)]
        if not hits:
            raise BasinscopeError(
                f"the block pattern {pat!r} matches no module with parameters; the modules "
                f"are {', '.join(modules)} (fnmatch syntax, e.g. 'conv1' or 'layer*')."
            )
        for m in hits:
            chosen.extend(n for n in _module_params(model, m) if n not in chosen)
    order = [n for n, _ in model.named_parameters()]
    return sorted(chosen, key=order.index)


def _sq(t: torch.Tensor | None) -> float:
    return 0.0 if t is None else float((t.double() ** 2).sum())


def module_ranking(
    model: nn.Module,
    data: Any,
    signal: str = "gradient_norm",
    *,
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> list[tuple[str, float]]:
    """Rank the modules that own parameters by ``signal`` on ``data``, highest first.

    Gradients are of the task's loss (default: cross-entropy), the mean over all of
    ``data`` (in memory, or a DataLoader streamed batch by batch), in eval mode (BatchNorm
    uses its running statistics, which are not changed), on ``device`` (default: the
    model's) in ``dtype`` (default: the model's). See the module docstring for the
    signals; ``"curvature"`` is the top eigenvalue of each module's Hessian block of the
    task's loss, computed by the curvature operators in float64.
    """
    if signal not in GUIDED_SIGNALS:
        raise BasinscopeError(
            f"unknown guided_signal {signal!r}; valid signals are "
            f"{', '.join(repr(s) for s in GUIDED_SIGNALS)}."
        )
    task = as_task(task)
    blocks = parameter_modules(model)
    if signal == "curvature":
        from basinscope.curvature.per_module import per_module_curvature

        extra: dict[str, Any] = {"task": task}
        if device is not None:
            extra["device"] = resolve_device(device)
        res = per_module_curvature(model, data, modules=list(blocks), trace=False, **extra)
        scores = {r.module: float(r.top_eigenvalue) for r in res}
    else:
        scores = _gradient_scores(model, data, signal, blocks, task, device, dtype)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _gradient_scores(
    model: nn.Module,
    data: Any,
    signal: str,
    blocks: dict[str, list[str]],
    task: Task,
    device: Any,
    dtype: Any,
) -> dict[str, float]:
    first = next(iter(model.parameters()))
    dev = resolve_device(device) if device is not None else first.device
    storage, amp = resolve_precision(dtype)
    net = copy.deepcopy(model).to(dev)
    if storage is not None:
        net.to(dtype=storage)
    net.eval()
    params = dict(net.named_parameters())
    float_dtype = next(iter(params.values())).dtype
    objective = Objective(task)
    if streams(data):
        batches: Any = StreamingBatches(data, device=dev, dtype=float_dtype, task=task)
        n = None  # known after the pass: the summed gradients are divided by it then
    else:
        x, y = as_examples(data, "target_data", task)
        x, y = inputs_to(x, dev, float_dtype), targets_to(y, dev, float_dtype)
        check_model_data(net, [(x, y)], what="the target data", task=task)
        batches, n = iter_chunks(x, y, 1024), int(y.shape[0])
    seen = 0
    for xb, yb in batches:
        if n is None:
            yb = targets_to(yb, None, float_dtype)
            if seen == 0:
                check_model_data(net, [(xb, yb)], what="the target data", task=task)
        k = int(yb.shape[0])
        with autocast(dev, amp):
            loss = objective(call_model(net, xb), yb)
        (loss * (k / n if n is not None else k)).backward()
        seen += k
    if seen == 0:
        raise BasinscopeError("the target data gave no examples: the DataLoader is empty.")
    if n is None:
        for p in params.values():
            if p.grad is not None:
                p.grad /= seen
    scores = {}
    for m, names in blocks.items():
        g = math.sqrt(sum(_sq(params[k].grad) for k in names))
        if signal == "relative_gradient_norm":
            w = math.sqrt(sum(_sq(params[k].detach()) for k in names))
            g = g / max(w, 1e-12)
        scores[m] = g
    return scores


def _metrics(
    model: nn.Module, evals: dict[str, Any], task: Task, device: Any, dtype: Any
) -> dict[str, dict[str, float]]:
    if not evals:
        return {}
    flat = evaluate_task(model, evals, task=task, device=device, dtype=dtype)
    return {
        split: {k[len(split) + 1 :]: v for k, v in flat.items() if k.startswith(split + "_")}
        for split in evals
    }


def _num_examples(data: Any) -> int | None:
    """The number of examples of ``data`` (None for a loader that does not say)."""
    if data is None:
        return 0
    if isinstance(data, Mapping):
        return len(next(iter(data.values())))
    if isinstance(data, (tuple, list)):
        return len(data[0])
    if streams(data):
        return examples_per_pass(data)
    return len(data) if hasattr(data, "__len__") else len(as_tensors(data)[0])


def _last_examples(data: Any, k: int, task: Task) -> Any:
    """The last ``k`` examples of ``data`` in memory, in a form the trainer reads."""
    if streams(data):
        raise BasinscopeError(
            "dfr_examples takes the last examples of target_data, but target_data is a "
            "DataLoader (streamed, never gathered in memory): pass dfr_data= (a small "
            "held-out set) instead."
        )
    if isinstance(data, Mapping):
        as_examples(data, "target_data", task)  # the same checks as for training
        return {key: v[-k:] for key, v in data.items()}
    if (
        hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
        and not isinstance(data, (tuple, list, Tensor))
        and not isinstance(getattr(data, "x", None), Tensor)
    ):
        n = len(data)
        return torch.utils.data.Subset(data, range(max(n - k, 0), n))
    x, y = as_tensors(data, "target_data")
    return x[-k:], y[-k:]


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise BasinscopeError(
            f"unknown fine-tuning strategy {strategy!r}; valid strategies are "
            f"{', '.join(repr(s) for s in STRATEGIES)}."
        )


def _escape(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(glob.escape(n) for n in names)


@takes_spec(FinetuneSpec)
def finetune(
    model: nn.Module,
    target_data: Any,
    *,
    strategy: str,
    config: TrainConfig,
    head: str | None = None,
    blocks: Sequence[str] = (),
    lp_steps: int = 100,
    dfr_data: Any = None,
    dfr_reinit: bool = True,
    guided_signal: str = "gradient_norm",
    guided_top_k: int = 1,
    penalty_strength: float = 0.01,
    fisher_examples: int = 256,
    trust_epsilon: float = 0.05,
    trust_every: int = 10,
    mask_signal: str = "fisher",
    mask_fraction: float = 0.05,
    source_data: Any = None,
    eval_target: Any = None,
    eval_source: Any = None,
    task: Task | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on ``target_data`` with ``strategy`` (module docstring).

    The strategy sets ``config.trainable`` (any ``frozen``/``trainable`` of ``config`` is
    replaced); ``"lp"`` and ``"dfr"`` also set ``bn_mode="eval"``. The parameters a
    strategy does not train stay bit-identical. Metrics are measured on ``eval_source``
    (default ``source_data``) and ``eval_target`` (default ``target_data``) with
    :func:`~basinscope.engine.evaluate.evaluate_model`: the task's loss, and the accuracy
    where the targets are class labels. ``target_data`` may be None for ``"dfr"``, which
    trains on ``dfr_data`` only. The settings other than ``config`` may come as
    ``spec=FinetuneSpec(...)``.

    Every dataset may be in memory (seeded minibatches of ``config.batch_size``) or a
    DataLoader, streamed batch by batch in its own order (:func:`~basinscope.training.train`).
    ``task`` is how the model is run and which loss is minimised and measured (default:
    ``(x, y)`` batches, ``model(x)``, cross-entropy; e.g. ``Task(loss="model")`` for a
    Hugging Face model's own loss, ``Task(loss="mse")`` for a regression). ``device``
    (default: the model's) and ``dtype`` (default: the model's for training, float32 for the
    metrics; bfloat16/float16 are mixed precision) are recorded in ``spec``.
    """
    _check_strategy(strategy)
    if strategy == "dfr" and dfr_data is None:
        raise BasinscopeError(
            "strategy='dfr' retrains the head on a small held-out set: pass dfr_data=(x, y)."
        )
    if strategy != "dfr" and target_data is None:
        raise BasinscopeError(f"strategy={strategy!r} needs target_data (only 'dfr' does not).")
    task = as_task(task)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    dev = resolve_device(device)
    eval_target = target_data if eval_target is None else eval_target
    eval_source = source_data if eval_source is None else eval_source
    evals = {k: v for k, v in (("source", eval_source), ("target", eval_target)) if v is not None}
    before = _metrics(model, evals, task, dev, dtype)

    def cfg(trainable: Sequence[str], **kw: Any) -> TrainConfig:
        return dataclasses.replace(config, frozen=(), trainable=_escape(trainable), **kw)

    def fit(start: nn.Module, data: Any, c: TrainConfig, **kw: Any) -> TrainResult:
        return train(start, data, c, task=task, device=dev, dtype=dtype, **kw)

    if strategy in ("ewc", "trust-region") and source_data is None:
        raise BasinscopeError(
            f"strategy={strategy!r} measures the source loss: pass source_data= (the "
            "source distribution's training data)"
        )
    trust = None

    all_params = [n for n, _ in model.named_parameters()]
    ranking = signal = None
    runs: list[TrainResult] = []
    if strategy == "ft":
        trainable = all_params
        runs.append(fit(model, target_data, cfg(trainable)))
    elif strategy == "lp":
        trainable = head_parameters(model, head)
        runs.append(fit(model, target_data, cfg(trainable, bn_mode="eval")))
    elif strategy == "lp-ft":
        if lp_steps < 1:
            raise BasinscopeError(f"lp_steps must be >= 1 for 'lp-ft', got {lp_steps}.")
        lp_cfg = cfg(
            head_parameters(model, head),
            bn_mode="eval",
            steps=lp_steps,
            checkpoint_steps=(),
            schedule="constant",
            warmup_steps=0,
            milestones=(),
            cycle_steps=None,
        )
        runs.append(fit(model, target_data, lp_cfg))
        trainable = all_params
        runs.append(fit(runs[0].model, target_data, cfg(trainable)))
    elif strategy == "surgical":
        trainable = surgical_parameters(model, blocks)
        runs.append(fit(model, target_data, cfg(trainable)))
    elif strategy == "dfr":
        trainable = head_parameters(model, head)
        start = model
        if dfr_reinit:
            start = copy.deepcopy(model)
            head_name = trainable[0].rpartition(".")[0]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.data_seed)
                dict(start.named_modules())[head_name].reset_parameters()
        runs.append(fit(start, dfr_data, cfg(trainable, bn_mode="eval")))
    elif strategy == "l2sp":
        trainable = all_params
        runs.append(
            fit(
                model,
                target_data,
                cfg(trainable, penalty="l2sp", penalty_strength=penalty_strength),
            )
        )
    elif strategy == "ewc":
        from basinscope.curvature.fisher import diagonal_fisher

        trainable = all_params
        fisher = diagonal_fisher(
            model, source_data, task=task, examples=fisher_examples, device=dev
        )
        c = cfg(trainable, penalty="ewc", penalty_strength=penalty_strength)
        runs.append(fit(model, target_data, c, importance=fisher))
    elif strategy == "trust-region":
        from basinscope.training.constraints import TrustRegion

        trainable = all_params
        trust = TrustRegion(source_data, trust_epsilon, every=trust_every, task=task)
        runs.append(fit(model, target_data, cfg(trainable), callbacks=[trust]))
    elif strategy == "mask":
        from basinscope.training.constraints import mask_scores, top_mask

        trainable = all_params
        scores = mask_scores(
            model, target_data, mask_signal, task=task, seed=config.data_seed, device=dev
        )
        masks = top_mask(scores, mask_fraction)
        runs.append(fit(model, target_data, cfg(trainable), masks=masks))
    else:  # guided
        if guided_top_k < 1:
            raise BasinscopeError(f"guided_top_k must be >= 1, got {guided_top_k}.")
        signal = guided_signal
        ranking = tuple(
            module_ranking(model, target_data, guided_signal, task=task, device=dev, dtype=dtype)
        )
        owned = parameter_modules(model)
        trainable = [n for m, _ in ranking[:guided_top_k] for n in owned[m]]
        trainable = [n for n in all_params if n in trainable]
        runs.append(fit(model, target_data, cfg(trainable)))

    history: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "phase": []}
    if trust is not None:
        history["trust_step"] = [r["step"] for r in trust.history]
        history["trust_barrier"] = [r["barrier"] for r in trust.history]
        history["trust_scale"] = [r["scale"] for r in trust.history]
    offset = 0
    for phase, run in enumerate(runs):
        history["step"] += [s + offset for s in run.history["step"]]
        history["loss"] += run.history["loss"]
        history["lr"] += run.history["lr"]
        history["phase"] += [float(phase)] * len(run.history["step"])
        offset += run.config.steps
    tuned = runs[-1].model
    after = _metrics(tuned, evals, task, dev, dtype)

    def delta(split: str, sign: float) -> float | None:
        if split not in before or "accuracy" not in before[split]:
            return None
        return sign * (before[split]["accuracy"] - after[split]["accuracy"])

    params = dict(tuned.named_parameters())
    return FinetuneResult(
        strategy=strategy,
        model=tuned,
        trainable=tuple(trainable),
        ranking=ranking,
        signal=signal,
        before=before,
        after=after,
        forgetting=delta("source", 1.0),
        adaptation=delta("target", -1.0),
        config=config,
        history=history,
        trainable_params=(
            int(sum(int(m.sum()) for m in masks.values()))
            if strategy == "mask"
            else int(sum(params[n].numel() for n in trainable))
        ),
        spec=FinetuneSpec(
            strategy=strategy,
            blocks=(blocks,) if isinstance(blocks, str) else tuple(blocks),
            head=head,
            lp_steps=lp_steps,
            dfr_reinit=dfr_reinit,
            guided_signal=guided_signal,
            guided_top_k=guided_top_k,
            penalty_strength=penalty_strength,
            fisher_examples=fisher_examples,
            trust_epsilon=trust_epsilon,
            trust_every=trust_every,
            mask_signal=mask_signal,
            mask_fraction=mask_fraction,
            device=runs[-1].device,
            dtype=runs[-1].dtype,
        ),
        task=task.describe(),
        data_order=runs[-1].data_order,
        runs=tuple(runs),
    )


@takes_spec(FinetuneComparisonSpec, forward=True)
def compare_strategies(
    model: nn.Module,
    target_data: Any,
    strategies: Sequence[str] = ("ft", "lp", "lp-ft", "guided"),
    *,
    config: TrainConfig,
    dfr_examples: int | None = None,
    save_dir: str | Path | None = None,
    eval_split: str | None = None,
    source: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
    say: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> FinetuneComparison:
    """Fine-tune ``model`` on ``target_data`` with each of ``strategies``; the comparison.

    ``config`` and the other keyword arguments go to :func:`finetune` for every strategy
    (:class:`FinetuneSpec`'s fields, ``eval_source``, ``eval_target``, ``task``,
    ``device``, ``dtype``, ...; the strategy is set per run); ``spec=FinetuneComparisonSpec(...)``
    gives them all (what ``basinscope finetune`` runs). The strategies, the blocks and the
    head are checked before any training. Without ``dfr_data``, ``dfr_examples`` makes it
    the last that many examples of ``target_data`` (which must then be in memory, not a
    DataLoader). With ``save_dir`` each fine-tuned model is saved as
    ``<save_dir>/<strategy>.safetensors`` (the result's ``weights_files``). ``eval_split``,
    ``source`` and ``target`` describe the data in the result; ``say`` receives one progress
    line per strategy.
    """
    strategies = (strategies,) if isinstance(strategies, str) else tuple(strategies)
    for s in strategies:
        _check_strategy(s)
    if "surgical" in strategies:
        surgical_parameters(model, kwargs.get("blocks", ()))
    if kwargs.get("head") is not None or {"lp", "lp-ft", "dfr"} & set(strategies):
        head_parameters(model, kwargs.get("head"))
    if "dfr" in strategies and dfr_examples is not None and kwargs.get("dfr_data") is None:
        if dfr_examples < 1:
            raise BasinscopeError(f"dfr_examples must be >= 1, got {dfr_examples}.")
        task = as_task(kwargs.get("task"))
        kwargs["dfr_data"] = _last_examples(target_data, dfr_examples, task)
    results, files = [], {}
    for s in strategies:
        if say is not None:
            n = _num_examples(kwargs.get("dfr_data") if s == "dfr" else target_data)
            where = "a streamed loader" if n is None else f"{n} target examples"
            say(f"fine-tuning with {s} for {config.steps} steps on {where}")
        r = finetune(model, target_data, config=config, **{**kwargs, "strategy": s})
        if save_dir is not None:
            files[s] = str(save_weights(r.model, Path(save_dir) / f"{s}.safetensors"))
        results.append(r)
    return FinetuneComparison(
        strategies=tuple(results),
        eval_split=eval_split,
        source=source,
        target=target,
        weights_files=files or None,
    )


def table(results: Sequence[FinetuneResult]) -> list[dict[str, Any]]:
    """One row per result: strategy, trained parameter count, accuracies, forgetting, adaptation."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "strategy": r.strategy,
            "trainable_params": r.trainable_params,
            "modules": sorted({n.rpartition(".")[0] for n in r.trainable}),
        }
        for split in ("source", "target"):
            for when, m in (("before", r.before), ("after", r.after)):
                row[f"{split}_accuracy_{when}"] = m.get(split, {}).get("accuracy")
        row["forgetting"] = r.forgetting
        row["adaptation"] = r.adaptation
        rows.append(row)
    return rows
