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
* ``"guided"``: landscape-guided surgical fine-tuning: every module that owns parameters
  (the head included) is ranked by a signal on the target data, and the top
  ``guided_top_k`` are tuned surgically. Signals:
  ``"gradient_norm"`` :math:`\\|\\nabla_{\\theta_M} L\\|_2`,
  ``"relative_gradient_norm"`` :math:`\\|\\nabla_{\\theta_M} L\\|_2 / \\|\\theta_M\\|_2`
  (Lee et al.'s Auto-RGN criterion) and ``"curvature"``, the top Hessian eigenvalue of
  the module's diagonal block (:func:`~basinscope.curvature.per_module.per_module_curvature`).

Source and target metrics are measured before and after; ``forgetting`` is
:math:`\\mathrm{acc}_{src}^{before} - \\mathrm{acc}_{src}^{after}` and ``adaptation`` is
:math:`\\mathrm{acc}_{tgt}^{after} - \\mathrm{acc}_{tgt}^{before}`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import glob
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from basinscope.engine.fit import check_model_data
from basinscope.errors import BasinscopeError
from basinscope.training._data import as_tensors, iter_chunks
from basinscope.training.config import TrainConfig
from basinscope.training.trainer import TrainResult, train

STRATEGIES: tuple[str, ...] = ("ft", "lp", "lp-ft", "surgical", "dfr", "guided")
GUIDED_SIGNALS: tuple[str, ...] = ("gradient_norm", "relative_gradient_norm", "curvature")

__all__ = [
    "GUIDED_SIGNALS",
    "STRATEGIES",
    "FinetuneResult",
    "compare_strategies",
    "finetune",
    "head_parameters",
    "module_ranking",
    "table",
]


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        strategy: the strategy name.
        model: the fine-tuned copy.
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
        runs: the underlying :class:`TrainResult` of each phase.
    """

    strategy: str
    model: nn.Module
    trainable: tuple[str, ...]
    ranking: tuple[tuple[str, float], ...] | None
    signal: str | None
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    forgetting: float | None
    adaptation: float | None
    config: TrainConfig
    history: dict[str, list[float]]
    runs: tuple[TrainResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the model and the runs)."""
        return {
            "strategy": self.strategy,
            "trainable": list(self.trainable),
            "ranking": None if self.ranking is None else [list(r) for r in self.ranking],
            "signal": self.signal,
            "before": self.before,
            "after": self.after,
            "forgetting": self.forgetting,
            "adaptation": self.adaptation,
            "config": self.config.to_dict(),
            "history": self.history,
        }


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


def _param_modules(model: nn.Module) -> dict[str, list[str]]:
    """``{module: parameters it owns directly}`` for each module that owns parameters."""
    blocks: dict[str, list[str]] = {}
    for n, _ in model.named_parameters():
        blocks.setdefault(n.rpartition(".")[0], []).append(n)
    return blocks


def _surgical_params(model: nn.Module, blocks: Sequence[str]) -> list[str]:
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
    model: nn.Module, data: Any, signal: str = "gradient_norm"
) -> list[tuple[str, float]]:
    """Rank the modules that own parameters by ``signal`` on ``data``, highest first.

    Gradients are of the mean cross-entropy over all of ``data``, in eval mode (BatchNorm
    uses its running statistics, which are not changed). See the module docstring for
    the signals.
    """
    if signal not in GUIDED_SIGNALS:
        raise BasinscopeError(
            f"unknown guided_signal {signal!r}; valid signals are "
            f"{', '.join(repr(s) for s in GUIDED_SIGNALS)}."
        )
    blocks = _param_modules(model)
    if signal == "curvature":
        from basinscope.curvature.per_module import per_module_curvature

        res = per_module_curvature(model, data, modules=list(blocks), trace=False)
        scores = {r.module: float(r.top_eigenvalue) for r in res}
    else:
        net = copy.deepcopy(model).eval()
        params = dict(net.named_parameters())
        dtype = next(iter(params.values())).dtype
        x, y = as_tensors(data, "target_data")
        x = x.to(dtype) if x.is_floating_point() else x
        check_model_data(net, (x, y), what="the target data")
        n = x.shape[0]
        for xb, yb in iter_chunks(x, y, 1024):
            loss = nn.functional.cross_entropy(net(xb), yb) * (xb.shape[0] / n)
            loss.backward()
        scores = {}
        for m, names in blocks.items():
            g = math.sqrt(sum(_sq(params[k].grad) for k in names))
            if signal == "relative_gradient_norm":
                w = math.sqrt(sum(_sq(params[k].detach()) for k in names))
                g = g / max(w, 1e-12)
            scores[m] = g
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _metrics(model: nn.Module, evals: dict[str, Any]) -> dict[str, dict[str, float]]:
    from basinscope.engine.evaluate import evaluate_model

    if not evals:
        return {}
    flat = evaluate_model(model, evals)
    return {
        split: {k[len(split) + 1 :]: v for k, v in flat.items() if k.startswith(split + "_")}
        for split in evals
    }


def _escape(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(glob.escape(n) for n in names)


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
    source_data: Any = None,
    eval_target: Any = None,
    eval_source: Any = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on ``target_data`` with ``strategy`` (module docstring).

    The strategy sets ``config.trainable`` (any ``frozen``/``trainable`` of ``config`` is
    replaced); ``"lp"`` and ``"dfr"`` also set ``bn_mode="eval"``. Metrics are measured on
    ``eval_source`` (default ``source_data``) and ``eval_target`` (default
    ``target_data``) with :func:`~basinscope.engine.evaluate.evaluate_model`.
    ``target_data`` may be None for ``"dfr"``, which trains on ``dfr_data`` only.
    """
    if strategy not in STRATEGIES:
        raise BasinscopeError(
            f"unknown fine-tuning strategy {strategy!r}; valid strategies are "
            f"{', '.join(repr(s) for s in STRATEGIES)}."
        )
    if strategy == "dfr" and dfr_data is None:
        raise BasinscopeError(
            "strategy='dfr' retrains the head on a small held-out set: pass dfr_data=(x, y)."
        )
    if strategy != "dfr" and target_data is None:
        raise BasinscopeError(f"strategy={strategy!r} needs target_data (only 'dfr' does not).")
    eval_target = target_data if eval_target is None else eval_target
    eval_source = source_data if eval_source is None else eval_source
    evals = {k: v for k, v in (("source", eval_source), ("target", eval_target)) if v is not None}
    before = _metrics(model, evals)

    def cfg(trainable: Sequence[str], **kw: Any) -> TrainConfig:
        return dataclasses.replace(config, frozen=(), trainable=_escape(trainable), **kw)

    all_params = [n for n, _ in model.named_parameters()]
    ranking = signal = None
    runs: list[TrainResult] = []
    if strategy == "ft":
        trainable = all_params
        runs.append(train(model, target_data, cfg(trainable)))
    elif strategy == "lp":
        trainable = head_parameters(model, head)
        runs.append(train(model, target_data, cfg(trainable, bn_mode="eval")))
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
        runs.append(train(model, target_data, lp_cfg))
        trainable = all_params
        runs.append(train(runs[0].model, target_data, cfg(trainable)))
    elif strategy == "surgical":
        trainable = _surgical_params(model, blocks)
        runs.append(train(model, target_data, cfg(trainable)))
    elif strategy == "dfr":
        trainable = head_parameters(model, head)
        start = model
        if dfr_reinit:
            start = copy.deepcopy(model)
            head_name = trainable[0].rpartition(".")[0]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.data_seed)
                dict(start.named_modules())[head_name].reset_parameters()
        runs.append(train(start, dfr_data, cfg(trainable, bn_mode="eval")))
    else:  # guided
        if guided_top_k < 1:
            raise BasinscopeError(f"guided_top_k must be >= 1, got {guided_top_k}.")
        signal = guided_signal
        ranking = tuple(module_ranking(model, target_data, guided_signal))
        owned = _param_modules(model)
        trainable = [n for m, _ in ranking[:guided_top_k] for n in owned[m]]
        trainable = [n for n in all_params if n in trainable]
        runs.append(train(model, target_data, cfg(trainable)))

    history: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "phase": []}
    offset = 0
    for phase, run in enumerate(runs):
        history["step"] += [s + offset for s in run.history["step"]]
        history["loss"] += run.history["loss"]
        history["lr"] += run.history["lr"]
        history["phase"] += [float(phase)] * len(run.history["step"])
        offset += run.config.steps
    tuned = runs[-1].model
    after = _metrics(tuned, evals)

    def delta(split: str, sign: float) -> float | None:
        if split not in before or "accuracy" not in before[split]:
            return None
        return sign * (before[split]["accuracy"] - after[split]["accuracy"])

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
        runs=tuple(runs),
    )


def compare_strategies(
    model: nn.Module,
    target_data: Any,
    strategies: Sequence[str] = ("ft", "lp", "lp-ft", "guided"),
    **kwargs: Any,
) -> list[FinetuneResult]:
    """Run :func:`finetune` once per strategy with the same keyword arguments."""
    return [finetune(model, target_data, strategy=s, **kwargs) for s in strategies]


def table(results: Sequence[FinetuneResult]) -> list[dict[str, Any]]:
    """One row per result: strategy, trained parameter count, accuracies, forgetting, adaptation."""
    rows = []
    for r in results:
        params = dict(r.model.named_parameters())
        row: dict[str, Any] = {
            "strategy": r.strategy,
            "trainable_params": sum(params[n].numel() for n in r.trainable),
            "modules": sorted({n.rpartition(".")[0] for n in r.trainable}),
        }
        for split in ("source", "target"):
            for when, m in (("before", r.before), ("after", r.after)):
                row[f"{split}_accuracy_{when}"] = m.get(split, {}).get("accuracy")
        row["forgetting"] = r.forgetting
        row["adaptation"] = r.adaptation
        rows.append(row)
    return rows
