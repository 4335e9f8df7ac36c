"""Parameter dicts: the currency of basinscope.

Parameters are ``dict[str, Tensor]`` keyed exactly as ``model.named_parameters()``;
buffers (BatchNorm running statistics, counters) are a separate dict keyed as
``model.named_buffers()``. Everything here is a plain function on such dicts; flattening
to one vector happens only where an algorithm needs it (PCA, the engine's basis matrix).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from basinscope.errors import BasinscopeError

ParamDict = dict[str, Tensor]

__all__ = [
    "ParamDict",
    "add",
    "check_same_keys",
    "clone",
    "dot",
    "flatten",
    "get_buffers",
    "get_params",
    "lincomb",
    "norm",
    "numel",
    "scale",
    "sub",
    "to",
    "unflatten",
    "zeros_like",
]


def get_params(model: nn.Module, *, detach: bool = True) -> ParamDict:
    """Parameters of ``model`` keyed as ``named_parameters()`` (detached clones by default)."""
    return {k: (v.detach().clone() if detach else v) for k, v in model.named_parameters()}


def get_buffers(model: nn.Module, *, detach: bool = True) -> ParamDict:
    """Buffers of ``model`` keyed as ``named_buffers()`` (detached clones by default)."""
    return {k: (v.detach().clone() if detach else v) for k, v in model.named_buffers()}


def check_same_keys(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    what: str = "parameters",
    hint: str = "Both must come from the same architecture (same keys as model.named_parameters(), same shapes).",
) -> None:
    """Raise a :class:`BasinscopeError` naming the keys and shapes where ``b`` differs from ``a``.

    "missing" keys are in ``a`` but not in ``b``; "unexpected" keys are in ``b`` only.
    """
    missing = [k for k in a if k not in b]
    extra = [k for k in b if k not in a]
    shapes = [
        f"{k}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        for k in a
        if k in b and a[k].shape != b[k].shape
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {_short(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected keys {_short(extra)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches {_short(shapes)}")
        raise BasinscopeError(f"{what} do not match: " + "; ".join(parts) + ". " + hint)


def _short(items: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]"


def clone(p: Mapping[str, Tensor]) -> ParamDict:
    return {k: v.detach().clone() for k, v in p.items()}


def zeros_like(p: Mapping[str, Tensor]) -> ParamDict:
    return {k: torch.zeros_like(v) for k, v in p.items()}


def to(p: Mapping[str, Tensor], device=None, dtype: torch.dtype | None = None) -> ParamDict:
    """Move a dict to a device/dtype; integer tensors keep their dtype."""
    out = {}
    for k, v in p.items():
        if dtype is not None and v.is_floating_point():
            out[k] = v.to(device=device, dtype=dtype)
        else:
            out[k] = v.to(device=device)
    return out


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> ParamDict:
    return {k: a[k] + b[k] for k in a}


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> ParamDict:
    return {k: a[k] - b[k] for k in a}


def scale(a: Mapping[str, Tensor], c: float) -> ParamDict:
    return {k: v * c for k, v in a.items()}


def lincomb(dicts: Iterable[Mapping[str, Tensor]], coeffs: Iterable[float]) -> ParamDict:
    """:math:`\\sum_i c_i d_i` over a list of parameter dicts with the same keys."""
    dicts = list(dicts)
    coeffs = list(coeffs)
    if len(dicts) != len(coeffs) or not dicts:
        raise ValueError(
            f"lincomb needs as many coefficients as dicts, got {len(coeffs)} and {len(dicts)}"
        )
    out = {k: v * coeffs[0] for k, v in dicts[0].items()}
    for d, c in zip(dicts[1:], coeffs[1:]):
        for k in out:
            out[k] = out[k] + c * d[k]
    return out


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """Euclidean inner product over all entries (a 0-d tensor, accumulated in float64)."""
    total = torch.zeros((), dtype=torch.float64)
    for k in a:
        total = total + (a[k].double() * b[k].double()).sum().cpu()
    return total


def norm(a: Mapping[str, Tensor]) -> Tensor:
    """Euclidean norm of the whole dict, as if flattened to one vector (float64)."""
    return dot(a, a).sqrt()


def numel(a: Mapping[str, Tensor]) -> int:
    return sum(v.numel() for v in a.values())


def flatten(a: Mapping[str, Tensor], keys: Iterable[str] | None = None) -> Tensor:
    """Concatenate the entries (in ``keys`` order, default the dict's order) into one vector."""
    keys = list(a) if keys is None else list(keys)
    return torch.cat([a[k].reshape(-1) for k in keys])


def unflatten(vec: Tensor, like: Mapping[str, Tensor]) -> ParamDict:
    """Inverse of :func:`flatten`: views of ``vec`` shaped like the entries of ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vec[i : i + n].view(v.shape)
        i += n
    if i != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, the dict needs {i}")
    return out
