"""Settings shared by the command-line tests (the `cli` and `run_cli` fixtures are in
tests/conftest.py)."""

from __future__ import annotations

import pytest

# Tiny, fast settings shared by the tests: an MLP on the digits, a 3 x 3 grid.
GRID = ["--xrange", "-1:1:3", "--yrange", "-1:1:3"]
FAST = ["--no-progress", "--no-plot", "--strategy", "loop"]


@pytest.fixture(scope="session")
def surface_args():
    """Arguments of a tiny surface run (append --out and any overrides)."""
    return ["surface", "--model", "mlp", *GRID, *FAST, "--splits", "train"]
