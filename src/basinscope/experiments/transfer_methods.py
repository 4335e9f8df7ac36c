"""The transfer-methods study: the distribution-shift talk's research questions, answered
with experiments on rotated, block-shuffled and noisy digits.

The talk (``../shared/talks/000_*``) ends with four questions (:data:`QUESTIONS`): can
subnetworks chosen from local loss-surface information fine-tune better; can a model adapt
inside a basin with basin information as a regularizer; do pre-trained weights fit the
target distribution; when does "staying in the basin" break. A LeNet is pre-trained once on
the source digits (its checkpoints kept), and each *section* (a module
``transfer_<key>.py``, see :mod:`basinscope.experiments.transfer_common`) runs the
experiments that bear on some of the questions and computes its answers from its numbers.
The report opens with every answer, says plainly where the data do not support a method,
and then shows each section's tables and figures.

Every training and every measurement is a stage stored in a folder named by a hash of its
settings (which include the folders of the stages it depends on), so the study resumes
after an interruption and a changed setting recomputes only what depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from basinscope.experiments import (
    transfer_break,
    transfer_compare,
    transfer_copies,
    transfer_fit,
)
from basinscope.experiments.registry import Study, StudyContext, register
from basinscope.experiments.transfer_common import (
    QUESTIONS,
    TransferBase,
    check_base,
    pretrain,
)

__all__ = ["DEFINITIONS", "SECTIONS", "STUDY", "TransferMethodsConfig", "run"]

NAME = "transfer-methods"

#: The section modules, in the report's order.
SECTIONS: tuple[Any, ...] = (transfer_compare, transfer_fit, transfer_copies, transfer_break)


@dataclass(frozen=True)
class TransferMethodsConfig(*(s.Settings for s in reversed(SECTIONS)), TransferBase):  # type: ignore[misc]
    """Settings of the transfer-methods study: the shared ones
    (:class:`~basinscope.experiments.transfer_common.TransferBase`) and each section's,
    prefixed by the section."""

    def check(self) -> None:
        check_base(self)
        for s in SECTIONS:
            s.check(self)


# The reduced version (--quick): under a minute on 2 cores.
QUICK: dict[str, Any] = dict(pretrain_steps=300, steps=60, seeds=2)
QUICK.update(pretrain_checkpoints=(0, 10, 25, 50, 100, 300))
# The smoke version (tests, pipeline checks): every stage and figure, in seconds.
SMOKE: dict[str, Any] = dict(pretrain_steps=30, steps=8, seeds=2, width=1, source_examples=128)
SMOKE.update(pretrain_checkpoints=(0, 10, 30), figure_formats=("png",))
for _s in SECTIONS:
    QUICK.update(_s.QUICK)
    SMOKE.update(_s.SMOKE)

DEFINITIONS: dict[str, str] = {
    "source_accuracy": "fraction of the 450 test digits (rotated by source_angle) the model "
    "classifies correctly",
    "target_accuracy": "fraction of the 450 test digits under the target shift classified "
    "correctly",
    "ci": "Student-t interval at ci_level of the mean over the seeds (data orders "
    "0..seeds-1), clipped to the quantity's range; None for one seed",
    "supported": "True: the section's numbers support the answer's claim at the stated "
    "criterion; False: they contradict it; None: they cannot tell (intervals overlap)",
}
for _s in SECTIONS:
    DEFINITIONS |= {f"{_s.KEY}.{k}": v for k, v in _s.DEFINITIONS.items()}


def run(cfg: TransferMethodsConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.engine import evaluate_model
    from basinscope.experiments.stages import placement

    n = len(SECTIONS) + 1
    pre = pretrain(
        cfg,
        ctx,
        what=f"[1/{n}] pre-training a LeNet on the digits rotated by {cfg.source_angle:g} "
        f"({cfg.pretrain_steps} steps)",
    )
    where = placement(cfg)
    ev = evaluate_model(
        pre.model, {"source": pre.source["test"], "target": pre.target["test"]}, **where
    )
    total = sum(p.numel() for p in pre.model.parameters())
    sections: dict[str, Any] = {}
    answers: list[dict[str, Any]] = []
    for i, s in enumerate(SECTIONS, start=2):
        ctx.say(f"[{i}/{n}] {s.TITLE}")
        sections[s.KEY] = out = s.run(cfg, ctx, pre)
        for a in s.answers(out):
            answers.append({**a, "section": s.KEY, "section_title": s.TITLE})
    return {
        "setup": {
            "model": f"LeNet (width {cfg.width})",
            "parameters": total,
            "source_angle": cfg.source_angle,
            "target_angle": cfg.target_angle,
            "sections": [s.KEY for s in SECTIONS],
            "examples": {"train": len(pre.source["train"]), "test": len(pre.source["test"])},
        },
        "questions": QUESTIONS,
        "definitions": DEFINITIONS,
        "pretrained": {
            "source_accuracy": float(ev["source_accuracy"]),
            "target_accuracy": float(ev["target_accuracy"]),
            "source_loss": float(ev["source_loss"]),
            "target_loss": float(ev["target_loss"]),
            "checkpoints": sorted(pre.stage.checkpoints),
            "folder": pre.name,
        },
        "policies": {
            "data": "scikit-learn's 8x8 digits (1,347 training, 450 test); the source is the "
            f"digits rotated by {cfg.source_angle:g}°, the main target by "
            f"{cfg.target_angle:g}°",
            "model": f"LeNet width {cfg.width} ({total} parameters, no BatchNorm), PyTorch's "
            f"default initialization (seed {cfg.init_seed})",
            "pretrain": f"{cfg.pretrain_steps} steps of SGD (momentum {cfg.momentum:g}, lr "
            f"{cfg.pretrain_lr:g}, batch {cfg.batch_size}) on the source training digits, "
            f"checkpoints at steps {sorted(pre.stage.checkpoints)}",
            "finetune": f"every fine-tuning: {cfg.steps} steps (lr {cfg.lr:g}, constant, "
            f"momentum {cfg.momentum:g}, batch {cfg.batch_size}), data order = the seed "
            f"(0..{cfg.seeds - 1})",
            "batchnorm": "no BatchNorm: the LeNet's loss is a function of its weights alone, "
            "so no statistics policy applies (to interpolations and barriers either)",
            "precision": f"evaluations in {cfg.dtype} on {cfg.device}; training in float32 on "
            f"{cfg.device}",
        },
        "sections": sections,
        "answers": answers,
    }


def _report(run_dir, results: dict[str, Any]):
    from basinscope.experiments.transfer_methods_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="The transfer talk's research questions answered: which pre-trained "
        "checkpoint, feature reuse under block shuffling, copies from one init, mistakes, "
        "cross-domain interpolation, where the basin breaks (Definition 3.1), and new "
        "fine-tuning methods vs FT/LP/LP-FT/surgical/DFR relative to the basin",
        config=TransferMethodsConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
