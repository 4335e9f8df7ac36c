"""Progress bars that suit logs: tqdm's bar on a terminal, plain lines (no carriage
returns) when stderr is not a TTY; the curvature computations show theirs with
``progress=True`` and compute the same numbers."""

from __future__ import annotations

import io

import numpy as np
import torch

from basinscope._progress import progress_bar
from curvature_cases import MatrixOperator, spectrum_matrix, tiny_models


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_in_a_log_is_plain_lines_from_start_to_end():
    log = io.StringIO()
    for _ in progress_bar(range(50), desc="work", unit="step", file=log):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("work:") and "0/50" in lines[0]
    assert lines[-1].startswith("work: 100%") and "50/50" in lines[-1]
    assert len(lines) <= 3  # the start, the end, and at most one line every LOG_INTERVAL s


def test_a_bar_on_a_terminal_is_redrawn_in_place():
    tty = Terminal()
    for _ in progress_bar(range(5), desc="work", file=tty):
        pass
    assert "\r" in tty.getvalue()


def test_a_disabled_bar_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(5), desc="work", disable=True, file=log):
        pass
    assert log.getvalue() == ""


def _op():
    return MatrixOperator(spectrum_matrix(np.linspace(0.1, 3.0, 40)))


def test_trace_density_and_per_layer_progress_on_stderr_same_numbers(capsys):
    from basinscope.curvature.per_module import per_module_curvature
    from basinscope.curvature.slq import spectral_density
    from basinscope.curvature.trace import hutch_plus_plus_trace, hutchinson_trace

    capsys.readouterr()
    quiet = hutchinson_trace(_op(), max_samples=32, seed=1)
    assert capsys.readouterr().err == ""
    loud = hutchinson_trace(_op(), max_samples=32, seed=1, progress=True)
    err = capsys.readouterr().err
    assert loud.estimate == quiet.estimate and "trace:" in err and "\r" not in err

    quiet = hutch_plus_plus_trace(_op(), max_matvecs=60, seed=1)
    loud = hutch_plus_plus_trace(_op(), max_matvecs=60, seed=1, progress=True)
    err = capsys.readouterr().err
    assert loud.estimate == quiet.estimate and "trace (hutch++):" in err

    quiet = spectral_density(_op(), num_runs=2, lanczos_steps=10)
    loud = spectral_density(_op(), num_runs=2, lanczos_steps=10, progress=True)
    err = capsys.readouterr().err
    assert np.array_equal(loud.nodes, quiet.nodes) and "spectral density: 100%" in err

    model = tiny_models()["mlp"]
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    kw = {"dtype": torch.float64, "exact_trace_max_params": 10_000}
    quiet = per_module_curvature(model, data, **kw)
    loud = per_module_curvature(model, data, progress=True, **kw)
    err = capsys.readouterr().err
    assert [m.top_eigenvalue for m in loud] == [m.top_eigenvalue for m in quiet]
    assert "per-layer: 100%" in err and "2/2" in err and "\r" not in err


def test_a_postfix_in_a_log_waits_for_the_next_line():
    log = io.StringIO()
    bar = progress_bar(total=100, desc="lanczos", file=log)
    for i in range(100):
        bar.update(1)
        bar.set_postfix(residual=f"{1.0 / (i + 1):.1e}")  # refresh=True by default
    bar.close()
    assert len(log.getvalue().splitlines()) <= 3
