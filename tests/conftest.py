"""Shared fixtures: tiny data and models, and a brute-force float64 reference evaluator."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest
import torch

# One torch thread for the whole suite: its models and matrices are tiny, where OpenMP
# threads only spin against each other, against the other xdist worker (make test runs one
# per core) and against anything else on a shared 2-core machine; and one thread gives the
# same float reductions on every machine. OMP_NUM_THREADS says the same to the studies'
# --threads default and to every subprocess a test starts, so a study run through the
# command line computes (and names its stages' float results) as one run in-process.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def digits_xy():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    return x, y


@pytest.fixture
def small_data(digits_xy):
    x, y = digits_xy
    return {"train": (x[:300], y[:300]), "test": (x[300:420], y[300:420])}


# -- the command line, in this process ------------------------------------------------
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
