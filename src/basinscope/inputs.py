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
    "TrainedAndInit",
    "fingerprints",
    "labels_of",
    "load_model",
    "model_spec",
    "parse_json_kwargs",
    "require",
]

MODEL_HELP = (
    "A built-in name (mlp, lenet, resnet) or module:factory. module:factory imports that "
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
        "digits, mnist, a .npz file or module:attr (imports that Python module, which runs "
        "its code: name only code you trust).",
    )
    rotation: float = option(0.0, "Rotate the images by this many degrees.")
    block_shuffle: int | None = option(None, "Shuffle k x k blocks of each image.", low=1)
    noise: float = option(0.0, "Std of additive Gaussian input noise.", low=0.0)
    shift_seed: int = option(0, "Seed of the block permutation and the noise.", low=0)

    def splits(self, wanted: Sequence[str] = ()) -> tuple[str, ...]:
        """``wanted``, or by default the splits the data has of train and test
        (:func:`basinscope.data.data_splits`), with a warning when test is missing: a plain
        ``x``/``y`` file is evaluated on its one split instead of failing."""
        if wanted:
            return tuple(wanted)
        from basinscope.data import data_splits

        have = data_splits(self.data)
        if "test" not in have:
            warnings.warn(
                f"{self.data} has no test split: evaluating {', '.join(have)} only (save "
                "x_test/y_test beside x/y to evaluate a held-out split too)",
                UserWarning,
                stacklevel=2,
            )
        return have

    def load(self, split: str) -> Any:
        from basinscope.data import resolve_data
        from basinscope.store import safe_component

        return resolve_data(
            self.data,
            safe_component(split, "split name"),
            rotation=self.rotation,
            block_shuffle=self.block_shuffle,
            noise=self.noise,
            seed=self.shift_seed,
        )


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

    def check(self) -> None:
        require(self.model, "weights", "the trained model", "final.safetensors")
        require(self, "init", "the same model at initialisation", "init.safetensors")

    def load(self, split: str) -> tuple[Any, Any, dict[str, Any]]:
        """The final and the initial model and ``{split: data}``."""
        final, start = self.model.load(), self.model.replace(weights=self.init).load()
        return final, start, {split: self.data.load(split)}
