"""Helpers for the command-line tests: run `basinscope` in-process and collect its output."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def _code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1


def invoke(*args) -> Result:
    """Run ``basinscope ARGS`` through the real entry point, in this process."""
    from basinscope.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = _code(e)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args) -> Result``: for module-scoped fixtures (no capsys there)."""
    return invoke


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> Result`` with stdout/stderr captured by capsys."""

    def run(*args) -> Result:
        from basinscope.cli.main import main

        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = _code(e)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


# Tiny, fast settings shared by the tests: an MLP on the digits, a 3 x 3 grid.
GRID = ["--xrange", "-1:1:3", "--yrange", "-1:1:3"]
FAST = ["--no-progress", "--no-plot", "--strategy", "loop"]


@pytest.fixture(scope="session")
def surface_args():
    """Arguments of a tiny surface run (append --out and any overrides)."""
    return ["surface", "--model", "mlp", *GRID, *FAST, "--splits", "train"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while this folder's modules run, restored afterwards.

    These tests evaluate many tiny forward passes; on a busy 2-core machine two OpenMP
    threads spin against the other load and make them many times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
