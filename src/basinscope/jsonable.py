"""JSON-ready copies of results.

JSON has no NaN or infinity, and basinscope never drops or replaces a non-finite value
silently: :func:`jsonable` writes them as the strings ``"nan"``, ``"inf"`` and ``"-inf"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(obj: Any) -> Any:
    """A JSON-ready copy of ``obj``.

    Mappings (keys as strings), lists and tuples are converted recursively; NumPy scalars
    and arrays become Python numbers and (nested) lists; non-finite floats become strings;
    objects with a ``to_dict()`` method (configs, results) are replaced by that dict.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    return obj
