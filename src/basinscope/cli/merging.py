"""``basinscope merge``: model merging (:func:`basinscope.analyses.merging.merge`) as a
command. Besides the result (the merged parameters are its ``tensors/merged.safetensors``),
the run folder gets ``model.safetensors``: the merged model's state dict, which
``--weights`` of every other command reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope.analyses.merging import (
    MergeDecomposition,
    MergeDecompositionSpec,
    MergeResult,
    MergeSpec,
    merge,
    merge_decomposition,
)
from basinscope.cli.generate import Command, Context
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelsOptions, TaskOptions, fingerprints, load_model
from basinscope.spec import Spec, group, option, with_defaults
from basinscope.store import paths

__all__ = [
    "MERGE",
    "MERGE_DECOMPOSITION",
    "MergeCommand",
    "MergeDecompositionCommand",
    "load_datasets",
]

_FineTuned = with_defaults(
    ModelsOptions,
    weights=((), "Weights of a model fine-tuned from --base, one per task; repeat (K >= 1)."),
)

#: methods whose formula has the base model's weights (task vectors); uniform and fisher
#: only need the architecture, which the first --weights gives when --base is not passed
USES_BASE = ("task_arithmetic", "ties", "dare", "subspace")

BASE_HELP = (
    "Weights of the base (pre-trained) model the fine-tuned ones start from: the task "
    "vectors are measured from it (needed by every method but uniform and fisher)."
)
TASK_DATA_HELP = (
    "A task's data for its Fisher (--method fisher) or curvature (--geometry curvature): "
    "digits, mnist, an .npz file (its x/y or x_train/y_train) or module:attr, read as --data "
    "of the other commands (train split); repeat, once per --weights, in their order."
)
VAL_DATA_HELP = (
    "A task's validation data, for --select and the merge's per-task metrics: read as "
    "--task-data, its test split when it has one (x_test/y_test, the built-in data's), "
    "else all its examples; repeat, once per --weights, in their order."
)


def load_datasets(names: tuple[str, ...], split: str) -> list[Any]:
    """One dataset per name, read as :class:`~basinscope.inputs.DataOptions` reads
    ``--data`` with nothing held out: the ``"train"`` split, or for ``split="val"`` the
    test split when the data has one and else its examples (``x``/``y`` of an ``.npz``)."""
    from basinscope.data import data_splits

    out = []
    for name in names:
        wanted = split
        if split == "val":
            wanted = "test" if "test" in data_splits(name) else "train"
        out.append(DataOptions(data=name, holdout=0.0).load(wanted))
    return out


@dataclass(frozen=True)
class MergeCommand(Spec):
    models: _FineTuned = group(_FineTuned)
    base: Path | None = option(None, BASE_HELP)
    task_data: tuple[str, ...] = option((), TASK_DATA_HELP, metavar="DATA")
    val_data: tuple[str, ...] = option((), VAL_DATA_HELP, metavar="DATA")
    labels: tuple[str, ...] = option(
        (), "A task's name; repeat, once per --weights (default: the weights' file names)."
    )
    task: TaskOptions = group(TaskOptions)
    merge: MergeSpec = group(MergeSpec)

    def check(self) -> None:
        weights, spec = self.models.name_of("weights"), self.merge
        k = len(self.models.weights)
        if k == 0:
            raise BasinscopeError(
                f"merging needs the fine-tuned models: pass {weights} once per task, e.g. "
                f"{weights} task1.safetensors {weights} task2.safetensors"
            )
        if self.base is None and spec.method in USES_BASE:
            flag = self.name_of("base")
            raise BasinscopeError(
                f"{spec.name_of('method')} {spec.method} needs {flag}: the weights the "
                f"fine-tuned models start from (their task vectors are measured from it), "
                f"e.g. {flag} base.safetensors"
            )
        for name in ("task_data", "val_data", "labels"):
            n = len(getattr(self, name))
            if n not in (0, k):
                flag = self.name_of(name)
                raise BasinscopeError(
                    f"{flag} is given {_times(n)} for {k} {weights}: "
                    f"pass it once per {weights}, in the same order (the i-th {flag} belongs "
                    f"to the i-th {weights})"
                )
        if len(set(self.labels)) != len(self.labels):
            flag = self.name_of("labels")
            raise BasinscopeError(
                f"{flag} repeats a name ({', '.join(self.labels)}): give each task its own"
            )
        needs = _needs_task_data(spec)
        if needs and not self.task_data:
            flag = self.name_of("task_data")
            raise BasinscopeError(
                f"{needs} needs each task's data, and there is none: pass {flag} once per "
                f"{weights}, e.g. {flag} task1.npz {flag} task2.npz"
            )
        if spec.select and not self.val_data:
            flag, sel = self.name_of("val_data"), spec.name_of("select")
            raise BasinscopeError(
                f"{sel} {' '.join(spec.select)} chooses on validation data, and there is "
                f"none: pass {flag} once per {weights} (e.g. {flag} task1-val.npz), or drop "
                f"{sel}"
            )

    def task_labels(self) -> tuple[str, ...]:
        """``--labels``, or the weight files' names."""
        return tuple(self.labels) or tuple(self.models.labels())


def _times(n: int) -> str:
    return f"{n} time{'s' if n != 1 else ''}"


def _needs_task_data(spec: MergeSpec) -> str:
    """What of ``spec`` needs each task's data (empty when nothing does)."""
    if spec.method == "fisher":
        return f"{spec.name_of('method')} fisher (each model's diagonal {spec.fisher} Fisher)"
    if spec.method == "subspace" and spec.geometry == "curvature":
        return (
            f"{spec.name_of('method')} subspace with {spec.name_of('geometry')} curvature "
            f"(each task's {spec.curvature} in the subspace)"
        )
    return ""


def _settings(spec: MergeSpec) -> dict[str, Any]:
    """The spec's fields as :func:`merge`'s keyword arguments."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def run_merge(cmd: MergeCommand, ctx: Context) -> MergeResult:
    m, spec, labels = cmd.models, cmd.merge, cmd.task_labels()
    nets = m.load(1, "merging")
    base = load_model(m.model, m.model_kwargs, cmd.base if cmd.base is not None else m.weights[0])
    task_data = load_datasets(cmd.task_data, "train") if cmd.task_data else None
    val_data = load_datasets(cmd.val_data, "val") if cmd.val_data else None
    data = {f"task_data:{t}": d for t, d in zip(labels, task_data or ())}
    data |= {f"val_data:{t}": d for t, d in zip(labels, val_data or ())}
    ctx.open(fingerprints([base, *nets], data))
    chosen = f", {' and '.join(spec.select)} chosen on validation" if spec.select else ""
    ctx.say(f"{spec.method} merge of {len(nets)} models{chosen} ...")
    result = merge(
        base,
        nets,
        task_data=task_data,
        val_data=val_data,
        labels=labels,
        task=cmd.task.build(),
        **_settings(spec),
    )
    from basinscope.models import save_weights

    written = save_weights(result.to_model(base), ctx.out / paths.WEIGHTS)
    ctx.say(f"merged weights (--weights of other commands): {written}")
    return result


EXAMPLES = """
basinscope merge --model mlp --weights t1.safetensors --weights t2.safetensors --method uniform

basinscope merge --base base.safetensors --weights t1.safetensors --weights t2.safetensors \\
    --method task_arithmetic --select lam --lams 0.2,0.5,1 --val-data t1-val.npz \\
    --val-data t2-val.npz --json

basinscope merge --base base.safetensors --weights t1.safetensors --weights t2.safetensors \\
    --method fisher --task-data t1.npz --task-data t2.npz --labels rotated --labels noisy

basinscope merge --base base.safetensors --weights t1.safetensors --weights t2.safetensors \\
    --method subspace --geometry curvature --task-data t1.npz --task-data t2.npz \\
    --val-data t1-val.npz --val-data t2-val.npz --out runs/merged

basinscope surface --weights runs/merged/model.safetensors --xrange -1:1:21 --yrange -1:1:21
"""
MERGE = Command("merge", MergeCommand, run_merge, EXAMPLES, MergeSpec, MergeResult)


DECOMPOSITION_DATA_HELP = (
    "A task's data, for its curvature and its measured loss increase (the train split: "
    "x/y or x_train/y_train of an .npz, digits, mnist or module:attr, read as --data); "
    "repeat, once per --weights, in their order."
)


@dataclass(frozen=True)
class MergeDecompositionCommand(Spec):
    models: _FineTuned = group(_FineTuned)
    base: Path | None = option(None, "Weights of the base model the fine-tuned ones start from.")
    task_data: tuple[str, ...] = option((), DECOMPOSITION_DATA_HELP, metavar="DATA")
    labels: tuple[str, ...] = option(
        (), "A task's name; repeat, once per --weights (default: the weights' file names)."
    )
    task: TaskOptions = group(TaskOptions)
    decomposition: MergeDecompositionSpec = group(MergeDecompositionSpec)

    def check(self) -> None:
        weights, k = self.models.name_of("weights"), len(self.models.weights)
        base, data = self.name_of("base"), self.name_of("task_data")
        if k == 0:
            raise BasinscopeError(
                f"the decomposition needs the fine-tuned models: pass {weights} once per task, "
                f"e.g. {weights} task1.safetensors {weights} task2.safetensors"
            )
        if self.base is None:
            raise BasinscopeError(
                f"{base} is required: the weights the fine-tuned models start from (the task "
                f"vectors span the subspace), e.g. {base} base.safetensors"
            )
        if len(self.task_data) != k:
            raise BasinscopeError(
                f"{data} is given {_times(len(self.task_data))} for {k} {weights}: each task's "
                f"curvature and loss are measured on its data; pass {data} once per {weights}, "
                f"in the same order, e.g. {data} task1.npz"
            )
        if len(self.labels) not in (0, k) or len(set(self.labels)) != len(self.labels):
            flag = self.name_of("labels")
            raise BasinscopeError(
                f"{flag} must name each of the {k} tasks once, got {list(self.labels)}: pass "
                f"{flag} once per {weights}, all different"
            )


def run_merge_decomposition(cmd: MergeDecompositionCommand, ctx: Context) -> MergeDecomposition:
    m, spec = cmd.models, cmd.decomposition
    labels = tuple(cmd.labels) or tuple(m.labels())
    nets = m.load(1, "the decomposition")
    base = load_model(m.model, m.model_kwargs, cmd.base)
    task_data = load_datasets(cmd.task_data, "train")
    ctx.open(fingerprints([base, *nets], {f"task_data:{t}": d for t, d in zip(labels, task_data)}))
    ctx.say(
        f"the {spec.curvature} decomposition of {' and '.join(spec.geometries)} subspace merges "
        f"of {len(nets)} models ..."
    )
    return merge_decomposition(
        base, nets, task_data, labels=labels, task=cmd.task.build(), spec=spec
    )


DECOMPOSITION_EXAMPLES = """
basinscope merge-decomposition --model mlp --base base.safetensors --weights t1.safetensors \\
    --weights t2.safetensors --task-data t1.npz --task-data t2.npz

basinscope merge-decomposition --base base.safetensors --weights t1.safetensors \\
    --weights t2.safetensors --weights t3.safetensors --task-data t1.npz --task-data t2.npz \\
    --task-data t3.npz --ranks 1,2 --curvature hessian --examples 512 --json
"""
MERGE_DECOMPOSITION = Command(
    "merge-decomposition",
    MergeDecompositionCommand,
    run_merge_decomposition,
    DECOMPOSITION_EXAMPLES,
    MergeDecompositionSpec,
    MergeDecomposition,
)
