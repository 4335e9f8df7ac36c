"""``basinscope demo``."""

from __future__ import annotations

import typer


def demo_cmd(quick: bool = typer.Option(False, "--quick")) -> None:
    raise NotImplementedError
