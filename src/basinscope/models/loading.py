"""Building models from specs and moving weights in and out of files.

A model spec is either a built-in name (``"lenet"``, see :data:`~basinscope.models.MODELS`)
or ``"module:factory"`` naming any callable that returns an ``nn.Module``. Weights are
state dicts stored as ``.safetensors`` (preferred: no pickle) or ``.pt``/``.pth``.
"""

from __future__ import annotations

import inspect
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from basinscope._checks import check_seed
from basinscope._imports import import_user_module, split_spec
from basinscope.errors import BasinscopeError
from basinscope.models.zoo import MODELS

__all__ = ["WEIGHT_SUFFIXES", "build_model", "load_state_dict_file", "load_weights", "save_weights"]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
_MISMATCH_HINT = (
    "was this checkpoint saved from a different model? check --model and --model-kwargs"
)


def _resolve_factory(spec: str) -> Any:
    if spec in MODELS:
        return MODELS[spec]
    if ":" not in spec:
        raise BasinscopeError(
            f"unknown model {spec!r}: expected a built-in name ({', '.join(sorted(MODELS))}) "
            "or module:factory, e.g. 'mypkg.nets:make_model'."
        )
    module_name, attr = split_spec(spec, "basinscope.models:lenet", "factory")
    module = import_user_module(module_name, spec, "model module")
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v))
        shown = ", ".join(names[:15]) + (", ..." if len(names) > 15 else "")
        what = "has no attribute" if factory is None else "has a non-callable"
        raise BasinscopeError(
            f"module {module_name!r} {what} {attr!r}; a model factory must be a callable "
            f"returning an nn.Module. Callables in the module: {shown or '(none)'}."
        )
    return factory


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(signature unavailable)"


def build_model(
    spec: str, kwargs: dict[str, Any] | None = None, *, init_seed: int | None = None
) -> nn.Module:
    """Build a model from ``spec`` called with ``kwargs``.

    Args:
        spec: A built-in name (``"mlp"``, ``"lenet"``, ``"resnet"``) or
            ``"module:factory"``.
        kwargs: Keyword arguments for the factory.
        init_seed: If given, the model is built right after ``torch.manual_seed(init_seed)``
            inside ``torch.random.fork_rng``, so the same seed gives the same initial
            weights and the global RNG state is left as it was.
    """
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise BasinscopeError(
            f"model kwargs must be a dict of keyword arguments, found {type(kwargs).__name__}."
            " On the command line pass JSON, e.g. --model-kwargs '{\"width\": 2}'."
        )
    factory = _resolve_factory(spec)

    def factory_error(e: Exception) -> BasinscopeError:
        text = " ".join(str(e).split())[:300]
        return BasinscopeError(
            f"model factory {spec!r} called with kwargs {dict(kwargs)!r} raised "
            f"{type(e).__name__}: {text}. Fix the factory or its --model-kwargs; calling it in "
            f"Python, {spec.rpartition(':')[2] or spec}(**kwargs), shows the full traceback."
        )

    def kwargs_error(e: Exception) -> BasinscopeError:
        return BasinscopeError(
            f"model factory {spec!r} does not accept the kwargs {dict(kwargs)!r} ({e}). "
            f"Its signature is {_signature(factory)}; fix --model-kwargs to match."
        )

    if init_seed is not None:
        check_seed("init_seed", init_seed)
    try:
        inspect.signature(factory).bind(**kwargs)
        bound = True
    except TypeError as e:
        raise kwargs_error(e) from e
    except ValueError:
        bound = False  # no signature to check against (a builtin); the call below decides
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices, enabled=init_seed is not None):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        try:
            model = factory(**kwargs)
        except BasinscopeError:
            raise
        except TypeError as e:
            raise (factory_error(e) if bound else kwargs_error(e)) from e
        except Exception as e:  # the factory is the user's code: anything can go wrong
            raise factory_error(e) from e
    if not isinstance(model, nn.Module):
        raise BasinscopeError(
            f"model factory {spec!r} returned a {type(model).__name__}, not an nn.Module. "
            "Point the spec at a function or class that builds the model."
        )
    return model


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth``.

    ``.pt`` files are read with ``torch.load(weights_only=True)`` onto the CPU and may hold
    the state dict itself or a dict with a ``'state_dict'`` or ``'model'`` entry holding it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise BasinscopeError(
            f"cannot tell the format of weights file {str(path)!r} from its extension "
            f"{suffix or '(none)'!r}; use one of {', '.join(WEIGHT_SUFFIXES)}."
        )
    if not path.is_file():
        raise BasinscopeError(
            f"weights file {str(path)!r} does not exist. Check the path (checkpoints are "
            "written with save_weights(model, path))."
        )
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own, untyped errors
            raise BasinscopeError(
                f"could not read {str(path)!r} as safetensors ({type(e).__name__}: {e}). "
                "The file should be written by safetensors.torch.save_file or "
                "basinscope's save_weights; it may be truncated or in another format."
            ) from e
        return dict(state)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many error types
        raise BasinscopeError(
            f"could not read {str(path)!r} as a PyTorch checkpoint ({type(e).__name__}: "
            f"{_torch_load_reason(e)}). The file should be written by "
            "torch.save(model.state_dict(), path); it may be truncated, or hold pickled objects "
            "other than tensors (only weights are loaded, with weights_only=True, so no code in "
            "the file runs)."
        ) from e
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise BasinscopeError(
            f"{str(path)!r} holds a {type(state).__name__}, not a state dict. Save "
            "model.state_dict() (not the model) or a dict with a 'state_dict' entry."
        )
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise BasinscopeError(
            f"{str(path)!r} is not a state dict: {len(bad)} entries are not tensors "
            f"({_short(bad)}). Save model.state_dict(), or a dict with the state dict under "
            "'state_dict' or 'model'."
        )
    return {str(k): v for k, v in state.items()}


def _torch_load_reason(e: Exception) -> str:
    """The gist of a ``torch.load`` error on one line: for a refused pickle the offending
    global, without torch's advice to load untrusted files with ``weights_only=False``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". Please use")[0].strip()
    return " ".join(text.split())[:300]


def _short(items: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]"


def load_weights(model: nn.Module, state: Mapping[str, Tensor] | str | Path) -> nn.Module:
    """Load a state dict (or a weights file) into ``model`` in place, strictly.

    On any mismatch nothing is loaded and a :class:`BasinscopeError` lists the missing
    keys, unexpected keys and shape mismatches (up to 5 of each, with counts).
    """
    if isinstance(state, (str, Path)):
        source = str(state)
        state = load_state_dict_file(state)
    else:
        source = "the state dict"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches {_short(shapes)}")
        raise BasinscopeError(
            f"the weights in {source} do not fit the {type(model).__name__} model: "
            + "; ".join(parts)
            + f". {_MISMATCH_HINT}"
        )
    model.load_state_dict(state, strict=True)
    return model


def save_weights(model_or_state: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write a model's state dict (or a state dict) to ``.safetensors`` or ``.pt``/``.pth``.

    Tensors are detached, moved to the CPU and cloned contiguous, so shared or
    non-contiguous storage is not a problem. Parent folders are created. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise BasinscopeError(
            f"cannot tell which format to write {str(path)!r} in from its extension "
            f"{suffix or '(none)'!r}; use one of {', '.join(WEIGHT_SUFFIXES)}."
        )
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
    elif isinstance(model_or_state, Mapping):
        state = model_or_state
    else:
        raise BasinscopeError(
            f"save_weights needs an nn.Module or a dict of tensors, found "
            f"{type(model_or_state).__name__}."
        )
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise BasinscopeError(
            f"save_weights writes tensors only, but {len(bad)} entries are not tensors "
            f"({_short(bad)}). Pass model.state_dict() or a dict of tensors."
        )
    tensors = {str(k): v.detach().cpu().contiguous().clone() for k, v in state.items()}
    from basinscope.store.atomic import atomic_write_bytes

    if suffix == ".safetensors":
        from safetensors.torch import save

        data = save(tensors)
    else:
        buf = io.BytesIO()
        torch.save(tensors, buf)
        data = buf.getvalue()
    return atomic_write_bytes(path, data, "weights")
