"""Commands for tests/test_protocol.py, one module per group of commands.

Each module defines ``COMMANDS = {name: (args(weights) -> command line without --out, the
result's kind)}``; ``weights`` are three MLP weight files (``{"hidden": [16]}``).
"""

from __future__ import annotations

import importlib
import pkgutil

MLP = ["--model", "mlp", "--model-kwargs", '{"hidden": [16]}', "--no-progress"]


def _w(paths) -> list[str]:
    return [a for p in paths for a in ("--weights", str(p))]


def all_commands(own: dict) -> dict:
    out = dict(own)
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        dup = set(out) & set(module.COMMANDS)
        assert not dup, f"{info.name} repeats {dup}"
        out.update(module.COMMANDS)
    return out
