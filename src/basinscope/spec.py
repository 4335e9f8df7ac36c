"""Specs: frozen dataclasses that say what an analysis computes, with every setting's type,
default and help text in one place (open_lth's hparams are the model).

A spec is written once and serves three readers:

* the library: ``BarrierSpec(definition="mean")`` validates itself on construction, with
  messages that say what was expected, what was found and how to fix it;
* the run folder: :meth:`Spec.to_dict` is stored in the manifest and names the run
  (:func:`spec_hash`), :meth:`Spec.from_dict` reads it back;
* the command line: :mod:`basinscope.cli.generate` turns each field into an option whose
  flag, help text and default come from the field (``--num-points``).

Fields are declared with :func:`option`::

    @dataclass(frozen=True)
    class BarrierSpec(Spec):
        num_points: int = option(25, "Even grid of alpha in [0, 1].", low=3)
        definition: str = option("linear", "Barrier definition.", choices=DEFINITIONS)

A field whose type is another spec (an option group such as :class:`EvalOptions`) is
flattened on the command line: its options appear without a prefix.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from basinscope import _checks
from basinscope.errors import BasinscopeError

__all__ = [
    "DTYPES",
    "EVAL_DTYPES",
    "EvalOptions",
    "Spec",
    "group",
    "option",
    "spec_hash",
    "takes_spec",
    "with_defaults",
]

DTYPES = ("float32", "float64")
#: Evaluation precisions: bfloat16 and float16 are autocast over float32 parameters
#: (:mod:`basinscope.engine.precision`).
EVAL_DTYPES = ("float32", "float64", "bfloat16", "float16")
STRATEGIES = ("auto", "vmap", "loop", "compiled")
#: The help of every ``batch_size`` option of an evaluation through the engine.
BATCH_SIZE_HELP = (
    "Examples per forward pass, a bound on memory (the loop and compiled strategies join "
    "the batches of data in memory while the widest activation holds at most 2^22 values, "
    "16 MiB in float32)."
)
#: What each engine strategy does, for the options' help (basinscope.engine.evaluate).
STRATEGY_HELP = (
    "auto (time vmap and loop on a small trial, keep the faster), vmap, loop, or compiled "
    "(the loop through torch.compile: seconds of compilation first, then about 2-3x faster "
    "per point for CNNs; worth it for many points)."
)
BN_POLICIES = ("stored", "recompute")


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A spec field: its default, its help text, and how it is checked and typed in.

    Args:
        default: The default value (tuples for sequences: specs are frozen).
        help: One sentence for ``--help`` and the docs.
        flag: The command-line flag (default ``--field-name``); ``--x/--no-x`` for booleans.
        choices: The allowed values (checked on construction, listed in the help).
        low, high: Bounds of a number (inclusive; integers also must be integers).
        parse: Turns the command-line text into the field's value (e.g. ``"-1:1:21"``).
        metavar: The placeholder shown in ``--help``.
        cli: ``False`` keeps the field out of the command line (library-only settings).
    """
    meta = {
        "help": help,
        "flag": flag,
        "choices": tuple(choices) if choices is not None else None,
        "low": low,
        "high": high,
        "parse": parse,
        "metavar": metavar,
        "cli": cli,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("spec defaults must be immutable: use a tuple (or a frozen mapping)")
    return dataclasses.field(default=default, metadata=meta)


# while the command line builds a spec, messages name fields by their flags (--num-points)
_AS_FLAGS = contextvars.ContextVar("basinscope_spec_as_flags", default=False)


@contextlib.contextmanager
def named_by_flags() -> Any:
    """Within the block, spec checks name each field by its command-line flag."""
    token = _AS_FLAGS.set(True)
    try:
        yield
    finally:
        _AS_FLAGS.reset(token)


def field_name(f: dataclasses.Field) -> str:
    """How messages name the field: its flag on the command line, else its name."""
    if not _AS_FLAGS.get():
        return f.name
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    return flag.split("/")[0]


def group(cls: type[Spec]) -> Any:
    """A field holding an option group (defaults to ``cls()``), flattened on the command line."""
    return dataclasses.field(default_factory=cls)


def with_defaults(cls: type[Spec], **changes: Any) -> type[Spec]:
    """``cls`` with other defaults, e.g. a command that reads the test split where the
    library's default is the training split. Each change is the new default, or
    ``(default, help)`` to reword the option's help text too (for a tuple field, a pair
    whose first item is a tuple: ``metrics=(("loss",), "...")``); a field's flag, checks and
    type stay. ``with_defaults(CKASpec, split=("test", "Split whose activations ..."))``."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - set(by_name))
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    ns: dict[str, Any] = {"__module__": cls.__module__, "__doc__": cls.__doc__}
    ns["__annotations__"] = {name: hints[name] for name in changes}
    for name, change in changes.items():
        default, help_ = change, by_name[name].metadata["help"]
        sequence = typing.get_origin(_optional(hints[name])[0]) is tuple
        if (
            isinstance(change, tuple)
            and len(change) == 2
            and isinstance(change[1], str)
            and (not sequence or isinstance(change[0], tuple))  # ("loss", "error") is a default
        ):
            default, help_ = change
        ns[name] = dataclasses.field(
            default=default, metadata={**by_name[name].metadata, "help": help_}
        )
    return dataclass(frozen=True)(type(cls.__name__, (cls,), ns))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(inner type, allows None)`` of ``X | None``; ``(tp, False)`` otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(typing.get_args(tp)) == 2
    return tp, False


@dataclass(frozen=True)
class Spec:
    """Base of every spec and option group (see the module docstring)."""

    #: The name under which results of this spec are filed (``"barrier"``); option groups
    #: have none.
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            self._check_field(f, hints[f.name])
        self.check()

    # -- checks -------------------------------------------------------------------------
    def _check_field(self, f: dataclasses.Field, tp: Any) -> None:
        value = getattr(self, f.name)
        inner, nullable = _optional(tp)
        name = field_name(f)
        if value is None:
            if not nullable and f.default is not None:
                raise BasinscopeError(f"{name} needs a value, got None")
            return
        meta = f.metadata
        items = value if typing.get_origin(inner) is tuple else (value,)
        choices = meta.get("choices")
        if choices is not None:
            bad = [v for v in items if v not in choices]
            if bad:
                raise BasinscopeError(
                    f"unknown {name} {bad[0]!r}: expected one of {', '.join(map(str, choices))}"
                )
        low, high = meta.get("low"), meta.get("high")
        elem = typing.get_args(inner)[0] if typing.get_origin(inner) is tuple else inner
        for v in items:
            if elem is int and not isinstance(v, bool):
                _checks.at_least(
                    name, v, int(low) if low is not None else -_checks.MAX_COUNT, high=high
                )
            elif elem is float and not isinstance(v, bool):
                v = _checks.finite_float(name, v)
                if (low is not None and v < low) or (high is not None and v > high):
                    rng = f"in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                    raise BasinscopeError(f"{name} must be a number {rng}, got {v:g}")

    def check(self) -> None:
        """Cross-field checks of a spec (override; raise :class:`BasinscopeError`, naming
        fields with :meth:`name_of`)."""

    def name_of(self, name: str) -> str:
        """How messages name the field ``name`` (its flag on the command line)."""
        return field_name(next(f for f in dataclasses.fields(self) if f.name == name))

    # -- conversion ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields (nested specs as dicts, tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """The spec of :meth:`to_dict`'s dict (unknown keys are refused with the valid ones)."""
        if not isinstance(data, Mapping):
            raise BasinscopeError(f"a {cls.__name__} is stored as a JSON object, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise BasinscopeError(
                f"{cls.__name__} has no setting {unknown[0]!r}; its settings: {', '.join(sorted(names))}"
            )
        hints = _hints(cls)
        return cls(**{k: _from_plain(v, hints[k]) for k, v in data.items()})

    def replace(self, **changes: Any) -> Spec:
        """A copy with ``changes`` (also of nested option groups' fields, by their names)."""
        own = {f.name for f in dataclasses.fields(self)}
        direct = {k: v for k, v in changes.items() if k in own}
        rest = {k: v for k, v in changes.items() if k not in own}
        for f in dataclasses.fields(self):
            group = getattr(self, f.name)
            if isinstance(group, Spec) and f.name not in direct:
                mine = {k: rest.pop(k) for k in list(rest) if k in group.flat_names()}
                if mine:
                    direct[f.name] = group.replace(**mine)
        if rest:
            raise BasinscopeError(
                f"{type(self).__name__} has no setting {sorted(rest)[0]!r}; its settings: "
                f"{', '.join(sorted(self.flat_names()))}"
            )
        return dataclasses.replace(self, **direct)

    def flat_names(self) -> set[str]:
        """The names of every field, those of nested option groups included."""
        out: set[str] = set()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out |= value.flat_names() if isinstance(value, Spec) else {f.name}
        return out

    def kwargs(self) -> dict[str, Any]:
        """Every field as a keyword argument, nested option groups flattened: what the
        analysis functions take (``barrier(a, b, data, **spec.kwargs())``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out.update(value.kwargs() if isinstance(value, Spec) else {f.name: value})
        return out

    @classmethod
    def from_kwargs(cls, values: Mapping[str, Any]) -> Spec:
        """The spec whose :meth:`kwargs` are ``values`` (nested option groups filled from
        the same flat mapping; other keys ignored, missing ones at their defaults): how an
        analysis records the settings it ran with, ``Spec.from_kwargs(locals())``."""
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if isinstance(tp, type) and issubclass(tp, Spec):
                kwargs[f.name] = tp.from_kwargs(values)
            elif f.name in values:
                v = values[f.name]
                if typing.get_origin(_optional(tp)[0]) is tuple and isinstance(v, list):
                    v = tuple(v)
                kwargs[f.name] = v
        return cls(**kwargs)

    @classmethod
    def build(cls, spec: Spec | None = None, **changes: Any) -> Spec:
        """``spec`` (or the defaults) with ``changes``: how analyses accept both a spec and
        keyword arguments (``barrier(a, b, data, definition="mean")``)."""
        base = spec if spec is not None else cls()
        if not isinstance(base, cls):
            raise BasinscopeError(f"expected a {cls.__name__}, got a {type(base).__name__}")
        return base.replace(**changes) if changes else base


def spec_hash(kind: str, spec: Spec | Mapping[str, Any], n: int = 10) -> str:
    """The first ``n`` hex digits of the sha256 of ``kind`` and the spec's dict."""
    d = spec.to_dict() if isinstance(spec, Spec) else dict(spec)
    text = json.dumps({"kind": kind, "spec": d}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _plain(v: Any) -> Any:
    if isinstance(v, Spec):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _from_plain(v: Any, tp: Any) -> Any:
    inner, _ = _optional(tp)
    if v is None:
        return None
    if isinstance(inner, type) and issubclass(inner, Spec):
        return inner.from_dict(v)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        elem = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_from_plain(x, elem) for x in v)
    if inner is Path:
        return Path(v)
    if inner is float and isinstance(v, str):
        return float(v)
    return v


# -- option groups shared by many commands --------------------------------------------------
@dataclass(frozen=True)
class EvalOptions(Spec):
    """How models are evaluated: precision, device, batches, BatchNorm, engine strategy."""

    dtype: str = option(
        "float32",
        "float32, float64, or mixed precision bfloat16/float16 (autocast over float32 weights).",
        choices=EVAL_DTYPES,
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:N or mps.")
    batch_size: int = option(1024, BATCH_SIZE_HELP, low=1)
    bn_policy: str = option(
        "stored",
        "BatchNorm statistics: stored (the model's) or recompute (re-estimated at every point).",
        flag="--bn",
        choices=BN_POLICIES,
    )
    bn_batches: int = option(
        10, "Training batches (of 128) used to re-estimate BatchNorm statistics.", low=1
    )
    strategy: str = option("auto", STRATEGY_HELP, choices=STRATEGIES)
    chunk_size: int = option(64, "Points per chunk (the unit of work and of resume).", low=1)

    def check(self) -> None:
        if self.device == "cpu":
            return
        import torch

        try:
            torch.empty(0, device=self.device)
        except Exception as e:
            text = " ".join(str(e).split())[:160]
            raise BasinscopeError(
                f"{self.name_of('device')} {self.device!r} is not available here "
                f"({type(e).__name__}: {text}); use {self.name_of('device')} cpu"
            ) from None


def takes_spec(
    spec_cls: type[Spec], *, forward: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Let an analysis function take ``spec=`` as well as its keyword arguments.

    ``fn(model, data, spec=BarrierSpec(...), labels=...)`` passes the spec's fields (those
    ``fn`` has parameters for) as keyword arguments; keywords given explicitly win. The
    function's own signature, defaults and docstring stay what the user sees.

    ``forward=True`` is for a function that forwards its ``**kwargs`` to another (the
    landscapes to :func:`~basinscope.analyses.compute_landscape`): every field is passed.
    """
    import functools
    import inspect

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = set(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def wrapper(*args: Any, spec: Spec | None = None, **kwargs: Any) -> Any:
            if spec is not None:
                if not isinstance(spec, spec_cls):
                    raise BasinscopeError(
                        f"{fn.__name__}() takes a {spec_cls.__name__} as spec, got a "
                        f"{type(spec).__name__}"
                    )
                for k, v in spec.kwargs().items():
                    if forward or k in params:
                        kwargs.setdefault(k, v)
            return fn(*args, **kwargs)

        wrapper.spec_class = spec_cls  # type: ignore[attr-defined]
        return wrapper

    return decorate
