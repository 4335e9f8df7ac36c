"""Results: every analysis returns a frozen :class:`Result` that knows its kind, its schema
version, the spec and the named definition that produced it, and converts to and from a
JSON-ready dict.

Subclasses are frozen dataclasses that name their kind once::

    @dataclass(frozen=True)
    class BarrierResult(Result, kind="barrier"):
        value: float
        alphas: np.ndarray
        ...

and are then found by kind (:func:`result_class`), saved and loaded by the store
(:func:`basinscope.save` / :func:`basinscope.load`), and drawn by
:func:`basinscope.plotting.plot`. :meth:`Result.to_dict` is exactly what a command prints
with ``--json``.

Conversion follows the fields' type hints, so :meth:`Result.from_dict` rebuilds NumPy
arrays, xarray objects, tuples, specs and nested results bit for bit (floats as JSON
numbers, non-finite ones as the strings ``"nan"``, ``"inf"``, ``"-inf"``). Fields marked
:func:`tensors` (parameter dicts: directions, centers) are not part of the dict; the store
keeps them as safetensors beside it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from basinscope.errors import BasinscopeError

__all__ = ["RESULTS", "Result", "fmt", "result_class", "tensors", "transient"]

#: kind -> Result subclass, filled as the analyses are imported.
RESULTS: dict[str, type[Result]] = {}

# the modules whose import registers the built-in result kinds (see result_class)
_BUILTIN = (
    "basinscope.analyses",
    "basinscope.curvature",
    "basinscope.training",
    "basinscope.experiments.results",
)


def tensors(**kwargs: Any) -> Any:
    """A field holding parameter dicts (``dict[str, Tensor]`` or a list of them): kept out
    of :meth:`Result.to_dict`, stored as safetensors by the store."""
    return dataclasses.field(metadata={"tensors": True}, **kwargs)


def transient(**kwargs: Any) -> Any:
    """A field held in memory only (trained models, modules, optimizer states): neither in
    :meth:`Result.to_dict` nor in the run folder; a loaded result has the field's default."""
    kwargs.setdefault("repr", False)
    kwargs.setdefault("compare", False)
    return dataclasses.field(metadata={"transient": True}, **kwargs)


def _stored(f: dataclasses.Field) -> bool:
    return not (f.metadata.get("tensors") or f.metadata.get("transient"))


class Result:
    """Base of every result (see the module docstring). Subclasses are frozen dataclasses."""

    kind: ClassVar[str] = ""
    #: Version of the result's dict layout; raised when a field changes meaning or name.
    schema: ClassVar[int] = 1

    def __init_subclass__(cls, kind: str | None = None, schema: int | None = None, **kw: Any):
        super().__init_subclass__(**kw)
        if schema is not None:
            cls.schema = schema
        if kind is not None:
            if kind in RESULTS and RESULTS[kind].__qualname__ != cls.__qualname__:
                raise TypeError(f"result kind {kind!r} is taken by {RESULTS[kind].__qualname__}")
            cls.kind = kind
            RESULTS[kind] = cls

    # -- conversion ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field but the tensors, JSON-ready, with ``kind`` and ``schema`` first."""
        out: dict[str, Any] = {"kind": self.kind, "schema": self.schema}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if _stored(f):
                out[f.name] = encode(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **tensor_fields: Any) -> Result:
        """The result of :meth:`to_dict`'s dict; ``tensor_fields`` fill the tensor fields.

        A dict of another kind, or of a schema this version does not read, is refused with
        a message that names both and the fix.
        """
        if not isinstance(data, Mapping):
            raise BasinscopeError(f"a stored result is a JSON object, got {type(data).__name__}")
        kind, schema = data.get("kind"), data.get("schema")
        target = cls if cls.kind else result_class(str(kind))
        if cls.kind and kind != cls.kind:
            raise BasinscopeError(
                f"expected a {cls.kind!r} result, found kind {kind!r}: load it with "
                "basinscope.load(run_dir), which reads any kind"
            )
        if schema != target.schema:
            raise BasinscopeError(
                f"this {target.kind!r} result has schema version {schema}, and this basinscope "
                f"reads version {target.schema}: run the command again with this version, or "
                "read the folder with the basinscope that wrote it (manifest.json 'versions')"
            )
        hints = typing.get_type_hints(target)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(target):  # type: ignore[arg-type]
            if f.metadata.get("tensors"):
                if f.name in tensor_fields:
                    kwargs[f.name] = tensor_fields[f.name]
                continue
            if f.metadata.get("transient"):
                continue
            if f.name in data:
                kwargs[f.name] = decode(data[f.name], hints[f.name])
        try:
            return target(**kwargs)
        except TypeError as e:
            raise BasinscopeError(
                f"the stored {target.kind!r} result does not fit this version's fields ({e}): "
                "was it written by another version of basinscope?"
            ) from None

    # -- text ---------------------------------------------------------------------------
    def summary(self) -> list[str]:
        """A few lines for a terminal: what the command line prints after a run (without
        ``--json``). The default lists the result's scalar fields; results override it with
        their table."""
        d = self.to_dict()
        return [
            f"{k}: {fmt(v) if isinstance(v, float) else v}"
            for k, v in d.items()
            if isinstance(v, (int, float, str)) and k != "schema"
        ]

    def tensor_fields(self) -> dict[str, Any]:
        """The fields holding parameter dicts (see :func:`tensors`)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.metadata.get("tensors")
        }


def fmt(x: Any) -> str:
    """A number with four significant digits and no signed zero ("-0"); text as it is."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{v + 0.0:.4g}"


def result_class(kind: str) -> type[Result]:
    """The :class:`Result` subclass of ``kind`` (built-in kinds are imported on demand)."""
    if kind not in RESULTS:
        import importlib

        for module in _BUILTIN:
            imported = importlib.import_module(module)
            if hasattr(imported, "import_all"):  # a package whose modules load lazily
                imported.import_all()
    if kind not in RESULTS:
        raise BasinscopeError(
            f"unknown result kind {kind!r}: expected one of {', '.join(sorted(RESULTS))}"
        )
    return RESULTS[kind]


# -- encoding --------------------------------------------------------------------------------
def encode(v: Any) -> Any:
    """A JSON-ready copy of a field value (non-finite floats as strings)."""
    import xarray as xr

    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Result):
        return v.to_dict()
    if hasattr(v, "to_dict") and not isinstance(v, (xr.Dataset, xr.DataArray)):
        return encode(v.to_dict())  # specs and other small records
    if isinstance(v, (np.generic, np.ndarray)):
        return encode(v.tolist())
    if isinstance(v, xr.Dataset | xr.DataArray):
        return encode(v.to_dict(data="list"))
    if isinstance(v, Mapping):
        return {str(k): encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot store a {type(v).__name__} in a result: {v!r:.80}")


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _number(v: Any) -> Any:
    return _NONFINITE.get(v, v) if isinstance(v, str) else v


def _numbers(v: Any) -> Any:
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    return _number(v)


def decode(v: Any, tp: Any) -> Any:
    """The field value of type ``tp`` from its JSON-ready form (see :func:`encode`)."""
    import xarray as xr

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return decode(v, args[0]) if len(args) == 1 else _numbers(v)
    if v is None:
        return None
    if tp is Any or tp is object:
        return v
    if tp is float:
        return float(_number(v))
    if tp in (int, str, bool):
        return v
    if tp is np.ndarray:
        return np.asarray(_numbers(v))
    if tp is xr.Dataset:
        return xr.Dataset.from_dict(_xr_numbers(v))
    if tp is xr.DataArray:
        return xr.DataArray.from_dict(_xr_numbers(v))
    if tp is Path:
        return Path(v)
    if isinstance(tp, type) and issubclass(tp, Result):
        return tp.from_dict(v)
    if isinstance(tp, type) and hasattr(tp, "from_dict"):
        return tp.from_dict(v)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(x, args[0]) for x in v)
        return tuple(decode(x, a) for x, a in zip(v, args))
    if origin is list:
        (elem,) = typing.get_args(tp) or (Any,)
        return [decode(x, elem) for x in v]
    if origin in (dict, Mapping) or tp is dict:
        args = typing.get_args(tp)
        elem = args[1] if len(args) == 2 else Any
        return {k: decode(x, elem) for k, x in v.items()}
    return v


def _xr_numbers(d: Any) -> Any:
    """xarray's ``to_dict`` layout with the non-finite strings of ``data`` turned back."""
    if isinstance(d, dict):
        return {k: (_numbers(x) if k == "data" else _xr_numbers(x)) for k, x in d.items()}
    return d
