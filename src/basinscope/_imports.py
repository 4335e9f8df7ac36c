"""Importing the user's modules for ``module:attr`` specs (``--model``, ``--data``).

Importing a module runs its code, so a spec names code the user trusts. A module that is
not found, or whose own code fails while it is imported (a ``SyntaxError``, a missing
dependency, any exception), is reported as a :class:`~basinscope.errors.BasinscopeError`
naming the module, the original error's type and text, and the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from basinscope.errors import BasinscopeError

__all__ = ["import_user_module"]


def import_user_module(module_name: str, spec: str, what: str = "module") -> ModuleType:
    """Import ``module_name`` (from the spec ``spec``; ``what`` names it in messages)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise BasinscopeError(
                f"{what} {module_name!r} (from {spec!r}) was not found. Check the spelling, "
                "install the package, or run from the folder that contains it (it must be on "
                "sys.path / PYTHONPATH)."
            ) from e
        error: BaseException = e  # the module exists but one of its own imports is missing
    except (Exception, SystemExit) as e:  # importing runs the module's code: anything goes
        error = e
    where = ""
    if isinstance(error, SyntaxError) and error.filename:
        where = f" in {error.filename}, line {error.lineno}"
        text = error.msg
    else:
        text = str(error)
    fix = (
        f"install the missing package {error.name!r}"
        if isinstance(error, ModuleNotFoundError) and error.name
        else "fix the module"
    )
    raise BasinscopeError(
        f"importing {what} {module_name!r} (from {spec!r}) failed: {type(error).__name__}: "
        f"{text}{where}. Importing the module runs its code; {fix} so that "
        f"`python -c 'import {module_name}'` works, then run the command again."
    ) from error
