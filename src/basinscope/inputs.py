"""Inputs given by name: which model(s) and which data, as option groups defined once.

Analyses take ``nn.Module`` objects and datasets; commands, studies and configuration files
name them (a factory and its JSON kwargs, a weights file, a dataset and its shift). These
groups turn names into models and data, and into the fingerprints that identify a run
folder. Each is a :class:`~basinscope.spec.Spec`, so on the command line its fields are
options (``--model``, ``--model-kwargs``, ``--weights``, ``--data``, ``--rotation``, ...).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from basinscope.errors import BasinscopeError
from basinscope.spec import Spec, group, option, with_defaults

__all__ = [
    "DataOptions",
    "ModelOptions",
    "ModelPair",
    "ModelsOptions",
    "TaskOptions",
    "TrainedAndInit",
    "fingerprints",
    "labels_of",
    "load_model",
    "model_spec",
    "parse_json_kwargs",
    "require",
]

MODEL_HELP = (
    "A built-in name (mlp, lenet, resnet, bert) or module:factory. module:factory imports that "
    "Python module, which runs its code: name only code you trust."
)
KWARGS_HELP = "JSON keyword arguments for the factory, e.g. '{\"width\": 2}'."


def _kwargs(text: str) -> str:
    """``--model-kwargs``: checked as a JSON object, kept as its canonical text."""
    return json.dumps(parse_json_kwargs(text), sort_keys=True)


@dataclass(frozen=True)
class ModelOptions(Spec):
    """One model: factory, its keyword arguments and weights."""

    model: str = option("basinscope.models:lenet", MODEL_HELP)
    model_kwargs: str = option("{}", KWARGS_HELP, parse=_kwargs, metavar="JSON")
    weights: Path | None = option(None, "Weights of the model (.safetensors or a .pt state dict).")

    def load(self) -> Any:
        return load_model(self.model, self.model_kwargs, self.weights)


@dataclass(frozen=True)
class ModelsOptions(Spec):
    """Several models of one architecture: ``--weights`` once per model."""

    model: str = option("basinscope.models:lenet", MODEL_HELP)
    model_kwargs: str = option("{}", KWARGS_HELP, parse=_kwargs, metavar="JSON")
    weights: tuple[Path, ...] = option((), "Weights of a model; repeat, once per model.")

    def load(self, at_least: int = 1, what: str = "this analysis") -> list[Any]:
        if len(self.weights) < at_least:
            raise BasinscopeError(
                f"{what} needs at least {at_least} models, got {len(self.weights)}: pass "
                + " ".join(f"--weights {chr(65 + i)}.safetensors" for i in range(at_least))
            )
        return [load_model(self.model, self.model_kwargs, w) for w in self.weights]

    def labels(self) -> list[str]:
        return labels_of(self.weights)


@dataclass(frozen=True)
class ModelPair(ModelsOptions):
    """Two models of one architecture: ``weights`` exactly twice (checked on construction;
    subclasses say what the two are for in the message, :attr:`needs` and :attr:`roles`)."""

    needs: ClassVar[str] = "exactly two models are compared"
    roles: ClassVar[str] = " (model A, then model B)"

    weights: tuple[Path, ...] = option((), "Weights of model A, then of model B (exactly two).")

    def check(self) -> None:
        n, flag = len(self.weights), self.name_of("weights")
        if n != 2:
            raise BasinscopeError(
                f"{self.needs}, got {n} {flag}: pass {flag} A.safetensors {flag} "
                f"B.safetensors{self.roles}"
            )


def require(spec: Spec, name: str, what: str, example: str) -> None:
    """Refuse ``spec`` when its field ``name`` is unset: ``--init is required: the same
    model at initialisation, e.g. --init init.safetensors``."""
    if getattr(spec, name) is None:
        flag = spec.name_of(name)
        raise BasinscopeError(f"{flag} is required: {what}, e.g. {flag} {example}")


@dataclass(frozen=True)
class DataOptions(Spec):
    """The data and its distribution shift."""

    data: str = option(
        "digits",
        "digits, mnist, tokens (token sequences for bert), a .npz file or module:attr (imports that Python module, which runs "
        "its code: name only code you trust).",
    )
    rotation: float = option(0.0, "Rotate the images by this many degrees.")
    block_shuffle: int | None = option(None, "Shuffle k x k blocks of each image.", low=1)
    noise: float = option(0.0, "Std of additive Gaussian input noise.", low=0.0)
    shift_seed: int = option(0, "Seed of the block permutation and the noise.", low=0)
    holdout: float = option(
        0.2,
        "Data without a test split (a plain x/y .npz): the fraction of its examples held out "
        "as the test split, drawn with --holdout-seed (train is the rest); 0 keeps all as train.",
        low=0.0,
        high=0.9,
    )
    holdout_seed: int = option(0, "Seed of the held-out test examples.", low=0)

    def _held_out(self) -> bool:
        """Whether test is carved out of the data (it has no test split of its own)."""
        if self.holdout <= 0:
            return False
        from basinscope.data import data_splits

        return "test" not in data_splits(self.data)

    def splits(self, wanted: Sequence[str] = ()) -> tuple[str, ...]:
        """``wanted``, or by default the splits the data has of train and test
        (:func:`basinscope.data.data_splits`). Data without a test split gets one held out
        (:attr:`holdout`, said in a warning that the run folder keeps); with ``--holdout 0``
        it is evaluated on its one split, with a warning."""
        if wanted:
            return tuple(wanted)
        from basinscope.data import data_splits

        have = data_splits(self.data)
        if "test" not in have and not self._held_out():
            warnings.warn(
                f"{self.data} has no test split: evaluating {', '.join(have)} only (save "
                "x_test/y_test beside x/y, or pass --holdout 0.2, to evaluate a held-out split too)",
                UserWarning,
                stacklevel=2,
            )
        return ("train", "test") if self._held_out() else have

    def load(self, split: str) -> Any:
        from basinscope.data import resolve_data
        from basinscope.store import safe_component

        held = split in ("train", "test") and self._held_out()
        data = resolve_data(
            self.data,
            "train" if held else safe_component(split, "split name"),
            rotation=self.rotation,
            block_shuffle=self.block_shuffle,
            noise=self.noise,
            seed=self.shift_seed,
        )
        return _hold_out(data, split, self.holdout, self.holdout_seed, self.data) if held else data


def _hold_out(data: Any, split: str, fraction: float, seed: int, name: str) -> Any:
    """``split`` ("train" or "test") of ``data`` cut in two by a seeded permutation."""
    import dataclasses as dc

    import torch

    n = _num_examples(data)
    n_test = max(1, round(fraction * n))
    if n - n_test < 1:
        raise BasinscopeError(
            f"{name} has {n} examples: too few to hold out a test split; pass --holdout 0"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    idx = idx.sort().values
    warnings.warn(
        f"{name} has no test split: held out {n_test} of its {n} examples as test (--holdout "
        f"{fraction:g}, --holdout-seed {seed}); train is the other {n - n_test}",
        UserWarning,
        stacklevel=3,
    )
    if hasattr(data, "x") and hasattr(data, "y") and dc.is_dataclass(data):
        tag = f"{getattr(data, 'name', '')}-{split}-holdout{fraction:g}s{seed}"
        changes = {"x": data.x[idx], "y": data.y[idx]}
        if "name" in {f.name for f in dc.fields(data)}:
            changes["name"] = tag
        return dc.replace(data, **changes)
    if hasattr(data, "subset"):
        return data.subset(idx)
    raise BasinscopeError(
        f"{name} ({type(data).__name__}) has no test split and cannot be cut in two here: pass "
        "--holdout 0 and --split train, or give the data a test split"
    )


def _num_examples(data: Any) -> int:
    for attr in ("num_examples", "y"):
        v = getattr(data, attr, None)
        if v is not None:
            return int(v) if isinstance(v, int) else len(v)
    return len(data)


def _key(text: str | None) -> str | None:
    return text or None


@dataclass(frozen=True)
class TaskOptions(Spec):
    """How the model is run on a batch and what its loss is: a
    :class:`~basinscope.engine.task.Task` given on the command line."""

    task: str | None = option(
        None,
        "A basinscope.Task as module:attr (or a function returning one); the options below "
        "change it. Imports that module: name only code you trust.",
        metavar="MODULE:ATTR",
    )
    loss: str = option(
        "cross_entropy",
        "cross_entropy, mse, model (the model's own .loss, given the labels) or module:attr "
        "(a function of (prediction, targets) giving per-example values or their mean).",
    )
    output_key: str | None = option(
        None,
        "Where the prediction is in the model's output: an index, key or attribute (default: "
        "the tensor itself, .logits, ['logits'] or the first item).",
        parse=_key,
    )
    targets_key: str | None = option(
        None, "The targets' key in dict batches (default: y, target(s), label(s)).", parse=_key
    )
    input_keys: tuple[str, ...] = option(
        (), "A key of dict batches given to the model; repeat (default: all but the targets')."
    )
    call: str = option(
        "auto",
        "How the model is called: positional model(x), keywords model(**batch), or auto.",
        choices=("auto", "positional", "keywords"),
    )

    def check(self) -> None:
        if self.loss not in ("cross_entropy", "mse", "model") and ":" not in self.loss:
            flag = self.name_of("loss")
            raise BasinscopeError(
                f"{flag} {self.loss!r} is not a loss: expected cross_entropy, mse, model or "
                f"module:attr (a function of (prediction, targets)), e.g. {flag} mse"
            )

    def build(self) -> Any:
        """The :class:`~basinscope.engine.task.Task` (``--task``'s, changed by the options)."""
        import dataclasses as dc

        from basinscope.engine.task import Task, as_task

        base = as_task(self.task) if self.task else Task()
        changes: dict[str, Any] = {}
        if self.loss != "cross_entropy":
            changes["loss"] = self.loss
        if self.output_key is not None:
            key = self.output_key
            changes["output"] = int(key) if key.lstrip("-").isdigit() else key
        if self.targets_key is not None:
            changes["targets"] = self.targets_key
        if self.input_keys:
            changes["inputs"] = tuple(self.input_keys)
        if self.call != "auto":
            changes["call"] = self.call
        return dc.replace(base, **changes) if changes else base


def labels_of(paths: Sequence[Path]) -> list[str]:
    """Short names of weight files: the stem, or parent/stem, or the path when those repeat."""
    for make in (
        lambda p: p.stem,
        lambda p: f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem,
        str,
    ):
        names = [make(Path(p)) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [f"{i}:{p}" for i, p in enumerate(paths)]


def fingerprints(models: Sequence[Any], datasets: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run's inputs: the weights' and the data's contents."""
    from basinscope.store import fingerprint_tensors

    return {
        "models": [fingerprint_tensors(m.state_dict()) for m in models],
        "data": {name: d.fingerprint() for name, d in datasets.items()},
    }


def parse_json_kwargs(text: str | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BasinscopeError(
            f"{flag} is not valid JSON ({e.msg} at position {e.pos}): {text!r}; e.g. {flag} '{{\"width\": 2}}'"
        ) from None
    if not isinstance(value, dict):
        found = {list: "list (a JSON array)", str: "str (a JSON string)", type(None): "null"}.get(
            type(value), f"{type(value).__name__} (a JSON number or boolean)"
        )
        raise BasinscopeError(
            f"{flag} must be a JSON object, got {found}: e.g. {flag} '{{\"width\": 2}}'"
        )
    return value


def load_model(
    spec: str,
    kwargs_json: str | None,
    weights: Path | None,
    init_seed: int | None = 0,
    kwargs_flag: str = "--model-kwargs",
):
    from basinscope.models import build_model, load_weights

    model = build_model(spec, parse_json_kwargs(kwargs_json, kwargs_flag), init_seed=init_seed)
    if weights is not None:
        load_weights(model, weights)
    return model


def model_spec(spec: str, kwargs_json: str | None, weights: Path | None) -> dict[str, Any]:
    """How a run records a model given by name: factory, kwargs and weights file."""
    return {
        "model": spec,
        "model_kwargs": parse_json_kwargs(kwargs_json),
        "weights": str(weights) if weights is not None else None,
    }


_Trained = with_defaults(ModelOptions, weights=(None, "Weights of the trained model."))


@dataclass(frozen=True)
class TrainedAndInit(Spec):
    """A trained model (``weights``), the same model at initialisation (``init``) and the
    data: what rewinding and module criticality compare."""

    model: _Trained = group(_Trained)
    init: Path | None = option(None, "Weights of the same model at initialisation.")
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)

    def check(self) -> None:
        require(self.model, "weights", "the trained model", "final.safetensors")
        require(self, "init", "the same model at initialisation", "init.safetensors")

    def load(self, split: str) -> tuple[Any, Any, dict[str, Any]]:
        """The final and the initial model and ``{split: data}``."""
        final, start = self.model.load(), self.model.replace(weights=self.init).load()
        return final, start, {split: self.data.load(split)}
