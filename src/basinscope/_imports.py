"""Importing the user's modules for ``module:attr`` specs (``--model``, ``--data``).

Importing a module runs its code, so a spec names code the user trusts. A module that is
not found, or whose own code fails while it is imported (a ``SyntaxError``, a missing
dependency, any exception), is reported as a :class:`~basinscope.errors.BasinscopeError`
naming the module, the original error's type and text, and the fix.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from basinscope.errors import BasinscopeError

__all__ = ["import_attr", "import_user_module", "split_spec"]


def import_user_module(module_name: str, spec: str, what: str = "module") -> ModuleType:
    """Import ``module_name`` (from the spec ``spec``; ``what`` names it in messages).

    The working folder is searched too, after everything else, as ``python -m`` does: the
    ``basinscope`` script does not put it on ``sys.path``, and a user's ``mynet.py`` next to
    their data is what ``--model mynet:make`` means."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)
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


def split_spec(spec: str, example: str, what: str = "attribute") -> tuple[str, str]:
    """``("module", "attr")`` of ``"module:attr"``, or a clear error showing ``example``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise BasinscopeError(
            f"{spec!r} is not an import spec: expected module:{what}, e.g. {example!r} "
            f"(module path, a colon, then the {what} name)."
        )
    return module_name, attr


def import_attr(spec: str, example: str, what: str = "module") -> object:
    """Import ``"module:attr"`` (``attr`` may be dotted) and return the attribute."""
    module_name, attr = split_spec(spec, example)
    obj: object = import_user_module(module_name, spec, what)
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attr.split(".")[:i]])
            names = sorted(n for n in dir(obj) if not n.startswith("_"))
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise BasinscopeError(
                f"{where!r} has no attribute {part!r} (from {spec!r}). Available names: "
                f"{shown or '(none)'}."
            )
        obj = getattr(obj, part)
    return obj
